"""The one scoring function of generated reports: every path (validation during training, the bundle's
``evaluating``, ``monai-r2gen evaluate`` and the ablation) calls :func:`score_reports`.

What it does, in this order, whatever the caller:

1. both sides are cut to :data:`~monai_r2gen.metrics.nlg.MAX_REPORT_CHARS` (counted, recorded in the settings);
2. NLG scores (BLEU-1..4, METEOR, ROUGE-L, CIDEr) on both sides cleaned with ``clean_report(text, clean_style)``;
3. clinical efficacy (CheXpert-14 labeler, CE-14 / CE-5 micro, macro and example-based P / R / F1) on the raw texts
   (the labeler needs the punctuation that cleaning removes), uncertain mentions mapped by ``uncertain``, and the
   same scores with uncertain mentions counted as positive under ``CE-14+`` / ``CE-5+`` (LLaVA-Rad's "+" variants);
4. finding side / size scores when the truth is given (a findings list per study, or ``"references"``: what the
   reference reports state);
5. with ``bootstrap`` draws: 95% percentile intervals of every score (studies resampled, seeded).

The settings that change the numbers are returned beside them, so two results can be compared knowing how they were
computed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from monai_r2gen.errors import MetricError
from monai_r2gen.metrics.cleaning import clean_report

__all__ = [
    "DEFAULT_CLEAN_STYLE",
    "PLUS_SUFFIX",
    "score_reports",
    "cleaned_nlg_scores",
    "cleaned_nlg_study_scores",
    "study_statistics_of",
    "compare_reports",
]

DEFAULT_CLEAN_STYLE = "mimic_cxr"
"""Cleaning of both sides before the NLG scores on every path (the R2Gen family's convention)."""

_ATTRIBUTE_RATIOS = {
    "mention_recall": ("mentioned", "n"),
    "side_accuracy": ("side_correct", "side_n"),
    "severity_accuracy": ("severity_correct", "severity_n"),
}


def _attribute_truth(references: Sequence[str], findings: Any) -> list[list[dict[str, Any]]] | None:
    if findings is None:
        return None
    if isinstance(findings, str):
        if findings != "references":
            raise MetricError(f"findings must be None, 'references' or one findings list per study, got {findings!r}")
        from monai_r2gen.metrics.attributes import read_finding_attributes

        return [[{"kind": k, **v} for k, v in read_finding_attributes(r).items()] for r in references]
    findings = list(findings)
    if len(findings) != len(references):
        raise MetricError(f"{len(references)} references but {len(findings)} findings lists; they must pair up")
    return findings


def _attribute_ratios(hypotheses: Sequence[str], truth: Sequence[Any]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-study numerators and denominators of the attribute accuracies (overall and per kind)."""
    from monai_r2gen.metrics.attributes import attribute_scores

    rows = [attribute_scores([h], [t]) for h, t in zip(hypotheses, truth)]
    kinds = sorted({k for r in rows for k in r["per_kind"]})
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for prefix, pick in [("", lambda r: r["overall"])] + [
        (f"{k}/", lambda r, k=k: r["per_kind"].get(k)) for k in kinds
    ]:
        for name, (num, den) in _ATTRIBUTE_RATIOS.items():
            nums = np.array([(pick(r) or {}).get(num, 0) for r in rows], dtype=float)
            dens = np.array([(pick(r) or {}).get(den, 0) for r in rows], dtype=float)
            if dens.sum() > 0:
                out[f"attr/{prefix}{name}"] = (nums, dens)
    return out


PLUS_SUFFIX = "+"
"""Suffix of the CE label-set names scored with uncertain mentions counted as positive ("CE-14+ micro-F1"; LLaVA-Rad's
"Micro-F1-14+"), reported beside the main mapping whatever ``uncertain`` is."""


def _plus_name(key: str) -> str:
    """``"CE-14 micro-F1"`` -> ``"CE-14+ micro-F1"``."""
    label_set, _, measure = key.partition(" ")
    return f"{label_set}{PLUS_SUFFIX} {measure}"


def _ce_arrays(ref_labels: Sequence[Mapping], hyp_labels: Sequence[Mapping], uncertain: str):
    """Binarised labels of the main mapping and of uncertain-as-positive side by side (n, 28), the validity mask and
    the label sets ("CE-14", "CE-5", "CE-14+", "CE-5+") over those columns."""
    from monai_r2gen.metrics.chexpert import CHEXPERT_LABELS
    from monai_r2gen.metrics.clinical import CE5_LABELS, binarize_labels

    ref_pos, ref_unc = binarize_labels(ref_labels, CHEXPERT_LABELS, uncertain)
    hyp_pos, hyp_unc = binarize_labels(hyp_labels, CHEXPERT_LABELS, uncertain)
    ref_plus, _ = binarize_labels(ref_labels, CHEXPERT_LABELS, "positive")
    hyp_plus, _ = binarize_labels(hyp_labels, CHEXPERT_LABELS, "positive")
    valid = ~(ref_unc | hyp_unc) if uncertain == "ignore" else np.ones_like(ref_pos, dtype=bool)
    n = len(CHEXPERT_LABELS)
    ce5 = [CHEXPERT_LABELS.index(k) for k in CE5_LABELS]
    sets = {"CE-14": range(n), "CE-5": ce5, f"CE-14{PLUS_SUFFIX}": range(n, 2 * n),
            f"CE-5{PLUS_SUFFIX}": [n + c for c in ce5]}  # fmt: skip
    both = np.concatenate
    return (both([ref_pos, ref_plus], axis=1), both([hyp_pos, hyp_plus], axis=1),
            both([valid, np.ones_like(valid)], axis=1), sets)  # fmt: skip


def cleaned_nlg_study_scores(
    references: Sequence[str],
    hypotheses: Sequence[str],
    clean_style: str = DEFAULT_CLEAN_STYLE,
    tokenize: str = "simple",
    metrics: Sequence[str] | None = None,
    timeout: float | None = None,
) -> dict[str, Any]:
    """The NLG step of :func:`score_reports`: both sides cleaned with ``clean_report(text, clean_style)``, then
    :func:`~monai_r2gen.metrics.nlg.nlg_study_scores` (``{"scores": {}, ...}`` when ``metrics`` is empty)."""
    from monai_r2gen.metrics.nlg import nlg_study_scores

    if metrics is not None and not list(metrics):
        return {"scores": {}, "per_study": {}, "references": None, "hypotheses": None}
    return nlg_study_scores([clean_report(t, clean_style) for t in references],
                            [clean_report(t, clean_style) for t in hypotheses],
                            tokenize=tokenize, metrics=metrics, timeout=timeout)  # fmt: skip


def cleaned_nlg_scores(
    references: Sequence[str],
    hypotheses: Sequence[str],
    clean_style: str = DEFAULT_CLEAN_STYLE,
    tokenize: str = "simple",
    metrics: Sequence[str] | None = None,
) -> dict[str, float]:
    """The NLG scores of :func:`score_reports` alone (the paraphrase ceiling scores its re-writes with it)."""
    return cleaned_nlg_study_scores(references, hypotheses, clean_style, tokenize, metrics)["scores"]


def study_statistics_of(result: Mapping[str, Any]) -> Any:
    """The per-study statistics (:class:`~monai_r2gen.metrics.bootstrap.StudyStatistics`) kept by
    :func:`score_reports` (``keep_statistics=True``)."""
    stats = result.get("_statistics")
    if stats is None:
        raise MetricError("this result was computed without keep_statistics=True")
    return stats


def score_reports(
    references: Sequence[str],
    hypotheses: Sequence[str],
    clean_style: str = DEFAULT_CLEAN_STYLE,
    tokenize: str = "simple",
    uncertain: str = "negative",
    nlg_metrics: Sequence[str] | None = None,
    clinical: bool = True,
    findings: Sequence[Sequence[Mapping[str, Any]]] | str | None = None,
    bootstrap: int = 0,
    seed: int = 0,
    timeout: float | None = None,
    keep_statistics: bool = False,
) -> dict[str, Any]:
    """Every score of ``hypotheses`` against ``references`` with the settings that produced them.

    Args:
        references: reference reports, raw (the cleaning is done here).
        hypotheses: generated reports, same order, raw.
        clean_style: cleaning of both sides for the NLG scores (``"mimic_cxr"``, ``"iu_xray"`` or ``"none"``).
        tokenize: NLG tokenization (``"simple"``, ``"ptb"``, ``"none"``).
        uncertain: CE mapping of uncertain mentions (``"negative"``, ``"positive"``, ``"ignore"``).
        nlg_metrics: subset of ``("BLEU", "METEOR", "ROUGE-L", "CIDEr")``; None: all (METEOR needs Java); empty: no
            NLG score.
        clinical: compute the CE (and, with ``findings``, the attribute) scores.
        findings: the truth of the finding side / size scores: one list of ``{kind, side, severity}`` per study,
            ``"references"`` (read from the reference reports), or None (no attribute scores).
        bootstrap: number of bootstrap draws of the 95% intervals (0: none; papers use 1,000).
        seed: seed of the draws.
        timeout: time limit of each Java scorer run (None: scaled with the input size).
        keep_statistics: keep the per-study statistics under ``"_statistics"`` (for :func:`compare_reports`).

    Returns:
        ``{"scores": {name: float}, "per_label": {...}, "settings": {...}}``, plus ``"attributes"`` (per kind and
        overall counts) with ``findings`` and ``"intervals"`` (``{name: {"score", "low", "high", "std"}}``) with
        ``bootstrap``.

    Raises:
        MetricError: lengths differ, nothing to score, unknown options.
        ReportError: unknown ``clean_style``.
    """
    from monai_r2gen.metrics.bootstrap import bootstrap_intervals, study_statistics
    from monai_r2gen.metrics.clinical import _as_label_dicts, ce_score_keys, ce_scores
    from monai_r2gen.metrics.nlg import MAX_REPORT_CHARS, truncate_reports

    if len(references) != len(hypotheses):
        raise MetricError(f"{len(references)} references but {len(hypotheses)} hypotheses; they must pair up")
    if bootstrap < 0:
        raise MetricError(f"bootstrap must be 0 (off) or a number of draws, got {bootstrap}")
    clean_report("", clean_style)  # ReportError for an unknown style, before any work
    refs, cut_refs = truncate_reports(list(references), MAX_REPORT_CHARS, "references")
    hyps, cut_hyps = truncate_reports(list(hypotheses), MAX_REPORT_CHARS, "hypotheses")
    truth = _attribute_truth(refs, findings)

    nlg = cleaned_nlg_study_scores(refs, hyps, clean_style, tokenize, nlg_metrics, timeout)
    scores: dict[str, float] = dict(nlg["scores"])
    result: dict[str, Any] = {"scores": scores}
    ce: dict[str, Any] = {"settings": None}
    if clinical:
        ref_labels = _as_label_dicts(refs, "reference", None)
        hyp_labels = _as_label_dicts(hyps, "hypothesis", None)
        ce = ce_scores(ref_labels, hyp_labels, uncertain=uncertain)
        scores.update({k: ce[k] for k in ce_score_keys()})
        plus = ce if uncertain == "positive" else ce_scores(ref_labels, hyp_labels, uncertain="positive")
        scores.update({_plus_name(k): plus[k] for k in ce_score_keys()})
        result["per_label"] = ce["per_label"]
    else:
        truth = None
    attrs = None
    if truth is not None:
        from monai_r2gen.metrics.attributes import attribute_scores

        attrs = attribute_scores(hyps, truth)
        scores.update({k: v for k, v in attrs.items() if isinstance(v, float)})
        result["attributes"] = {"per_kind": attrs["per_kind"], "overall": attrs["overall"]}

    result["settings"] = {
        "num_reports": len(refs),
        "nlg": {
            "scorer": "pycocoevalcap",
            "clean_style": clean_style,
            "cleaned": "both sides",
            "tokenize": tokenize,
            "max_report_chars": MAX_REPORT_CHARS,
            "references_truncated": cut_refs,
            "hypotheses_truncated": cut_hyps,
        },
        "ce": None if not clinical else {**ce["settings"], "labeler": _labeler_version(),
                                         "text": "raw (uncleaned) reports",
                                         "plus_variants": "CE-14+ / CE-5+: uncertain counted as positive"},
        "attributes": None if attrs is None else {
            **attrs["settings"], "truth": "reference reports" if isinstance(findings, str) else "findings file",
            "text": "raw (uncleaned) reports"},
        "bootstrap": None if not bootstrap else {
            "draws": int(bootstrap), "seed": int(seed), "level": 0.95, "resampled": "studies",
            "interval": "percentile"},
    }  # fmt: skip

    if bootstrap or keep_statistics:
        ref_pos, hyp_pos, valid, sets = _ce_arrays(ref_labels, hyp_labels, uncertain) if clinical else (None,) * 4
        stats = study_statistics(
            nlg["references"] if "BLEU-1" in scores else None,
            nlg["hypotheses"] if "BLEU-1" in scores else None,
            ref_pos, hyp_pos,
            per_study_scores=dict(nlg["per_study"]),  # METEOR: its segment scores
            ratio_scores=_attribute_ratios(hyps, truth) if truth is not None else None,
            valid=valid, label_sets=sets,
        )  # fmt: skip
        if bootstrap:
            intervals = bootstrap_intervals(stats, draws=int(bootstrap), seed=int(seed))
            # the corpus score is the one reported; the interval comes from the resampled studies
            result["intervals"] = {k: {**v, "score": scores[k]} for k, v in intervals.items() if k in scores}
        if keep_statistics:
            result["_statistics"] = stats
    return result


def _labeler_version() -> str:
    from monai_r2gen.metrics.clinical import _labeler

    return _labeler().version


def compare_reports(
    result_a: Mapping[str, Any], result_b: Mapping[str, Any], draws: int = 1000, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Paired bootstrap interval of the difference and approximate-randomisation p-value of every score of two
    systems on the same references (both results from :func:`score_reports` with ``keep_statistics=True``).

    Returns:
        ``{name: {"a", "b", "difference", "low", "high", "p_value"}}``.
    """
    from monai_r2gen.metrics.bootstrap import paired_test

    return paired_test(study_statistics_of(result_a), study_statistics_of(result_b), draws=draws, seed=seed)
