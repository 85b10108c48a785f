"""Small PNG plots drawn with Pillow only (no matplotlib): histograms, a heatmap and image overlays.

The analyses must run wherever the core package runs, so plotting uses Pillow (already a dependency). The figures
are plain but labelled: a title, axis names, tick values, a legend or a colour bar.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["colormap", "histogram_png", "heatmap_png", "overlay_png", "SERIES_COLORS"]

logger = logging.getLogger(__name__)

#: colours of successive histogram series (RGB)
SERIES_COLORS: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
)  # fmt: skip

# anchors of a perceptually ordered colormap (dark blue -> teal -> green -> yellow), close to viridis
_ANCHORS = np.array(
    [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float32
)  # fmt: skip


def colormap(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] (clipped) to RGB uint8 colours, shape ``values.shape + (3,)``."""
    v = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0) * (len(_ANCHORS) - 1)
    low = np.floor(v).astype(int).clip(0, len(_ANCHORS) - 2)
    frac = (v - low)[..., None]
    rgb = _ANCHORS[low] * (1.0 - frac) + _ANCHORS[low + 1] * frac
    return rgb.round().astype(np.uint8)


def _font(size: int = 12) -> ImageFont.ImageFont:
    try:  # Pillow >= 10.1: a scalable default font
        return ImageFont.load_default(size=size)
    except TypeError:  # older Pillow: the small bitmap font
        return ImageFont.load_default()


def _text_width(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont) -> float:
    return float(draw.textlength(text, font=font))


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1000 or magnitude < 0.01:
        return f"{value:.1e}"
    if magnitude >= 10:
        return f"{value:.0f}"
    return f"{value:.2f}"


def _save(image: Image.Image, path: str | os.PathLike) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out, format="PNG")
    logger.info("wrote %s", out)
    return out


def histogram_png(
    path: str | os.PathLike,
    series: Mapping[str, Sequence[float] | np.ndarray],
    title: str = "",
    xlabel: str = "",
    bins: int = 40,
    size: tuple[int, int] = (640, 400),
    log_x: bool | None = None,
) -> Path:
    """Overlaid histograms (shares of each series per bin, so series of different sizes compare) as a PNG.

    Args:
        path: output file.
        series: name -> values; empty series are listed in the legend but not drawn.
        title: figure title.
        xlabel: x-axis name.
        bins: number of bins over the common range of all series.
        size: image width and height in pixels.
        log_x: bin on a log10 axis (None: when all values are positive and span more than a factor of 20, e.g.
            prompt norms far larger than word-embedding norms).

    Returns:
        the written path.

    Raises:
        ValueError: no finite value in any series.
    """
    arrays = {name: np.asarray(values, dtype=np.float64).ravel() for name, values in series.items()}
    arrays = {name: a[np.isfinite(a)] for name, a in arrays.items()}
    everything = np.concatenate(list(arrays.values()) or [np.zeros(0)])
    if everything.size == 0:
        raise ValueError("histogram_png: no finite values to plot")
    if log_x is None:
        log_x = bool(everything.min() > 0 and everything.max() / everything.min() > 20)
    elif log_x and everything.min() <= 0:
        raise ValueError("histogram_png: a log axis needs positive values")
    scale = np.log10 if log_x else (lambda v: v)
    lo, hi = float(scale(everything.min())), float(scale(everything.max()))
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    densities = {}
    for name, a in arrays.items():
        if a.size:
            counts, _ = np.histogram(scale(a), bins=edges)
            densities[name] = counts / counts.sum()
    top = max((float(d.max()) for d in densities.values()), default=1.0) or 1.0

    width, height = size
    left, right, upper, lower = 60, 20, 40, 50
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    font = _font()
    plot_w, plot_h = width - left - right, height - upper - lower
    draw.rectangle([left, upper, left + plot_w, upper + plot_h], outline="black")
    for name, dens in densities.items():
        color = SERIES_COLORS[list(arrays).index(name) % len(SERIES_COLORS)]
        points = []
        for i, d in enumerate(dens):
            x0 = left + plot_w * i / bins
            x1 = left + plot_w * (i + 1) / bins
            y = upper + plot_h * (1.0 - d / top)
            points.extend([(x0, y), (x1, y)])
        base = upper + plot_h
        draw.line([(left, base), *points, (left + plot_w, base)], fill=color, width=2)
    for frac in (0.0, 0.25, 0.5, 0.75, 1.0):  # x ticks
        x = left + plot_w * frac
        draw.line([(x, upper + plot_h), (x, upper + plot_h + 4)], fill="black")
        value = lo + (hi - lo) * frac
        label = _fmt(10**value if log_x else value)
        draw.text((x - _text_width(draw, label, font) / 2, upper + plot_h + 6), label, fill="black", font=font)
    for frac in (0.0, 0.5, 1.0):  # y ticks (share of values per bin)
        y = upper + plot_h * (1.0 - frac)
        draw.line([(left - 4, y), (left, y)], fill="black")
        draw.text((4, y - 5), _fmt(top * frac), fill="black", font=font)
    draw.text((left, 10), title, fill="black", font=font)
    axis_name = f"{xlabel} (log scale)" if log_x else xlabel
    draw.text((left + (plot_w - _text_width(draw, axis_name, font)) / 2, height - 20), axis_name, fill="black",
              font=font)  # fmt: skip
    draw.text((4, upper - 16), "share", fill="black", font=font)
    for k, name in enumerate(arrays):  # legend
        color = SERIES_COLORS[k % len(SERIES_COLORS)]
        y = upper + 6 + 16 * k
        label = f"{name} (n={arrays[name].size})"
        x = left + plot_w - 16 - _text_width(draw, label, font)
        draw.rectangle([x - 14, y, x - 4, y + 8], fill=color)
        draw.text((x, y - 3), label, fill="black", font=font)
    return _save(img, path)


