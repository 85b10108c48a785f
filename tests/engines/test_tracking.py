"""MLflow tracking of a toy two-stage training (MONAI's MLFlowHandler, local SQLite store)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events

from monai_r2gen.engines.tracking import MLflowTracker, attach_mlflow, log_model_dir, mlflow_store

pytest.importorskip("mlflow", reason='MLflow tracking needs the tracking extra: pip install -e ".[tracking]"')


@pytest.fixture(autouse=True)
def _no_tracking_env(monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _stage(
    epochs: int, epoch_length: int, scores: list[float] | None, text: bool = True
) -> tuple[Engine, Engine | None]:
    """A trainer (loss 1 / iteration, an SGD optimizer) and, with ``scores``, an evaluator run after each epoch (its
    metrics: the score, and with ``text`` a string)."""
    weight = torch.nn.Parameter(torch.zeros(1))
    trainer = Engine(lambda engine, batch: {"loss": torch.tensor(1.0 / engine.state.iteration)})
    trainer.optimizer = torch.optim.SGD([weight], lr=0.01)
    trainer.state.max_epochs = epochs
    evaluator = None
    if scores is not None:
        evaluator = Engine(lambda engine, batch: None)
        evaluator.add_event_handler(
            Events.EPOCH_COMPLETED,
            lambda e: e.state.metrics.update(
                {
                    "CE-14 micro-F1": scores[trainer.state.epoch - 1],
                    "CE-14+ micro-F1": 1.0,
                    **({"reports": "x"} if text else {}),
                }
            ),
        )
        trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: evaluator.run(range(2)))
    return trainer, evaluator


def _history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, round(m.value, 6)) for m in client.get_metric_history(run_id, key))


def test_two_stages_params_losses_scores_and_model(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    store = tmp_path / "mlruns"
    run_params = {"seed": 0, "network": {"encoder": "small_cnn", "num_queries": 16}}
    stage0, _ = _stage(epochs=1, epoch_length=3, scores=None)
    tracker = attach_mlflow(stage0, tracking_uri=store, experiment_name="toy", run_name="run1", params=run_params,
                            stage="stage0", stage_params={"lr": 1e-3, "text_only": True})  # fmt: skip
    stage0.run(range(3), max_epochs=1)
    trainer, evaluator = _stage(epochs=2, epoch_length=4, scores=[0.25, 0.5])
    same = attach_mlflow(trainer, evaluator, params=run_params, stage="stage2", tracker=tracker,
                         stage_params={"lr": 5e-4, "lora": {"r": 16, "alpha": 32}})  # fmt: skip
    assert same is tracker
    trainer.run(range(4), max_epochs=2)
    model = tmp_path / "model"
    (model / "tokenizer").mkdir(parents=True)
    (model / "README.md").write_text("card")
    (model / "generator.json").write_text("{}")
    (model / "tokenizer" / "tokenizer.json").write_text("{}")
    log_model_dir(tracker, model)
    run_id = tracker.run_id
    tracker.close()

    # read the store back with a client of its own
    uri, _ = mlflow_store(store)
    assert uri == f"sqlite:///{store / 'mlruns.db'}"
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("toy").experiment_id])
    assert run.info.run_id == run_id and run.info.run_name == "run1" and run.info.status == "FINISHED"
    assert run.data.params == {
        "seed": "0",
        "network/encoder": "small_cnn",
        "network/num_queries": "16",
        "stage0/lr": "0.001",
        "stage0/text_only": "True",
        "stage2/lr": "0.0005",
        "stage2/lora/r": "16",
        "stage2/lora/alpha": "32",
    }
    assert _history(client, run_id, "stage0/train_loss") == [(1, 1.0), (2, 0.5), (3, 0.333333)]
    assert len(_history(client, run_id, "stage2/train_loss")) == 8  # 2 epochs x 4 iterations, one point each
    assert _history(client, run_id, "stage2/lr") == [(i, 0.01) for i in range(1, 9)]
    assert _history(client, run_id, "stage2/val/CE-14 micro-F1") == [(4, 0.25), (8, 0.5)]  # step: trainer iteration
    assert run.data.metrics["stage2/val/CE-14plus micro-F1"] == 1.0  # MLflow refuses "+" in a key
    assert "stage2/val/reports" not in run.data.metrics  # only numbers are metrics
    assert not any(key.startswith("stage0/val") for key in run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(run_id, "model")}
    assert artifacts == {"model/README.md", "model/generator.json", "model/tokenizer"}
    assert [a.path for a in client.list_artifacts(run_id, "model/tokenizer")] == ["model/tokenizer/tokenizer.json"]
    assert Path(run.info.artifact_uri.removeprefix("file://")).is_relative_to(store)


def test_an_unfinished_run_is_continued_and_a_finished_one_is_not(tmp_path: Path, caplog) -> None:
    first = MLflowTracker(tmp_path / "store", experiment_name="toy", run_name="resumed")
    first.log_params({"seed": 0})
    trainer, _ = _stage(epochs=1, epoch_length=2, scores=None)
    first.attach(trainer, stage="stage1")
    trainer.run(range(2))  # then the process is killed: the run stays RUNNING

    again = MLflowTracker(f"file://{tmp_path / 'store'}", experiment_name="toy", run_name="resumed")
    assert again.run_id == first.run_id
    again.log_params({"seed": 1})  # params are immutable: the first value stays, with a warning
    assert "stays '0'" in caplog.text
    again.log_metrics({"test": {"BLEU-4": 0.2, "note": "text"}}, step=3)
    assert again.client.get_run(again.run_id).data.metrics == {"stage1/train_loss": 0.5, "stage1/lr": 0.01,
                                                               "test/BLEU-4": 0.2}  # fmt: skip
    again.close()
    fresh = MLflowTracker(tmp_path / "store", experiment_name="toy", run_name="resumed")
    assert fresh.run_id != first.run_id


def test_store_locations(tmp_path: Path, monkeypatch) -> None:
    uri, artifacts = mlflow_store(tmp_path / "a")
    assert uri == f"sqlite:///{tmp_path / 'a' / 'mlruns.db'}" and artifacts == (tmp_path / "a" / "mlruns").as_uri()
    assert mlflow_store(f"file://{tmp_path / 'b'}")[0] == f"sqlite:///{tmp_path / 'b' / 'mlruns.db'}"
    assert mlflow_store(f"sqlite:///{tmp_path / 'c.db'}") == (f"sqlite:///{tmp_path / 'c.db'}",
                                                               (tmp_path / "mlruns").as_uri())  # fmt: skip
    assert mlflow_store("http://127.0.0.1:5000") == ("http://127.0.0.1:5000", None)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'env.db'}")
    assert MLflowTracker(tmp_path / "ignored").tracking_uri == f"sqlite:///{tmp_path / 'env.db'}"


def test_tensorboard_progress_and_mlflow_side_by_side(tmp_path: Path) -> None:
    """The stage's existing TensorBoard handler still writes every loss with the progress bar and MLflow attached."""
    import io

    from monai.handlers import TensorBoardStatsHandler
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    from monai_r2gen.engines.progress import attach_progress, loss_of

    trainer, evaluator = _stage(epochs=2, epoch_length=3, scores=[0.1, 0.2], text=False)
    writer = SummaryWriter(log_dir=str(tmp_path / "tensorboard"))
    TensorBoardStatsHandler(summary_writer=writer, tag_name="train_loss", output_transform=loss_of,
                            epoch_log=False).attach(trainer)  # fmt: skip
    TensorBoardStatsHandler(summary_writer=writer, iteration_log=False, output_transform=lambda x: None,
                            global_epoch_transform=lambda _: trainer.state.iteration).attach(evaluator)  # fmt: skip
    bar = io.StringIO()
    attach_progress(trainer, "stage1", mode="bar", file=bar, mininterval=0)
    tracker = attach_mlflow(trainer, evaluator, tracking_uri=tmp_path / "mlruns", run_name="side", stage="stage1")
    trainer.run(range(3), max_epochs=2)
    writer.close()
    tracker.close()

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train_loss")] == [1, 2, 3, 4, 5, 6]
    assert [(e.step, round(e.value, 6)) for e in events.Scalars("CE-14 micro-F1")] == [(3, 0.1), (6, 0.2)]
    assert "6/6" in bar.getvalue()
    assert len(tracker.client.get_metric_history(tracker.client.search_runs(
        [tracker.experiment.experiment_id])[0].info.run_id, "stage1/train_loss")) == 6  # fmt: skip
