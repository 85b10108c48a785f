"""Pixel grids, patient pose and the small vectorised drawing primitives shared by the phantom renderers.

Every structure of the phantom is defined in *anatomy coordinates* ``(u, v)``: ``u`` runs from the image's left to
its right (on a frontal view the patient's right is on the image's left, so the right lung has ``u < 0``; on a
lateral view ``u`` runs from anterior to posterior), ``v`` from head to feet. One anatomy unit is roughly 35 cm, so
the internal thoracic width is about 0.8. A :class:`Canvas` maps the pixel grid of one view to these coordinates
through the patient pose (centre, scale, in-plane rotation), so that the same phantom renders the same anatomy at
any image size: only the pixel sampling changes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["Canvas", "smoothstep", "ramp", "bump", "value_noise", "resize_bilinear", "mask_bbox", "smooth_path", "CM"]

#: anatomy units per centimetre (the internal thoracic width of an adult is about 28 cm ~ 0.8 units).
CM = 0.8 / 28.0

F32 = np.float32


class Canvas:
    """The pixel grid of one view and the patient pose that maps it to anatomy coordinates.

    Args:
        size: image side in pixels (square images).
        center: image position ``(x, y)`` in [0, 1] of the anatomy origin.
        scale: image fraction covered by one anatomy unit.
        angle: in-plane rotation of the patient, radians (positive turns the patient clockwise on screen).
    """

    def __init__(self, size: int, center: tuple[float, float], scale: float, angle: float) -> None:
        self.size = int(size)
        self.center = (float(center[0]), float(center[1]))
        self.scale = float(scale)
        self.angle = float(angle)
        coords = (np.arange(self.size, dtype=F32) + F32(0.5)) / F32(self.size)
        dx = coords[None, :] - F32(self.center[0])
        dy = coords[:, None] - F32(self.center[1])
        c, s = F32(math.cos(self.angle)), F32(math.sin(self.angle))
        inv = F32(1.0 / self.scale)
        self.u = ((c * dx + s * dy) * inv).astype(F32)
        self.v = ((-s * dx + c * dy) * inv).astype(F32)
        #: anatomy units covered by one pixel
        self.unit_per_px = 1.0 / (self.size * self.scale)

    def px(self, n_pixels: float) -> float:
        """Length in anatomy units of ``n_pixels`` pixels."""
        return float(n_pixels) * self.unit_per_px

    def to_pixels(self, u: np.ndarray | float, v: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Anatomy coordinates -> continuous pixel coordinates ``(col, row)`` (pixel centres at integer + 0.5)."""
        u = np.asarray(u, dtype=np.float64)
        v = np.asarray(v, dtype=np.float64)
        c, s = math.cos(self.angle), math.sin(self.angle)
        x = self.center[0] + self.scale * (c * u - s * v)
        y = self.center[1] + self.scale * (s * u + c * v)
        return x * self.size, y * self.size

    def window(self, u0: float, u1: float, v0: float, v1: float, pad_px: int = 2) -> tuple[slice, slice] | None:
        """Pixel slices ``(rows, cols)`` covering the anatomy rectangle ``[u0, u1] x [v0, v1]`` (None if off-image)."""
        cols, rows = self.to_pixels(np.array([u0, u1, u0, u1]), np.array([v0, v0, v1, v1]))
        r0 = max(int(math.floor(rows.min())) - pad_px, 0)
        r1 = min(int(math.ceil(rows.max())) + pad_px, self.size)
        c0 = max(int(math.floor(cols.min())) - pad_px, 0)
        c1 = min(int(math.ceil(cols.max())) + pad_px, self.size)
        if r0 >= r1 or c0 >= c1:
            return None
        return slice(r0, r1), slice(c0, c1)

    def crop(self, win: tuple[slice, slice]) -> tuple[np.ndarray, np.ndarray]:
        """The ``(u, v)`` coordinates of a window."""
        return self.u[win], self.v[win]

    def polyline(self, points: Sequence[tuple[float, float]], width_px: float) -> tuple[np.ndarray, tuple] | None:
        """Anti-aliased coverage of a thick polyline given in anatomy coordinates.

        The width is in pixels so that thin devices keep a minimum visible thickness at any image size.

        Returns:
            ``(coverage, window)``: coverage in [0, 1] over the pixel window ``(rows, cols)``, or None when the
            polyline lies outside the image.
        """
        pts = np.asarray(points, dtype=np.float64)
        cols, rows = self.to_pixels(pts[:, 0], pts[:, 1])
        half = 0.5 * float(width_px)
        pad = half + 2.0
        r0 = max(int(math.floor(rows.min() - pad)), 0)
        r1 = min(int(math.ceil(rows.max() + pad)), self.size)
        c0 = max(int(math.floor(cols.min() - pad)), 0)
        c1 = min(int(math.ceil(cols.max() + pad)), self.size)
        if r0 >= r1 or c0 >= c1:
            return None
        yy = (np.arange(r0, r1, dtype=F32) + F32(0.5))[:, None, None]
        xx = (np.arange(c0, c1, dtype=F32) + F32(0.5))[None, :, None]
        ax, ay = cols[:-1].astype(F32), rows[:-1].astype(F32)
        bx, by = cols[1:].astype(F32), rows[1:].astype(F32)
        ex, ey = bx - ax, by - ay
        len2 = np.maximum(ex * ex + ey * ey, F32(1e-6))
        t = np.clip(((xx - ax) * ex + (yy - ay) * ey) / len2, 0.0, 1.0)
        dx = xx - (ax + t * ex)
        dy = yy - (ay + t * ey)
        dist = np.sqrt((dx * dx + dy * dy).min(axis=-1))
        coverage = np.clip(F32(half + 0.5) - dist, 0.0, 1.0).astype(F32)
        return coverage, (slice(r0, r1), slice(c0, c1))


