"""Soft visual prompts read off the attribute head's presence maps: one prompt per finding kind, made of image features.

The dense readout (:class:`~monai_r2gen.networks.dense_readout.DenseKindReadout`) pools, for each finding kind, the
features of the tokens its presence map points at, and the mean feature of the study. :class:`KindFeaturePrompts`
maps each kind's pair ``[pooled_k ; mean]`` (layer-normalised) into the LLM's embedding space with a linear map of
its own, and adds a linear map of the kind's presence map statistics: its presence probability and, per real view,
the soft area of the map (mean token sigmoid) over the whole view and its left, right, upper and lower halves. The
language model so reads nine continuous visual prompts, each drawn from where that finding would be: how strongly
the image shows it, on which side, in which zone, how large. Unlike the attribute slot
prompts (:mod:`~monai_r2gen.networks.attribute_slots`) nothing is predicted or binarised on the way: the prompts
are image features and the language model's loss reaches the encoder through them. With teacher forcing the map
statistics of a training study are those of its known findings (presence and box maps,
:meth:`KindFeaturePrompts.target_statistics`), so that the language model learns to read them while the maps are still
learning, as it learns to read the finding and slot prompts; the pooled features are always the image's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["KindFeaturePrompts"]

_STATS_PER_VIEW = 5  # the map's soft area over the view and its left, right, upper and lower halves


class KindFeaturePrompts(nn.Module):
    """One visual prompt per finding kind from the dense readout's pooled features.

    Args:
        in_dim: width of a kind's feature pair (``2 * dim`` of the readout: pooled feature, then the study's mean).
        dim: LLM embedding width.
        num_kinds: finding kinds.
        views: view slots of a study (the readout's maps are view-major).
        init_std: standard deviation of the prompts at initialisation (the LLM's word embeddings').
    """

    def __init__(self, in_dim: int, dim: int, num_kinds: int, views: int = 1, init_std: float = 0.02) -> None:
        super().__init__()
        self.num_kinds = int(num_kinds)
        self.in_dim = int(in_dim)
        self.views = max(1, int(views))
        self.num_stats = 1 + _STATS_PER_VIEW * self.views
        self.norm = nn.LayerNorm(self.in_dim, elementwise_affine=False)
        # layer-normalised inputs have unit variance: this std gives prompts at the word embeddings' scale
        self.weight = nn.Parameter(torch.randn(self.num_kinds, self.in_dim, int(dim)) * (init_std / math.sqrt(in_dim)))
        stats_std = init_std / math.sqrt(self.num_stats)  # statistics of order 1
        self.stats_weight = nn.Parameter(torch.randn(self.num_kinds, self.num_stats, int(dim)) * stats_std)
        self.bias = nn.Parameter(torch.zeros(self.num_kinds, int(dim)))

    @property
    def num_prompts(self) -> int:
        """Prompts per study (one per finding kind)."""
        return self.num_kinds

    def _views(self, readout: torch.Tensor, view_mask: torch.Tensor | None, views: int | None) -> tuple[int, int]:
        """``(views, grid)`` of a readout."""
        width = readout.shape[-1]
        views = int(views or (view_mask.shape[1] if view_mask is not None else self.views))
        tokens = (width - 1 - self.in_dim) // views
        grid = math.isqrt(tokens)
        if views > self.views or grid * grid != tokens or 1 + self.in_dim + views * tokens != width:
            raise ValueError(f"expected a readout of at most {self.views} square token grids after "
                             f"{1 + self.in_dim} features, got width {width} for {views} views")  # fmt: skip
        return views, grid

    def _statistics(self, presence: torch.Tensor, maps: torch.Tensor, view_mask: torch.Tensor | None) -> torch.Tensor:
        """``(B, kinds)`` presence in [0, 1] and ``(B, kinds, views, G, G)`` maps in [0, 1] -> statistics."""
        half = maps.shape[-1] // 2 or 1
        parts = [maps, maps[..., :, :half], maps[..., :, half:], maps[..., :half, :], maps[..., half:, :]]
        areas = torch.stack([p.mean(dim=(-2, -1)) for p in parts], dim=-1)  # (B, kinds, views, 5)
        if view_mask is not None:
            areas = areas * view_mask.to(device=areas.device, dtype=areas.dtype)[:, None, :, None]
        areas = F.pad(areas, (0, 0, 0, self.views - maps.shape[2]))
        return torch.cat([2.0 * presence[..., None] - 1.0, 4.0 * areas.flatten(2)], dim=-1)

    def map_statistics(
        self, readout: torch.Tensor, view_mask: torch.Tensor | None = None, views: int | None = None
    ) -> torch.Tensor:
        """``(B, kinds, 1 + in_dim + V * N)`` readout of ``views`` view slots (default: ``view_mask``'s, else the
        module's) -> ``(B, kinds, num_stats)``: the presence probability of the pooled logit (as ``2 p - 1``), then
        per view slot the mean token sigmoid of the map over the view and its left, right, upper and lower halves
        (x 4; zero for padded or missing views)."""
        views, grid = self._views(readout, view_mask, views)
        batch, kinds = readout.shape[:2]
        maps = torch.sigmoid(readout[..., 1 + self.in_dim :].float()).reshape(batch, kinds, views, grid, grid)
        return self._statistics(torch.sigmoid(readout[..., 0].float()), maps, view_mask)

    def target_statistics(
        self, presence: torch.Tensor, target_maps: torch.Tensor, view_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The statistics of a study's known findings (teacher forcing): ``(B, kinds)`` 0/1 presence and ``(B,
        kinds, V * N)`` box maps (:func:`~monai_r2gen.networks.dense_readout.box_map_targets`) of ``V`` views (the
        ``view_mask``'s) in place of the readout's logits and maps."""
        batch, kinds, width = target_maps.shape
        views = view_mask.shape[1] if view_mask is not None else self.views
        grid = math.isqrt(width // views)
        maps = target_maps.float().reshape(batch, kinds, views, grid, grid)
        return self._statistics(presence.float(), maps, view_mask)

    def forward(
        self,
        readout: torch.Tensor,
        view_mask: torch.Tensor | None = None,
        views: int | None = None,
        forced: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``(B, kinds, 1 + in_dim + V * N)`` dense readout
        (:class:`~monai_r2gen.networks.dense_readout.DenseKindReadout`; ``view_mask`` ``(B, V)``: real views) ->
        ``(B, kinds, dim)`` prompts; ``forced`` ``(statistics, rows)``: the :meth:`target_statistics` to use in
        place of the map's for the ``(B,)`` bool rows."""
        if readout.shape[1] != self.num_kinds:
            raise ValueError(f"expected {self.num_kinds} finding kinds, got {readout.shape[1]}")
        stats = self.map_statistics(readout, view_mask, views)
        if forced is not None:
            stats = torch.where(forced[1].to(stats.device)[:, None, None], forced[0].to(stats), stats)
        x = self.norm(readout[..., 1 : 1 + self.in_dim].to(self.weight.dtype))
        out = torch.einsum("bki,kio->bko", x, self.weight)
        out = out + torch.einsum("bks,kso->bko", stats.to(self.weight.dtype), self.stats_weight)
        return out + self.bias
