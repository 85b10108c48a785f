"""Gather the inputs of report generation into studies: one report is written per study.

:func:`collect_studies` accepts any mix of

- DICOM files and folders of DICOM files (searched recursively). Every DICOM image is read without its pixel data and
  grouped with the others by Study Instance UID, whichever folder or argument it came from;
- PNG / JPEG / TIFF files, each one a study of its own (named after the file);
- annotation files and manifests (R2Gen ``annotation.json``, JSONL, CSV; see :func:`~monai_r2gen.data.datasets.
  read_manifest`), each entry a study with the views it lists.

The views of a study are ordered frontal first (PA, then AP), then lateral, then anything else, so that the first view
is the one a model trained on frontal images expects. Unusable inputs are either raised (``on_error="raise"``) or
recorded with their reason: in the ``errors`` of the study they belong to when that is known (e.g. a DICOM SR or a
multi-frame image inside a study folder), else in a study without views (``ok`` is False) so that the caller can
report every bad input and carry on with the rest.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from monai_r2gen.data.dicom import is_dicom_file
from monai_r2gen.errors import InputFileError, ManifestError, MultiFrameError, RadiographReadError

__all__ = [
    "IMAGE_SUFFIXES",
    "MANIFEST_SUFFIXES",
    "ON_ERROR",
    "Study",
    "ViewInfo",
    "collect_studies",
    "order_views",
    "read_view_info",
    "view_rank",
]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
"""Suffixes of non-DICOM radiographs (one study per file)."""

MANIFEST_SUFFIXES = (".json", ".jsonl", ".ndjson", ".csv")
"""Suffixes of annotation files and manifests."""

DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")

ON_ERROR = ("skip", "raise")

_FRONTAL = ("PA", "AP")
_LATERAL = ("LATERAL", "LL", "RL", "LAT", "LLAT", "RLAT")
# Code meanings of the View Code Sequence (CID 4010) when ViewPosition is empty
_PA_MEANING = re.compile(r"postero-?anterior", re.IGNORECASE)
_AP_MEANING = re.compile(r"antero-?posterior", re.IGNORECASE)
_LATERAL_MEANING = re.compile(r"lateral", re.IGNORECASE)
_DECUBITUS_MEANING = re.compile(r"decubitus", re.IGNORECASE)
_IGNORED_NAMES = ("DICOMDIR",)
_HEADER_TAGS = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "SOPClassUID",
    "Modality",
    "ViewPosition",
    "ViewCodeSequence",
    "SeriesNumber",
    "InstanceNumber",
    "Rows",
    "Columns",
    "NumberOfFrames",
)


@dataclass
class Study:
    """One study to write a report for.

    Attributes:
        study_id: the Study Instance UID of a DICOM study, the manifest entry's id, or the file name (without suffix)
            of a PNG / JPEG; for an unusable input without a study, the input path.
        paths: the views (absolute paths), frontal first, then lateral, then others; empty when nothing was usable.
        study_instance_uid: the DICOM Study Instance UID, when known.
        errors: (path, reason) of inputs belonging to this study that were skipped.
        source: "dicom", "image", "manifest" or "error".
        view_positions: the view position of each path ("PA", "AP", "LATERAL", ... or None), same order as ``paths``.
        reference: the report given by a manifest entry (for evaluation), else None.
    """

    study_id: str
    paths: list[str]
    study_instance_uid: str | None = None
    errors: list[tuple[str, str]] = field(default_factory=list)
    source: str = "dicom"
    view_positions: list[str | None] = field(default_factory=list)
    reference: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the study has at least one usable view."""
        return bool(self.paths)


@dataclass(frozen=True)
class ViewInfo:
    """What :func:`collect_studies` needs from a DICOM header (no patient identifiers)."""

    path: str
    study_instance_uid: str | None
    series_instance_uid: str | None
    sop_instance_uid: str | None
    modality: str | None
    view_position: str | None
    series_number: int
    instance_number: int


def view_rank(view_position: str | None) -> int:
    """Sort key of a view position: 0 PA, 1 AP, 2 lateral, 3 anything else (unknown included)."""
    position = (view_position or "").strip().upper()
    if position in _FRONTAL:
        return _FRONTAL.index(position)
    if position in _LATERAL:
        return 2
    return 3


def _view_from_codes(ds: Any) -> str | None:
    """A ViewPosition-like value from the View Code Sequence's code meaning, when ViewPosition is empty."""
    for item in ds.get("ViewCodeSequence") or []:
        meaning = str(item.get("CodeMeaning", ""))
        if _DECUBITUS_MEANING.search(meaning):
            return None
        if _PA_MEANING.search(meaning):
            return "PA"
        if _AP_MEANING.search(meaning):
            return "AP"
        if _LATERAL_MEANING.search(meaning):
            return "LATERAL"
    return None


