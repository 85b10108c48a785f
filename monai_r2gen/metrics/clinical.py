"""Clinical efficacy (CE): precision, recall and F1 of CheXpert observations extracted from reports.

Definitions used by :func:`ce_scores` (the same as the R2Gen-family CE scripts, which binarise CheXpert labels with
"label == 1 is positive" and call scikit-learn):

* **Binarisation.** A label value ``1.0`` is positive. ``0.0`` (negative) and ``None`` / NaN (not mentioned) are
  negative. ``-1.0`` (uncertain) follows ``uncertain=``: ``"negative"`` (default, the R2Gen-family convention),
  ``"positive"``, or ``"ignore"`` (the (report, observation) pair is left out of every count when the reference
  *or* the hypothesis is uncertain for it).
* **Per observation.** TP, FP, FN over reports; precision = TP / (TP + FP), recall = TP / (TP + FN),
  F1 = 2 TP / (2 TP + FP + FN). An undefined ratio (zero denominator) is ``zero_division`` (default 0.0, scikit-learn's
  ``zero_division=0``). So an observation with no positive in the references nor in the hypotheses has P = R = F1 = 0
  and still counts in the macro average.
* **Macro** = unweighted mean of the per-observation values over the label set. **Micro** = the same formulas on
  TP, FP, FN summed over the label set.
* **Example-based** = per report, over the label set: P = |Y ∩ Ŷ| / |Ŷ|, R = |Y ∩ Ŷ| / |Y|,
  F1 = 2 |Y ∩ Ŷ| / (|Y| + |Ŷ|) (zero denominators -> ``zero_division``; a report with no positive in either gets
  ``zero_division`` for all three, as scikit-learn's ``average="samples"``), then the mean over reports.
* **Label sets.** ``CE-14``: the 14 CheXpert observations (No Finding included); ``CE-5``: Atelectasis,
  Cardiomegaly, Consolidation, Edema, Pleural Effusion.

References and hypotheses may be report strings (labelled with :class:`~monai_r2gen.metrics.chexpert.CheXpertLabeler`)
or precomputed label dicts over :data:`~monai_r2gen.metrics.chexpert.CHEXPERT_LABELS` (missing keys = not mentioned),
e.g. the output of CheXbert.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Union

import numpy as np
import torch

from monai_r2gen.errors import MetricError
from monai_r2gen.metrics.chexpert import CHEXPERT_LABELS, CheXpertLabeler
from monai_r2gen.metrics.nlg import ReportListMetric

__all__ = ["CE5_LABELS", "UNCERTAIN_POLICIES", "binarize_labels", "ce_scores", "ce_score_keys", "CEMetric"]

logger = logging.getLogger(__name__)

#: The five observations of the CheXpert competition, the usual "CE-5" set.
CE5_LABELS: tuple[str, ...] = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
#: Accepted values of ``uncertain``.
UNCERTAIN_POLICIES: tuple[str, ...] = ("negative", "positive", "ignore")

_LABEL_SETS = {"CE-14": CHEXPERT_LABELS, "CE-5": CE5_LABELS}
_AVERAGES = ("micro", "macro", "example")

LabelDict = Mapping[str, Union[float, int, None]]

_default_labeler: CheXpertLabeler | None = None


def _labeler() -> CheXpertLabeler:
    global _default_labeler
    if _default_labeler is None:
        _default_labeler = CheXpertLabeler()
    return _default_labeler


def ce_score_keys() -> list[str]:
    """Names of the scalar scores returned by :func:`ce_scores`, in table order (e.g. ``"CE-14 micro-F1"``)."""
    return [f"{s} {a}-{m}" for s in _LABEL_SETS for a in _AVERAGES for m in ("P", "R", "F1")]


def _check_value(value: Any, where: str) -> float | None:
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise MetricError(f"{where}: label value {value!r} is not a number or None") from None
    if math.isnan(v):
        return None
    if v not in (1.0, 0.0, -1.0):
        raise MetricError(f"{where}: label value {value!r} is not 1, 0, -1 or None")
    return v


def _as_label_dicts(items: Sequence[str | LabelDict], name: str, labeler: CheXpertLabeler | None) -> list[dict]:
    out = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            out.append((labeler or _labeler()).label(item))
        elif isinstance(item, Mapping):
            unknown = [k for k in item if k not in CHEXPERT_LABELS]
            if unknown:
                raise MetricError(
                    f"{name} {i}: unknown observation name(s) {unknown}; expected {list(CHEXPERT_LABELS)}"
                )
            out.append({k: _check_value(item.get(k), f"{name} {i} {k!r}") for k in CHEXPERT_LABELS})
        else:
            raise MetricError(f"{name} {i} is a {type(item).__name__}; expected a report string or a label dict")
    return out


def binarize_labels(
    label_dicts: Sequence[LabelDict], labels: Sequence[str] = CHEXPERT_LABELS, uncertain: str = "negative"
) -> tuple[np.ndarray, np.ndarray]:
    """Binary matrix of label dicts under the CE conventions of this module.

    Args:
        label_dicts: one dict per report (values 1.0 / 0.0 / -1.0 / None).
        labels: observation names (columns).
        uncertain: ``"negative"``, ``"positive"`` or ``"ignore"``.

    Returns:
        ``(positive, uncertain_mask)``: two bool arrays of shape (reports, labels); ``positive`` is the binarised label,
        ``uncertain_mask`` marks the uncertain entries (used by ``uncertain="ignore"``).
    """
    if uncertain not in UNCERTAIN_POLICIES:
        raise MetricError(f"uncertain must be one of {UNCERTAIN_POLICIES}, got {uncertain!r}")
    values = np.array(
        [[np.nan if d.get(k) is None else float(d[k]) for k in labels] for d in label_dicts], dtype=float
    ).reshape(len(label_dicts), len(labels))
    is_uncertain = values == -1.0
    positive = values == 1.0
    if uncertain == "positive":
        positive = positive | is_uncertain
    return positive, is_uncertain


def _ratio(num: np.ndarray | float, den: np.ndarray | float, zero_division: float) -> np.ndarray:
    num = np.asarray(num, dtype=float)
    den = np.asarray(den, dtype=float)
    out = np.full(np.broadcast(num, den).shape, float(zero_division))
    np.divide(num, den, out=out, where=den > 0)
    return out


def _set_scores(
    ref: np.ndarray, hyp: np.ndarray, valid: np.ndarray, zero_division: float
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    tp = (ref & hyp & valid).sum(axis=0)
    fp = (~ref & hyp & valid).sum(axis=0)
    fn = (ref & ~hyp & valid).sum(axis=0)
    per = {
        "precision": _ratio(tp, tp + fp, zero_division),
        "recall": _ratio(tp, tp + fn, zero_division),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn, zero_division),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "support": (ref & valid).sum(axis=0),
    }
    stp, sfp, sfn = tp.sum(), fp.sum(), fn.sum()
    out = {
        "micro-P": float(_ratio(stp, stp + sfp, zero_division)),
        "micro-R": float(_ratio(stp, stp + sfn, zero_division)),
        "micro-F1": float(_ratio(2 * stp, 2 * stp + sfp + sfn, zero_division)),
        "macro-P": float(per["precision"].mean()),
        "macro-R": float(per["recall"].mean()),
        "macro-F1": float(per["f1"].mean()),
    }
    inter = (ref & hyp & valid).sum(axis=1)
    n_ref = (ref & valid).sum(axis=1)
    n_hyp = (hyp & valid).sum(axis=1)
    out["example-P"] = float(_ratio(inter, n_hyp, zero_division).mean())
    out["example-R"] = float(_ratio(inter, n_ref, zero_division).mean())
    out["example-F1"] = float(_ratio(2 * inter, n_ref + n_hyp, zero_division).mean())
    return out, per


def ce_scores(
    references: Sequence[str | LabelDict],
    hypotheses: Sequence[str | LabelDict],
    uncertain: str = "negative",
    zero_division: float = 0.0,
    labeler: CheXpertLabeler | None = None,
) -> dict[str, Any]:
    """Clinical-efficacy scores of generated reports against references (definitions in the module docstring).

    Args:
        references: reference reports (strings) or precomputed label dicts.
        hypotheses: generated reports (strings) or precomputed label dicts, same order.
        uncertain: mapping of uncertain labels: ``"negative"`` (default), ``"positive"`` or ``"ignore"``.
        zero_division: value of an undefined precision / recall / F1 (scikit-learn's ``zero_division``); 0.0 or 1.0.
        labeler: labeler for string inputs; default a shared :class:`CheXpertLabeler`.

    Returns:
        dict with the scalar scores of :func:`ce_score_keys` (``"CE-14 micro-F1"``, ``"CE-5 macro-P"``, ...),
        ``"per_label"`` (observation -> precision, recall, f1, tp, fp, fn, support) over the 14 observations, and
        ``"settings"`` (uncertain mapping, treatment of not-mentioned labels, zero_division, number of reports, label
        sets, labeler).

    Raises:
        MetricError: lengths differ, nothing to score, bad label values or unknown options.
    """
    if isinstance(references, (str, Mapping)) or isinstance(hypotheses, (str, Mapping)):
        raise MetricError("references and hypotheses must be sequences (one item per report)")
    if len(references) != len(hypotheses):
        raise MetricError(f"{len(references)} references but {len(hypotheses)} hypotheses; they must pair up")
    if len(references) == 0:
        raise MetricError("no reports to score (empty references and hypotheses)")
    if uncertain not in UNCERTAIN_POLICIES:
        raise MetricError(f"uncertain must be one of {UNCERTAIN_POLICIES}, got {uncertain!r}")
    if zero_division not in (0.0, 1.0):
        raise MetricError(f"zero_division must be 0.0 or 1.0, got {zero_division!r}")

    ref_dicts = _as_label_dicts(references, "reference", labeler)
    hyp_dicts = _as_label_dicts(hypotheses, "hypothesis", labeler)
    ref_pos, ref_unc = binarize_labels(ref_dicts, CHEXPERT_LABELS, uncertain)
    hyp_pos, hyp_unc = binarize_labels(hyp_dicts, CHEXPERT_LABELS, uncertain)
    valid = ~(ref_unc | hyp_unc) if uncertain == "ignore" else np.ones_like(ref_pos)

    result: dict[str, Any] = {}
    per_label: dict[str, dict[str, float | int]] = {}
    for set_name, labels in _LABEL_SETS.items():
        cols = [CHEXPERT_LABELS.index(k) for k in labels]
        scores, per = _set_scores(ref_pos[:, cols], hyp_pos[:, cols], valid[:, cols], zero_division)
        result.update({f"{set_name} {k}": v for k, v in scores.items()})
        if set_name == "CE-14":
            for j, name in enumerate(labels):
                per_label[name] = {
                    "precision": float(per["precision"][j]),
                    "recall": float(per["recall"][j]),
                    "f1": float(per["f1"][j]),
                    "tp": int(per["tp"][j]),
                    "fp": int(per["fp"][j]),
                    "fn": int(per["fn"][j]),
                    "support": int(per["support"][j]),
                }
    ordered = {k: result[k] for k in ce_score_keys()}
    ordered["per_label"] = per_label
    ordered["settings"] = {
        "uncertain": uncertain,
        "not_mentioned": "negative",
        "zero_division": float(zero_division),
        "num_reports": len(ref_dicts),
        "label_sets": {k: list(v) for k, v in _LABEL_SETS.items()},
        "labeler": (labeler or _labeler()).version
        if any(isinstance(x, str) for x in (*references, *hypotheses))
        else "precomputed",
    }
    return ordered


class CEMetric(ReportListMetric):
    """Ignite metric of :func:`ce_scores` over an evaluation epoch, gathered across distributed ranks.

    ``compute`` returns only the scalar scores (``"CE-14 micro-F1"``, ...), so they can be logged by MONAI handlers.

    Args:
        output_transform: maps ``engine.state.output`` to ``(hypotheses, references[, ids])``; see
            :func:`~monai_r2gen.metrics.nlg.report_output_transform`.
        uncertain: passed to :func:`ce_scores`.
        key: optional score published as a float under the metric's name (e.g. ``"CE-14 macro-F1"``).
        device: kept for Ignite's API.
    """

    def __init__(
        self,
        output_transform: Callable = lambda x: x,
        uncertain: str = "negative",
        key: str | Callable[[dict[str, float]], float] | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        if uncertain not in UNCERTAIN_POLICIES:
            raise MetricError(f"uncertain must be one of {UNCERTAIN_POLICIES}, got {uncertain!r}")
        self._uncertain = uncertain
        super().__init__(output_transform=output_transform, key=key, device=device)

    def score(self, references: list[str], hypotheses: list[str]) -> dict[str, float]:
        scores = ce_scores(references, hypotheses, uncertain=self._uncertain)
        return {k: scores[k] for k in ce_score_keys()}
