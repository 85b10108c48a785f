"""Normal chest anatomy of a phantom patient: its random parameters and the frontal / lateral base renderings.

A :class:`Anatomy` holds every random number that describes one patient (body habitus, lung size, diaphragm,
heart, ribs, airway, ...). :func:`frontal_scene` and :func:`lateral_scene` turn it into a :class:`Scene`: a set of
tissue layers over the pixel grid (soft-tissue path length, aerated lung, vascular markings, bone, finding
opacities, metal) that :func:`compose` maps to a display image (0 black, 1 white). Findings edit the layers between
the two steps (see ``findings.py``); the two that change normal structures (an enlarged heart, a broken rib) are
passed to the base renderers as ``heart_ctr`` and ``rib_break``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from monai_r2gen.data.synthetic.geometry import F32, Canvas, bump, resize_bilinear, smoothstep, value_noise

__all__ = [
    "Anatomy",
    "RibBreak",
    "Scene",
    "RIGHT",
    "LEFT",
    "sample_anatomy",
    "lung_shape",
    "frontal_scene",
    "lateral_scene",
    "compose",
]

RIGHT, LEFT = -1, 1  # sign of u for the patient's right / left on a frontal view


@dataclass
class RibBreak:
    """A fractured posterior rib on the frontal view: ``side`` (-1 right, 1 left), rib index (0 = first rib),
    lateral position ``a`` of the break and the step-off of the distal fragment (anatomy units)."""

    side: int
    rib: int
    a: float
    step: float
    gap: float


@dataclass
class Anatomy:
    """Every random parameter of one phantom patient (anatomy units, see ``geometry.py``)."""

    sex: str
    age: int
    seed: int  # texture seed (lung markings, parenchymal mottling)
    lung_w: tuple[float, float]  # lateral lung extent from the midline (right, left)
    apex_v: float
    dome_v: tuple[float, float]  # top of the right / left hemidiaphragm
    cp_drop: float  # depth of the costophrenic recess below the dome top
    dome_peak: float  # lateral position of the dome top as a fraction of the lung width
    mediastinum_w: float
    trachea_u: float
    trachea_w: float
    carina_v: float
    hilum_a: float
    hilum_v: float
    ctr: float  # normal cardiothoracic ratio of this patient
    heart_aspect: float
    heart_tilt: float
    heart_right_fraction: float
    knob_r: float
    knob_v: float
    rib_spacing: float
    rib_width: float
    rib_offset: float
    rib_bend: float
    clavicle_v: float
    clavicle_slope: float
    spine_w: float
    body_margin: float  # chest-wall soft tissue beyond the lung edge
    soft_gain: float
    breast: float  # 0 for none, else relative density of the breast shadows
    bubble: float  # gastric air bubble size (0 = none)
    marking_gain: float
    pose_frontal: tuple[float, float, float, float]  # centre x, centre y, scale, angle
    pose_lateral: tuple[float, float, float, float]
    depth_ant: float  # lateral view: anterior chest wall (u < 0)
    depth_post: float  # lateral view: posterior chest wall
    extra: dict = field(default_factory=dict)

    @property
    def thorax_width(self) -> float:
        """Internal thoracic width (lateral lung edge to lateral lung edge)."""
        return self.lung_w[0] + self.lung_w[1]

    def dome_top(self, side: int) -> float:
        return self.dome_v[0] if side == RIGHT else self.dome_v[1]

    def width(self, side: int) -> float:
        return self.lung_w[0] if side == RIGHT else self.lung_w[1]

    def dome(self, a: np.ndarray, side: int) -> np.ndarray:
        """Height of the hemidiaphragm at lateral position ``a`` (>= 0) on ``side``: a dome whose lateral end dips
        into the costophrenic recess."""
        w = self.width(side)
        peak = self.dome_peak * w
        top = self.dome_top(side)
        lat = np.clip((a - peak) / (w - peak), 0.0, None)
        med = np.clip((peak - a) / peak, 0.0, None)
        return top + F32(self.cp_drop) * lat * lat + F32(0.05) * med * med

    def costophrenic_point(self, side: int) -> tuple[float, float]:
        """``(u, v)`` of the costophrenic angle on a frontal view."""
        w = self.width(side)
        return side * (w - 0.012), self.dome_top(side) + self.cp_drop * (
            (w - 0.012 - self.dome_peak * w) / (w - self.dome_peak * w)
        ) ** 2

    def heart_shape(self, ctr: float, projection: str = "PA") -> tuple[float, float, float, float, float]:
        """Rotated ellipse ``(centre u, centre v, semi-axis A, semi-axis B, tilt)`` of the cardiac silhouette with
        the given cardiothoracic ratio (an AP projection magnifies the heart by ~6 %)."""
        if projection == "AP":
            ctr = ctr * 1.06
        half = 0.5 * ctr * self.thorax_width
        tilt = self.heart_tilt
        k = self.heart_aspect
        a_axis = half / math.sqrt(math.cos(tilt) ** 2 + (k * math.sin(tilt)) ** 2)
        b_axis = k * a_axis
        centre_u = half * (1.0 - 2.0 * self.heart_right_fraction)
        vert_half = math.sqrt((a_axis * math.sin(tilt)) ** 2 + (b_axis * math.cos(tilt)) ** 2)
        base = 0.5 * (self.dome_v[0] + self.dome_v[1]) + 0.03
        centre_v = base - 0.92 * vert_half
        return centre_u, centre_v, a_axis, b_axis, tilt

    def rib_curve(self, a: np.ndarray | float) -> np.ndarray | float:
        """Vertical offset of a posterior rib at lateral position ``a``: rising from the spine, then arching down."""
        return -0.45 * a + self.rib_bend * a * a

    def rib_level(self, rib: int, a: float) -> float:
        """``v`` of the lower border of posterior rib ``rib`` at lateral position ``a``."""
        return self.apex_v - 0.05 + self.rib_offset + rib * self.rib_spacing + float(self.rib_curve(a))


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """Draw a random adult patient."""
    sex = "F" if rng.random() < 0.5 else "M"
    age = int(rng.integers(20, 91))
    size = _u(rng, -1.0, 1.0)  # habitus: -1 slim .. 1 large
    half = 0.39 + 0.015 * size
    inspiration = _u(rng, -1.0, 1.0)  # -1 shallow .. 1 deep
    dome_r = 0.17 - 0.045 * inspiration + _u(rng, -0.015, 0.015)
    scale = _u(rng, 0.88, 1.0)
    return Anatomy(
        sex=sex,
        age=age,
        seed=int(rng.integers(0, 2**31 - 1)),
        lung_w=(half + _u(rng, -0.01, 0.01), half + _u(rng, -0.01, 0.01)),
        apex_v=-0.40 + _u(rng, -0.02, 0.02),
        dome_v=(dome_r, dome_r + _u(rng, 0.01, 0.04)),
        cp_drop=_u(rng, 0.075, 0.11),
        dome_peak=_u(rng, 0.38, 0.5),
        mediastinum_w=_u(rng, 0.06, 0.075),
        trachea_u=_u(rng, -0.012, 0.012),
        trachea_w=_u(rng, 0.019, 0.024),
        carina_v=-0.16 + _u(rng, -0.02, 0.02),
        hilum_a=_u(rng, 0.1, 0.125),
        hilum_v=-0.05 + _u(rng, -0.02, 0.02),
        ctr=_u(rng, 0.39, 0.47),
        heart_aspect=_u(rng, 0.68, 0.8),
        heart_tilt=_u(rng, 0.3, 0.55),
        heart_right_fraction=_u(rng, 0.27, 0.35),
        knob_r=_u(rng, 0.028, 0.038),
        knob_v=-0.22 + _u(rng, -0.015, 0.015),
        rib_spacing=_u(rng, 0.066, 0.074),
        rib_width=_u(rng, 0.024, 0.03),
        rib_offset=_u(rng, -0.015, 0.015),
        rib_bend=_u(rng, 1.15, 1.5),
        clavicle_v=-0.355 + _u(rng, -0.02, 0.02),
        clavicle_slope=_u(rng, 0.05, 0.2),
        spine_w=_u(rng, 0.038, 0.048),
        body_margin=0.055 + 0.03 * (size + 1.0),
        soft_gain=1.0 + 0.08 * size,
        breast=_u(rng, 0.06, 0.16) if sex == "F" else 0.0,
        bubble=_u(rng, 0.6, 1.0) if rng.random() < 0.75 else 0.0,
        marking_gain=_u(rng, 0.8, 1.2),
        pose_frontal=(0.5 + _u(rng, -0.025, 0.025), 0.5 + _u(rng, 0.0, 0.04), scale, _u(rng, -0.05, 0.05)),
        pose_lateral=(
            0.5 + _u(rng, -0.03, 0.03),
            0.5 + _u(rng, 0.0, 0.04),
            scale * _u(rng, 0.95, 1.02),
            _u(rng, -0.04, 0.04),
        ),
        depth_ant=-0.33 + _u(rng, -0.03, 0.02) - 0.02 * size,
        depth_post=0.33 + _u(rng, -0.02, 0.03) + 0.02 * size,
    )


@dataclass
class Scene:
    """Tissue layers of one view over its pixel grid, plus the masks findings need.

    ``compose`` turns the layers into an image: aerated lung (``air``) darkens the soft-tissue background
    (``soft``), vascular ``marks`` show only where lung is aerated, ``fill`` (fluid, consolidation, masses) replaces
    aerated lung, and ``bone`` / ``metal`` add on top.
    """

    canvas: Canvas
    view: str  # "frontal" or "lateral"
    projection: str  # "PA", "AP" or "LL"
    soft: np.ndarray
    air: np.ndarray
    marks: np.ndarray
    bone: np.ndarray
    fill: np.ndarray
    metal: np.ndarray
    lungs: dict[int, np.ndarray]  # frontal: side -> lung mask; lateral: 0 -> both lungs
    heart: tuple[float, float, float, float, float]
    anatomy: Anatomy
    info: dict = field(default_factory=dict)


def _ellipse(u: np.ndarray, v: np.ndarray, shape: tuple[float, float, float, float, float], edge: float) -> np.ndarray:
    cu, cv, a_axis, b_axis, tilt = shape
    du, dv = u - F32(cu), v - F32(cv)
    c, s = F32(math.cos(tilt)), F32(math.sin(tilt))
    p = (du * c + dv * s) * F32(1.0 / a_axis)
    q = (-du * s + dv * c) * F32(1.0 / b_axis)
    r = np.sqrt(p * p + q * q)
    return smoothstep((F32(1.0) - r) * F32(min(a_axis, b_axis)), edge)


def lung_shape(anat: Anatomy, u: np.ndarray, v: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Shape coordinates of one lung on a frontal view: ``rho`` (0 at the lung's centre, 1 on its outline, a
    super-ellipse whose lateral border slants outwards from the apex to the base) and ``y`` (-1 at the apex, 1 at the
    base), both before the diaphragm and mediastinum cut the lung."""
    a = u * F32(side)
    w = anat.width(side)
    med = anat.mediastinum_w
    ac, aw = 0.5 * (w + med), 0.5 * (w - med)
    base = anat.dome_top(side) + anat.cp_drop + 0.05
    vc, vh = 0.5 * (anat.apex_v + base), 0.5 * (base - anat.apex_v)
    y = (v - F32(vc)) * F32(1.0 / vh)
    x = np.abs(a - F32(ac)) * F32(1.0 / aw) / (F32(0.9) + F32(0.1) * np.clip(y, -1.0, 1.0))
    return x * x * x + y * y, y


