"""Freeze policies: which parts of a report generator train in each stage.

Named presets (:data:`STAGES`):

==============  ===================  =========  ===================  ==========
preset          encoder              projector  LLM                  images
==============  ===================  =========  ===================  ==========
encoder_warmup  all weights          frozen     not run              yes
stage0          frozen               frozen     all weights          no (text)
stage1          frozen (option)      trained    frozen               yes
stage2          frozen (option)      trained    LoRA                 yes
shallow         frozen               trained    frozen               yes
delta           LoRA                 trained    frozen               yes
deep            all weights          trained    frozen               yes
==============  ===================  =========  ===================  ==========

``encoder_warmup`` trains a randomly initialised encoder and the generator's finding head on the finding labels of
the training reports alone (binary cross-entropy; with an attribute head, the projector and that head train too, on
the findings' presence and attributes; the LLM is not run, so an iteration costs only the encoder's
forward and backward pass): the embedded default's CNN needs a few hundred such iterations before its features carry
the findings, and these are ~5x cheaper than iterations that also run the LLM.

``stage0`` warms the language model up on report text alone: the embedded default's tiny LLM starts from random
weights, and peft's ``get_peft_model`` freezes every base weight (embeddings and LM head included), so LoRA alone
could never teach it the language. ``shallow`` / ``delta`` / ``deep`` are R2GenGPT's settings (its ``freeze_vm``,
``vis_use_lora`` and ``llm_use_lora=False``): the LLM stays frozen in all three; "delta" puts LoRA on the vision
encoder's attention query / value projections.

A generator with a finding head (``GeneratorConfig.finding_head``) trains the head wherever the projector or the
encoder trains: ``stage0`` with ``train_encoder`` warms the LLM up on the report text and, side by side, the encoder
and head on the finding labels of the same reports; with finding prompts, those labels fill the prompts in stage 0
(teacher forcing), so the LLM learns to read them while it learns the language.

:func:`apply_stage` sets ``requires_grad`` on every parameter explicitly (modules outside a peft wrapper are not
touched by peft) and records on the model which parts were trained in full, so that ``save_pretrained`` writes
them.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

from torch import nn

from monai_r2gen.errors import ModelConfigError

__all__ = ["StagePreset", "STAGES", "get_stage", "apply_stage", "trainable_summary"]

logger = logging.getLogger(__name__)

_MODES = ("frozen", "lora", "full")
# the prompts the LLM reads values from: they train with the projector or with a fully trained LLM
_READ_PROMPTS = ("finding_prompts.", "attribute_prompts.", "attribute_slots.")


@dataclass(frozen=True)
class StagePreset:
    """One freeze policy.

    Attributes:
        name: preset name.
        encoder: "frozen", "lora" or "full".
        projector: whether view fusion and projector (and the generator's finding head, if any) train.
        llm: "frozen", "lora" or "full".
        text_only: the stage trains on report text without images (the workflow calls ``forward(images=None)``).
        description: one line for logs and docs.
        findings_only: the stage trains on the finding head's loss alone (``forward(findings_only=True)``).
    """

    name: str
    encoder: str
    projector: bool
    llm: str
    text_only: bool
    description: str
    findings_only: bool = False

    def __post_init__(self) -> None:
        if self.encoder not in _MODES or self.llm not in _MODES:
            raise ValueError(f"stage {self.name}: encoder / llm must be one of {_MODES}")


STAGES: dict[str, StagePreset] = {
    p.name: p
    for p in (
        StagePreset("encoder_warmup", "full", False, "frozen", False,
                    "encoder warm-up: encoder (+ projector) and the auxiliary heads, no LLM", findings_only=True),
        StagePreset("stage0", "frozen", False, "full", True, "LM warm-up: every LLM weight, report text only"),
        StagePreset("stage1", "frozen", True, "frozen", False, "alignment: projector (encoder optional)"),
        StagePreset("stage2", "frozen", True, "lora", False, "projector + LLM LoRA (encoder optional)"),
        StagePreset("shallow", "frozen", True, "frozen", False, "R2GenGPT shallow: projector only"),
        StagePreset("delta", "lora", True, "frozen", False, "R2GenGPT delta: encoder LoRA + projector"),
        StagePreset("deep", "full", True, "frozen", False, "R2GenGPT deep: whole encoder + projector"),
    )
}  # fmt: skip


def get_stage(stage: str | StagePreset) -> StagePreset:
    """The preset of that name (or the preset itself).

    Raises:
        ValueError: unknown name.
    """
    if isinstance(stage, StagePreset):
        return stage
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose from {', '.join(STAGES)}")
    return STAGES[stage]


def apply_stage(
    model: nn.Module,
    stage: str | StagePreset,
    train_encoder: str | bool | None = None,
    train_projector: bool | None = None,
) -> dict[str, Any]:
    """Set which parameters of a :class:`~monai_r2gen.networks.RadiologyReportGenerator` train.

    LoRA adapters are attached on first use (settings from the model's config); the embeddings were already resized
    to the tokenizer at build time, before any peft wrapping.

    Args:
        model: the generator.
        stage: preset name or :class:`StagePreset`.
        train_encoder: override the preset's encoder mode: "frozen" / False, "lora", "full" / True.
        train_projector: override whether the preset trains view fusion, projector and attribute head.

    Returns:
        :func:`trainable_summary` of the model, plus "stage", "text_only", "findings_only" and, with LoRA on the LLM,
        "llm_lora_targets" (the layer names peft adapted).

    Raises:
        ValueError: a findings-only preset for a model without a finding head.
        ModelConfigError: LoRA targets that match no layer of the LLM (the message names its family and layers).
    """
    preset = get_stage(stage)
    if train_projector is not None:
        preset = dataclasses.replace(preset, projector=bool(train_projector))
    attribute_head = getattr(model, "attribute_head", None) is not None
    reads_tokens = attribute_head and bool(getattr(model.attribute_head, "reads_tokens", False))
    if preset.findings_only and getattr(model, "finding_head", None) is None and not attribute_head:
        raise ValueError(
            f"stage {preset.name} trains the visual path on its auxiliary heads, but the model has none "
            "(finding_head and attribute_head are off)"
        )
    encoder_mode = preset.encoder
    if train_encoder is not None:
        encoder_mode = {True: "full", False: "frozen"}.get(train_encoder, train_encoder)  # type: ignore[arg-type]
        if encoder_mode not in _MODES:
            raise ValueError(f"train_encoder must be one of {_MODES} or a bool, got {train_encoder!r}")
    if encoder_mode == "lora":
        model.enable_encoder_lora()
    if preset.llm == "lora":
        model.enable_llm_lora()

    model.requires_grad_(False)
    groups = model.component_parameters()
    for part, mode in (("encoder", encoder_mode), ("llm", preset.llm)):
        for name, param in groups[part]:
            is_lora = "lora_" in name
            param.requires_grad_(mode == "full" or (mode == "lora" and is_lora))
        if mode == "full":
            model.trained.add(part)
    for name, param in groups["projector"]:
        # the finding head is the encoder's auxiliary classifier: it trains with the projector or with the encoder;
        # the finding prompts (and the attribute target prompts) are what the LLM reads labels from: they train with the
        # projector or a fully trained LLM;
        # the attribute head reads the projector's prompts: in a findings-only stage it trains with the projector
        # (view fusion included), as the projector does with it
        # (a token-reading attribute head is, like the finding head, an auxiliary classifier of the encoder); the
        # attribute slot prompts are read like the finding prompts
        auxiliary = ("finding_head.", "attribute_head.") if reads_tokens else ("finding_head.",)
        head = name.startswith(auxiliary) and encoder_mode != "frozen"
        prompts = name.startswith(_READ_PROMPTS) and preset.llm == "full"
        # (a token-reading one does not read the projector, which then stays frozen: unused weights break DDP)
        unread = ("finding_head.", *_READ_PROMPTS, *(("projector.", "attribute_features.") if reads_tokens else ()))
        visual = preset.findings_only and attribute_head and not name.startswith(unread)
        param.requires_grad_(preset.projector or head or prompts or visual)

    if preset.llm == "lora" and not any("lora_" in name for name, _ in groups["llm"]):
        raise ModelConfigError(f"stage {preset.name} trains LoRA adapters on the LLM, but none were attached (LoRA "
                               "target_modules matched no layer)")  # fmt: skip

    summary = trainable_summary(model)
    summary.update(stage=preset.name, text_only=preset.text_only, findings_only=preset.findings_only)
    targets = _lora_targets(getattr(model, "llm", None)) if preset.llm == "lora" else None
    if targets is not None:
        summary["llm_lora_targets"] = targets
        logger.info("stage %s: LoRA on the LLM's %s", preset.name, ", ".join(targets))
    logger.info("stage %s (%s): encoder %s, LLM %s", preset.name, preset.description, encoder_mode, preset.llm)
    return summary


def _lora_targets(module: nn.Module | None) -> list[str] | None:
    """The target layer names of a peft model's active LoRA adapter (leaf names; None for a module without one)."""
    config = getattr(module, "peft_config", None)
    if not isinstance(config, dict) or not config:
        return None
    adapter = config.get(getattr(module, "active_adapter", "default")) or next(iter(config.values()))
    targets = getattr(adapter, "target_modules", None)
    if targets is None:
        return None
    return [targets] if isinstance(targets, str) else sorted({name.rsplit(".", 1)[-1] for name in targets})


def trainable_summary(model: nn.Module) -> dict[str, Any]:
    """Trainable and total parameter counts, overall and per component, with one log line.

    Returns:
        ``{"trainable": int, "total": int, "ratio": float, "components": {part: {"trainable", "total"}}}``; parts
        are "encoder", "projector" and "llm" for a report generator, top-level children otherwise.
    """
    if hasattr(model, "component_parameters"):
        groups = model.component_parameters()
    else:
        groups = {}
        for name, param in model.named_parameters():
            groups.setdefault(name.split(".", 1)[0], []).append((name, param))
    components = {
        part: {"trainable": sum(p.numel() for _, p in params if p.requires_grad),
               "total": sum(p.numel() for _, p in params)}
        for part, params in groups.items()
    }  # fmt: skip
    trainable = sum(c["trainable"] for c in components.values())
    total = sum(c["total"] for c in components.values())
    summary = {"trainable": trainable, "total": total, "ratio": trainable / total if total else 0.0,
               "components": components}  # fmt: skip
    parts = ", ".join(f"{k} {v['trainable']:,}/{v['total']:,}" for k, v in components.items())
    logger.info("trainable parameters: %s / %s (%.2f%%) [%s]", f"{trainable:,}", f"{total:,}", 100 * summary["ratio"],
                parts)  # fmt: skip
    return summary
