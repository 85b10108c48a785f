"""Tests of the MONAI bundle: metadata, logging config, and every run id end to end on a tiny budget."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundle"
CONFIGS = BUNDLE / "configs"

# tiny models (merged over an overlay's own network settings by _overlay_network)
_TINY_NETWORK = {
    "encoder": "small_cnn", "image_size": 64, "max_views": 2, "max_length": 128, "num_queries": 4,
    "tokenizer_vocab_size": 300, "seed": 0,
    "llm_options": {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                    "num_key_value_heads": 2, "intermediate_size": 128, "max_position_embeddings": 256},
    "generation": {"max_new_tokens": 12, "num_beams": 1, "do_sample": False, "repetition_penalty": 1.0},
}  # fmt: skip


def _overlay_network(overlay: dict) -> dict:
    """The tiny models with an overlay's own network settings (what it sets beyond train.yaml's references)."""
    own = {k: v for k, v in overlay["network_config"].items() if not (isinstance(v, str) and v.startswith("@"))}
    return {**own, **_TINY_NETWORK}


# merged after train.yaml: tiny synthetic data, tiny models, a few iterations per stage
TINY_OVERRIDES = {
    "image_size": 64,
    "max_length": 128,
    "synthetic": {"n_studies": 24, "seed": 1, "image_size": 64, "formats": ["png"], "workers": 1},
    "network_config": _TINY_NETWORK,  # the embedded default's heads come from embedded_default_config
    "encoder_warmup": {"name": "encoder_warmup", "batch_size": 8, "max_iterations": 3, "lr": 0.002, "validate": False},
    "stage0": {"name": "stage0", "batch_size": 8, "max_iterations": 3, "lr": 0.002, "validate": False,
               "text_only": True, "train_encoder": True},
    "stage1": {"name": "stage1", "batch_size": 8, "max_iterations": 3, "lr": 0.001, "val_interval": 3,
               "val_epoch_level": False, "selection": "CE-14 micro-F1"},
    "stage2": {"name": "stage2", "batch_size": 8, "max_iterations": 3, "lr": 0.001, "lora": {"r": 4, "alpha": 8},
               "val_interval": 3, "val_epoch_level": False, "selection": "CE-14 micro-F1"},
    "workflow#tensorboard": False,
}  # fmt: skip


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _bundle(run_id: str, configs: list[Path], root: Path, *overrides: str, launcher: list[str] | None = None):
    files = "[" + ",".join(f"'{c}'" for c in configs) + "]"
    cmd = [*(launcher or [sys.executable, "-m"]), "monai.bundle", "run", run_id, "--config_file", files,
           "--meta_file", str(CONFIGS / "metadata.json"), "--logging_file", str(CONFIGS / "logging.conf"),
           "--bundle_root", str(root), *overrides]  # fmt: skip
    proc = subprocess.run(cmd, cwd=root, env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{run_id} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    return proc


def test_metadata_verifies_offline_against_the_shipped_schema() -> None:
    pytest.importorskip("jsonschema", reason="monai's verify_metadata needs jsonschema")
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "verify_metadata", "--meta_file", str(CONFIGS / "metadata.json"),
         "--filepath", str(CONFIGS / "meta_schema_20240725.json")],
        capture_output=True, text=True, timeout=300, env=_env(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "metadata is verified with no error" in proc.stdout + proc.stderr


def test_logging_conf_passes_monai_validation() -> None:
    from monai.bundle.workflows import _reject_executable_logging_config

    assert "StreamHandler" in _reject_executable_logging_config(str(CONFIGS / "logging.conf"))


def test_configs_define_their_run_ids() -> None:
    train = yaml.safe_load((CONFIGS / "train.yaml").read_text())
    assert {"training", "train_encoder_warmup", "train_stage0", "train_stage1", "train_stage2"} <= set(train)
    names = ["encoder_warmup", "stage0", "stage1", "stage2"]
    assert [train[name]["name"] for name in names] == names
    assert train["workflow"]["stages"] == [f"@{name}" for name in names]
    assert "evaluating" in yaml.safe_load((CONFIGS / "evaluate.yaml").read_text())
    assert "inference" in yaml.safe_load((CONFIGS / "inference.yaml").read_text())
    assert yaml.safe_load((CONFIGS / "multi_gpu_train.yaml").read_text())["workflow#distributed"] is True
    assert (BUNDLE / "LICENSE").read_text().lstrip().startswith("Apache License")


def test_default_stages_are_the_bundle_recipe(tmp_path: Path) -> None:
    """The Python API's default recipe (``DEFAULT_STAGES`` over ``DEFAULT_STAGE_DEFAULTS``) is train.yaml's."""
    from monai.bundle import ConfigParser

    from monai_r2gen.engines.stage_settings import DEFAULT_STAGE_DEFAULTS, DEFAULT_STAGES
    from monai_r2gen.engines.workflows import ReportTrainingWorkflow

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.yaml"))
    assert parser.get_parsed_content("stage_defaults") == DEFAULT_STAGE_DEFAULTS
    names = ["encoder_warmup", "stage0", "stage1", "stage2"]
    assert [parser.get_parsed_content(name) for name in names] == DEFAULT_STAGES
    workflow = ReportTrainingWorkflow({}, dataset_dir=tmp_path / "data", output_dir=tmp_path / "run")
    assert [(s.name, s.batch_size, s.pack_sequences) for s in workflow.stages] == [(n, 32, True) for n in names]
    given = ReportTrainingWorkflow({}, dataset_dir=tmp_path / "data", output_dir=tmp_path / "run",
                                   stages=[{"name": "stage0"}])  # fmt: skip
    assert given.stages[0].batch_size == 8  # given stages take no recipe defaults


@pytest.fixture(scope="module")
def trained_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``training`` run end to end on the embedded path (synthetic data generated into an empty dataset_dir)."""
    root = tmp_path_factory.mktemp("bundle")
    tiny = root / "tiny.yaml"
    tiny.write_text(yaml.safe_dump(TINY_OVERRIDES))
    _bundle("training", [CONFIGS / "train.yaml", tiny], root, "--device", "cpu")
    return root