def _lung_mask(anat: Anatomy, u: np.ndarray, v: np.ndarray, side: int, edge: float) -> tuple[np.ndarray, np.ndarray]:
    """Soft mask of one lung on a frontal view (before the heart is laid over it) and its relative aerated depth."""
    a = u * F32(side)
    med = anat.mediastinum_w
    aw = 0.5 * (anat.width(side) - med)
    rho, _ = lung_shape(anat, u, v, side)
    inside = (F32(1.0) - rho) * F32(0.35 * aw)
    lung = smoothstep(inside, edge)
    # aerated depth: thin at the apex and towards the chest wall, thickest in the mid and lower zones
    depth = (F32(0.62) + F32(0.38) * smoothstep(inside - F32(0.03), 0.07)) * (
        F32(0.8) + F32(0.2) * smoothstep(v - F32(anat.apex_v + 0.12), 0.2)
    )
    lung *= smoothstep(anat.dome(a, side) - v, edge)
    if side == LEFT:  # aortic knob and pulmonary trunk bulge into the left lung
        medial = (
            F32(med)
            + F32(anat.knob_r * 0.9) * bump(v - F32(anat.knob_v), anat.knob_r * 1.5)
            + F32(0.03) * bump(v - F32(anat.hilum_v - 0.06), 0.045)
        )
    else:  # superior vena cava border, slightly convex
        medial = F32(med) + F32(0.012) * bump(v - F32(anat.carina_v + 0.02), 0.12)
    lung *= smoothstep(a - medial, edge)
    return lung.astype(F32), depth.astype(F32)


