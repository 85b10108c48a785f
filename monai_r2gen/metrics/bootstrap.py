"""Bootstrap confidence intervals and a paired significance test for report-generation scores.

Studies are the resampling unit (as in the LLaVA-Rad / RadEval reports). Everything a corpus score needs is computed
once per study (:func:`study_statistics`) and laid out as one additive per-study feature matrix ``X`` (studies x
features); a corpus score is then a function of the column sums of ``X``. A bootstrap draw is a vector of multinomial
study counts ``w`` (``w.sum() == n``), so the sums of all draws are a single matrix product ``W @ X`` and every score
is evaluated vectorised over the draws.

Scores (names as in :func:`~monai_r2gen.metrics.clinical.ce_scores` for CE):

* ``"BLEU-1"`` .. ``"BLEU-4"``: corpus BLEU from summed clipped n-gram matches, guesses, hypothesis and reference
  lengths, exactly as pycocoevalcap's ``BleuScorer.compute_score(option="closest")`` with one reference per study
  (``tiny = 1e-15``, ``small = 1e-9``, brevity penalty when the length ratio is below 1).
* ``"CE-14 micro-P"`` .. ``"CE-5 example-F1"``: micro / macro / example precision, recall and F1 of binarised labels
  (definitions and ``zero_division`` handling of :mod:`monai_r2gen.metrics.clinical`).
* ``per_study_scores``: scores whose corpus value is the mean of per-study values (ROUGE-L, CIDEr, METEOR segment
  scores, attribute hits, ...).
* ``ratio_scores``: scores ``sum(numerator) / sum(denominator)`` of per-study counts (e.g. side accuracy = correct
  sides / mentioned findings); ``NaN`` where the denominator sums to 0.

:func:`bootstrap_intervals` gives percentile intervals; :func:`paired_test` compares two systems on the same
references: the CI of the difference from paired bootstrap draws (the same resampled studies for both systems) and a
two-sided p-value from an approximate randomisation test (each study's statistics swapped between the two systems
with probability 1/2).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Union

import numpy as np

from monai_r2gen.errors import MetricError
from monai_r2gen.metrics.chexpert import CHEXPERT_LABELS

__all__ = [
    "BLEU_ORDER",
    "StudyStatistics",
    "study_statistics",
    "corpus_scores",
    "bootstrap_intervals",
    "paired_test",
]

#: Highest n-gram order of the BLEU scores.
BLEU_ORDER = 4
_TINY = 1e-15  # pycocoevalcap BleuScorer: "so that if guess is 0 still return 0"
_SMALL = 1e-9
_CE5_NAMES = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")  # clinical.CE5_LABELS
_AVERAGES = ("micro", "macro", "example")
_MEASURES = ("P", "R", "F1")

Tokens = Union[str, Sequence[str]]


@dataclass(frozen=True)
class StudyStatistics:
    """Per-study sufficient statistics of the corpus scores (built by :func:`study_statistics`).

    Attributes:
        n: number of studies.
        bleu_correct: (n, 4) clipped n-gram matches for n = 1..4, or ``None`` (no BLEU).
        bleu_guess: (n, 4) hypothesis n-gram counts for n = 1..4.
        hyp_len: (n,) hypothesis lengths in tokens.
        ref_len: (n,) reference lengths in tokens.
        ce_tp: (n, L) per-study, per-label true positives (0/1), or ``None`` (no CE).
        ce_fp: (n, L) false positives.
        ce_fn: (n, L) false negatives.
        ce_sets: label-set name -> column indices, e.g. ``{"CE-14": (0, ..., 13), "CE-5": (8, 2, 6, 5, 10)}``.
        ce_example: label-set name -> (n, 3) per-study example precision, recall, F1.
        zero_division: value of an undefined CE ratio.
        means: name -> (n,) per-study values whose corpus score is their mean.
        ratios: name -> ((n,) numerators, (n,) denominators) of a ``sum / sum`` score.
    """

    n: int
    bleu_correct: np.ndarray | None = None
    bleu_guess: np.ndarray | None = None
    hyp_len: np.ndarray | None = None
    ref_len: np.ndarray | None = None
    ce_tp: np.ndarray | None = None
    ce_fp: np.ndarray | None = None
    ce_fn: np.ndarray | None = None
    ce_sets: dict[str, tuple[int, ...]] = field(default_factory=dict)
    ce_example: dict[str, np.ndarray] = field(default_factory=dict)
    zero_division: float = 0.0
    means: dict[str, np.ndarray] = field(default_factory=dict)
    ratios: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def score_names(self) -> list[str]:
        """Names of the scores, in output order."""
        names: list[str] = []
        if self.bleu_correct is not None:
            names += [f"BLEU-{k}" for k in range(1, BLEU_ORDER + 1)]
        for set_name in self.ce_sets:
            names += [f"{set_name} {a}-{m}" for a in _AVERAGES for m in _MEASURES]
        return names + list(self.means) + list(self.ratios)

    def design(self) -> tuple[np.ndarray, dict[str, slice]]:
        """Additive per-study feature matrix and its column blocks.

        Returns:
            ``(X, blocks)``: ``X`` of shape (n, features), float64; ``blocks`` maps a block name (``"correct"``,
            ``"guess"``, ``"hyp_len"``, ``"ref_len"``, ``"tp"``, ``"fp"``, ``"fn"``, ``"example <set>"``,
            ``"mean <name>"``, ``"num <name>"``, ``"den <name>"``) to its columns.
        """
        parts: list[np.ndarray] = []
        blocks: dict[str, slice] = {}
        start = 0

        def add(name: str, values: np.ndarray) -> None:
            nonlocal start
            values = np.asarray(values, dtype=np.float64).reshape(self.n, -1)
            blocks[name] = slice(start, start + values.shape[1])
            start += values.shape[1]
            parts.append(values)

        if self.bleu_correct is not None:
            add("correct", self.bleu_correct)
            add("guess", self.bleu_guess)
            add("hyp_len", self.hyp_len)
            add("ref_len", self.ref_len)
        if self.ce_tp is not None:
            add("tp", self.ce_tp)
            add("fp", self.ce_fp)
            add("fn", self.ce_fn)
            for set_name, values in self.ce_example.items():
                add(f"example {set_name}", values)
        for name, values in self.means.items():
            add(f"mean {name}", values)
        for name, (num, den) in self.ratios.items():
            add(f"num {name}", num)
            add(f"den {name}", den)
        x = np.concatenate(parts, axis=1) if parts else np.zeros((self.n, 0))
        return x, blocks


def _ngram_counts(tokens: Sequence[str], order: int) -> list[dict[tuple[str, ...], int]]:
    out: list[dict[tuple[str, ...], int]] = []
    for k in range(1, order + 1):
        counts: dict[tuple[str, ...], int] = {}
        for i in range(len(tokens) - k + 1):
            gram = tuple(tokens[i : i + k])
            counts[gram] = counts.get(gram, 0) + 1
        out.append(counts)
    return out


def _as_tokens(item: Tokens, where: str) -> list[str]:
    if isinstance(item, str):
        return item.split()
    if isinstance(item, Sequence) and all(isinstance(t, str) for t in item):
        return list(item)
    raise MetricError(f"{where} must be a string or a list of string tokens, got {type(item).__name__}")


def _bleu_statistics(
    references: Sequence[Tokens], hypotheses: Sequence[Tokens]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    n = len(references)
    correct = np.zeros((n, BLEU_ORDER), dtype=np.int64)
    hyp_len = np.zeros(n, dtype=np.int64)
    ref_len = np.zeros(n, dtype=np.int64)
    for i, (ref, hyp) in enumerate(zip(references, hypotheses)):
        ref_t = _as_tokens(ref, f"reference {i}")
        hyp_t = _as_tokens(hyp, f"hypothesis {i}")
        ref_len[i], hyp_len[i] = len(ref_t), len(hyp_t)
        ref_counts = _ngram_counts(ref_t, BLEU_ORDER)
        for k, counts in enumerate(_ngram_counts(hyp_t, BLEU_ORDER)):
            rk = ref_counts[k]
            correct[i, k] = sum(min(c, rk.get(g, 0)) for g, c in counts.items())
    guess = np.maximum(0, hyp_len[:, None] - np.arange(BLEU_ORDER)[None, :])
    return correct, guess, hyp_len, ref_len


def _ratio(num: np.ndarray, den: np.ndarray, zero_division: float) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, float(zero_division))
    np.divide(num, den, out=out, where=den > 0)
    return out


def _as_vector(values: object, n: int, where: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.shape != (n,):
        raise MetricError(f"{where} has shape {arr.shape}; expected ({n},) (one value per study)")
    return arr


def study_statistics(
    references_tokens: Sequence[Tokens] | None,
    hypotheses_tokens: Sequence[Tokens] | None,
    ref_labels: np.ndarray | None = None,
    hyp_labels: np.ndarray | None = None,
    per_study_scores: Mapping[str, np.ndarray] | None = None,
    ratio_scores: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
    ce5_columns: Sequence[int] | None = None,
    valid: np.ndarray | None = None,
    zero_division: float = 0.0,
    label_sets: Mapping[str, Sequence[int]] | None = None,
) -> StudyStatistics:
    """Per-study statistics of a system's outputs against one reference per study.

    Args:
        references_tokens: one reference per study, a list of tokens (or a string, split on whitespace as
            pycocoevalcap does); ``None`` skips BLEU.
        hypotheses_tokens: one hypothesis per study, same order.
        ref_labels: (n, L) bool binarised reference labels (columns in :data:`CHEXPERT_LABELS` order for L = 14,
            e.g. from :func:`~monai_r2gen.metrics.clinical.binarize_labels`); ``None`` skips CE.
        hyp_labels: (n, L) bool binarised hypothesis labels.
        per_study_scores: name -> (n,) per-study values whose corpus score is their mean.
        ratio_scores: name -> ((n,) numerators, (n,) denominators); the corpus score is ``sum(num) / sum(den)``.
        ce5_columns: columns of the CE-5 subset; default the CE-5 observations' positions in
            :data:`CHEXPERT_LABELS` when L = 14, none otherwise (pass ``()`` to skip CE-5).
        valid: optional (n, L) bool mask of the (study, label) pairs that count (``uncertain="ignore"``).
        zero_division: value of an undefined CE precision / recall / F1, as in ``ce_scores``.
        label_sets: label-set name -> columns, in place of the default ``CE-<L>`` + ``CE-5`` sets (e.g. 28 columns,
            the 14 labels under two uncertain mappings, as ``{"CE-14": 0..13, "CE-14+": 14..27, ...}``);
            ``ce5_columns`` is then unused.

    Returns:
        The :class:`StudyStatistics`.

    Raises:
        MetricError: nothing to score, lengths or shapes that do not match, or bad tokens.
    """
    sizes: dict[str, int] = {}
    if (references_tokens is None) != (hypotheses_tokens is None):
        raise MetricError("give both references_tokens and hypotheses_tokens, or neither")
    if references_tokens is not None:
        if isinstance(references_tokens, str) or isinstance(hypotheses_tokens, str):
            raise MetricError("references_tokens and hypotheses_tokens must be sequences (one item per study)")
        sizes["references_tokens"] = len(references_tokens)
        sizes["hypotheses_tokens"] = len(hypotheses_tokens)
    if (ref_labels is None) != (hyp_labels is None):
        raise MetricError("give both ref_labels and hyp_labels, or neither")
    if ref_labels is not None:
        ref_labels = np.asarray(ref_labels, dtype=bool)
        hyp_labels = np.asarray(hyp_labels, dtype=bool)
        if ref_labels.ndim != 2 or ref_labels.shape != hyp_labels.shape:
            raise MetricError(
                f"ref_labels {ref_labels.shape} and hyp_labels {hyp_labels.shape} must be (studies, labels) alike"
            )
        sizes["ref_labels"] = ref_labels.shape[0]
    per_study_scores = dict(per_study_scores or {})
    ratio_scores = dict(ratio_scores or {})
    for name, values in per_study_scores.items():
        sizes[f"per_study_scores[{name!r}]"] = np.shape(values)[0] if np.ndim(values) else -1
    for name, pair in ratio_scores.items():
        if len(pair) != 2:
            raise MetricError(f"ratio_scores[{name!r}] must be a (numerators, denominators) pair")
        sizes[f"ratio_scores[{name!r}]"] = np.shape(pair[0])[0] if np.ndim(pair[0]) else -1
    if not sizes:
        raise MetricError("nothing to score: give tokens, labels, per_study_scores or ratio_scores")
    n = next(iter(sizes.values()))
    if any(s != n for s in sizes.values()):
        raise MetricError(f"inputs disagree on the number of studies: {sizes}")
    if n == 0:
        raise MetricError("no studies to score")
    clash = set(per_study_scores) & set(ratio_scores)
    if clash:
        raise MetricError(f"score name(s) {sorted(clash)} given both as per_study_scores and ratio_scores")

    kwargs: dict = {"n": n, "zero_division": float(zero_division)}
    if references_tokens is not None:
        correct, guess, hyp_len, ref_len = _bleu_statistics(references_tokens, hypotheses_tokens)
        kwargs.update(bleu_correct=correct, bleu_guess=guess, hyp_len=hyp_len, ref_len=ref_len)
    if ref_labels is not None:
        n_labels = ref_labels.shape[1]
        mask = np.ones_like(ref_labels) if valid is None else np.asarray(valid, dtype=bool)
        if mask.shape != ref_labels.shape:
            raise MetricError(f"valid has shape {mask.shape}; expected {ref_labels.shape}")
        tp = ref_labels & hyp_labels & mask
        fp = ~ref_labels & hyp_labels & mask
        fn = ref_labels & ~hyp_labels & mask
        if label_sets is not None:
            ce_sets = {name: tuple(int(c) for c in cols) for name, cols in label_sets.items()}
        else:
            if ce5_columns is None:
                ce5_columns = [CHEXPERT_LABELS.index(k) for k in _CE5_NAMES] if n_labels == len(CHEXPERT_LABELS) else ()
            ce_sets = {f"CE-{n_labels}": tuple(range(n_labels))}
            if ce5_columns:
                ce_sets["CE-5"] = tuple(int(c) for c in ce5_columns)
        for name, cols in ce_sets.items():
            if not cols or any(not 0 <= c < n_labels for c in cols):
                raise MetricError(f"label set {name!r} columns {cols} out of range for {n_labels} labels")
        examples = {}
        for set_name, cols in ce_sets.items():
            inter = tp[:, cols].sum(axis=1)
            n_hyp = inter + fp[:, cols].sum(axis=1)
            n_ref = inter + fn[:, cols].sum(axis=1)
            examples[set_name] = np.stack(
                [
                    _ratio(inter, n_hyp, zero_division),
                    _ratio(inter, n_ref, zero_division),
                    _ratio(2 * inter, n_ref + n_hyp, zero_division),
                ],
                axis=1,
            )
        kwargs.update(ce_tp=tp, ce_fp=fp, ce_fn=fn, ce_sets=ce_sets, ce_example=examples)
    kwargs["means"] = {k: _as_vector(v, n, f"per_study_scores[{k!r}]") for k, v in per_study_scores.items()}
    kwargs["ratios"] = {
        k: (
            _as_vector(v[0], n, f"ratio_scores[{k!r}] numerators"),
            _as_vector(v[1], n, f"ratio_scores[{k!r}] denominators"),
        )
        for k, v in ratio_scores.items()
    }
    return StudyStatistics(**kwargs)


def _evaluate(stats: StudyStatistics, blocks: dict[str, slice], sums: np.ndarray) -> dict[str, np.ndarray]:
    """Scores from column sums ``sums`` (draws, features) of studies weighted to a total of ``stats.n``."""
    out: dict[str, np.ndarray] = {}
    if stats.bleu_correct is not None:
        correct, guess = sums[:, blocks["correct"]], sums[:, blocks["guess"]]
        precisions = np.cumprod((correct + _TINY) / (guess + _SMALL), axis=1)
        bleus = precisions ** (1.0 / np.arange(1, BLEU_ORDER + 1))
        ratio = (sums[:, blocks["hyp_len"]][:, 0] + _TINY) / (sums[:, blocks["ref_len"]][:, 0] + _SMALL)
        penalty = np.exp(1.0 - 1.0 / np.minimum(ratio, 1.0))  # == 1 where ratio >= 1
        bleus = bleus * np.where(ratio < 1, penalty, 1.0)[:, None]
        for k in range(BLEU_ORDER):
            out[f"BLEU-{k + 1}"] = bleus[:, k]
    if stats.ce_tp is not None:
        zd = stats.zero_division
        tp_all, fp_all, fn_all = sums[:, blocks["tp"]], sums[:, blocks["fp"]], sums[:, blocks["fn"]]
        for set_name, cols in stats.ce_sets.items():
            idx = list(cols)
            tp, fp, fn = tp_all[:, idx], fp_all[:, idx], fn_all[:, idx]
            stp, sfp, sfn = tp.sum(axis=1), fp.sum(axis=1), fn.sum(axis=1)
            out[f"{set_name} micro-P"] = _ratio(stp, stp + sfp, zd)
            out[f"{set_name} micro-R"] = _ratio(stp, stp + sfn, zd)
            out[f"{set_name} micro-F1"] = _ratio(2 * stp, 2 * stp + sfp + sfn, zd)
            out[f"{set_name} macro-P"] = _ratio(tp, tp + fp, zd).mean(axis=1)
            out[f"{set_name} macro-R"] = _ratio(tp, tp + fn, zd).mean(axis=1)
            out[f"{set_name} macro-F1"] = _ratio(2 * tp, 2 * tp + fp + fn, zd).mean(axis=1)
            example = sums[:, blocks[f"example {set_name}"]] / stats.n
            for j, m in enumerate(_MEASURES):
                out[f"{set_name} example-{m}"] = example[:, j]
    for name in stats.means:
        out[name] = sums[:, blocks[f"mean {name}"]][:, 0] / stats.n
    for name in stats.ratios:
        num, den = sums[:, blocks[f"num {name}"]][:, 0], sums[:, blocks[f"den {name}"]][:, 0]
        out[name] = _ratio(num, den, np.nan)
    return {k: out[k] for k in stats.score_names()}


def _check_draws(draws: int, level: float | None = None) -> None:
    if not isinstance(draws, (int, np.integer)) or draws < 1:
        raise MetricError(f"draws must be a positive integer, got {draws!r}")
    if level is not None and not 0.0 < level < 1.0:
        raise MetricError(f"level must be in (0, 1), got {level!r}")


def _bootstrap_weights(rng: np.random.Generator, n: int, draws: int) -> np.ndarray:
    """(draws, n) study counts of ``draws`` resamples of ``n`` studies with replacement."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=draws).astype(np.float64)


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float]:
    q = [50.0 * (1.0 - level), 50.0 * (1.0 + level)]
    finite = values[~np.isnan(values)]
    if finite.size == 0:
        return float("nan"), float("nan")
    low, high = np.percentile(finite, q)
    return float(low), float(high)


