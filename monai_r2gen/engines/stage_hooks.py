"""Hooks a training stage attaches to its trainer: the final validation of a stage and the hand-over of its weights to
the next stage."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from monai.utils import IgniteInfo, min_version, optional_import

from monai_r2gen.engines.handlers import (
    TrainableState,
)
from monai_r2gen.engines.stage_settings import StageSettings

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")

logger = logging.getLogger(__name__)


class _FinalValidation:
    """Validate once more when the stage reaches its budget after the last scheduled validation."""

    def __init__(self, evaluator: Any, trainer: Any, budget: int) -> None:
        self.evaluator = evaluator
        self.trainer = trainer
        self.budget = budget
        self.last_iteration = -1
        evaluator.add_event_handler(Events.COMPLETED, self._mark)

    def _mark(self, _: Any) -> None:
        self.last_iteration = self.trainer.state.iteration

    def __call__(self, engine: Any) -> None:
        if engine.state.iteration >= self.budget and self.last_iteration != engine.state.iteration:
            self.evaluator.run(engine.state.epoch)


class _Handover:
    """At the end of a stage, load the best validated weights (``handover="best"``) before the stage is saved."""

    def __init__(self, stage: StageSettings, state: TrainableState, ckpt_dir: Path, evaluator: Any) -> None:
        self.stage = stage
        self.state = state
        self.ckpt_dir = ckpt_dir
        self.evaluator = evaluator

    def __call__(self, engine: Any) -> None:
        if self.stage.handover != "best" or self.evaluator is None:
            return
        best = self.ckpt_dir / "best.pt"
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()
        if best.is_file():
            checkpoint = torch.load(best, map_location="cpu", weights_only=True)
            self.state.load_state_dict(checkpoint.get("trainable", checkpoint))
            logger.info("stage %s: handing over the best validated weights (%s)", self.stage.name, best)
