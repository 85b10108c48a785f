"""A progress display per training stage: iterations done of the stage's budget, the loss and the time left.

:func:`attach_progress` attaches a :class:`StageProgress` to an Ignite engine (the stage's ``SupervisedTrainer``).
One bar covers the whole stage (all its epochs, or its ``max_iterations``), so its estimate of the time left is the
stage's, not an epoch's; a resumed stage starts the bar at the iteration it resumes from, and the rate counts only
the iterations of this run. Ignite's own ``ProgressBar`` draws one bar per epoch, whose total and estimate restart
each epoch and which cannot show a stage that stops after ``max_iterations``; hence a small tqdm handler here.

Where the output goes (``mode``):

- ``"bar"``: a live tqdm bar on ``file`` (standard error by default), e.g.
  ``stage1:  40%|████      | 40/100 [00:10<00:15,  3.98it/s, loss=1.2345, epoch=1/2]``; console log records are
  written above it (tqdm's ``logging_redirect_tqdm``) instead of breaking it;
- ``"log"``: the same line as a log record each time another ``log_every`` of the stage is done (and at the end),
  so a CI log gets about ten lines per stage rather than a carriage-return stream or a line per iteration;
- ``"auto"`` (default): ``"bar"`` when ``file`` is a terminal, else ``"log"``; the environment variable
  ``MONAI_R2GEN_PROGRESS`` (``bar``, ``log`` or ``off``) forces a mode;
- ``"off"``: nothing.

Only the main process (rank 0 under torch.distributed) shows progress.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import IO, Any

import torch
from monai.utils import IgniteInfo, min_version, optional_import

from monai_r2gen.engines.handlers import is_main_process

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
tqdm, _ = optional_import("tqdm", "4.60", min_version, "tqdm")
logging_redirect_tqdm, _ = optional_import("tqdm.contrib.logging", name="logging_redirect_tqdm")

__all__ = ["PROGRESS_MODES", "PROGRESS_ENV", "StageProgress", "attach_progress", "loss_of", "resolve_mode"]

logger = logging.getLogger(__name__)

PROGRESS_MODES = ("auto", "bar", "log", "off")
#: environment variable that forces the mode "auto" resolves to
PROGRESS_ENV = "MONAI_R2GEN_PROGRESS"


def loss_of(output: Any) -> float | None:
    """The loss in an engine output: ``output["loss"]`` (MONAI's trainers), the first item's of a decollated list,
    or the output itself when it is a number or a one-element tensor; None when there is none."""
    if isinstance(output, (list, tuple)):
        return loss_of(output[0]) if output else None
    if isinstance(output, Mapping):
        output = output.get("loss")
    if isinstance(output, torch.Tensor):
        return float(output.detach().float().mean().item()) if output.numel() else None
    if isinstance(output, (int, float)) and not isinstance(output, bool):
        return float(output)
    return None


def _is_terminal(file: Any) -> bool:
    try:
        return bool(file.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed file
        return False


def resolve_mode(mode: str, file: IO[str] | None = None) -> str:
    """The mode ``mode`` stands for: "auto" becomes ``$MONAI_R2GEN_PROGRESS`` when set, else "bar" on a terminal
    and "log" elsewhere.

    Raises:
        ValueError: an unknown mode (argument or environment variable).
    """
    if mode not in PROGRESS_MODES:
        raise ValueError(f"progress mode must be one of {PROGRESS_MODES}, got {mode!r}")
    if mode != "auto":
        return mode
    forced = os.environ.get(PROGRESS_ENV, "").strip().lower()
    if forced:
        if forced not in PROGRESS_MODES[1:]:
            raise ValueError(f"{PROGRESS_ENV} must be one of {PROGRESS_MODES[1:]}, got {forced!r}")
        return forced
    return "bar" if _is_terminal(file if file is not None else sys.stderr) else "log"


class StageProgress:
    """Progress of one stage on an Ignite engine: a tqdm bar or log lines (see the module docstring).

    Args:
        stage_name: shown first on the line (e.g. "stage1").
        total: iterations of the stage (default: the engine's ``max_iters``, else ``max_epochs * epoch_length``).
        output_transform: engine output -> loss (a float, or None to show no loss); default :func:`loss_of`.
        mode: "bar" or "log" ("auto" / "off" are resolved by :func:`attach_progress`).
        file: where the bar is drawn (default standard error).
        log_every: fraction of the stage between two log lines in "log" mode.
        mininterval: least seconds between two redraws of the bar.
        persist: leave the finished bar on screen.
    """

    def __init__(
        self,
        stage_name: str,
        total: int | None = None,
        output_transform: Callable[[Any], float | None] = loss_of,
        mode: str = "bar",
        file: IO[str] | None = None,
        log_every: float = 0.1,
        mininterval: float = 0.5,
        persist: bool = True,
    ) -> None:
        if mode not in ("bar", "log"):
            raise ValueError(f"StageProgress mode must be 'bar' or 'log', got {mode!r}")
        if not 0 < log_every <= 1:
            raise ValueError(f"log_every must be in (0, 1], got {log_every}")
        self.stage_name = stage_name
        self.total = int(total) if total else None
        self.output_transform = output_transform
        self.mode = mode
        self.file = file
        self.log_every = float(log_every)
        self.mininterval = float(mininterval)
        self.persist = persist
        self.bar: Any = None
        self.loss: float | None = None
        self._initial = 0
        self._start: float | None = None
        self._next_log = 0
        self._logged_at = -1
        self._redirect: contextlib.ExitStack | None = None

    def attach(self, engine: Any) -> None:
        """Register on ``engine``: start at its first iteration, advance on every one, close when it completes."""
        engine.add_event_handler(Events.ITERATION_STARTED, self._begin)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._advance)
        engine.add_event_handler(Events.COMPLETED, self.close)

    def _stage_total(self, engine: Any) -> int | None:
        if self.total:
            return self.total
        state = engine.state
        if getattr(state, "max_iters", None):
            return int(state.max_iters)
        if state.epoch_length and state.max_epochs:
            return int(state.epoch_length) * int(state.max_epochs)
        return None

    def _begin(self, engine: Any) -> None:
        if self._start is not None:
            return
        self._start = time.perf_counter()
        self._initial = int(engine.state.iteration) - 1  # iterations before this run (a resumed stage)
        self.total = self._stage_total(engine)
        self._logged_at = -1
        self._next_log = self._next_mark(self._initial)
        if self.mode == "bar":
            self._redirect = contextlib.ExitStack()
            self._redirect.enter_context(logging_redirect_tqdm())
            self.bar = tqdm(
                total=self.total,
                initial=self._initial,
                desc=self.stage_name,
                file=self.file if self.file is not None else sys.stderr,
                mininterval=self.mininterval,
                leave=self.persist,
                dynamic_ncols=True,
            )

    def _next_mark(self, iteration: int) -> int:
        """The next iteration after ``iteration`` at which "log" mode writes a line."""
        step = max(1, math.ceil((self.total or 1) * self.log_every))
        return (iteration // step + 1) * step

    def _log(self, engine: Any) -> None:
        logger.info("%s", self.line(engine))
        self._logged_at = int(engine.state.iteration)
        self._next_log = self._next_mark(self._logged_at)

    def _postfix(self, engine: Any) -> dict[str, str]:
        postfix = {}
        if self.loss is not None:
            postfix["loss"] = f"{self.loss:.4f}"
        if (engine.state.max_epochs or 1) > 1:
            postfix["epoch"] = f"{engine.state.epoch}/{engine.state.max_epochs}"
        return postfix

    def line(self, engine: Any) -> str:
        """The progress as one line: ``stage: pct|bar| n/total [elapsed<left, rate, loss=..., epoch=...]``."""
        elapsed = time.perf_counter() - (self._start or time.perf_counter())
        postfix = ", ".join(f"{k}={v}" for k, v in self._postfix(engine).items()) or None
        total = self.total if self.total and engine.state.iteration <= self.total else None
        return tqdm.format_meter(engine.state.iteration, total, elapsed, ncols=100, prefix=self.stage_name,
                                 ascii=True, postfix=postfix, initial=self._initial)  # fmt: skip

    def _advance(self, engine: Any) -> None:
        self._begin(engine)  # attached after the run started (no ITERATION_STARTED seen)
        loss = self.output_transform(engine.state.output)
        if loss is not None:
            self.loss = loss
        if self.bar is not None:
            self.bar.set_postfix(self._postfix(engine), refresh=False)
            self.bar.update(engine.state.iteration - self.bar.n)
        elif self.mode == "log" and engine.state.iteration >= self._next_log:
            self._log(engine)

    def close(self, engine: Any = None) -> None:
        """Finish the display (the last line in "log" mode); the next run of the engine starts a new one."""
        if self._start is None:
            return
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.mode == "log" and engine is not None and engine.state.iteration != self._logged_at:
            self._log(engine)  # the last line: where the stage stopped
        if self._redirect is not None:
            self._redirect.close()
            self._redirect = None
        self._start = None


def attach_progress(
    engine: Any,
    stage_name: str,
    total: int | None = None,
    output_transform: Callable[[Any], float | None] = loss_of,
    mode: str = "auto",
    file: IO[str] | None = None,
    **kwargs: Any,
) -> StageProgress | None:
    """Show the progress of a stage's engine (see the module docstring for the modes).

    Args:
        engine: the Ignite engine (a stage's ``SupervisedTrainer``).
        stage_name: shown first on the line.
        total: iterations of the stage (default: from the engine state when it starts).
        output_transform: engine output -> loss; default :func:`loss_of`.
        mode: "auto", "bar", "log" or "off".
        file: where the bar is drawn (default standard error; "auto" checks whether it is a terminal).
        kwargs: more :class:`StageProgress` arguments (``log_every``, ``mininterval``, ``persist``).

    Returns:
        the attached handler, or None when nothing is shown ("off", or not the main process).

    Raises:
        ValueError: an unknown mode.
    """
    resolved = resolve_mode(mode, file)
    if resolved == "off" or not is_main_process():
        return None
    progress = StageProgress(stage_name, total=total, output_transform=output_transform, mode=resolved, file=file,
                             **kwargs)  # fmt: skip
    progress.attach(engine)
    return progress
