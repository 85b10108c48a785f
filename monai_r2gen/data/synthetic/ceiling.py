"""Re-written phantom reports: the same findings in other words, for the paraphrase ceiling of NLG scores.

A phantom study's report is one draw of :func:`~monai_r2gen.data.synthetic.reports.write_report` from the study's
report stream. Drawing again from another stream gives a report with exactly the same findings, sides and severities
but other paraphrases, so the BLEU of such re-writes against the references is what a model that knows every
finding exactly can reach (:func:`monai_r2gen.evaluation.paraphrase_ceiling`).

Everything is rebuilt from ``findings.json``: the findings (kind, side, severity, params), the frontal projection
(``view_position`` of the first ``"frontal"`` view), whether a lateral view exists, and the cardiothoracic ratio as
seen on the frontal view (quoted by some cardiomegaly sentences). ``findings.json`` does not record that ratio
unrounded: the study's ``ctr`` is it rounded to 3 decimals, which quoted to 2 decimals differs from the original on
rounding ties, so with a cardiomegaly finding the ratio is rebuilt as the finding's imposed ``params.ctr`` times the
frontal magnification ``round(ctr / params.ctr, 2)`` (1 for PA, the AP factor otherwise), which is exact.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monai_r2gen.data.synthetic.findings import FINDING_KINDS, Finding
from monai_r2gen.data.synthetic.reports import Report, write_report
from monai_r2gen.errors import InputFileError

__all__ = ["SECTIONS", "REWRITE_STREAM", "read_study_records", "rewrite_stream", "study_report", "rewrite_reports"]

#: sections :func:`rewrite_reports` can return
SECTIONS: tuple[str, ...] = ("findings", "impression", "full")
#: tag mixed into every re-write stream, so that no re-write reuses a dataset study's report stream
REWRITE_STREAM = 0x5EED_C011


def read_study_records(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """The study records of a phantom generator's ``findings.json`` (``{study_id: record}``).

    Raises:
        InputFileError: missing / unreadable file, invalid JSON, or not the generator's layout (a plain
            ``{study_id: [finding, ...]}`` file has no views, so its reports cannot be re-written).
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise InputFileError(path, "findings file not found") from None
    except IsADirectoryError:
        raise InputFileError(path, "is a directory, expected a findings.json file") from None
    except json.JSONDecodeError as exc:
        raise InputFileError(path, f"invalid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputFileError(path, f"cannot be read ({exc})") from None
    studies = raw.get("studies") if isinstance(raw, Mapping) else None
    if not isinstance(studies, Mapping):
        raise InputFileError(path, "not a findings.json of the synthetic generator (no 'studies' object); re-writing "
                                   "reports needs its study records with views and findings")  # fmt: skip
    return {str(k): v for k, v in studies.items()}


def _finding(item: Any, where: str, path: Path) -> Finding:
    if not isinstance(item, Mapping) or item.get("kind") not in FINDING_KINDS:
        kind = item.get("kind") if isinstance(item, Mapping) else item
        raise InputFileError(path, f"{where}: unknown finding {kind!r}; expected one of {', '.join(FINDING_KINDS)}")
    try:
        return Finding(
            kind=item["kind"], side=item.get("side"), severity=item.get("severity"),
            params=dict(item.get("params") or {}), seed=int(item.get("seed", 0) or 0),
        )  # fmt: skip
    except (TypeError, ValueError) as exc:
        raise InputFileError(path, f"{where}: malformed finding ({exc})") from None


def _ctr_seen(record: Mapping[str, Any], findings: Sequence[Finding]) -> float:
    """The cardiothoracic ratio on the frontal view; only cardiomegaly sentences quote it."""
    recorded = float(record.get("ctr", 0.45))
    heart = next((f for f in findings if f.kind == "cardiomegaly" and "ctr" in f.params), None)
    if heart is None:
        return recorded
    imposed = float(heart.params["ctr"])
    # the record keeps ctr_seen = imposed * magnification rounded to 3 decimals; the magnification itself (1 for PA,
    # the AP factor otherwise) is a 2-decimal constant, so imposed * magnification is the unrounded ctr_seen
    return imposed * round(recorded / imposed, 2)


def study_report(record: Mapping[str, Any], rng: np.random.Generator, path: str | os.PathLike = "findings.json",
                 study_id: str = "?") -> Report:  # fmt: skip
    """Write a study's report again from its ``findings.json`` record with the paraphrases drawn from ``rng``.

    With the study's own report stream (``study_seed(seed, index).spawn(4)[3]``) this reproduces the original report.

    Args:
        record: the study's record (``views``, ``findings``, ``ctr``).
        rng: the stream that chooses the paraphrases.
        path: the file the record comes from (for error messages).
        study_id: the study's id (for error messages).

    Raises:
        InputFileError: the record lacks its views or findings, or holds an unknown finding.
    """
    path = Path(path)
    if not isinstance(record, Mapping) or not isinstance(record.get("findings"), list):
        raise InputFileError(path, f"study {study_id!r}: no 'findings' list")
    views = record.get("views")
    if not isinstance(views, list) or not all(isinstance(v, Mapping) for v in views):
        raise InputFileError(path, f"study {study_id!r}: no 'views' list (needed for the projection)")
    frontal = next((v for v in views if v.get("view") == "frontal"), None)
    projection = str(frontal.get("view_position", "PA")) if frontal is not None else "PA"
    has_lateral = any(v.get("view") == "lateral" for v in views)
    findings = [_finding(f, f"study {study_id!r} finding {i}", path) for i, f in enumerate(record["findings"])]
    findings.sort(key=lambda f: FINDING_KINDS.index(f.kind))
    try:
        ctr_seen = _ctr_seen(record, findings)
    except (TypeError, ValueError, ZeroDivisionError):
        raise InputFileError(path, f"study {study_id!r}: 'ctr' is not a positive number") from None
    try:
        return write_report(findings, rng, projection, has_lateral, ctr_seen)
    except (KeyError, TypeError, ValueError) as exc:
        reason = f"study {study_id!r}: findings lack what the report writer needs ({exc!r})"
        raise InputFileError(path, reason) from None


def rewrite_stream(seed: int, study_id: str) -> np.random.Generator:
    """The re-write stream of ``study_id`` for ``seed``: derived from both (a SHA-256 of the id), never one of the
    generator's own report streams."""
    digest = hashlib.sha256(str(study_id).encode("utf-8")).digest()
    words = [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]
    return np.random.default_rng(np.random.SeedSequence([REWRITE_STREAM, int(seed) & 0xFFFFFFFF, *words]))


def rewrite_reports(
    findings_file: str | os.PathLike,
    study_ids: Sequence[str],
    seed: int,
    section: str = "findings",
) -> list[str]:
    """Re-write the reports of some phantom studies with other paraphrases (same findings, sides and severities).

    Args:
        findings_file: the generator's ``findings.json``.
        study_ids: the studies, in the order wanted.
        seed: paraphrase seed; study ``i`` uses :func:`rewrite_stream` ``(seed, study_ids[i])``.
        section: ``"findings"`` (the FINDINGS text, annotation.json's ``report``), ``"impression"``, or ``"full"``
            (``"FINDINGS: ...\\n\\nIMPRESSION: ..."``, annotation.json's ``report_full``).

    Returns:
        one re-written report per study id.

    Raises:
        ValueError: unknown ``section``.
        InputFileError: unreadable or malformed file, or a study id it does not hold.
    """
    if section not in SECTIONS:
        raise ValueError(f"section must be one of {SECTIONS}, got {section!r}")
    if isinstance(study_ids, str):
        raise ValueError("study_ids must be a sequence of study ids, not one string")
    records = read_study_records(findings_file)
    missing = [str(s) for s in study_ids if str(s) not in records]
    if missing:
        shown = ", ".join(repr(s) for s in missing[:5]) + (f", ... ({len(missing)} in all)" if len(missing) > 5 else "")
        raise InputFileError(findings_file, f"no record for {len(missing)} study id(s): {shown}")
    out = []
    for study_id in map(str, study_ids):
        report = study_report(records[study_id], rewrite_stream(seed, study_id), findings_file, study_id)
        out.append(report.findings if section == "findings" else report.impression if section == "impression"
                   else report.full)  # fmt: skip
    return out
