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
                          str(out), "--overwrite")) == 0  # fmt: skip
    swapped = json.loads(out.read_text())
    assert swapped["scores"]["attr/mention_recall"] == 1.0 and swapped["scores"]["attr/severity_accuracy"] == 1.0
    for kind, row in swapped["attributes"]["per_kind"].items():
        if kind in ("pneumothorax", "consolidation", "lung_nodule", "rib_fracture"):  # never bilateral
            assert row["side_accuracy"] == 0.0, kind
    assert swapped["settings"]["ceiling"] is None and "ceiling" not in swapped
    assert "paraphrase ceiling" not in capsys.readouterr().out


def test_evaluate_refuses_an_existing_output_unless_overwrite(phantom_eval, tmp_path, capsys) -> None:
    out = tmp_path / "scores.json"
    out.write_text("earlier scores\n")
    assert main(_evaluate(phantom_eval, "perfect", "--bootstrap", "0", "--output", str(out))) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: {out}: exists") and "--overwrite" in line
    assert out.read_text() == "earlier scores\n"
    assert main(_evaluate(phantom_eval, "perfect", "--bootstrap", "0", "--output", str(out), "--overwrite")) == 0
    assert json.loads(out.read_text())["scores"]["BLEU-4"] == pytest.approx(1.0)
    with pytest.raises(SystemExit) as info:  # argparse: not a draw count
        main(_evaluate(phantom_eval, "perfect", "--bootstrap", "-1"))
    assert info.value.code == 2 and "--bootstrap: must be at least 0" in capsys.readouterr().err


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


# ----------------------------------------------------------------------------------------------------------------
# reliability (issue 14): nothing lost, impossible arguments refused, one-line errors, Ctrl-C
# ----------------------------------------------------------------------------------------------------------------


