"""Bootstrap intervals and paired test: point estimates against pycocoevalcap / ce_scores, interval behaviour, speed."""

from __future__ import annotations

import time

import numpy as np
import pytest

from monai_r2gen.errors import MetricError
from monai_r2gen.metrics.bootstrap import bootstrap_intervals, corpus_scores, paired_test, study_statistics
from monai_r2gen.metrics.chexpert import CHEXPERT_LABELS
from monai_r2gen.metrics.clinical import binarize_labels, ce_score_keys, ce_scores

_VOCAB = [
    "the",
    "a",
    "no",
    "there",
    "is",
    "are",
    "of",
    "lung",
    "lungs",
    "clear",
    "heart",
    "size",
    "normal",
    "effusion",
    "pleural",
    "left",
    "right",
    "small",
    "mild",
]


def _sentences(rng: np.random.Generator, count: int, max_len: int = 25) -> list[list[str]]:
    return [list(rng.choice(_VOCAB, size=int(rng.integers(1, max_len)))) for _ in range(count)]


def _corpus(rng: np.random.Generator, n: int) -> tuple[list[list[str]], list[list[str]]]:
    """References and noisy hypotheses (copies, edits, unrelated, short and empty ones)."""
    refs = _sentences(rng, n)
    hyps = []
    for i, ref in enumerate(refs):
        kind = i % 5
        if kind == 0:
            hyps.append(list(ref))
        elif kind == 1:
            hyp = list(ref)
            for j in rng.integers(0, len(hyp), size=max(1, len(hyp) // 4)):
                hyp[j] = str(rng.choice(_VOCAB))
            hyps.append(hyp)
        elif kind == 2:
            hyps.append(_sentences(rng, 1)[0])
        elif kind == 3:
            hyps.append(list(ref[: max(1, len(ref) // 3)]))
        else:
            hyps.append(list(ref) + list(ref[:3]))
    hyps[1] = []  # an empty hypothesis
    hyps[2] = ["the"]
    return refs, hyps


def _labels(rng: np.random.Generator, n: int) -> list[dict]:
    values = rng.choice([1.0, 0.0, -1.0, None], size=(n, len(CHEXPERT_LABELS)), p=[0.15, 0.1, 0.05, 0.7])
    return [{k: values[i, j] for j, k in enumerate(CHEXPERT_LABELS)} for i in range(n)]


def _bleu_reference(refs: list[list[str]], hyps: list[list[str]]) -> list[float]:
    bleu_mod = pytest.importorskip("pycocoevalcap.bleu.bleu")
    gts = {i: [" ".join(r)] for i, r in enumerate(refs)}
    res = {i: [" ".join(h)] for i, h in enumerate(hyps)}
    score, _ = bleu_mod.Bleu(4).compute_score(gts, res, verbose=0)
    return score


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bleu_matches_pycocoevalcap(seed: int) -> None:
    rng = np.random.default_rng(seed)
    refs, hyps = _corpus(rng, 40)
    expected = _bleu_reference(refs, hyps)
    got = corpus_scores(study_statistics(refs, hyps))
    for k in range(4):
        assert got[f"BLEU-{k + 1}"] == pytest.approx(expected[k], abs=1e-9)


def test_bleu_edge_cases_match_pycocoevalcap() -> None:
    cases = [
        ([["a", "b", "c"]], [[]]),  # only an empty hypothesis
        ([["a", "b", "c", "d", "e"], ["x"]], [["a", "b"], ["x"]]),  # brevity penalty, short ones
        ([["a", "b"]], [["a", "b", "a", "b", "a"]]),  # longer than the reference, clipping
        ([["a", "a", "a"]], [["a", "a", "a", "a"]]),
    ]
    for refs, hyps in cases:
        expected = _bleu_reference(refs, hyps)
        got = corpus_scores(study_statistics(refs, hyps))
        for k in range(4):
            assert got[f"BLEU-{k + 1}"] == pytest.approx(expected[k], abs=1e-9), (refs, hyps, k)


def test_strings_are_split_like_pycocoevalcap() -> None:
    refs, hyps = ["the heart  is normal", "no effusion"], ["the heart is large", ""]
    a = corpus_scores(study_statistics(refs, hyps))
    b = corpus_scores(study_statistics([r.split() for r in refs], [h.split() for h in hyps]))
    assert a == b


@pytest.mark.parametrize("uncertain", ["negative", "positive", "ignore"])
def test_ce_matches_ce_scores(uncertain: str) -> None:
    rng = np.random.default_rng(3)
    ref_dicts, hyp_dicts = _labels(rng, 60), _labels(rng, 60)
    ref_dicts[0] = {}  # a study with no positive in either: example scores are zero_division there
    hyp_dicts[0] = {}
    expected = ce_scores(ref_dicts, hyp_dicts, uncertain=uncertain)
    ref_pos, ref_unc = binarize_labels(ref_dicts, CHEXPERT_LABELS, uncertain)
    hyp_pos, hyp_unc = binarize_labels(hyp_dicts, CHEXPERT_LABELS, uncertain)
    valid = ~(ref_unc | hyp_unc) if uncertain == "ignore" else None
    got = corpus_scores(study_statistics(None, None, ref_pos, hyp_pos, valid=valid))
    for key in ce_score_keys():
        assert got[key] == pytest.approx(expected[key], abs=1e-12), key


def test_ce_zero_division_one_matches() -> None:
    rng = np.random.default_rng(4)
    ref_dicts, hyp_dicts = _labels(rng, 30), _labels(rng, 30)
    ref_dicts[0], hyp_dicts[0] = {}, {}
    expected = ce_scores(ref_dicts, hyp_dicts, zero_division=1.0)
    ref_pos, _ = binarize_labels(ref_dicts)
    hyp_pos, _ = binarize_labels(hyp_dicts)
    got = corpus_scores(study_statistics(None, None, ref_pos, hyp_pos, zero_division=1.0))
    for key in ce_score_keys():
        assert got[key] == pytest.approx(expected[key], abs=1e-12), key


def test_mean_and_ratio_scores() -> None:
    values = np.array([0.1, 0.5, 0.9, 0.3])
    num, den = np.array([1, 0, 2, 3]), np.array([2, 0, 2, 4])
    stats = study_statistics(None, None, per_study_scores={"ROUGE-L": values}, ratio_scores={"side": (num, den)})
    scores = corpus_scores(stats)
    assert scores == pytest.approx({"ROUGE-L": values.mean(), "side": 6 / 8})
    intervals = bootstrap_intervals(stats, draws=200)
    assert set(intervals) == {"ROUGE-L", "side"}
    assert intervals["ROUGE-L"]["low"] <= values.mean() <= intervals["ROUGE-L"]["high"]


def _full_stats(rng: np.random.Generator, n: int):
    refs, hyps = _corpus(rng, n)
    ref_pos, _ = binarize_labels(_labels(rng, n))
    hyp_pos, _ = binarize_labels(_labels(rng, n))
    rouge = rng.random(n)
    hits = rng.integers(0, 3, n)
    mentioned = hits + rng.integers(0, 2, n)
    return (refs, hyps, ref_pos, hyp_pos, {"ROUGE-L": rouge}, {"side accuracy": (hits, mentioned)})


def test_intervals_contain_estimate_narrow_and_are_seeded() -> None:
    rng = np.random.default_rng(5)
    refs, hyps, ref_pos, hyp_pos, per, ratios = _full_stats(rng, 50)
    small = study_statistics(refs, hyps, ref_pos, hyp_pos, per, ratios)
    reps = 16  # n = 800 copies of the same studies
    big = study_statistics(
        refs * reps,
        hyps * reps,
        np.tile(ref_pos, (reps, 1)),
        np.tile(hyp_pos, (reps, 1)),
        {k: np.tile(v, reps) for k, v in per.items()},
        {k: (np.tile(a, reps), np.tile(b, reps)) for k, (a, b) in ratios.items()},
    )
    point = corpus_scores(small)
    assert corpus_scores(big) == pytest.approx(point, abs=1e-9)  # BLEU: tiny/small offsets do not scale
    ci_small, ci_big = bootstrap_intervals(small, seed=0), bootstrap_intervals(big, seed=0)
    assert set(ci_small) == set(point)
    for name in ("BLEU-1", "BLEU-4", "CE-14 micro-F1", "CE-5 macro-F1", "CE-14 example-F1", "ROUGE-L", "side accuracy"):
        lo, hi = ci_small[name]["low"], ci_small[name]["high"]
        assert lo <= point[name] <= hi, name
        assert ci_big[name]["low"] <= point[name] <= ci_big[name]["high"], name
        assert hi - lo > 0, name
        assert ci_big[name]["high"] - ci_big[name]["low"] < 0.5 * (hi - lo), name
        assert ci_big[name]["std"] < ci_small[name]["std"], name
    assert bootstrap_intervals(small, seed=0) == ci_small
    other = bootstrap_intervals(small, seed=1)
    assert other != ci_small
    assert abs(other["BLEU-4"]["low"] - ci_small["BLEU-4"]["low"]) < 0.1


def _system(rng: np.random.Generator, refs, ref_pos, fraction: float):
    n = len(refs)
    good = rng.random(n) < fraction
    hyps = [list(r) if g else _sentences(rng, 1)[0] for r, g in zip(refs, good)]
    noise, _ = binarize_labels(_labels(rng, n))
    hyp_pos = np.where(good[:, None], ref_pos, noise)
    rouge = np.where(good, 1.0, 0.2)
    return study_statistics(
        refs, hyps, ref_pos, hyp_pos, {"ROUGE-L": rouge}, {"hit rate": (good.astype(int), np.ones(n))}
    )


def test_paired_test_identical_systems() -> None:
    rng = np.random.default_rng(6)
    refs = _sentences(rng, 100)
    ref_pos, _ = binarize_labels(_labels(rng, 100))
    stats = _system(rng, refs, ref_pos, 0.5)
    result = paired_test(stats, stats)
    assert set(result) == set(corpus_scores(stats))
    for name, r in result.items():
        assert r["p_value"] == 1.0, name
        assert r["difference"] == 0.0, name
        assert r["low"] == r["high"] == 0.0, name
        assert r["a"] == r["b"], name


def test_paired_test_detects_a_better_system() -> None:
    rng = np.random.default_rng(7)
    refs = _sentences(rng, 100)
    ref_pos, _ = binarize_labels(_labels(rng, 100))
    better, worse = _system(rng, refs, ref_pos, 0.8), _system(rng, refs, ref_pos, 0.2)
    result = paired_test(better, worse, seed=0)
    for name in (
        "BLEU-1",
        "BLEU-4",
        "CE-14 micro-F1",
        "CE-14 macro-F1",
        "CE-5 micro-F1",
        "CE-14 example-F1",
        "ROUGE-L",
    ):
        r = result[name]
        assert r["difference"] == pytest.approx(r["a"] - r["b"])
        assert r["difference"] > 0, name
        assert r["p_value"] < 0.01, name
        assert r["low"] > 0, name
        assert r["low"] <= r["difference"] <= r["high"], name
    reverse = paired_test(worse, better, seed=0)
    assert reverse["BLEU-4"]["difference"] == pytest.approx(-result["BLEU-4"]["difference"])
    assert reverse["BLEU-4"]["high"] < 0
    assert paired_test(better, worse, seed=0) == result


def test_errors() -> None:
    with pytest.raises(MetricError):
        study_statistics([["a"]], [["a"], ["b"]])
    with pytest.raises(MetricError):
        study_statistics(None, None)
    with pytest.raises(MetricError):
        study_statistics(None, None, per_study_scores={"x": np.ones(3)}, ratio_scores={"y": (np.ones(2), np.ones(2))})
    a = study_statistics(None, None, per_study_scores={"x": np.ones(3)})
    b = study_statistics(None, None, per_study_scores={"x": np.ones(4)})
    with pytest.raises(MetricError):
        paired_test(a, b)
    with pytest.raises(MetricError):
        bootstrap_intervals(a, draws=0)
    with pytest.raises(MetricError):
        bootstrap_intervals(a, level=1.5)


def test_speed_all_scores_n400() -> None:
    rng = np.random.default_rng(8)
    refs, hyps, ref_pos, hyp_pos, per, ratios = _full_stats(rng, 400)
    t0 = time.perf_counter()
    stats_a = study_statistics(refs, hyps, ref_pos, hyp_pos, per, ratios)
    stats_b = study_statistics(refs, hyps[::-1], ref_pos, hyp_pos[::-1], per, ratios)
    t1 = time.perf_counter()
    intervals = bootstrap_intervals(stats_a, draws=1000)
    t2 = time.perf_counter()
    paired = paired_test(stats_a, stats_b, draws=1000)
    t3 = time.perf_counter()
    print(
        f"\nn=400, 1000 draws, {len(intervals)} scores: statistics {t1 - t0:.3f} s, "
        f"intervals {t2 - t1:.3f} s, paired test {t3 - t2:.3f} s"
    )
    assert len(intervals) == len(paired) == 4 + 2 * 9 + 2
    assert t3 - t0 < 10.0
