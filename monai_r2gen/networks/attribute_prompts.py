"""Target visual prompts: what the anchored prompts of a study *should* look like, built from its known findings.

The language model of the embedded default learns from scratch. Shown the visual prompts from its first iteration it
learns to read their presence signals slowly and their side and size hardly at all, because the prompts of a
warmed-up encoder differ from study to study mostly in directions that carry no attribute. :class:`AttributeTargets`
gives every finding kind ``k`` a learned vector for "absent" / "present" and one learned vector per value of each of
its attribute fields (side, size, lobe ...; :data:`~monai_r2gen.data.finding_attributes.FIELD_LIST`, plus one for
"unknown"); the target of anchored prompt ``k`` is their sum.

The training recipe (``GeneratorConfig.attribute_prompts``): while the language model learns the reports (stage 0)
the anchored prompts it sees are the targets (``teacher_forcing``), so it learns to read a clean code of what each
study shows; throughout, an alignment loss pulls the projector's anchored prompts towards the (detached) targets;
the alignment stage then shows the language model the projector's own prompts. At inference the image reaches the
language model only through the projector's prompts: the targets are a teacher of the training, never an input.
"""

from __future__ import annotations

import torch
from torch import nn

from monai_r2gen.data.finding_attributes import ATTRIBUTE_KINDS, FIELD_LIST, IGNORE_INDEX

__all__ = ["AttributeTargets", "alignment_loss"]


class AttributeTargets(nn.Module):
    """Learned target prompts of the anchored prompts, one per finding kind, from presence and attribute values.

    Args:
        dim: prompt width (the LLM's hidden size).
        init_std: standard deviation of the initial vectors (the LLM's word embeddings').
    """

    def __init__(self, dim: int, init_std: float) -> None:
        super().__init__()
        self.presence = nn.Parameter(torch.randn(len(ATTRIBUTE_KINDS), 2, dim) * init_std)
        # one table per field, its last row for "unknown" (the kind is absent, or the value is not recorded)
        self.fields = nn.ParameterList(nn.Parameter(torch.randn(len(values) + 1, dim) * init_std)
                                       for _, _, values in FIELD_LIST)  # fmt: skip
        self.register_buffer(
            "field_kind", torch.tensor([ATTRIBUTE_KINDS.index(kind) for kind, _, _ in FIELD_LIST]), persistent=False
        )

    @property
    def num_anchored(self) -> int:
        """Number of target prompts (the first of the projector's prompts)."""
        return len(ATTRIBUTE_KINDS)

    def forward(self, presence: torch.Tensor, fields: torch.Tensor) -> torch.Tensor:
        """``(B, 9)`` presence and ``(B, F)`` field indices (``IGNORE_INDEX`` where unknown) -> ``(B, 9, H)``."""
        kinds = torch.arange(self.num_anchored, device=self.presence.device)
        present = presence.to(device=self.presence.device).round().long().clamp(0, 1)
        out = self.presence[kinds.unsqueeze(0), present]  # (B, 9, H)
        fields = fields.to(device=self.presence.device, dtype=torch.long)
        extra = torch.zeros_like(out)
        for i, table in enumerate(self.fields):
            index = torch.where(fields[:, i] == IGNORE_INDEX, table.shape[0] - 1, fields[:, i])
            extra[:, int(self.field_kind[i])] += table[index]
        return out + extra


def alignment_loss(prompts: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean squared distance of ``prompts`` to the detached ``targets`` (both ``(B, 9, H)``), relative to the
    targets' mean square, so that its size does not depend on the embedding scale."""
    targets = targets.detach().to(prompts.dtype)
    return ((prompts - targets) ** 2).mean() / (targets**2).mean().clamp(min=1e-8)
