"""One phantom study: patient, findings, views, report and labels, all derived from ``(seed, stream, index)``.

Every study owns a :class:`numpy.random.SeedSequence` built from the dataset seed, a stream tag and the study
index (and the epoch for the on-the-fly stream), split into independent child streams for the anatomy, the
findings, the acquisition (projection, lateral view, exposure, noise, DICOM encoding) and the report wording. So a
study renders the same bytes whichever worker renders it, and the same patient can be rendered with and without a
finding (``findings=[...]``) to see exactly what the finding changes.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from monai_r2gen.data.synthetic.anatomy import Anatomy, compose, frontal_scene, lateral_scene, sample_anatomy
from monai_r2gen.data.synthetic.drawing import apply_finding
from monai_r2gen.data.synthetic.findings import (
    DEFAULT_PREVALENCE,
    FINDING_KINDS,
    Finding,
    heart_ctr_of,
    rib_break_of,
    sample_finding,
    sample_findings,
)
from monai_r2gen.data.synthetic.labels import study_labels
from monai_r2gen.data.synthetic.reports import Report, write_report

__all__ = [
    "STREAM_DATASET",
    "STREAM_ONLINE",
    "View",
    "SyntheticStudy",
    "study_seed",
    "render_study",
    "check_prevalence",
]

#: stream tags: studies written by ``generate_dataset`` and studies rendered on the fly never coincide.
STREAM_DATASET = 0
STREAM_ONLINE = 1

_AP_WITH_LINES = 0.85  # share of AP (portable) frontal views when an ET tube or central line is present


@dataclass
class View:
    """One rendered view: "frontal" (projection PA or AP) or "lateral" (projection LL)."""

    name: str
    projection: str
    image: np.ndarray  # float32 (S, S) in [0, 1], 0 black / 1 white


@dataclass
class SyntheticStudy:
    """A rendered study with its ground truth."""

    id: str
    index: int
    anatomy: Anatomy
    findings: list[Finding]
    views: list[View]
    report: Report
    labels: dict[str, float | None]
    ctr_seen: float  # cardiothoracic ratio as projected on the frontal view
    acquisition: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """JSON-serialisable ground truth (patient, views, findings with their boxes)."""
        return {
            "sex": self.anatomy.sex,
            "age": self.anatomy.age,
            "ctr": round(self.ctr_seen, 3),
            "views": [{"view": v.name, "view_position": v.projection} for v in self.views],
            "findings": [f.to_dict() for f in self.findings],
        }


def check_prevalence(prevalence: dict[str, float] | None) -> dict[str, float]:
    """The default prevalences updated with ``prevalence``; raises ValueError on unknown names or values outside
    [0, 1]."""
    out = dict(DEFAULT_PREVALENCE)
    for name, value in (prevalence or {}).items():
        if name not in DEFAULT_PREVALENCE:
            raise ValueError(f"unknown finding {name!r} in prevalence; expected some of {FINDING_KINDS}")
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"prevalence of {name!r} must be in [0, 1], got {value}")
        out[name] = float(value)
    return out


def study_seed(seed: int, index: int, stream: int = STREAM_DATASET, epoch: int = 0) -> np.random.SeedSequence:
    """The seed sequence of study ``index`` (on-the-fly studies also depend on the epoch)."""
    key = (int(stream), int(index)) if stream == STREAM_DATASET else (int(stream), int(epoch), int(index))
    return np.random.SeedSequence(entropy=int(seed), spawn_key=key)


def _override_findings(requested: Sequence[Finding | str], seq: np.random.SeedSequence, anat: Anatomy) -> list[Finding]:
    """Findings given by the caller: Finding objects are copied, kind names are drawn from the same child stream
    that :func:`sample_findings` uses for that kind."""
    children = dict(zip(FINDING_KINDS, seq.spawn(len(FINDING_KINDS))))
    out = []
    for item in requested:
        if isinstance(item, Finding):
            out.append(copy.deepcopy(item))
            continue
        if item not in children:
            raise ValueError(f"unknown finding {item!r}; expected one of {FINDING_KINDS}")
        rng = np.random.default_rng(children[item])
        rng.random()  # the presence draw of sample_findings
        out.append(sample_finding(item, rng, anat))
    out.sort(key=lambda f: FINDING_KINDS.index(f.kind))
    return out


def render_study(
    seed: int,
    index: int,
    *,
    image_size: int = 256,
    lateral_fraction: float = 0.4,
    prevalence: dict[str, float] | None = None,
    ap_fraction: float = 0.2,
    stream: int = STREAM_DATASET,
    epoch: int = 0,
    findings: Sequence[Finding | str] | None = None,
    projection: str | None = None,
    lateral: bool | None = None,
    noise: bool = True,
    study_id: str | None = None,
    images: bool = True,
) -> SyntheticStudy:
    """Render one study.

    Args:
        seed: dataset seed.
        index: study index within the stream.
        image_size: side of the square images in pixels.
        lateral_fraction: probability that the study has a lateral view.
        prevalence: per-finding probabilities (defaults: :data:`DEFAULT_PREVALENCE`).
        ap_fraction: share of AP frontal views when no ET tube / central line is present.
        stream: :data:`STREAM_DATASET` or :data:`STREAM_ONLINE`.
        epoch: epoch of the on-the-fly stream.
        findings: force these findings (Finding objects or kind names) instead of drawing them; the anatomy,
            acquisition and noise stay those of ``(seed, index)``.
        projection: force "PA" or "AP".
        lateral: force the presence (True) or absence (False) of the lateral view.
        noise: add quantum noise (False gives the noiseless phantom, handy to measure what a finding changes).
        study_id: identifier (default ``syn{index:06d}``, or ``syn-e{epoch}-{index:06d}`` on the on-the-fly stream).
        images: render the views (False: only the findings, report and labels, with empty ``views`` and no boxes).

    Returns:
        the study, its views in display convention, its report, labels and the boxes of its findings.
    """
    prev = check_prevalence(prevalence)
    seq = study_seed(seed, index, stream, epoch)
    anat_seq, find_seq, acq_seq, report_seq = seq.spawn(4)
    anat = sample_anatomy(np.random.default_rng(anat_seq))
    if findings is None:
        found = sample_findings(find_seq, anat, prev)
    else:
        found = _override_findings(findings, find_seq, anat)

    acq = np.random.default_rng(acq_seq)
    u_projection, u_lateral = acq.random(), acq.random()
    exposures = [
        {
            "gain": acq.uniform(1.35, 1.8),
            "gamma": acq.uniform(0.85, 1.15),
            "tilt": acq.uniform(-0.04, 0.04),
            "noise": acq.uniform(0.008, 0.02),
        }
        for _ in range(2)
    ]
    noise_seeds = acq.integers(0, 2**63 - 1, size=2)
    encoding = {
        "photometric": "MONOCHROME1" if acq.random() < 0.4 else "MONOCHROME2",
        "bits_stored": int(acq.choice([12, 14, 15, 16])),
        "modality": "CR" if acq.random() < 0.35 else "DX",
        "window_low": float(acq.uniform(0.01, 0.08)),
        "window_high": float(acq.uniform(0.82, 0.97)),
        "day": int(acq.integers(0, 3650)),
        "second": int(acq.integers(7 * 3600, 20 * 3600)),
    }
    lines = any(
        d["type"] in ("endotracheal_tube", "central_line")
        for f in found
        if f.kind == "support_devices"
        for d in f.params["devices"]
    )
    if projection is None:
        projection = "AP" if u_projection < (_AP_WITH_LINES if lines else ap_fraction) else "PA"
    if projection not in ("PA", "AP"):
        raise ValueError(f"projection must be 'PA' or 'AP', got {projection!r}")
    has_lateral = bool(u_lateral < lateral_fraction) if lateral is None else bool(lateral)

    views = (
        _render_views(anat, found, image_size, projection, has_lateral, exposures, noise_seeds, noise) if images else []
    )
    heart_ctr = heart_ctr_of(found)
    ctr = heart_ctr if heart_ctr is not None else anat.ctr
    ctr_seen = ctr * (1.06 if projection == "AP" else 1.0)
    report = write_report(found, np.random.default_rng(report_seq), projection, has_lateral, ctr_seen)
    if study_id is None:
        study_id = f"syn{index:06d}" if stream == STREAM_DATASET else f"syn-e{epoch}-{index:06d}"
    return SyntheticStudy(
        id=study_id,
        index=int(index),
        anatomy=anat,
        findings=found,
        views=views,
        report=report,
        labels=study_labels(found, report.negated),
        ctr_seen=float(ctr_seen),
        acquisition=encoding,
    )


def _render_views(
    anat: Anatomy,
    found: list[Finding],
    size: int,
    projection: str,
    has_lateral: bool,
    exposures: list[dict],
    noise_seeds: np.ndarray,
    noise: bool,
) -> list[View]:
    """Draw the frontal (and lateral) view with the findings, filling each finding's boxes."""
    heart_ctr = heart_ctr_of(found)
    scene = frontal_scene(anat, size, projection, heart_ctr=heart_ctr, rib_break=rib_break_of(found))
    for f in found:
        f.boxes["frontal"] = apply_finding(f, scene)
    views = [View("frontal", projection, _finish(scene, exposures[0], noise_seeds[0], noise))]
    if has_lateral:
        scene = lateral_scene(anat, size, heart_ctr=heart_ctr)
        for f in found:
            f.boxes["lateral"] = apply_finding(f, scene)
        views.append(View("lateral", "LL", _finish(scene, exposures[1], noise_seeds[1], noise)))
    return views


def _finish(scene: Any, exposure: dict, noise_seed: int, noise: bool) -> np.ndarray:
    size = scene.canvas.size
    field_ = np.random.default_rng(int(noise_seed)).standard_normal((size, size), dtype=np.float32) if noise else None
    return compose(scene, exposure, field_)
