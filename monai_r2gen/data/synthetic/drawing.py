"""Drawing the findings into a view, and the boxes where each was drawn.

:func:`apply_finding` draws a :class:`~.findings.Finding` into a :class:`~.anatomy.Scene` (frontal or lateral) in
place and returns the normalised boxes ``[x0, y0, x1, y1]`` (fractions of the image side, origin top-left) of the
pixels it changed. Fluid, airspace disease, masses and atelectasis replace aerated lung (``scene.fill``); a
pneumothorax adds air and removes the lung markings beyond the visceral pleural edge; devices add metal. Devices,
atelectasis bands and septal lines keep a minimum width of 3 px at 128 px (scaled with the image size), so they
survive resizing to the training resolution.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from monai_r2gen.data.synthetic.anatomy import LEFT, RIGHT, Anatomy, Scene, lung_shape
from monai_r2gen.data.synthetic.findings import EDEMA_SPREAD, SIDES, Finding
from monai_r2gen.data.synthetic.geometry import CM, F32, Canvas, bump, mask_bbox, smooth_path, smoothstep, value_noise

__all__ = ["apply_finding", "structural_boxes"]


def _hemithorax(scene: Scene, side: int) -> tuple[slice, slice] | None:
    """Pixel window of one hemithorax on a frontal view (apex to below the costophrenic angle)."""
    anat = scene.anatomy
    w = anat.width(side)
    lo, hi = (-0.02, w + 0.05) if side == LEFT else (-w - 0.05, 0.02)
    return scene.canvas.window(lo, hi, anat.apex_v - 0.05, max(anat.dome_v) + anat.cp_drop + 0.08)


def _uv_box(canvas: Canvas, us: list[float], vs: list[float]) -> list[float] | None:
    """Normalised box of the anatomy rectangle ``[min(us), max(us)] x [min(vs), max(vs)]`` (clipped to the image;
    None when fully outside)."""
    uu, vv = np.meshgrid([min(us), max(us)], [min(vs), max(vs)])
    cols, rows = canvas.to_pixels(uu.ravel(), vv.ravel())
    x0, x1 = np.clip([cols.min() / canvas.size, cols.max() / canvas.size], 0.0, 1.0)
    y0, y1 = np.clip([rows.min() / canvas.size, rows.max() / canvas.size], 0.0, 1.0)
    if x1 <= x0 or y1 <= y0:
        return None
    return [round(float(b), 4) for b in (x0, y0, x1, y1)]


def _add_fill(scene: Scene, cover: np.ndarray, win: tuple[slice, slice] | None = None) -> None:
    """Lay an opacity (fluid, airspace disease, tissue) over the aerated lung: ``fill = max(fill, cover)``."""
    if win is None:
        np.maximum(scene.fill, cover, out=scene.fill)
    else:
        np.maximum(scene.fill[win], cover, out=scene.fill[win])


def _boxes(*boxes: list[float] | None) -> list[list[float]]:
    return [b for b in boxes if b is not None]


def structural_boxes(finding: Finding, scene: Scene) -> list[list[float]]:
    """Boxes of the findings drawn by the base renderers (cardiomegaly, rib fracture)."""
    anat = scene.anatomy
    if finding.kind == "cardiomegaly":
        heart = scene.info["heart_mask"] * (scene.canvas.v < F32(max(anat.dome_v) + 0.02))
        return _boxes(mask_bbox(heart, scene.canvas.size, threshold=0.5))
    if finding.kind == "rib_fracture" and scene.view == "frontal":
        p = finding.params
        side = SIDES[finding.side]
        a0, a1 = float(p["a"]) - 0.035, float(p["a"]) + 0.08
        tops = [anat.rib_level(int(p["rib"]), a) for a in np.linspace(a0, a1, 12)]
        vs = [min(tops) - 0.02, max(tops) + anat.rib_width + float(p["step"]) + 0.02]
        return _boxes(_uv_box(scene.canvas, [side * a0, side * a1], vs))
    return []


def _effusion(f: Finding, scene: Scene) -> list[list[float]]:
    anat, canvas = scene.anatomy, scene.canvas
    boxes = []
    if scene.view == "frontal":
        for name, height in f.params["heights"].items():
            side = SIDES[name]
            w = anat.width(side)
            _, cp_v = anat.costophrenic_point(side)
            win = _hemithorax(scene, side)
            if win is None:
                continue
            u, v = canvas.crop(win)
            a = u * F32(side)
            t = np.clip((a - F32(anat.mediastinum_w)) * F32(1.0 / (w - anat.mediastinum_w)), 0.0, 1.0)
            meniscus = F32(0.03 + 0.35 * height)
            level = F32(cp_v - height) - meniscus * t * t
            fluid = smoothstep(v - level, 0.025 + 0.08 * height) * scene.lungs[side][win]
            _add_fill(scene, F32(0.97) * fluid, win)
            boxes.append(mask_bbox(fluid, canvas.size, win, threshold=0.02))
    else:
        height = max(f.params["heights"].values())
        ant, post = anat.depth_ant, anat.depth_post
        u, v = canvas.u, canvas.v
        t = np.clip((u - F32(ant)) * F32(1.0 / (post - ant)), 0.0, 1.0)
        dome = 0.5 * (anat.dome_v[0] + anat.dome_v[1])
        sulcus = dome - 0.035 + anat.cp_drop + 0.07
        level = F32(sulcus - height) - F32(0.03 + 0.35 * height) * t * t * t
        fluid = smoothstep(v - level, 0.025 + 0.08 * height) * scene.lungs[0] * smoothstep(t - F32(0.25), 0.2)
        _add_fill(scene, F32(0.95) * fluid)
        boxes.append(mask_bbox(fluid, canvas.size, threshold=0.02))
    return _boxes(*boxes)


def _pneumothorax(f: Finding, scene: Scene) -> list[list[float]]:
    if scene.view != "frontal":
        return []  # a small pneumothorax is rarely visible on the lateral view; none is drawn there
    anat, canvas = scene.anatomy, scene.canvas
    side = SIDES[f.side]
    w = anat.width(side)
    win = _hemithorax(scene, side)
    if win is None:
        return []
    u, v = canvas.crop(win)
    rho, y = lung_shape(anat, u, v, side)
    depth = float(f.params["depth"])
    edge_rho = 1.0 - depth
    aw = 0.5 * (w - anat.mediastinum_w)
    # where the pneumothorax extends: the apex for a small one, the whole lateral margin for larger ones
    reach = {"small": -0.35, "moderate": 0.45, "large": 0.8}[f.severity]
    lateral = smoothstep(u * F32(side) - F32(anat.mediastinum_w + 0.45 * aw), 0.06) + smoothstep(-y - F32(0.6), 0.1)
    region_shape = np.clip(lateral, 0.0, 1.0) * smoothstep(F32(reach) - y, 0.15)
    line_half = 3.0 / aw * canvas.px(1.1) * 0.5
    region = smoothstep(rho - F32(edge_rho + line_half), 2 * line_half) * region_shape * scene.lungs[side][win]
    pleura = bump(rho - F32(edge_rho), line_half * 1.6) * region_shape * scene.lungs[side][win]
    scene.marks[win] *= F32(1.0) - np.clip(F32(2.0) * region, 0.0, 1.0)  # no lung markings in the pleural space
    np.maximum(scene.air[win], F32(1.05) * region, out=scene.air[win])
    _add_fill(scene, F32(0.5) * pleura, win)
    return _boxes(mask_bbox(np.maximum(region, pleura), canvas.size, win, threshold=0.02))


def _lobe_frontal(anat: Anatomy, lobe: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    side = RIGHT if lobe.startswith("right") else LEFT
    a = u * F32(side)
    fissure = anat.hilum_v + 0.015
    if lobe == "right upper lobe":
        return smoothstep(F32(fissure) - v, 0.012)
    if lobe == "left upper lobe":
        return smoothstep(F32(fissure - 0.02) - v, 0.06)
    if lobe in ("right middle lobe", "lingula"):
        medial = smoothstep(F32(0.62 * anat.width(side)) - a, 0.08)
        return smoothstep(v - F32(fissure), 0.012 if lobe == "right middle lobe" else 0.05) * medial
    # lower lobes: lower zone, fading towards the hilum
    return smoothstep(v - F32(fissure + 0.04), 0.08) * smoothstep(a - F32(0.12), 0.08)


def _lobe_lateral(anat: Anatomy, lobe: str, u: np.ndarray, v: np.ndarray, mid: float) -> np.ndarray:
    dome = 0.5 * (anat.dome_v[0] + anat.dome_v[1])
    # oblique fissure from posterior-superior to anterior-inferior; lower lobes lie behind it
    p1 = (mid + 0.15, anat.hilum_v - 0.17)
    p2 = (anat.depth_ant + 0.1, dome)
    nu, nv = p2[1] - p1[1], -(p2[0] - p1[0])
    norm = math.hypot(nu, nv)
    behind = (u - F32(p1[0])) * F32(nu / norm) + (v - F32(p1[1])) * F32(nv / norm)
    lower = smoothstep(behind, 0.015)
    if lobe.endswith("lower lobe"):
        return lower
    front = F32(1.0) - lower
    horiz = anat.hilum_v + 0.015
    if lobe in ("right middle lobe", "lingula"):
        return front * smoothstep(v - F32(horiz), 0.02)
    return front * smoothstep(F32(horiz) - v, 0.02)


def _bronchograms(
    canvas: Canvas,
    rng: np.random.Generator,
    origin: tuple[float, float],
    towards: tuple[float, float],
    shape: tuple[int, int],
    win: tuple[slice, slice],
) -> np.ndarray:
    """A few branching dark tubular lucencies (air bronchograms) from ``origin`` towards ``towards``."""
    out = np.zeros(shape, F32)
    base = math.atan2(towards[1] - origin[1], towards[0] - origin[0])
    length = math.hypot(towards[0] - origin[0], towards[1] - origin[1])
    for _ in range(4):
        ang = base + float(rng.uniform(-0.5, 0.5))
        pts = [origin]
        for k in range(1, 5):
            ang += float(rng.uniform(-0.2, 0.2))
            r = length * k / 4.0
            pts.append((origin[0] + r * math.cos(ang), origin[1] + r * math.sin(ang)))
        cov = canvas.polyline(pts, max(1.5, 0.007 / canvas.unit_per_px))
        if cov is None:
            continue
        (rs, cs), (wr, wc) = cov[1], win
        r0, r1 = max(rs.start, wr.start), min(rs.stop, wr.stop)
        c0, c1 = max(cs.start, wc.start), min(cs.stop, wc.stop)
        if r0 < r1 and c0 < c1:
            sub = cov[0][r0 - rs.start : r1 - rs.start, c0 - cs.start : c1 - cs.start]
            tgt = out[r0 - wr.start : r1 - wr.start, c0 - wc.start : c1 - wc.start]
            np.maximum(tgt, sub, out=tgt)
    return out


def _consolidation(f: Finding, scene: Scene) -> list[list[float]]:
    anat, canvas = scene.anatomy, scene.canvas
    lobe = f.params["lobe"]
    rng = np.random.default_rng(f.seed)
    patchy = f.severity == "patchy"
    if scene.view == "frontal":
        side = RIGHT if lobe.startswith("right") else LEFT
        w = anat.width(side)
        win = _hemithorax(scene, side)
        if win is None:
            return []
        u, v = canvas.crop(win)
        region = _lobe_frontal(anat, lobe, u, v) * scene.lungs[side][win]
        hilum = (side * anat.hilum_a, anat.hilum_v)
        target = (side * 0.7 * w, anat.apex_v + 0.1 if "upper" in lobe else anat.dome_top(side) - 0.02)
    else:
        win = (slice(0, canvas.size), slice(0, canvas.size))
        u, v = canvas.u, canvas.v
        mid = scene.info["mid"]
        region = _lobe_lateral(anat, lobe, u, v, mid) * scene.lungs[0]
        hilum = scene.info["hila"][0]
        if "lower" in lobe:
            target = (anat.depth_post - 0.12, max(anat.dome_v) + 0.05)
        elif "upper" in lobe:
            target = (anat.depth_ant + 0.12, anat.apex_v + 0.1)
        else:
            target = (anat.depth_ant + 0.08, max(anat.dome_v) - 0.02)
    if patchy:
        cells = (max(3, u.shape[0] // 20), max(3, u.shape[1] // 20))
        blotch = value_noise(rng, u.shape, (min(cells[0], 10), min(cells[1], 10)))
        amount = np.clip((blotch - F32(0.35)) * F32(3.0), 0.0, 1.0)
        cover = F32(0.8) * amount * region
    else:
        cover = F32(0.92) * region
    bronch = _bronchograms(canvas, rng, hilum, target, u.shape, win)
    cover = cover * (F32(1.0) - F32(0.3) * bronch * (cover > F32(0.5)))
    _add_fill(scene, cover, win)
    return _boxes(mask_bbox(cover, canvas.size, win, threshold=0.02))


def _nodule(f: Finding, scene: Scene) -> list[list[float]]:
    canvas = scene.canvas
    p = f.params
    r = 0.5 * float(p["diameter_cm"]) * CM
    cu = float(p["u"]) if scene.view == "frontal" else float(p["u_lateral"])
    cv = float(p["v"])
    win = canvas.window(cu - 1.4 * r, cu + 1.4 * r, cv - 1.4 * r, cv + 1.4 * r)
    if win is None:
        return []
    u, v = canvas.crop(win)
    du, dv = u - F32(cu), v - F32(cv)
    dist = np.sqrt(du * du + dv * dv)
    phi = np.arctan2(dv, du)
    l1, l2 = p["lobulation"]
    rr = F32(r) * (F32(1.0) + F32(0.1) * np.sin(F32(3) * phi + F32(l1)) + F32(0.06) * np.sin(F32(5) * phi + F32(l2)))
    body = smoothstep(rr - dist, max(canvas.px(1.2), 0.004))
    prof = np.sqrt(np.clip(F32(1.0) - (dist / rr) ** 2, 0.0, 1.0))
    _add_fill(scene, body * (F32(0.7) + F32(0.3) * prof), win)
    scene.soft[win] += F32(0.12) * body * prof
    return _boxes(mask_bbox(body, canvas.size, win, threshold=0.02))


def _edema(f: Finding, scene: Scene) -> list[list[float]]:
    anat, canvas = scene.anatomy, scene.canvas
    rng = np.random.default_rng(f.seed)
    spread, gain = EDEMA_SPREAD[f.severity]
    u, v = canvas.u, canvas.v
    boxes = []
    # interstitial thickening: fine reticular texture over both lungs
    reticular = np.clip((value_noise(rng, u.shape, (28, 28)) - F32(0.45)) * F32(2.5), 0.0, 1.0)
    if scene.view == "frontal":
        for (hu, hv), side in zip(scene.info["hila"], (RIGHT, LEFT)):
            du, dv = (u - F32(hu)) * F32(1.0 / spread), (v - F32(hv)) * F32(1.0 / (1.3 * spread))
            haze = np.exp(-(du * du + dv * dv)) * scene.lungs[side]
            cover = F32(min(0.95, 0.35 + gain)) * haze + F32(0.25 + 0.3 * gain) * reticular * haze
            _add_fill(scene, cover)
            boxes.append(mask_bbox(cover, canvas.size, threshold=0.02))
            # septal thickening near the lateral costophrenic angles (moderate and severe edema)
            if f.severity != "mild":
                cp_u, cp_v = anat.costophrenic_point(side)
                septa = np.zeros_like(u)
                for k in range(3):
                    y = cp_v - 0.04 - 0.025 * k - float(rng.uniform(0, 0.01))
                    x0 = cp_u - side * (0.005 + float(rng.uniform(0, 0.01)))
                    cov = canvas.polyline([(x0, y), (x0 - side * 0.035, y)], max(2.0, 0.006 / canvas.unit_per_px))
                    if cov is not None:
                        septa[cov[1]] = np.maximum(septa[cov[1]], F32(0.6) * cov[0] * scene.lungs[side][cov[1]])
                _add_fill(scene, septa)
                boxes.append(mask_bbox(septa, canvas.size, threshold=0.02))
    else:
        hu, hv = scene.info["hila"][0]
        du, dv = (u - F32(hu)) * F32(1.0 / spread), (v - F32(hv)) * F32(1.0 / (1.3 * spread))
        haze = np.exp(-(du * du + dv * dv)) * scene.lungs[0]
        cover = F32(min(0.9, 0.3 + gain)) * haze + F32(0.2 + 0.3 * gain) * reticular * haze
        _add_fill(scene, cover)
        boxes.append(mask_bbox(cover, canvas.size, threshold=0.02))
    return _boxes(*boxes)


def _atelectasis(f: Finding, scene: Scene) -> list[list[float]]:
    anat, canvas = scene.anatomy, scene.canvas
    boxes = []
    min_px = 3.0 * canvas.size / 128.0  # at least 3 px at 128 px, scaled with the image size
    for name, band in f.params["bands"].items():
        side = SIDES[name]
        a = float(band["a"])
        length, angle = float(band["length"]), float(band["angle"])
        cv = float(anat.dome(np.float32(a), side)) - float(band["rise"])
        if scene.view == "frontal":
            cu = side * a
            mask = scene.lungs[side]
        else:
            cu = 0.5 * (anat.depth_ant + anat.depth_post) + float(band["depth_lateral"])
            cv = cv - 0.02
            mask = scene.lungs[0]
        du, dv = 0.5 * length * math.cos(angle), 0.5 * length * math.sin(angle)
        pts = [(cu - du, cv - dv), (cu, cv + 0.004), (cu + du, cv + dv)]
        cov = canvas.polyline(pts, max(min_px, float(band["thickness"]) / canvas.unit_per_px))
        if cov is None:
            continue
        cover = F32(0.7) * cov[0] * np.clip(mask[cov[1]] * F32(1.5), 0.0, 1.0)
        _add_fill(scene, cover, cov[1])
        boxes.append(mask_bbox(cover, canvas.size, cov[1], threshold=0.02))
    return _boxes(*boxes)


def _device_paths(device: dict[str, Any], scene: Scene) -> list[tuple[list[tuple[float, float]], float, float]]:
    """Polylines ``(points, width in anatomy units, radiodensity)`` of one device on the scene's view."""
    anat = scene.anatomy
    cu, cv, a_axis, b_axis, tilt = scene.heart
    kind = device["type"]
    if scene.view == "frontal":
        tu, car = anat.trachea_u, anat.carina_v
        if kind == "endotracheal_tube":
            tip = car - float(device["tip_cm"]) * CM
            return [([(tu + 0.01, -0.95), (tu + 0.004, -0.6), (tu, tip)], 0.022, 0.6)]
        if kind == "central_line":
            tip_v = car + (0.07 if device["tip"] == "superior vena cava" else 0.13)
            svc = [(-0.05, car - 0.03), (-0.05, tip_v)]
            if device["route"] == "right internal jugular":
                pts = [(-0.13, -0.9), (-0.1, anat.clavicle_v - 0.03), (-0.065, car - 0.08)] + svc
            else:
                pts = [
                    (0.42, anat.clavicle_v + 0.04),
                    (0.2, anat.clavicle_v + 0.035),
                    (0.05, anat.clavicle_v + 0.05),
                    (-0.04, car - 0.06),
                ] + svc
            return [(pts, 0.01, 0.7)]
        if kind == "pacemaker":
            sgn = SIDES[device["side"]]
            gu, gv = sgn * 0.25, anat.clavicle_v + 0.09
            ra = (cu - 0.75 * a_axis, cv - 0.02)
            apex = (cu + 0.45 * a_axis * math.cos(tilt), cv + 0.45 * a_axis * math.sin(tilt) + 0.02)
            route = [
                (gu - sgn * 0.03, gv),
                (sgn * 0.12, anat.clavicle_v + 0.045),
                (-0.05, car - 0.04),
                (-0.055, car + 0.08),
                ra,
            ]
            paths = [(route + [(ra[0] + 0.06, cv + 0.04), apex], 0.011, 0.7)]
            if int(device["leads"]) == 2:
                paths.append((route + [(ra[0] + 0.03, ra[1] - 0.05), (ra[0] + 0.06, ra[1] - 0.07)], 0.011, 0.7))
            paths.append(([(gu - 0.022, gv), (gu + 0.022, gv)], 0.05, 1.0))  # the generator: a thick short bar
            return paths
        if kind == "enteric_tube":
            stomach = (0.17, anat.dome_v[1] + 0.07)
            curl = (stomach[0] + 0.05, stomach[1] - 0.02)
            return [([(0.0, -0.95), (0.015, car), (0.04, anat.dome_v[1]), stomach, curl], 0.014, 0.6)]
    else:
        mid, car = scene.info["mid"], scene.info["carina"]
        ant = anat.depth_ant
        if kind == "endotracheal_tube":
            tip = car[1] - float(device["tip_cm"]) * CM
            return [([(mid - 0.045, -0.95), (mid - 0.012, anat.apex_v), (mid + 0.02, tip)], 0.022, 0.6)]
        if kind == "central_line":
            tip_v = car[1] + (0.07 if device["tip"] == "superior vena cava" else 0.13)
            return [([(mid - 0.04, -0.9), (mid - 0.08, car[1] - 0.1), (mid - 0.1, tip_v)], 0.01, 0.7)]
        if kind == "pacemaker":
            gu, gv = ant + 0.02, anat.clavicle_v + 0.09
            apex = (cu - 0.6 * a_axis, cv + 0.5 * b_axis)
            route = [(gu + 0.03, gv), (mid - 0.06, car[1] - 0.06), (mid - 0.09, car[1] + 0.08), (cu + 0.2 * a_axis, cv)]
            paths = [(route + [apex], 0.011, 0.7)]
            if int(device["leads"]) == 2:
                paths.append((route + [(cu - 0.1 * a_axis, cv - 0.6 * b_axis)], 0.011, 0.7))
            paths.append(([(gu, gv - 0.02), (gu, gv + 0.02)], 0.03, 1.0))
            return paths
        if kind == "enteric_tube":
            stomach = (ant + 0.12, anat.dome_v[1] + 0.05)
            return [([(mid + 0.0, -0.95), (mid + 0.05, car[1]), (mid + 0.03, anat.dome_v[1]), stomach], 0.014, 0.6)]
    raise ValueError(f"unknown device {kind!r}")


