"""Report-generation datasets: manifest readers, :class:`ReportDataset` and the batch collate.

Manifests understood by :func:`read_manifest`:

- R2Gen / R2GenGPT ``annotation.json``: ``{"train": [{"id", "report", "image_path": [...]}, ...], "val": [...],
  "test": [...]}``. IU-Xray entries list the study's two views. MIMIC-CXR entries carry ``study_id`` /
  ``subject_id``; R2Gen has one entry per image and R2GenGPT one per study, and both are grouped into one item
  per study. A top-level list of entries with a ``split`` field is accepted too.
- JSONL: one object per line with ``id``, ``image_paths`` (a list or one path), ``report`` and ``split``.
- CSV: columns ``id``, ``image_paths`` (paths separated by ``;``), ``report``, ``split``; other columns are kept.

Every item is ``{"id": str, "image": [absolute paths], "report": str, "split": str, ...extra fields}``; the
``report`` key is absent when the entry has no report or an empty one (inference).

Checks of the whole manifest (all splits, since an ``annotation.json`` holds them all), in :func:`read_manifest`:

- a study id may appear once in the whole manifest (after MIMIC-CXR entries are grouped into studies): a repeat
  within a split, or across splits (a study in both ``train`` and ``test`` leaks the test set into training), is
  an error naming the file and the id; when the caller collects skips instead (``skipped=[...]``, which
  :class:`ReportDataset` does under ``on_error="skip"``), the first occurrence in manifest order is kept and every
  later one is left out and recorded;
- a ``report`` that is not a string is an error, or a recorded skip in the same way.

Checks of each study, in :class:`ReportDataset`: a study of a ``train`` / ``val`` / ``test`` split must have a
report (:data:`REPORT_SPLITS`; ``require_report`` overrides this) and no report may be longer than
:data:`~monai_r2gen.metrics.nlg.MAX_REPORT_CHARS` characters (``max_report_chars``), the bound NLG scoring applies.
Under ``on_error="raise"`` both are a :class:`~monai_r2gen.errors.ManifestError` naming the manifest and the
study; under ``"skip"`` a logged skip recorded in :attr:`ReportDataset.skipped` (which ``monai-r2gen check-data``
prints).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import CacheDataset, Dataset, PersistentDataset

from monai_r2gen.data.reports import IGNORE_INDEX, TARGETS, clean_report, select_target
from monai_r2gen.errors import InputFileError, ManifestError, ModelConfigError, R2GenError, RadiographReadError
from monai_r2gen.metrics.nlg import MAX_REPORT_CHARS

__all__ = [
    "IMAGE_PATH_FIELDS",
    "REPORT_SPLITS",
    "MAX_REPORT_CHARS",
    "read_manifest",
    "ReportDataset",
    "ReportCollate",
    "stack_views",
]

logger = logging.getLogger(__name__)

IMAGE_PATH_FIELDS = ("image_paths", "image_path", "image", "images")
"""Accepted names of the image path field, first found wins."""

REPORT_SPLITS = ("train", "val", "test")
"""Splits whose studies must carry a report in :class:`ReportDataset` (training and scoring need one)."""

Skip = tuple[str, str, str]
"""A left-out study: ``(study id, file, reason)``."""

_Problem = tuple[str, str, str, str]  # (split, study id, file, reason): a Skip with its split, inside read_manifest

_JSON_SUFFIXES = (".json",)
_JSONL_SUFFIXES = (".jsonl", ".ndjson")
_CSV_SUFFIXES = (".csv",)
_CSV_PATH_SEPARATOR = ";"
_MAX_SKIP_LOG_LINES = 20

# ---------------------------------------------------------------------------------------------------------------
# manifest readers
# ---------------------------------------------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ManifestError(path, "file not found") from None
    except IsADirectoryError:
        raise ManifestError(path, "is a directory, expected a manifest file") from None
    except UnicodeDecodeError as exc:
        raise ManifestError(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ManifestError(path, f"cannot be read ({exc.strerror})") from None


def _load_annotation_json(path: Path) -> list[tuple[str, dict]]:
    """Returns ``(where, entry)`` pairs; ``where`` locates an entry in error messages."""
    try:
        content = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise ManifestError(path, f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    entries: list[tuple[str, dict]] = []
    if isinstance(content, list):
        entries = [(f"entry {i}", e) for i, e in enumerate(content)]
    elif isinstance(content, dict) and content and all(isinstance(v, list) for v in content.values()):
        for split_name, split_entries in content.items():
            for i, entry in enumerate(split_entries):
                if isinstance(entry, dict) and "split" not in entry:
                    entry = {**entry, "split": split_name}
                entries.append((f"{split_name!r} entry {i}", entry))
    else:
        raise ManifestError(path, "expected an R2Gen annotation (an object mapping split names to lists of entries) "
                                  "or a list of entries")  # fmt: skip
    return entries


def _load_jsonl(path: Path) -> list[tuple[str, dict]]:
    entries = []
    # split on "\n" only: str.splitlines() also splits on U+2028 & co, which JSON strings may hold unescaped
    for number, line in enumerate(_read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            entries.append((f"line {number}", json.loads(line)))
        except json.JSONDecodeError as exc:
            raise ManifestError(path, f"line {number}: invalid JSON ({exc.msg} at column {exc.colno})") from None
    return entries


def _load_csv(path: Path) -> list[tuple[str, dict]]:
    text = _read_text(path)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        header = reader.fieldnames
        if not header:
            raise ManifestError(path, "empty CSV file (no header)")
        header = [h.strip() for h in header]
        reader.fieldnames = header
        if not any(f in header for f in IMAGE_PATH_FIELDS):
            raise ManifestError(path, f"the CSV header has no image path column ({' / '.join(IMAGE_PATH_FIELDS)}); "
                                      f"columns: {header}")  # fmt: skip
        if "id" not in header:
            raise ManifestError(path, f"the CSV header has no 'id' column; columns: {header}")
        entries = []
        for row in reader:
            where = f"line {reader.line_num}"
            if None in row:
                raise ManifestError(path, f"{where}: more fields than the header has columns")
            if any(value is None for value in row.values()):
                raise ManifestError(path, f"{where}: fewer fields than the header has columns")
            entry: dict[str, Any] = dict(row)
            for field in IMAGE_PATH_FIELDS:
                if field in entry:
                    entry[field] = [p.strip() for p in entry[field].split(_CSV_PATH_SEPARATOR) if p.strip()]
            entries.append((where, entry))
    except csv.Error as exc:
        raise ManifestError(path, f"malformed CSV at line {reader.line_num}: {exc}") from None
    return entries


def _resolve(image_path: str, root: Path) -> str:
    expanded = os.path.expanduser(image_path)
    return os.path.abspath(expanded if os.path.isabs(expanded) else os.path.join(root, expanded))


def _normalise_entry(
    path: Path, where: str, entry: Any, root: Path, problems: list[_Problem] | None = None
) -> dict | None:
    """Checks one raw entry and returns an item with ``id``, ``image`` (absolute paths), ``split`` and extras.

    A report that is not a string raises, or, when ``problems`` is a list, is appended there and gives ``None``.
    """
    if not isinstance(entry, Mapping):
        raise ManifestError(path, f"{where}: expected an object, got {type(entry).__name__}")
    field = next((f for f in IMAGE_PATH_FIELDS if f in entry), None)
    if field is None:
        raise ManifestError(path, f"{where}: no image path field ({' / '.join(IMAGE_PATH_FIELDS)})")
    images = entry[field]
    if isinstance(images, str):
        images = [images]
    if not isinstance(images, list) or not images or not all(isinstance(p, str) and p.strip() for p in images):
        raise ManifestError(path, f"{where}: {field!r} must be a non-empty path or list of paths")
    item = {k: v for k, v in entry.items() if k not in IMAGE_PATH_FIELDS}
    if "id" not in item:
        if "study_id" not in item:
            raise ManifestError(path, f"{where}: no 'id' (or 'study_id') field")
        item["id"] = item["study_id"]
    if not isinstance(item["id"], (str, int)) or isinstance(item["id"], bool) or str(item["id"]).strip() == "":
        raise ManifestError(path, f"{where}: 'id' must be a non-empty string or integer")
    item["id"] = str(item["id"]).strip()
    if "report" in item and item["report"] is not None and not isinstance(item["report"], str):
        reason = f"{where}: 'report' must be a string, got {type(item['report']).__name__}"
        if problems is None:
            raise ManifestError(path, f"{reason} (study {item['id']!r})")
        problems.append((str(item.get("split") or ""), item["id"], os.fspath(path), reason))
        return None
    if item.get("report") is None or not item["report"].strip():  # no report (an empty CSV cell): inference
        item.pop("report", None)
    item["split"] = str(item.get("split") or "")
    item["image"] = [_resolve(p.strip(), root) for p in images]
    return item


def _group_studies(items: list[dict]) -> list[dict]:
    """Merges entries of the same MIMIC-CXR study (same split, subject_id and study_id) into one item."""
    groups: dict[tuple, dict] = {}
    differing_reports = 0
    for item in items:
        if "study_id" not in item:
            groups[("item", len(groups))] = item
            continue
        key = ("study", item["split"], str(item.get("subject_id", "")), str(item["study_id"]))
        group = groups.get(key)
        source_ids = list(item.get("source_ids") or [item["id"]])  # items grouped before keep their entries' ids
        if group is None:
            groups[key] = {**item, "id": str(item["study_id"]), "source_ids": source_ids, "image": list(item["image"])}
            continue
        group["source_ids"].extend(source_ids)
        group["image"].extend(p for p in item["image"] if p not in group["image"])
        if item.get("report", "").strip() != group.get("report", "").strip():
            differing_reports += 1
    if differing_reports:
        logger.warning("%d study entries carry a report different from the first entry of their study; "
                       "the first report was kept", differing_reports)  # fmt: skip
    return list(groups.values())


def _drop_duplicate_ids(path: Path, items: list[dict], problems: list[_Problem] | None) -> list[dict]:
    """Keeps the first item of each id (manifest order); a later one raises, or is appended to ``problems``."""
    first_split: dict[str, str] = {}
    kept = []
    for item in items:
        key, split = item["id"], item["split"]
        if key not in first_split:
            first_split[key] = split
            kept.append(item)
            continue
        seen = first_split[key]
        where = f"within split {split!r}" if seen == split else f"in split {split!r}, already in split {seen!r}"
        reason = f"duplicated study id {where}"
        if problems is None:
            raise ManifestError(path, f"{reason}: {key!r} (a study id may appear once in the whole manifest)")
        problems.append((split, key, os.fspath(path), f"{reason} (the first one is kept)"))
    return kept


def read_manifest(
    path: str | os.PathLike,
    split: str | None = None,
    image_root: str | os.PathLike | None = None,
    *,
    group_studies: bool = True,
    skipped: list[Skip] | None = None,
) -> list[dict]:
    """Reads an R2Gen/R2GenGPT ``annotation.json``, a JSONL or a CSV manifest (chosen by the file suffix).

    The whole manifest is checked, whatever ``split``: a study id repeated within or across splits, or a report
    that is not a string, raises :class:`ManifestError`, unless ``skipped`` is given (see the module docstring).

    Args:
        path: the manifest (``.json``, ``.jsonl`` / ``.ndjson`` or ``.csv``).
        split: keep only the items of this split (``"train"``, ``"val"``, ``"test"`` ...); ``None`` keeps all.
        image_root: folder that relative image paths are relative to; default: the manifest's folder.
        group_studies: merge entries with the same ``study_id`` (and ``subject_id`` and split) into one item whose
            ``id`` is the study id, ``image`` all its views and ``source_ids`` the entries' ids.
        skipped: when a list, entries with a non-string report and repeats of a study id (all but the first in
            manifest order) are left out and ``(study id, manifest path, reason)`` appended to it (those of
            ``split`` only; not logged), instead of raising.

    Returns:
        The items, in manifest order.

    Raises:
        ManifestError: the file is missing, unreadable or malformed, has no entries, has no entry of ``split``, or
            (without ``skipped``) repeats a study id or has a non-string report.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in _JSON_SUFFIXES:
        entries = _load_annotation_json(path)
    elif suffix in _JSONL_SUFFIXES:
        entries = _load_jsonl(path)
    elif suffix in _CSV_SUFFIXES:
        entries = _load_csv(path)
    else:
        raise ManifestError(path, f"unknown manifest type {suffix!r}; expected .json (annotation), .jsonl or .csv")
    root = Path(image_root) if image_root is not None else path.parent
    if not entries:
        raise ManifestError(path, "no entries")
    problems: list[_Problem] | None = None if skipped is None else []
    normalised = (_normalise_entry(path, where, entry, root, problems) for where, entry in entries)
    items = [item for item in normalised if item is not None]
    if group_studies:
        items = _group_studies(items)
    items = _drop_duplicate_ids(path, items, problems)
    if skipped is not None:
        skipped.extend(problem[1:] for problem in problems or () if split is None or problem[0] == split)
    if split is not None:
        present = {item["split"] for item in items} | {problem[0] for problem in problems or ()}
        items = [item for item in items if item["split"] == split]
        if split not in present:
            raise ManifestError(path, f"no entries of split {split!r}; splits present: {sorted(present)}")
    return items