def corpus_scores(stats: StudyStatistics) -> dict[str, float]:
    """Point estimates of all scores (the full-sample corpus scores).

    Args:
        stats: per-study statistics from :func:`study_statistics`.

    Returns:
        score name -> value (``"BLEU-1"`` .. ``"BLEU-4"``, ``"CE-14 micro-F1"``, ..., per-study and ratio names).
    """
    x, blocks = stats.design()
    return {k: float(v[0]) for k, v in _evaluate(stats, blocks, x.sum(axis=0, keepdims=True)).items()}


def bootstrap_intervals(
    stats: StudyStatistics, draws: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, dict[str, float]]:
    """Percentile bootstrap confidence intervals of every score, resampling studies with replacement.

    Args:
        stats: per-study statistics from :func:`study_statistics`.
        draws: number of bootstrap resamples.
        seed: seed of ``np.random.default_rng``; the same seed gives the same intervals.
        level: confidence level of the interval.

    Returns:
        score name -> ``{"score", "low", "high", "std"}`` (point estimate, interval bounds, bootstrap standard error;
        draws where a ratio score is undefined are left out).

    Raises:
        MetricError: bad ``draws`` or ``level``.
    """
    _check_draws(draws, level)
    x, blocks = stats.design()
    weights = _bootstrap_weights(np.random.default_rng(seed), stats.n, draws)
    boot = _evaluate(stats, blocks, weights @ x)
    point = _evaluate(stats, blocks, x.sum(axis=0, keepdims=True))
    out: dict[str, dict[str, float]] = {}
    for name, values in boot.items():
        low, high = _percentiles(values, level)
        finite = values[~np.isnan(values)]
        std = float(finite.std(ddof=1)) if finite.size > 1 else float("nan")
        out[name] = {"score": float(point[name][0]), "low": low, "high": high, "std": std}
    return out