def _markings(anat: Anatomy, canvas: Canvas, hila: list[tuple[float, float]], extent: float) -> np.ndarray:
    """Vascular markings: tapering streaks radiating from each hilum, plus fine parenchymal mottling.

    Drawn on a grid of at most 128 pixels and resized, so the texture is the same at every image size.
    """
    rng = np.random.default_rng(anat.seed)
    m = min(canvas.size, 128)
    grid = canvas if m == canvas.size else Canvas(m, canvas.center, canvas.scale, canvas.angle)
    out = np.zeros_like(grid.u)
    for hu, hv in hila:
        # each hilum feeds the lung on its side (both lungs at once on a lateral view)
        lo, hi = (hu - 0.6, hu + 0.6) if len(hila) == 1 else ((hu - 0.45, 0.02) if hu < 0 else (-0.02, hu + 0.45))
        win = grid.window(lo, hi, hv - 0.55, hv + 0.5)
        if win is None:
            continue
        u, v = grid.crop(win)
        du, dv = u - F32(hu), v - F32(hv)
        r = np.sqrt(du * du + dv * dv)
        phi = np.arctan2(dv, du)
        acc = F32(0.8) * np.exp(-(r * r) * F32(1.0 / 0.05**2))
        for n_bins, r_min, gain in ((48, 0.02, 1.0), (96, 0.1, 0.55)):
            table = (rng.random(n_bins, dtype=F32) ** 2).astype(F32)
            wobble = F32(0.1) * np.sin(r * F32(20.0) + F32(rng.uniform(0, 6.283)))
            pos = np.mod((phi + wobble) * F32(n_bins / (2 * math.pi)), F32(n_bins))
            idx = pos.astype(np.int64)
            core = F32(1.0) - np.abs(F32(2.0) * (pos - idx) - F32(1.0))
            taper = np.exp(-r * F32(1.0 / extent)) * np.clip((r - F32(r_min)) * F32(30.0), 0.0, 1.0)
            acc += F32(gain) * table[idx % n_bins] * core * core * taper
        out[win] += acc
    u = grid.u
    out += F32(0.12) * (value_noise(rng, u.shape, (10, 10)) + F32(0.6) * value_noise(rng, u.shape, (32, 32)))
    return out if m == canvas.size else resize_bilinear(out, canvas.size)


