"""An auxiliary objective on the visual prompts: the first prompts, one per finding kind, must each tell whether the
study shows that finding and, when it does, its attributes (side, size, lobe ...).

:class:`FindingAttributeHead` holds one linear probe per finding kind of
:data:`~monai_r2gen.data.finding_attributes.ATTRIBUTE_KINDS`; probe ``k`` reads the layer-normalised prompt ``k``
(the prompts are *anchored*: prompt ``k`` stands for kind ``k``) and gives a presence logit and one softmax per
attribute field of the kind (:data:`~monai_r2gen.data.finding_attributes.ATTRIBUTE_FIELDS`). Trained with the
encoder and projector, it makes the prompts the LLM reads carry the side and size of what the image shows, each
finding in a place of its own; prompts after the anchored ones stay free.

With ``token_dim`` the head reads the encoder's tokens instead, through an attention pooling of its own
(``queries`` poolings per finding kind, :class:`~monai_r2gen.networks.projectors.AttentionPoolProjector`; probe ``k``
reads its kind's poolings side by side, so that one can find a right-sided and another a left-sided finding): the
visual prompts are then left to the projector, and the head's prediction feeds the attribute slot prompts
(:mod:`~monai_r2gen.networks.attribute_slots`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from monai_r2gen.data.finding_attributes import ATTRIBUTE_FIELDS, ATTRIBUTE_KINDS, FIELD_LIST, IGNORE_INDEX
from monai_r2gen.errors import ModelConfigError
from monai_r2gen.networks.projectors import AttentionPoolProjector

__all__ = ["AttributeLoss", "FindingAttributeHead"]


@dataclass
class AttributeLoss:
    """The head's loss and its parts."""

    loss: torch.Tensor
    presence_loss: torch.Tensor
    field_loss: torch.Tensor


class FindingAttributeHead(nn.Module):
    """Linear probes on the anchored prompts: presence and attribute-field logits per finding kind.

    Args:
        num_prompts: ``K`` of the projector (at least one per finding kind; ignored with ``token_dim``).
        dim: prompt width (the LLM's hidden size).
        token_dim: read encoder tokens of this width through the head's own attention pooling (None: read the
            projector's first prompts).
        queries: poolings per finding kind (with ``token_dim``).

    Raises:
        ModelConfigError: fewer prompts than finding kinds, or ``queries`` < 1 or > 1 without ``token_dim``.
    """

    def __init__(self, num_prompts: int, dim: int, token_dim: int | None = None, queries: int = 1) -> None:
        super().__init__()
        if queries < 1 or (queries > 1 and token_dim is None):
            raise ModelConfigError("the attribute head takes several poolings per finding kind only when it reads "
                                   f"encoder tokens (attribute_source 'tokens'), got {queries}")  # fmt: skip
        self.queries = int(queries)
        self.pool: AttentionPoolProjector | None = None
        if token_dim is not None:
            self.pool = AttentionPoolProjector(token_dim, dim, len(ATTRIBUTE_KINDS) * self.queries)
            if self.queries > 1:  # distinct poolings of one kind from the start
                nn.init.normal_(self.pool.scores.weight, std=0.02)
        elif num_prompts < len(ATTRIBUTE_KINDS):
            raise ModelConfigError(f"the attribute head anchors one prompt per finding kind: it needs at least "
                                   f"{len(ATTRIBUTE_KINDS)} prompts, the projector gives {num_prompts}")  # fmt: skip
        self.sizes = [[len(v) for v in ATTRIBUTE_FIELDS[kind].values()] for kind in ATTRIBUTE_KINDS]
        self.norm = nn.LayerNorm(dim)
        self.probes = nn.ModuleList(nn.Linear(dim * self.queries, 1 + sum(sizes)) for sizes in self.sizes)

    @property
    def num_anchored(self) -> int:
        """Prompts the head reads (the first of the projector's)."""
        return len(ATTRIBUTE_KINDS)

    @property
    def reads_tokens(self) -> bool:
        """Whether the head reads encoder tokens (its own pooling) rather than the projector's prompts."""
        return self.pool is not None

    def features(self, tokens: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
        """What a token-reading head probes: its poolings of ``(B, T, D)`` fused encoder tokens, ``(B, 9 * queries,
        H)`` (the poolings of kind ``k`` at ``k * queries ...``)."""
        if self.pool is None:
            raise ModelConfigError("this attribute head reads the projector's prompts, not encoder tokens")
        return self.pool(tokens, token_mask)[0]

    def forward(self, prompts: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``(B, K, H)`` prompts (or :meth:`features`) -> presence logits ``(B, 9)`` and one ``(B, C_f)`` logit
        tensor per field of :data:`~monai_r2gen.data.finding_attributes.FIELD_LIST`."""
        x = self.norm(prompts[:, : self.num_anchored * self.queries].float())
        x = x.reshape(x.shape[0], self.num_anchored, -1)  # the poolings of one kind side by side
        presence, fields = [], []
        for k, probe in enumerate(self.probes):
            logits = probe(x[:, k])
            presence.append(logits[:, :1])
            fields.extend(torch.split(logits[:, 1:], self.sizes[k], dim=1))
        return torch.cat(presence, dim=1), fields

    def loss(self, prompts: torch.Tensor, presence: torch.Tensor, fields: torch.Tensor) -> AttributeLoss:
        """Binary cross-entropy on presence plus the cross-entropy of the known fields (mean over known values).

        Args:
            prompts: ``(B, K, H)``.
            presence: ``(B, 9)`` targets.
            fields: ``(B, F)`` class indices, :data:`~monai_r2gen.data.finding_attributes.IGNORE_INDEX` where
                unknown.
        """
        presence_logits, field_logits = self(prompts)
        presence_loss = F.binary_cross_entropy_with_logits(presence_logits, presence.to(presence_logits))
        fields = fields.to(device=presence_logits.device, dtype=torch.long)
        terms = [
            F.cross_entropy(logits, fields[:, i], ignore_index=IGNORE_INDEX, reduction="sum")
            for i, logits in enumerate(field_logits)
        ]
        known = (fields != IGNORE_INDEX).sum().clamp(min=1)
        field_loss = torch.stack(terms).sum() / known
        return AttributeLoss(presence_loss + field_loss, presence_loss, field_loss)

    @torch.no_grad()
    def predict(self, prompts: torch.Tensor) -> list[dict[str, dict[str, str]]]:
        """Per study: the kinds predicted present (probability > 0.5), each with its most likely field values."""
        presence_logits, field_logits = self(prompts)
        out: list[dict[str, dict[str, str]]] = []
        for b in range(prompts.shape[0]):
            study: dict[str, dict[str, str]] = {
                kind: {} for k, kind in enumerate(ATTRIBUTE_KINDS) if presence_logits[b, k] > 0
            }
            for i, (kind, name, values) in enumerate(FIELD_LIST):
                if kind in study:
                    study[kind][name] = values[int(field_logits[i][b].argmax())]
            out.append(study)
        return out
