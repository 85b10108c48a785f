"""File-level evaluation: generated reports (JSONL) against a reference manifest, every score and its settings.

Used by ``monai-r2gen evaluate`` (which prints ``format_score_table(result)``)::

    result = evaluate_files("preds.jsonl", "annotation.json", split="test", output="scores.json")
    table = format_score_table(result)

What is computed, and on which text:

* NLG (BLEU-1..4, METEOR, ROUGE-L, CIDEr, :func:`monai_r2gen.metrics.nlg_scores`): on the *cleaned* texts, both
  sides cleaned the same way with :func:`monai_r2gen.data.clean_report` (``clean_style``; the R2Gen convention),
  then tokenized (``tokenize``). References are used whole, never truncated.
* CE (:func:`monai_r2gen.metrics.ce_scores`): the CheXpert labeler reads the *raw* texts (it does its own
  normalisation and needs the punctuation that cleaning removes).
* Finding attributes (``findings=``, :func:`monai_r2gen.metrics.attributes.attribute_scores`): mention recall, side
  and severity accuracy beside their majority priors, read from the *raw* generated texts and scored against the
  findings file (a phantom ``findings.json`` or ``{study_id: [{"kind", "side", "severity"}, ...]}``).
* Paraphrase ceiling (``ceiling=True``, :func:`paraphrase_ceiling`): the NLG scores of the references' own findings
  re-written by the phantom report writer with other paraphrase seeds, on the same NLG path; with it
  ``"BLEU-4/ceiling"``, the share of the reachable BLEU-4 a model attains.

The returned dict (also written as JSON to ``output``) is ``{"scores": {...}, "per_label": {...},
"settings": {...}}`` (plus ``"attributes"`` and ``"ceiling"`` when asked for); ``settings`` records the files, split,
number of reports, tokenization, cleaning style, uncertain-label mapping and the other CE conventions, so that a
number can always be traced to how it was made.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai_r2gen.data.datasets import read_manifest
from monai_r2gen.data.synthetic.ceiling import rewrite_reports
from monai_r2gen.errors import InputFileError, MetricError
from monai_r2gen.files import atomic_write_text
from monai_r2gen.metrics.attributes import format_attribute_table, load_findings
from monai_r2gen.metrics.cleaning import clean_report
from monai_r2gen.metrics.clinical import UNCERTAIN_POLICIES, ce_score_keys
from monai_r2gen.metrics.external import RADGRAPH_KEYS, chexbert_scores, radgraph_scores
from monai_r2gen.metrics.nlg import NLG_KEYS, TOKENIZERS
from monai_r2gen.metrics.report_scores import DEFAULT_CLEAN_STYLE, cleaned_nlg_scores, compare_reports, score_reports

__all__ = [
    "PREDICTION_FIELDS",
    "DEFAULT_CEILING_SEEDS",
    "read_predictions",
    "cleaned_nlg_scores",
    "paraphrase_ceiling",
    "evaluate_files",
    "format_score_table",
]

logger = logging.getLogger(__name__)

#: Fields of a prediction line that may hold the generated report, in order of preference.
PREDICTION_FIELDS: tuple[str, ...] = ("report", "prediction", "pred_report", "generated")
#: paraphrase seeds of the ceiling
DEFAULT_CEILING_SEEDS: tuple[int, ...] = (1, 2, 3)
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


def paraphrase_ceiling(
    findings_file: str | os.PathLike,
    study_ids: Sequence[str],
    references: Sequence[str],
    seeds: Sequence[int] = DEFAULT_CEILING_SEEDS,
    section: str = "findings",
    tokenize: str = "simple",
    clean_style: str = DEFAULT_CLEAN_STYLE,
    nlg_metrics: Sequence[str] | None = None,
) -> dict[str, Any]:
    """NLG scores of the studies' own findings re-written with other paraphrases: what a perfect model can reach.

    For each seed, every study's report is re-written from ``findings.json``
    (:func:`~monai_r2gen.data.synthetic.ceiling.rewrite_reports`) and scored against ``references`` on the same path
    as :func:`evaluate_files` (:func:`cleaned_nlg_scores`).

    Args:
        findings_file: the phantom generator's ``findings.json``.
        study_ids: the scored studies.
        references: their reference reports, same order.
        seeds: paraphrase seeds (one re-write of every study per seed).
        section: what the references hold: ``"findings"`` (annotation.json's ``report``), ``"impression"`` or
            ``"full"`` (``report_full``).
        tokenize: NLG tokenization (as :func:`evaluate_files`).
        clean_style: cleaning of both sides (as :func:`evaluate_files`).
        nlg_metrics: subset of ``("BLEU", "METEOR", "ROUGE-L", "CIDEr")``; default all.

    Returns:
        ``{"mean": {name: float}, "per_seed": {seed: {name: float}}, "seeds": [...], "section": ...,
        "num_reports": n}``; ``mean`` is the mean over seeds of each NLG score.

    Raises:
        MetricError: no seed, different numbers of study ids and references, or NLG input errors.
        InputFileError: unreadable or malformed findings file, or a study it does not hold.
        ValueError: unknown ``section``.
    """
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise MetricError("paraphrase_ceiling needs at least one seed")
    if len(study_ids) != len(references):
        raise MetricError(f"{len(study_ids)} study ids but {len(references)} references; they must pair up")
    per_seed: dict[int, dict[str, float]] = {}
    for seed in seeds:
        rewrites = rewrite_reports(findings_file, study_ids, seed, section=section)
        per_seed[seed] = cleaned_nlg_scores(references, rewrites, clean_style, tokenize, nlg_metrics)
    keys = list(per_seed[seeds[0]])
    mean = {k: float(sum(per_seed[s][k] for s in seeds) / len(seeds)) for k in keys}
    logger.info("paraphrase ceiling over %d seeds: BLEU-4 %s", len(seeds), mean.get("BLEU-4"))
    return {"mean": mean, "per_seed": per_seed, "seeds": seeds, "section": section, "num_reports": len(references)}


def _reference_section(references: Sequence[str]) -> str:
    """``"full"`` when every reference carries the FINDINGS header (annotation.json's ``report_full``), else
    ``"findings"`` (its ``report``)."""
    return "full" if all(r.lstrip().upper().startswith("FINDINGS:") for r in references) else "findings"


def evaluate_files(
    predictions: str | os.PathLike,
    references: str | os.PathLike,
    split: str | None = "test",
    output: str | os.PathLike | None = None,
    uncertain: str = "negative",
    tokenize: str = "simple",
    clean_style: str = DEFAULT_CLEAN_STYLE,
    nlg_metrics: Sequence[str] | None = None,
    chexbert_checkpoint: str | os.PathLike | None = None,
    chexbert_tokenizer: str | os.PathLike | None = None,
    radgraph_dir: str | os.PathLike | None = None,
    findings: str | os.PathLike | None = None,
    ceiling: bool = False,
    ceiling_seeds: Sequence[int] = DEFAULT_CEILING_SEEDS,
    bootstrap: int = 1000,
    seed: int = 0,
    compare: str | os.PathLike | None = None,
    timeout: float | None = None,
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
        findings: ground-truth findings with sides and severities, read with
            :func:`~monai_r2gen.metrics.attributes.load_findings` (a phantom ``findings.json`` or
            ``{study_id: [{"kind", "side", "severity"}]}``); adds the ``"attr/..."`` scores (raw texts) and
            ``"attributes"`` (``per_kind`` table and ``overall`` counts). Every scored study must be in it.
        ceiling: also compute :func:`paraphrase_ceiling` (needs a phantom ``findings.json``); adds ``"ceiling/<NLG
            score>"`` (mean over seeds), ``"BLEU-4/ceiling"`` and ``"ceiling"`` (per seed). The re-written section
            follows the references: ``"full"`` when they carry the FINDINGS header, else ``"findings"``.
        ceiling_seeds: paraphrase seeds of the ceiling.
        bootstrap: bootstrap draws of the 95% intervals of every score (``"intervals"``; 0: none).
        seed: seed of the draws.
        compare: a second predictions file on the same references: adds ``"comparison"``, the paired bootstrap
            interval of the difference (this file minus ``compare``) and the approximate-randomisation p-value of
            every score (:func:`monai_r2gen.metrics.report_scores.compare_reports`; ``bootstrap`` draws, at least
            1,000).
        timeout: time limit in seconds of each Java scorer run (None: scaled with the size of the texts).

    Returns:
        ``{"scores": {name: float}, "per_label": {...}, "settings": {...}}`` (and ``"intervals"``, ``"attributes"``,
        ``"ceiling"``, ``"comparison"``).

    Raises:
        MetricError: a reference id has no prediction (the message lists a few), no reference has a report, an
            unknown ``uncertain`` / ``tokenize`` value, or ``ceiling`` without ``findings``.
        ReportError: unknown ``clean_style``.
        ManifestError / InputFileError: unreadable or malformed files, or a scored study missing from ``findings``.
    """
    # option errors first, before any file is read or Java is started
    if ceiling and findings is None:
        raise MetricError("the paraphrase ceiling needs a findings file (findings=... / --findings)")
    if ceiling and not list(ceiling_seeds):
        raise MetricError("the paraphrase ceiling needs at least one seed")
    if uncertain not in UNCERTAIN_POLICIES:
        raise MetricError(f"uncertain must be one of {UNCERTAIN_POLICIES}, got {uncertain!r}")
    if tokenize not in TOKENIZERS:
        raise MetricError(f"tokenize must be one of {TOKENIZERS}, got {tokenize!r}")
    clean_report("", clean_style)  # raises ReportError for an unknown style
    preds = read_predictions(predictions)
    other = read_predictions(compare) if compare is not None else None
    truth = load_findings(findings) if findings is not None else None
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
    if other is not None:
        missing = [it["id"] for it in items if it["id"] not in other]
        if missing:
            raise MetricError(f"{len(missing)} of {len(items)} reference id(s) of split {split!r} have no prediction "
                              f"in {os.fspath(compare)!r}: {_few(missing)}")  # fmt: skip
    ref_ids = {it["id"] for it in items}
    extra = [p for p in preds if p not in ref_ids]
    if extra:
        logger.warning("%d prediction id(s) are not in split %r of the references and are ignored: %s",
                       len(extra), split, _few(extra))  # fmt: skip

    if truth is not None:
        no_truth = [it["id"] for it in items if it["id"] not in truth]
        if no_truth:
            raise InputFileError(findings, f"no findings for {len(no_truth)} of {len(items)} scored study id(s) of "
                                           f"split {split!r}: {_few(no_truth)}")  # fmt: skip

    raw_refs = [it["report"] for it in items]
    raw_hyps = [preds[it["id"]] for it in items]

    options = {
        "clean_style": clean_style,
        "tokenize": tokenize,
        "uncertain": uncertain,
        "nlg_metrics": nlg_metrics,
        "findings": [truth[it["id"]] for it in items] if truth is not None else None,
        "timeout": timeout,
    }
    scored = score_reports(raw_refs, raw_hyps, bootstrap=bootstrap, seed=seed, keep_statistics=other is not None,
                           **options)  # fmt: skip
    comparison = None
    if other is not None:
        scored_other = score_reports(raw_refs, [other[it["id"]] for it in items], keep_statistics=True, **options)
        comparison = compare_reports(scored, scored_other, draws=max(int(bootstrap), 1000), seed=seed)
    ceiling_result = None
    if ceiling:
        ceiling_result = paraphrase_ceiling(
            findings, [it["id"] for it in items], raw_refs, seeds=ceiling_seeds, section=_reference_section(raw_refs),
            tokenize=tokenize, clean_style=clean_style, nlg_metrics=nlg_metrics,
        )  # fmt: skip

    chexbert = chexbert_scores(raw_refs, raw_hyps, chexbert_checkpoint, chexbert_tokenizer, uncertain=uncertain)
    radgraph = radgraph_scores(raw_refs, raw_hyps, radgraph_dir)

    scores = dict(scored["scores"])
    if chexbert is not None:
        scores.update({f"CheXbert {k}": chexbert[f"CheXbert {k}"] for k in ce_score_keys()})
    if radgraph is not None:
        scores.update({k: radgraph[k] for k in RADGRAPH_KEYS})
    if ceiling_result is not None:
        scores.update({f"ceiling/{k}": v for k, v in ceiling_result["mean"].items()})
        if "BLEU-4" in scores and ceiling_result["mean"].get("BLEU-4"):
            scores["BLEU-4/ceiling"] = scores["BLEU-4"] / ceiling_result["mean"]["BLEU-4"]
    result: dict[str, Any] = {
        "scores": scores,
        "per_label": scored["per_label"],
        "settings": {
            "predictions": os.path.abspath(predictions),
            "references": os.path.abspath(references),
            "split": split,
            "num_reports": len(items),
            "num_references_without_report": len(without_report),
            "num_ignored_predictions": len(extra),
            **{k: v for k, v in scored["settings"].items() if k != "num_reports"},
            "compare": None if compare is None else os.path.abspath(compare),
            "chexbert": None if chexbert is None else os.path.abspath(chexbert_checkpoint),
            "radgraph": None if radgraph is None else os.path.abspath(radgraph_dir),
            "findings": None if findings is None else os.path.abspath(findings),
            "ceiling": None
            if ceiling_result is None
            else {
                "seeds": ceiling_result["seeds"],
                "section": ceiling_result["section"],
                "writer": "monai_r2gen.data.synthetic.reports.write_report, other paraphrase streams",
                "nlg": "same cleaning and tokenization as the scores",
            },
        },
    }
    if chexbert is not None:
        result["per_label_chexbert"] = chexbert["CheXbert per_label"]
    for key in ("intervals", "attributes"):
        if key in scored:
            result[key] = scored[key]
    if comparison is not None:
        result["comparison"] = comparison
    if ceiling_result is not None:
        result["ceiling"] = {
            "mean": ceiling_result["mean"],
            "per_seed": {str(k): v for k, v in ceiling_result["per_seed"].items()},
            "seeds": ceiling_result["seeds"],
            "section": ceiling_result["section"],
        }
    if output is not None:
        atomic_write_text(output, json.dumps(result, indent=2) + "\n")
        logger.info("scores written to %s", output)
    return result


#: scores whose interval and comparison the table prints (every score's are in the result)
HEADLINE_SCORES: tuple[str, ...] = ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "CE-14 micro-F1", "CE-14 macro-F1",
                                    "CE-5 micro-F1", "CE-5 macro-F1", "attr/mention_recall", "attr/side_accuracy",
                                    "attr/severity_accuracy")  # fmt: skip


def _interval_lines(intervals: Any, comparison: Any, bootstrap: Any) -> list[str]:
    lines: list[str] = []
    if isinstance(intervals, Mapping) and intervals:
        draws = bootstrap.get("draws") if isinstance(bootstrap, Mapping) else "?"
        lines += ["", f"95% bootstrap intervals ({draws} draws, studies resampled):"]
        lines += [f"  {k.replace('attr/', 'finding '):<24}{v['score']:8.4f}  [{v['low']:.4f}, {v['high']:.4f}]"
                  for k in HEADLINE_SCORES if (v := intervals.get(k))]  # fmt: skip
    if isinstance(comparison, Mapping) and comparison:
        lines += ["", f"paired comparison (this - other): {'score':<24}{'this':>8}{'other':>8}{'diff':>9}  95% CI"
                      f"{'p':>16}"]  # fmt: skip
        for k in HEADLINE_SCORES:
            if v := comparison.get(k):
                name = k.replace("attr/", "finding ")
                lines.append(f"  {name:<56}{v['a']:8.4f}{v['b']:8.4f}{v['difference']:+9.4f}  "
                             f"[{v['low']:+.4f}, {v['high']:+.4f}]  p={v['p_value']:.4f}")  # fmt: skip
    return lines


def format_score_table(scores: Mapping[str, Any]) -> str:
    """Human-readable table of a result of :func:`evaluate_files` (or of a flat ``{name: float}`` dict).

    NLG scores come first, then one row per CE label set with micro / macro / example P, R, F1, then the finding
    attribute table (per kind: n, mention recall, side and severity accuracy beside their priors) and the paraphrase
    ceiling when present, then the settings that change the numbers (cleaning, tokenization, uncertain mapping).

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
    attributes = scores.get("attributes")
    if isinstance(attributes, Mapping) and attributes.get("per_kind"):
        lines.append("")
        lines.append("finding attributes (accuracy among mentioned findings; prior = always the most frequent value):")
        lines.append(format_attribute_table(attributes))
        known |= {k for k in flat if k.startswith("attr/")}
    ceiling = scores.get("ceiling")
    if isinstance(ceiling, Mapping) and ceiling.get("mean"):
        lines.append("")
        mean = ceiling["mean"]
        per_seed = ceiling.get("per_seed", {})
        seeds = ", ".join(f"{s}: {v.get('BLEU-4', float('nan')):.4f}" for s, v in per_seed.items())
        lines.append(f"paraphrase ceiling ({ceiling.get('section')} re-written, seeds {seeds})")
        cols = [k for k in NLG_KEYS if k in mean]
        lines.append("  ".join(f"{k:>8}" for k in cols))
        lines.append("  ".join(f"{mean[k]:8.4f}" for k in cols))
        if "BLEU-4/ceiling" in flat:
            lines.append(f"BLEU-4 / ceiling: {flat['BLEU-4/ceiling']:.4f}")
        known |= {k for k in flat if k.startswith("ceiling/")} | {"BLEU-4/ceiling"}
    others = [(k, v) for k, v in flat.items() if k not in known and isinstance(v, (int, float))]
    if others:
        lines.append("")
        lines.extend(f"{k}: {v:.4f}" for k, v in others)
    lines.extend(_interval_lines(scores.get("intervals"), scores.get("comparison"), settings.get("bootstrap")))
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
