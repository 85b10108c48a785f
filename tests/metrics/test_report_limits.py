"""Bounds of NLG scoring (issue 14, item 5): report length cut at MAX_REPORT_CHARS, Java scorers under a time limit.

The time-limit tests put a fake ``java`` first on PATH, so they run the same with and without a Java runtime.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import pytest

from monai_r2gen.errors import MetricError, ScorerTimeoutError
from monai_r2gen.metrics.nlg import (
    MAX_REPORT_CHARS,
    SCORER_CHARS_PER_S,
    SCORER_TIMEOUT_BASE_S,
    NLGMetric,
    nlg_scores,
    scorer_timeout,
    tokenize_reports,
    truncate_reports,
)

REFS = ["The heart size is normal. No pleural effusion.", "Mild cardiomegaly. Small left pleural effusion."]
HYPS = ["Heart size is normal. No effusion.", "Moderate cardiomegaly. Small effusions."]
SENTENCE = "The lungs are clear without focal consolidation. "
SECRET = "ZZPATIENTNAMEZZ"  # must never reach the log


def _megabyte_report() -> str:
    return SECRET + " " + SENTENCE * (1_000_000 // len(SENTENCE))


@pytest.fixture()
def fake_java(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Put a fake ``java`` (a shell script) first on PATH; returns a function writing its body."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()

    def _install(body: str) -> Path:
        script = bin_dir / "java"
        script.write_text(f"#!/bin/sh\n{body}\n")
        script.chmod(0o755)
        return script

    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    return _install


# ---------------------------------------------------------------------------------------------------- length bound


def test_the_limit_is_far_above_a_real_report() -> None:
    assert MAX_REPORT_CHARS >= 4 * 5_000


def test_truncate_reports_cuts_counts_and_logs_without_text(caplog: pytest.LogCaptureFixture) -> None:
    long = "word " * 10 + "abcdefghij"  # 60 characters; the limit falls inside the last word
    with caplog.at_level(logging.WARNING, logger="monai_r2gen.metrics.nlg"):
        out, cut = truncate_reports(["short one", long, "x" * 80], max_chars=55, what="references")
    assert cut == 2
    assert out[0] == "short one"
    assert out[1] == ("word " * 10).strip()  # the partial word is dropped
    assert out[2] == "x" * 55  # one giant token: hard cut
    assert all(len(t) <= 55 for t in out)
    (record,) = caplog.records
    assert "2 of 3 references" in record.getMessage() and "55" in record.getMessage()
    assert "word" not in record.getMessage() and "xxx" not in record.getMessage()


def test_truncate_reports_leaves_short_texts_alone_and_validates(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert truncate_reports(REFS) == (REFS, 0)
        assert truncate_reports(["a" * 100], max_chars=None) == (["a" * 100], 0)
    assert not caplog.records
    for bad in (0, -5, 2.5, True, "100"):
        with pytest.raises(MetricError, match="max_chars"):
            truncate_reports(REFS, max_chars=bad)


def test_a_one_megabyte_reference_is_cut_counted_and_scored_fast(caplog: pytest.LogCaptureFixture) -> None:
    refs = [_megabyte_report(), REFS[1]]
    start = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="monai_r2gen.metrics.nlg"):
        scores = nlg_scores(refs, HYPS, metrics=("BLEU", "ROUGE-L", "CIDEr"))
    assert time.perf_counter() - start < 10.0
    messages = [r.getMessage() for r in caplog.records]
    assert any("1 of 2 references" in m and str(MAX_REPORT_CHARS) in m for m in messages)
    assert not any(SECRET.lower() in m.lower() for m in messages)
    # the scores are those of the references cut to the limit
    cut, n = truncate_reports(refs)
    assert n == 1 and len(cut[0]) <= MAX_REPORT_CHARS
    assert scores == nlg_scores(cut, HYPS, metrics=("BLEU", "ROUGE-L", "CIDEr"))
    # max_chars=None scores the whole text (the old behaviour)
    whole = nlg_scores(refs, HYPS, metrics=("ROUGE-L",), max_chars=None)
    assert whole["ROUGE-L"] != pytest.approx(scores["ROUGE-L"])


def test_over_long_hypotheses_are_cut_too(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="monai_r2gen.metrics.nlg"):
        nlg_scores(REFS, [_megabyte_report(), HYPS[1]], metrics=("BLEU",))
    assert any("1 of 2 hypotheses" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("java") is None, reason="METEOR needs a Java runtime")
def test_meteor_on_a_one_megabyte_reference_finishes() -> None:
    start = time.perf_counter()
    scores = nlg_scores([_megabyte_report(), REFS[1]], HYPS, metrics=("METEOR",))
    assert time.perf_counter() - start < 60.0
    assert 0.0 <= scores["METEOR"] <= 1.0


# ---------------------------------------------------------------------------------------------------- time limits


def test_default_timeout_scales_with_the_input() -> None:
    assert scorer_timeout(0) == SCORER_TIMEOUT_BASE_S
    assert scorer_timeout(int(10 * SCORER_CHARS_PER_S)) == pytest.approx(SCORER_TIMEOUT_BASE_S + 10)
    for bad in (0, -1, "5", True, float("nan")):
        with pytest.raises(MetricError, match="timeout"):
            nlg_scores(REFS, HYPS, metrics=("BLEU",), timeout=bad)
    with pytest.raises(MetricError, match="timeout"):
        NLGMetric(timeout=0)


def test_a_hanging_meteor_is_stopped_with_a_typed_error(fake_java) -> None:
    fake_java("exec sleep 30")  # starts, reads nothing, answers nothing
    start = time.perf_counter()
    with pytest.raises(ScorerTimeoutError, match=r"METEOR.*time limit of 0\.5 s") as info:
        nlg_scores(REFS, HYPS, metrics=("METEOR",), timeout=0.5)
    assert time.perf_counter() - start < 10.0
    assert isinstance(info.value, MetricError)


def test_a_hanging_ptb_tokenizer_is_stopped_with_a_typed_error(fake_java) -> None:
    fake_java("exec sleep 30")
    start = time.perf_counter()
    with pytest.raises(ScorerTimeoutError, match=r"PTB tokenizer.*time limit of 0\.5 s"):
        tokenize_reports(REFS, "ptb", timeout=0.5)
    with pytest.raises(ScorerTimeoutError, match="PTB tokenizer"):
        nlg_scores(REFS, HYPS, tokenize="ptb", metrics=("BLEU",), timeout=0.5)
    assert time.perf_counter() - start < 10.0


def test_a_crashing_meteor_is_a_metric_error_not_a_hang(fake_java) -> None:
    fake_java("exit 3")  # dies at once: pycocoevalcap's compute_score fails holding its lock
    start = time.perf_counter()
    with pytest.raises(MetricError, match="METEOR") as info:
        nlg_scores(REFS, HYPS, metrics=("METEOR",), timeout=30)
    assert not isinstance(info.value, ScorerTimeoutError)
    assert time.perf_counter() - start < 10.0