def _ribs(anat: Anatomy, canvas: Canvas, rib_break: RibBreak | None, clavicle_shift: float = 0.0) -> np.ndarray:
    """Posterior ribs (arching bands from the spine), fainter anterior ribs and their fracture, clavicles, humeral
    heads and the thoracic spine, on a frontal view."""
    out = np.zeros_like(canvas.u)
    sp, rw = anat.rib_spacing, anat.rib_width
    edge = max(canvas.px(1.0), 0.004)
    top, bottom = anat.apex_v - 0.16, max(anat.dome_v) + anat.cp_drop + 0.12
    for side in (RIGHT, LEFT):
        w = anat.width(side)
        lo, hi = (0.0, w + 0.2) if side == LEFT else (-(w + 0.2), 0.0)
        win = canvas.window(lo, hi, top, bottom)
        if win is None:
            continue
        u, v = canvas.crop(win)
        a = u * F32(side)
        phase = (v - F32(anat.apex_v - 0.05 + anat.rib_offset) - anat.rib_curve(a)) * F32(1.0 / sp)
        extent = smoothstep(a - F32(0.035), edge) * smoothstep(F32(w + 0.025) - a, 0.02)
        broken = rib_break is not None and rib_break.side == side
        if broken:
            # the distal fragment steps off at the break and rejoins the rib's course a few centimetres further
            distal = a > F32(rib_break.a)
            taper = np.clip(F32(1.0) - (a - F32(rib_break.a)) * F32(1.0 / 0.07), 0.0, 1.0)
            shifted = phase - F32(rib_break.step / sp) * taper * distal
            on_rib = distal & ((np.floor(shifted) == rib_break.rib) | (np.floor(phase) == rib_break.rib))
            phase = np.where(on_rib, shifted, phase)
        index = np.floor(phase)
        t = (phase - index) * F32(sp)  # distance below the rib's upper border
        body = bump(t - F32(0.5 * rw), 0.5 * rw + edge)
        cortex = bump(t - F32(0.12 * rw), 0.2 * rw + edge) + bump(t - F32(0.88 * rw), 0.2 * rw + edge)
        rib = (F32(0.6) * body + F32(0.4) * cortex) * ((index >= 0) & (index < 11))
        if broken:
            gap = bump(a - F32(rib_break.a), max(rib_break.gap, canvas.px(1.5)))
            rib *= F32(1.0) - gap * (index == rib_break.rib)
        acc = rib * extent
        # anterior ribs: from the lateral wall sloping down towards the sternum, fading where cartilage takes over
        sp_a = sp * 1.15
        phase_a = (v - F32(anat.apex_v + 0.02 + anat.rib_offset) - F32(0.42) * (F32(w) - a)) * F32(1.0 / sp_a)
        index_a = np.floor(phase_a)
        rib_a = bump((phase_a - index_a) * F32(sp_a) - F32(0.5 * rw), 0.5 * rw + edge) * (
            (index_a >= 0) & (index_a < 6)
        )
        acc += F32(0.35) * rib_a * extent * smoothstep(a - F32(0.2), 0.08)
        # clavicle
        ac = a - F32(0.03)
        curve = F32(anat.clavicle_v + clavicle_shift) - F32(anat.clavicle_slope) * ac
        curve += F32(0.35) * (ac - F32(0.17)) ** 2
        acc += (
            F32(0.85)
            * bump(v - curve, 0.016 + edge)
            * smoothstep(a - F32(0.035), edge)
            * smoothstep(F32(w - 0.02) - a, 0.02)
        )
        # humeral head at the shoulder
        du, dv = a - F32(w + 0.11), v - F32(anat.apex_v - 0.01)
        acc += F32(0.7) * smoothstep(F32(0.075) - np.sqrt(du * du + dv * dv), edge)
        out[win] += acc
    # thoracic spine: vertebral bodies separated by darker disc spaces, pedicles as paired ovals
    win = canvas.window(-0.1, 0.1, -0.8, 0.8)
    if win is not None:
        u, v = canvas.crop(win)
        ds = np.abs(u - F32(anat.trachea_u * 0.5))
        column = smoothstep(F32(anat.spine_w) - ds, edge)
        discs = F32(0.7) + F32(0.3) * np.cos(v * F32(2 * math.pi / 0.062))
        pedicles = bump(ds - F32(anat.spine_w * 0.62), anat.spine_w * 0.22) * bump(
            np.mod(v, F32(0.062)) - F32(0.02), 0.014
        )
        out[win] += column * (F32(0.45) * discs + F32(0.35) * pedicles)
    return out