@pytest.mark.slow
def test_training_runs_every_stage_and_saves_the_model(trained_bundle: Path) -> None:
    root = trained_bundle
    assert (root / "data" / "synthetic" / "annotation.json").is_file()
    for stage in ("encoder_warmup", "stage0", "stage1", "stage2"):
        marker = json.loads((root / "runs" / "training" / "stages" / stage / "stage_complete.json").read_text())
        assert marker["iterations"] == 3
    model = root / "models" / "report_generator"
    assert (model / "generator.json").is_file() and (model / "llm_lora" / "adapter_config.json").is_file()
    summary = json.loads((model / "training_summary.json").read_text())
    assert list(summary["stages"]) == ["encoder_warmup", "stage0", "stage1", "stage2"]
    config = json.loads((model / "generator.json").read_text())["config"]
    # the embedded default: a dense attribute head taught by the phantoms' boxes fills 30 slot prompts
    assert config["attribute_slots"] and config["attribute_source"] == "dense" and config["attribute_box_weight"] > 0
    assert not config["finding_head"] and not config["finding_prompts"]
    assert json.loads((model / "generator.json").read_text())["num_image_tokens"] == 4 + 30
    reports = root / "runs" / "training" / "stages" / "stage2" / "reports" / "stage2_latest.jsonl"
    assert set(json.loads(reports.read_text().splitlines()[0])) == {"id", "reference", "prediction"}


