"""The analyses end to end: load a model and studies, compute, write JSON / Markdown tables and PNG figures.

These are what ``monai-r2gen analyze prompts`` and ``monai-r2gen analyze attention`` run; they work on any trained
model directory and on the embedded default (``model="embedded"``, random weights, built with a tokenizer trained
on the manifest's training reports).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monai_r2gen.analysis.loading import (
    EMBEDDED,
    load_model,
    load_stage_weights,
    load_studies,
    read_finding_boxes,
    stack_studies,
    train_reports,
)

__all__ = ["analyze_prompts", "analyze_attention"]

logger = logging.getLogger(__name__)


def _label(model: str | os.PathLike | None) -> str:
    return EMBEDDED if model is None or str(model) == EMBEDDED else Path(model).name or str(model)


def _model(model: str | os.PathLike | None, manifest: str | os.PathLike, device: str, **kwargs: Any) -> Any:
    corpus = train_reports(manifest) if model is None or str(model) == EMBEDDED else None
    return load_model(model, corpus=corpus, device=device, **kwargs)


def analyze_prompts(
    model: str | os.PathLike | None,
    manifest: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    split: str = "test",
    max_studies: int = 32,
    compare: Sequence[str | os.PathLike] = (),
    run_dir: str | os.PathLike | None = None,
    stages: Sequence[str] = (),
    top_k: int = 5,
    image_root: str | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Soft-prompt statistics of one or more models on the same studies; table + histograms in ``out_dir``.

    Args:
        model: model directory or ``"embedded"``.
        manifest: annotation.json / JSONL / CSV.
        out_dir: output folder (``prompts.json``, ``prompts.md``, ``prompt_norms.png``, ``prompt_max_cosine.png``).
        split: manifest split of the studies.
        max_studies: first N studies of the split.
        compare: further model directories analysed on the same studies (e.g. a stage-1-only model).
        run_dir: a training run's output directory; with ``stages``, the model is also analysed with each stage's
            hand-over weights loaded (e.g. ``stages=("stage1", "stage2")`` shows how stage 2 moved the prompts).
        stages: stage names of ``run_dir``.
        top_k: nearest vocabulary entries kept per prompt.
        image_root: folder the manifest's relative image paths are relative to.
        device: torch device.

    Returns:
        ``{"rows", "table", "files"}`` (see :func:`~monai_r2gen.analysis.prompts.write_prompt_report`).
    """
    from monai_r2gen.analysis.prompts import soft_prompt_statistics, write_prompt_report

    network = _model(model, manifest, device, eager_attention=False)
    studies = load_studies(
        manifest,
        split,
        image_root=image_root,
        max_studies=max_studies,
        image_size=int(network.config.image_size or 224),
        max_views=network.config.max_views,
    )
    images, view_mask = stack_studies(studies)
    ids = [s["id"] for s in studies]
    results = []
    if run_dir is not None and stages:
        for stage in stages:
            staged = _model(model, manifest, device, eager_attention=False)
            load_stage_weights(staged, run_dir, stage)
            results.append(soft_prompt_statistics(staged, images, view_mask, ids, top_k=top_k, name=stage))
    else:
        results.append(soft_prompt_statistics(network, images, view_mask, ids, top_k=top_k, name=_label(model)))
    for other in compare:
        net = _model(other, manifest, device, eager_attention=False)
        results.append(soft_prompt_statistics(net, images, view_mask, ids, top_k=top_k, name=_label(other)))
    return write_prompt_report(results, out_dir)


