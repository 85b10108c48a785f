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
(:mod:`~monai_r2gen.networks.attribute_slots`). With ``dense`` it reads them through per-token presence maps instead
(:class:`~monai_r2gen.networks.dense_readout.DenseKindReadout`): each kind's presence is pooled from its map and its
probe gives only the attribute fields, from the features the map pools.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from monai_r2gen.data.finding_attributes import ATTRIBUTE_FIELDS, ATTRIBUTE_KINDS, FIELD_LIST, IGNORE_INDEX
from monai_r2gen.errors import ModelConfigError
from monai_r2gen.networks.dense_readout import DenseKindReadout, box_map_loss
from monai_r2gen.networks.projectors import AttentionPoolProjector

__all__ = ["AttributeLoss", "FindingAttributeHead"]


@dataclass
class AttributeLoss:
    """The head's loss and its parts."""

    loss: torch.Tensor
    presence_loss: torch.Tensor
    field_loss: torch.Tensor
    box_loss: torch.Tensor | None = None


class FindingAttributeHead(nn.Module):
    """Linear probes on the anchored prompts: presence and attribute-field logits per finding kind.

    Args:
        num_prompts: ``K`` of the projector (at least one per finding kind; ignored with ``token_dim``).
        dim: prompt width (the LLM's hidden size).
        token_dim: read encoder tokens of this width through the head's own attention pooling (None: read the
            projector's first prompts).
        queries: poolings per finding kind (with ``token_dim``).
        dense: read the encoder tokens through per-token presence maps (needs ``token_dim``, one query).
        views: view slots of a study (dense readout).

    Raises:
        ModelConfigError: fewer prompts than finding kinds, ``queries`` < 1 or > 1 without ``token_dim`` or with
            ``dense``, or ``dense`` without ``token_dim``.
    """

    def __init__(
        self,
        num_prompts: int,
        dim: int,
        token_dim: int | None = None,
        queries: int = 1,
        dense: bool = False,
        views: int = 1,
    ) -> None:
        super().__init__()
        if queries < 1 or (queries > 1 and (token_dim is None or dense)):
            raise ModelConfigError("the attribute head takes several poolings per finding kind only when it reads "
                                   f"encoder tokens (attribute_source 'tokens'), got {queries}")  # fmt: skip
        if dense and token_dim is None:
            raise ModelConfigError("the attribute head's dense readout reads encoder tokens: it needs their width")
        self.queries = int(queries)
        self.dense = bool(dense)
        self.pool: AttentionPoolProjector | DenseKindReadout | None = None
        if dense:
            self.pool = DenseKindReadout(token_dim, dim, len(ATTRIBUTE_KINDS), views)  # type: ignore[arg-type]
        elif token_dim is not None:
            self.pool = AttentionPoolProjector(token_dim, dim, len(ATTRIBUTE_KINDS) * self.queries)
            if self.queries > 1:  # distinct poolings of one kind from the start
                nn.init.normal_(self.pool.scores.weight, std=0.02)
        elif num_prompts < len(ATTRIBUTE_KINDS):
            raise ModelConfigError(f"the attribute head anchors one prompt per finding kind: it needs at least "
                                   f"{len(ATTRIBUTE_KINDS)} prompts, the projector gives {num_prompts}")  # fmt: skip
        self.sizes = [[len(v) for v in ATTRIBUTE_FIELDS[kind].values()] for kind in ATTRIBUTE_KINDS]
        self.width = 2 * int(dim) if dense else int(dim)  # dense: each kind's pooled feature, then the study's mean
        self.norm = nn.LayerNorm(self.width)
        outputs = 0 if self.dense else 1  # the dense readout pools its presence logits itself
        self.probes = nn.ModuleList(nn.Linear(self.width * self.queries, outputs + sum(sizes)) for sizes in self.sizes)

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
        H)`` (the poolings of kind ``k`` at ``k * queries ...``). Dense: ``(B, V, N, D)`` tokens of each view and the
        ``(B, V)`` view mask give ``(B, 9, 1 + 2H + V * N)``, each kind's presence logit, pooled feature, the mean
        feature of the study and the kind's map."""
        if self.pool is None:
            raise ModelConfigError("this attribute head reads the projector's prompts, not encoder tokens")
        if isinstance(self.pool, DenseKindReadout):
            return self.pool(tokens, token_mask)
        return self.pool(tokens, token_mask)[0]

    def forward(self, prompts: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``(B, K, H)`` prompts (or :meth:`features`) -> presence logits ``(B, 9)`` and one ``(B, C_f)`` logit
        tensor per field of :data:`~monai_r2gen.data.finding_attributes.FIELD_LIST`."""
        x = prompts[:, : self.num_anchored * self.queries].float()
        pooled = x[:, :, :1] if self.dense else None
        x = self.norm(x[:, :, 1 : 1 + self.width] if self.dense else x)
        x = x.reshape(x.shape[0], self.num_anchored, -1)  # the poolings of one kind side by side
        presence, fields = [], []
        for k, probe in enumerate(self.probes):
            logits = probe(x[:, k])
            presence.append(logits[:, :1] if pooled is None else pooled[:, k])
            fields.extend(torch.split(logits[:, 0 if self.dense else 1 :], self.sizes[k], dim=1))
        return torch.cat(presence, dim=1), fields

    def loss(
        self,
        prompts: torch.Tensor,
        presence: torch.Tensor,
        fields: torch.Tensor,
        boxes: torch.Tensor | None = None,
        box_views: torch.Tensor | None = None,
        box_weight: float = 1.0,
    ) -> AttributeLoss:
        """Binary cross-entropy on presence plus the cross-entropy of the known fields (mean over known values), and
        with a dense readout and ``boxes``, ``box_weight`` times the presence maps' loss against the boxes
        (:func:`~monai_r2gen.networks.dense_readout.box_map_loss`).

        Args:
            prompts: ``(B, K, H)`` (or :meth:`features`).
            presence: ``(B, 9)`` targets.
            fields: ``(B, F)`` class indices, :data:`~monai_r2gen.data.finding_attributes.IGNORE_INDEX` where
                unknown.
            boxes: ``(B, M, 6)`` finding boxes (:class:`~monai_r2gen.data.finding_boxes.FindingBoxesd`).
            box_views: ``(B, V)`` the views whose boxes are known.
            box_weight: weight of the box loss.
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
        total = presence_loss + field_loss
        box_loss = None
        if self.dense and boxes is not None and box_views is not None:
            box_loss = box_map_loss(prompts[:, :, 1 + self.width :], boxes, box_views)
            total = total + box_weight * box_loss
        return AttributeLoss(total, presence_loss, field_loss, box_loss)

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
