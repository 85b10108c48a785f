"""Finding words against the phantom generator's boxes."""

from __future__ import annotations

import numpy as np
import pytest

from monai_r2gen.analysis.grounding import (
    box_attention,
    box_coverage,
    finding_kind_of,
    grounding_table,
    summarize_grounding,
)


def test_box_coverage_fractions():
    cover = box_coverage([[0.0, 0.0, 0.5, 0.5], [0.25, 0.25, 0.5, 0.5]], (2, 2))
    np.testing.assert_allclose(cover, [[1.0, 0.0], [0.0, 0.0]])
    cover = box_coverage([[0.0, 0.0, 0.25, 1.0]], (2, 2))
    np.testing.assert_allclose(cover, [[0.5, 0.0], [0.5, 0.0]])


def test_box_attention_inside_and_area():
    heat = np.array([[3.0, 1.0], [0.0, 0.0]])
    inside, area = box_attention(heat, [[0.0, 0.0, 0.5, 0.5]])
    assert inside == pytest.approx(0.75) and area == pytest.approx(0.25)
    with pytest.raises(ValueError):
        box_attention(np.zeros((2, 2)), [[0, 0, 1, 1]])


def test_grounding_counts_only_present_findings():
    assert finding_kind_of("Effusion") == "pleural_effusion" and finding_kind_of("lungs") is None
    hot = np.zeros((4, 4))
    hot[3, 0] = 1.0  # bottom-left cell
    heatmaps = {"s1": [("small", hot), ("effusion", hot), ("pneumothorax", hot)], "s2": [("effusion", hot)]}
    boxes = {
        "s1": [{"kind": "pleural_effusion", "boxes": {"frontal": [[0.0, 0.75, 0.25, 1.0]]}}],
        "s2": [{"kind": "pleural_effusion", "boxes": {"frontal": [[0.75, 0.0, 1.0, 0.25]]}}],
    }
    rows = grounding_table(heatmaps, boxes)
    assert [(r["study"], r["word"]) for r in rows] == [("s1", "effusion"), ("s2", "effusion")]
    assert rows[0]["inside"] == pytest.approx(1.0) and rows[0]["ratio"] == pytest.approx(16.0)
    assert rows[1]["inside"] == 0.0
    summary = summarize_grounding(rows)
    assert summary == [
        {
            "kind": "pleural_effusion",
            "words": 2,
            "inside_mean": 0.5,
            "area_mean": 0.0625,
            "ratio_mean": 8.0,
            "above_chance": 0.5,
        }
    ]
