"""How much the report's words look at the image, and where.

:func:`collect_attention` writes a report per study (greedy decoding, or takes given reports, e.g. the references)
and runs one teacher-forced forward pass of the LLM with ``output_attentions=True`` (eager attention; the model is
switched by :func:`~monai_r2gen.analysis.loading.set_eager_attention`). For a greedy report this gives exactly the
attention of the incremental decoding. The attention of report token ``j`` is the row of the query that *predicts*
it (the position before it), i.e. the attention used while writing that token.

- :func:`visual_attention_share`: share of attention on the visual-prompt positions, per layer and head, averaged
  over the report tokens of each study, then over studies; drawn as a layer x head heatmap.
- :func:`prompt_token_map` and :func:`word_heatmaps`: per word, the attention over the ``K`` prompts (mean over its
  tokens, the chosen layers and all heads) mapped back to the encoder's token grid of the first (frontal) view:

  * linear / MLP projectors: prompt ``k`` is token ``k`` (identity);
  * attention resampler: through the resampler's cross-attention weights (queries x tokens, averaged over heads
    and resampler layers), captured with forward hooks;
  * a class token (ViT / CLIP / DINOv2) or 4 register tokens are dropped, the rest must form a square grid;
  * ``encoder_feature="pooled"`` (one token per view) has no spatial map: overlays are refused with a clear error.

  With "mean" view fusion a token mixes the frontal and lateral views at the same grid position; the overlay is
  drawn on the frontal view. With "concat" fusion only the frontal view's tokens are drawn.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = [
    "StudyAttention",
    "AttentionAnalysis",
    "attention_to_positions",
    "visual_attention_share",
    "collect_attention",
    "group_words",
    "token_grid",
    "prompt_token_map",
    "word_heatmaps",
]

logger = logging.getLogger(__name__)

_PUNCT = re.compile(r"^[\W_]+$")


def attention_to_positions(attentions: Sequence[torch.Tensor] | torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
    """Attention mass every query puts on a set of key positions.

    Args:
        attentions: per layer ``(B, H, Q, Kv)`` softmax weights (a tuple as returned by Hugging Face models), or one
            stacked ``(L, B, H, Q, Kv)`` tensor.
        key_mask: ``(B, Kv)`` bool, True on the positions of interest (e.g. the visual prompts).

    Returns:
        ``(B, L, H, Q)``: for each query row, the sum of its weights on the masked keys divided by the sum of all its
        weights (1 for a softmax row; rows that attend nowhere give 0).
    """
    stacked = attentions if isinstance(attentions, torch.Tensor) else torch.stack(list(attentions))
    stacked = stacked.float()
    mask = key_mask.to(stacked.device, torch.float32)[None, :, None, None, :]
    on_keys = (stacked * mask).sum(-1)
    total = stacked.sum(-1)
    share = torch.where(total > 0, on_keys / total.clamp_min(1e-30), torch.zeros_like(total))
    return share.permute(1, 0, 2, 3)  # (B, L, H, Q)


def visual_attention_share(
    attentions: Sequence[torch.Tensor] | torch.Tensor, image_mask: torch.Tensor, query_mask: torch.Tensor
) -> torch.Tensor:
    """Share of attention on the visual prompts per layer and head: mean over each study's selected queries, then
    over the studies that have any.

    Args:
        attentions: per layer ``(B, H, Q, Kv)`` (or stacked ``(L, B, H, Q, Kv)``).
        image_mask: ``(B, Kv)`` bool, True at the visual-prompt positions.
        query_mask: ``(B, Q)`` bool, True at the query rows to average (the report tokens).

    Returns:
        ``(L, H)`` shares in [0, 1].

    Raises:
        ValueError: no study has a selected query.
    """
    per_query = attention_to_positions(attentions, image_mask)  # (B, L, H, Q)
    q = query_mask.to(per_query.device, torch.float32)[:, None, None, :]
    counts = q.sum(-1)  # (B, 1, 1)
    valid = counts[:, 0, 0] > 0
    if not bool(valid.any()):
        raise ValueError("no report token selected in any study")
    per_study = (per_query * q).sum(-1)[valid] / counts[valid]  # (B', L, H)
    return per_study.mean(0)


@dataclass
class StudyAttention:
    """Attention of one study's report tokens.

    Attributes:
        id: study id.
        report: the report text the attention belongs to.
        token_ids: its token ids (EOS excluded).
        tokens: each token decoded on its own.
        visual_share: ``(G, L, H)`` share of each token's attention on the visual prompts.
        prompt_attention: ``(G, L, K)`` attention on each visual prompt, averaged over heads.
        words: ``(word, token indices)`` pairs (tokens merged at spaces; punctuation dropped).
    """

    id: str
    report: str
    token_ids: list[int]
    tokens: list[str]
    visual_share: np.ndarray
    prompt_attention: np.ndarray
    words: list[tuple[str, list[int]]] = field(default_factory=list)

    def word_prompt_attention(self, index: int, layers: Sequence[int] | None = None) -> np.ndarray:
        """``(K,)`` attention of word ``index`` on the prompts: mean over its tokens and the chosen layers."""
        _, positions = self.words[index]
        rows = self.prompt_attention[positions]  # (n, L, K)
        if layers is not None:
            rows = rows[:, list(layers)]
        return rows.mean(axis=(0, 1))


@dataclass
class AttentionAnalysis:
    """Attention of a set of studies.

    Attributes:
        studies: per-study records.
        num_layers: LLM layers.
        num_heads: attention heads per layer.
        num_prompts: ``K``.
        source: "generated" (greedy reports) or "given" (e.g. reference reports, teacher-forced).
    """

    studies: list[StudyAttention]
    num_layers: int
    num_heads: int
    num_prompts: int
    source: str = "generated"

    def share_matrix(self) -> np.ndarray:
        """``(L, H)``: visual share per layer and head, mean over each study's tokens, then over studies."""
        rows = [s.visual_share.mean(axis=0) for s in self.studies if len(s.token_ids)]
        if not rows:
            return np.zeros((self.num_layers, self.num_heads))
        return np.mean(rows, axis=0)

    def summary(self) -> dict[str, Any]:
        """Overall share, per-layer means, the most visual (layer, head) and token counts."""
        matrix = self.share_matrix()
        layer, head = np.unravel_index(int(np.argmax(matrix)), matrix.shape)
        return {
            "source": self.source,
            "studies": len(self.studies),
            "report_tokens": int(sum(len(s.token_ids) for s in self.studies)),
            "layers": self.num_layers,
            "heads": self.num_heads,
            "prompts": self.num_prompts,
            "visual_share_mean": float(matrix.mean()),
            "visual_share_per_layer": [round(float(v), 5) for v in matrix.mean(axis=1)],
            "most_visual_head": {"layer": int(layer), "head": int(head), "share": float(matrix[layer, head])},
        }


