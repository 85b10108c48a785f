"""File-level evaluation: predictions JSONL against an annotation.json split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from monai_r2gen.data.reports import clean_report
from monai_r2gen.errors import InputFileError, ManifestError, MetricError, ReportError
from monai_r2gen.evaluation import evaluate_files, format_score_table, read_predictions
from monai_r2gen.metrics.clinical import ce_score_keys, ce_scores
from monai_r2gen.metrics.nlg import nlg_scores, tokenize_reports
from tests.metrics.test_external import make_tiny_chexbert

NO_JAVA = ("BLEU", "ROUGE-L", "CIDEr")
REPORTS = {
    "s1": "The heart size is normal. No pleural effusion or pneumothorax.",
    "s2": "Mild cardiomegaly. Small left pleural effusion.",
    "s3": "ET tube terminates 4 cm above the carina.  Lungs are clear.",
}
PREDS = {
    "s1": "Heart size is normal. No pleural effusion.",
    "s2": "Moderate cardiomegaly.\nSmall bilateral pleural effusions.",
    "s3": "Lungs are clear.",
}


def _annotation(folder: Path, reports: dict[str, str] = REPORTS) -> Path:
    ann = {
        "train": [{"id": "t1", "report": "Normal chest.", "image_path": ["t1/0.png"]}],
        "test": [{"id": k, "report": v, "image_path": [f"{k}/0.png", f"{k}/1.png"]} for k, v in reports.items()],
    }
    path = folder / "annotation.json"
    path.write_text(json.dumps(ann))
    return path


def _predictions(folder: Path, preds: dict[str, str], field: str = "report") -> Path:
    path = folder / "preds.jsonl"
    path.write_text("".join(json.dumps({"id": k, field: v}) + "\n" for k, v in preds.items()))
    return path


def test_scores_match_direct_calls_and_json_is_written(tmp_path: Path) -> None:
    out = tmp_path / "out" / "scores.json"
    result = evaluate_files(
        _predictions(tmp_path, PREDS), _annotation(tmp_path), split="test", output=out, nlg_metrics=NO_JAVA
    )
    ids = list(REPORTS)
    refs = [REPORTS[i] for i in ids]
    hyps = [PREDS[i] for i in ids]
    nlg = nlg_scores([clean_report(r) for r in refs], [clean_report(h) for h in hyps], metrics=NO_JAVA)
    ce = ce_scores(refs, hyps)
    for key, value in nlg.items():
        assert result["scores"][key] == pytest.approx(value, abs=1e-12)
    for key in ce_score_keys():
        assert result["scores"][key] == pytest.approx(ce[key], abs=1e-12)
    settings = result["settings"]
    assert settings["num_reports"] == 3 and settings["split"] == "test"
    assert settings["nlg"] == {
        "scorer": "pycocoevalcap", "clean_style": "mimic_cxr", "cleaned": "both sides", "tokenize": "simple",
        "max_report_chars": 20000, "references_truncated": 0, "hypotheses_truncated": 0,
    }  # fmt: skip
    assert settings["ce"]["uncertain"] == "negative"
    assert json.loads(out.read_text()) == result
    assert result["per_label"]["Cardiomegaly"]["tp"] == 1


def test_cleaned_text_passes_the_simple_tokenizer_unchanged() -> None:
    for text in [*REPORTS.values(), *PREDS.values(), "Size 2.5 cm; (left) x-ray."]:
        cleaned = clean_report(text, "mimic_cxr")
        assert tokenize_reports([cleaned], "simple") == [cleaned]


def test_options_change_and_are_recorded(tmp_path: Path) -> None:
    preds = dict(PREDS, s3="Possible small left effusion; lungs are clear, no consolidation.")
    ann = _annotation(tmp_path)
    pred_file = _predictions(tmp_path, preds, field="prediction")
    default = evaluate_files(pred_file, ann, nlg_metrics=NO_JAVA)
    positive = evaluate_files(pred_file, ann, nlg_metrics=NO_JAVA, uncertain="positive", clean_style="none")
    assert positive["settings"]["ce"]["uncertain"] == "positive"
    assert positive["settings"]["nlg"]["clean_style"] == "none"
    # the uncertain effusion of s3 counts as a false positive only when uncertain -> positive
    assert positive["per_label"]["Pleural Effusion"]["fp"] == default["per_label"]["Pleural Effusion"]["fp"] + 1
    # R2Gen cleaning drops ";" and "," which the simple tokenizer keeps as tokens
    assert positive["scores"]["BLEU-1"] != pytest.approx(default["scores"]["BLEU-1"])


def test_missing_predictions_are_listed(tmp_path: Path) -> None:
    preds = {"s1": PREDS["s1"], "other": "x"}
    with pytest.raises(MetricError, match=r"2 of 3 reference id\(s\).*'s2', 's3'"):
        evaluate_files(_predictions(tmp_path, preds), _annotation(tmp_path), nlg_metrics=NO_JAVA)


def test_extra_predictions_are_ignored_and_counted(tmp_path: Path, caplog) -> None:
    preds = dict(PREDS, t1="Normal chest.", zz="Nothing.")
    result = evaluate_files(_predictions(tmp_path, preds), _annotation(tmp_path), nlg_metrics=NO_JAVA)
    assert result["settings"]["num_ignored_predictions"] == 2
    assert "not in split 'test'" in caplog.text


def test_bad_files(tmp_path: Path) -> None:
    ann = _annotation(tmp_path)
    with pytest.raises(InputFileError, match="not found"):
        evaluate_files(tmp_path / "none.jsonl", ann)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "s1", "report": "x"}\n{"id": "s2", "report": \n')
    with pytest.raises(InputFileError, match="line 2: invalid JSON"):
        read_predictions(bad)
    bad.write_text('{"id": "s1", "text": "x"}\n')
    with pytest.raises(InputFileError, match="no report field"):
        read_predictions(bad)
    bad.write_text('{"id": "s1", "report": "x"}\n{"id": "s1", "report": "y"}\n')
    with pytest.raises(InputFileError, match="repeated prediction id"):
        read_predictions(bad)
    with pytest.raises(ManifestError, match="no entries of split 'val'"):
        evaluate_files(_predictions(tmp_path, PREDS), ann, split="val")
    with pytest.raises(MetricError, match="uncertain"):
        evaluate_files(tmp_path / "none.jsonl", ann, uncertain="maybe")
    with pytest.raises(ReportError, match="style"):
        evaluate_files(tmp_path / "none.jsonl", ann, clean_style="chexpert")


def test_format_score_table(tmp_path: Path) -> None:
    result = evaluate_files(_predictions(tmp_path, PREDS), _annotation(tmp_path), nlg_metrics=NO_JAVA)
    table = format_score_table(result)
    lines = table.splitlines()
    assert lines[0].split() == ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr"]
    assert float(lines[1].split()[3]) == pytest.approx(result["scores"]["BLEU-4"], abs=5e-5)
    row = next(line for line in lines if line.startswith("CE-14"))
    assert float(row.split()[3]) == pytest.approx(result["scores"]["CE-14 micro-F1"], abs=5e-5)
    assert "uncertain -> negative" in table and "references truncated: no" in table
    assert format_score_table({"BLEU-4": 0.25}).splitlines() == ["  BLEU-4", "  0.2500"]


def test_chexbert_scores_are_added_when_a_checkpoint_is_given(tmp_path: Path) -> None:
    checkpoint, vocab = make_tiny_chexbert(tmp_path)
    result = evaluate_files(
        _predictions(tmp_path, PREDS), _annotation(tmp_path), nlg_metrics=NO_JAVA,
        chexbert_checkpoint=checkpoint, chexbert_tokenizer=vocab,
    )  # fmt: skip
    # the tiny CheXbert answers the same labels for every text, so references and predictions agree perfectly
    assert result["scores"]["CheXbert CE-14 micro-F1"] == pytest.approx(1.0)
    assert result["settings"]["chexbert"] == checkpoint and result["settings"]["radgraph"] is None
    assert "per_label_chexbert" in result
    assert any(line.startswith("CheXbert CE-14") for line in format_score_table(result).splitlines())


FINDINGS = {
    "s1": [],
    "s2": [
        {"kind": "cardiomegaly", "severity": "mild"},
        {"kind": "pleural_effusion", "side": "left", "severity": "small"},
    ],
    "s3": [{"kind": "support_devices"}],
}


def test_finding_attributes_are_added_when_a_findings_file_is_given(tmp_path: Path) -> None:
    from monai_r2gen.metrics.attributes import attribute_scores

    findings = tmp_path / "findings.json"
    findings.write_text(json.dumps(FINDINGS))
    result = evaluate_files(_predictions(tmp_path, PREDS), _annotation(tmp_path), nlg_metrics=NO_JAVA,
                            findings=findings)  # fmt: skip
    direct = attribute_scores([PREDS[k] for k in REPORTS], [FINDINGS[k] for k in REPORTS])
    attr_keys = [k for k in result["scores"] if k.startswith("attr/")]
    assert attr_keys and all(result["scores"][k] == direct[k] for k in attr_keys)
    # s2 writes moderate cardiomegaly (wrong severity) and bilateral effusions (wrong side, right size); s3 no device
    assert result["scores"]["attr/pleural_effusion/side_accuracy"] == 0.0
    assert result["scores"]["attr/pleural_effusion/severity_accuracy"] == 1.0
    assert result["scores"]["attr/cardiomegaly/severity_accuracy"] == 0.0
    assert result["scores"]["attr/support_devices/mention_recall"] == 0.0
    assert set(result["attributes"]["per_kind"]) == {"cardiomegaly", "pleural_effusion", "support_devices"}
    assert result["settings"]["findings"] == str(findings.resolve())
    assert result["settings"]["attributes"]["text"] == "raw (uncleaned) reports"
    assert result["settings"]["ceiling"] is None and "ceiling" not in result
    table = format_score_table(result)
    assert "finding attributes" in table
    assert next(line for line in table.splitlines() if line.startswith("pleural_effusion")).split()[:4] == [
        "pleural_effusion",
        "1",
        "1.000",
        "0.000",
    ]
    assert "attr/" not in table  # the flat attr/ keys are shown as the table, not repeated one per line


def test_findings_and_ceiling_errors(tmp_path: Path) -> None:
    preds, ann = _predictions(tmp_path, PREDS), _annotation(tmp_path)
    with pytest.raises(MetricError, match="ceiling needs a findings file"):
        evaluate_files(tmp_path / "none.jsonl", ann, ceiling=True)
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"s1": []}))
    with pytest.raises(InputFileError, match=r"no findings for 2 of 3 scored study id\(s\)") as info:
        evaluate_files(preds, ann, nlg_metrics=NO_JAVA, findings=partial)
    assert info.value.path == str(partial)
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps(FINDINGS))
    with pytest.raises(InputFileError, match="not a findings.json of the synthetic generator"):
        evaluate_files(preds, ann, nlg_metrics=NO_JAVA, findings=plain, ceiling=True)
    with pytest.raises(InputFileError, match="invalid JSON"):
        evaluate_files(preds, ann, nlg_metrics=NO_JAVA, findings=tmp_path / "preds.jsonl")
