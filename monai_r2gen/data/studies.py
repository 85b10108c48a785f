"""Gather the inputs of report generation into studies: one report is written per study.

:func:`collect_studies` accepts any mix of

- DICOM files and folders of DICOM files (searched recursively). Every DICOM image is read without its pixel data and
  grouped with the others by Study Instance UID, whichever folder or argument it came from;
- PNG / JPEG / TIFF files, each one a study of its own (named after the file).

A file's kind is told from its content first (a PNG named ``.dcm`` is a PNG), then from its suffix. A folder that
holds no DICOM or image file at all is reported as such, with what was skipped in it;
- annotation files and manifests (R2Gen ``annotation.json``, JSONL, CSV; see :func:`~monai_r2gen.data.datasets.
  read_manifest`), each entry a study with the views it lists.

The views of a study are ordered frontal first (PA, then AP), then lateral, then anything else, so that the first view
is the one a model trained on frontal images expects. Unusable inputs are either raised (``on_error="raise"``) or
recorded with their reason: in the ``errors`` of the study they belong to when that is known (e.g. a DICOM SR or a
multi-frame image inside a study folder), else in a study without views (``ok`` is False) so that the caller can
report every bad input and carry on with the rest. DICOM files are checked exactly as
:func:`~monai_r2gen.data.dicom.read_dicom_header` checks them when they are loaded, so a bad file gets the same reason
here as from the Python API ("empty file (0 bytes)", "truncated file (300 bytes): ...", "not a regular file (a FIFO
(named pipe))"). Two files with the same SOP Instance UID are one instance: the readable one is used and both are
logged (paths and UIDs only, never patient identifiers).
"""

from __future__ import annotations

