"""A dense readout of finding kinds from encoder tokens: every token classifies itself, the study pools the verdicts.

:class:`DenseKindReadout` maps each layer-normalised token of every view (with the encoder's position encoding and
a learned embedding of its view slot) through a small MLP to a hidden vector ``h_t`` and one presence logit
``p_kt`` per finding kind. Kind ``k`` pools the tokens of all real views with ``a_kt = softmax_t(p_kt)`` (its own
presence map as attention): its presence logit is ``sum_t a_kt p_kt`` (a soft maximum between the mean and the
max: multiple-instance pooling) and its feature is ``sum_t a_kt h_t``, so the attribute probes read the tokens where
the finding is, with their positions (a left, right or bilateral map pools a different mix of position encodings),
beside the mean feature of the study's tokens (what a global size such as the heart's needs).

Unlike an attention pooling whose scores learn where to look only through the product with its values, every
token's presence logit is trained by every study, and where the data set records the findings' boxes
(:mod:`~monai_r2gen.data.finding_boxes`) the maps can be taught where each finding is (:func:`box_map_loss`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DenseKindReadout", "box_map_loss", "box_map_targets"]


class DenseKindReadout(nn.Module):
    """Per-token presence maps of ``num_kinds`` finding kinds and the features they pool.

    Args:
        in_dim: token size ``D``.
        dim: hidden size of the per-token MLP and of the pooled features.
        num_kinds: finding kinds.
        views: view slots ``V`` of a study (each gets a learned embedding).
    """

    def __init__(self, in_dim: int, dim: int, num_kinds: int, views: int = 1) -> None:
        super().__init__()
        self.num_kinds = int(num_kinds)
        self.dim = int(dim)
        self.view_embedding = nn.Parameter(torch.zeros(max(1, int(views)), in_dim))
        self.token_norm = nn.LayerNorm(in_dim)
        self.hidden = nn.Sequential(nn.Linear(in_dim, dim), nn.GELU(), nn.Linear(dim, dim), nn.GELU())
        self.presence = nn.Linear(dim, self.num_kinds)

    def forward(self, tokens: torch.Tensor, view_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, V, N, D)`` tokens of each view (``view_mask`` ``(B, V)``: real views) -> ``(B, num_kinds, 1 + 2 dim +
        V * N)``: per kind its pooled presence logit, its pooled feature, the mean feature of the study's real tokens,
        then its presence map (view-major)."""
        batch, views, n, _ = tokens.shape
        if views > self.view_embedding.shape[0]:
            raise ValueError(f"the dense readout knows {self.view_embedding.shape[0]} view slots, got {views}")
        x = self.token_norm(tokens + self.view_embedding[:views, None, :].to(tokens.dtype))
        hidden = self.hidden(x).float().reshape(batch, views * n, self.dim)
        logits = self.presence(hidden).transpose(1, 2)  # (B, kinds, V * N)
        real = torch.ones(batch, views * n, dtype=torch.bool, device=logits.device)
        if view_mask is not None:
            real = view_mask.to(device=logits.device, dtype=torch.bool).repeat_interleave(n, dim=1)
        weights = logits.masked_fill(~real[:, None, :], -1e4).softmax(dim=-1)
        presence = (weights * logits).sum(dim=-1, keepdim=True)
        share = real.to(hidden.dtype) / real.sum(dim=1, keepdim=True).clamp(min=1)
        mean = torch.bmm(share[:, None, :], hidden).expand(-1, self.num_kinds, -1)
        return torch.cat([presence, torch.bmm(weights, hidden), mean, logits], dim=-1)


def box_map_targets(boxes: torch.Tensor, views: int, tokens_per_view: int, num_kinds: int) -> torch.Tensor:
    """Rasterise finding boxes onto each view's token grid: ``(B, num_kinds, V * N)`` 0/1 targets.

    Args:
        boxes: ``(B, M, 6)`` rows ``(kind, view slot, x0, y0, x1, y1)`` (fractions of the model's square input,
            origin top-left; kind < 0: padding), as :class:`~monai_r2gen.data.finding_boxes.FindingBoxesd` writes.
        views: view slots ``V``.
        tokens_per_view: ``N``, a square grid read row by row.
        num_kinds: finding kinds.

    Raises:
        ValueError: ``N`` is not a square number.
    """
    grid = math.isqrt(tokens_per_view)
    if grid * grid != tokens_per_view:
        raise ValueError(f"box targets need a square token grid per view, got {tokens_per_view} tokens")
    batch = boxes.shape[0]
    boxes = boxes.float()
    edges = torch.arange(grid + 1, device=boxes.device, dtype=torch.float32) / grid
    lo, hi = edges[:-1], edges[1:]  # each token's cell
    x0, y0, x1, y1 = (boxes[..., i, None] for i in range(2, 6))
    cols = (torch.minimum(hi, x1) > torch.maximum(lo, x0)).float()  # (B, M, G): the box overlaps the column
    rows = (torch.minimum(hi, y1) > torch.maximum(lo, y0)).float()
    cover = (rows[..., :, None] * cols[..., None, :]).reshape(batch, -1, tokens_per_view)  # (B, M, N)
    kind, view = boxes[..., 0].long(), boxes[..., 1].long()
    valid = (kind >= 0) & (kind < num_kinds) & (view >= 0) & (view < views)
    slot = (kind.clamp(0, num_kinds - 1) * views + view.clamp(0, views - 1)).masked_fill(~valid, num_kinds * views)
    targets = cover.new_zeros(batch, num_kinds * views + 1, tokens_per_view)
    targets.scatter_reduce_(1, slot[..., None].expand_as(cover), cover, reduce="amax")
    return targets[:, :-1].reshape(batch, num_kinds, views * tokens_per_view)


def box_map_loss(maps: torch.Tensor, boxes: torch.Tensor, box_views: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the presence maps against the rasterised boxes, over the views whose boxes are known.

    Args:
        maps: ``(B, kinds, V * N)`` per-token presence logits (:class:`DenseKindReadout`).
        boxes: ``(B, M, 6)`` boxes (:func:`box_map_targets`).
        box_views: ``(B, V)`` bool: the views whose findings all have boxes (a view without any is known negative).
    """
    batch, kinds, tokens = maps.shape
    views = box_views.shape[1]
    targets = box_map_targets(boxes.to(maps.device), views, tokens // views, kinds)
    known = box_views.to(device=maps.device, dtype=maps.dtype).repeat_interleave(tokens // views, dim=1)
    known = known[:, None, :].expand_as(maps)
    per_token = F.binary_cross_entropy_with_logits(maps.float(), targets, reduction="none")
    return (per_token * known).sum() / known.sum().clamp(min=1.0)