def heatmap_png(
    path: str | os.PathLike,
    matrix: np.ndarray,
    title: str = "",
    row_label: str = "layer",
    col_label: str = "head",
    vmin: float | None = None,
    vmax: float | None = None,
    cell: int = 48,
) -> Path:
    """A matrix (e.g. layers x heads) as a heatmap with each cell's value written in it and a colour bar.

    Args:
        path: output file.
        matrix: 2-D array.
        title: figure title.
        row_label: name of the rows (numbered from 0).
        col_label: name of the columns (numbered from 0).
        vmin: value of the darkest colour (default: the minimum).
        vmax: value of the brightest colour (default: the maximum).
        cell: cell side in pixels.

    Returns:
        the written path.
    """
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.size == 0:
        raise ValueError(f"heatmap_png needs a non-empty 2-D matrix, got shape {m.shape}")
    lo = float(np.nanmin(m)) if vmin is None else float(vmin)
    hi = float(np.nanmax(m)) if vmax is None else float(vmax)
    scale = (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)
    rows, cols = m.shape
    left, upper, bar = 70, 40, 60
    width = left + cols * cell + bar + 20
    height = upper + rows * cell + 40
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font = _font()
    colors = colormap(scale)
    for r in range(rows):
        for c in range(cols):
            x0, y0 = left + c * cell, upper + r * cell
            rgb = tuple(int(v) for v in colors[r, c])
            draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=rgb)
            text = _fmt(float(m[r, c]))
            ink = "black" if scale[r, c] > 0.6 else "white"
            draw.text((x0 + (cell - _text_width(draw, text, font)) / 2, y0 + cell // 2 - 6), text, fill=ink, font=font)
        draw.text((left - 20, upper + r * cell + cell // 2 - 5), str(r), fill="black", font=font)
    for c in range(cols):
        draw.text((left + c * cell + cell // 2 - 3, upper + rows * cell + 4), str(c), fill="black", font=font)
    draw.text((4, upper + rows * cell // 2), row_label, fill="black", font=font)
    draw.text((left + (cols * cell - _text_width(draw, col_label, font)) / 2, upper + rows * cell + 20), col_label,
              fill="black", font=font)  # fmt: skip
    draw.text((left, 10), title, fill="black", font=font)
    bx = left + cols * cell + 20
    steps = max(rows * cell, 2)
    ramp = colormap(np.linspace(1.0, 0.0, steps))
    for i in range(steps):
        draw.line([(bx, upper + i), (bx + 12, upper + i)], fill=tuple(int(v) for v in ramp[i]))
    draw.text((bx + 14, upper - 4), _fmt(hi), fill="black", font=font)
    draw.text((bx + 14, upper + steps - 8), _fmt(lo), fill="black", font=font)
    return _save(img, path)


def overlay_png(
    path: str | os.PathLike,
    image: np.ndarray,
    heat: np.ndarray,
    title: str = "",
    boxes: Sequence[Sequence[float]] | None = None,
    alpha: float = 0.45,
    size: int = 256,
) -> Path:
    """A radiograph with a coarse attention map blended over it (and optional ground-truth boxes).

    Args:
        path: output file.
        image: ``(H, W)`` grey image in [0, 1] (display convention).
        heat: ``(h, w)`` non-negative map over the image (e.g. attention over the encoder's token grid); it is
            min-max scaled to [0, 1] (so the cells the word looks at most stand out even when the map is nearly
            flat; the caption should say how much attention the map holds) and resized bilinearly to the image.
        title: caption written above the image.
        boxes: normalised ``[x0, y0, x1, y1]`` boxes (fractions of width / height, origin top-left) drawn as
            outlines, e.g. where the phantom generator drew a finding.
        alpha: opacity of the heat colours at the map's maximum.
        size: side of the drawn square image in pixels.

    Returns:
        the written path.
    """
    grey = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    if grey.ndim != 2:
        raise ValueError(f"overlay_png needs a 2-D image, got shape {grey.shape}")
    h = np.asarray(heat, dtype=np.float32)
    if h.ndim != 2:
        raise ValueError(f"overlay_png needs a 2-D heat map, got shape {h.shape}")
    h = np.clip(h, 0.0, None)
    span = float(h.max() - h.min())
    h = (h - h.min()) / span if span > 0 else np.zeros_like(h)
    base = Image.fromarray((grey * 255).round().astype(np.uint8)).resize((size, size), Image.BILINEAR)
    heat_img = Image.fromarray(h).resize((size, size), Image.BILINEAR)
    heat_up = np.clip(np.asarray(heat_img, dtype=np.float32), 0.0, 1.0)
    rgb_base = np.repeat(np.asarray(base, dtype=np.float32)[..., None], 3, axis=2)
    weight = (alpha * heat_up)[..., None]
    blended = rgb_base * (1.0 - weight) + colormap(heat_up).astype(np.float32) * weight
    canvas = Image.new("RGB", (size, size + 20), "white")
    canvas.paste(Image.fromarray(blended.round().astype(np.uint8)), (0, 20))
    draw = ImageDraw.Draw(canvas)
    for box in boxes or []:
        x0, y0, x1, y1 = (float(v) * size for v in box)
        draw.rectangle([x0, 20 + y0, x1, 20 + y1], outline=(255, 40, 40), width=2)
    draw.text((4, 4), title, fill="black", font=_font())
    return _save(canvas, path)