@pytest.mark.slow
def test_evaluating_writes_scores_and_settings(trained_bundle: Path) -> None:
    root = trained_bundle
    _bundle("evaluating", [CONFIGS / "evaluate.yaml"], root, "--device", "cpu")
    result = json.loads((root / "eval" / "test" / "scores.json").read_text())
    scores = result["scores"]
    assert {"BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "CE-14 micro-F1", "CE-5 macro-F1"} <= set(scores)
    assert all(0.0 <= v <= 10.0 for v in scores.values())
    assert result["settings"]["split"] == "test" and result["settings"]["num_reports"] > 0
    annotation = json.loads((root / "data" / "synthetic" / "annotation.json").read_text())
    assert result["settings"]["num_reports"] == len(annotation["test"])
    assert len((root / "eval" / "test" / "reports_test.jsonl").read_text().splitlines()) == len(annotation["test"])
    # the phantoms' findings.json: finding-attribute scores and the paraphrase ceiling beside BLEU-4
    assert result["settings"]["findings"].endswith("findings.json")
    assert {"attr/mention_recall", "ceiling/BLEU-4", "BLEU-4/ceiling"} <= set(scores)
    assert 0.0 < scores["ceiling/BLEU-4"] < 1.0 and result["attributes"]["per_kind"]
    assert scores["BLEU-4/ceiling"] == pytest.approx(scores["BLEU-4"] / scores["ceiling/BLEU-4"])
    # one scoring path: the written reports scored by `evaluate` give the same scores and intervals
    assert result["settings"]["nlg"]["clean_style"] == "mimic_cxr" and result["settings"]["bootstrap"]["draws"] == 1000
    from monai_r2gen.evaluation import evaluate_files

    written = root / "eval" / "test" / "reports_test.jsonl"
    again = evaluate_files(written, root / "data" / "synthetic" / "annotation.json", split="test",
                           findings=result["settings"]["findings"])  # fmt: skip
    for key, value in again["scores"].items():
        assert scores[key] == pytest.approx(value, abs=1e-12), key
    for key, interval in again["intervals"].items():
        assert result["intervals"][key] == pytest.approx(interval, abs=1e-12), key


@pytest.mark.slow
def test_finding_prompts_overlay_trains_and_evaluates(tmp_path: Path) -> None:
    """configs/finding_prompts.yaml merged after train.yaml: the earlier default, a finding head whose 14 binarised
    probabilities are 14 prompts, no attribute head; evaluating still scores the sides and sizes."""
    overlay = yaml.safe_load((CONFIGS / "finding_prompts.yaml").read_text())
    net = overlay["network_config"]
    assert net["finding_head"] and net["finding_prompts"] and not net["attribute_head"] and not net["attribute_slots"]
    tiny = dict(TINY_OVERRIDES)
    tiny["network_config"] = _overlay_network(overlay)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny))
    _bundle("training", [CONFIGS / "train.yaml", CONFIGS / "finding_prompts.yaml", path], tmp_path, "--device", "cpu")
    model = tmp_path / "models" / "report_generator"
    saved = json.loads((model / "generator.json").read_text())
    assert saved["config"]["finding_prompts"] and not saved["config"]["attribute_head"]
    assert not saved["config"]["attribute_slots"]
    assert saved["num_image_tokens"] == 4 + 14  # 4 visual prompts and 14 finding prompts
    _bundle("evaluating", [CONFIGS / "evaluate.yaml"], tmp_path, "--device", "cpu")
    scores = json.loads((tmp_path / "eval" / "test" / "scores.json").read_text())["scores"]
    assert {"attr/mention_recall", "CE-14 micro-F1", "BLEU-4/ceiling"} <= set(scores)


@pytest.mark.slow
def test_inference_on_a_dicom_and_a_png(trained_bundle: Path, rg1_uncompressed: Path, tmp_path: Path) -> None:
    root = trained_bundle
    png = next((root / "data" / "synthetic" / "images").rglob("*.png"))
    inputs = tmp_path / "inputs"
    (inputs / "dicom_study").mkdir(parents=True)
    shutil.copy(rg1_uncompressed, inputs / "dicom_study" / "view1.dcm")
    shutil.copy(png, inputs / "frontal.png")
    out = tmp_path / "reports"
    _bundle(
        "inference",
        [CONFIGS / "inference.yaml"],
        root,
        "--input_path",
        f"['{inputs / 'dicom_study'}','{inputs / 'frontal.png'}']",
        "--output_dir",
        str(out),
        "--device",
        "cpu",
    )
    rows = [json.loads(line) for line in (out / "reports.jsonl").read_text().splitlines()]
    import pydicom

    uid = str(pydicom.dcmread(rg1_uncompressed, stop_before_pixels=True).StudyInstanceUID)
    assert [r["id"] for r in rows] == [uid, "frontal"]  # a DICOM study is named by its Study Instance UID
    assert all(isinstance(r["report"], str) and r["report"] for r in rows)
    assert rows[0]["views"] == [str(inputs / "dicom_study" / "view1.dcm")]
    assert (out / f"{uid}.txt").read_text().strip() == rows[0]["report"]
    assert (out / "frontal.txt").is_file()


