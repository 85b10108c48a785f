"""One scoring path: the CLI, ``evaluate_files`` and validation give identical scores; intervals and the paired test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from monai_r2gen.engines.handlers import compute_report_scores
from monai_r2gen.evaluation import evaluate_files
from monai_r2gen.metrics.report_scores import score_reports

NO_JAVA = ("BLEU", "ROUGE-L", "CIDEr")
_SENTENCES = [
    "Small right pleural effusion. Heart size is normal.",
    "Large left pneumothorax. No effusion.",
    "Moderate cardiomegaly. No pneumothorax.",
    "The lungs are clear. No acute cardiopulmonary process.",
    "Right lower lobe consolidation. Small left pleural effusion.",
]
REFS = {f"s{i}": _SENTENCES[i % 5] for i in range(60)}
GOOD = dict(REFS)
BAD = {k: ("No acute cardiopulmonary process." if i % 2 else v) for i, (k, v) in enumerate(REFS.items())}


def _files(tmp_path: Path) -> tuple[Path, Path, Path]:
    ann = tmp_path / "annotation.json"
    ann.write_text(json.dumps({"test": [{"id": k, "report": v, "image_path": [f"{k}.png"]} for k, v in REFS.items()]}))
    paths = []
    for name, preds in (("good", GOOD), ("bad", BAD)):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"id": k, "report": v}) + "\n" for k, v in preds.items()))
        paths.append(path)
    return ann, paths[0], paths[1]


def test_every_path_gives_the_same_scores(tmp_path: Path) -> None:
    ann, _, bad = _files(tmp_path)
    refs, hyps = list(REFS.values()), [BAD[k] for k in REFS]
    from_file = evaluate_files(bad, ann, split="test", nlg_metrics=NO_JAVA, bootstrap=0)["scores"]
    direct = score_reports(refs, hyps, nlg_metrics=NO_JAVA)["scores"]
    validation = compute_report_scores(refs, hyps, nlg_metrics=NO_JAVA)
    for key, value in direct.items():
        assert from_file[key] == pytest.approx(value, abs=1e-12), key
        if not key.startswith("attr/"):  # validation reads the attribute truth from the references
            assert validation[key] == pytest.approx(value, abs=1e-12), key


def test_intervals_and_paired_comparison(tmp_path: Path) -> None:
    ann, good, bad = _files(tmp_path)
    result = evaluate_files(bad, ann, split="test", nlg_metrics=NO_JAVA, bootstrap=200, compare=good)
    interval = result["intervals"]["CE-14 micro-F1"]
    assert interval["low"] <= result["scores"]["CE-14 micro-F1"] <= interval["high"]
    assert interval["high"] - interval["low"] > 0
    assert result["settings"]["bootstrap"]["draws"] == 200
    diff = result["comparison"]["BLEU-4"]
    assert diff["difference"] < 0 and diff["high"] < 0 and diff["p_value"] < 0.01
    same = evaluate_files(bad, ann, split="test", nlg_metrics=NO_JAVA, bootstrap=0, compare=bad)["comparison"]
    assert same["BLEU-4"]["p_value"] == pytest.approx(1.0) and same["BLEU-4"]["difference"] == 0.0


def test_cli_prints_intervals_and_comparison(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from monai_r2gen.cli import main

    ann, good, bad = _files(tmp_path)
    code = main(["evaluate", "--predictions", str(bad), "--references", str(ann), "--nlg-metrics", "BLEU,ROUGE-L",
                 "--bootstrap", "100", "--compare", str(good)])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "95% bootstrap intervals (100 draws" in out and "paired comparison" in out and "p=" in out
