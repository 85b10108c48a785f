"""Findings of the phantom studies: their kinds, prevalences, CheXpert labels and random parameters.

Each finding is drawn independently with its own prevalence (:data:`DEFAULT_PREVALENCE`) and its own random
stream, so that changing one prevalence leaves the geometry of the others unchanged. A :class:`Finding` holds only
JSON-serialisable parameters; ``drawing.py`` draws it into a view. Two findings change normal structures and are
passed to the base renderers instead: cardiomegaly (:func:`heart_ctr_of`) and rib fractures (:func:`rib_break_of`).

Mapping to the 14 CheXpert observations (see ``labels.py``):

=================  =========================================
finding            CheXpert labels
=================  =========================================
cardiomegaly       Cardiomegaly
pleural_effusion   Pleural Effusion
pneumothorax       Pneumothorax
consolidation      Consolidation, Lung Opacity
lung_nodule        Lung Lesion
edema              Edema, Lung Opacity
atelectasis        Atelectasis, Lung Opacity
support_devices    Support Devices
rib_fracture       Fracture
=================  =========================================
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from monai_r2gen.data.synthetic.anatomy import LEFT, RIGHT, Anatomy, RibBreak, lung_shape
from monai_r2gen.data.synthetic.geometry import CM
from monai_r2gen.metrics.attributes import FINDING_KINDS  # the one list of finding kinds

__all__ = [
    "FINDING_KINDS",
    "DEFAULT_PREVALENCE",
    "FINDING_LABELS",
    "Finding",
    "sample_findings",
    "sample_finding",
    "rib_break_of",
    "heart_ctr_of",
]


#: probability that a study shows each finding (drawn independently).
DEFAULT_PREVALENCE: dict[str, float] = {
    "cardiomegaly": 0.2,
    "pleural_effusion": 0.2,
    "pneumothorax": 0.08,
    "consolidation": 0.15,
    "lung_nodule": 0.1,
    "edema": 0.12,
    "atelectasis": 0.18,
    "support_devices": 0.18,
    "rib_fracture": 0.06,
}

#: CheXpert observations made positive by each finding.
FINDING_LABELS: dict[str, tuple[str, ...]] = {
    "cardiomegaly": ("Cardiomegaly",),
    "pleural_effusion": ("Pleural Effusion",),
    "pneumothorax": ("Pneumothorax",),
    "consolidation": ("Consolidation", "Lung Opacity"),
    "lung_nodule": ("Lung Lesion",),
    "edema": ("Edema", "Lung Opacity"),
    "atelectasis": ("Atelectasis", "Lung Opacity"),
    "support_devices": ("Support Devices",),
    "rib_fracture": ("Fracture",),
}

SIDES = {"right": RIGHT, "left": LEFT}
LOBES = ("right upper lobe", "right middle lobe", "right lower lobe", "left upper lobe", "lingula", "left lower lobe")
CTR_RANGES = {"mild": (0.52, 0.56), "moderate": (0.57, 0.62), "severe": (0.63, 0.7)}
EFFUSION_HEIGHT = {"small": (0.03, 0.05), "moderate": (0.1, 0.15), "large": (0.21, 0.3)}
PNEUMOTHORAX_DEPTH = {"small": (0.18, 0.24), "moderate": (0.3, 0.38), "large": (0.5, 0.6)}
EDEMA_SPREAD = {"mild": (0.11, 0.3), "moderate": (0.15, 0.45), "severe": (0.2, 0.65)}


@dataclass
class Finding:
    """One finding of a study.

    Attributes:
        kind: one of :data:`FINDING_KINDS`.
        side: "right", "left", "bilateral" or None (e.g. cardiomegaly, devices).
        severity: a word used by the report ("small", "moderate", "mild", "lobar", "displaced", ...) or None.
        params: JSON-serialisable geometry and descriptors.
        seed: seed of the finding's own texture randomness.
        boxes: per view ("frontal", "lateral"), the normalised boxes where it was drawn (filled by rendering).
    """

    kind: str
    side: str | None = None
    severity: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    boxes: dict[str, list[list[float]]] = field(default_factory=dict)

    @property
    def labels(self) -> tuple[str, ...]:
        return FINDING_LABELS[self.kind]

    def sides(self) -> list[int]:
        """Signs of ``u`` of the affected hemithoraces (frontal view)."""
        if self.side == "bilateral":
            return [RIGHT, LEFT]
        return [SIDES[self.side]] if self.side in SIDES else []

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["labels"] = list(self.labels)
        return out


# ----------------------------------------------------------------------------------------------------------------------
# sampling
# ----------------------------------------------------------------------------------------------------------------------


def _pick(rng: np.random.Generator, options: dict[str, float]) -> str:
    names = list(options)
    p = np.asarray([options[n] for n in names], dtype=np.float64)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def _side3(rng: np.random.Generator, bilateral: float) -> str:
    return _pick(rng, {"right": (1 - bilateral) / 2, "left": (1 - bilateral) / 2, "bilateral": bilateral})


def _sample_cardiomegaly(rng: np.random.Generator, anat: Anatomy) -> Finding:
    sev = _pick(rng, {"mild": 0.45, "moderate": 0.35, "severe": 0.2})
    lo, hi = CTR_RANGES[sev]
    return Finding("cardiomegaly", None, sev, {"ctr": round(float(rng.uniform(lo, hi)), 3)})


def _sample_effusion(rng: np.random.Generator, anat: Anatomy) -> Finding:
    side = _side3(rng, 0.35)
    sizes, heights = {}, {}
    for s in ["right", "left"] if side == "bilateral" else [side]:
        sizes[s] = _pick(rng, {"small": 0.5, "moderate": 0.35, "large": 0.15})
        heights[s] = round(float(rng.uniform(*EFFUSION_HEIGHT[sizes[s]])), 4)
    order = ["small", "moderate", "large"]
    sev = max(sizes.values(), key=order.index)
    return Finding("pleural_effusion", side, sev, {"sizes": sizes, "heights": heights})


def _sample_pneumothorax(rng: np.random.Generator, anat: Anatomy) -> Finding:
    side = "right" if rng.random() < 0.5 else "left"
    sev = _pick(rng, {"small": 0.5, "moderate": 0.3, "large": 0.2})
    return Finding("pneumothorax", side, sev, {"depth": round(float(rng.uniform(*PNEUMOTHORAX_DEPTH[sev])), 4)})


def _sample_consolidation(rng: np.random.Generator, anat: Anatomy) -> Finding:
    lobe = LOBES[int(rng.choice(len(LOBES), p=[0.15, 0.12, 0.25, 0.13, 0.1, 0.25]))]
    pattern = "lobar" if rng.random() < 0.5 else "patchy"
    side = "right" if lobe.startswith("right") else "left"
    return Finding("consolidation", side, pattern, {"lobe": lobe}, seed=int(rng.integers(2**31 - 1)))


def _inside_lung(anat: Anatomy, u: float, v: float, side: int, margin: float) -> bool:
    rho, _ = lung_shape(anat, np.float32(u), np.float32(v), side)
    a = u * side
    if rho > 1.0 - margin or v > float(anat.dome(np.float32(a), side)) - 0.04 or a < anat.mediastinum_w + 0.05:
        return False
    cu, cv, a_axis, b_axis, tilt = anat.heart_shape(anat.ctr)
    du, dv = u - cu, v - cv
    p = (du * math.cos(tilt) + dv * math.sin(tilt)) / a_axis
    q = (-du * math.sin(tilt) + dv * math.cos(tilt)) / b_axis
    return p * p + q * q > 1.6**2


def _zone(anat: Anatomy, v: float) -> str:
    if v < anat.hilum_v - 0.09:
        return "upper"
    return "mid" if v < anat.hilum_v + 0.07 else "lower"


def _sample_nodule(rng: np.random.Generator, anat: Anatomy) -> Finding:
    is_mass = rng.random() < 0.3
    diameter = float(rng.uniform(3.2, 6.0) if is_mass else rng.uniform(1.5, 2.9))
    r = 0.5 * diameter * CM
    side = "right" if rng.random() < 0.5 else "left"
    sgn = SIDES[side]
    for _ in range(200):
        a = float(rng.uniform(anat.mediastinum_w + 0.05, anat.width(sgn) - 0.04))
        v = float(rng.uniform(anat.apex_v + 0.05, anat.dome_top(sgn) + 0.02))
        if _inside_lung(anat, sgn * a, v, sgn, margin=0.25 + 2.5 * r):
            break
    else:  # pragma: no cover - the lung always has room for a mid-zone lesion
        a, v = 0.6 * anat.width(sgn), anat.hilum_v
    mid = 0.5 * (anat.depth_ant + anat.depth_post)
    return Finding(
        "lung_nodule",
        side,
        "mass" if is_mass else "nodule",
        {
            "diameter_cm": round(diameter, 1),
            "u": round(sgn * a, 4),
            "v": round(v, 4),
            "u_lateral": round(float(mid + rng.uniform(-0.15, 0.15)), 4),
            "zone": _zone(anat, v),
            "lobulation": [round(float(x), 3) for x in rng.uniform(0, 2 * math.pi, 2)],
        },
        seed=int(rng.integers(2**31 - 1)),
    )


def _sample_edema(rng: np.random.Generator, anat: Anatomy) -> Finding:
    sev = _pick(rng, {"mild": 0.45, "moderate": 0.35, "severe": 0.2})
    return Finding("edema", "bilateral", sev, {}, seed=int(rng.integers(2**31 - 1)))


def _sample_atelectasis(rng: np.random.Generator, anat: Anatomy) -> Finding:
    side = _side3(rng, 0.35)
    sev = "minimal" if rng.random() < 0.4 else "mild"
    bands = {}
    for s in ["right", "left"] if side == "bilateral" else [side]:
        w = anat.width(SIDES[s])
        bands[s] = {
            "a": round(float(rng.uniform(0.38, 0.62) * w), 4),
            "rise": round(float(rng.uniform(0.04, 0.08)), 4),
            "length": round(float(rng.uniform(0.1, 0.16)), 4),
            "angle": round(float(rng.uniform(-0.25, 0.25)), 4),
            "thickness": round(float(rng.uniform(0.011, 0.015) if sev == "minimal" else rng.uniform(0.015, 0.02)), 4),
            "depth_lateral": round(float(rng.uniform(-0.05, 0.15)), 4),
        }
    return Finding("atelectasis", side, sev, {"bands": bands})


def _sample_devices(rng: np.random.Generator, anat: Anatomy) -> Finding:
    devices: list[dict[str, Any]] = []
    if rng.random() < 0.5:
        devices.append({"type": "endotracheal_tube", "tip_cm": round(float(rng.uniform(3.0, 6.0)), 1)})
    if rng.random() < 0.5:
        route = "right internal jugular" if rng.random() < 0.6 else "left subclavian"
        tip = "superior vena cava" if rng.random() < 0.5 else "cavoatrial junction"
        devices.append({"type": "central_line", "route": route, "tip": tip})
    if rng.random() < 0.35:
        side = "left" if rng.random() < 0.85 else "right"
        devices.append({"type": "pacemaker", "side": side, "leads": 2 if rng.random() < 0.6 else 1})
    if rng.random() < 0.3:
        devices.append({"type": "enteric_tube"})
    if not devices:
        devices.append(
            [
                {"type": "endotracheal_tube", "tip_cm": round(float(rng.uniform(3.0, 6.0)), 1)},
                {"type": "central_line", "route": "right internal jugular", "tip": "superior vena cava"},
                {"type": "pacemaker", "side": "left", "leads": 2},
                {"type": "enteric_tube"},
            ][int(rng.integers(4))]
        )
    return Finding("support_devices", None, None, {"devices": devices})


def _sample_fracture(rng: np.random.Generator, anat: Anatomy) -> Finding:
    side = "right" if rng.random() < 0.5 else "left"
    displaced = rng.random() < 0.5  # else minimally displaced: every fracture shows a gap and a step
    w = anat.width(SIDES[side])
    a = float(rng.uniform(0.5, 0.85) * w)
    rib = int(rng.integers(3, 8))
    return Finding(
        "rib_fracture",
        side,
        "displaced" if displaced else "minimally displaced",
        {
            "rib": rib,
            "rib_number": rib + 1,
            "a": round(a, 4),
            "location": "lateral" if a > 0.68 * w else "posterior",
            "step": round(float(rng.uniform(0.7, 1.1) if displaced else rng.uniform(0.25, 0.4)) * anat.rib_width, 4),
            "gap": round(float(rng.uniform(0.016, 0.02)), 4),
        },
    )


_SAMPLERS = {
    "cardiomegaly": _sample_cardiomegaly,
    "pleural_effusion": _sample_effusion,
    "pneumothorax": _sample_pneumothorax,
    "consolidation": _sample_consolidation,
    "lung_nodule": _sample_nodule,
    "edema": _sample_edema,
    "atelectasis": _sample_atelectasis,
    "support_devices": _sample_devices,
    "rib_fracture": _sample_fracture,
}


def sample_finding(kind: str, rng: np.random.Generator, anat: Anatomy) -> Finding:
    """Draw the parameters of one finding of ``kind`` for the patient ``anat``."""
    if kind not in _SAMPLERS:
        raise ValueError(f"unknown finding {kind!r}; expected one of {FINDING_KINDS}")
    return _SAMPLERS[kind](rng, anat)


def sample_findings(seed_seq: np.random.SeedSequence, anat: Anatomy, prevalence: dict[str, float]) -> list[Finding]:
    """Draw every finding of one study independently (each kind from its own child stream of ``seed_seq``)."""
    out = []
    for kind, child in zip(FINDING_KINDS, seed_seq.spawn(len(FINDING_KINDS))):
        rng = np.random.default_rng(child)
        if rng.random() < prevalence.get(kind, 0.0):
            out.append(sample_finding(kind, rng, anat))
    return out


def heart_ctr_of(findings: list[Finding]) -> float | None:
    """The cardiothoracic ratio imposed by a cardiomegaly finding (None when absent)."""
    for f in findings:
        if f.kind == "cardiomegaly":
            return float(f.params["ctr"])
    return None


def rib_break_of(findings: list[Finding]) -> RibBreak | None:
    """The rib fracture to draw into the ribs (None when absent)."""
    for f in findings:
        if f.kind == "rib_fracture":
            p = f.params
            return RibBreak(SIDES[f.side], int(p["rib"]), float(p["a"]), float(p["step"]), float(p["gap"]))
    return None