def _partials(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.partial"))


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    return line


def test_generate_refuses_an_output_that_is_an_input(tiny_model_dir, inputs, tmp_path, capsys) -> None:
    copies = tmp_path / "copies"
    shutil.copytree(inputs["study"], copies / "study")
    manifest = copies / "manifest.jsonl"
    shutil.copy(inputs["manifest"], manifest)
    png = copies / "chest.png"
    shutil.copy(inputs["png"], png)
    frontal = copies / "study" / "b_frontal.dcm"  # not named on the command line: read from the study folder
    before = {p: p.read_bytes() for p in (manifest, png, frontal)}
    for target in before:
        args = [
            "generate",
            str(tiny_model_dir),
            str(png),
            str(manifest),
            str(copies / "study"),
            "--output",
            str(target),
        ]
        assert main([*args, "--overwrite", "--device", "cpu"]) == 2
        line = _one_error_line(capsys.readouterr().err)
        assert line.startswith(f"error: {target}: is also an input"), line
    assert {p: p.read_bytes() for p in before} == before


def test_generate_refuses_an_existing_output_unless_overwrite(tiny_model_dir, inputs, tmp_path, capsys) -> None:
    out = tmp_path / "reports.jsonl"
    out.write_text("earlier result\n")
    args = ["generate", str(tiny_model_dir), str(inputs["png"]), "--output", str(out), "--device", "cpu"]
    assert main(args) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert str(out) in line and "--overwrite" in line and out.read_text() == "earlier result\n"
    assert main([*args, "--overwrite"]) == 0
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["id"] == "chest" and row["report"] and _partials(tmp_path) == []


@pytest.mark.parametrize("where", ["folder", "under_file"])
def test_generate_and_evaluate_refuse_an_output_under_a_file_or_a_folder(
    where, tiny_model_dir, inputs, tmp_path, monkeypatch, capsys
) -> None:
    import monai_r2gen.evaluation

    blocker = tmp_path / "notes.txt"
    blocker.write_text("x")
    out = tmp_path if where == "folder" else blocker / "reports.jsonl"
    reason = "is a folder" if where == "folder" else f"{blocker} is a file"
    assert main(["generate", str(tiny_model_dir), str(inputs["png"]), "--output", str(out)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: {out}: ") and reason in line

    monkeypatch.setattr(monai_r2gen.evaluation, "evaluate_files", lambda *a, **k: pytest.fail("scored first"))
    predictions, references = tmp_path / "preds.jsonl", tmp_path / "annotation.json"
    predictions.write_text("")
    references.write_text("{}")
    evaluate = ["evaluate", "--predictions", str(predictions), "--references", str(references)]
    assert main([*evaluate, "--output", str(out)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: {out}: ") and reason in line
    assert main([*evaluate, "--output", str(predictions)]) == 2  # the scores must not replace the predictions
    assert "is also an input" in _one_error_line(capsys.readouterr().err)


def _fake_results(results: list[dict], failure: BaseException):
    def iter_results(self, inputs, generation=None):
        yield from results
        raise failure

    return iter_results


def _result(study_id: str) -> dict:
    return {"id": study_id, "report": "No acute disease.", "skipped": [], "views": []}


def test_a_failing_generate_leaves_the_earlier_result(tiny_model_dir, inputs, tmp_path, monkeypatch, capsys) -> None:
    from monai_r2gen.errors import ModelFileError

    out = tmp_path / "reports.jsonl"
    out.write_text("earlier result\n")
    damaged = ModelFileError(tiny_model_dir / "modules.safetensors", "truncated (12 of 4096 bytes)")
    monkeypatch.setattr(ReportInference, "iter_results", _fake_results([_result("chest")], damaged))
    args = ["generate", str(tiny_model_dir), str(inputs["png"]), "--output", str(out), "--overwrite"]
    assert main([*args, "--device", "cpu"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line == f"error: {damaged}"
    assert out.read_text() == "earlier result\n" and _partials(tmp_path) == []


@pytest.mark.parametrize("earlier", [False, True])
def test_ctrl_c_during_generate(earlier, tiny_model_dir, inputs, tmp_path, monkeypatch, capsys) -> None:
    out = tmp_path / "reports.jsonl"
    if earlier:
        out.write_text("earlier result\n")
    monkeypatch.setattr(ReportInference, "iter_results", _fake_results([_result("chest")], KeyboardInterrupt()))
    paths = [str(inputs["png"]), str(inputs["manifest"])]
    args = ["generate", str(tiny_model_dir), *paths, "--output", str(out), "--overwrite", "--device", "cpu"]
    assert main(args) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err
    kept = "left as it was" if earlier else "not written"
    assert err.splitlines()[-1] == f"interrupted after 1 of 2 studies; {out} {kept} (no partial file)"
    assert (out.read_text() == "earlier result\n") if earlier else not out.exists()
    assert _partials(tmp_path) == []

    assert main(["generate", str(tiny_model_dir), *paths, "--device", "cpu"]) == 130  # to standard output
    captured = capsys.readouterr()
    assert [json.loads(line)["id"] for line in captured.out.splitlines()] == ["chest"]
    assert (
        captured.err.splitlines()[-1] == "interrupted after 1 of 2 studies; the lines on standard output are incomplete"
    )
    with pytest.raises(KeyboardInterrupt):  # --debug: the interrupt itself
        main(["--debug", "generate", str(tiny_model_dir), *paths, "--device", "cpu"])


def test_generate_passes_accept_nonstandard(tmp_path, inputs, monkeypatch, capsys) -> None:
    import monai_r2gen.inference

    seen = []

    class Engine:
        load_seconds = None

        def __init__(self, model_dir, **kwargs) -> None:
            seen.append(kwargs)

        def studies(self, paths):
            return []

        def iter_results(self, studies, generation=None):
            return iter(())

    monkeypatch.setattr(monai_r2gen.inference, "ReportInference", Engine)
    (tmp_path / "generator.json").write_text("{}")
    assert main(["generate", str(tmp_path), str(inputs["png"]), "--accept-nonstandard"]) == 1
    assert main(["generate", str(tmp_path), str(inputs["png"])]) == 1
    assert [kwargs["accept_nonstandard"] for kwargs in seen] == [True, False]
    capsys.readouterr()


def test_synth_refuses_a_folder_holding_a_data_set(tmp_path, monkeypatch, capsys) -> None:
    import monai_r2gen.data.synthetic

    calls = []
    monkeypatch.setattr(monai_r2gen.data.synthetic, "generate_dataset", lambda out, **kw: calls.append((out, kw)))
    data = tmp_path / "data"
    data.mkdir()
    (data / "annotation.json").write_text('{"train": []}')
    assert main(["synth", "--out", str(data), "--n", "4"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: {data}: already holds a data set") and "--overwrite" in line
    assert (data / "annotation.json").read_text() == '{"train": []}' and calls == []
    assert main(["synth", "--out", str(data / "annotation.json"), "--n", "4"]) == 2
    assert "is a file" in _one_error_line(capsys.readouterr().err)

    assert main(["synth", "--out", str(data), "--n", "4", "--overwrite", "--formats", "png"]) == 0
    assert main(["synth", "--out", str(tmp_path / "fresh"), "--n", "4"]) == 0
    assert [(out, kw["n_studies"], kw["formats"]) for out, kw in calls] == [
        (str(data), 4, ("png",)),
        (str(tmp_path / "fresh"), 4, ("png", "dcm")),
    ]
    capsys.readouterr()


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["check-data", "m.json", "--spatial-size", "0"], "--spatial-size"),
        (["check-data", "m.json", "--max-views", "0"], "--max-views"),
        (["check-data", "m.json", "--show", "-1"], "--show"),
        (["synth", "--out", "d", "--n", "-5"], "--n"),
        (["synth", "--out", "d", "--n", "many"], "--n"),
        (["synth", "--out", "d", "--image-size", "0"], "--image-size"),
        (["synth", "--out", "d", "--image-size", "100000"], "--image-size"),
        (["synth", "--out", "d", "--lateral-fraction", "2"], "--lateral-fraction"),
        (["synth", "--out", "d", "--lateral-fraction", "nan"], "--lateral-fraction"),
        (["synth", "--out", "d", "--workers", "-1"], "--workers"),
        (["synth", "--out", "d", "--seed", "-1"], "--seed"),
        (["synth", "--out", "d", "--formats", "gif"], "--formats"),
        (["generate", "model", "x.png", "--batch-size", "0"], "--batch-size"),
    ],
)
def test_impossible_numbers_are_argument_errors(argv, option, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and f"argument {option}" in err and "Traceback" not in err


def test_file_errors_are_one_line_and_bugs_keep_their_traceback(monkeypatch, capsys) -> None:
    import monai_r2gen.cli as cli

    def denied(args):
        raise PermissionError(13, "Permission denied", "/data/annotation.json")

    monkeypatch.setattr(cli, "_cmd_check_data", denied)
    assert main(["check-data", "m.json"]) == 2
    assert _one_error_line(capsys.readouterr().err) == "error: /data/annotation.json: Permission denied"
    with pytest.raises(PermissionError):
        main(["--debug", "check-data", "m.json"])

    def wrapped(args):
        try:
            raise IsADirectoryError(21, "Is a directory", "/data/images")
        except OSError as exc:
            raise RuntimeError("Failed to evaluate") from exc

    monkeypatch.setattr(cli, "_cmd_check_data", wrapped)
    assert main(["check-data", "m.json"]) == 2
    assert _one_error_line(capsys.readouterr().err) == "error: /data/images: Is a directory"

    monkeypatch.setattr(cli, "_cmd_check_data", lambda args: 1 / 0)
    with pytest.raises(ZeroDivisionError):  # not a user error: the traceback is the bug report
        main(["check-data", "m.json"])


def test_train_surfaces_our_error_from_inside_monai(tmp_path, monkeypatch, capsys) -> None:
    import monai.bundle

    from monai_r2gen.errors import ManifestError

    config = tmp_path / "configs" / "train.yaml"
    config.parent.mkdir()
    config.write_text("training: []\n")
    annotation = tmp_path / "annotation.json"

    def run(*args, **kwargs):
        try:
            raise ManifestError(annotation, "entry 3 (train) has no 'report'")
        except ManifestError as exc:
            try:
                raise RuntimeError("Failed to evaluate ConfigExpression: $@workflow.run()") from exc
            except RuntimeError as outer:
                raise RuntimeError("Failed to instantiate component 'x.Y' with keywords: a") from outer

    monkeypatch.setattr(monai.bundle, "run", run)
    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert _one_error_line(err) == f"error: {annotation}: entry 3 (train) has no 'report'"
    assert "Failed to" not in err
    with pytest.raises(RuntimeError, match="Failed to instantiate"):
        main(["--debug", "train", "--config", str(config)])


@pytest.mark.parametrize(
    ("annotation", "reason"),
    [
        ('{"train": [{"id": "a", "image_path": ["a.png"]}], "val": [], "test": []}', "study 'a': no report"),
        ('{"train": [{"id": "a", "report": "x"', "invalid JSON at line 1 column 37"),
    ],
)
def test_train_with_a_bad_annotation_names_the_file_in_one_line(annotation, reason, tmp_path) -> None:
    """The real bundle config and command, a broken manifest: one line naming the manifest, no traceback (MONAI's
    config evaluator wraps the error twice). In a process of its own: MONAI's bundle logging binds to the stderr
    it finds."""
    data = tmp_path / "data" / "synthetic"
    data.mkdir(parents=True)
    (data / "annotation.json").write_text(annotation)
    config = Path(__file__).resolve().parents[1] / "bundle" / "configs" / "train.yaml"
    done = subprocess.run([sys.executable, "-m", "monai_r2gen", "train", "--config", str(config),
                           f"bundle_root={tmp_path}"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 2, done.stderr[-3000:]
    err = done.stderr
    line = _one_error_line(err)
    assert line.startswith(f"error: {data / 'annotation.json'}: ") and reason in line, line
    assert "Traceback" not in err and "Failed to" not in err
    assert (data / "annotation.json").read_text() == annotation  # the input is left as it was


@pytest.fixture()
def tiny_bundle(tmp_path: Path) -> Path:
    """A bundle config whose run id only builds the training workflow (never runs it): config errors are cheap."""
    config = tmp_path / "configs" / "train.yaml"
    config.parent.mkdir()
    config.write_text(
        "stage0: {name: stage0, max_iterations: 1}\n"
        "workflow:\n"
        "  _target_: monai_r2gen.engines.workflows.ReportTrainingWorkflow\n"
        "  network: {}\n"
        "  dataset_dir: \"$@bundle_root + '/data'\"\n"
        "  output_dir: \"$@bundle_root + '/runs'\"\n"
        "  stages: ['@stage0']\n"
        "  device: cpu\n"
        "training: ['@workflow']\n"
    )
    return config


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["workflow#foo=1"], "train.yaml: override workflow#foo=1: workflow (ReportTrainingWorkflow) has no setting "
                             "'foo' (its settings: network, dataset_dir, output_dir"),
        (["stage0#foo=1"], "unknown stage settings ['foo']"),
        (["workflow#seed=abc"], "cannot be built: ValueError: invalid literal for int() with base 10: 'abc' (set in "
                                "override workflow#seed=abc)"),
        (["training#foo=1"], "train.yaml: override training#foo=1: 'training' is a list of 1 item; give an index 0..0"),
        (["nope#x=1"], "train.yaml: override nope#x=1: no 'nope' in the config"),
        (["workflow#device=@nope"], "the referring item `@nope` is not defined"),
        (["--run-id", "nope"], "train.yaml: no run id 'nope' (run ids: training)"),
    ],
)  # fmt: skip
def test_train_config_errors_name_the_file_and_the_key(tiny_bundle, extra, expected, capsys) -> None:
    assert main(["train", "--config", str(tiny_bundle), *extra]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith("error: ") and expected in line, line


def test_train_config_errors_in_a_second_file(tiny_bundle, capsys) -> None:
    extra = tiny_bundle.parent / "extra.yaml"
    extra.write_text("workflow#bar: 3\n")
    assert main(["train", "--config", str(tiny_bundle), "--config", str(extra)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "extra.yaml: workflow#bar: ReportTrainingWorkflow has no setting 'bar' (its settings: network," in line
    extra.write_text("workflow: [unclosed\n")
    assert main(["train", "--config", str(tiny_bundle), "--config", str(extra)]) == 2
    assert "extra.yaml: not a readable bundle config" in _one_error_line(capsys.readouterr().err)