def smooth_path(points: Sequence[tuple[float, float]], samples: int = 6) -> list[tuple[float, float]]:
    """Uniform Catmull-Rom spline through ``points``, ``samples`` segments per span."""
    pts = np.asarray(points, dtype=np.float64)
    if len(pts) < 3:
        return [tuple(p) for p in pts]
    ext = np.vstack([2 * pts[0] - pts[1], pts, 2 * pts[-1] - pts[-2]])
    t = np.linspace(0.0, 1.0, samples, endpoint=False)[:, None]
    t2, t3 = t * t, t * t * t
    out = []
    for i in range(1, len(ext) - 2):
        p0, p1, p2, p3 = ext[i - 1], ext[i], ext[i + 1], ext[i + 2]
        seg = 0.5 * (2 * p1 + (p2 - p0) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t2 + (3 * (p1 - p2) + p3 - p0) * t3)
        out.extend(map(tuple, seg))
    out.append(tuple(pts[-1]))
    return out


def _unit(t: np.ndarray) -> np.ndarray:
    np.maximum(t, F32(0.0), out=t)
    np.minimum(t, F32(1.0), out=t)
    return t


def ramp(d: np.ndarray, width: float) -> np.ndarray:
    """Linear soft step: 0 for ``d <= -width/2``, 1 for ``d >= width/2``."""
    t = np.multiply(d, F32(1.0 / width), dtype=F32)
    t += F32(0.5)
    return _unit(t)


def smoothstep(d: np.ndarray, width: float) -> np.ndarray:
    """Smooth (C1) step of the given width centred on ``d = 0``."""
    t = ramp(d, width)
    out = np.multiply(t, F32(-2.0))
    out += F32(3.0)
    out *= t
    out *= t
    return out


def bump(d: np.ndarray, half_width: float) -> np.ndarray:
    """Smooth bump, 1 at ``d = 0`` falling to 0 at ``|d| = half_width``."""
    t = np.abs(d, dtype=F32)
    t *= F32(-1.0 / half_width)
    t += F32(1.0)
    np.maximum(t, F32(0.0), out=t)
    out = np.multiply(t, F32(-2.0))
    out += F32(3.0)
    out *= t
    out *= t
    return out


def value_noise(rng: np.random.Generator, shape: tuple[int, int], cells: tuple[int, int]) -> np.ndarray:
    """Smooth random field in [0, 1]: a ``cells`` grid of uniform values, bilinearly interpolated to ``shape``."""
    h, w = int(shape[0]), int(shape[1])
    gy, gx = max(int(cells[0]), 1), max(int(cells[1]), 1)
    grid = rng.random((gy + 1, gx + 1), dtype=F32)
    ry = np.linspace(0.0, gy, h, dtype=F32) if h > 1 else np.zeros(1, F32)
    rx = np.linspace(0.0, gx, w, dtype=F32) if w > 1 else np.zeros(1, F32)
    iy = np.minimum(ry.astype(np.int64), gy - 1)
    ix = np.minimum(rx.astype(np.int64), gx - 1)
    fy = (ry - iy)[:, None]
    fx = (rx - ix)[None, :]
    rows = grid[iy] * (F32(1.0) - fy) + grid[iy + 1] * fy
    return (rows[:, ix] * (F32(1.0) - fx) + rows[:, ix + 1] * fx).astype(F32)


def _lerp_axis(arr: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    n_in = arr.shape[axis]
    if n_in == n_out:
        return arr
    # sample positions of the output pixel centres in input pixel-centre coordinates
    pos = np.clip((np.arange(n_out, dtype=F32) + F32(0.5)) * F32(n_in / n_out) - F32(0.5), 0.0, n_in - 1)
    i0 = np.minimum(pos.astype(np.int64), n_in - 2) if n_in > 1 else np.zeros(n_out, np.int64)
    f = (pos - i0) if n_in > 1 else np.zeros(n_out, F32)
    i1 = np.minimum(i0 + 1, n_in - 1)
    shape = [1, 1]
    shape[axis] = n_out
    f = f.reshape(shape)
    return np.take(arr, i0, axis=axis) * (F32(1.0) - f) + np.take(arr, i1, axis=axis) * f


def resize_bilinear(arr: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of a square 2-D float array to ``(size, size)`` (pixel centres aligned)."""
    return _lerp_axis(_lerp_axis(arr.astype(F32, copy=False), size, 0), size, 1).astype(F32, copy=False)


def mask_bbox(
    mask: np.ndarray, size: int, window: tuple[slice, slice] | None = None, threshold: float = 0.25
) -> list[float] | None:
    """Normalised box ``[x0, y0, x1, y1]`` (origin top-left, fractions of the image side) of ``mask > threshold``.

    Args:
        mask: coverage map over the full image or over ``window``.
        size: image side in pixels.
        window: the pixel window ``(rows, cols)`` of ``mask`` when it is a crop.
        threshold: coverage above which a pixel belongs to the finding.
    """
    rows = np.flatnonzero((mask > threshold).any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero((mask > threshold).any(axis=0))
    r_off = window[0].start if window is not None else 0
    c_off = window[1].start if window is not None else 0
    box = [
        (c_off + cols[0]) / size,
        (r_off + rows[0]) / size,
        (c_off + cols[-1] + 1) / size,
        (r_off + rows[-1] + 1) / size,
    ]
    return [round(float(b), 4) for b in box]
