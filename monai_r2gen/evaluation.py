"""File-level evaluation: generated reports (JSONL) against a reference manifest, every score and its settings.

Used by ``monai-r2gen evaluate`` and by the bundle's evaluation step::

    result = evaluate_files("preds.jsonl", "annotation.json", split="test", output="scores.json")
    print(format_score_table(result))

What is computed, and on which text:

* NLG (BLEU-1..4, METEOR, ROUGE-L, CIDEr, :func:`monai_r2gen.metrics.nlg_scores`): on the *cleaned* texts, both
  sides cleaned the same way with :func:`monai_r2gen.data.clean_report` (``clean_style``; the R2Gen convention),
  then tokenized (``tokenize``). References are used whole, never truncated.
* CE (:func:`monai_r2gen.metrics.ce_scores`): the CheXpert labeler reads the *raw* texts (it does its own
  normalisation and needs the punctuation that cleaning removes).

The returned dict (also written as JSON to ``output``) is ``{"scores": {...}, "per_label": {...},
"settings": {...}}``; ``settings`` records the files, split, number of reports, tokenization, cleaning style,
uncertain-label mapping and the other CE conventions, so that a number can always be traced to how it was made.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai_r2gen.data.datasets import read_manifest
from monai_r2gen.data.reports import clean_report
from monai_r2gen.errors import InputFileError, MetricError
from monai_r2gen.metrics.clinical import UNCERTAIN_POLICIES, ce_score_keys, ce_scores
from monai_r2gen.metrics.external import RADGRAPH_KEYS, chexbert_scores, radgraph_scores
from monai_r2gen.metrics.nlg import NLG_KEYS, TOKENIZERS, nlg_scores

__all__ = ["PREDICTION_FIELDS", "read_predictions", "evaluate_files", "format_score_table"]

logger = logging.getLogger(__name__)

#: Fields of a prediction line that may hold the generated report, in order of preference.
PREDICTION_FIELDS: tuple[str, ...] = ("report", "prediction", "pred_report", "generated")
_SHOWN_IDS = 5


def _few(ids: Sequence[str]) -> str:
    shown = ", ".join(repr(i) for i in ids[:_SHOWN_IDS])
    return shown + (f", ... ({len(ids)} in all)" if len(ids) > _SHOWN_IDS else "")


def read_predictions(path: str | os.PathLike) -> dict[str, str]:
    """Read generated reports from a JSONL file: one object per line with ``"id"`` and a report field.

    The report field is the first present of :data:`PREDICTION_FIELDS`. Blank lines are skipped.

    Args:
        path: the JSONL file.

    Returns:
        ``{id: report}`` in file order.

    Raises:
        InputFileError: missing / unreadable file, invalid JSON, a line without id or report, a repeated id.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputFileError(path, "predictions file not found") from None
    except IsADirectoryError:
        raise InputFileError(path, "is a directory, expected a JSONL predictions file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputFileError(path, f"cannot be read ({exc})") from None
    predictions: dict[str, str] = {}
    repeated: list[str] = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputFileError(path, f"line {number}: invalid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(obj, Mapping):
            raise InputFileError(path, f"line {number}: expected a JSON object")
        if "id" not in obj or obj["id"] is None or str(obj["id"]).strip() == "":
            raise InputFileError(path, f"line {number}: no 'id'")
        field = next((f for f in PREDICTION_FIELDS if f in obj), None)
        if field is None:
            raise InputFileError(path, f"line {number}: no report field (one of {', '.join(PREDICTION_FIELDS)})")
        report = obj[field]
        if report is None:
            report = ""
        if not isinstance(report, str):
            raise InputFileError(path, f"line {number}: {field!r} must be a string")
        key = str(obj["id"]).strip()
        if key in predictions:
            repeated.append(key)
        predictions[key] = report
    if repeated:
        raise InputFileError(path, f"repeated prediction id(s): {_few(repeated)}")
    if not predictions:
        raise InputFileError(path, "no predictions")
    return predictions


def evaluate_files(
    predictions: str | os.PathLike,
    references: str | os.PathLike,
    split: str | None = "test",
    output: str | os.PathLike | None = None,
    uncertain: str = "negative",
    tokenize: str = "simple",
    clean_style: str = "mimic_cxr",
    nlg_metrics: Sequence[str] | None = None,
    chexbert_checkpoint: str | os.PathLike | None = None,
    chexbert_tokenizer: str | os.PathLike | None = None,
    radgraph_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Score a predictions file against the reports of a manifest split.

    Args:
        predictions: JSONL with ``"id"`` and ``"report"`` (or ``"prediction"``) per line.
        references: ``annotation.json`` / JSONL / CSV manifest read with :func:`monai_r2gen.data.read_manifest`.
        split: split of the manifest to score (``None``: every entry).
        output: when given, the result is written there as JSON (folders created).
        uncertain: CE mapping of uncertain labels: ``"negative"`` (default), ``"positive"`` or ``"ignore"``.
        tokenize: NLG tokenization: ``"simple"`` (default), ``"ptb"`` or ``"none"``.
        clean_style: cleaning applied to both sides before NLG scoring: ``"mimic_cxr"`` (default), ``"iu_xray"`` or
            ``"none"``.
        nlg_metrics: subset of ``("BLEU", "METEOR", "ROUGE-L", "CIDEr")``; default all (METEOR needs Java).
        chexbert_checkpoint: local CheXbert ``chexbert.pth``; adds ``"CheXbert CE-..."`` scores (raw texts) and
            ``"per_label_chexbert"``. Needs ``chexbert_tokenizer``. Skipped when ``None``.
        chexbert_tokenizer: local ``bert-base-uncased`` tokenizer folder or ``vocab.txt``.
        radgraph_dir: local RadGraph model folder (see :func:`monai_r2gen.metrics.external.radgraph_scores`); adds
            ``"RadGraph-simple/partial/complete"`` (raw texts). Skipped when ``None``.

    Returns:
        ``{"scores": {name: float}, "per_label": {...}, "settings": {...}}``.

    Raises:
        MetricError: a reference id has no prediction (the message lists a few), no reference has a report, or an
            unknown ``uncertain`` / ``tokenize`` value.
        ReportError: unknown ``clean_style``.
        ManifestError / InputFileError: unreadable or malformed files.
    """
    # option errors first, before any file is read or Java is started
    if uncertain not in UNCERTAIN_POLICIES:
        raise MetricError(f"uncertain must be one of {UNCERTAIN_POLICIES}, got {uncertain!r}")
    if tokenize not in TOKENIZERS:
        raise MetricError(f"tokenize must be one of {TOKENIZERS}, got {tokenize!r}")
    clean_report("", clean_style)  # raises ReportError for an unknown style
    preds = read_predictions(predictions)
    items = read_manifest(references, split=split)
    without_report = [it["id"] for it in items if not it.get("report", "").strip()]
    if without_report:
        logger.warning("%d reference(s) of split %r have no report text and are not scored: %s",
                       len(without_report), split, _few(without_report))  # fmt: skip
    items = [it for it in items if it.get("report", "").strip()]
    if not items:
        raise MetricError(f"no reference of split {split!r} in {os.fspath(references)!r} has a report to score")

    missing = [it["id"] for it in items if it["id"] not in preds]
    if missing:
        hint = ""
        source_ids = {s for it in items for s in it.get("source_ids", ())}
        if source_ids and any(p in source_ids for p in preds):
            hint = " (the predictions look keyed by image entry id; references are grouped per study_id)"
        raise MetricError(
            f"{len(missing)} of {len(items)} reference id(s) of split {split!r} have no prediction in "
            f"{os.fspath(predictions)!r}: {_few(missing)}{hint}"
        )
    ref_ids = {it["id"] for it in items}
    extra = [p for p in preds if p not in ref_ids]
    if extra:
        logger.warning("%d prediction id(s) are not in split %r of the references and are ignored: %s",
                       len(extra), split, _few(extra))  # fmt: skip

    raw_refs = [it["report"] for it in items]
    raw_hyps = [preds[it["id"]] for it in items]
    clean_refs = [clean_report(t, clean_style) for t in raw_refs]
    clean_hyps = [clean_report(t, clean_style) for t in raw_hyps]

    nlg = nlg_scores(clean_refs, clean_hyps, tokenize=tokenize, metrics=nlg_metrics)
    ce = ce_scores(raw_refs, raw_hyps, uncertain=uncertain)

    chexbert = chexbert_scores(raw_refs, raw_hyps, chexbert_checkpoint, chexbert_tokenizer, uncertain=uncertain)
    radgraph = radgraph_scores(raw_refs, raw_hyps, radgraph_dir)

    scores = {**nlg, **{k: ce[k] for k in ce_score_keys()}}
    if chexbert is not None:
        scores.update({f"CheXbert {k}": chexbert[f"CheXbert {k}"] for k in ce_score_keys()})
    if radgraph is not None:
        scores.update({k: radgraph[k] for k in RADGRAPH_KEYS})
    result: dict[str, Any] = {
        "scores": scores,
        "per_label": ce["per_label"],
        "settings": {
            "predictions": os.path.abspath(predictions),
            "references": os.path.abspath(references),
            "split": split,
            "num_reports": len(items),
            "num_references_without_report": len(without_report),
            "num_ignored_predictions": len(extra),
            "nlg": {
                "scorer": "pycocoevalcap",
                "clean_style": clean_style,
                "tokenize": tokenize,
                "references_truncated": False,
            },
            "ce": {**ce["settings"], "text": "raw (uncleaned) reports"},
            "chexbert": None if chexbert is None else os.path.abspath(chexbert_checkpoint),
            "radgraph": None if radgraph is None else os.path.abspath(radgraph_dir),
        },
    }
    if chexbert is not None:
        result["per_label_chexbert"] = chexbert["CheXbert per_label"]
    if output is not None:
        out = Path(output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        logger.info("scores written to %s", out)
    return result


def format_score_table(scores: Mapping[str, Any]) -> str:
    """Human-readable table of a result of :func:`evaluate_files` (or of a flat ``{name: float}`` dict).

    NLG scores come first, then one row per CE label set with micro / macro / example P, R, F1, then the settings that
    change the numbers (cleaning, tokenization, uncertain mapping).

    Args:
        scores: the result dict, or a flat mapping of score names to floats.

    Returns:
        the table as text (no trailing newline).
    """
    flat = scores.get("scores", scores)
    settings = scores.get("settings", {})
    lines: list[str] = []
    nlg = [(k, flat[k]) for k in NLG_KEYS if k in flat]
    if nlg:
        lines.append("  ".join(f"{k:>8}" for k, _ in nlg))
        lines.append("  ".join(f"{v:8.4f}" for _, v in nlg))
    ce_rows = [p + s for p in ("", "CheXbert ") for s in ("CE-14", "CE-5") if f"{p}{s} micro-F1" in flat]
    if ce_rows:
        if lines:
            lines.append("")
        width = max(len(r) for r in ce_rows) + 1
        cols = [f"{a}-{m}" for a in ("micro", "macro", "example") for m in ("P", "R", "F1")]
        lines.append(" " * width + "".join(f"{c:>11}" for c in cols))
        for row in ce_rows:
            lines.append(f"{row:{width}}" + "".join(f"{flat[f'{row} {c}']:11.4f}" for c in cols))
    known = set(NLG_KEYS) | {p + k for p in ("", "CheXbert ") for k in ce_score_keys()}
    others = [(k, v) for k, v in flat.items() if k not in known and isinstance(v, (int, float))]
    if others:
        lines.append("")
        lines.extend(f"{k}: {v:.4f}" for k, v in others)
    if settings:
        nlg_set = settings.get("nlg", {})
        ce_set = settings.get("ce", {})
        lines.append("")
        lines.append(
            f"reports: {settings.get('num_reports')}  split: {settings.get('split')}  "
            f"cleaning: {nlg_set.get('clean_style')}  tokenize: {nlg_set.get('tokenize')}  "
            f"references truncated: {'yes' if nlg_set.get('references_truncated') else 'no'}"
        )
        lines.append(
            f"CE: uncertain -> {ce_set.get('uncertain')}, not mentioned -> {ce_set.get('not_mentioned')}, "
            f"zero_division = {ce_set.get('zero_division')}, labeler: {ce_set.get('labeler')}"
        )
    return "\n".join(lines)