def _safe(word: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", word)[:40] or "_"


def analyze_attention(
    model: str | os.PathLike | None,
    manifest: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    split: str = "test",
    max_studies: int = 8,
    reports: str = "generated",
    findings: str | os.PathLike | None = None,
    words: Sequence[str] | None = None,
    layers: Sequence[int] | None = None,
    max_new_tokens: int = 64,
    overlays: bool = True,
    image_root: str | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Visual attention of report words: layer x head shares, per-word overlays, and the phantom box check.

    Args:
        model: model directory or ``"embedded"``.
        manifest: annotation.json / JSONL / CSV.
        out_dir: output folder: ``attention.json`` (summary, layer x head matrix, per-study tokens and shares),
            ``attention_heatmap.png``, ``overlays/<study>/<nn>_<word>.png`` and, with finding boxes,
            ``grounding.json`` + ``grounding.md``.
        split: manifest split.
        max_studies: first N studies.
        reports: "generated" (greedy reports of the model) or "reference" (the manifest's reports, teacher-forced).
        findings: ``findings.json`` of a phantom data set (default: the one beside the manifest, when present).
        words: draw overlays only for these words (default: every word).
        layers: LLM layers averaged in the overlays (default: all).
        max_new_tokens: length limit of generated reports.
        overlays: write the per-word PNG overlays.
        image_root: folder of relative image paths.
        device: torch device.

    Returns:
        ``{"summary", "grounding", "files"}``.
    """
    from monai_r2gen.analysis.attention import collect_attention, word_heatmaps
    from monai_r2gen.analysis.grounding import finding_kind_of, grounding_table, summarize_grounding
    from monai_r2gen.analysis.plots import heatmap_png, overlay_png
    from monai_r2gen.analysis.prompts import format_table

    if reports not in ("generated", "reference"):
        raise ValueError(f"reports must be 'generated' or 'reference', got {reports!r}")
    network = _model(model, manifest, device)
    studies = load_studies(
        manifest,
        split,
        image_root=image_root,
        max_studies=max_studies,
        image_size=int(network.config.image_size or 224),
        max_views=network.config.max_views,
    )
    images, view_mask = stack_studies(studies)
    texts = [s["report"] for s in studies] if reports == "reference" else None
    analysis = collect_attention(network, images, view_mask, [s["id"] for s in studies], reports=texts,
                                 max_new_tokens=max_new_tokens)  # fmt: skip
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    matrix = analysis.share_matrix()
    finding = getattr(network, "finding_prompts", None)
    what = (f"{analysis.num_prompts} prompts ({finding.num_labels} from findings)" if finding is not None
            else f"{analysis.num_prompts} visual prompts")  # fmt: skip
    files: dict[str, str] = {
        "heatmap": str(heatmap_png(out / "attention_heatmap.png", matrix, vmin=0.0,
                                   title=f"share of attention on the {what}")),
    }  # fmt: skip
    summary = analysis.summary()
    record = {
        "summary": summary,
        "share_matrix": np.round(matrix, 6).tolist(),
        "studies": [
            {"id": s.id, "report": s.report, "tokens": s.tokens,
             "visual_share_per_token": np.round(s.visual_share.mean(axis=(1, 2)), 5).tolist(),
             "words": [w for w, _ in s.words]}
            for s in analysis.studies
        ],
    }  # fmt: skip
    grounding_rows: list[dict[str, Any]] = []
    grounding_summary: list[dict[str, Any]] = []
    try:
        maps = word_heatmaps(network, analysis, images, view_mask, layers=layers)
    except ValueError as exc:  # e.g. a pooled encoder: no grid to draw on
        logger.warning("no per-word overlays: %s", exc)
        record["overlays"] = f"not available: {exc}"
        maps = {}
    boxes_path = Path(findings) if findings else Path(manifest).parent / "findings.json"
    boxes = read_finding_boxes(boxes_path) if (findings or boxes_path.is_file()) and maps else {}
    if overlays and maps:
        wanted = {w.lower() for w in words} if words else None
        count = 0
        for study, (sid, word_maps) in zip(studies, maps.items()):
            frontal = study["image"][0].float().mean(0).numpy()
            study_boxes = {f["kind"]: f.get("boxes", {}).get("frontal", []) for f in boxes.get(sid, [])}
            for i, (word, heat) in enumerate(word_maps):
                if wanted is not None and word not in wanted:
                    continue
                kind = finding_kind_of(word)
                overlay_png(out / "overlays" / _safe(sid) / f"{i:02d}_{_safe(word)}.png", frontal, heat,
                            title=f"{sid}: '{word}' ({heat.sum():.0%} on the image)",
                            boxes=study_boxes.get(kind, []) if kind else None)  # fmt: skip
                count += 1
        files["overlays"] = str(out / "overlays")
        record["overlay_count"] = count
    if boxes:
        grounding_rows = grounding_table(maps, boxes)
        grounding_summary = summarize_grounding(grounding_rows)
        (out / "grounding.json").write_text(json.dumps({"summary": grounding_summary, "rows": grounding_rows},
                                                       indent=1), encoding="utf-8")  # fmt: skip
        columns = (
            ("kind", "finding"),
            ("words", "words"),
            ("inside_mean", "attention inside boxes"),
            ("area_mean", "box area"),
            ("ratio_mean", "ratio"),
            ("above_chance", "share of words > 1"),
        )
        (out / "grounding.md").write_text(format_table(grounding_summary, columns) + "\n", encoding="utf-8")
        files["grounding"] = str(out / "grounding.json")
    (out / "attention.json").write_text(json.dumps(record, indent=1), encoding="utf-8")
    files["json"] = str(out / "attention.json")
    return {"summary": summary, "grounding": grounding_summary, "files": files}
