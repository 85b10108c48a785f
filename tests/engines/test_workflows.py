"""Tests of the training / evaluation workflows and their handlers."""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from PIL import Image

from monai_r2gen.engines.handlers import (
    GradientClipHandler,
    ReportScores,
    ReportWriter,
    StageCompletion,
    TrainableState,
)
from monai_r2gen.engines.workflows import (
    ReportBatchPreparer,
    ReportTrainingWorkflow,
    ResumableSampler,
    StageSettings,
    latest_checkpoint,
)
from monai_r2gen.networks.generator import RadiologyReportGenerator

# a tiny model: 64 px small CNN, K = 4 prompts, a one-layer Llama of width 64
TINY_NETWORK = {
    "image_size": 64,
    "max_length": 80,
    "num_queries": 4,
    "tokenizer_vocab_size": 300,
    "llm_options": {
        "model_type": "llama", "hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
        "num_key_value_heads": 2, "intermediate_size": 128, "max_position_embeddings": 256,
    },
    "generation": {"max_new_tokens": 12, "num_beams": 1, "do_sample": False, "repetition_penalty": 1.0},
}  # fmt: skip


def make_tiny_dataset(root: Path, n: int = 40, size: int = 64, seed: int = 0) -> Path:
    """PNG studies whose report states two visible findings (effusion: bright lower half; cardiomegaly: dark band)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    annotation: dict[str, list] = {"train": [], "val": [], "test": []}
    for i in range(n):
        effusion, cardio = bool(rng.random() < 0.5), bool(rng.random() < 0.5)
        pixels = (rng.random((size, size)) * 60 + 60).astype(np.uint8)
        if effusion:
            pixels[size // 2 :, :] = 220
        if cardio:
            pixels[:, : size // 3] = 10
        Image.fromarray(pixels).save(root / "images" / f"s{i}.png")
        report = ("there is a pleural effusion ." if effusion else "no pleural effusion .") + (
            " the heart is enlarged ." if cardio else " heart size is normal ."
        )
        split = "train" if i < 0.7 * n else ("val" if i < 0.85 * n else "test")
        annotation[split].append({"id": f"s{i}", "report": report, "image_path": [f"images/s{i}.png"]})
    (root / "annotation.json").write_text(json.dumps(annotation))
    return root


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny_data"))


# ----------------------------------------------------------------------------------------------------------------
# small parts
# ----------------------------------------------------------------------------------------------------------------


def _batch() -> dict:
    return {
        "image": torch.rand(2, 2, 1, 8, 8),
        "view_mask": torch.tensor([[True, False], [True, True]]),
        "input_ids": torch.tensor([[1, 5, 6, 2], [1, 7, 2, 0]]),
        "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]),
        "labels": torch.tensor([[-100, 5, 6, 2], [-100, 7, 2, -100]]),
        "report": ["a b", "c"],
        "id": ["x", "y"],
    }


def test_batch_preparer_modes() -> None:
    images, refs, args, kwargs = ReportBatchPreparer("train")(_batch(), "cpu")
    assert images.shape == (2, 2, 1, 8, 8) and refs == ["a b", "c"] and args == ()
    assert set(kwargs) == {"view_mask", "input_ids", "attention_mask", "labels"}

    images, _, _, kwargs = ReportBatchPreparer("text")(_batch(), "cpu")
    assert images is None and "view_mask" not in kwargs and torch.equal(kwargs["labels"], _batch()["labels"])

    images, _, _, kwargs = ReportBatchPreparer("generate")(_batch(), "cpu")
    assert images.shape[0] == 2 and set(kwargs) == {"view_mask"}

    labelled = {**_batch(), "finding_labels": torch.zeros(2, 14)}
    _, _, _, kwargs = ReportBatchPreparer("train")(labelled, "cpu")
    assert kwargs["finding_labels"].shape == (2, 14) and "teacher_forcing" not in kwargs
    assert "finding_labels" not in ReportBatchPreparer("generate")(labelled, "cpu")[3]
    # teacher forcing reaches the generator with the labels of an image batch, not without labels or in text mode
    assert ReportBatchPreparer("train", teacher_forcing=0.5)(labelled, "cpu")[3]["teacher_forcing"] == 0.5
    assert "teacher_forcing" not in ReportBatchPreparer("train", teacher_forcing=0.5)(_batch(), "cpu")[3]
    assert "teacher_forcing" not in ReportBatchPreparer("text", teacher_forcing=0.5)(labelled, "cpu")[3]
    with pytest.raises(ValueError, match="teacher_forcing"):
        ReportBatchPreparer("train", teacher_forcing=1.5)
    # text mode: images and labels feed the finding head only, the LLM sees no image positions
    images, _, _, kwargs = ReportBatchPreparer("text")(labelled, "cpu")
    assert images.shape == (2, 2, 1, 8, 8) and kwargs["text_only"] is True
    assert kwargs["finding_labels"].shape == (2, 14) and kwargs["view_mask"].shape == (2, 2)
    text_labelled = {k: v for k, v in labelled.items() if k != "image"}  # labels for the finding prompts only
    images, _, _, kwargs = ReportBatchPreparer("text")(text_labelled, "cpu")
    assert images is None and kwargs["text_only"] is True and "view_mask" not in kwargs
    assert kwargs["finding_labels"].shape == (2, 14)

    images, _, _, kwargs = ReportBatchPreparer("findings")(labelled, "cpu")
    assert images.shape == (2, 2, 1, 8, 8) and kwargs["findings_only"] is True
    assert set(kwargs) == {"view_mask", "finding_labels", "findings_only"}

    cached = {**_batch(), "image_tokens": torch.rand(2, 2, 16, 32)}
    del cached["image"]
    images, _, _, kwargs = ReportBatchPreparer("train")(cached, "cpu")
    assert images is None and kwargs["visual_tokens"].shape == (2, 2, 16, 32)
    with pytest.raises(ValueError):
        ReportBatchPreparer("bogus")


def test_stage_settings_defaults_and_unknown_keys() -> None:
    stage = StageSettings({"name": "stage1", "lr": 0.01})
    assert stage.lr == 0.01 and stage.batch_size == 8 and stage.selection == "bleu4_cider"
    with pytest.raises(ValueError, match="unknown stage settings"):
        StageSettings({"name": "stage1", "learning_rate": 0.01})
    with pytest.raises(ValueError, match="name"):
        StageSettings({})


def test_stage_settings_read_written_out_booleans() -> None:
    # `--stage0#enabled false` on the bundle command line arrives as the string 'false', which Python takes as true
    stage = StageSettings({"name": "stage0", "enabled": "false", "validate": "True", "augment": 1, "text_only": "no"})
    assert stage.enabled is False and stage.validate is True and stage.augment is True and stage.text_only is False
    modes = StageSettings({"name": "stage1", "train_encoder": "lora", "feature_cache": "auto"})
    assert modes.train_encoder == "lora" and modes.feature_cache == "auto"
    assert StageSettings({"name": "stage1", "train_encoder": "FALSE"}).train_encoder is False
    with pytest.raises(ValueError, match="stage stage1: validate must be true or false, got 'maybe'"):
        StageSettings({"name": "stage1", "validate": "maybe"})


def test_trainable_state_holds_only_trainable_tensors() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    model[0].requires_grad_(False)
    state = TrainableState(model)
    saved = state.state_dict()
    assert set(saved) == {"1.weight", "1.bias"}
    with torch.no_grad():
        model[1].weight.zero_()
    state.load_state_dict(saved)
    assert torch.equal(model[1].weight, saved["1.weight"]) and model[1].weight.abs().sum() > 0
    with pytest.raises(KeyError):
        state.load_state_dict({"1.weight": saved["1.weight"]})
    with pytest.raises(ValueError, match="shape"):
        state.load_state_dict({"1.weight": torch.zeros(5, 5), "1.bias": saved["1.bias"]})


def test_trainable_state_carries_the_running_statistics_of_trained_modules() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.Conv2d(2, 2, 1),
                                torch.nn.BatchNorm2d(2))  # fmt: skip
    model[2:].requires_grad_(False)  # the second block is frozen: its statistics are not part of the stage
    state = TrainableState(model)
    assert state.buffer_names == ["1.running_mean", "1.running_var", "1.num_batches_tracked"]
    model.train()
    model(torch.rand(4, 1, 6, 6) * 5)
    saved = state.state_dict()
    assert set(saved) == {"0.weight", "0.bias", "1.weight", "1.bias", *state.buffer_names}
    model[1].reset_running_stats()
    state.load_state_dict(saved)
    assert torch.equal(model[1].running_mean, saved["1.running_mean"]) and model[1].running_mean.abs().sum() > 0
    assert int(model[1].num_batches_tracked) == 1
    # checkpoints written before the statistics were part of the view still load
    state.load_state_dict({k: v for k, v in saved.items() if "running" not in k and "tracked" not in k})


def test_sampler_groups_batches_by_length_and_stays_resumable() -> None:
    lengths = [(i * 37) % 101 for i in range(70)]
    sampler = ResumableSampler(list(range(70)), seed=5, lengths=lengths, batch_size=8, group_batches=4)
    sampler.set_epoch(2)
    order = list(sampler)
    assert sorted(order) == list(range(70))  # every sample once
    batches = [order[i : i + 8] for i in range(0, 70, 8)]
    assert len(batches[-1]) == 70 % 8  # the partial batch stays last
    padded = sum(8 * max(lengths[i] for i in b) for b in batches[:-1])
    plain = list(ResumableSampler(list(range(70)), seed=5))
    padded_plain = sum(8 * max(lengths[i] for i in plain[k : k + 8]) for k in range(0, 64, 8))
    assert padded < 0.85 * padded_plain  # grouping cuts the padding
    again = ResumableSampler(list(range(70)), seed=5, lengths=lengths, batch_size=8, group_batches=4)
    again.set_epoch(2)
    again.skip(16)
    assert list(again) == order[16:]  # same order per (seed, epoch); resume skips what was seen
    sampler.set_epoch(3)
    assert list(sampler) != order
    with pytest.raises(ValueError, match="lengths"):
        ResumableSampler(list(range(5)), lengths=[1, 2])


def test_resumable_sampler_is_deterministic_per_epoch_and_skips() -> None:
    data = list(range(20))
    first, second = ResumableSampler(data, seed=3), ResumableSampler(data, seed=3)
    first.set_epoch(1)
    second.set_epoch(1)
    full = list(first)
    second.skip(8)
    assert list(second) == full[8:]
    assert list(second) == full  # skipping applies once
    first.set_epoch(2)
    assert list(first) != full


def test_gradient_clip_handler_clips_on_step_iterations() -> None:
    param = torch.nn.Parameter(torch.zeros(4))
    optimizer = torch.optim.SGD([param], lr=0.1)
    engine = Engine(lambda e, b: None)
    engine.optimizer = optimizer
    engine.accumulation_steps = 2
    engine.state.epoch_length = 4
    handler = GradientClipHandler(max_norm=1.0)
    param.grad = torch.full((4,), 10.0)
    engine.state.iteration = 1  # accumulating: no clipping yet
    handler(engine)
    assert float(param.grad.norm()) == pytest.approx(20.0)
    engine.state.iteration = 2  # optimizer steps now
    handler(engine)
    assert float(param.grad.norm()) == pytest.approx(1.0, rel=1e-4)


def test_report_scores_and_writer(tmp_path: Path) -> None:
    refs = ["there is a large right pleural effusion .", "the heart is enlarged . no pleural effusion ."]
    batches = [
        {"pred": [refs[0]], "label": [refs[0]], "id": ["a"]},
        {"pred": ["no acute cardiopulmonary process ."], "label": [refs[1]], "id": ["b"]},
    ]
    engine = Engine(lambda e, b: {"pred": b["pred"], "label": b["label"]})
    metric = ReportScores(selection="bleu4_cider")
    metric.attach(engine, "bleu4_cider")
    writer = ReportWriter(tmp_path, prefix="val")
    writer.attach(engine)
    engine.run(batches, max_epochs=1)
    metrics = engine.state.metrics
    assert {"BLEU-4", "CIDEr", "ROUGE-L", "CE-14 micro-F1", "CE-5 macro-F1"} <= set(metrics)
    assert metrics["bleu4_cider"] == pytest.approx(0.5 * metrics["BLEU-4"] + 0.5 * metrics["CIDEr"])
    assert 0.0 < metrics["BLEU-4"] < 1.0
    # finding attributes, the truth read from the references: the effusion is named on its side, the heart not at all
    assert metrics["attr/pleural_effusion/side_accuracy"] == 1.0 and metrics["attr/mention_recall"] == 0.5
    assert not any(k.startswith("per_label/") for k in metrics)
    assert any(k.startswith("per_label/") for k in metric.last_scores)
    rows = [json.loads(line) for line in (tmp_path / "val_epoch0001.jsonl").read_text().splitlines()]
    assert rows == [
        {"id": "a", "reference": refs[0], "prediction": refs[0]},
        {"id": "b", "reference": refs[1], "prediction": "no acute cardiopulmonary process ."},
    ]
    assert (tmp_path / "val_latest.jsonl").read_text() == (tmp_path / "val_epoch0001.jsonl").read_text()

    with pytest.raises(KeyError, match="selection score"):
        bad = ReportScores(selection="nonexistent")
        bad.update((["a"], ["a"]))
        bad.compute()


def test_latest_checkpoint_picks_highest_iteration(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path) is None
    for name in ("last_checkpoint_iteration=40.pt", "last_checkpoint_final_iteration=43.pt", "best.pt"):
        (tmp_path / name).write_bytes(b"")
    assert latest_checkpoint(tmp_path).name == "last_checkpoint_final_iteration=43.pt"


# ----------------------------------------------------------------------------------------------------------------
# whole workflows (tiny models)
# ----------------------------------------------------------------------------------------------------------------


def _workflow(data: Path, out: Path, stages: list[dict], **kwargs) -> ReportTrainingWorkflow:
    return ReportTrainingWorkflow(
        dict(TINY_NETWORK), dataset_dir=data, output_dir=out, stages=stages, tensorboard=False, seed=7, **kwargs
    )


def _trainable(workflow: ReportTrainingWorkflow) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in TrainableState(workflow.network).state_dict().items()}


class _KilledError(Exception):
    """Stands for the process being killed mid-stage (Ctrl-C, the job scheduler)."""


@contextlib.contextmanager
def _killed_after(iterations: int):
    """Every trainer the workflow builds raises :class:`_KilledError` once ``iterations`` iterations are done."""
    from monai_r2gen.engines import workflows

    build = workflows.create_stage_trainer

    def _build(*args, **kwargs):
        trainer = build(*args, **kwargs)

        def _kill(engine):
            raise _KilledError(f"killed after iteration {engine.state.iteration}")

        trainer.add_event_handler(Events.ITERATION_COMPLETED(once=iterations), _kill)
        return trainer

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(workflows, "create_stage_trainer", _build)
        yield


@pytest.mark.slow
def test_resume_after_interruption_matches_uninterrupted_run(tiny_data: Path, tmp_path: Path) -> None:
    # stage 2 (LoRA with dropout, projector), 7 iterations of batch 8 over 28 studies: 4 iterations per epoch, so the
    # interruption after 3 iterations is mid-epoch
    stages = [{"name": "stage2", "batch_size": 8, "max_iterations": 7, "lr": 5e-3, "validate": False,
               "lora": {"r": 4, "alpha": 8, "dropout": 0.1}, "checkpoint_interval": 1}]  # fmt: skip
    straight = _workflow(tiny_data, tmp_path / "straight", stages)
    result = straight.run()
    assert result["complete"] and result["stages"]["stage2"]["iterations"] == 7
    reference = _trainable(straight)

    interrupted = _workflow(tiny_data, tmp_path / "resumed", stages)
    with _killed_after(3), pytest.raises(_KilledError):
        interrupted.run()
    assert not StageCompletion.is_complete(tmp_path / "resumed" / "stages" / "stage2")
    assert not (tmp_path / "resumed" / "model").exists()
    moved = _trainable(interrupted)
    assert any(not torch.allclose(moved[k], reference[k], atol=1e-6) for k in reference)

    resumed = _workflow(tiny_data, tmp_path / "resumed", stages)
    result = resumed.run()
    assert result["complete"] and result["stages"]["stage2"]["iterations"] == 7
    weights = _trainable(resumed)
    assert set(weights) == set(reference)
    for name, value in reference.items():
        torch.testing.assert_close(weights[name], value, atol=1e-5, rtol=1e-4)
    assert (tmp_path / "resumed" / "model" / "generator.json").is_file()


@pytest.mark.slow
def test_named_stages_run_alone_in_order(tiny_data: Path, tmp_path: Path) -> None:
    """``run("stage0")`` (the bundle's ``train_stage0``) trains that stage, saves the model and leaves the later
    stages; a later stage alone needs the earlier ones complete."""
    stages = [{"name": name, "batch_size": 8, "max_iterations": 2, "lr": 1e-3, "validate": False}
              for name in ("stage0", "stage1", "stage2")]  # fmt: skip
    with pytest.raises(ValueError, match="stage stage0 must run before"):
        _workflow(tiny_data, tmp_path / "run", stages).run("stage2")
    first = _workflow(tiny_data, tmp_path / "run", stages).run("stage0")
    assert first["complete"] and set(first["stages"]) == {"stage0"}
    assert (tmp_path / "run" / "model" / "generator.json").is_file()
    assert not (tmp_path / "run" / "stages" / "stage1").exists()
    second = _workflow(tiny_data, tmp_path / "run", stages).run(["stage1"])
    assert second["complete"] and set(second["stages"]) == {"stage1"}  # stage 0 restored, not trained again
    assert not StageCompletion.is_complete(tmp_path / "run" / "stages" / "stage2")


@pytest.mark.slow
def test_stages_hand_over_and_completed_stages_are_skipped(tiny_data: Path, tmp_path: Path) -> None:
    stages = [
        {"name": "stage0", "batch_size": 8, "max_iterations": 3, "lr": 1e-3, "validate": False},
        {"name": "stage1", "batch_size": 8, "max_iterations": 3, "lr": 1e-3, "val_interval": 2,
         "val_epoch_level": False, "selection": "CE-14 micro-F1"},
    ]  # fmt: skip
    workflow = _workflow(tiny_data, tmp_path / "run", stages)
    result = workflow.run()
    assert result["complete"]
    stage1 = result["stages"]["stage1"]
    # the encoder is frozen in stage 1 by default: its tokens come from the feature cache, encoded once
    assert stage1["feature_cache"]["misses"] == 0 and stage1["feature_cache"]["hits"] > 0
    for name in ("stage0", "stage1"):
        marker = json.loads((tmp_path / "run" / "stages" / name / "stage_complete.json").read_text())
        assert marker["stage"] == name and marker["iterations"] == 3
    # validation reports written at iteration 2 and at the end of the budget
    reports = sorted(p.name for p in (tmp_path / "run" / "stages" / "stage1" / "reports").glob("stage1_iter*.jsonl"))
    assert reports == ["stage1_iter0000002.jsonl", "stage1_iter0000003.jsonl"]
    row = json.loads((tmp_path / "run" / "stages" / "stage1" / "reports" / reports[0]).read_text().splitlines()[0])
    assert set(row) == {"id", "reference", "prediction"}
    assert (tmp_path / "run" / "stages" / "stage1" / "checkpoints" / "best.pt").is_file()
    final = _trainable(workflow)

    # a second run finds both stages complete, trains nothing and rebuilds the same model
    again = _workflow(tiny_data, tmp_path / "run", stages)
    result = again.run()
    assert result["complete"] and result["stages"] == {}
    restored = _trainable(again)
    for name, value in final.items():
        torch.testing.assert_close(restored[name], value)


@pytest.mark.slow
def test_finding_head_trains_on_report_labels(tiny_data: Path, tmp_path: Path) -> None:
    # stage 1 with a frozen encoder: the head learns from cached encoder tokens and the labels of the reports
    stages = [{"name": "stage1", "batch_size": 8, "max_iterations": 3, "lr": 1e-2, "validate": False}]
    workflow = ReportTrainingWorkflow(
        {**TINY_NETWORK, "finding_head": True}, dataset_dir=tiny_data, output_dir=tmp_path / "run", stages=stages,
        tensorboard=False, seed=7,
    )  # fmt: skip
    network = workflow.build_network()
    before = network.finding_head.weight.detach().clone()
    result = workflow.run()
    assert result["complete"] and result["stages"]["stage1"]["feature_cache"]["hits"] > 0
    assert not torch.allclose(network.finding_head.weight, before)
    loaded = RadiologyReportGenerator.from_pretrained(tmp_path / "run" / "model")
    torch.testing.assert_close(loaded.finding_head.weight, network.finding_head.weight)


@pytest.mark.slow
def test_training_is_tracked_in_mlflow_shows_progress_and_writes_a_model_card(
    tiny_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("mlflow", reason='MLflow tracking needs the tracking extra: pip install -e ".[tracking]"')
    from mlflow import MlflowClient

    from monai_r2gen.engines.tracking import mlflow_store

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    stages = [
        {"name": "stage0", "batch_size": 8, "max_iterations": 3, "lr": 1e-3, "validate": False},
        {"name": "stage1", "batch_size": 8, "max_iterations": 4, "lr": 1e-3, "val_interval": 2,
         "val_epoch_level": False, "selection": "CE-14 micro-F1"},
    ]  # fmt: skip
    store = tmp_path / "store"
    with caplog.at_level(logging.INFO):
        workflow = _workflow(tiny_data, tmp_path / "run", stages, progress="log", tracking="mlflow",
                             tracking_uri=store, experiment_name="tiny", run_name="tiny-run")  # fmt: skip
        assert workflow.run()["complete"]
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("stage1:")]
    assert progress and "4/4" in progress[-1] and "loss=" in progress[-1]

    uri, _ = mlflow_store(store)
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert run.info.run_name == "tiny-run" and run.info.status == "FINISHED"
    assert run.data.params["seed"] == "7" and run.data.params["stage1/lr"] == "0.001"
    assert len(client.get_metric_history(run.info.run_id, "stage0/train_loss")) == 3
    assert len(client.get_metric_history(run.info.run_id, "stage1/train_loss")) == 4
    assert client.get_metric_history(run.info.run_id, "stage1/val/CE-14 micro-F1")
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert "model/generator.json" in artifacts

    card = (tmp_path / "run" / "model" / "README.md").read_text()
    assert card.startswith("---") and "stage0" in card and "stage1" in card and "not a medical device" in card