def frontal_scene(
    anat: Anatomy, size: int, projection: str = "PA", heart_ctr: float | None = None, rib_break: RibBreak | None = None
) -> Scene:
    """Render the normal frontal anatomy (PA or AP) of ``anat`` into tissue layers.

    Args:
        anat: the patient.
        size: image side in pixels.
        projection: "PA" or "AP" (AP magnifies the heart and raises the clavicles slightly).
        heart_ctr: cardiothoracic ratio to draw (default: the patient's normal ratio).
        rib_break: a rib fracture to draw into the ribs.
    """
    cx, cy, scale, angle = anat.pose_frontal
    canvas = Canvas(size, (cx, cy), scale, angle)
    u, v = canvas.u, canvas.v
    edge = max(canvas.px(1.2), 0.005)

    # soft tissue: trunk with shoulders, thinning towards the skin edge
    body_w = max(anat.lung_w) + anat.body_margin
    shoulder = smoothstep(F32(anat.apex_v + 0.08) - v, 0.12)
    half_w = F32(body_w) + F32(0.12) * shoulder - F32(0.2) * smoothstep(F32(anat.apex_v - 0.17) - v, 0.06)
    au = np.abs(u)
    prof = np.clip(F32(1.0) - (au / half_w) ** 2, 0.0, 1.0)
    soft = smoothstep(half_w - au, 0.02) * (F32(0.42) + F32(0.5) * np.sqrt(prof)) * F32(anat.soft_gain)
    # abdomen below the diaphragm is thicker than the chest
    soft += F32(0.12) * smoothstep(v - F32(max(anat.dome_v) + 0.02), 0.08) * smoothstep(half_w - au, 0.02)
    if anat.breast > 0:
        for side in (RIGHT, LEFT):
            du, dv = u - F32(side * 0.23), v - F32(anat.dome_top(side) - 0.03)
            soft += F32(anat.breast) * smoothstep(F32(0.17) - np.sqrt(du * du + dv * dv), 0.03) * smoothstep(dv, 0.05)

    lungs, depth = {}, {}
    for side in (RIGHT, LEFT):
        lungs[side], depth[side] = _lung_mask(anat, u, v, side, edge)
    ctr = anat.ctr if heart_ctr is None else heart_ctr
    heart_shape = anat.heart_shape(ctr, projection)
    heart = _ellipse(u, v, heart_shape, edge)
    air = (lungs[RIGHT] * depth[RIGHT] + lungs[LEFT] * depth[LEFT]) * (F32(1.0) - F32(0.93) * heart)
    soft += F32(0.06) * heart * smoothstep(F32(max(anat.dome_v)) - v, 0.02)  # below the diaphragm it is unseen

    # airway: trachea and main bronchi (air inside the mediastinum)
    tr = smoothstep(F32(anat.trachea_w) - np.abs(u - F32(anat.trachea_u)), edge) * smoothstep(
        F32(anat.carina_v) - v, edge
    )
    airway = tr
    carina = (anat.trachea_u, anat.carina_v)
    for end in ((anat.trachea_u - 0.075, anat.carina_v + 0.07), (anat.trachea_u + 0.09, anat.carina_v + 0.055)):
        cov = canvas.polyline([carina, end], (2 * anat.trachea_w * 0.75) / canvas.unit_per_px)
        if cov is not None:
            airway[cov[1]] = np.maximum(airway[cov[1]], cov[0])
    # gastric bubble under the left dome
    if anat.bubble > 0:
        du, dv = (u - F32(0.17)) * F32(1.0 / 0.065), (v - F32(anat.dome_v[1] + 0.055)) * F32(1.0 / 0.035)
        airway = airway + F32(anat.bubble) * smoothstep(F32(1.0) - np.sqrt(du * du + dv * dv), 0.2)

    hila = [(RIGHT * anat.hilum_a, anat.hilum_v), (LEFT * anat.hilum_a, anat.hilum_v - 0.015)]
    marks = _markings(anat, canvas, hila, extent=0.22) * F32(anat.marking_gain)
    # an AP (usually supine, lordotic) projection throws the clavicles higher over the apices
    bone = _ribs(anat, canvas, rib_break, clavicle_shift=-0.03 if projection == "AP" else 0.0)
    zeros = np.zeros_like(u)
    return Scene(
        canvas=canvas,
        view="frontal",
        projection=projection,
        soft=soft.astype(F32),
        air=air.astype(F32),
        marks=marks,
        bone=bone.astype(F32),
        fill=zeros.copy(),
        metal=zeros.copy(),
        lungs=lungs,
        heart=heart_shape,
        anatomy=anat,
        info={"airway": airway.astype(F32), "heart_mask": heart, "ctr": ctr, "hila": hila},
    )