# ---------------------------------------------------------------------------------------------------------------
# dataset
# ---------------------------------------------------------------------------------------------------------------

_FAILED = "__r2gen_failed__"
ON_ERROR = ("raise", "skip")
CACHE_MODES = ("none", "cache", "persistent")


def _find_r2gen_error(exc: BaseException) -> R2GenError | None:
    """The first R2GenError in an exception chain (MONAI wraps transform errors in RuntimeError)."""
    seen = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, R2GenError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


class _SkippingCacheDataset(CacheDataset):
    """CacheDataset whose cache pass keeps going when an item's transform raises an R2GenError."""

    def __init__(self, *args: Any, skip_errors: bool = False, **kwargs: Any) -> None:
        self.skip_errors = skip_errors
        self.failures: dict[int, R2GenError] = {}
        super().__init__(*args, **kwargs)

    def _load_cache_item(self, idx: int):
        try:
            return super()._load_cache_item(idx)
        except Exception as exc:
            err = _find_r2gen_error(exc)
            if err is None or not self.skip_errors:
                raise
            self.failures[idx] = err
            return {_FAILED: str(err)}

    def _transform(self, index: int):
        if index in self.failures:
            raise self.failures[index]
        return super()._transform(index)


class ReportDataset(Dataset):
    """Chest X-ray studies with their reports, read from a manifest, for report generation.

    Each item (before ``transform``) is ``{"id", "image": [view paths], "report", "split", "report_target", ...}``
    with the report already reduced to ``target`` and cleaned in ``report_style``. Pass a dictionary transform such
    as ``Compose([LoadStudyViewsd("image"), TokenizeReportd(tokenizer=..., num_image_tokens=K)])`` and collate with
    :class:`ReportCollate`.

    Bad inputs: under ``on_error="raise"`` a missing image file raises :class:`RadiographReadError` at construction
    and a transform failure re-raises the typed error (e.g. an undecodable DICOM). Under ``"skip"`` a study with a
    missing file is left out at construction, and a study whose transform raises an ``R2GenError`` is returned as
    ``None`` (dropped by :class:`ReportCollate`); both are logged with the file and the reason and recorded in
    :attr:`skipped`. Errors that are not ``R2GenError`` always propagate. Studies whose report is empty after
    section selection and cleaning are dropped when ``drop_empty_reports`` (as R2Gen drops MIMIC-CXR studies without
    findings), and recorded in :attr:`skipped` too, as are studies of another split (or none) without a report in a
    manifest where other studies have one. With DataLoader workers, failures inside worker processes are logged there
    but not added to the main process's :attr:`skipped`. The ``report`` kept in each item is the full cleaned text
    (only the token ids are truncated), so references are never truncated before scoring.

    Manifest checks (see the module docstring): a repeated study id (within or across the manifest's splits), a
    report that is not a string, a study of a :data:`REPORT_SPLITS` split without a report (``require_report``) and
    a report longer than ``max_report_chars`` raise :class:`ManifestError` naming the manifest and the study under
    ``on_error="raise"``; under ``"skip"`` they are logged and recorded in :attr:`skipped` (for a repeated id, every
    occurrence after the first in manifest order). A list of items is checked for repeated ids among its own items.

    Args:
        manifest: a manifest path (see :func:`read_manifest`) or a list of items already read.
        split: the split to keep (``None``: all).
        image_root: folder of relative image paths (default: the manifest's folder, or the working directory for a
            list of items).
        transform: a MONAI (dictionary) transform or sequence of transforms.
        on_error: ``"raise"`` or ``"skip"``.
        report_style: cleaning style, ``"none"``, ``"iu_xray"`` or ``"mimic_cxr"`` (see :func:`clean_report`).
        target: report part to keep: ``None`` (the whole report), ``"findings"``, ``"impression"`` or
            ``"findings+impression"`` (see :func:`select_target`). Written to each item as ``report_target``.
        cache: ``"none"`` (MONAI ``Dataset``), ``"cache"`` (``CacheDataset``: deterministic transforms run once, in
            memory) or ``"persistent"`` (``PersistentDataset``: cached to ``cache_dir``, which must be cleared when the
            transforms change, e.g. another tokenizer or K).
        cache_dir: the ``PersistentDataset`` folder (required for ``cache="persistent"``).
        cache_kwargs: extra arguments of ``CacheDataset`` / ``PersistentDataset`` (``num_workers``, ``cache_rate``,
            ``progress``, ``hash_transform`` ...).
        drop_empty_reports: drop studies whose report is empty after selection and cleaning, or missing (in a study
            that does not need one, see ``require_report``) while other studies have one; a manifest without any
            report is kept whole, for inference.
        check_files: check at construction that every image file exists.
        group_studies: passed to :func:`read_manifest`.
        require_report: whether every study needs a report: ``None`` (default) for studies of a
            :data:`REPORT_SPLITS` split (training and scoring), ``True`` for all, ``False`` for none (inference).
            A study that needs one and has none (or an empty one) is an error or a skip (``on_error``), whatever
            ``drop_empty_reports``.
        max_report_chars: longest accepted report in characters, before cleaning (default
            :data:`MAX_REPORT_CHARS`, the bound of NLG scoring); ``None``: no limit.
        source: the file a list of items was read from, named in errors and skips (default ``<items>``).

    Raises:
        ManifestError: bad manifest. RadiographReadError: missing image under ``on_error="raise"``.
        ModelConfigError: invalid option values.
    """

    def __init__(
        self,
        manifest: str | os.PathLike | Sequence[Mapping[str, Any]],
        split: str | None = None,
        image_root: str | os.PathLike | None = None,
        transform: Callable | Sequence[Callable] | None = None,
        on_error: str = "raise",
        report_style: str = "none",
        target: str | None = None,
        cache: str = "none",
        cache_dir: str | os.PathLike | None = None,
        cache_kwargs: Mapping[str, Any] | None = None,
        drop_empty_reports: bool = True,
        check_files: bool = True,
        group_studies: bool = True,
        require_report: bool | None = None,
        max_report_chars: int | None = MAX_REPORT_CHARS,
        source: str | os.PathLike | None = None,
    ) -> None:
        if on_error not in ON_ERROR:
            raise ModelConfigError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        if cache not in CACHE_MODES:
            raise ModelConfigError(f"cache must be one of {CACHE_MODES}, got {cache!r}")
        if target is not None and target not in TARGETS:
            raise ModelConfigError(f"target must be None or one of {TARGETS}, got {target!r}")
        if cache == "persistent" and cache_dir is None:
            raise ModelConfigError("cache='persistent' needs a cache_dir")
        if require_report not in (None, True, False):
            raise ModelConfigError(f"require_report must be None, True or False, got {require_report!r}")
        if max_report_chars is not None and (
            isinstance(max_report_chars, bool) or not isinstance(max_report_chars, int) or max_report_chars <= 0
        ):
            raise ModelConfigError(f"max_report_chars must be a positive integer or None, got {max_report_chars!r}")
        clean_report("", report_style)  # validates the style early
        self.on_error = on_error
        self.report_style = report_style
        self.target = target
        self.cache = cache
        self.drop_empty_reports = drop_empty_reports
        self.require_report = require_report
        self.max_report_chars = max_report_chars
        self.skipped: list[Skip] = []
        self._skip_keys: set[Skip] = set()

        problems: list[Skip] | None = [] if on_error == "skip" else None
        if isinstance(manifest, (str, os.PathLike)):
            self.manifest_path: str | None = os.fspath(manifest)
            raw_items = read_manifest(
                manifest, split=split, image_root=image_root, group_studies=group_studies, skipped=problems
            )
        else:
            self.manifest_path = os.fspath(source) if source is not None else None
            where = Path(self.manifest_path or "<items>")
            root = Path(image_root) if image_root is not None else Path.cwd()
            found: list[_Problem] | None = None if problems is None else []
            raw_items = [_normalise_entry(where, f"item {i}", item, root, found) for i, item in enumerate(manifest)]
            raw_items = [item for item in raw_items if item is not None]
            raw_items = _group_studies(raw_items) if group_studies else raw_items
            raw_items = _drop_duplicate_ids(where, raw_items, found)
            raw_items = [item for item in raw_items if split is None or item["split"] == split]
            if problems is not None:
                problems.extend(p[1:] for p in found or () if split is None or p[0] == split)
        for problem in problems or ():
            self._record_skip(*problem)
        self._expect_reports = any("report" in item for item in raw_items)
        items = [item for item in (self._prepare(item, check_files) for item in raw_items) if item is not None]
        if len(self.skipped) > _MAX_SKIP_LOG_LINES:
            logger.warning("%d studies skipped in total (first %d logged)", len(self.skipped), _MAX_SKIP_LOG_LINES)
        super().__init__(data=items, transform=transform)
        self._backend = self._build_backend(cache_dir, dict(cache_kwargs or {}))
        logger.info("ReportDataset: %d studies (%d skipped), target=%s, style=%s, cache=%s",
                    len(items), len(self.skipped), self.target_name, report_style, cache)  # fmt: skip

    @property
    def target_name(self) -> str:
        """The report part the items hold: ``"findings"``, ``"impression"``, ``"findings+impression"`` or
        ``"full"`` (the report as given)."""
        return self.target or "full"

    @property
    def num_skipped(self) -> int:
        """Number of skipped studies recorded in this process."""
        return len(self.skipped)

    def _record_skip(self, item_id: str, path: str, reason: str) -> None:
        key = (item_id, path, reason)
        if key in self._skip_keys:
            return
        self._skip_keys.add(key)
        self.skipped.append(key)
        if len(self.skipped) <= _MAX_SKIP_LOG_LINES:
            logger.warning("skipping study %s: %s: %s", item_id, path, reason)
        else:
            logger.debug("skipping study %s: %s: %s", item_id, path, reason)

    def _prepare(self, item: dict, check_files: bool) -> dict | None:
        if check_files:
            for image_path in item["image"]:
                if not os.path.isfile(image_path):
                    if self.on_error == "raise":
                        raise RadiographReadError(image_path, f"file not found (study {item['id']})")
                    self._record_skip(item["id"], image_path, "file not found")
                    return None
        item["report_target"] = self.target_name
        where = self.manifest_path or "<items>"
        if "report" not in item:
            needed = self.require_report if self.require_report is not None else item["split"] in REPORT_SPLITS
            if needed:
                return self._refuse(item, "no report")
            if self._expect_reports and self.drop_empty_reports:
                self._record_skip(item["id"], where, "no report")
                return None
        if "report" in item:
            report = item["report"]
            if self.max_report_chars is not None and len(report) > self.max_report_chars:
                return self._refuse(item, f"report of {len(report)} characters is longer than the limit of "
                                          f"{self.max_report_chars} (MAX_REPORT_CHARS)")  # fmt: skip
            if self.target is not None:
                report = select_target(report, self.target)
            report = clean_report(report, self.report_style)
            if not report and self.drop_empty_reports:
                where = self.manifest_path or "<items>"
                self._record_skip(item["id"], where, f"empty report after selecting {self.target_name!r}")
                return None
            item["report"] = report
        return item

    def _refuse(self, item: dict, reason: str) -> None:
        """A manifest problem of one study: ManifestError under ``on_error="raise"``, else a recorded skip."""
        where = self.manifest_path or "<items>"
        if self.on_error == "raise":
            raise ManifestError(where, f"study {item['id']!r}: {reason}")
        self._record_skip(item["id"], where, reason)
        return None

    def _build_backend(self, cache_dir: str | os.PathLike | None, kwargs: dict) -> Dataset:
        if self.cache == "none":
            return Dataset(self.data, self.transform)
        if self.cache == "persistent":
            return PersistentDataset(self.data, self.transform, cache_dir=cache_dir, **kwargs)
        kwargs.setdefault("progress", False)
        try:
            backend = _SkippingCacheDataset(self.data, self.transform, skip_errors=self.on_error == "skip", **kwargs)
        except Exception as exc:
            err = _find_r2gen_error(exc)
            if err is None:
                raise
            raise err from None
        for index, err in sorted(backend.failures.items()):
            self._record_failure(index, err)
        return backend

    def _record_failure(self, index: int, err: R2GenError) -> None:
        path = err.path if isinstance(err, InputFileError) else (self.manifest_path or "<items>")
        reason = err.reason if isinstance(err, InputFileError) else str(err)
        self._record_skip(self.data[index]["id"], path, reason)

    def _transform(self, index: int):
        try:
            return self._backend._transform(index)
        except Exception as exc:
            err = _find_r2gen_error(exc)
            if err is None:
                raise
            if self.on_error == "raise":
                raise err from None
            self._record_failure(index, err)
            return None