def group_words(pieces: Sequence[str]) -> list[tuple[str, list[int]]]:
    """Merge decoded token pieces into words.

    A piece that starts with whitespace starts a new word; punctuation pieces end the current word and are
    dropped. Returns ``(word, token indices)`` pairs, words lower-cased.
    """
    words: list[tuple[str, list[int]]] = []
    current, indices = "", []
    for i, piece in enumerate(pieces):
        starts = piece[:1].isspace()
        text = piece.strip()
        if not text:  # a whitespace token ends the word
            if current:
                words.append((current.lower(), indices))
            current, indices = "", []
            continue
        if _PUNCT.match(text):
            if current:
                words.append((current.lower(), indices))
            current, indices = "", []
            continue
        if starts and current:
            words.append((current.lower(), indices))
            current, indices = "", []
        lead = re.match(r"^[\W_]+", text)  # e.g. "(left" -> keep the letters
        current += text[lead.end() :] if lead and not current else text
        indices.append(i)
        trail = re.search(r"[\W_]+$", current)
        if trail:  # "effusion." inside one piece
            current = current[: trail.start()]
            if current:
                words.append((current.lower(), indices))
            current, indices = "", []
    if current:
        words.append((current.lower(), indices))
    return words


def _report_ids(network: Any, texts: Sequence[str]) -> list[list[int]]:
    tok = network.tokenizer
    return [list(tok(text, add_special_tokens=False)["input_ids"]) for text in texts]


@torch.no_grad()
def _greedy_ids(
    network: Any,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    images: torch.Tensor,
    view_mask: torch.Tensor | None,
    max_new_tokens: int | None,
) -> list[list[int]]:
    embeds, attention_mask = network.prepare_inputs_embeds(prompt_ids, prompt_mask, images, view_mask)
    overrides: dict[str, Any] = {"num_beams": 1, "do_sample": False}
    if max_new_tokens is not None:
        overrides["max_new_tokens"] = int(max_new_tokens)
    settings = network.generation_settings(**overrides)
    out = network.llm.generate(inputs_embeds=embeds, attention_mask=attention_mask, **settings)
    eos, rows = network.tokenizer.eos_token_id, []
    for row in out.tolist():
        rows.append(row[: row.index(eos)] if eos in row else row)
    pad = network.tokenizer.pad_token_id
    return [[t for t in row if t != pad] if pad != eos else row for row in rows]