def lateral_scene(anat: Anatomy, size: int, heart_ctr: float | None = None) -> Scene:
    """Render the normal left-lateral anatomy of ``anat`` (anterior to the image's left) into tissue layers."""
    cx, cy, scale, angle = anat.pose_lateral
    canvas = Canvas(size, (cx, cy), scale, angle)
    u, v = canvas.u, canvas.v
    edge = max(canvas.px(1.2), 0.005)
    ant, post = anat.depth_ant, anat.depth_post
    mid, half_d = 0.5 * (ant + post), 0.5 * (post - ant)
    dome = 0.5 * (anat.dome_v[0] + anat.dome_v[1])

    # trunk seen from the side: a rounded chest, the abdomen below, arms raised in front of the upper chest
    margin = 0.5 * anat.body_margin
    x = (u - F32(mid)) * F32(1.0 / (half_d + margin))
    y = np.clip((F32(anat.apex_v - 0.05) - v) * F32(6.0), 0.0, None)  # rounding of the shoulders
    r = x * x + y * y
    soft = smoothstep(F32(1.0) - r, 0.08) * (F32(0.55) + F32(0.45) * np.sqrt(np.clip(1 - r, 0, 1)))
    arms = smoothstep(F32(anat.apex_v + 0.1) - v, 0.2) * smoothstep(F32(mid + 0.05) - u, 0.2)
    soft = (soft + F32(0.3) * arms * smoothstep(u - F32(ant - 0.12), 0.1)) * F32(anat.soft_gain)
    soft += F32(0.12) * smoothstep(v - F32(dome + 0.04), 0.08) * smoothstep(F32(1.0) - r, 0.08)

    # both lungs superimposed; hemidiaphragms slope down to the posterior costophrenic sulci
    lc, lh = mid + 0.005, half_d - 0.03
    base = dome + anat.cp_drop + 0.1
    vc, vh = 0.5 * (anat.apex_v + base), 0.5 * (base - anat.apex_v)
    xx = np.abs(u - F32(lc)) * F32(1.0 / lh)
    yy = (v - F32(vc)) * F32(1.0 / vh)
    lung = smoothstep((F32(1.0) - (xx * xx * xx + yy * yy)) * F32(0.3 * lh), edge)
    t = np.clip((u - F32(ant)) * F32(1.0 / (post - ant)), 0.0, 1.0)
    dia_r = F32(dome - 0.035) + F32(anat.cp_drop + 0.07) * t * t
    dia_l = dia_r + F32(anat.dome_v[1] - anat.dome_v[0] + 0.012)
    lung *= F32(0.5) * (smoothstep(dia_r - v, edge) + smoothstep(dia_l - v, edge))
    lungs = {0: lung.astype(F32)}

    ctr = anat.ctr if heart_ctr is None else heart_ctr
    grow = ctr / 0.43
    b_axis = 0.11 * grow
    a_axis = 0.15 * (0.55 + 0.45 * grow)
    heart_shape = (ant + 0.035 + 0.9 * a_axis, dome + 0.02 - 0.8 * b_axis, a_axis, b_axis, -0.45)
    heart = _ellipse(u, v, heart_shape, edge)
    # depth of aerated lung: less behind the sternum and over the heart, most behind the heart
    air = lung * (F32(1.0) - F32(0.72) * heart) * (F32(0.78) + F32(0.12) * smoothstep(u - F32(mid), 0.3))
    soft += F32(0.04) * heart * smoothstep(F32(max(anat.dome_v)) - v, 0.02)

    # airway: trachea running down and slightly back to the carina
    carina = (mid + 0.025, anat.carina_v + 0.01)
    trachea = canvas.polyline(
        [(mid - 0.04, -0.8), (mid - 0.01, anat.apex_v), carina], (2 * anat.trachea_w) / canvas.unit_per_px
    )
    airway = np.zeros_like(u)
    if trachea is not None:
        airway[trachea[1]] = F32(0.55) * trachea[0]
    if anat.bubble > 0:
        du, dv = (u - F32(ant + 0.12)) * F32(1.0 / 0.06), (v - F32(anat.dome_v[1] + 0.04)) * F32(1.0 / 0.03)
        airway = airway + F32(anat.bubble) * smoothstep(F32(1.0) - np.sqrt(du * du + dv * dv), 0.2)

    # bones: vertebral bodies over the posterior lungs (the lower ones look darker: more lung in front of them),
    # posterior elements, sternum, faint posterior ribs
    spine_u = post - 0.12
    bone = np.zeros_like(u)
    win = canvas.window(spine_u - 0.08, post + 0.05, -0.8, 0.8)
    if win is not None:
        us, vs = canvas.crop(win)
        pv = np.mod(vs * F32(1.0 / 0.062), F32(1.0))
        bodies = smoothstep(F32(0.42) - np.abs(pv - F32(0.45)), 0.06)
        column = smoothstep(F32(0.042) - np.abs(us - F32(spine_u)), edge)
        shade = F32(1.0) - F32(0.3) * smoothstep(vs - F32(0.0), 0.3)
        bone[win] += column * (F32(0.25) + F32(0.5) * bodies) * shade
        bone[win] += F32(0.25) * smoothstep(F32(0.03) - np.abs(us - F32(spine_u + 0.075)), edge)
    sternum = smoothstep(F32(0.014) - np.abs(u - F32(ant + 0.03)), edge)
    bone += F32(0.55) * sternum * smoothstep(v - F32(anat.apex_v + 0.06), edge) * smoothstep(F32(dome) - v, edge)
    phase = (v - F32(0.55) * (u - F32(mid))) * F32(1.0 / (anat.rib_spacing * 1.05))
    frac = phase - np.floor(phase)
    bone += F32(0.2) * bump(frac - F32(0.5), 0.25) * smoothstep(u - F32(mid - 0.05), 0.12) * lung

    hila = [(mid + 0.01, anat.hilum_v)]
    marks = _markings(anat, canvas, hila, extent=0.2) * F32(0.8 * anat.marking_gain)
    zeros = np.zeros_like(u)
    return Scene(
        canvas=canvas,
        view="lateral",
        projection="LL",
        soft=soft.astype(F32),
        air=air.astype(F32),
        marks=marks,
        bone=bone.astype(F32),
        fill=zeros.copy(),
        metal=zeros.copy(),
        lungs=lungs,
        heart=heart_shape,
        anatomy=anat,
        info={
            "airway": airway.astype(F32),
            "heart_mask": heart,
            "ctr": ctr,
            "hila": hila,
            "spine_u": spine_u,
            "mid": mid,
            "carina": carina,
        },
    )


