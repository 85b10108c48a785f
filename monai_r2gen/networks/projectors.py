"""Multi-view fusion and projectors: visual tokens -> soft visual prompts in the LLM's embedding space.

- :class:`ViewFusion` merges the views of a study: "mean" averages the present views token by token (R2GenGPT),
  "concat" keeps every view's tokens, tagged with a learned view embedding, and masks the padded views.
- :class:`LinearProjector` (Linear + LayerNorm, R2GenGPT) and :class:`MLPProjector` (Linear-GELU-Linear, LLaVA)
  map each token to one prompt vector, so the number of prompts equals the number of tokens.
- :class:`GridPoolProjector` average-pools the token grid to a coarser ``g x g`` grid (each prompt sees one region of
  the image, the same region in every study) and maps each pooled token through Linear-GELU-Linear + LayerNorm:
  few prompts that keep where things are.
- :class:`AttentionPoolProjector` gives ``K`` prompts, each a learned content-based attention pooling of the tokens
  (one softmax over the tokens per prompt, starting as mean pooling) followed by GELU-Linear + LayerNorm: with the
  generator's attribute head, prompt ``k`` learns to look for finding kind ``k`` and tell its side and size.
- :class:`AttentionResampler` cross-attends ``K`` learned queries to the tokens: the number of soft prompts is a
  setting, independent of the encoder.
- :class:`FindingPrompts` turns the finding head's probabilities into one prompt per label (a learned "present"
  and "absent" vector per label, mixed by the probability): a diagnosis-driven prompt in the spirit of PromptMRG
  (Jin et al., AAAI 2024), which the generator appends to the visual prompts.

Every projector takes ``(B, T, D)`` tokens and a ``(B, T)`` token mask and returns ``(B, K, H)`` prompts and a
``(B, K)`` prompt mask (False where a prompt stands for a padded view; the generator hides those positions from
attention).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from monai_r2gen.errors import ModelConfigError
from monai_r2gen.networks.host_syncs import host_reads_are_free

__all__ = [
    "FUSION_MODES",
    "PROJECTOR_KINDS",
    "ViewFusion",
    "Projector",
    "LinearProjector",
    "MLPProjector",
    "GridPoolProjector",
    "AttentionPoolProjector",
    "AttentionResampler",
    "FindingPrompts",
    "build_projector",
]

logger = logging.getLogger(__name__)

FUSION_MODES = ("mean", "concat")
PROJECTOR_KINDS = ("linear", "mlp", "grid", "attention_pool", "resampler")


class ViewFusion(nn.Module):
    """Merge the views of each study.

    Args:
        mode: "mean" (average of the present views, ``(B, N, D)``) or "concat" (all views side by side with a learned
            view embedding added, ``(B, V*N, D)``).
        dim: token size ``D``.
        max_views: most views per study ("concat" learns one embedding per view slot).
    """

    def __init__(self, mode: str = "mean", dim: int = 0, max_views: int = 2) -> None:
        super().__init__()
        if mode not in FUSION_MODES:
            raise ModelConfigError(f"view fusion must be one of {FUSION_MODES}, got {mode!r}")
        if max_views < 1:
            raise ModelConfigError("max_views must be >= 1")
        self.mode = mode
        self.max_views = int(max_views)
        if mode == "concat":
            if dim < 1:
                raise ModelConfigError("concat view fusion needs the token size")
            self.view_embedding = nn.Parameter(torch.zeros(self.max_views, dim))
            nn.init.normal_(self.view_embedding, std=0.02)

    def output_tokens(self, tokens_per_view: int) -> int:
        """Tokens per study after fusion."""
        return tokens_per_view * (self.max_views if self.mode == "concat" else 1)

    def forward(self, tokens: torch.Tensor, view_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Fuse ``(B, V, N, D)`` tokens.

        Args:
            tokens: per-view tokens.
            view_mask: ``(B, V)`` bool, True for real views (None: all real).

        Returns:
            ``(tokens, token_mask)``: ``(B, T, D)`` and ``(B, T)`` bool.
        """
        batch, views, num, dim = tokens.shape
        if views > self.max_views:
            raise ValueError(f"got {views} views, the model was built for at most {self.max_views}")
        if view_mask is None:
            view_mask = torch.ones(batch, views, dtype=torch.bool, device=tokens.device)
        view_mask = view_mask.to(device=tokens.device, dtype=torch.bool)
        if view_mask.shape != (batch, views):
            raise ValueError(f"view_mask shape {tuple(view_mask.shape)} does not match {batch} studies x {views} views")
        if host_reads_are_free(view_mask) and not bool(view_mask.any(dim=1).all()):
            raise ValueError("a study in the batch has no view (view_mask all False)")
        if self.mode == "mean":
            weights = view_mask.to(tokens.dtype)[:, :, None, None]
            fused = (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
            return fused, torch.ones(batch, num, dtype=torch.bool, device=tokens.device)
        if views < self.max_views:  # pad to the fixed number of view slots so the prompt count stays constant
            pad = tokens.new_zeros(batch, self.max_views - views, num, dim)
            tokens = torch.cat([tokens, pad], dim=1)
            view_mask = torch.cat([view_mask, view_mask.new_zeros(batch, self.max_views - views)], dim=1)
        tokens = tokens + self.view_embedding.to(tokens.dtype)[None, :, None, :]
        tokens = tokens * view_mask.to(tokens.dtype)[:, :, None, None]
        token_mask = view_mask[:, :, None].expand(-1, -1, num).reshape(batch, -1)
        return tokens.reshape(batch, self.max_views * num, dim), token_mask


class Projector(nn.Module):
    """Base class of the projectors.

    Args:
        in_dim: token size ``D``.
        out_dim: LLM hidden size ``H``.
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.in_dim = int(in_dim)
        self.out_dim = int(out_dim)

    def num_outputs(self, num_tokens: int) -> int:
        """Prompts ``K`` produced from ``num_tokens`` fused tokens."""
        return num_tokens

    def forward(
        self, tokens: torch.Tensor, token_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Project ``(B, T, D)`` tokens to ``(B, K, H)`` prompts and their ``(B, K)`` mask."""
        if token_mask is None:
            token_mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return self.project(tokens), token_mask

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token-wise projection."""
        raise NotImplementedError


class LinearProjector(Projector):
    """Linear + LayerNorm, one prompt per token (R2GenGPT)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__(in_dim, out_dim)
        self.proj = nn.Linear(in_dim, out_dim)
        self.norm = nn.LayerNorm(out_dim)

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(tokens))