@torch.no_grad()
def collect_attention(
    network: Any,
    images: torch.Tensor,
    view_mask: torch.Tensor | None = None,
    study_ids: Sequence[str] | None = None,
    reports: Sequence[str] | None = None,
    max_new_tokens: int | None = 64,
    batch_size: int = 4,
) -> AttentionAnalysis:
    """Attention of the report tokens of a set of studies on the visual prompts.

    Args:
        network: a report generator whose LLM uses eager attention.
        images: ``(S, V, C, H, W)`` views.
        view_mask: ``(S, V)`` bool.
        study_ids: names (default: indices).
        reports: texts to analyse teacher-forced (e.g. reference reports); None writes greedy reports.
        max_new_tokens: length limit of greedy reports.
        batch_size: studies per forward pass (the attention tensors grow with the square of the length).

    Returns:
        the per-study attention records.
    """
    was_training = network.training
    network.eval()
    device = network.llm.get_input_embeddings().weight.device
    tok = network.tokenizer
    ids_all = [str(s) for s in study_ids] if study_ids is not None else [str(i) for i in range(images.shape[0])]
    records: list[StudyAttention] = []
    layers = heads = 0
    try:
        for start in range(0, images.shape[0], batch_size):
            imgs = images[start : start + batch_size].to(device)
            vmask = None if view_mask is None else view_mask[start : start + batch_size].to(device)
            n = imgs.shape[0]
            prompt_ids, prompt_mask = network.encode_prompts([network.config.prompt_template] * n)
            prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
            if reports is None:
                report_ids = _greedy_ids(network, prompt_ids, prompt_mask, imgs, vmask, max_new_tokens)
            else:
                report_ids = _report_ids(network, reports[start : start + n])
            width = max(1, max(len(r) for r in report_ids))
            plen = prompt_ids.shape[1]
            full = torch.full((n, plen + width), int(tok.pad_token_id), dtype=torch.long, device=device)
            full_mask = torch.zeros_like(full)
            full[:, :plen], full_mask[:, :plen] = prompt_ids, prompt_mask
            query_rows = torch.zeros_like(full, dtype=torch.bool)
            for b, row in enumerate(report_ids):
                if row:
                    full[b, plen : plen + len(row)] = torch.tensor(row, device=device)
                    full_mask[b, plen : plen + len(row)] = 1
                    query_rows[b, plen - 1 : plen - 1 + len(row)] = True  # the rows that predict the report tokens
            out = network(images=imgs, input_ids=full, attention_mask=full_mask, view_mask=vmask,
                          output_attentions=True)  # fmt: skip
            if not out.attentions or out.attentions[0] is None:
                raise RuntimeError("the LLM returned no attention weights; load it with attn_implementation='eager'")
            image_mask = (full == network.image_token_id) & full_mask.bool()
            stacked = torch.stack(out.attentions).float()  # (L, B, H, Q, Kv)
            layers, heads = stacked.shape[0], stacked.shape[2]
            share = attention_to_positions(stacked, image_mask)  # (B, L, H, Q)
            for b, row in enumerate(report_ids):
                qpos = torch.nonzero(query_rows[b]).flatten()
                kpos = torch.nonzero(image_mask[b]).flatten()
                prompt_att = stacked[:, b][:, :, qpos][..., kpos].mean(1)  # (L, G, K)
                pieces = [tok.decode([t]) for t in row]
                records.append(StudyAttention(
                    id=ids_all[start + b],
                    report=tok.decode(row, skip_special_tokens=True).strip(),
                    token_ids=list(row),
                    tokens=pieces,
                    visual_share=share[b][:, :, qpos].permute(2, 0, 1).cpu().numpy(),
                    prompt_attention=prompt_att.permute(1, 0, 2).cpu().numpy(),
                    words=group_words(pieces),
                ))  # fmt: skip
    finally:
        network.train(was_training)
    return AttentionAnalysis(records, layers, heads, network.num_image_tokens,
                             "generated" if reports is None else "given")  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------
# from prompts back to the image
# ----------------------------------------------------------------------------------------------------------------


def token_grid(num_tokens: int) -> tuple[int, int, int]:
    """``(offset, rows, cols)`` of an encoder's token sequence: leading non-patch tokens, then a square grid.

    Tries no leading token, a class token, and a class token plus 4 registers (DINOv2 with registers).

    Raises:
        ValueError: no square grid fits (e.g. a pooled single token).
    """
    for offset in (0, 1, 5):
        side = math.isqrt(max(num_tokens - offset, 0))
        if side >= 2 and side * side == num_tokens - offset:
            return offset, side, side
    raise ValueError(f"{num_tokens} encoder tokens do not form a square grid (with 0, 1 or 5 leading tokens): "
                     "no spatial overlay for this encoder (e.g. encoder_feature='pooled')")  # fmt: skip