import logging
import os
import re
import stat
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monai_r2gen.data.dicom import read_dicom_header, read_instance_uids
from monai_r2gen.data.radiograph_checks import require_regular_file, sniff_format
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

    The checks and their messages are those of :func:`~monai_r2gen.data.dicom.read_dicom_header` (empty, truncated,
    not DICOM, not an image, a declared size beyond the limits), so that discovery and loading say the same.

    Raises:
        RadiographReadError: the file is not readable DICOM, is truncated, or is not an image (SR, presentation state,
            DICOMDIR...).
        MultiFrameError: the image has more than one frame.
    """
    path = os.fspath(path)
    ds = read_dicom_header(path)
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


def _kind_of(path: Path) -> str:
    """The kind of a file ("dicom", "image", "manifest" or "other"): by content first (magic bytes), then suffix."""
    sniffed = sniff_format(path)
    if sniffed == "dicom":
        return "dicom"
    if sniffed is not None:
        return "image"
    suffix = path.suffix.lower()
    if suffix in MANIFEST_SUFFIXES:
        return "manifest"
    if suffix in IMAGE_SUFFIXES:
        return "image"  # not a known image header: reading it will say why
    if suffix in DICOM_SUFFIXES:
        return "dicom"  # perhaps a data set without the Part-10 header
    return "other"


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
        self.unreadable: dict[str, list[tuple[str, str]]] = {}  # SOP Instance UID -> (path, reason) of bad copies

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
            logger.info("SOP Instance UID %s: %s used, %s is the same instance (skipped)", sop, twin.path, info.path)
            self.fail(RadiographReadError(info.path, f"same SOP Instance UID as {twin.path}; used once"), key)
            return
        for bad, reason in self.unreadable.get(sop or "", []):
            logger.warning("SOP Instance UID %s: %s used in place of its unreadable copy %s (%s)", sop, info.path,
                           bad, reason)  # fmt: skip
        self.dicom[key].append(info)

    def _fail_in_study(self, err: RadiographReadError, path: Path) -> None:
        """Record the error in the study named by the file's header when it has a Study Instance UID, else alone."""
        key, sop = read_instance_uids(path)  # only a hint; the reading error itself is reported below
        if sop is not None and self.on_error != "raise":
            self.unreadable.setdefault(sop, []).append((err.path, err.reason))
            kept = next((v.path for views in self.dicom.values() for v in views if v.sop_instance_uid == sop), None)
            if kept is not None:
                logger.warning("SOP Instance UID %s: %s is an unreadable copy of %s (used)", sop, err.path, kept)
        if key is not None and key not in self.dicom and self.on_error != "raise":
            self.dicom[key] = []
            self.dicom_errors[key] = []
            self.order.append(("dicom", key))
        self.fail(err, key)

    def _note_copies(self, errors: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """The errors, each unreadable file whose instance is read from another copy saying so."""
        used = {v.sop_instance_uid: v.path for views in self.dicom.values() for v in views if v.sop_instance_uid}
        noted = []
        for path, reason in errors:
            sop = next((s for s, bad in self.unreadable.items() if any(p == path for p, _ in bad)), None)
            if sop in used:
                reason = f"{reason} (the same instance, SOP Instance UID {sop}, is read from {used[sop]})"
            noted.append((path, reason))
        return noted

    def studies(self) -> list[Study]:
        result = []
        for kind, value in self.order:
            if kind == "study":
                result.append(value)
                continue
            views = order_views(self.dicom[value])
            uid = None if value.startswith("file:") else value
            study_id = uid or Path(value[len("file:") :]).stem
            errors = self._note_copies(self.dicom_errors[value])
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


def _add_file(collector: _Collector, path: Path, explicit: bool) -> str:
    """Add one file; returns what it was: "used" (a study or a view; perhaps with an error), "manifest" (ignored
    inside a folder), "other" (not an image, ignored inside a folder) or "error"."""
    try:
        require_regular_file(path)
    except RadiographReadError as err:
        collector.fail(err)
        return "error"
    kind = _kind_of(path)
    if kind == "manifest":
        if explicit:
            _add_manifest(collector, path)
            return "used"
        logger.debug("ignored %s inside a study folder (manifests are read only when given directly)", path)
        return "manifest"
    if kind == "image":
        collector.add_study(Study(path.stem, [str(path)], source="image", view_positions=[None]))
        return "used"
    if kind == "dicom":
        collector.add_dicom(path)
        return "used"
    if explicit:
        collector.fail(RadiographReadError(str(path), "not a DICOM, PNG, JPEG or TIFF file, nor a manifest"))
        return "error"
    logger.debug("ignored %s (not an image)", path)
    return "other"


def _nothing_found_reason(kinds: Counter, suffixes: Counter) -> str:
    """Why a folder gave no study: what its files were."""
    parts = []
    if kinds["other"]:
        listed = ", ".join(f"{suffix or 'no suffix'}: {n}" for suffix, n in suffixes.most_common(3))
        more = ", ..." if len(suffixes) > 3 else ""
        parts.append(f"{kinds['other']} skipped: not images ({listed}{more})")
    if kinds["manifest"]:
        parts.append(f"{kinds['manifest']} manifest(s) skipped: manifests are read only when given directly")
    total = kinds["other"] + kinds["manifest"]
    return f"no DICOM or image files in this folder ({total} file(s): {'; '.join(parts)})"


def _add_folder(collector: _Collector, folder: Path) -> None:
    files = _walk(folder)
    if not files:
        collector.fail(RadiographReadError(str(folder), "folder holds no files"))
        return
    kinds: Counter = Counter()
    suffixes: Counter = Counter()
    for file in files:
        kind = _add_file(collector, file, explicit=False)
        kinds[kind] += 1
        if kind == "other":
            suffixes[file.suffix.lower()] += 1
    if not kinds["used"] and not kinds["error"]:
        collector.fail(RadiographReadError(str(folder), _nothing_found_reason(kinds, suffixes)))


def _missing_reason(path: Path) -> str:
    """Why an input that is neither a file nor a folder cannot be used."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return "file or folder not found"
    if stat.S_ISFIFO(mode):
        return "not a regular file (a FIFO (named pipe))"
    if stat.S_ISSOCK(mode):
        return "not a regular file (a socket)"
    return "not a regular file (a device)"


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
            _add_folder(collector, path)
        elif path.is_file():
            _add_file(collector, path, explicit=True)
        else:
            collector.fail(RadiographReadError(str(path), _missing_reason(path)))
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
