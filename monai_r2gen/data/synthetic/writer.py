"""Writing a phantom dataset to disk: PNG and DICOM views, reports, ``annotation.json``, ``labels.csv``,
``findings.json`` and ``dataset.json``.

Layout of ``out_dir``::

    annotation.json   R2Gen-style {"train": [...], "val": [...], "test": [...]}; each entry has "id", "report"
                      (the FINDINGS section), "report_full" ("FINDINGS: ...\\n\\nIMPRESSION: ..."), "impression",
                      "image_path" (relative paths, frontal first, in the first of ``formats``), "dicom_path" (when
                      DICOM is written), "view_position", "split"
    labels.csv        id, split and the 14 CheXpert labels (1 / 0 / blank, see ``labels.py``)
    findings.json     per study: patient, CTR, views and every finding with its parameters and boxes
                      (normalised [x0, y0, x1, y1] on each view, origin top-left)
    dataset.json      generator version and parameters, split sizes, conventions
    images/<id>/<k>_<PA|AP|LL>.png|.dcm
    reports/<id>.txt  the full report

The ``report`` field holds the findings section (what R2Gen-style models are trained to write); the full text is
kept beside it. Files are byte-identical for the same arguments whatever the number of workers: every study is
rendered from its own seed, DICOM UIDs are derived from ``(seed, index, view)`` and no clock time is written.
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import logging
import multiprocessing
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from monai_r2gen.data.synthetic.labels import CHEXPERT_LABELS, format_label
from monai_r2gen.data.synthetic.study import STREAM_DATASET, SyntheticStudy, View, check_prevalence, render_study

__all__ = ["GENERATOR_VERSION", "generate_dataset", "study_uids", "view_dataset"]

logger = logging.getLogger(__name__)

GENERATOR_VERSION = "monai-r2gen-synthetic-1"
_FORMATS = ("png", "dcm")
_SPLITS = ("train", "val", "test")
_FIELD_OF_VIEW_MM = 430.0
_EPOCH = datetime.date(2015, 1, 1)


@dataclass(frozen=True)
class _Job:
    out_dir: str
    seed: int
    image_size: int
    lateral_fraction: float
    prevalence: dict[str, float]
    formats: tuple[str, ...]
    png_bits: int
    splits: dict[int, str]


def study_uids(seed: int, index: int, n_views: int) -> dict[str, Any]:
    """Deterministic StudyInstanceUID, and per view SeriesInstanceUID / SOPInstanceUID, of a dataset study."""
    from pydicom.uid import generate_uid

    def uid(*parts: object) -> str:
        return str(generate_uid(entropy_srcs=["monai-r2gen-synthetic", str(seed), str(index), *map(str, parts)]))

    return {
        "study": uid("study"),
        "series": [uid("series", k) for k in range(n_views)],
        "sop": [uid("sop", k) for k in range(n_views)],
    }


def view_dataset(study: SyntheticStudy, k: int, view: View, seed: int) -> Any:
    """The DICOM dataset of view ``k`` of ``study`` (stored values encode the display image through the VOI
    window; MONOCHROME1 studies store the inverted values)."""
    from monai_r2gen.data.dicom import make_radiograph_dataset

    enc = study.acquisition
    bits = int(enc["bits_stored"])
    top = 2**bits - 1
    lo, hi = round(enc["window_low"] * top), round(enc["window_high"] * top)
    stored = np.rint(lo + view.image.astype(np.float64) * (hi - lo)).astype(np.int64)
    center, width = 0.5 * (lo + hi), float(hi - lo + 1)
    if enc["photometric"] == "MONOCHROME1":
        stored = top - stored
        center = top - center
    uids = study_uids(seed, study.index, len(study.views))
    when = _EPOCH + datetime.timedelta(days=int(enc["day"]))
    date = when.strftime("%Y%m%d")
    study_time, view_time = _clock(int(enc["second"])), _clock(int(enc["second"]) + 60 * k)
    projections = "/".join(v.projection for v in study.views)
    spacing = round(_FIELD_OF_VIEW_MM / view.image.shape[0], 4)
    extra = {
        "StudyDate": date,
        "SeriesDate": date,
        "ContentDate": date,
        "AcquisitionDate": date,
        "StudyTime": study_time,
        "SeriesTime": view_time,
        "ContentTime": view_time,
        "AcquisitionTime": view_time,
        "PatientSex": study.anatomy.sex,
        "PatientAge": f"{study.anatomy.age:03d}Y",
        "AccessionNumber": f"S{seed % 10**6:06d}{study.index:08d}"[:16],
        "StudyDescription": f"CHEST {projections}",
        "SeriesDescription": "LATERAL" if view.name == "lateral" else view.projection,
        "PatientOrientation": ["P", "F"] if view.name == "lateral" else ["L", "F"],
        "SeriesNumber": k + 1,
        "BurnedInAnnotation": "NO",
    }
    return make_radiograph_dataset(
        stored,
        photometric=enc["photometric"],
        bits_stored=bits,
        modality=enc["modality"],
        view_position=view.projection,
        laterality="U",
        window=(center, width),
        pixel_spacing=(spacing, spacing),
        study_uid=uids["study"],
        series_uid=uids["series"][k],
        sop_uid=uids["sop"][k],
        patient_id=f"SYN{seed}-{study.index:06d}",
        patient_name="Synthetic^Phantom",
        study_id=str(study.index),
        instance_number=1,
        extra=extra,
    )


def _clock(second: int) -> str:
    return f"{second // 3600:02d}{(second // 60) % 60:02d}{second % 60:02d}"


def _png_bytes(image: np.ndarray, bits: int) -> bytes:
    if bits == 16:
        arr = np.rint(image * 65535.0).astype(np.uint16)
        pil = Image.fromarray(arr)
    else:
        pil = Image.fromarray(np.rint(image * 255.0).astype(np.uint8))
    buf = io.BytesIO()
    pil.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _write_study(job: _Job, index: int) -> dict[str, Any]:
    """Render and write one study; returns its annotation entry, label row and findings record."""
    from monai_r2gen.data.dicom import write_dataset

    study = render_study(
        job.seed,
        index,
        image_size=job.image_size,
        lateral_fraction=job.lateral_fraction,
        prevalence=job.prevalence,
        stream=STREAM_DATASET,
    )
    split = job.splits[index]
    rel_dir = f"images/{study.id}"
    os.makedirs(os.path.join(job.out_dir, rel_dir), exist_ok=True)
    paths: dict[str, list[str]] = {fmt: [] for fmt in job.formats}
    for k, view in enumerate(study.views):
        stem = f"{rel_dir}/{k}_{view.projection}"
        if "png" in job.formats:
            rel = f"{stem}.png"
            with open(os.path.join(job.out_dir, rel), "wb") as fh:
                fh.write(_png_bytes(view.image, job.png_bits))
            paths["png"].append(rel)
        if "dcm" in job.formats:
            rel = f"{stem}.dcm"
            write_dataset(view_dataset(study, k, view, job.seed), os.path.join(job.out_dir, rel))
            paths["dcm"].append(rel)
    with open(os.path.join(job.out_dir, "reports", f"{study.id}.txt"), "w", encoding="utf-8", newline="\n") as fh:
        fh.write(study.report.full + "\n")
    entry = {
        "id": study.id,
        "report": study.report.findings,
        "report_full": study.report.full,
        "impression": study.report.impression,
        "image_path": paths[job.formats[0]],
        "view_position": [v.projection for v in study.views],
        "split": split,
    }
    if "dcm" in job.formats and job.formats[0] != "dcm":
        entry["dicom_path"] = paths["dcm"]
    record = study.record()
    record["split"] = split
    for view_rec, path in zip(record["views"], paths[job.formats[0]]):
        view_rec["image_path"] = path
    row = [study.id, split] + [format_label(study.labels[name]) for name in CHEXPERT_LABELS]
    return {"entry": entry, "row": row, "record": record}


def _write_chunk(job: _Job, indices: Sequence[int]) -> list[dict[str, Any]]:
    return [_write_study(job, i) for i in indices]


def _assign_splits(n: int, seed: int, fractions: Sequence[float]) -> dict[int, str]:
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not np.isclose(sum(fractions), 1.0, atol=1e-6):
        raise ValueError(
            f"splits must be three non-negative fractions (train, val, test) adding up to 1, got {fractions}"
        )
    counts = [int(round(f * n)) for f in fractions]
    if n >= 3:  # keep every requested split non-empty
        for i, f in enumerate(fractions):
            if f > 0 and counts[i] == 0:
                counts[i] = 1
    while sum(counts) > n:
        counts[int(np.argmax(counts))] -= 1
    counts[0] += n - sum(counts)
    order = np.random.default_rng(np.random.SeedSequence(entropy=int(seed), spawn_key=(2,))).permutation(n)
    out: dict[int, str] = {}
    start = 0
    for name, count in zip(_SPLITS, counts):
        for i in order[start : start + count]:
            out[int(i)] = name
        start += count
    return out


def _chunks(indices: list[int], size: int) -> Iterable[list[int]]:
    for start in range(0, len(indices), size):
        yield indices[start : start + size]


def _pool_context() -> multiprocessing.context.BaseContext:
    # fork starts workers in milliseconds and they only run numpy/PIL/pydicom code
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else None)


def generate_dataset(
    out_dir: str | os.PathLike,
    n_studies: int,
    seed: int = 0,
    image_size: int = 256,
    lateral_fraction: float = 0.4,
    formats: Sequence[str] = ("png", "dcm"),
    workers: int = 1,
    prevalence: dict[str, float] | None = None,
    splits: Sequence[float] = (0.7, 0.1, 0.2),
    png_bits: int = 8,
    progress: bool = False,
) -> dict[str, Any]:
    """Write a phantom chest radiograph dataset with known findings, reports and labels.

    Args:
        out_dir: destination folder (created; existing files of the same names are overwritten).
        n_studies: number of studies.
        seed: dataset seed; the same arguments give byte-identical files.
        image_size: side of the square images in pixels (64..2048).
        lateral_fraction: share of studies with a lateral view besides the frontal one.
        formats: "png" and/or "dcm"; ``image_path`` in annotation.json points at the first one.
        workers: processes rendering studies in parallel (0: one per CPU core).
        prevalence: per-finding probabilities overriding :data:`~.findings.DEFAULT_PREVALENCE`
            (keys: cardiomegaly, pleural_effusion, pneumothorax, consolidation, lung_nodule, edema, atelectasis,
            support_devices, rib_fracture).
        splits: fractions of studies in train, val and test.
        png_bits: 8 or 16 bits per PNG pixel.
        progress: show a tqdm progress bar.

    Returns:
        summary dict: ``out_dir``, ``annotation``, ``labels``, ``findings``, ``n_studies``, ``splits`` (counts),
        ``n_images``.

    Raises:
        ValueError: on an invalid argument.
    """
    n_studies = int(n_studies)
    if n_studies < 1:
        raise ValueError(f"n_studies must be >= 1, got {n_studies}")
    if not 64 <= int(image_size) <= 2048:
        raise ValueError(f"image_size must be in [64, 2048], got {image_size}")
    if not 0.0 <= float(lateral_fraction) <= 1.0:
        raise ValueError(f"lateral_fraction must be in [0, 1], got {lateral_fraction}")
    formats = tuple(dict.fromkeys(str(f).lower().lstrip(".") for f in formats))
    formats = tuple("dcm" if f == "dicom" else f for f in formats)
    if not formats or any(f not in _FORMATS for f in formats):
        raise ValueError(f"formats must be a non-empty subset of {_FORMATS}, got {formats}")
    if png_bits not in (8, 16):
        raise ValueError(f"png_bits must be 8 or 16, got {png_bits}")
    workers = int(workers) if workers else (os.cpu_count() or 1)
    if workers < 1:
        raise ValueError(f"workers must be >= 0, got {workers}")
    prev = check_prevalence(prevalence)
    split_of = _assign_splits(n_studies, seed, splits)

    out = os.fspath(out_dir)
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    os.makedirs(os.path.join(out, "reports"), exist_ok=True)
    job = _Job(out, int(seed), int(image_size), float(lateral_fraction), prev, formats, int(png_bits), split_of)
    indices = list(range(n_studies))
    logger.info(
        "writing %d phantom studies (%d px, formats %s) to %s with %d worker(s)",
        n_studies,
        image_size,
        ",".join(formats),
        out,
        workers,
    )
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n_studies, desc="synthesizing", unit="study")
    results: list[dict[str, Any]] = []
    if workers == 1 or n_studies < 4:
        for chunk in _chunks(indices, 16):
            results.extend(_write_chunk(job, chunk))
            if bar is not None:
                bar.update(len(chunk))
    else:
        size = max(1, min(32, n_studies // (workers * 4)))
        with ProcessPoolExecutor(max_workers=workers, mp_context=_pool_context()) as pool:
            futures = [pool.submit(_write_chunk, job, chunk) for chunk in _chunks(indices, size)]
            for fut in futures:  # in submission order: the output does not depend on scheduling
                part = fut.result()
                results.extend(part)
                if bar is not None:
                    bar.update(len(part))
    if bar is not None:
        bar.close()

    annotation: dict[str, list[dict[str, Any]]] = {name: [] for name in _SPLITS}
    for res in results:
        annotation[res["entry"]["split"]].append(res["entry"])
    _write_json(os.path.join(out, "annotation.json"), annotation)
    with open(os.path.join(out, "labels.csv"), "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["id", "split", *CHEXPERT_LABELS])
        for res in results:
            writer.writerow(res["row"])
    findings = {
        "generator": GENERATOR_VERSION,
        "coordinates": "boxes are [x0, y0, x1, y1] as fractions of the image width / height, origin top-left",
        "studies": {res["entry"]["id"]: res["record"] for res in results},
    }
    _write_json(os.path.join(out, "findings.json"), findings)
    counts = {name: len(annotation[name]) for name in _SPLITS}
    n_images = sum(len(res["entry"]["image_path"]) for res in results)
    meta = {
        "generator": GENERATOR_VERSION,
        "seed": int(seed),
        "n_studies": n_studies,
        "image_size": int(image_size),
        "lateral_fraction": float(lateral_fraction),
        "prevalence": prev,
        "formats": list(formats),
        "png_bits": int(png_bits),
        "splits": counts,
        "n_images": n_images,
        "report_field": "'report' holds the FINDINGS section; 'report_full' holds 'FINDINGS: ...\\n\\nIMPRESSION: ...'",
        "label_convention": "CheXpert: 1 described, 0 explicitly negated in the report, blank not mentioned; "
        "No Finding 1 when nothing but support devices is positive",
        "labels": list(CHEXPERT_LABELS),
    }
    _write_json(os.path.join(out, "dataset.json"), meta)
    logger.info("wrote %d studies (%d images): %s", n_studies, n_images, counts)
    return {
        "out_dir": out,
        "annotation": os.path.join(out, "annotation.json"),
        "labels": os.path.join(out, "labels.csv"),
        "findings": os.path.join(out, "findings.json"),
        "n_studies": n_studies,
        "n_images": n_images,
        "splits": counts,
    }


def _write_json(path: str, obj: Any) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        json.dump(obj, fh, indent=1, ensure_ascii=False)
        fh.write("\n")
