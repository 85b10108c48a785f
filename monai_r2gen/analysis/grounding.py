"""Do finding words look where the finding is? A check against the phantom generator's finding boxes.

The synthetic data set records, per study and view, the boxes where each finding was drawn (``findings.json``).
For every report word that names a finding present in the study (e.g. "effusion" in a study with a pleural
effusion), :func:`box_attention` measures the share of the word's image attention (its map over the frontal view's
token grid) that falls inside the finding's boxes, and compares it with the boxes' share of the image area, which
is what a uniform map would give. The ratio ``inside / area`` is above 1 when the word looks at the finding more
than chance.

Views are assumed square (as the phantoms are): the loader's resize-and-pad then keeps normalised coordinates.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["FINDING_WORDS", "finding_kind_of", "box_coverage", "box_attention", "grounding_table",
           "summarize_grounding"]  # fmt: skip

logger = logging.getLogger(__name__)

#: report words that name each phantom finding kind (lower-case; a word names a kind if it is listed here)
FINDING_WORDS: dict[str, tuple[str, ...]] = {
    "pleural_effusion": ("effusion", "effusions"),
    "pneumothorax": ("pneumothorax",),
    "consolidation": ("consolidation", "bronchograms"),
    "lung_nodule": ("nodule", "mass"),
    "edema": ("edema",),
    "atelectasis": ("atelectasis",),
    "cardiomegaly": ("cardiomegaly", "enlarged"),
    "rib_fracture": ("fracture",),
    "support_devices": ("tube", "catheter"),
}
_WORD_TO_KIND = {word: kind for kind, words in FINDING_WORDS.items() for word in words}


def finding_kind_of(word: str) -> str | None:
    """The finding kind a report word names, or None."""
    return _WORD_TO_KIND.get(word.lower().strip())


def box_coverage(boxes: Sequence[Sequence[float]], grid: tuple[int, int], resolution: int = 8) -> np.ndarray:
    """Fraction of each grid cell covered by the union of normalised boxes.

    Args:
        boxes: ``[x0, y0, x1, y1]`` fractions of the image width / height, origin top-left.
        grid: ``(rows, cols)``.
        resolution: sub-samples per cell side.

    Returns:
        ``(rows, cols)`` array in [0, 1].
    """
    rows, cols = grid
    h, w = rows * resolution, cols * resolution
    ys = (np.arange(h) + 0.5) / h
    xs = (np.arange(w) + 0.5) / w
    mask = np.zeros((h, w), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        mask |= ((ys >= y0) & (ys <= y1))[:, None] & ((xs >= x0) & (xs <= x1))[None, :]
    return mask.reshape(rows, resolution, cols, resolution).mean(axis=(1, 3))


def box_attention(heat: np.ndarray, boxes: Sequence[Sequence[float]]) -> tuple[float, float]:
    """``(inside, area)``: share of a non-negative map's mass inside the boxes, and the boxes' share of the area.

    Raises:
        ValueError: a map with no mass.
    """
    heat = np.clip(np.asarray(heat, dtype=np.float64), 0.0, None)
    total = heat.sum()
    if total <= 0:
        raise ValueError("the attention map has no mass")
    cover = box_coverage(boxes, heat.shape)
    return float((heat * cover).sum() / total), float(cover.mean())


def grounding_table(
    heatmaps: Mapping[str, Sequence[tuple[str, np.ndarray]]],
    finding_boxes: Mapping[str, Sequence[Mapping[str, Any]]],
    view: str = "frontal",
) -> list[dict[str, Any]]:
    """One row per finding word whose finding is present (with boxes on ``view``) in its study.

    Args:
        heatmaps: study id -> ``[(word, map)]`` from :func:`~monai_r2gen.analysis.attention.word_heatmaps`.
        finding_boxes: study id -> findings with ``"kind"`` and ``"boxes"`` (see
            :func:`~monai_r2gen.analysis.loading.read_finding_boxes`).
        view: the view the maps are drawn on.

    Returns:
        rows ``{"study", "word", "kind", "inside", "area", "ratio"}``.
    """
    rows = []
    for study_id, maps in heatmaps.items():
        boxes_by_kind: dict[str, list[list[float]]] = {}
        for finding in finding_boxes.get(study_id, []):
            boxes_by_kind.setdefault(finding["kind"], []).extend(finding.get("boxes", {}).get(view, []))
        for word, heat in maps:
            kind = finding_kind_of(word)
            if kind is None or not boxes_by_kind.get(kind):
                continue
            try:
                inside, area = box_attention(heat, boxes_by_kind[kind])
            except ValueError:
                continue
            rows.append({"study": study_id, "word": word, "kind": kind, "inside": inside, "area": area,
                         "ratio": inside / area if area > 0 else float("nan")})  # fmt: skip
    return rows


def summarize_grounding(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per finding kind: number of words, mean share inside the boxes, mean area share, mean ratio, and the share
    of words whose ratio is above 1 (looked at the finding more than a uniform map would)."""
    kinds: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        kinds.setdefault(row["kind"], []).append(row)
    out = []
    for kind in sorted(kinds):
        group = kinds[kind]
        ratios = np.array([r["ratio"] for r in group], dtype=np.float64)
        out.append({
            "kind": kind,
            "words": len(group),
            "inside_mean": float(np.mean([r["inside"] for r in group])),
            "area_mean": float(np.mean([r["area"] for r in group])),
            "ratio_mean": float(np.nanmean(ratios)) if np.isfinite(ratios).any() else float("nan"),
            "above_chance": float(np.mean(ratios > 1.0)),
        })  # fmt: skip
    return out
