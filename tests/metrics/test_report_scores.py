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
    """Validation, ``monai-r2gen evaluate``, ``evaluate_files`` and the bundle's ``evaluating`` (whose scoring step
    the ablation runs too) give the same predictions the same scores; the bundle run end to end is checked against
    ``evaluate_files`` in tests/engines/test_bundle.py."""
    from monai_r2gen.cli import main
    from monai_r2gen.engines.workflows import ReportEvaluationWorkflow

    ann, _, bad = _files(tmp_path)
    refs, hyps = list(REFS.values()), [BAD[k] for k in REFS]
    from_file = evaluate_files(bad, ann, split="test", nlg_metrics=NO_JAVA, bootstrap=0)["scores"]
    direct = score_reports(refs, hyps, nlg_metrics=NO_JAVA)["scores"]
    validation = compute_report_scores(refs, hyps, nlg_metrics=NO_JAVA)
    workflow = ReportEvaluationWorkflow(tmp_path / "model", tmp_path, tmp_path / "eval", annotation_file=ann,
                                        nlg_metrics=NO_JAVA, bootstrap=0)  # fmt: skip
    evaluating = workflow.score(list(REFS), refs, hyps)
    assert main(["evaluate", "--predictions", str(bad), "--references", str(ann), "--nlg-metrics", ",".join(NO_JAVA),
                 "--bootstrap", "0", "--output", str(tmp_path / "cli.json")]) == 0  # fmt: skip
    from_cli = json.loads((tmp_path / "cli.json").read_text())["scores"]
    assert set(direct) == set(from_file) == set(evaluating["scores"]) == set(from_cli)
    for key, value in direct.items():
        assert from_file[key] == pytest.approx(value, abs=1e-12), key
        assert evaluating["scores"][key] == pytest.approx(value, abs=1e-12), key
        assert from_cli[key] == pytest.approx(value, abs=1e-12), key
        if not key.startswith("attr/"):  # validation reads the attribute truth from the references
            assert validation[key] == pytest.approx(value, abs=1e-12), key
    # the settings that change the numbers are recorded the same way
    for settings in (evaluating["settings"], score_reports(refs, hyps, nlg_metrics=NO_JAVA)["settings"]):
        assert settings["nlg"]["clean_style"] == "mimic_cxr" and settings["nlg"]["cleaned"] == "both sides"
        assert settings["ce"]["text"] == "raw (uncleaned) reports"


def test_evaluating_records_intervals_and_reference_settings(tmp_path: Path) -> None:
    from monai_r2gen.engines.workflows import ReportEvaluationWorkflow

    ann, _, _ = _files(tmp_path)
    refs, hyps = list(REFS.values()), [BAD[k] for k in REFS]
    workflow = ReportEvaluationWorkflow(tmp_path / "model", tmp_path, tmp_path / "eval", annotation_file=ann,
                                        nlg_metrics=NO_JAVA, bootstrap=200, seed=3, clean_style="none",
                                        report_style="mimic_cxr", target="findings")  # fmt: skip
    result = workflow.score(list(REFS), refs, hyps)
    assert result["settings"]["bootstrap"] == {"draws": 200, "seed": 3, "level": 0.95, "resampled": "studies",
                                               "interval": "percentile"}  # fmt: skip
    nlg = result["settings"]["nlg"]
    assert (nlg["clean_style"], nlg["reference_style"], nlg["target"]) == ("none", "mimic_cxr", "findings")
    again = score_reports(refs, hyps, clean_style="none", nlg_metrics=NO_JAVA, bootstrap=200, seed=3)
    assert result["intervals"] == again["intervals"] and set(result["intervals"]) == set(result["scores"])


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


def test_plus_variants_count_uncertain_mentions_as_positive() -> None:
    refs = ["Possible small right pleural effusion.", "Heart size is normal.", "Large left pneumothorax."] * 10
    hyps = ["Small right pleural effusion.", "Heart size is normal.", "Large left pneumothorax."] * 10
    result = score_reports(refs, hyps, nlg_metrics=NO_JAVA, bootstrap=100)
    scores = result["scores"]
    # uncertain -> negative: the effusion the hypothesis states is a false positive; "+": it is a true positive
    assert scores["CE-5 micro-P"] == 0.0 and scores["CE-5+ micro-F1"] == pytest.approx(1.0)
    assert scores["CE-14 micro-F1"] < scores["CE-14+ micro-F1"] == pytest.approx(1.0)
    assert {"CE-14+ macro-F1", "CE-5+ example-F1"} <= set(result["intervals"])
    assert result["intervals"]["CE-14+ micro-F1"]["low"] == pytest.approx(1.0)
    same = score_reports(refs, hyps, nlg_metrics=NO_JAVA, uncertain="positive")["scores"]
    assert same["CE-14 micro-F1"] == same["CE-14+ micro-F1"] == scores["CE-14+ micro-F1"]