def _devices(f: Finding, scene: Scene) -> list[list[float]]:
    canvas = scene.canvas
    min_px = 3.0 * canvas.size / 128.0  # devices stay >= 3 px wide at 128 px (and proportionally wider above)
    boxes = []
    for device in f.params["devices"]:
        box = None
        for pts, width, density in _device_paths(device, scene):
            cov = canvas.polyline(smooth_path(pts), max(min_px, width / canvas.unit_per_px))
            if cov is None:
                continue
            np.maximum(scene.metal[cov[1]], F32(density) * cov[0], out=scene.metal[cov[1]])
            b = mask_bbox(cov[0], canvas.size, cov[1], threshold=0.02)
            if b is not None:
                box = b if box is None else [min(box[0], b[0]), min(box[1], b[1]), max(box[2], b[2]), max(box[3], b[3])]
        if box is not None:
            boxes.append(box)
    return boxes


_DRAWERS = {
    "pleural_effusion": _effusion,
    "pneumothorax": _pneumothorax,
    "consolidation": _consolidation,
    "lung_nodule": _nodule,
    "edema": _edema,
    "atelectasis": _atelectasis,
    "support_devices": _devices,
}


def apply_finding(finding: Finding, scene: Scene) -> list[list[float]]:
    """Draw ``finding`` into ``scene`` (in place) and return its normalised boxes on that view."""
    if finding.kind in ("cardiomegaly", "rib_fracture"):
        return structural_boxes(finding, scene)
    return _DRAWERS[finding.kind](finding, scene)