class MLPProjector(Projector):
    """Linear-GELU-Linear, one prompt per token (LLaVA-1.5 ``mlp2x_gelu``)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__(in_dim, out_dim)
        self.net = nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.net(tokens)


class GridPoolProjector(Projector):
    """Average-pool the square token grid to ``grid x grid`` regions, then Linear-GELU-Linear + LayerNorm per region.

    Needs one square token grid per study ("mean" view fusion); ``K = grid**2``.

    Args:
        in_dim: token size ``D``.
        out_dim: LLM hidden size ``H``.
        grid: regions per side.
    """

    def __init__(self, in_dim: int, out_dim: int, grid: int = 4) -> None:
        super().__init__(in_dim, out_dim)
        if grid < 1:
            raise ModelConfigError("grid projector needs grid >= 1")
        self.grid = int(grid)
        self.net = nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))
        self.norm = nn.LayerNorm(out_dim)

    def _side(self, num_tokens: int) -> int:
        side = int(round(num_tokens**0.5))
        if side * side != num_tokens or side < self.grid:
            raise ModelConfigError(f"grid projector needs a square grid of at least {self.grid}x{self.grid} tokens "
                                   f"per view, got {num_tokens}")  # fmt: skip
        return side

    def num_outputs(self, num_tokens: int) -> int:
        self._side(num_tokens)
        return self.grid * self.grid

    def region_weights(self, num_tokens: int) -> torch.Tensor:
        """``(K, num_tokens)``: the share of each token in each region's average (rows sum to 1)."""
        side = self._side(num_tokens)
        cells = torch.eye(num_tokens).reshape(num_tokens, 1, side, side)
        return nn.functional.adaptive_avg_pool2d(cells, self.grid).reshape(num_tokens, -1).T.contiguous()

    def forward(
        self, tokens: torch.Tensor, token_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch, num, dim = tokens.shape
        side = self._side(num)
        x = tokens.transpose(1, 2).reshape(batch, dim, side, side)
        pooled = nn.functional.adaptive_avg_pool2d(x, self.grid).flatten(2).transpose(1, 2)
        prompts = self.norm(self.net(pooled))
        return prompts, torch.ones(batch, prompts.shape[1], dtype=torch.bool, device=tokens.device)


class AttentionPoolProjector(Projector):
    """``K`` attention poolings of the tokens: prompt ``k`` = LN(W2 GELU(sum_t a_kt V x_t)), a_k = softmax_t(w_k . x_t).

    ``x_t`` are the layer-normalised tokens (with the encoder's position encoding, so a pooling knows where it
    looks). The scores start at zero (every prompt a mean pooling) and learn where to look; tokens of padded views
    get no weight.

    Args:
        in_dim: token size ``D``.
        out_dim: LLM hidden size ``H``.
        num_queries: prompts ``K``.
    """

    def __init__(self, in_dim: int, out_dim: int, num_queries: int = 16) -> None:
        super().__init__(in_dim, out_dim)
        if num_queries < 1:
            raise ModelConfigError("attention_pool needs num_queries >= 1")
        self.num_queries = int(num_queries)
        self.token_norm = nn.LayerNorm(in_dim)
        self.scores = nn.Linear(in_dim, self.num_queries)
        nn.init.zeros_(self.scores.weight)
        nn.init.zeros_(self.scores.bias)
        self.value = nn.Linear(in_dim, out_dim)
        self.out = nn.Sequential(nn.GELU(), nn.Linear(out_dim, out_dim))
        self.norm = nn.LayerNorm(out_dim)

    def num_outputs(self, num_tokens: int) -> int:
        return self.num_queries

    def attention(self, tokens: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Pooling weights ``(B, K, T)`` (each row sums to 1 over the real tokens)."""
        scores = self.scores(self.token_norm(tokens)).transpose(1, 2)
        if token_mask is not None and not (host_reads_are_free(token_mask) and bool(token_mask.all())):
            scores = scores.masked_fill(~token_mask.to(device=scores.device, dtype=torch.bool)[:, None, :], -1e4)
        return scores.float().softmax(dim=-1).to(tokens.dtype)

    def forward(
        self, tokens: torch.Tensor, token_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        weights = self.attention(tokens, token_mask)
        pooled = torch.bmm(weights, self.value(self.token_norm(tokens)))
        prompts = self.norm(self.out(pooled))
        return prompts, torch.ones(tokens.shape[0], self.num_queries, dtype=torch.bool, device=tokens.device)


class AttentionResampler(Projector):
    """``K`` learned queries cross-attending to the tokens (a Perceiver-style resampler).

    Each layer: queries <- queries + MHA(LN(queries), LN(tokens)); queries <- queries + FFN(LN(queries)). The output
    is projected to the LLM width and layer-normalised. Tokens of padded views are excluded from attention.

    Args:
        in_dim: token size ``D``.
        out_dim: LLM hidden size ``H``.
        num_queries: number of prompts ``K``.
        dim: internal width (default ``min(out_dim, 512)`` rounded to the heads).
        num_heads: attention heads.
        num_layers: resampler layers.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        num_queries: int = 16,
        dim: int | None = None,
        num_heads: int = 4,
        num_layers: int = 1,
    ) -> None:
        super().__init__(in_dim, out_dim)
        if num_queries < 1 or num_layers < 1 or num_heads < 1:
            raise ModelConfigError("resampler needs num_queries, num_heads and num_layers >= 1")
        dim = int(dim or min(out_dim, 512))
        if dim % num_heads:
            raise ModelConfigError(f"resampler width {dim} is not divisible by {num_heads} heads")
        self.num_queries = int(num_queries)
        self.dim = dim
        self.queries = nn.Parameter(torch.randn(num_queries, dim) * 0.02)
        self.kv_proj = nn.Linear(in_dim, dim)
        self.kv_norm = nn.LayerNorm(dim)
        self.layers = nn.ModuleList()
        for _ in range(num_layers):
            self.layers.append(
                nn.ModuleDict(
                    {
                        "q_norm": nn.LayerNorm(dim),
                        "attn": nn.MultiheadAttention(dim, num_heads, batch_first=True),
                        "ffn_norm": nn.LayerNorm(dim),
                        "ffn": nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)),
                    }
                )
            )
        self.out_proj = nn.Linear(dim, out_dim)
        self.out_norm = nn.LayerNorm(out_dim)

    def num_outputs(self, num_tokens: int) -> int:
        return self.num_queries

    def forward(
        self, tokens: torch.Tensor, token_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch = tokens.shape[0]
        kv = self.kv_norm(self.kv_proj(tokens))
        padding = None
        if token_mask is not None and not (host_reads_are_free(token_mask) and bool(token_mask.all())):
            padding = ~token_mask.to(device=tokens.device, dtype=torch.bool)
            if host_reads_are_free(padding) and bool(padding.all(dim=1).any()):
                raise ValueError("a study has no visual token to attend to")
        queries = self.queries.to(kv.dtype).unsqueeze(0).expand(batch, -1, -1)
        for layer in self.layers:
            attended, _ = layer["attn"](layer["q_norm"](queries), kv, kv, key_padding_mask=padding, need_weights=False)
            queries = queries + attended
            queries = queries + layer["ffn"](layer["ffn_norm"](queries))
        prompts = self.out_norm(self.out_proj(queries))
        return prompts, torch.ones(batch, self.num_queries, dtype=torch.bool, device=tokens.device)


class FindingPrompts(nn.Module):
    """One soft prompt per finding label: ``p * present + (1 - p) * absent``.

    Args:
        num_labels: labels of the finding head (14 CheXpert observations).
        out_dim: LLM embedding width.
        init_std: standard deviation of the initial vectors (use the LLM's embedding scale).
    """

    def __init__(self, num_labels: int, out_dim: int, init_std: float = 0.02) -> None:
        super().__init__()
        self.present = nn.Parameter(torch.randn(num_labels, out_dim) * init_std)
        self.absent = nn.Parameter(torch.randn(num_labels, out_dim) * init_std)

    @property
    def num_labels(self) -> int:
        """Prompts per study."""
        return int(self.present.shape[0])

    def forward(self, probabilities: torch.Tensor) -> torch.Tensor:
        """``(B, L)`` probabilities -> ``(B, L, H)`` prompts."""
        p = probabilities.to(self.present.dtype).unsqueeze(-1)
        return p * self.present + (1.0 - p) * self.absent


def build_projector(
    kind: str,
    in_dim: int,
    out_dim: int,
    num_queries: int = 16,
    resampler_dim: int | None = None,
    resampler_heads: int = 4,
    resampler_layers: int = 1,
    grid: int = 4,
) -> Projector:
    """Build a projector by name ("linear", "mlp", "grid", "attention_pool" or "resampler").

    ``grid`` is the regions per side of "grid"; ``num_queries`` the prompts of "attention_pool" and "resampler".

    Raises:
        ModelConfigError: unknown kind.
    """
    if kind == "linear":
        return LinearProjector(in_dim, out_dim)
    if kind == "mlp":
        return MLPProjector(in_dim, out_dim)
    if kind == "grid":
        return GridPoolProjector(in_dim, out_dim, grid=grid)
    if kind == "attention_pool":
        return AttentionPoolProjector(in_dim, out_dim, num_queries=num_queries)
    if kind == "resampler":
        return AttentionResampler(
            in_dim,
            out_dim,
            num_queries=num_queries,
            dim=resampler_dim,
            num_heads=resampler_heads,
            num_layers=resampler_layers,
        )
    raise ModelConfigError(f"projector must be one of {PROJECTOR_KINDS}, got {kind!r}")