def paired_test(
    stats_a: StudyStatistics, stats_b: StudyStatistics, draws: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, dict[str, float]]:
    """Paired comparison of two systems scored on the same studies and references.

    The interval of the difference ``a - b`` comes from paired bootstrap draws (both systems on the same resampled
    studies). The two-sided p-value comes from an approximate randomisation test: in each of ``draws`` permutations
    every study's statistics are swapped between the systems with probability 1/2, and
    ``p = (#{|diff_perm| >= |diff_obs|} + 1) / (draws + 1)`` (identical systems give ``p = 1``).

    Args:
        stats_a: statistics of system A (:func:`study_statistics`).
        stats_b: statistics of system B on the same studies, in the same order, with the same scores.
        draws: number of bootstrap resamples and of permutations.
        seed: seed of ``np.random.default_rng`` (bootstrap resamples first, then swap masks).
        level: confidence level of the interval of the difference.

    Returns:
        score name -> ``{"a", "b", "difference", "low", "high", "p_value"}``.

    Raises:
        MetricError: the two statistics do not pair up (studies, scores, label sets), or bad ``draws`` / ``level``.
    """
    _check_draws(draws, level)
    if stats_a.n != stats_b.n:
        raise MetricError(f"system A has {stats_a.n} studies but system B {stats_b.n}; they must pair up")
    if stats_a.score_names() != stats_b.score_names() or stats_a.ce_sets != stats_b.ce_sets:
        raise MetricError("systems A and B must have the same scores and label sets")
    if stats_a.zero_division != stats_b.zero_division:
        raise MetricError("systems A and B must use the same zero_division")
    if stats_a.ref_len is not None and not np.array_equal(stats_a.ref_len, stats_b.ref_len):
        raise MetricError("systems A and B have different reference lengths; they must share references")
    xa, blocks = stats_a.design()
    xb, blocks_b = stats_b.design()
    if blocks != blocks_b:
        raise MetricError("systems A and B have statistics of different shapes")
    n = stats_a.n
    rng = np.random.default_rng(seed)

    def evaluate(sums: np.ndarray) -> dict[str, np.ndarray]:
        return _evaluate(stats_a, blocks, sums)

    total_a, total_b = xa.sum(axis=0, keepdims=True), xb.sum(axis=0, keepdims=True)
    point_a, point_b = evaluate(total_a), evaluate(total_b)

    weights = _bootstrap_weights(rng, n, draws)
    boot_a, boot_b = evaluate(weights @ xa), evaluate(weights @ xb)

    swaps = (rng.random((draws, n)) < 0.5).astype(np.float64)
    moved = swaps @ (xb - xa)  # what system A gains (and B loses) by the swaps
    perm_a, perm_b = evaluate(total_a + moved), evaluate(total_b - moved)

    out: dict[str, dict[str, float]] = {}
    for name in point_a:
        a, b = float(point_a[name][0]), float(point_b[name][0])
        observed = a - b
        low, high = _percentiles(boot_a[name] - boot_b[name], level)
        perm = np.abs(perm_a[name] - perm_b[name])
        if np.isnan(observed):
            p_value = float("nan")
        else:
            # a small tolerance so that rounding in equal-valued permutations does not count as "less extreme"
            hits = int(np.count_nonzero(perm >= abs(observed) - 1e-12 * max(1.0, abs(observed))))
            p_value = (hits + 1) / (draws + 1)
        out[name] = {"a": a, "b": b, "difference": observed, "low": low, "high": high, "p_value": p_value}
    return out
