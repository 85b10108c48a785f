"""A training stage's settings: the keys a stage may set, their defaults and the checks on them."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from monai_r2gen.engines.sharding import PARALLEL_MODES
from monai_r2gen.flags import as_flag

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


#: what every stage of the default recipe shares (the bundle's ``stage_defaults`` in ``configs/train.yaml``)
DEFAULT_STAGE_DEFAULTS: dict[str, Any] = {"batch_size": 32, "lr": 3e-3, "end_lr": 1e-4, "pack_sequences": True}

#: the default recipe, each stage stating what differs from :data:`DEFAULT_STAGE_DEFAULTS`: the stages of the bundle's
#: ``configs/train.yaml`` (a test keeps the two equal). Lengths are iterations, never wall-clock time.
DEFAULT_STAGES: list[dict[str, Any]] = [
    {"name": "encoder_warmup", "augment": True, "max_iterations": 1500, "warmup_steps": 20, "end_lr": 1e-5},
    {"name": "stage0", "text_only": True, "train_encoder": False, "max_iterations": 200, "warmup_steps": 10},
    {"name": "stage1", "train_encoder": False, "teacher_forcing": 1.0, "max_iterations": 40, "warmup_steps": 5,
     "validate": False},
    {"name": "stage2", "train_encoder": False, "teacher_forcing": 1.0, "max_iterations": 100, "warmup_steps": 10,
     "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
     "val_interval": 100, "val_epoch_level": False, "val_max_studies": 64, "selection": "CE-14 micro-F1"},
]  # fmt: skip


# settings that are on / off, and the modes some of them also take (engines/stages.py, feature_cache.py)
_FLAG_SETTINGS: dict[str, tuple[str, ...]] = {
    "enabled": (), "text_only": (), "train_encoder": ("frozen", "lora", "full"), "train_projector": (),
    "validate": (), "val_epoch_level": (), "augment": (), "group_by_length": (), "pack_sequences": (),
    "feature_cache": ("auto",),
}  # fmt: skip


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
        for key, modes in _FLAG_SETTINGS.items():
            merged[key] = as_flag(merged[key], f"stage {merged['name']}: {key}", modes)
        super().__init__(merged)

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError as exc:
            raise AttributeError(key) from exc
