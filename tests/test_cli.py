"""Tests of the ``monai-r2gen`` command: ``generate`` end to end on a tiny model, ``train``'s hand-over to
``monai.bundle.run``, and the help of every subcommand."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from monai_r2gen.cli import build_parser, main
from monai_r2gen.data.dicom import write_dataset
from monai_r2gen.inference import ReportInference
from tests.data.dicom_factory import chest_like, save_pil, text_sr_dataset


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, synthetic_study: Path) -> dict[str, Path]:
    """A two-view DICOM study folder (plus an SR of the same study), a PNG, a manifest and a corrupt DICOM file."""
    root = tmp_path_factory.mktemp("generate_inputs")
    study = root / "study"
    shutil.copytree(synthetic_study, study)
    sr = text_sr_dataset()
    sr.StudyInstanceUID = pydicom.dcmread(next(study.glob("*.dcm")), stop_before_pixels=True).StudyInstanceUID
    write_dataset(sr, study / "sr.dcm")
    png = save_pil(root / "chest.png", chest_like(64, 56, bits=8, seed=1), "PNG")
    (root / "listed").mkdir()
    listed = save_pil(root / "listed" / "pa.png", chest_like(64, 56, bits=8, seed=2), "PNG")
    manifest = root / "manifest.jsonl"
    manifest.write_text(json.dumps({"id": "from_manifest", "image": [str(listed)]}) + "\n")
    broken = root / "broken.dcm"
    broken.write_bytes(b"\x00" * 132 + b"definitely not a DICOM data set")
    return {"study": study, "png": png, "manifest": manifest, "broken": broken}


def test_generate_writes_one_line_per_study_and_reports_bad_files(tiny_model_dir, inputs, tmp_path, capsys) -> None:
    out = tmp_path / "out" / "reports.jsonl"
    paths = [str(p) for p in inputs.values()]
    code = main(["generate", str(tiny_model_dir), *paths, "--output", str(out), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 0, err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    study_uid = pydicom.dcmread(inputs["study"] / "b_frontal.dcm", stop_before_pixels=True).StudyInstanceUID
    assert [r["id"] for r in rows] == [study_uid, "chest", "from_manifest", str(inputs["broken"])]
    for row in rows:
        assert {"id", "study_instance_uid", "views", "view_positions", "skipped", "generation", "model",
                "seconds"} <= set(row)  # fmt: skip
        assert ("report" in row) != ("error" in row)

    study, png, listed, broken = rows
    assert study["study_instance_uid"] == study_uid
    assert [Path(p).name for p in study["views"]] == ["b_frontal.dcm", "a_lateral.dcm"]  # frontal first
    assert study["view_positions"] == ["PA", "LL"]
    assert [Path(s["file"]).name for s in study["skipped"]] == ["sr.dcm"]  # the SR of the study: not an image
    assert png["views"] == [str(inputs["png"])] and png["study_instance_uid"] is None
    assert Path(listed["views"][0]).name == "pa.png"
    assert all(isinstance(r["report"], str) and r["report"] for r in (study, png, listed))
    assert all(r["generation"]["max_new_tokens"] == 48 for r in rows)
    assert len({r["model"]["fingerprint"] for r in rows}) == 1 and rows[0]["model"]["name"] == tiny_model_dir.name
    assert broken["views"] == [] and broken["skipped"][0]["file"] == str(inputs["broken"])
    assert "broken.dcm" in broken["error"]

    # every bad file is named on stderr, then the summary
    assert "sr.dcm" in err and "broken.dcm" in err
    summary = {line[:14].strip(): line[14:].strip() for line in err.splitlines()[-6:]}
    assert summary["studies"] == "4" and summary["reports"] == "3" and summary["failed"] == "1"
    assert summary["files skipped"] == "2" and summary["output"] == str(out)

    # the same reports as the Python API gives for the same inputs
    expected = ReportInference(tiny_model_dir, device="cpu", on_error="skip")(paths)
    assert [r.get("report") for r in expected] == [r.get("report") for r in rows]
    assert [r["views"] for r in expected] == [r["views"] for r in rows]
    assert expected[0]["generation"] == rows[0]["generation"] and expected[0]["model"] == rows[0]["model"]


def test_generate_to_stdout_with_generation_options(tiny_model_dir, inputs, capsys) -> None:
    args = ["generate", str(tiny_model_dir), str(inputs["png"]), "--beam", "2", "--max-new-tokens", "4"]
    code = main([*args, "--batch-size", "1", "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    (row,) = [json.loads(line) for line in captured.out.splitlines()]
    assert row["generation"]["num_beams"] == 2 and row["generation"]["max_new_tokens"] == 4
    assert "reports       1" in captured.err


def test_generate_on_bad_inputs_only_exits_1(tiny_model_dir, inputs, tmp_path, capsys) -> None:
    code = main(["generate", str(tiny_model_dir), str(inputs["broken"]), str(tmp_path / "missing.png")])
    captured = capsys.readouterr()
    assert code == 1
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert len(rows) == 2 and all("error" in r and r["model"] is None for r in rows)
    assert "broken.dcm" in captured.err and "missing.png" in captured.err and "model not loaded" in captured.err


def test_generate_with_a_folder_that_is_no_model(tmp_path, inputs, capsys) -> None:
    assert main(["generate", str(tmp_path), str(inputs["png"])]) == 2
    assert "no generator.json" in capsys.readouterr().err


def test_train_hands_configs_and_overrides_to_monai_bundle_run(tmp_path, monkeypatch, capsys) -> None:
    import monai.bundle

    configs = tmp_path / "bundle" / "configs"
    configs.mkdir(parents=True)
    (configs / "train.yaml").write_text("training: []\n")
    (configs / "tiny.yaml").write_text("image_size: 64\n")
    (configs / "metadata.json").write_text("{}")
    calls = []
    monkeypatch.setattr(monai.bundle, "run", lambda *args, **kwargs: calls.append((args, kwargs)))
    code = main(["train", "--config", str(configs / "train.yaml"), "--config", str(configs / "tiny.yaml"),
                 "device=cpu", "stage0#max_iterations=3", "network_config#generation={'num_beams': 1}",
                 "annotation_file=$@dataset_dir + '/a.json'"])  # fmt: skip
    assert code == 0
    ((args, kwargs),) = calls
    assert args == ("training",)
    assert kwargs == {
        "config_file": [str(configs / "train.yaml"), str(configs / "tiny.yaml")],
        "meta_file": str(configs / "metadata.json"),
        "logging_file": None,
        "bundle_root": str(tmp_path / "bundle"),
        "device": "cpu",
        "stage0#max_iterations": 3,
        "network_config#generation": {"num_beams": 1},
        "annotation_file": "$@dataset_dir + '/a.json'",
    }
    assert main(["train", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "not-an-override"])


def _subcommands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found.append((*prefix, name))
                found.extend(_subcommands(child, (*prefix, name)))
    return found


def test_every_subcommand_has_help(capsys) -> None:
    commands = _subcommands(build_parser())
    names = {" ".join(c) for c in commands}
    assert {"synth", "check-data", "train", "generate", "evaluate", "analyze prompts", "analyze attention",
            "analyze ablation"} <= names  # fmt: skip
    for command in [(), *commands]:
        with pytest.raises(SystemExit) as exit_info:
            main([*command, "--help"])
        assert exit_info.value.code == 0
        assert "usage: monai-r2gen" in capsys.readouterr().out


def test_help_and_package_imports_stay_light() -> None:
    code = ("import sys; import monai_r2gen, monai_r2gen.analysis, monai_r2gen.data; from monai_r2gen.cli import "
            "build_parser; build_parser(); heavy = {'torch', 'monai', 'transformers'} & set(sys.modules); "
            "assert not heavy, heavy")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def phantom_eval(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """100 phantom studies (their 20 test studies are scored) with perfect and side-swapped predictions."""
    from monai_r2gen.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("phantom_eval")
    summary = generate_dataset(root / "data", 100, seed=2, image_size=64, formats=("png",))
    test = json.loads(Path(summary["annotation"]).read_text())["test"]
    swap = {"right": "left", "left": "right", "Right": "Left", "Left": "Right"}
    files = {"annotation": Path(summary["annotation"]), "findings": Path(summary["findings"])}
    for name, edit in (("perfect", lambda t: t), ("swapped", lambda t: " ".join(swap.get(w, w) for w in t.split(" ")))):
        files[name] = root / f"{name}.jsonl"
        files[name].write_text("".join(json.dumps({"id": e["id"], "report": edit(e["report"])}) + "\n" for e in test))
    return files


def _evaluate(files: dict[str, Path], predictions: str, *extra: str) -> list[str]:
    return ["evaluate", "--predictions", str(files[predictions]), "--references", str(files["annotation"]),
            "--nlg-metrics", "BLEU,ROUGE-L,CIDEr", *extra]  # fmt: skip


def test_evaluate_with_findings_and_ceiling(phantom_eval, tmp_path, capsys) -> None:
    out = tmp_path / "scores.json"
    code = main(_evaluate(phantom_eval, "perfect", "--findings", str(phantom_eval["findings"]), "--ceiling",
                          "--output", str(out)))  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(out.read_text())
    scores = result["scores"]
    assert scores["BLEU-4"] == pytest.approx(1.0) and "METEOR" not in scores
    assert scores["attr/mention_recall"] == scores["attr/side_accuracy"] == scores["attr/severity_accuracy"] == 1.0
    assert 0.0 < scores["attr/side_prior"] < 1.0
    assert result["attributes"]["per_kind"] and result["attributes"]["overall"]["n"] > 0
    assert result["settings"]["findings"] == str(phantom_eval["findings"].resolve())
    assert result["settings"]["ceiling"]["seeds"] == [1, 2, 3]
    assert result["settings"]["ceiling"]["section"] == "findings"
    assert 0.2 < scores["ceiling/BLEU-4"] < 0.6
    assert scores["BLEU-4/ceiling"] == pytest.approx(scores["BLEU-4"] / scores["ceiling/BLEU-4"])
    assert set(result["ceiling"]["per_seed"]) == {"1", "2", "3"}
    for text in ("finding attributes", "all (micro)", "paraphrase ceiling (findings re-written", "BLEU-4 / ceiling"):
        assert text in captured.out

    # swapping right and left keeps the kinds and sizes, and breaks every one-sided finding
    assert main(_evaluate(phantom_eval, "swapped", "--findings", str(phantom_eval["findings"]), "--output",
                          str(out))) == 0  # fmt: skip
    swapped = json.loads(out.read_text())
    assert swapped["scores"]["attr/mention_recall"] == 1.0 and swapped["scores"]["attr/severity_accuracy"] == 1.0
    for kind, row in swapped["attributes"]["per_kind"].items():
        if kind in ("pneumothorax", "consolidation", "lung_nodule", "rib_fracture"):  # never bilateral
            assert row["side_accuracy"] == 0.0, kind
    assert swapped["settings"]["ceiling"] is None and "ceiling" not in swapped
    assert "paraphrase ceiling" not in capsys.readouterr().out


def test_evaluate_findings_errors_take_the_normal_error_path(phantom_eval, tmp_path, capsys) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"syn000001": [{"kind": "pneumonia"}]}')
    assert main(_evaluate(phantom_eval, "perfect", "--findings", str(bad))) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}: ") and "unknown kind 'pneumonia'" in err and "Traceback" not in err
    assert main(_evaluate(phantom_eval, "perfect", "--ceiling")) == 2
    assert "needs a findings file" in capsys.readouterr().err
    assert main(_evaluate(phantom_eval, "perfect", "--findings", str(tmp_path / "missing.json"))) == 2
    assert "missing.json: findings file not found" in capsys.readouterr().err