@pytest.mark.slow
def test_multi_gpu_train_with_two_cpu_processes(tmp_path: Path) -> None:
    if shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists():
        pytest.skip("torchrun not found")
    torchrun = str(Path(sys.executable).parent / "torchrun")
    tiny = dict(TINY_OVERRIDES)
    tiny["encoder_warmup"] = {**tiny["encoder_warmup"], "max_iterations": 2, "batch_size": 4}
    tiny["stage0"] = {**tiny["stage0"], "max_iterations": 2, "batch_size": 4}
    tiny["stage1"] = {**tiny["stage1"], "max_iterations": 2, "batch_size": 4, "validate": False}
    tiny["stage2"] = {**tiny["stage2"], "max_iterations": 2, "batch_size": 4, "validate": False}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny))
    launcher = [torchrun, "--standalone", "--nnodes=1", "--nproc_per_node=2", "-m"]
    configs = [CONFIGS / "train.yaml", tmp_path / "tiny.yaml", CONFIGS / "multi_gpu_train.yaml"]
    (tmp_path / "ddp").mkdir()
    _bundle("training", configs, tmp_path / "ddp", launcher=launcher)
    model = tmp_path / "ddp" / "models" / "report_generator"
    assert (model / "generator.json").is_file()
    for stage in ("encoder_warmup", "stage0", "stage1", "stage2"):
        stage_dir = tmp_path / "ddp" / "runs" / "training" / "stages" / stage
        assert json.loads((stage_dir / "stage_complete.json").read_text())["iterations"] == 2
    # the same run with fully_shard in stage 0 (the whole LLM trained) and stage 2 (LoRA): the same weights
    (tmp_path / "fsdp").mkdir()
    _bundle("training", configs, tmp_path / "fsdp", "--stage0#parallel", "fsdp", "--stage2#parallel", "fsdp",
            launcher=launcher)  # fmt: skip
    from safetensors.torch import load_file

    sharded = tmp_path / "fsdp" / "models" / "report_generator"
    files = sorted(f.relative_to(model) for f in model.rglob("*.safetensors"))
    assert files and files == sorted(f.relative_to(sharded) for f in sharded.rglob("*.safetensors"))
    for name in files:
        a, b = load_file(str(model / name)), load_file(str(sharded / name))
        assert a.keys() == b.keys()
        for key in a:
            # AdamW turns a gradient of rounding noise (the CNN's conv biases before batch norm, a few dead GELU
            # inputs of the attribute head) into a full step: a few such elements may differ by up to ~lr per step,
            # and the batch norm's running means follow those biases (the sharded copy's CNN is channels-first, the
            # plain one channels-last: other rounding)
            off = ~torch.isclose(b[key].float(), a[key].float(), atol=1e-4, rtol=1e-3)
            noisy = key.endswith(("conv.bias", "running_mean"))
            assert float(off.float().mean()) <= 0.01 or noisy, f"{name}: {key}"
            torch.testing.assert_close(b[key], a[key], atol=5e-3, rtol=1e-3, msg=f"{name}: {key}")


@pytest.mark.slow
def test_visual_prompts_overlay_trains_the_attribute_head(tmp_path: Path) -> None:
    """configs/visual_prompts.yaml merged after train.yaml: visual prompts only, attribute head, prompts shown in
    stage 0, encoder frozen after the warm-up (feature cache)."""
    overlay = yaml.safe_load((CONFIGS / "visual_prompts.yaml").read_text())
    assert overlay["network_config"]["attribute_head"] and not overlay["network_config"]["finding_prompts"]
    assert overlay["stage0"]["text_only"] is False and overlay["stage0"]["train_projector"] is True
    tiny = dict(TINY_OVERRIDES)
    tiny["network_config"] = {**_overlay_network(overlay), "num_queries": 9}
    tiny["stage0"] = {**TINY_OVERRIDES["stage0"], "text_only": False, "train_encoder": False, "train_projector": True}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny))
    _bundle("training", [CONFIGS / "train.yaml", CONFIGS / "visual_prompts.yaml", path], tmp_path, "--device", "cpu")
    model = tmp_path / "models" / "report_generator"
    config = json.loads((model / "generator.json").read_text())["config"]
    assert config["attribute_head"] and config["projector"] == "attention_pool" and not config["finding_prompts"]
    summary = json.loads((model / "training_summary.json").read_text())
    assert summary["stages"]["stage0"]["feature_cache"]["hits"] > 0  # frozen encoder: tokens cached
    from safetensors.torch import load_file

    assert any(k.startswith("attribute_head.") for k in load_file(str(model / "modules.safetensors")))
