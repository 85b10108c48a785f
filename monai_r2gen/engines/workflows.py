"""Training and evaluation workflows: MONAI ``SupervisedTrainer`` / ``SupervisedEvaluator`` wired for report generation.

One training stage = one ``SupervisedTrainer`` (plus its ``SupervisedEvaluator`` for validation). Stages run in
order and each starts from the previous stage's output:

- ``stage0``: optional text-only language-model warm-up on the training reports (needed when the LLM starts from
  random weights, as in the embedded default);
- ``stage1``: alignment: LLM frozen, projector trained, encoder trained or frozen (a frozen encoder's tokens are
  cached on disk, see :mod:`monai_r2gen.engines.feature_cache`);
- ``stage2``: fine-tuning: LoRA on the LLM plus the projector (optionally the encoder).

The freeze policy of each stage (and R2GenGPT's shallow / delta / deep presets) is applied by
:mod:`monai_r2gen.engines.stages`. :class:`ReportTrainingWorkflow` is the entry point used by the bundle's
``training`` run id; :class:`ReportEvaluationWorkflow` the one of ``evaluating``.

Engine contract: ``prepare_batch`` returns ``(images, references, (), {"input_ids", "attention_mask", "labels",
"view_mask"})`` (plus ``"finding_labels"`` when the generator has a finding head) so MONAI's ``_iteration`` calls
``network(images, **kwargs)`` (``SimpleInferer``) and ``loss_function(output, references)`` returns ``output.loss``.
For validation, :class:`GenerateInferer` calls ``network.generate(images, view_mask=...)`` so the engine's ``pred`` is
a list of report strings and ``label`` the reference reports.

Outputs of a training run (``output_dir``)::

    stages/<name>/checkpoints/   last_*.pt (resume), best.pt (best validation score)
    stages/<name>/trainable.safetensors + stage_complete.json   (stage hand-over)
    stages/<name>/reports/       validation reports (JSONL: id, reference, prediction)
    stages/<name>/tensorboard/   TensorBoard event files
    feature_cache/               frozen-encoder tokens
    <model_dir>                  the final model (RadiologyReportGenerator.save_pretrained)
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.inferers import Inferer
from monai.utils import IgniteInfo, min_version, optional_import
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from monai_r2gen.engines.handlers import (
    GradientClipHandler,
    ReportScores,
    ReportWriter,
    StageCompletion,
    TrainableState,
    is_main_process,
)
from monai_r2gen.engines.progress import attach_progress, resolve_mode
from monai_r2gen.engines.sharding import PARALLEL_MODES, ShardedStage
from monai_r2gen.errors import R2GenError
from monai_r2gen.files import atomic_write_text
from monai_r2gen.metrics.report_scores import DEFAULT_CLEAN_STYLE
from monai_r2gen.networks.model_card import write_model_card

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")

__all__ = [
    "DEFAULT_STAGES",
    "StageSettings",
    "ResumableSampler",
    "ReportBatchPreparer",
    "GenerateInferer",
    "LossFromOutput",
    "set_seed",
    "create_stage_trainer",
    "create_report_evaluator",
    "latest_checkpoint",
    "ReportTrainingWorkflow",
    "ReportEvaluationWorkflow",
]

logger = logging.getLogger(__name__)

#: settings of a stage and their defaults; any key may be overridden per stage
DEFAULT_STAGE_SETTINGS: dict[str, Any] = {
    "name": None,
    "enabled": True,
    "preset": None,  # freeze preset in engines/stages.py: stage0/1/2, shallow, delta, deep (default: the name)
    "text_only": None,  # report text without images (default: the preset's; True for stage0)
    "train_encoder": None,  # None: the preset's; False/"frozen", "lora", True/"full"
    "train_projector": None,  # None: the preset's; True / False (view fusion, projector and attribute head)
    "teacher_forcing": 0.0,  # share of studies whose finding prompts carry the report's labels (image stages)
    "lora": {},  # LLM LoRA settings when the preset uses LoRA: r, alpha, dropout, target_modules
    "encoder_lora": {},  # encoder LoRA settings (delta preset or train_encoder="lora")
    "max_epochs": 1,
    "max_iterations": None,  # when set, the stage stops after this many iterations (overrides epochs)
    "batch_size": 8,
    "val_batch_size": None,
    "lr": 1e-4,
    "weight_decay": 0.0,
    "warmup_steps": 0,  # iterations of linear warm-up before the cosine decay
    "end_lr": 0.0,
    "accumulation_steps": 1,
    "grad_clip": 1.0,
    "validate": True,
    "val_interval": 1,
    "val_epoch_level": True,
    "val_max_studies": None,  # validate on the first N studies only (faster validation)
    "selection": "bleu4_cider",  # key score for best-checkpoint selection (see handlers.ReportScores)
    "early_stop_patience": 0,
    "checkpoint_interval": None,  # iterations between resume checkpoints (default: once per epoch)
    "handover": "best",  # weights passed to the next stage: "best" validated or "last"
    "augment": False,
    "group_by_length": False,  # batches of similar report lengths (less padding: faster LLM stages)
    "pack_sequences": False,  # the LLM runs on the batch's attended positions packed into fewer rows (same loss)
    "feature_cache": "auto",  # "auto" (when the encoder is frozen and augment is off), True or False
    "generation": {},  # generate() kwargs for validation (max_new_tokens, num_beams, repetition_penalty ...)
    "parallel": "ddp",  # with distributed: "ddp" (every rank holds the model) or "fsdp" (engines/sharding.py)
}

#: the default stage list (stage lengths are epochs or iterations, never wall-clock time)
DEFAULT_STAGES: list[dict[str, Any]] = [
    {"name": "stage0", "text_only": True, "validate": False, "lr": 1e-3},
    {"name": "stage1", "lr": 1e-3},
    {"name": "stage2", "lr": 5e-4, "lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
]


# settings that are on / off (train_encoder, text_only and feature_cache also take a mode or None)
_FLAG_SETTINGS = (
    "enabled", "text_only", "train_encoder", "train_projector", "validate", "val_epoch_level", "augment",
    "group_by_length", "pack_sequences", "feature_cache",
)  # fmt: skip
_FLAG_WORDS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


def _flag(value: Any, stage: Any, key: str) -> Any:
    """``value`` with a written-out boolean (``--stage0#enabled false`` on the command line gives the string
    ``'false'``, which Python would take as true) turned into ``True`` / ``False``; anything else as it is."""
    if isinstance(value, str) and value.strip().lower() in _FLAG_WORDS:
        return _FLAG_WORDS[value.strip().lower()]
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value in (0, 1):
        return bool(value)
    if value is None or isinstance(value, bool) or key in ("train_encoder", "feature_cache"):
        return value
    raise ValueError(f"stage {stage}: {key} must be true or false, got {value!r}")


class StageSettings(dict):
    """A stage's settings: :data:`DEFAULT_STAGE_SETTINGS` updated with the given mapping (attribute access)."""

    def __init__(self, settings: Mapping[str, Any] | None = None, **overrides: Any) -> None:
        merged = dict(DEFAULT_STAGE_SETTINGS)
        merged.update(dict(settings or {}))
        merged.update(overrides)
        unknown = sorted(set(merged) - set(DEFAULT_STAGE_SETTINGS))
        if unknown:
            raise ValueError(f"unknown stage settings {unknown}; known: {sorted(DEFAULT_STAGE_SETTINGS)}")
        if not merged["name"]:
            raise ValueError("every stage needs a 'name'")
        if merged["parallel"] not in PARALLEL_MODES:
            raise ValueError(f"stage {merged['name']}: parallel must be one of {PARALLEL_MODES}, "
                             f"got {merged['parallel']!r}")  # fmt: skip
        for key in _FLAG_SETTINGS:
            merged[key] = _flag(merged[key], merged["name"], key)
        super().__init__(merged)

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError as exc:
            raise AttributeError(key) from exc


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch (and MONAI's random transforms through ``set_determinism``)."""
    from monai.utils import set_determinism

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    set_determinism(seed=seed)


def _unwrap(network: torch.nn.Module) -> torch.nn.Module:
    return network.module if isinstance(network, torch.nn.parallel.DistributedDataParallel) else network


# ---------------------------------------------------------------------------------------------------------------
# data order: deterministic per epoch and resumable mid-epoch
# ---------------------------------------------------------------------------------------------------------------


class ResumableSampler(DistributedSampler):
    """A ``DistributedSampler`` (also for one process) that can skip the first batches of an epoch.

    MONAI workflows call ``set_epoch`` at every epoch start, so the shuffled order depends only on ``(seed, epoch)``;
    after resuming from a mid-epoch checkpoint, :meth:`skip` drops the samples the interrupted run had already seen,
    so the resumed run sees exactly the batches the uninterrupted run would have seen.

    With ``lengths``, batches are grouped by length (as Hugging Face's ``group_by_length``): each run of
    ``batch_size * group_batches`` shuffled samples is sorted by length and cut into batches, and the order of the
    full batches is shuffled again, so a batch is padded to about its own length instead of the longest report
    among random ones.

    Args:
        dataset: the dataset (its length).
        shuffle: shuffle every epoch.
        seed: shuffling seed.
        drop_last: as ``DistributedSampler``.
        lengths: one length per sample (e.g. report characters) to group batches by; None: no grouping.
        batch_size: the loader's batch size (needed with ``lengths``).
        group_batches: batches sorted together.
        **kwargs: ``num_replicas`` / ``rank`` (default: the process group's).
    """

    def __init__(
        self,
        dataset: Any,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        lengths: Sequence[int] | None = None,
        batch_size: int = 1,
        group_batches: int = 16,
        **kwargs: Any,
    ):
        dist = torch.distributed.is_available() and torch.distributed.is_initialized()
        kwargs.setdefault("num_replicas", torch.distributed.get_world_size() if dist else 1)
        kwargs.setdefault("rank", torch.distributed.get_rank() if dist else 0)
        super().__init__(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last, **kwargs)
        if lengths is not None and len(lengths) != len(dataset):
            raise ValueError(f"{len(lengths)} lengths for {len(dataset)} samples")
        self.lengths = list(lengths) if lengths is not None else None
        self.batch_size = max(1, int(batch_size))
        self.group_batches = max(1, int(group_batches))
        self._skip = 0

    def _group_by_length(self, indices: list[int]) -> list[int]:
        assert self.lengths is not None
        lengths, size, width = self.lengths, self.batch_size, self.batch_size * self.group_batches
        ordered = []
        for start in range(0, len(indices), width):
            ordered += sorted(indices[start : start + width], key=lambda i: -lengths[i])
        batches = [ordered[i : i + size] for i in range(0, len(ordered), size)]
        full = [b for b in batches if len(b) == size]
        generator = torch.Generator()
        generator.manual_seed(self.seed + 7919 * self.epoch + 1)
        order = torch.randperm(len(full), generator=generator).tolist() if self.shuffle else range(len(full))
        rest = batches[len(full) :]  # a last, partial batch stays last so that batches keep their boundaries
        return [i for b in [full[k] for k in order] + rest for i in b]

    def skip(self, num_samples: int) -> None:
        """Skip ``num_samples`` samples of the next iteration over the sampler (then back to 0)."""
        self._skip = max(0, int(num_samples))

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        if self.lengths is not None and self.batch_size > 1:
            indices = self._group_by_length(indices)
        skip, self._skip = self._skip, 0
        return iter(indices[skip:])


def _attach_resume_skip(trainer: Any, sampler: ResumableSampler, batch_size: int) -> None:
    """After a checkpoint is loaded (Events.STARTED), skip the samples already consumed in the current epoch."""

    def _skip(engine: Any) -> None:
        length = engine.state.epoch_length
        if length and engine.state.iteration % length:
            consumed = (engine.state.iteration % length) * batch_size
            sampler.skip(consumed)
            logger.info("resuming mid-epoch: skipping %d samples already seen", consumed)

    trainer.add_event_handler(Events.STARTED, _skip)


class RNGState:
    """Checkpointable torch RNG state (CPU, and CUDA when available), so a resumed run draws the same dropout masks."""

    def state_dict(self) -> dict[str, Any]:
        state = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        torch.set_rng_state(state["cpu"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda"])


class _SaverState:
    """Checkpointable best-model tracking of a ``CheckpointSaver`` (so a resumed run keeps its best score)."""

    def __init__(self, saver: Any, evaluator: Any) -> None:
        self.saver = saver
        self.evaluator = evaluator

    def state_dict(self) -> dict[str, Any]:
        ckpt = getattr(self.saver, "_key_metric_checkpoint", None)
        saved = [[float(p), str(f)] for p, f in ckpt._saved] if ckpt is not None else []
        return {
            "saved": saved,
            "best_metric": float(self.evaluator.state.best_metric),
            "best_metric_epoch": int(self.evaluator.state.best_metric_epoch),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        ckpt = getattr(self.saver, "_key_metric_checkpoint", None)
        if ckpt is not None and state.get("saved"):
            ckpt.load_state_dict({"saved": [tuple(item) for item in state["saved"]]})
        self.evaluator.state.best_metric = float(state.get("best_metric", -1))
        self.evaluator.state.best_metric_epoch = int(state.get("best_metric_epoch", -1))


# ---------------------------------------------------------------------------------------------------------------
# batch preparation, inferers, loss
# ---------------------------------------------------------------------------------------------------------------


_ATTRIBUTE_KEYS = ("attribute_presence", "attribute_fields", "attribute_boxes", "attribute_box_views")


class ReportBatchPreparer:
    """``prepare_batch`` for report-generation engines.

    Returns ``(images, references, (), kwargs)`` so that MONAI's ``_iteration`` calls ``network(images, **kwargs)``
    (or ``inferer(images, network, **kwargs)``):

    - ``"train"``: kwargs ``input_ids``, ``attention_mask``, ``labels``, ``view_mask``, and ``finding_labels``
      when the batch holds them (:class:`~monai_r2gen.data.reports.ReportFindingLabelsd`, for the generator's
      finding head);
    - ``"text"``: the same with ``images=None``: the generator hides the image positions from attention, so the LLM
      learns the report tokens after the text prompt alone (stage 0 warm-up); a batch with ``finding_labels`` passes
      them (and its images, if any) with ``text_only=True``: the labels fill the generator's finding prompts and the
      images train the encoder through the finding head;
    - ``"findings"``: images, ``view_mask`` and ``finding_labels`` with ``findings_only=True``: the generator
      trains its finding head and encoder without running the LLM (encoder warm-up);
    - ``"generate"``: kwargs ``view_mask`` only (validation / inference).

    In every mode but ``"generate"``, ``attribute_presence`` and ``attribute_fields`` of the batch (targets of the
    generator's attribute head, :class:`~monai_r2gen.data.finding_attributes.FindingAttributeTargetsd`) are passed
    on. In ``"train"`` mode a batch with ``finding_labels`` or attribute targets also passes ``teacher_forcing`` (when
    above 0): the share of studies whose finding prompts carry their report's labels instead of the head's prediction,
    and whose anchored visual prompts are the attribute target prompts (``GeneratorConfig.attribute_prompts``).

    When the batch holds cached encoder tokens (``tokens_key``, ``(B, V, N, D)``) they are passed as
    ``visual_tokens`` and ``images`` is None.

    Args:
        mode: "train", "text", "findings" or "generate".
        image_key: batch key of the pixel views ``(B, V, C, H, W)``.
        tokens_key: batch key of cached encoder tokens.
        report_key: batch key of the reference reports.
        teacher_forcing: in ``"train"`` mode, the generator's ``teacher_forcing`` (0: off).
        pack_sequences: in ``"train"`` and ``"text"`` modes, the generator packs the batch's attended positions
            into fewer rows before the LLM runs (:mod:`~monai_r2gen.networks.packing`; the same loss).
    """

    def __init__(
        self,
        mode: str = "train",
        image_key: str = "image",
        tokens_key: str = "image_tokens",
        report_key: str = "report",
        teacher_forcing: float = 0.0,
        pack_sequences: bool = False,
    ) -> None:
        if mode not in ("train", "text", "findings", "generate"):
            raise ValueError(f"mode must be 'train', 'text', 'findings' or 'generate', got {mode!r}")
        if not 0.0 <= float(teacher_forcing) <= 1.0:
            raise ValueError(f"teacher_forcing must be in [0, 1], got {teacher_forcing!r}")
        self.teacher_forcing = float(teacher_forcing)
        self.pack_sequences = bool(pack_sequences)
        self.mode = mode
        self.image_key = image_key
        self.tokens_key = tokens_key
        self.report_key = report_key

    def __call__(
        self,
        batchdata: Mapping[str, Any],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor | None, list[str], tuple, dict[str, Any]]:
        def move(x: Any) -> Any:
            return x.to(device=device, non_blocking=non_blocking, **kwargs) if isinstance(x, torch.Tensor) else x

        references = [str(r) for r in batchdata.get(self.report_key, [])]
        extra: dict[str, Any] = {}
        images = None
        if self.mode != "text":
            if batchdata.get(self.tokens_key) is not None:
                extra["visual_tokens"] = move(torch.as_tensor(batchdata[self.tokens_key]))
            else:
                images = move(torch.as_tensor(batchdata[self.image_key]))
            if batchdata.get("view_mask") is not None:
                extra["view_mask"] = move(batchdata["view_mask"])
        for key in _ATTRIBUTE_KEYS:  # targets of the generator's attribute head (it skips them while frozen)
            if self.mode != "generate" and batchdata.get(key) is not None:
                extra[key] = move(torch.as_tensor(batchdata[key]))
        if self.mode == "findings":
            if batchdata.get("finding_labels") is not None:
                extra["finding_labels"] = move(torch.as_tensor(batchdata["finding_labels"]))
            extra["findings_only"] = True
            return images, references, (), extra
        if self.mode != "generate":
            for key in ("input_ids", "attention_mask", "labels"):
                extra[key] = move(batchdata[key])
            if self.pack_sequences:
                extra["pack_sequences"] = True
        labelled = self.mode != "generate" and batchdata.get("finding_labels") is not None
        if labelled:
            extra["finding_labels"] = move(torch.as_tensor(batchdata["finding_labels"]))
        if self.mode == "text" and (labelled or "attribute_presence" in extra):
            # labels and attributes fill the finding and attribute slot prompts; images (if any) feed the heads only
            extra["text_only"] = True
            if batchdata.get(self.image_key) is not None:
                images = move(torch.as_tensor(batchdata[self.image_key]))
                extra["view_mask"] = move(batchdata["view_mask"])
        elif labelled and self.teacher_forcing > 0:
            extra["teacher_forcing"] = self.teacher_forcing
        if self.mode == "train" and self.teacher_forcing > 0 and "attribute_presence" in extra:
            extra["teacher_forcing"] = self.teacher_forcing  # the attribute target prompts (with or without labels)
        return images, references, (), extra


class GenerateInferer(Inferer):
    """Inferer that writes reports: ``network.generate(inputs, view_mask=..., **generation_kwargs)`` -> list[str]."""

    def __init__(self, **generation_kwargs: Any) -> None:
        super().__init__()
        self.generation_kwargs = dict(generation_kwargs)

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> list[str]:
        model = _unwrap(network)  # type: ignore[arg-type]
        return list(model.generate(inputs, *args, **{**self.generation_kwargs, **kwargs}))


class LossFromOutput:
    """``loss_function`` for ``SupervisedTrainer``: the loss the model computed itself (``output.loss``)."""

    def __call__(self, output: Any, target: Any = None) -> torch.Tensor:
        loss = output["loss"] if isinstance(output, Mapping) else output.loss
        if loss is None:
            raise ValueError("the model returned no loss: were labels passed to forward()?")
        return loss


def _drop_logits(engine: Any) -> None:
    """Free the logits (B x L x vocab) right after the backward pass; only the loss is logged."""
    output = engine.state.output
    if isinstance(output, dict) and "pred" in output:
        output["pred"] = None


def _loss_value(output: Any) -> float:
    return float(output["loss"].item()) if isinstance(output, Mapping) else float("nan")


# ---------------------------------------------------------------------------------------------------------------
# engines
# ---------------------------------------------------------------------------------------------------------------


def latest_checkpoint(directory: str | os.PathLike, prefix: str = "last") -> Path | None:
    """The resume checkpoint with the highest iteration in ``directory`` (``{prefix}_*=<iteration>.pt``)."""
    directory = Path(directory)
    best: tuple[int, Path] | None = None
    for path in directory.glob(f"{prefix}_*.pt"):
        match = re.search(r"=(\d+)\.pt$", path.name)
        if match and (best is None or int(match.group(1)) > best[0]):
            best = (int(match.group(1)), path)
    return best[1] if best else None


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


# ---------------------------------------------------------------------------------------------------------------
# the multi-stage training workflow
# ---------------------------------------------------------------------------------------------------------------


class ReportTrainingWorkflow:
    """Multi-stage training of a :class:`~monai_r2gen.networks.RadiologyReportGenerator`.

    Args:
        network: the generator, or a mapping passed to :func:`monai_r2gen.networks.factory.build_generator` (built
            lazily, after the embedded data set exists, e.g. so that a tiny tokenizer can be trained on its
            reports).
        dataset_dir: folder of the data set (images + annotation file). With ``synthetic`` set and the folder
            empty or missing, the synthetic data set is generated there first.
        annotation_file: manifest (annotation.json / JSONL / CSV); default ``<dataset_dir>/annotation.json``.
        output_dir: run directory (checkpoints, reports, logs, feature cache).
        model_dir: where the final model is saved (``save_pretrained``); default ``<output_dir>/model``.
        stages: list of stage settings (see :data:`DEFAULT_STAGE_SETTINGS`); default :data:`DEFAULT_STAGES`.
        image_size: side of the square the views are resized and padded to (default: the model config's).
        max_views: views per study (default: the model config's).
        max_length: maximum tokenized length, prompt + image tokens + report + EOS (default: the model config's).
        prompt: prompt template with ``<ImageHere>`` (default: the model config's, R2GenGPT's prompt).
        report_style: report cleaning style (``"none"``, ``"iu_xray"``, ``"mimic_cxr"``).
        target: report section to learn (None, "findings", "impression", "findings+impression").
        train_split / val_split: split names in the manifest.
        num_workers: DataLoader workers.
        dataset_cache: ``ReportDataset`` cache of the loaded, tokenized studies ("none", "cache": in memory,
            "persistent": on disk under ``<output_dir>/dataset_cache``); random augmentation still runs every epoch.
        synthetic: mapping of :func:`monai_r2gen.data.synthetic.generate_dataset` arguments for the embedded default
            (None: never generate data).
        device: torch device; default cuda when available, else cpu.
        amp: mixed precision on GPU (``amp_dtype`` "bfloat16" or "float16"); ignored on CPU.
        distributed: wrap the model in DistributedDataParallel (torchrun); ``dist_backend`` "gloo" / "nccl".
        find_unused_parameters: DDP option (True when some trainable parameters get no gradient in a stage).
        seed: random seed (model init, data order, dropout).
        gradient_checkpointing: enable gradient checkpointing in the LLM / encoder when supported.
        tensorboard: write TensorBoard logs.
        progress_bar: force the progress bar (``progress="bar"``; kept for older configs).
        progress: per-stage progress (:func:`monai_r2gen.engines.progress.attach_progress`): ``"auto"`` (a bar on a
            terminal, a few log lines elsewhere), ``"bar"``, ``"log"`` or ``"off"`` (a log line every fifth of an
            epoch).
        tracking: ``"mlflow"`` records parameters, per-stage losses, validation scores and the final model in MLflow
            (:mod:`monai_r2gen.engines.tracking`; needs ``pip install "monai-r2gen[tracking]"``); None: off.
        tracking_uri: the MLflow store: a folder (SQLite inside), ``sqlite:///`` or ``http(s)://`` (default
            ``<output_dir>/mlruns``).
        experiment_name / run_name: MLflow experiment and run (default run name: the output folder's, so a resumed
            training continues the same run).
        feature_cache_dir: cache root; default ``<output_dir>/feature_cache``.
        resume: continue from the last checkpoints / completed stages found in ``output_dir``.
        stop_after_iterations: testing aid: stop the run (as if killed) after this many iterations of the current
            stage, without marking it complete.
        findings_file: the studies' findings with their attributes (:func:`monai_r2gen.metrics.load_findings`
            layouts), targets of an attribute head; default: ``findings.json`` beside the annotation file when it
            exists (the phantoms write one). Studies it does not list have their attributes read from the report.
    """

    def __init__(
        self,
        network: torch.nn.Module | Mapping[str, Any],
        dataset_dir: str | os.PathLike,
        output_dir: str | os.PathLike,
        annotation_file: str | os.PathLike | None = None,
        model_dir: str | os.PathLike | None = None,
        stages: Sequence[Mapping[str, Any]] | None = None,
        image_size: int | None = None,
        max_views: int | None = None,
        max_length: int | None = None,
        prompt: str | None = None,
        report_style: str = "none",
        target: str | None = None,
        train_split: str = "train",
        val_split: str = "val",
        num_workers: int = 0,
        dataset_cache: str = "none",
        synthetic: Mapping[str, Any] | None = None,
        device: str | torch.device | None = None,
        amp: bool = False,
        amp_dtype: str = "bfloat16",
        distributed: bool = False,
        dist_backend: str | None = None,
        find_unused_parameters: bool = False,
        seed: int = 0,
        gradient_checkpointing: bool = False,
        tensorboard: bool = True,
        progress_bar: bool = False,
        progress: str = "auto",
        tracking: str | None = None,
        tracking_uri: str | os.PathLike | None = None,
        experiment_name: str = "monai-r2gen",
        run_name: str | None = None,
        feature_cache_dir: str | os.PathLike | None = None,
        resume: bool = True,
        stop_after_iterations: int | None = None,
        findings_file: str | os.PathLike | None = None,
    ) -> None:
        self._network_spec = network
        self.network: torch.nn.Module | None = network if isinstance(network, torch.nn.Module) else None
        self.dataset_dir = Path(dataset_dir)
        self.annotation_file = Path(annotation_file) if annotation_file else self.dataset_dir / "annotation.json"
        self._findings_file = Path(findings_file) if findings_file else None
        self.output_dir = Path(output_dir)
        self.model_dir = Path(model_dir) if model_dir else self.output_dir / "model"
        self.stages = [StageSettings(s) for s in (stages if stages is not None else DEFAULT_STAGES)]
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        self.image_size = image_size
        self.max_views = max_views
        self.max_length = max_length
        self.prompt = prompt
        self.report_style = report_style
        self.target = target
        self.train_split = train_split
        self.val_split = val_split
        self.num_workers = int(num_workers)
        self.dataset_cache = dataset_cache
        self.synthetic = dict(synthetic) if synthetic is not None else None
        self.device = (
            torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        )
        self.amp = bool(amp) and self.device.type == "cuda"
        self.amp_kwargs = {"dtype": getattr(torch, amp_dtype)} if self.amp else {}
        self.distributed = bool(distributed)
        self.dist_backend = dist_backend
        self.find_unused_parameters = find_unused_parameters
        self.seed = int(seed)
        self.gradient_checkpointing = gradient_checkpointing
        self.tensorboard = tensorboard
        self.progress = "bar" if progress_bar else progress
        resolve_mode(self.progress)  # unknown modes are refused before any work
        if tracking not in (None, "none", "mlflow"):
            raise ValueError(f"tracking must be 'none' or 'mlflow', got {tracking!r}")
        self.tracking = None if tracking in (None, "none") else tracking
        self.tracking_uri = tracking_uri or self.output_dir / "mlruns"
        self.experiment_name = experiment_name
        self.run_name = run_name or self.output_dir.resolve().name
        self._tracker: Any = None
        self.feature_cache_dir = Path(feature_cache_dir) if feature_cache_dir else self.output_dir / "feature_cache"
        self.resume = resume
        self.stop_after_iterations = stop_after_iterations
        self.history: dict[str, dict[str, Any]] = {}
        self._items: dict[str, list[dict[str, Any]]] = {}
        self._own_process_group = False

    # set-up -----------------------------------------------------------------------------------------------------
    def _setup_distributed(self) -> None:
        if not self.distributed:
            return
        if not torch.distributed.is_initialized():
            backend = self.dist_backend or ("nccl" if self.device.type == "cuda" else "gloo")
            torch.distributed.init_process_group(backend=backend)
            self._own_process_group = True
        if self.device.type == "cuda":
            local_rank = int(os.environ.get("LOCAL_RANK", 0))
            self.device = torch.device(f"cuda:{local_rank}")
            torch.cuda.set_device(self.device)

    def _barrier(self) -> None:
        if self.distributed and torch.distributed.is_initialized():
            torch.distributed.barrier()

    def ensure_dataset(self) -> None:
        """Generate the synthetic data set when configured and ``dataset_dir`` is missing or empty.

        In distributed runs rank 0 decides and writes; every rank waits for it.
        """
        if self.synthetic is not None and is_main_process() and not self.annotation_file.exists():
            if self.dataset_dir.exists() and any(self.dataset_dir.iterdir()):
                logger.info("%s is not empty: not generating the synthetic data set", self.dataset_dir)
            else:
                from monai_r2gen.data.synthetic import generate_dataset

                logger.info("generating the synthetic data set in %s", self.dataset_dir)
                generate_dataset(str(self.dataset_dir), **self.synthetic)
        self._barrier()

    def _train_reports(self) -> list[str]:
        """The training split's reports after section selection and cleaning (tokenizer corpus)."""
        from monai_r2gen.data.datasets import ReportDataset

        dataset = ReportDataset(
            self._manifest_items(self.train_split),
            image_root=str(self.dataset_dir),
            report_style=self.report_style,
            target=self.target,
            check_files=False,
            source=self.annotation_file,
        )
        return [str(dataset[i]["report"]) for i in range(len(dataset))]

    def build_network(self) -> torch.nn.Module:
        """Build the generator from its config mapping (once) and fill data settings the workflow left unset.

        A mapping is read as overrides of :func:`monai_r2gen.networks.factory.embedded_default_config`; a model
        built from scratch gets a tokenizer trained on the training reports.
        """
        if self.network is None:
            from monai_r2gen.networks.factory import build_generator, embedded_default_config

            config = embedded_default_config(**dict(self._network_spec))  # type: ignore[arg-type]
            corpus = None if (config.tokenizer_path or config.llm_path) else self._train_reports()
            self.network = build_generator(config, corpus=corpus)
        network = _unwrap(self.network)
        config = getattr(network, "config", None)
        if config is not None:
            self.image_size = self.image_size or getattr(config, "image_size", None) or 224
            self.max_views = self.max_views or getattr(config, "max_views", 2)
            self.max_length = self.max_length or getattr(config, "max_length", 128)
            self.prompt = self.prompt or getattr(config, "prompt_template", None)
        if self.gradient_checkpointing:
            network.enable_gradient_checkpointing()
        self.network.to(self.device)
        return self.network

    @property
    def findings_file(self) -> Path | None:
        """The findings file in use (None: attributes are read from the reports)."""
        return _findings_file(self._findings_file, self.annotation_file)

    def _manifest_items(self, split: str) -> list[dict[str, Any]]:
        if split not in self._items:
            from monai_r2gen.data.datasets import read_manifest

            items = read_manifest(self.annotation_file, split=split, image_root=str(self.dataset_dir))
            if self.findings_file is not None:
                from monai_r2gen.metrics.attributes import load_findings

                findings = load_findings(self.findings_file)
                items = [{**item, "findings": findings[str(item["id"])]} if str(item["id"]) in findings else item
                         for item in items]  # fmt: skip
            self._items[split] = items
        return self._items[split]

    def _load_transform(self) -> Any:
        from monai_r2gen.data.transforms import LoadStudyViewsd

        return LoadStudyViewsd(keys="image", spatial_size=self.image_size, max_views=self.max_views)

    def _tokenize_transform(self) -> Any:
        from monai_r2gen.data.reports import DEFAULT_PROMPT, IMAGE_TOKEN, TokenizeReportd

        network = _unwrap(self.network)
        return TokenizeReportd(
            keys="report",
            tokenizer=network.tokenizer,
            num_image_tokens=network.num_image_tokens,
            prompt_template=self.prompt or DEFAULT_PROMPT,
            max_length=int(self.max_length or 128),
            image_token=getattr(getattr(network, "config", None), "image_token", None) or IMAGE_TOKEN,
        )

    @staticmethod
    def _preset(stage: StageSettings) -> Any:
        from monai_r2gen.engines.stages import get_stage

        return get_stage(stage.preset or stage.name)

    def _trains_encoder(self, stage: StageSettings) -> bool:
        """Whether the stage's freeze policy trains the encoder (in full or with LoRA)."""
        mode = stage.train_encoder if stage.train_encoder is not None else self._preset(stage).encoder
        return mode not in (False, "frozen")

    def _dataset(self, split: str, stage: StageSettings, cache: Any | None, train: bool) -> Any:
        from monai_r2gen.data.datasets import ReportDataset

        network = _unwrap(self.network)
        head = getattr(network, "finding_head", None) is not None
        attribute_head = getattr(network, "attribute_head", None)
        token_head = attribute_head is not None and bool(getattr(attribute_head, "reads_tokens", False))
        # a text-only stage loads the images only when they train the encoder through an auxiliary head on it
        with_images = not stage.text_only or (train and (head or token_head) and self._trains_encoder(stage))
        # finding labels: the head's target, and in a text-only stage the finding prompts' content
        with_labels = train and head and (with_images or getattr(network, "finding_prompts", None) is not None)
        # attribute targets: the attribute head's, and the attribute slot prompts' content
        slots = getattr(network, "attribute_slots", None) is not None
        with_attributes = train and attribute_head is not None and (with_images or slots)
        transforms: list[Any] = []
        if not with_images:
            transforms = [_DropKeyd("image"), self._tokenize_transform()]
        elif cache is not None:
            from monai_r2gen.engines.feature_cache import CachedTokensd

            transforms = [
                _CopyKeyd("image", "image_tokens"),
                CachedTokensd("image_tokens", cache, encoder=network.encoder, load_transform=self._load_transform()),
                _DropKeyd("image"),
                self._tokenize_transform(),
            ]
        else:
            transforms = [self._load_transform()]
            if train and stage.augment:
                from monai_r2gen.data.transforms import RandRadiographAugmentd

                transforms.append(RandRadiographAugmentd(keys="image"))
            transforms.append(self._tokenize_transform())
        if with_labels:
            from monai_r2gen.data.reports import ReportFindingLabelsd

            transforms.append(ReportFindingLabelsd(keys="report"))  # the report is cleaned by ReportDataset
        if with_attributes:
            from monai_r2gen.data.finding_attributes import FindingAttributeTargetsd

            transforms.append(FindingAttributeTargetsd(keys="findings", report_key="report"))
            if with_images and getattr(network.config, "attribute_box_weight", 0) > 0:
                from monai_r2gen.data.finding_boxes import FindingBoxesd

                transforms.append(FindingBoxesd(keys="findings", max_views=self.max_views))
        items = self._manifest_items(split)
        if not train and stage.val_max_studies:
            items = items[: int(stage.val_max_studies)]
        return ReportDataset(
            items,
            image_root=str(self.dataset_dir),
            transform=transforms,
            report_style=self.report_style,
            target=self.target,
            cache=self.dataset_cache if with_images else "none",
            cache_dir=str(self.output_dir / "dataset_cache" / split) if self.dataset_cache == "persistent" else None,
            cache_kwargs={"progress": False} if self.dataset_cache != "none" else None,
            source=self.annotation_file,
        )

    def _collate(self) -> Any:
        from monai_r2gen.data.datasets import ReportCollate

        tokenizer = _unwrap(self.network).tokenizer
        return ReportCollate(pad_token_id=tokenizer.pad_token_id)

    def _loader(
        self, dataset: Any, batch_size: int, train: bool, group_by_length: bool = False
    ) -> tuple[DataLoader, ResumableSampler | None]:
        generator = torch.Generator()
        generator.manual_seed(self.seed)
        sampler = None
        if train:
            lengths = [len(str(item.get("report") or "")) for item in dataset.data] if group_by_length else None
            sampler = ResumableSampler(dataset, shuffle=True, seed=self.seed, lengths=lengths, batch_size=batch_size)
        loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=self._collate(),
            generator=generator,
            persistent_workers=False,
        )
        return loader, sampler

    def _feature_cache(self, stage: StageSettings) -> Any | None:
        """The stage's feature cache when the encoder is frozen and images are not augmented."""
        if stage.text_only or stage.feature_cache is False or stage.augment:
            return None
        network = _unwrap(self.network)
        encoder = getattr(network, "encoder", None)
        if encoder is None:
            return None
        frozen = not any(p.requires_grad for p in encoder.parameters())
        if not frozen:
            if stage.feature_cache is True:
                logger.warning(
                    "stage %s: feature cache requested but the encoder is trained: cache disabled", stage.name
                )
            return None
        from monai_r2gen.engines.feature_cache import FeatureCache, encoder_fingerprint

        settings = {"image_size": self.image_size, "max_views": self.max_views, "loader": "LoadStudyViewsd"}
        return FeatureCache(self.feature_cache_dir, encoder_fingerprint(encoder), settings)

    # stages -------------------------------------------------------------------------------------------------------
    def _apply_stage(self, stage: StageSettings) -> dict[str, Any]:
        """Attach LoRA with the stage's settings when it asks for it, then apply the freeze preset."""
        from monai_r2gen.engines.stages import apply_stage, get_stage

        network = _unwrap(self.network)
        preset = get_stage(stage.preset or stage.name)
        lora = {k: v for k, v in dict(stage.lora or {}).items() if v is not None}
        if preset.llm == "lora" and lora:
            network.enable_llm_lora(**lora)
        encoder_lora = {k: v for k, v in dict(stage.encoder_lora or {}).items() if v is not None}
        if encoder_lora and (preset.encoder == "lora" or stage.train_encoder == "lora"):
            network.enable_encoder_lora(**encoder_lora)
        summary = apply_stage(network, preset, train_encoder=stage.train_encoder, train_projector=stage.train_projector)
        if stage.text_only is None:
            stage["text_only"] = bool(summary.get("text_only", preset.text_only))
        return summary

    def _optimizer(self, stage: StageSettings, module: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        """AdamW over the trainable parameters of ``module`` (default: the network)."""
        module = _unwrap(self.network) if module is None else module
        params = [p for p in module.parameters() if p.requires_grad]
        if not params:
            raise ValueError(f"stage {stage.name} trains no parameter")
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        groups = [{"params": decay, "weight_decay": stage.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW([g for g in groups if g["params"]], lr=stage.lr)

    def stage_dir(self, stage: StageSettings | str) -> Path:
        """Output directory of a stage."""
        return self.output_dir / "stages" / (stage if isinstance(stage, str) else stage.name)

    def run_stage(self, stage: StageSettings) -> dict[str, Any]:
        """Train one stage (resuming from its last checkpoint when one exists) and hand its weights over."""
        from monai.handlers import (
            CheckpointLoader,
            CheckpointSaver,
            EarlyStopHandler,
            LrScheduleHandler,
            StatsHandler,
            TensorBoardStatsHandler,
            ValidationHandler,
        )
        from monai.optimizers import WarmupCosineSchedule

        network = _unwrap(self.network)
        stage_dir = self.stage_dir(stage)
        ckpt_dir = stage_dir / "checkpoints"
        set_seed(self.seed + self.stages.index(stage))
        self._apply_stage(stage)
        state = TrainableState(network)
        n_trainable = sum(p.numel() for p in network.parameters() if p.requires_grad)
        logger.info("stage %s: %d trainable parameters in %d tensors", stage.name, n_trainable, len(state.names))

        if self.distributed:  # DDP syncs buffers before each forward, so the last step left each rank its own
            for buffer in network.buffers():  # batch-norm statistics: all ranks take rank 0's
                torch.distributed.broadcast(buffer.data, src=0)
        cache = self._feature_cache(stage)
        if cache is not None:
            train_items = self._manifest_items(self.train_split)
            items = list(train_items)
            if stage.validate and not stage.text_only and not self._preset(stage).findings_only:
                val_items = self._manifest_items(self.val_split)
                items += val_items[: int(stage.val_max_studies)] if stage.val_max_studies else val_items
            fill_start = time.perf_counter()
            if is_main_process():
                cache.fill(
                    items,
                    network.encoder,
                    self._load_transform(),
                    batch_size=max(1, stage.batch_size),
                    device=self.device,
                )
            self._barrier()
            fill_seconds = time.perf_counter() - fill_start
        train_ds = self._dataset(self.train_split, stage, cache, train=True)
        train_loader, sampler = self._loader(
            train_ds, stage.batch_size, train=True, group_by_length=bool(stage.group_by_length)
        )
        epoch_length = len(train_loader)
        if stage.max_iterations:
            max_epochs = max(1, math.ceil(int(stage.max_iterations) / epoch_length))
            total_iterations = int(stage.max_iterations)
        else:
            max_epochs = int(stage.max_epochs)
            total_iterations = max_epochs * epoch_length
        sharded = ShardedStage(network) if self.distributed and stage.parallel == "fsdp" else None
        optimizer = self._optimizer(stage, sharded.module if sharded is not None else None)
        # stepped every iteration (also while gradients accumulate): warm-up and length are in iterations
        scheduler = WarmupCosineSchedule(
            optimizer,
            warmup_steps=int(stage.warmup_steps),
            t_total=max(1, total_iterations),
            end_lr=float(stage.end_lr),
        )

        train_net: torch.nn.Module = network
        if sharded is not None:
            train_net = sharded.module
        elif self.distributed:
            train_net = torch.nn.parallel.DistributedDataParallel(
                network,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.find_unused_parameters,
            )

        trainer = create_stage_trainer(
            network=train_net,
            optimizer=optimizer,
            data_loader=train_loader,
            max_epochs=max_epochs,
            device=self.device,
            text_only=stage.text_only,
            findings_only=self._preset(stage).findings_only,
            teacher_forcing=float(stage.teacher_forcing),
            pack_sequences=bool(stage.pack_sequences),
            accumulation_steps=int(stage.accumulation_steps),
            amp=self.amp,
            amp_kwargs=self.amp_kwargs,
        )
        save_interval = int(stage.checkpoint_interval or epoch_length)
        if sharded is not None:  # the plain model gets the trained weights before any handler reads them
            every = save_interval
            if stage.validate and not stage.val_epoch_level:  # epoch-level validation: the epoch's gather
                every = math.gcd(every, int(stage.val_interval))
            sharded.attach(trainer, every=every)
        # resume first (Events.STARTED handlers run in attach order)
        saver_state: _SaverState | None = None
        save_dict: dict[str, Any] = {
            "trainable": state,
            "optimizer": sharded.optimizer_state(optimizer) if sharded is not None else optimizer,
            "lr_scheduler": scheduler,
            "trainer": trainer,
            "rng": RNGState(),
        }

        writer = None
        if self.tensorboard and is_main_process():
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(log_dir=str(stage_dir / "tensorboard"))
        evaluator = None
        best_saver = None
        # a text-only stage has no images to write reports for; an encoder warm-up has not trained the LLM yet
        if stage.validate and not stage.text_only and not self._preset(stage).findings_only:
            val_ds = self._dataset(self.val_split, stage, cache, train=False)
            val_loader, _ = self._loader(val_ds, int(stage.val_batch_size or stage.batch_size), train=False)
            evaluator = create_report_evaluator(
                network=network,
                data_loader=val_loader,
                device=self.device,
                selection=stage.selection,
                generation=stage.generation,
                report_dir=stage_dir / "reports",
                report_prefix=stage.name,
                trainer=trainer,
                amp=self.amp,
                amp_kwargs=self.amp_kwargs,
            )
            StatsHandler(
                iteration_log=False,
                output_transform=lambda x: None,
                name=None,
                global_epoch_transform=lambda _: trainer.state.iteration,
            ).attach(evaluator)
            # savers are built on every rank (ignite synchronises ranks when they are built); only rank 0 writes
            best_saver = CheckpointSaver(
                save_dir=str(ckpt_dir),
                save_dict={"trainable": state},
                save_key_metric=True,
                key_metric_filename="best.pt",
                key_metric_n_saved=1,
            )
            best_saver.attach(evaluator)
            saver_state = _SaverState(best_saver, evaluator)
            save_dict["best"] = saver_state
            if stage.early_stop_patience:
                EarlyStopHandler(
                    patience=int(stage.early_stop_patience),
                    score_function=lambda e: e.state.metrics[stage.selection],
                    trainer=trainer,
                ).attach(evaluator)
            if writer is not None:
                TensorBoardStatsHandler(
                    summary_writer=writer,
                    iteration_log=False,
                    output_transform=lambda x: None,
                    global_epoch_transform=lambda _: trainer.state.iteration,
                ).attach(evaluator)

        last = latest_checkpoint(ckpt_dir) if self.resume else None
        if last is not None:
            logger.info("stage %s: resuming from %s", stage.name, last)
            CheckpointLoader(load_path=str(last), load_dict=save_dict, map_location=self.device).attach(trainer)
            if sharded is not None:  # the loaded weights went into the plain model
                trainer.add_event_handler(Events.STARTED, sharded.scatter)
        if sampler is not None:
            _attach_resume_skip(trainer, sampler, stage.batch_size)

        LrScheduleHandler(scheduler, print_lr=False, epoch_level=False).attach(trainer)
        GradientClipHandler(float(stage.grad_clip or 0.0)).attach(trainer)
        progress = attach_progress(trainer, stage.name, total=total_iterations, mode=self.progress)
        if progress is None:  # "off" (or rank > 0): a log line every fifth of an epoch
            log_every = max(1, epoch_length // 5)
            StatsHandler(
                tag_name="train_loss",
                output_transform=_loss_value,
                name=None,
                iteration_log=lambda _, i: i % log_every == 0,
            ).attach(trainer)
        if writer is not None:
            TensorBoardStatsHandler(
                summary_writer=writer, tag_name="train_loss", output_transform=_loss_value, epoch_log=False
            ).attach(trainer)
        if evaluator is not None:
            ValidationHandler(
                validator=evaluator, interval=int(stage.val_interval), epoch_level=bool(stage.val_epoch_level)
            ).attach(trainer)
        tracker = self._mlflow()
        if tracker is not None:
            tracker.attach(trainer, evaluator, stage=stage.name, stage_params=dict(stage), params={
                "seed": self.seed, "image_size": self.image_size, "max_views": self.max_views,
                "max_length": self.max_length, "report_style": self.report_style, "target": self.target,
                "dataset_dir": str(self.dataset_dir), "network": _unwrap(self.network).config.to_dict()})  # fmt: skip
        CheckpointSaver(
            save_dir=str(ckpt_dir),
            save_dict=save_dict,
            file_prefix="last",
            save_final=True,
            save_interval=save_interval,
            epoch_level=False,
            n_saved=1,
        ).attach(trainer)
        if stage.max_iterations:
            trainer.add_event_handler(
                Events.ITERATION_COMPLETED(once=int(stage.max_iterations)), lambda e: e.terminate()
            )
        stopped: list[bool] = []
        if self.stop_after_iterations:

            def _stop(engine: Any) -> None:
                stopped.append(True)
                engine.terminate()

            trainer.add_event_handler(Events.ITERATION_COMPLETED(once=int(self.stop_after_iterations)), _stop)
        if evaluator is not None:
            final_validation = _FinalValidation(evaluator, trainer, budget=total_iterations)
            trainer.add_event_handler(Events.COMPLETED, lambda e: None if stopped else final_validation(e))
        handover = _Handover(stage, state, ckpt_dir, evaluator)
        trainer.add_event_handler(Events.COMPLETED, lambda e: None if stopped else handover(e))
        completion = StageCompletion(
            stage_dir, stage.name, state, evaluator=evaluator, interrupted=lambda: bool(stopped)
        )
        completion.attach(trainer)

        start = time.perf_counter()
        try:
            trainer.run()
        finally:
            if writer is not None:
                writer.close()
            if progress is not None:
                progress.close()
        self._barrier()  # rank 0 has written the stage's files
        elapsed = time.perf_counter() - start
        result: dict[str, Any] = {
            "iterations": int(trainer.state.iteration),
            "epochs": int(trainer.state.epoch),
            "seconds": round(elapsed, 2),
            "complete": completion.completed,
        }
        if evaluator is not None:
            result["best_metric"] = float(evaluator.state.best_metric)
            result["last_scores"] = {k: v for k, v in evaluator.state.metrics.items() if isinstance(v, float)}
        if cache is not None:
            result["feature_cache"] = {
                "hits": cache.hits,
                "misses": cache.misses,
                "dir": str(cache.directory),
                "fill_seconds": round(fill_seconds, 2),
            }
        self.history[stage.name] = result
        logger.info("stage %s finished: %s", stage.name, json.dumps(result, default=str))
        return result

    def _restore_completed(self, stage: StageSettings) -> None:
        """Re-apply a completed stage's policy and load its hand-over weights (resume after an interruption)."""
        self._apply_stage(stage)
        state = TrainableState(_unwrap(self.network))
        StageCompletion.load_weights(self.stage_dir(stage), state)
        logger.info("stage %s already complete: loaded %s", stage.name, self.stage_dir(stage))

    def run(self, stages: Sequence[str] | str | None = None) -> dict[str, Any]:
        """Run the stages in order (all enabled ones, or the named subset) and save the final model.

        Stages already completed in ``output_dir`` are not trained again: their policy is re-applied and their
        hand-over weights loaded, so a killed run continues where it stopped. Selecting a later stage alone runs the
        earlier enabled stages' restoration from disk first (they must have completed).

        Returns:
            per-stage summaries (iterations, seconds, best metric, feature-cache counts) and the model directory.
        """
        if isinstance(stages, str):
            stages = [stages]
        wanted = set(stages) if stages else None
        if wanted:
            unknown = wanted - {s.name for s in self.stages}
            if unknown:
                raise ValueError(f"unknown stages {sorted(unknown)}; configured: {[s.name for s in self.stages]}")
        self._setup_distributed()
        set_seed(self.seed)
        try:
            self.ensure_dataset()
            self.build_network()
            self._mlflow()  # a missing mlflow fails before any training
            interrupted = False
            for stage in self.stages:
                if not stage.enabled:
                    continue
                heads = [getattr(_unwrap(self.network), h, None) for h in ("finding_head", "attribute_head")]
                if self._preset(stage).findings_only and all(h is None for h in heads):
                    logger.warning("stage %s skipped: it trains the visual path on its auxiliary heads and the model "
                                   "has none (network_config#finding_head and #attribute_head false)",
                                   stage.name)  # fmt: skip
                    continue
                done = self.resume and StageCompletion.is_complete(self.stage_dir(stage))
                if done and (wanted is None or stage.name not in wanted):
                    self._restore_completed(stage)
                    continue
                if wanted is not None and stage.name not in wanted:
                    raise ValueError(f"stage {stage.name} must run before {sorted(wanted)}: it has not completed")
                if done:
                    self._restore_completed(stage)
                    continue
                result = self.run_stage(stage)
                if not result["complete"]:
                    interrupted = True
                    logger.warning("stage %s stopped before its budget: run again to resume", stage.name)
                    break
            if not interrupted and is_main_process():
                self.save_model()
            self._barrier()
            return {"stages": self.history, "model_dir": str(self.model_dir), "complete": not interrupted}
        finally:
            if self._own_process_group and torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()
                self._own_process_group = False

    def save_model(self) -> None:
        """Save the final model with ``save_pretrained`` and a training summary beside it."""
        network = _unwrap(self.network)
        self.model_dir.mkdir(parents=True, exist_ok=True)
        network.save_pretrained(str(self.model_dir))
        from monai_r2gen.inference import model_fingerprint

        summary = {
            "stages": self.history,
            "seed": self.seed,
            "image_size": self.image_size,
            "max_views": self.max_views,
            "max_length": self.max_length,
            "stage_settings": {s.name: dict(s) for s in self.stages if s.enabled},
            "dataset": {
                "name": self.dataset_dir.name,
                "dataset_dir": str(self.dataset_dir),
                "annotation_file": str(self.annotation_file),
                "train_split": self.train_split,
                "val_split": self.val_split,
                "train_studies": len(self._manifest_items(self.train_split)),
                "val_studies": len(self._manifest_items(self.val_split)),
                "report_style": self.report_style,
                "target": self.target,
                "synthetic": bool(self.findings_file and _is_phantom_findings(self.findings_file)),
            },
            "model": model_fingerprint(self.model_dir),
        }
        atomic_write_text(self.model_dir / "training_summary.json", json.dumps(summary, indent=2, default=str))
        write_model_card(self.model_dir)  # the card now names the stages and the data set
        logger.info("saved the model to %s", self.model_dir)
        tracker = self._mlflow()
        if tracker is not None:
            tracker.log_model_dir(self.model_dir)
            tracker.close()

    def _mlflow(self) -> Any:
        """The MLflow tracker of this run (rank 0, ``tracking="mlflow"``), created on first use; None otherwise."""
        if self.tracking != "mlflow" or not is_main_process():
            return None
        if self._tracker is None:
            from monai_r2gen.engines.tracking import MLflowTracker

            self._tracker = MLflowTracker(self.tracking_uri, experiment_name=self.experiment_name,
                                          run_name=self.run_name)  # fmt: skip
        return self._tracker


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


class _CopyKeyd:
    """Copy ``data[src]`` to ``data[dst]`` (tiny dict transform used to build the cached-token pipeline)."""

    def __init__(self, src: str, dst: str) -> None:
        self.src, self.dst = src, dst

    def __call__(self, data: Mapping[str, Any]) -> dict[str, Any]:
        d = dict(data)
        d[self.dst] = d[self.src]
        return d


class _DropKeyd:
    """Remove a key from a data dict."""

    def __init__(self, key: str) -> None:
        self.key = key

    def __call__(self, data: Mapping[str, Any]) -> dict[str, Any]:
        d = dict(data)
        d.pop(self.key, None)
        return d


# ---------------------------------------------------------------------------------------------------------------
# evaluation of a trained model
# ---------------------------------------------------------------------------------------------------------------


def _findings_file(given: str | os.PathLike | None, annotation_file: Path) -> Path | None:
    """The findings file given, else ``findings.json`` beside the annotation file when it exists, else None."""
    if given:
        return Path(given)
    default = annotation_file.parent / "findings.json"
    return default if default.is_file() else None


def _is_phantom_findings(path: Path) -> bool:
    """Whether a findings file is the phantom generator's (its layout records how to re-write the reports)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "generator" in data and isinstance(data.get("studies"), dict)


class ReportEvaluationWorkflow:
    """Score a trained model on a split: every NLG and CE score plus the settings used, written as JSON.

    ``<output_dir>/scores.json`` holds ``{"scores": {...}, "per_label": {...}, "settings": {...}}`` (the layout of
    :func:`monai_r2gen.evaluation.evaluate_files`); the generated reports are written beside it as
    ``reports_<split>.jsonl`` (id, reference, prediction). References are the manifest's reports after the same
    section selection and cleaning as in training, never truncated.

    Args:
        model_dir: a directory written by ``RadiologyReportGenerator.save_pretrained``.
        dataset_dir: data set folder.
        output_dir: where ``scores.json`` and ``reports.jsonl`` are written.
        annotation_file: manifest; default ``<dataset_dir>/annotation.json``.
        split: the split to score.
        encoder_path / llm_path: local base weights when the saved model refers to them.
        image_size / max_views: view settings (default: the model config's).
        report_style / target: report settings of the references (use the training ones).
        batch_size: generation batch size.
        generation: ``generate()`` kwargs (num_beams, max_new_tokens, repetition_penalty ...).
        uncertain: CE treatment of uncertain mentions (None: the metrics' default).
        tokenize: NLG tokenization ("simple", "ptb", "none").
        max_studies: score only the first N studies.
        device: torch device.
        findings_file: the studies' findings (:func:`monai_r2gen.metrics.load_findings` layouts); default:
            ``findings.json`` beside the annotation file when it exists. With one, the finding-attribute scores
            (:func:`monai_r2gen.metrics.attribute_scores`: mention recall, side and severity accuracy and their
            priors) are added, and for the phantoms' own file also the paraphrase ceiling
            (:func:`monai_r2gen.evaluation.paraphrase_ceiling`: ``ceiling/BLEU-4`` ..., ``BLEU-4/ceiling``).
        ceiling_seeds: paraphrase seeds of the ceiling (empty: no ceiling).
        clean_style: cleaning of both sides before the NLG scores (the default of every scoring path).
        bootstrap: bootstrap draws of the 95% intervals of every score (``"intervals"`` in ``scores.json``; 0: none).
        seed: seed of the draws.
        nlg_metrics: subset of ``("BLEU", "METEOR", "ROUGE-L", "CIDEr")``; None: all (METEOR needs Java).
        model_card: record the scores in the model folder's card (``README.md``, ``evaluation.json``) when the whole
            split was scored (:func:`monai_r2gen.networks.model_card.write_model_card`).
    """

    def __init__(
        self,
        model_dir: str | os.PathLike,
        dataset_dir: str | os.PathLike,
        output_dir: str | os.PathLike,
        annotation_file: str | os.PathLike | None = None,
        split: str = "test",
        encoder_path: str | None = None,
        llm_path: str | None = None,
        image_size: int | None = None,
        max_views: int | None = None,
        report_style: str = "none",
        target: str | None = None,
        batch_size: int = 16,
        generation: Mapping[str, Any] | None = None,
        uncertain: str | None = None,
        tokenize: str = "simple",
        max_studies: int | None = None,
        num_workers: int = 0,
        device: str | torch.device | None = None,
        findings_file: str | os.PathLike | None = None,
        ceiling_seeds: Sequence[int] = (1, 2, 3),
        clean_style: str = DEFAULT_CLEAN_STYLE,
        bootstrap: int = 1000,
        seed: int = 0,
        nlg_metrics: Sequence[str] | None = None,
        model_card: bool = True,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.dataset_dir = Path(dataset_dir)
        self.output_dir = Path(output_dir)
        self.annotation_file = Path(annotation_file) if annotation_file else self.dataset_dir / "annotation.json"
        self.split = split
        self.encoder_path = encoder_path
        self.llm_path = llm_path
        self.image_size = image_size
        self.max_views = max_views
        self.report_style = report_style
        self.target = target
        self.batch_size = int(batch_size)
        self.generation = dict(generation or {})
        self.uncertain = uncertain
        self.tokenize = tokenize
        self.max_studies = max_studies
        self.num_workers = int(num_workers)
        self.device = (
            torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        )
        self.findings_file = _findings_file(findings_file, self.annotation_file)
        self.ceiling_seeds = [int(s) for s in ceiling_seeds]
        self.clean_style = clean_style
        self.bootstrap = int(bootstrap)
        self.seed = int(seed)
        self.nlg_metrics = None if nlg_metrics is None else list(nlg_metrics)
        self.model_card = bool(model_card)

    def score(self, ids: Sequence[str], refs: Sequence[str], hyps: Sequence[str]) -> dict[str, Any]:
        """The scores of generated reports: :func:`~monai_r2gen.metrics.report_scores.score_reports` (the one
        scoring function of every path) with this workflow's settings, plus, for a phantom findings file, the
        paraphrase ceiling (:func:`monai_r2gen.evaluation.paraphrase_ceiling`: ``ceiling/BLEU-4`` ...,
        ``BLEU-4/ceiling``).

        Args:
            ids: study ids (to look up the findings).
            refs: reference reports (as the data set gives them: ``report_style`` / ``target`` applied).
            hyps: generated reports, same order.
        """
        from monai_r2gen.evaluation import paraphrase_ceiling
        from monai_r2gen.metrics.attributes import load_findings
        from monai_r2gen.metrics.report_scores import score_reports

        truth = None
        if self.findings_file is not None:
            table = load_findings(self.findings_file)
            truth = [table.get(i, []) for i in ids]
        result = score_reports(list(refs), list(hyps), clean_style=self.clean_style, tokenize=self.tokenize,
                               uncertain=self.uncertain or "negative", nlg_metrics=self.nlg_metrics, findings=truth,
                               bootstrap=self.bootstrap, seed=self.seed)  # fmt: skip
        result["settings"]["nlg"]["reference_style"] = self.report_style
        result["settings"]["nlg"]["target"] = self.target
        if self.findings_file is not None:
            result["settings"]["findings"] = str(self.findings_file)
        scores = result["scores"]
        if truth is not None and self.ceiling_seeds and _is_phantom_findings(self.findings_file):
            ceiling = paraphrase_ceiling(self.findings_file, list(ids), list(refs), seeds=self.ceiling_seeds,
                                         tokenize=self.tokenize, clean_style=self.clean_style,
                                         nlg_metrics=("BLEU", "ROUGE-L", "CIDEr"))  # fmt: skip
            scores.update({f"ceiling/{k}": v for k, v in ceiling["mean"].items()})
            result["ceiling"] = {"mean": ceiling["mean"], "seeds": ceiling["seeds"],
                                 "per_seed": {str(k): v for k, v in ceiling["per_seed"].items()}}  # fmt: skip
            if scores.get("ceiling/BLEU-4") and "BLEU-4" in scores:
                scores["BLEU-4/ceiling"] = scores["BLEU-4"] / scores["ceiling/BLEU-4"]
                logger.info("BLEU-4 %.4f; paraphrase ceiling %.4f (ratio %.3f)", scores["BLEU-4"],
                            scores["ceiling/BLEU-4"], scores["BLEU-4/ceiling"])  # fmt: skip
        return result

    def run(self) -> dict[str, Any]:
        """Generate reports for the split, score them and write ``scores.json`` + ``reports.jsonl``."""
        from monai_r2gen.data.datasets import ReportCollate, ReportDataset, read_manifest
        from monai_r2gen.data.transforms import LoadStudyViewsd
        from monai_r2gen.networks.generator import RadiologyReportGenerator

        network = RadiologyReportGenerator.from_pretrained(
            str(self.model_dir), encoder_path=self.encoder_path, llm_path=self.llm_path
        ).to(self.device)
        network.eval()
        self.image_size = int(self.image_size or network.config.image_size or 224)
        self.max_views = int(self.max_views or network.config.max_views)
        items = read_manifest(self.annotation_file, split=self.split, image_root=str(self.dataset_dir))
        if self.max_studies:
            items = items[: int(self.max_studies)]
        dataset = ReportDataset(
            items,
            image_root=str(self.dataset_dir),
            transform=[LoadStudyViewsd(keys="image", spatial_size=self.image_size, max_views=self.max_views)],
            report_style=self.report_style,
            target=self.target,
            source=self.annotation_file,
        )
        loader = DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=ReportCollate(pad_token_id=network.tokenizer.pad_token_id),
        )
        start = time.perf_counter()
        writer = ReportWriter(self.output_dir, prefix="reports", tag_fn=lambda _: self.split)
        engine = SupervisedEvaluator(
            device=self.device,
            val_data_loader=loader,
            network=network,
            prepare_batch=ReportBatchPreparer(mode="generate"),
            inferer=GenerateInferer(**self.generation),
            val_handlers=[writer],
            decollate=False,
        )
        engine.run()
        refs = [row["reference"] for row in writer.rows]
        hyps = [row["prediction"] for row in writer.rows]
        result = self.score([row["id"] for row in writer.rows], refs, hyps)
        result["settings"].update({
            "model_dir": str(self.model_dir),
            "dataset_dir": str(self.dataset_dir),
            "annotation_file": str(self.annotation_file),
            "split": self.split,
            "image_size": self.image_size,
            "max_views": self.max_views,
            "reports": str(writer.last_path) if writer.last_path else None,
            "generation": {
                k: v
                for k, v in network.generation_settings(**self.generation).items()
                if isinstance(v, (int, float, str, bool, list)) or v is None
            },
            "seconds": round(time.perf_counter() - start, 2),
        })  # fmt: skip
        if is_main_process():
            self.output_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.output_dir / "scores.json", json.dumps(result, indent=2))
            logger.info("wrote %s", self.output_dir / "scores.json")
            if self.model_card and not self.max_studies:  # not partial scores
                try:
                    write_model_card(self.model_dir, scores=result)
                except (OSError, R2GenError) as exc:  # e.g. a read-only shared model folder
                    logger.warning("model card of %s not updated (%s)", self.model_dir, exc)
        return result