def compose(scene: Scene, exposure: dict, noise: np.ndarray | None) -> np.ndarray:
    """Map the tissue layers of ``scene`` to a display image in [0, 1] (0 black, 1 white).

    Args:
        scene: the layers.
        exposure: ``gain`` (contrast of the exponential film curve), ``gamma``, ``tilt`` (heel-effect gradient)
            and ``noise`` (standard deviation of the quantum noise).
        noise: standard-normal array of the image shape (None for a noiseless image).
    """
    aerated = scene.air * (F32(1.0) - np.clip(scene.fill, 0.0, 1.0))
    density = (
        scene.soft
        - F32(0.7) * aerated
        + F32(0.2) * scene.marks * aerated
        + F32(0.12) * scene.fill
        - F32(0.25) * scene.info["airway"]
        + F32(0.2) * scene.bone
        + scene.metal
    )
    for _ in range(max(1, scene.canvas.size // 256)):  # soften the synthetic edges a little ([1, 2, 1] kernel)
        density = _smooth3(density)
    gain = F32(exposure["gain"])
    img = (F32(1.0) - np.exp(-gain * np.clip(density, 0.0, None))) * F32(1.0 / (1.0 - math.exp(-float(gain) * 1.35)))
    img = np.clip(img, 0.0, 1.0) ** F32(exposure["gamma"])
    if exposure.get("tilt"):
        img = img + F32(exposure["tilt"]) * (scene.canvas.v - F32(0.0))
    if noise is not None:
        img = img + F32(exposure["noise"]) * noise * (F32(0.6) + F32(0.4) * img)
    return np.clip(img, 0.0, 1.0).astype(F32)


def _smooth3(img: np.ndarray) -> np.ndarray:
    """Separable [1, 2, 1] / 4 smoothing with edge replication."""
    p = np.pad(img, 1, mode="edge")
    rows = p[:-2] * F32(0.25) + p[1:-1] * F32(0.5) + p[2:] * F32(0.25)
    return rows[:, :-2] * F32(0.25) + rows[:, 1:-1] * F32(0.5) + rows[:, 2:] * F32(0.25)