# ---------------------------------------------------------------------------------------------------------------
# collate
# ---------------------------------------------------------------------------------------------------------------

_TOKEN_PAD_VALUES = {"input_ids": None, "attention_mask": 0, "labels": IGNORE_INDEX}


def _pad_sequences(seqs: Sequence[torch.Tensor], value: int, side: str) -> torch.Tensor:
    length = max(int(s.shape[0]) for s in seqs)
    out = torch.full((len(seqs), length), value, dtype=torch.long)
    for row, seq in enumerate(seqs):
        n = int(seq.shape[0])
        if n == 0:
            continue
        if side == "right":
            out[row, :n] = seq
        else:
            out[row, length - n :] = seq
    return out


def _as_tensor(value: Any) -> torch.Tensor:
    if hasattr(value, "as_tensor"):  # MetaTensor -> plain tensor (batch metadata is not collated)
        value = value.as_tensor()
    return torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value)


def stack_views(items: Sequence[Mapping[Hashable, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack the items' ``image`` views ``(V, C, H, W)`` (or ``(C, H, W)``, one view) to ``(B, V_max, C, H, W)``,
    zero views appended, with the ``(B, V_max)`` mask of the real views (an item's ``view_mask`` when it has one).

    Raises:
        ModelConfigError: views that are not 3-D / 4-D or that differ in ``(C, H, W)``.
    """
    views = []
    for item in items:
        image = _as_tensor(item["image"])
        views.append(image.unsqueeze(0) if image.ndim == 3 else image)
    if any(v.ndim != 4 for v in views):
        shapes = [tuple(v.shape) for v in views]
        raise ModelConfigError(f"'image' items must be (V, C, H, W) or (C, H, W), got {shapes}")
    if len({tuple(v.shape[1:]) for v in views}) > 1:
        raise ModelConfigError(f"'image' items differ in (C, H, W): {sorted({tuple(v.shape[1:]) for v in views})}; "
                               "resize and pad the views to one size (LoadStudyViewsd spatial_size)")  # fmt: skip
    v_max = max(v.shape[0] for v in views)
    images = torch.zeros((len(views), v_max, *views[0].shape[1:]), dtype=views[0].dtype)
    mask = torch.zeros((len(views), v_max), dtype=torch.bool)
    for row, (item, v) in enumerate(zip(items, views)):
        images[row, : v.shape[0]] = v
        if "view_mask" in item and item["view_mask"] is not None:
            item_mask = _as_tensor(item["view_mask"]).to(torch.bool).reshape(-1)
            mask[row, : item_mask.shape[0]] = item_mask[:v_max]
        else:
            mask[row, : v.shape[0]] = True
    return images, mask


class ReportCollate:
    """Collates report-generation items with dynamic padding.

    - ``input_ids`` (pad id), ``attention_mask`` (0) and ``labels`` (-100) are padded to the longest item, on the
      right for training (``padding_side="right"``) or on the left (``"left"``);
    - ``prompt_ids`` is always left padded (generation continues after the last position) and returned with
      ``prompt_attention_mask``;
    - ``image`` items of shape ``(V, C, H, W)`` (or ``(C, H, W)``, one view) are stacked to ``(B, V_max, C, H, W)``
      with zero views appended, and ``view_mask`` ``(B, V_max)`` marks the real views (from the items'
      ``view_mask`` when present, else all of an item's views);
    - other tensors are stacked when their shapes agree; everything else (``id``, ``report``, ``split``, ...) is
      kept as a list;
    - ``None`` items (studies skipped by :class:`ReportDataset`) are dropped; an all-``None`` batch gives ``{}``.

    Args:
        pad_token_id: the tokenizer's pad id.
        padding_side: ``"right"`` (training) or ``"left"``.
    """

    def __init__(self, pad_token_id: int, padding_side: str = "right") -> None:
        if padding_side not in ("right", "left"):
            raise ModelConfigError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
        if pad_token_id is None:
            raise ModelConfigError("pad_token_id is None: give the tokenizer a pad token (add_image_token does)")
        self.pad_token_id = int(pad_token_id)
        self.padding_side = padding_side

    def __call__(self, batch: Sequence[Mapping[Hashable, Any] | None]) -> dict[str, Any]:
        items = [item for item in batch if item is not None]
        if not items:
            return {}
        out: dict[str, Any] = {}
        keys: list[Hashable] = []
        for item in items:
            keys.extend(k for k in item if k not in keys)
        for key in keys:
            values = [item.get(key) for item in items]
            if key in _TOKEN_PAD_VALUES:
                if any(v is None for v in values):
                    raise ModelConfigError(f"some items have no {key!r}: tokenize every item of a batch")
                pad = self.pad_token_id if _TOKEN_PAD_VALUES[key] is None else _TOKEN_PAD_VALUES[key]
                seqs = [_as_tensor(v).long().reshape(-1) for v in values]
                out[key] = _pad_sequences(seqs, pad, self.padding_side)
                if key == "input_ids" and "attention_mask" not in keys:
                    ones = [torch.ones_like(s) for s in seqs]
                    out["attention_mask"] = _pad_sequences(ones, 0, self.padding_side)
            elif key == "prompt_ids":
                seqs = [_as_tensor(v).long().reshape(-1) for v in values]
                out["prompt_ids"] = _pad_sequences(seqs, self.pad_token_id, "left")
                out["prompt_attention_mask"] = _pad_sequences([torch.ones_like(s) for s in seqs], 0, "left")
            elif key == "image":
                out["image"], out["view_mask"] = stack_views(items)
            elif key == "view_mask" and "image" in keys:
                continue  # built with the images
            elif all(isinstance(v, torch.Tensor) for v in values) and len({tuple(v.shape) for v in values}) == 1:
                out[key] = torch.stack([_as_tensor(v) for v in values])
            else:
                out[key] = values
        return out
