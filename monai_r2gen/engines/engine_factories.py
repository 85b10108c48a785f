"""The MONAI engines of one stage: its ``SupervisedTrainer`` and the ``SupervisedEvaluator`` that validates it."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.engines.utils import IterationEvents

from monai_r2gen.engines.batches import GenerateInferer, LossFromOutput, ReportBatchPreparer, _drop_logits
from monai_r2gen.engines.handlers import (
    ReportScores,
    ReportWriter,
)

logger = logging.getLogger(__name__)


def create_report_evaluator(
    network: torch.nn.Module,
    data_loader: Any,
    device: torch.device | str = "cpu",
    selection: str = "bleu4_cider",
    generation: Mapping[str, Any] | None = None,
    report_dir: str | os.PathLike | None = None,
    report_prefix: str = "val",
    trainer: Any | None = None,
    amp: bool = False,
    amp_kwargs: Mapping[str, Any] | None = None,
    handlers: Sequence[Any] = (),
    nlg: bool = True,
    clinical: bool = True,
) -> SupervisedEvaluator:
    """A ``SupervisedEvaluator`` that generates reports and scores them (NLG + CE).

    The key metric (named ``selection``) is the checkpoint-selection score; every individual score lands in
    ``evaluator.state.metrics`` too. When ``report_dir`` is given, each run writes its reports to JSONL.
    """
    all_handlers: list[Any] = []
    if report_dir is not None:
        all_handlers.append(ReportWriter(report_dir, prefix=report_prefix, trainer=trainer))
    all_handlers.extend(handlers)
    return SupervisedEvaluator(
        device=torch.device(device),
        val_data_loader=data_loader,
        network=network,
        prepare_batch=ReportBatchPreparer(mode="generate"),
        inferer=GenerateInferer(**dict(generation or {})),
        key_val_metric={selection: ReportScores(selection=selection, nlg=nlg, clinical=clinical)},
        val_handlers=all_handlers,
        amp=amp,
        amp_kwargs=dict(amp_kwargs or {}),
        decollate=False,
    )


def create_stage_trainer(
    network: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    data_loader: Any,
    max_epochs: int,
    device: torch.device | str = "cpu",
    text_only: bool = False,
    findings_only: bool = False,
    teacher_forcing: float = 0.0,
    accumulation_steps: int = 1,
    amp: bool = False,
    amp_kwargs: Mapping[str, Any] | None = None,
    handlers: Sequence[Any] = (),
    epoch_length: int | None = None,
    pack_sequences: bool = False,
) -> SupervisedTrainer:
    """A ``SupervisedTrainer`` for one stage: the model computes its own loss on the report tokens (or, with
    ``findings_only``, its finding head's loss; ``teacher_forcing`` and ``pack_sequences``: see
    :class:`ReportBatchPreparer`)."""
    trainer = SupervisedTrainer(
        device=torch.device(device),
        max_epochs=max_epochs,
        train_data_loader=data_loader,
        epoch_length=epoch_length,
        network=network,
        optimizer=optimizer,
        loss_function=LossFromOutput(),
        prepare_batch=ReportBatchPreparer(
            mode="findings" if findings_only else "text" if text_only else "train",
            teacher_forcing=teacher_forcing,
            pack_sequences=pack_sequences,
        ),
        train_handlers=list(handlers),
        amp=amp,
        amp_kwargs=dict(amp_kwargs or {}),
        decollate=False,
        accumulation_steps=accumulation_steps,
    )
    trainer.add_event_handler(IterationEvents.MODEL_COMPLETED, _drop_logits)
    return trainer
