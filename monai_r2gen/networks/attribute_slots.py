"""Attribute slot prompts: one prompt per attribute field of each finding kind (side, size, lobe ...), so that the
language model can read *where* and *how large* a finding is, not only whether it is there.

The finding prompts (:class:`~monai_r2gen.networks.projectors.FindingPrompts`) give the language model one prompt
per CheXpert label; 14 binary labels cannot say on which side an effusion lies or how large a pneumothorax is.
:class:`AttributeSlotPrompts` adds one prompt per field of
:data:`~monai_r2gen.data.finding_attributes.FIELD_LIST` (21 for the phantoms' nine finding kinds), mixed from learned
value vectors by the attribute head's probabilities (:class:`~monai_r2gen.networks.attribute_head.FindingAttributeHead`,
which reads the image):

    slot_f = p_k * sum_v q_fv e_fv + (1 - p_k) * e_f,absent

with ``p_k`` the presence probability of the field's kind and ``q_f`` the softmax of the field. A model without
finding prompts also gets one presence prompt per kind first (``p_k * e_k,present + (1 - p_k) * e_k,absent``), so the
nine kinds' presence reaches the language model through the same head. Trained like the
finding prompts: while the language model learns the reports, the slots carry each study's known attributes
(:func:`slot_values_from_targets`, teacher forcing); at inference they carry the head's prediction
(:func:`slot_values_from_logits`, binarised with ``hard=True`` so that a prediction gives exactly the prompts the
language model was taught with).
"""

from __future__ import annotations

import torch
from torch import nn

from monai_r2gen.data.finding_attributes import ATTRIBUTE_KINDS, FIELD_LIST, IGNORE_INDEX

__all__ = [
    "AttributeSlotPrompts",
    "SlotValues",
    "mix_slot_values",
    "slot_values_from_logits",
    "slot_values_from_targets",
]

#: ``(presence (B, 9), [one (B, C_f) distribution per field of FIELD_LIST])``
SlotValues = tuple[torch.Tensor, list[torch.Tensor]]

_FIELD_KIND = tuple(ATTRIBUTE_KINDS.index(kind) for kind, _, _ in FIELD_LIST)


class AttributeSlotPrompts(nn.Module):
    """One soft prompt per attribute field, from the field's value distribution and its kind's presence.

    Args:
        dim: LLM embedding width.
        init_std: standard deviation of the initial vectors (the LLM's word embeddings').
        presence: add one presence prompt per finding kind before the field prompts.
    """

    def __init__(self, dim: int, init_std: float = 0.02, presence: bool = False) -> None:
        super().__init__()
        self.presence = nn.Parameter(torch.randn(len(ATTRIBUTE_KINDS), 2, dim) * init_std) if presence else None
        # per field: one vector per value, then one for "the finding is absent"
        self.values = nn.ParameterList(nn.Parameter(torch.randn(len(values) + 1, dim) * init_std)
                                       for _, _, values in FIELD_LIST)  # fmt: skip

    @property
    def num_prompts(self) -> int:
        """Prompts per study (one per field, after one per kind with ``presence``)."""
        return len(FIELD_LIST) + (0 if self.presence is None else len(ATTRIBUTE_KINDS))

    def forward(self, values: SlotValues) -> torch.Tensor:
        """``(presence, field distributions)`` -> ``(B, F, H)`` prompts."""
        presence, fields = values
        out = []
        if self.presence is not None:
            p = presence.to(self.presence.dtype).unsqueeze(-1)  # (B, 9, 1)
            out.extend((p * self.presence[:, 1] + (1.0 - p) * self.presence[:, 0]).unbind(dim=1))
        for i, table in enumerate(self.values):
            p = presence[:, _FIELD_KIND[i], None].to(table.dtype)
            mixed = fields[i].to(table.dtype) @ table[:-1]
            out.append(p * mixed + (1.0 - p) * table[-1])
        return torch.stack(out, dim=1)


def slot_values_from_targets(presence: torch.Tensor, fields: torch.Tensor) -> SlotValues:
    """Slot values of known findings: ``(B, 9)`` presence and ``(B, F)`` field indices
    (:data:`~monai_r2gen.data.finding_attributes.IGNORE_INDEX` where unknown) -> one-hot distributions (uniform
    for a present finding whose value is not recorded)."""
    fields = fields.long()
    out = []
    for i, (_, _, names) in enumerate(FIELD_LIST):
        index = fields[:, i]
        known = index != IGNORE_INDEX
        one_hot = torch.nn.functional.one_hot(index.clamp(min=0), len(names)).float()
        uniform = torch.full_like(one_hot, 1.0 / len(names))
        out.append(torch.where(known[:, None], one_hot, uniform))
    return presence.float().round().clamp(0, 1), out


def slot_values_from_logits(presence_logits: torch.Tensor, field_logits: list[torch.Tensor], hard: bool) -> SlotValues:
    """Slot values of the attribute head's (detached) prediction; ``hard``: presence at 0.5 and each field's most
    likely value, one-hot."""
    presence = torch.sigmoid(presence_logits.detach().float())
    fields = [logits.detach().float().softmax(dim=-1) for logits in field_logits]
    if hard:
        presence = (presence > 0.5).float()
        fields = [torch.nn.functional.one_hot(f.argmax(dim=-1), f.shape[-1]).float() for f in fields]
    return presence, fields


def mix_slot_values(forced: SlotValues, predicted: SlotValues, pick: torch.Tensor) -> SlotValues:
    """``forced`` values for the studies where ``pick`` ``(B,)`` is True, ``predicted`` for the others."""
    rows = pick.to(device=forced[0].device)[:, None]
    presence = torch.where(rows, forced[0], predicted[0].to(forced[0].device))
    fields = [torch.where(rows, f, g.to(f.device)) for f, g in zip(forced[1], predicted[1])]
    return presence, fields
