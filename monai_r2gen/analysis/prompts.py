"""Soft visual prompts against the LLM's text embeddings.

For every projected visual token (soft prompt) of a set of studies this module measures its L2 norm and its cosine
similarity to every row of the LLM's input embedding matrix, keeping the nearest vocabulary entries. The same two
quantities are computed for the text embeddings themselves (each token's norm and its cosine to its nearest *other*
token), so one can see whether the prompts live where words live (similar norms, high nearest-word cosine) or in a
region of their own (typical for LLaVA-style projectors: prompts are far larger than word embeddings and close to
no word). Comparing the statistics of the same studies after stage 1 and after stage 2 shows how fine-tuning moves
the prompts.

Special tokens (BOS / EOS / pad / unk / the image token) and embedding rows that were only added by resizing are
left out of the text distribution and of the nearest-word search.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["PromptStatistics", "soft_prompt_statistics", "slot_cosine", "text_embedding_statistics", "prompt_table",
           "format_table", "plot_prompt_statistics", "write_prompt_report"]  # fmt: skip

logger = logging.getLogger(__name__)


@dataclass
class PromptStatistics:
    """Norms and nearest-vocabulary cosines of the soft prompts of a set of studies.

    Attributes:
        study_ids: one per analysed study.
        norms: ``(S, K)`` L2 norm of each prompt vector.
        max_cosine: ``(S, K)`` cosine to the nearest vocabulary embedding.
        nearest_ids: ``(S, K, top_k)`` ids of the nearest vocabulary embeddings, nearest first.
        nearest_cosine: ``(S, K, top_k)`` their cosines.
        nearest_tokens: ``(S, K, top_k)`` their token strings.
        text_norms: ``(T,)`` norms of the (non-special) text embeddings.
        text_max_cosine: ``(T',)`` cosine of each (sampled) text embedding to its nearest other text embedding.
        name: label of this model / stage in tables and plots.
        slot_cosine: ``(K,)`` mean pairwise cosine between the prompts of the same slot across studies (1: the slot
            is the same vector for every image, i.e. it carries no information about the study).
    """

    study_ids: list[str]
    norms: np.ndarray
    max_cosine: np.ndarray
    nearest_ids: np.ndarray
    nearest_cosine: np.ndarray
    nearest_tokens: list[list[list[str]]]
    text_norms: np.ndarray
    text_max_cosine: np.ndarray
    name: str = "model"
    slot_cosine: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_prompts(self) -> int:
        """``K``."""
        return int(self.norms.shape[1])

    def summary(self, top_tokens: int = 5) -> dict[str, Any]:
        """Means / medians of the prompt and text distributions and the most frequent nearest tokens."""
        counts = Counter(row[0] for study in self.nearest_tokens for row in study if row)
        text_norm_median = float(np.median(self.text_norms))
        return {
            "name": self.name,
            "studies": len(self.study_ids),
            "prompts_per_study": self.num_prompts,
            "prompt_norm_mean": float(self.norms.mean()),
            "prompt_norm_median": float(np.median(self.norms)),
            "text_norm_mean": float(self.text_norms.mean()),
            "text_norm_median": text_norm_median,
            "norm_ratio": float(np.median(self.norms) / text_norm_median) if text_norm_median > 0 else float("nan"),
            "prompt_max_cosine_mean": float(self.max_cosine.mean()),
            "text_nn_cosine_mean": float(self.text_max_cosine.mean()),
            "slot_cosine_mean": float(np.mean(self.slot_cosine)) if self.slot_cosine is not None else float("nan"),
            "nearest_tokens": [tok for tok, _ in counts.most_common(top_tokens)],
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable record: the summary plus per-study, per-prompt values."""
        return {
            "summary": self.summary(),
            "studies": [
                {
                    "id": sid,
                    "prompts": [
                        {"norm": round(float(self.norms[s, k]), 5),
                         "max_cosine": round(float(self.max_cosine[s, k]), 5),
                         "nearest": [[tok, round(float(c), 5)] for tok, c in
                                     zip(self.nearest_tokens[s][k], self.nearest_cosine[s, k])]}
                        for k in range(self.num_prompts)
                    ],
                }
                for s, sid in enumerate(self.study_ids)
            ],
        }  # fmt: skip


def slot_cosine(prompts: torch.Tensor) -> np.ndarray:
    """``(K,)`` mean pairwise cosine between the prompts of each slot across the ``S`` studies of ``(S, K, H)``
    (NaN with a single study)."""
    count = prompts.shape[0]
    if count < 2:
        return np.full(prompts.shape[1], np.nan)
    unit = prompts / prompts.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    total = unit.sum(dim=0).pow(2).sum(dim=-1)  # |sum u|^2 = S + sum over ordered pairs of cosines
    return ((total - count) / (count * (count - 1))).numpy()


def _text_rows(network: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, embeddings)`` of the non-special rows of the LLM input embeddings that the tokenizer can produce."""
    weight = network.llm.get_input_embeddings().weight.detach().float().cpu()
    tokenizer = network.tokenizer
    usable = min(int(weight.shape[0]), len(tokenizer))
    special = set(getattr(tokenizer, "all_special_ids", []) or []) | {int(network.image_token_id)}
    ids = torch.tensor([i for i in range(usable) if i not in special], dtype=torch.long)
    return ids, weight[ids]


def text_embedding_statistics(
    network: Any, max_tokens: int = 8192, chunk: int = 1024, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Norms of the text embeddings and each one's cosine to its nearest other text embedding.

    Args:
        network: the report generator.
        max_tokens: nearest-neighbour cosines are computed for at most this many (randomly chosen) tokens, against
            the whole vocabulary (a 32k vocabulary would need a 32k x 32k similarity matrix otherwise).
        chunk: rows per block of the similarity computation.
        seed: seed of the token sample.

    Returns:
        ``(norms (T,), nearest_cosine (min(T, max_tokens),))``.
    """
    _, emb = _text_rows(network)
    norms = emb.norm(dim=1)
    unit = emb / norms.clamp_min(1e-12)[:, None]
    rows = torch.arange(emb.shape[0])
    if emb.shape[0] > max_tokens:
        rows = torch.randperm(emb.shape[0], generator=torch.Generator().manual_seed(seed))[:max_tokens]
    nearest = []
    for start in range(0, len(rows), chunk):
        block = rows[start : start + chunk]
        sims = unit[block] @ unit.T
        sims[torch.arange(len(block)), block] = -2.0  # not itself
        nearest.append(sims.max(dim=1).values)
    return norms.numpy(), torch.cat(nearest).numpy()


@torch.no_grad()
def soft_prompt_statistics(
    network: Any,
    images: torch.Tensor,
    view_mask: torch.Tensor | None = None,
    study_ids: Sequence[str] | None = None,
    top_k: int = 5,
    batch_size: int = 16,
    name: str = "model",
    max_text_tokens: int = 8192,
) -> PromptStatistics:
    """Norms and nearest vocabulary embeddings (cosine) of the soft prompts of a batch of studies.

    Args:
        network: a :class:`~monai_r2gen.networks.RadiologyReportGenerator`.
        images: ``(S, V, C, H, W)`` views.
        view_mask: ``(S, V)`` bool.
        study_ids: names of the studies (default: their indices).
        top_k: nearest vocabulary entries kept per prompt.
        batch_size: studies encoded together.
        name: label of the model / stage.
        max_text_tokens: sample size of the text nearest-neighbour distribution.

    Returns:
        the statistics; ``norms`` and ``max_cosine`` have shape ``(S, K)``.
    """
    was_training = network.training
    network.eval()
    device = next(network.projector.parameters()).device
    try:
        prompts = []
        for start in range(0, images.shape[0], batch_size):
            mask = None if view_mask is None else view_mask[start : start + batch_size].to(device)
            out, _ = network.encode_images(images[start : start + batch_size].to(device), mask)
            prompts.append(out.float().cpu())
    finally:
        network.train(was_training)
    prompts_t = torch.cat(prompts)  # (S, K, H)
    ids, emb = _text_rows(network)
    unit_text = emb / emb.norm(dim=1).clamp_min(1e-12)[:, None]
    norms = prompts_t.norm(dim=-1)
    unit = prompts_t / norms.clamp_min(1e-12)[..., None]
    sims = unit.reshape(-1, unit.shape[-1]) @ unit_text.T  # (S*K, T)
    k = min(int(top_k), sims.shape[1])
    values, index = sims.topk(k, dim=1)
    token_ids = ids[index].reshape(*norms.shape, k)
    values = values.reshape(*norms.shape, k)
    tokens = network.tokenizer.convert_ids_to_tokens(token_ids.reshape(-1).tolist())
    per_prompt = [tokens[i : i + k] for i in range(0, len(tokens), k)]
    nested = [per_prompt[s * norms.shape[1] : (s + 1) * norms.shape[1]] for s in range(norms.shape[0])]
    text_norms, text_nn = text_embedding_statistics(network, max_tokens=max_text_tokens)
    ids_list = [str(s) for s in study_ids] if study_ids is not None else [str(i) for i in range(norms.shape[0])]
    return PromptStatistics(
        study_ids=ids_list,
        norms=norms.numpy(),
        max_cosine=values[..., 0].numpy(),
        nearest_ids=token_ids.numpy(),
        nearest_cosine=values.numpy(),
        nearest_tokens=nested,
        text_norms=text_norms,
        text_max_cosine=text_nn,
        name=name,
        slot_cosine=slot_cosine(prompts_t),
    )


_TABLE_COLUMNS = (
    ("name", "model"), ("studies", "studies"), ("prompts_per_study", "K"), ("prompt_norm_median", "prompt norm"),
    ("text_norm_median", "text norm"), ("norm_ratio", "ratio"), ("prompt_max_cosine_mean", "prompt max cos"),
    ("text_nn_cosine_mean", "text NN cos"), ("slot_cosine_mean", "slot cos across studies"),
    ("nearest_tokens", "nearest tokens"),
)  # fmt: skip


def prompt_table(stats: Sequence[PromptStatistics] | Mapping[str, PromptStatistics]) -> list[dict[str, Any]]:
    """One summary row per model / stage (see :meth:`PromptStatistics.summary`)."""
    items = list(stats.values()) if isinstance(stats, Mapping) else list(stats)
    return [s.summary() for s in items]


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]] = _TABLE_COLUMNS) -> str:
    """A Markdown table of summary rows (floats with 3 decimals, lists joined)."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3f}"
        if isinstance(value, (list, tuple)):
            return " ".join(str(v) for v in value)
        return str(value)

    lines = ["| " + " | ".join(title for _, title in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]  # fmt: skip
    lines += ["| " + " | ".join(cell(row.get(key, "")) for key, _ in columns) + " |" for row in rows]
    return "\n".join(lines)


def plot_prompt_statistics(
    stats: Sequence[PromptStatistics] | Mapping[str, PromptStatistics], out_dir: str | os.PathLike
) -> dict[str, Path]:
    """Histograms of prompt norms and of max cosine similarity, each against the text embeddings.

    Returns:
        ``{"norms": path, "max_cosine": path}`` (PNG files in ``out_dir``).
    """
    from monai_r2gen.analysis.plots import histogram_png

    items = list(stats.values()) if isinstance(stats, Mapping) else list(stats)
    out = Path(out_dir)
    norms = {f"prompts {s.name}": s.norms for s in items}
    norms["text embeddings"] = items[0].text_norms
    cosines = {f"prompts {s.name}": s.max_cosine for s in items}
    cosines["text (nearest other word)"] = items[0].text_max_cosine
    return {
        "norms": histogram_png(out / "prompt_norms.png", norms, title="L2 norm: soft prompts vs text embeddings",
                               xlabel="L2 norm"),
        "max_cosine": histogram_png(out / "prompt_max_cosine.png", cosines,
                                    title="cosine to the nearest vocabulary embedding", xlabel="max cosine"),
    }  # fmt: skip


def write_prompt_report(
    stats: Sequence[PromptStatistics] | Mapping[str, PromptStatistics], out_dir: str | os.PathLike
) -> dict[str, Any]:
    """Write ``prompts.json`` (every value), ``prompts.md`` (the table) and the two histograms to ``out_dir``.

    Returns:
        ``{"rows": summary rows, "table": markdown, "files": {name: path}}``.
    """
    items = list(stats.values()) if isinstance(stats, Mapping) else list(stats)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = prompt_table(items)
    table = format_table(rows)
    (out / "prompts.json").write_text(json.dumps({s.name: s.to_dict() for s in items}, indent=1), encoding="utf-8")
    (out / "prompts.md").write_text(table + "\n", encoding="utf-8")
    files = {"json": out / "prompts.json", "table": out / "prompts.md", **plot_prompt_statistics(items, out)}
    return {"rows": rows, "table": table, "files": {k: str(v) for k, v in files.items()}}