class _ResamplerWeights:
    """Forward hooks on an attention resampler's cross-attention layers that keep their head-averaged weights."""

    def __init__(self, projector: Any) -> None:
        self.weights: list[torch.Tensor] = []
        self.handles = [layer["attn"].register_forward_hook(self._hook, with_kwargs=True)
                        for layer in projector.layers]  # fmt: skip

    def _hook(self, module: Any, args: tuple, kwargs: dict, output: Any) -> None:
        call = {**kwargs, "need_weights": True, "average_attn_weights": True}
        _, weights = module.forward(*args, **call)  # forward() itself runs no hooks
        self.weights.append(weights.detach().float())

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


@torch.no_grad()
def prompt_token_map(
    network: Any, images: torch.Tensor, view_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, tuple[int, int]]:
    """How each visual prompt spreads over the first view's encoder token grid.

    Returns:
        ``(weights (B, K, rows*cols), (rows, cols))``; row ``k`` of ``weights`` is the share of prompt ``k`` that
        comes from each grid cell of the first view (sums to 1 for the resampler and the attention pool with "mean"
        fusion: their attention weights; the grid projector's pooling regions; identity rows for token-wise
        projectors).

    Raises:
        ValueError: a pooled encoder (no grid), or a projector this mapping does not know.
    """
    from monai_r2gen.networks.projectors import AttentionPoolProjector, AttentionResampler, GridPoolProjector, Projector

    n_view = int(network.encoder.num_tokens)
    offset, rows, cols = token_grid(n_view)
    concat = network.fusion.mode == "concat"
    total = n_view * (network.fusion.max_views if concat else 1)
    projector = network.projector
    batch = images.shape[0]
    device = next(projector.parameters()).device
    if isinstance(projector, AttentionResampler):
        hooks = _ResamplerWeights(projector)
        try:
            network.encode_images(images.to(device), None if view_mask is None else view_mask.to(device))
        finally:
            hooks.close()
        token_weights = torch.stack(hooks.weights).mean(0).cpu()  # (B, K, T)
    elif isinstance(projector, AttentionPoolProjector):
        vmask = None if view_mask is None else view_mask.to(device)
        tokens = network.encode_views(images.to(device), vmask)
        fused, token_mask = network.fusion(tokens.float(), vmask)
        token_weights = projector.attention(fused, token_mask).float().cpu()  # (B, K, T)
    elif isinstance(projector, GridPoolProjector):
        token_weights = projector.region_weights(total).expand(batch, -1, -1)
    elif isinstance(projector, Projector):
        token_weights = torch.eye(total).expand(batch, -1, -1)
    else:
        raise ValueError(f"no prompt-to-image mapping for a {type(projector).__name__} projector")
    if token_weights.shape[-1] != total:
        raise ValueError(f"expected {total} fused tokens, the projector saw {token_weights.shape[-1]}")
    first_view = token_weights[..., offset:n_view]  # (B, K, rows*cols)
    return first_view, (rows, cols)


def word_heatmaps(
    network: Any,
    analysis: AttentionAnalysis,
    images: torch.Tensor,
    view_mask: torch.Tensor | None = None,
    layers: Sequence[int] | None = None,
    batch_size: int = 8,
) -> dict[str, list[tuple[str, np.ndarray]]]:
    """Per study and word, the attention over the first view's token grid.

    Args:
        network: the generator the analysis was made with.
        analysis: output of :func:`collect_attention` for the same studies, in the same order.
        images: ``(S, V, C, H, W)``.
        view_mask: ``(S, V)``.
        layers: LLM layers to average (default: all).
        batch_size: studies per resampler pass.

    Returns:
        study id -> ``[(word, (rows, cols) map)]``; a map's sum is the share of the word's attention that reaches
        the first view's grid (so maps of different words compare on the same scale). Finding prompts (the last 14
        of the K, when the model has them) come from the finding head, not from a place in the image, so the
        attention on them is not drawn.
    """
    out: dict[str, list[tuple[str, np.ndarray]]] = {}
    for start in range(0, images.shape[0], batch_size):
        vmask = None if view_mask is None else view_mask[start : start + batch_size]
        weights, (rows, cols) = prompt_token_map(network, images[start : start + batch_size], vmask)
        for b in range(weights.shape[0]):
            record = analysis.studies[start + b]
            maps = []
            for w, (word, _) in enumerate(record.words):
                on_prompts = torch.from_numpy(record.word_prompt_attention(w, layers)).float()  # (K,)
                on_prompts = on_prompts[: weights.shape[1]]  # the projector's prompts; finding prompts come last
                grid = (on_prompts @ weights[b]).reshape(rows, cols).numpy()
                maps.append((word, grid))
            out[record.id] = maps
    return out