def _text(value: Any) -> str | None:
    text = str(value).strip() if value is not None else ""
    return text or None


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def read_view_info(path: str | os.PathLike) -> ViewInfo:
    """Read the header of a DICOM radiograph (pixel data excluded) and check that it is a single-frame image.

    Args:
        path: a DICOM file (Part-10, or a bare dataset with a DICOM suffix).

    Raises:
        RadiographReadError: the file is not readable DICOM, or is not an image (SR, presentation state, DICOMDIR...).
        MultiFrameError: the image has more than one frame.
    """
    path = os.fspath(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=not is_dicom_file(path))
    except (InvalidDicomError, OSError, EOFError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise RadiographReadError(path, f"not a readable DICOM file ({type(exc).__name__})") from exc
    if "SOPClassUID" not in ds and "Rows" not in ds:
        raise RadiographReadError(path, "not a DICOM file (no SOP class and no image attributes)")
    if "Rows" not in ds or "Columns" not in ds:
        uid = ds.get("SOPClassUID")
        name = getattr(pydicom.uid.UID(str(uid)), "name", "") if uid else ""
        raise RadiographReadError(path, f"DICOM object is not an image ({name or uid or 'unknown SOP class'})")
    if _int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise MultiFrameError(path, f"multi-frame image ({int(ds.NumberOfFrames)} frames); expected one radiograph")
    position = _text(ds.get("ViewPosition"))
    if position is not None:
        position = position.upper()
    else:
        position = _view_from_codes(ds)
    return ViewInfo(
        path=path,
        study_instance_uid=_text(ds.get("StudyInstanceUID")),
        series_instance_uid=_text(ds.get("SeriesInstanceUID")),
        sop_instance_uid=_text(ds.get("SOPInstanceUID")),
        modality=_text(ds.get("Modality")),
        view_position=position,
        series_number=_int(ds.get("SeriesNumber")),
        instance_number=_int(ds.get("InstanceNumber")),
    )


def order_views(views: Iterable[ViewInfo]) -> list[ViewInfo]:
    """Views sorted frontal (PA, AP) first, then lateral, then others; ties by series, instance number and path."""
    return sorted(views, key=lambda v: (view_rank(v.view_position), v.series_number, v.instance_number, v.path))


def _looks_like_dicom(path: Path) -> bool:
    return path.suffix.lower() in DICOM_SUFFIXES or is_dicom_file(path)


def _walk(folder: Path) -> list[Path]:
    """Files under ``folder`` (recursively, sorted, hidden files and DICOMDIR left out)."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        names = sorted(n for n in files if not n.startswith(".") and n not in _IGNORED_NAMES)
        found.extend(Path(root) / name for name in names)
    return found


class _Collector:
    """Accumulates studies in input order while the inputs are scanned."""

    def __init__(self, on_error: str) -> None:
        self.on_error = on_error
        self.dicom: dict[str, list[ViewInfo]] = {}  # study key -> views
        self.dicom_errors: dict[str, list[tuple[str, str]]] = {}
        self.order: list[tuple[str, Any]] = []  # ("dicom", key) or ("study", Study), in first-seen order
        self.ids: set[str] = set()

    def fail(self, err: InputFileError, study_key: str | None = None) -> None:
        if self.on_error == "raise":
            raise err
        logger.warning("skipped %s: %s", err.path, err.reason)
        if study_key is not None and study_key in self.dicom:
            self.dicom_errors[study_key].append((err.path, err.reason))
        else:
            self.order.append(("study", Study(err.path, [], errors=[(err.path, err.reason)], source="error")))

    def add_study(self, study: Study) -> None:
        study.study_id = self._unique(study.study_id)
        self.order.append(("study", study))

    def _unique(self, study_id: str) -> str:
        candidate, n = study_id, 1
        while candidate in self.ids:
            n += 1
            candidate = f"{study_id}_{n}"
        self.ids.add(candidate)
        return candidate

    def add_dicom(self, path: Path) -> None:
        try:
            info = read_view_info(path)
        except RadiographReadError as err:
            self._fail_in_study(err, path)
            return
        key = info.study_instance_uid or f"file:{info.path}"
        if key not in self.dicom:
            self.dicom[key] = []
            self.dicom_errors[key] = []
            self.order.append(("dicom", key))
        sop = info.sop_instance_uid
        twin = next((v for v in self.dicom[key] if sop and v.sop_instance_uid == sop), None)
        if twin is not None:  # the same instance reached twice (copies, or a file and its folder)
            self.fail(RadiographReadError(info.path, f"same SOP Instance UID as {twin.path}; used once"), key)
            return
        self.dicom[key].append(info)

    def _fail_in_study(self, err: RadiographReadError, path: Path) -> None:
        """Record the error in the study named by the file's header when it has a Study Instance UID, else alone."""
        key = None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID"], force=True)
            key = _text(header.get("StudyInstanceUID"))
        except Exception:  # only a hint; the reading error itself is reported below
            key = None
        if key is not None and key not in self.dicom and self.on_error != "raise":
            self.dicom[key] = []
            self.dicom_errors[key] = []
            self.order.append(("dicom", key))
        self.fail(err, key)

    def studies(self) -> list[Study]:
        result = []
        for kind, value in self.order:
            if kind == "study":
                result.append(value)
                continue
            views = order_views(self.dicom[value])
            uid = None if value.startswith("file:") else value
            study_id = uid or Path(value[len("file:") :]).stem
            errors = self.dicom_errors[value]
            if not views:
                # every file of this study was unusable: report it as one failed study named by its UID
                result.append(Study(self._unique(study_id), [], uid, list(errors), source="error"))
                continue
            result.append(
                Study(
                    self._unique(study_id),
                    [v.path for v in views],
                    uid,
                    list(errors),
                    source="dicom",
                    view_positions=[v.view_position for v in views],
                )
            )
        return result


def _add_manifest(collector: _Collector, path: Path) -> None:
    from monai_r2gen.data.datasets import read_manifest

    try:
        items = read_manifest(path)
    except ManifestError as err:
        collector.fail(err)
        return
    for item in items:
        paths, errors = [], []
        for image in item["image"]:
            if os.path.isfile(image):
                paths.append(image)
            else:
                err = RadiographReadError(image, "file not found (listed in the manifest)")
                if collector.on_error == "raise":
                    raise err
                logger.warning("study %s: skipped %s: %s", item["id"], err.path, err.reason)
                errors.append((err.path, err.reason))
        collector.add_study(
            Study(
                str(item["id"]),
                paths,
                None,
                errors,
                source="manifest" if paths else "error",
                view_positions=[None] * len(paths),
                reference=item.get("report"),
            )
        )


def _add_file(collector: _Collector, path: Path, explicit: bool) -> None:
    suffix = path.suffix.lower()
    if suffix in MANIFEST_SUFFIXES:
        if explicit:
            _add_manifest(collector, path)
        else:
            logger.debug("ignored %s inside a study folder (manifests are read only when given directly)", path)
        return
    if suffix in IMAGE_SUFFIXES and not is_dicom_file(path):
        if os.path.getsize(path) == 0:
            collector.fail(RadiographReadError(str(path), "empty file (0 bytes)"))
            return
        collector.add_study(Study(path.stem, [str(path)], source="image", view_positions=[None]))
        return
    if _looks_like_dicom(path):
        collector.add_dicom(path)
        return
    if explicit:
        collector.fail(RadiographReadError(str(path), "not a DICOM, PNG, JPEG or TIFF file, nor a manifest"))
    else:
        logger.debug("ignored %s (not an image)", path)


def collect_studies(inputs: Sequence[str | os.PathLike] | str | os.PathLike, on_error: str = "skip") -> list[Study]:
    """Group input files, folders and manifests into the studies to report on.

    Args:
        inputs: DICOM files, folders (searched recursively for DICOM, PNG, JPEG and TIFF files), PNG / JPEG / TIFF
            files, and annotation files / manifests (``.json``, ``.jsonl``, ``.csv``).
        on_error: "skip" records each unusable input (in the study it belongs to, else as a study without views whose
            ``ok`` is False) and carries on; "raise" raises the first error.

    Returns:
        The studies in the order their first file was met. DICOM images are grouped by Study Instance UID across all
        inputs, views ordered frontal first, then lateral, then others.

    Raises:
        RadiographReadError / MultiFrameError / ManifestError: with ``on_error="raise"``, naming the file and reason.
        ValueError: ``on_error`` is not one of ``ON_ERROR``.
    """
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    collector = _Collector(on_error)
    for raw in inputs:
        path = Path(os.path.expanduser(os.fspath(raw))).absolute()
        if path.is_dir():
            files = _walk(path)
            if not files:
                collector.fail(RadiographReadError(str(path), "folder holds no files"))
            for file in files:
                _add_file(collector, file, explicit=False)
        elif path.is_file():
            _add_file(collector, path, explicit=True)
        else:
            collector.fail(RadiographReadError(str(path), "file or folder not found"))
    studies = collector.studies()
    if on_error == "raise":
        for study in studies:
            if not study.ok:
                raise RadiographReadError(study.study_id, "no usable image in this study")
    logger.info(
        "%d studies (%d usable, %d views) from %d inputs",
        len(studies),
        sum(s.ok for s in studies),
        sum(len(s.paths) for s in studies),
        len(inputs),
    )
    return studies

