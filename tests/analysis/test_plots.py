"""PIL-only PNG plots."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from monai_r2gen.analysis.plots import colormap, heatmap_png, histogram_png, overlay_png


def test_colormap_ends_and_shape():
    out = colormap(np.array([[0.0, 1.0], [-1.0, 2.0]]))
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8
    assert tuple(out[0, 0]) == (68, 1, 84) and tuple(out[0, 1]) == (253, 231, 37)
    assert tuple(out[1, 0]) == tuple(out[0, 0]) and tuple(out[1, 1]) == tuple(out[0, 1])  # clipped


def test_histogram_writes_png(tmp_path):
    path = histogram_png(
        tmp_path / "sub" / "h.png", {"a": np.random.rand(50), "b": [2.0, 3.0], "empty": []}, title="t", xlabel="x"
    )
    with Image.open(path) as png:
        assert png.format == "PNG" and png.size == (640, 400)
        pixels = np.asarray(png.convert("RGB"))
    assert (pixels == (31, 119, 180)).all(-1).any()  # the first series is drawn in its colour
    with pytest.raises(ValueError):
        histogram_png(tmp_path / "none.png", {"a": [np.nan]})


def test_heatmap_cells_follow_values(tmp_path):
    matrix = np.array([[0.0, 1.0], [0.5, 0.25]])
    path = heatmap_png(tmp_path / "m.png", matrix, cell=40)
    with Image.open(path) as png:
        pixels = np.asarray(png.convert("RGB"))
    # corner pixels of the cells (away from the printed values): darkest for 0, brightest for 1
    assert tuple(pixels[40 + 2, 70 + 2]) == (68, 1, 84)
    assert tuple(pixels[40 + 2, 70 + 40 + 2]) == (253, 231, 37)
    with pytest.raises(ValueError):
        heatmap_png(tmp_path / "bad.png", np.zeros(3))


def test_overlay_brightens_where_attention_is(tmp_path):
    image = np.zeros((64, 64))
    heat = np.zeros((4, 4))
    heat[0, 0] = 1.0
    path = overlay_png(tmp_path / "o.png", image, heat, boxes=[[0.5, 0.5, 1.0, 1.0]], size=128)
    with Image.open(path) as png:
        assert png.size == (128, 148)
        pixels = np.asarray(png.convert("RGB")).astype(int)
    assert pixels[20 + 5, 5].sum() > 100  # coloured where the map is high
    assert pixels[20 + 50, 110].sum() == 0  # black image, no attention, no box
    assert tuple(pixels[20 + 64, 100]) == (255, 40, 40)  # box outline
