"""Padding-free training batches: the attended positions of a padded batch packed into fewer, fuller rows.

A batch of reports padded to its longest one spends the language model's work on padding: about 40% of the
positions of the embedded default's batches. Packing moves every study's attended positions (those with attention
mask 1: prompt, visual prompts, report) into rows as long as the longest study, several studies per row (first fit,
longest first), with position ids that restart at 0 for each study. Given no attention mask and such position ids,
transformers builds a block-diagonal causal mask, so a study attends only to itself and the loss (the mean over the
same label tokens) is the padded batch's. The batch composition stays what the sampler drew, unlike length-grouped
batches.

The plan is computed from the attention mask on the host (one read of the study lengths).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["PackingPlan", "plan_packing", "pack"]


class PackingPlan(NamedTuple):
    """Where each packed position comes from.

    Attributes:
        index: ``(rows, R)`` long, flat indices into the ``B * L`` positions of the padded batch; ``B * L`` marks a
            free slot at the end of a row.
        position_ids: ``(rows, R)`` long, 0 at the start of each study (and of a row's free tail).
    """

    index: torch.Tensor
    position_ids: torch.Tensor


def _first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    rows: list[list[int]] = []
    room: list[int] = []
    for study in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for row, free in enumerate(room):
            if lengths[study] <= free:
                rows[row].append(study)
                room[row] -= lengths[study]
                break
        else:
            rows.append([study])
            room.append(capacity - lengths[study])
    return rows


def plan_packing(attention_mask: torch.Tensor) -> PackingPlan:
    """Pack the attended positions of a ``(B, L)`` batch into rows of the longest study's length.

    Raises:
        ValueError: a study with no attended position.
    """
    mask = attention_mask.to(device="cpu", dtype=torch.bool)
    batch, length = mask.shape
    lengths = mask.sum(dim=1).tolist()
    if min(lengths, default=1) < 1:
        raise ValueError("a study in the batch has no attended position to pack")
    capacity = max(lengths)
    rows = _first_fit_decreasing(lengths, capacity)
    index = torch.full((len(rows), capacity), batch * length, dtype=torch.long)
    positions = torch.zeros((len(rows), capacity), dtype=torch.long)
    for row, studies in enumerate(rows):
        start = 0
        for study in studies:
            where = mask[study].nonzero().squeeze(1) + study * length
            index[row, start : start + where.numel()] = where
            positions[row, start : start + where.numel()] = torch.arange(where.numel())
            start += where.numel()
        positions[row, start:] = torch.arange(capacity - start)
    device = attention_mask.device
    return PackingPlan(index.to(device), positions.to(device))


def pack(values: torch.Tensor, plan: PackingPlan, fill: float | int = 0) -> torch.Tensor:
    """``(B, L, ...)`` values in the plan's ``(rows, R, ...)`` layout, ``fill`` in the free slots."""
    flat = values.reshape(-1, *values.shape[2:])
    free = flat.new_full((1, *values.shape[2:]), fill)
    return torch.cat([flat, free], dim=0)[plan.index]
