"""The per-stage progress display on a toy Ignite loop."""

from __future__ import annotations

import io
import logging
import re

import pytest
import torch
from ignite.engine import Engine, Events

from monai_r2gen.engines.progress import PROGRESS_ENV, StageProgress, attach_progress, loss_of, resolve_mode


def _engine() -> Engine:
    """A loop whose loss is 1 / iteration."""
    return Engine(lambda engine, batch: {"loss": torch.tensor(1.0 / engine.state.iteration), "pred": None})


def _lines(stream: io.StringIO) -> list[str]:
    """The bar's successive renderings (tqdm separates them with carriage returns)."""
    return [line.strip() for line in re.split(r"[\r\n]", stream.getvalue()) if line.strip()]


def test_bar_shows_iterations_loss_epoch_and_time_left() -> None:
    engine, stream = _engine(), io.StringIO()
    progress = attach_progress(engine, "stage1", mode="bar", file=stream, mininterval=0)
    assert isinstance(progress, StageProgress)
    engine.run(range(5), max_epochs=2)
    lines = _lines(stream)
    # one bar over the whole stage (both epochs): 10 iterations, not 5 per epoch
    assert any("stage1:" in line and " 4/10 " in line for line in lines)
    last = lines[-1]
    assert "100%" in last and "10/10" in last and "loss=0.1000" in last and "epoch=2/2" in last
    assert re.search(r"\[\d\d:\d\d<\d\d:\d\d", last)  # elapsed < time left
    assert progress.bar is None  # closed when the engine completed


def test_bar_of_a_stage_cut_by_max_iterations_and_of_a_resumed_stage() -> None:
    engine, stream = _engine(), io.StringIO()
    attach_progress(engine, "stage2", total=6, mode="bar", file=stream, mininterval=0)
    engine.add_event_handler(Events.ITERATION_COMPLETED(once=6), lambda e: e.terminate())
    engine.run(range(5), max_epochs=3)
    assert "6/6" in _lines(stream)[-1]

    resumed, stream = _engine(), io.StringIO()
    resumed.load_state_dict({"iteration": 4, "epoch_length": 5, "max_epochs": 2})
    attach_progress(resumed, "stage2", mode="bar", file=stream, mininterval=0)
    resumed.run(range(5))
    lines = _lines(stream)
    assert " 5/10 " in lines[1] and not any(" 1/10 " in line for line in lines)  # starts where it resumed
    assert "10/10" in lines[-1]


def test_log_mode_writes_a_few_lines(caplog) -> None:
    engine = _engine()
    with caplog.at_level(logging.INFO, logger="monai_r2gen.engines.progress"):
        attach_progress(engine, "stage0", mode="log", log_every=0.25)
        engine.run(range(10), max_epochs=2)
    lines = [r.getMessage() for r in caplog.records if r.name == "monai_r2gen.engines.progress"]
    assert len(lines) == 4, lines  # 5/20, 10/20, 15/20, 20/20: a line per quarter, not per iteration
    assert "stage0:" in lines[0] and "5/20" in lines[0] and "loss=0.2000" in lines[0]
    assert "20/20" in lines[-1] and "loss=0.0500" in lines[-1] and re.search(r"\d\d:\d\d<\d\d:\d\d", lines[-1])


def test_auto_mode_follows_the_terminal_and_the_environment(monkeypatch) -> None:
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    assert resolve_mode("auto", io.StringIO()) == "log"  # not a terminal: no carriage-return stream in CI logs

    class _Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert resolve_mode("auto", _Terminal()) == "bar"
    monkeypatch.setenv(PROGRESS_ENV, "bar")
    assert resolve_mode("auto", io.StringIO()) == "bar" and resolve_mode("log") == "log"
    monkeypatch.setenv(PROGRESS_ENV, "off")
    assert attach_progress(_engine(), "stage1") is None
    monkeypatch.setenv(PROGRESS_ENV, "sometimes")
    with pytest.raises(ValueError, match=PROGRESS_ENV):
        resolve_mode("auto")
    with pytest.raises(ValueError, match="progress mode"):
        attach_progress(_engine(), "stage1", mode="fancy")


def test_loss_of_engine_outputs() -> None:
    assert loss_of({"loss": torch.tensor(2.5)}) == 2.5
    assert loss_of([{"loss": torch.tensor(1.5)}, {"loss": torch.tensor(1.5)}]) == 1.5  # decollated
    assert loss_of(0.25) == 0.25 and loss_of({"pred": 1}) is None and loss_of([]) is None


def test_a_failed_run_keeps_its_error_and_close_restores_logging() -> None:
    handlers = list(logging.root.handlers)
    engine = Engine(lambda engine, batch: 1 / 0)
    progress = attach_progress(engine, "stage1", mode="bar", file=io.StringIO())
    with pytest.raises(ZeroDivisionError):  # no EXCEPTION_RAISED handler: Ignite still raises
        engine.run(range(3))
    progress.close()  # what the trainer's `finally` does
    assert logging.root.handlers == handlers and progress.bar is None
