"""RadiologyReportGenerator: vision encoder -> view fusion -> projector -> soft visual prompts -> causal LLM.

The prompt holds one image placeholder token per visual prompt vector (``K`` of them); the projected vectors are
written over those positions of the LLM's input embeddings with ``masked_scatter`` (the pattern of transformers'
LLaVA), so batching, left padding and the KV cache work as for text. The loss is the LLM's loss on the report
tokens only (the labels built by :class:`~monai_r2gen.data.reports.TokenizeReportd` are -100 elsewhere).

Optional auxiliary loss (``GeneratorConfig.finding_head``): a linear head on the encoder tokens, averaged over tokens
and present views, predicts the 14 CheXpert labels of the training report
(:class:`~monai_r2gen.data.reports.ReportFindingLabelsd`); its binary cross-entropy, weighted by
``finding_loss_weight``, is added to the LM loss so that the vision encoder learns the findings. With
``GeneratorConfig.finding_prompts`` the head's probabilities also reach the LLM: 14 more prompts
(:class:`~monai_r2gen.networks.projectors.FindingPrompts`) follow the visual prompts in the image positions, so the
language model reads each finding from one place (the head is trained by its loss alone; the probabilities are
detached).

Saving and loading (the model directory's files and their checks) live in :mod:`monai_r2gen.networks.model_files`.
"""

from __future__ import annotations

import copy
import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from monai_r2gen.data.finding_attributes import ATTRIBUTE_KINDS
from monai_r2gen.data.reports import IGNORE_INDEX, encode_prompt
from monai_r2gen.data.tokenizer import add_image_token
from monai_r2gen.errors import ModelConfigError
from monai_r2gen.metrics.chexpert import CHEXPERT_LABELS
from monai_r2gen.networks.attribute_head import FindingAttributeHead
from monai_r2gen.networks.attribute_prompts import AttributeTargets, alignment_loss
from monai_r2gen.networks.attribute_slots import (
    AttributeSlotPrompts,
    SlotValues,
    mix_slot_values,
    slot_values_from_logits,
    slot_values_from_targets,
)
from monai_r2gen.networks.attribute_words import attribute_word_ids, attribute_word_loss
from monai_r2gen.networks.dense_readout import box_map_targets
from monai_r2gen.networks.encoders import VisionEncoder
from monai_r2gen.networks.fingerprints import fingerprint
from monai_r2gen.networks.generator_config import DEFAULT_GENERATION, TINY_LLAMA, GeneratorConfig, _parse_dtype
from monai_r2gen.networks.generator_parts import EXTRA_MODULES, build_fusion_and_projector, build_vision_encoder, seeded
from monai_r2gen.networks.greedy import greedy_decode, supports_lean_greedy
from monai_r2gen.networks.host_syncs import host_reads_are_free
from monai_r2gen.networks.kind_feature_prompts import KindFeaturePrompts
from monai_r2gen.networks.llm_loading import (
    _is_peft,
    _model_type,
    _resize_embeddings,
    default_lora_targets,
    linear_module_names,
    load_causal_lm,
    load_tokenizer,
    resolve_lora_targets,
)
from monai_r2gen.networks.model_files import (
    _base_record,
    load_model,
    save_model,
)
from monai_r2gen.networks.packing import pack, plan_packing
from monai_r2gen.networks.projectors import (
    FindingPrompts,
    ViewFusion,
)

__all__ = [
    "DEFAULT_GENERATION",
    "TINY_LLAMA",
    "GeneratorConfig",
    "RadiologyReportGenerator",
    "default_lora_targets",
    "fingerprint",
    "linear_module_names",
    "load_causal_lm",
    "resolve_lora_targets",
]

logger = logging.getLogger(__name__)


class RadiologyReportGenerator(nn.Module):
    """Vision encoder -> view fusion -> projector -> ``K`` soft visual prompts -> causal LLM.

    Build it with :func:`~monai_r2gen.networks.factory.build_generator` (or :meth:`from_config` with a tokenizer) and
    reload it with :meth:`from_pretrained`. Freeze policies live in :mod:`monai_r2gen.engines.stages`.

    Args:
        config: the settings the parts were built from.
        encoder: vision encoder adapter.
        fusion: view fusion.
        projector: projector to the LLM width.
        llm: Hugging Face causal LM (or a peft model wrapping one).
        tokenizer: its tokenizer (gets the image token if missing).
        bases: provenance of the encoder and LLM (``{"encoder": {"source", "path", "fingerprint"}, "llm": ...}``).
    """

    def __init__(
        self,
        config: GeneratorConfig,
        encoder: VisionEncoder,
        fusion: ViewFusion,
        projector: nn.Module,
        llm: nn.Module,
        tokenizer: Any,
        bases: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.encoder = encoder
        self.fusion = fusion
        self.projector = projector
        self.llm = llm
        self.tokenizer = tokenizer
        self.image_token_id = add_image_token(tokenizer, config.image_token)
        vocab = self.llm.get_input_embeddings().weight.shape[0]
        if vocab < len(tokenizer):
            raise ModelConfigError(f"the LLM has {vocab} token embeddings for a tokenizer of {len(tokenizer)} tokens")
        self._num_image_tokens = int(projector.num_outputs(fusion.output_tokens(encoder.num_tokens)))
        self._attribute_word_ids: torch.Tensor | None
        if config.attribute_word_weight > 0:
            ids = attribute_word_ids(tokenizer)
            if not ids:
                logger.warning("attribute_word_weight: the tokenizer writes no attribute word as one token; no loss")
            self.register_buffer("_attribute_word_ids", torch.tensor(ids, dtype=torch.long), persistent=False)
        else:
            self._attribute_word_ids = None
        weight = self.llm.get_input_embeddings().weight.detach()
        width, scale = int(weight.shape[1]), float(weight.float().std())  # prompts start at the word embeddings' scale
        self.finding_head: nn.Linear | None = None
        self.finding_prompts: FindingPrompts | None = None
        if config.finding_head:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(config.seed)
                self.finding_head = nn.Linear(encoder.out_dim, len(CHEXPERT_LABELS))
                if config.finding_prompts:
                    self.finding_prompts = FindingPrompts(len(CHEXPERT_LABELS), width, init_std=scale)
                    self._num_image_tokens += self.finding_prompts.num_labels
        self.attribute_head: FindingAttributeHead | None = None
        if config.attribute_head:
            tokens = encoder.out_dim if config.attribute_source in ("tokens", "dense") else None
            self.attribute_head = seeded(config.seed + 1, FindingAttributeHead, self._num_image_tokens, width, tokens,
                                          config.attribute_queries, config.attribute_source == "dense",
                                          config.max_views)  # fmt: skip
            grid = int(getattr(encoder, "num_tokens", 0) or 0)
            if config.attribute_box_weight > 0 and math.isqrt(grid) ** 2 != grid:
                raise ModelConfigError(f"attribute_box_weight: the boxes are drawn on a square token grid per view, "
                                       f"the encoder gives {grid} tokens per view")  # fmt: skip
        self.attribute_features: KindFeaturePrompts | None = None
        if config.attribute_feature_prompts:  # after the projector's prompts, before the finding prompts
            self.attribute_features = seeded(config.seed + 4, KindFeaturePrompts, 2 * width, width,
                                              len(ATTRIBUTE_KINDS), config.max_views, scale)  # fmt: skip
            self._num_image_tokens += self.attribute_features.num_prompts
        self.attribute_slots: AttributeSlotPrompts | None = None
        if config.attribute_slots:
            self.attribute_slots = seeded(config.seed + 3, AttributeSlotPrompts, width, scale,
                                           presence=self.finding_prompts is None)  # fmt: skip
            self._num_image_tokens += self.attribute_slots.num_prompts
        self.attribute_prompts: AttributeTargets | None = None
        if config.attribute_prompts:
            self.attribute_prompts = seeded(config.seed + 2, AttributeTargets, width, scale)
        self.bases = bases or {}
        self.trained: set[str] = set()  # components whose full weights were trained ("encoder", "llm")

    # ------------------------------------------------------------------------------------------------------------
    # construction
    # ------------------------------------------------------------------------------------------------------------

    @classmethod
    def from_config(cls, config: GeneratorConfig | dict[str, Any], tokenizer: Any = None) -> RadiologyReportGenerator:
        """Build every part from ``config``.

        Args:
            config: settings.
            tokenizer: the tokenizer; None loads it from ``config.tokenizer_path`` or ``config.llm_path``.

        Raises:
            ModelConfigError: inconsistent settings, missing local files, or no tokenizer for a model built from
                scratch.
        """
        config = GeneratorConfig.from_dict(config) if isinstance(config, dict) else copy.deepcopy(config)
        if tokenizer is None:
            source = config.tokenizer_path or config.llm_path
            if source is None:
                raise ModelConfigError("an LLM built from a config needs a tokenizer: give tokenizer_path, or build "
                                       "with build_generator(config, corpus=reports) to train one")  # fmt: skip
            tokenizer = load_tokenizer(source, config.trust_remote_code)
        add_image_token(tokenizer, config.image_token)
        dtype = _parse_dtype(config.dtype)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            encoder = build_vision_encoder(config, config.encoder_path, dtype)
            llm = load_causal_lm(config.llm_path, config.llm_options, tokenizer, config.trust_remote_code, dtype)
            _resize_embeddings(llm, len(tokenizer))
            fusion, projector = build_fusion_and_projector(config, encoder, llm)
        # record what the model directories said, so the saved config is explicit
        if config.image_mean is None and encoder.normalization is not None:
            config.image_mean, config.image_std = encoder.normalization
        if config.image_size is None and encoder.image_size is not None and len(set(encoder.image_size)) == 1:
            config.image_size = int(encoder.image_size[0])
        bases = {
            "encoder": _base_record(config.encoder_path),
            "llm": _base_record(config.llm_path),
        }
        model = cls(config, encoder, fusion, projector, llm, tokenizer, bases)
        if config.prompt_scale == "embedding":  # initial weights only: a loaded model keeps its trained ones
            norm = getattr(projector, "norm", None) or getattr(projector, "out_norm", None)
            if not isinstance(norm, nn.LayerNorm) or norm.weight is None:
                raise ModelConfigError(f"prompt_scale 'embedding' needs a projector ending in a LayerNorm, not "
                                       f"{config.projector!r}")  # fmt: skip
            with torch.no_grad():
                norm.weight.fill_(float(llm.get_input_embeddings().weight.detach().float().std()))
        if config.gradient_checkpointing:
            model.enable_gradient_checkpointing()
        logger.info(
            "built a report generator: %s encoder (%d tokens/view), %s fusion, %s projector -> K=%d prompts, LLM %s",
            config.encoder, encoder.num_tokens, config.view_fusion, config.projector, model.num_image_tokens,
            getattr(model.llm_config, "model_type", "?"),
        )  # fmt: skip
        return model

    # ------------------------------------------------------------------------------------------------------------
    # properties
    # ------------------------------------------------------------------------------------------------------------

    @property
    def projector_dtype(self) -> torch.dtype:
        """The dtype of the view fusion and projector (float32 also when the encoder and LLM are bf16)."""
        return next(self.projector.parameters()).dtype

    @property
    def num_image_tokens(self) -> int:
        """``K``: soft visual prompts per study, i.e. image token positions in every prompt."""
        return self._num_image_tokens

    @property
    def base_llm(self) -> nn.Module:
        """The Hugging Face causal LM (inside the peft wrapper when LoRA is on)."""
        return self.llm.get_base_model() if _is_peft(self.llm) else self.llm

    @property
    def llm_config(self) -> Any:
        """The LLM's Hugging Face config."""
        return self.base_llm.config

    @property
    def encoder_backbone_name(self) -> str:
        """Attribute of the encoder adapter that holds its backbone (the module LoRA wraps)."""
        for name in ("model", "net", "features"):
            if isinstance(getattr(self.encoder, name, None), nn.Module):
                return name
        raise ModelConfigError(f"{type(self.encoder).__name__} has no backbone module")

    @property
    def has_llm_lora(self) -> bool:
        """Whether LoRA adapters are attached to the LLM."""
        return _is_peft(self.llm)

    @property
    def has_encoder_lora(self) -> bool:
        """Whether LoRA adapters are attached to the encoder."""
        return _is_peft(getattr(self.encoder, self.encoder_backbone_name))

    def component_parameters(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Named parameters grouped by component: "encoder", "projector" (with view fusion, finding head and finding
        prompts), "llm"."""
        groups: dict[str, list[tuple[str, nn.Parameter]]] = {"encoder": [], "projector": [], "llm": []}
        for name, param in self.named_parameters():
            part = name.split(".", 1)[0]
            projector = part in ("fusion", "projector", *EXTRA_MODULES)
            groups["projector" if projector else part].append((name, param))
        return groups

    # ------------------------------------------------------------------------------------------------------------
    # parameter-efficient tuning and memory
    # ------------------------------------------------------------------------------------------------------------

    def enable_llm_lora(
        self,
        r: int | None = None,
        alpha: int | None = None,
        dropout: float | None = None,
        target_modules: Sequence[str] | str | None = None,
    ) -> None:
        """Wrap the LLM with LoRA adapters (peft); a no-op when already wrapped.

        peft freezes every base weight (embeddings and LM head included). Settings default to the config's; the
        targets are checked by :func:`resolve_lora_targets` (None / "auto": the family's defaults).

        Raises:
            ModelConfigError: targets that match no module of the LLM (the message names its family and layers).
        """
        if self.has_llm_lora:
            return
        from peft import LoraConfig, TaskType, get_peft_model

        cfg = self.config
        targets = target_modules if target_modules is not None else cfg.llm_lora_target_modules
        targets = resolve_lora_targets(self.llm, targets)
        # peft's causal-LM wrapper refuses inputs_embeds for MPT (a rule of the former remote-code MPT; transformers'
        # MPT takes them), so MPT gets the plain wrapper, which forwards every argument to the model
        task_type = None if _model_type(self.llm) == "mpt" else TaskType.CAUSAL_LM
        lora = LoraConfig(
            task_type=task_type,
            r=r or cfg.llm_lora_r,
            lora_alpha=alpha or cfg.llm_lora_alpha,
            lora_dropout=cfg.llm_lora_dropout if dropout is None else dropout,
            target_modules=targets,
            bias="none",
        )
        try:
            self.llm = get_peft_model(self.llm, lora)
        except ValueError as exc:  # e.g. a target that is a block, not a layer peft can adapt
            raise ModelConfigError(f"LoRA on the {_model_type(self.llm)!r} LLM with target_modules {targets!r} "
                                   f"failed ({exc}); its Linear / Conv1D layers are named "
                                   f"{linear_module_names(self.llm)}") from exc  # fmt: skip
        adapted = getattr(self.llm, "peft_config", {}).get("default", lora).target_modules  # "all-linear" expanded
        adapted = adapted if isinstance(adapted, str) else sorted({name.rsplit(".", 1)[-1] for name in adapted})
        logger.info("LoRA on the LLM: r=%d alpha=%d targets=%s", lora.r, lora.lora_alpha, adapted)

    def enable_encoder_lora(
        self,
        r: int | None = None,
        alpha: int | None = None,
        dropout: float | None = None,
        target_modules: Sequence[str] | None = None,
    ) -> None:
        """Wrap the encoder backbone with LoRA adapters (R2GenGPT "delta"); a no-op when already wrapped."""
        if self.has_encoder_lora:
            return
        from peft import LoraConfig, get_peft_model

        cfg = self.config
        attr = self.encoder_backbone_name
        backbone = getattr(self.encoder, attr)
        targets = list(target_modules or cfg.encoder_lora_target_modules or self.encoder.lora_target_modules())
        if attr == "features":  # names relative to the wrapped module
            targets = [t.removeprefix("features.") for t in targets]
        lora = LoraConfig(
            r=r or cfg.encoder_lora_r,
            lora_alpha=alpha or cfg.encoder_lora_alpha,
            lora_dropout=cfg.encoder_lora_dropout if dropout is None else dropout,
            target_modules=targets,
            bias="none",
        )
        setattr(self.encoder, attr, get_peft_model(backbone, lora))
        logger.info("LoRA on the encoder: r=%d alpha=%d targets=%s", lora.r, lora.lora_alpha, targets)

    def enable_gradient_checkpointing(self) -> None:
        """Activation checkpointing in the LLM (and a Hugging Face encoder), non-reentrant."""
        base = self.base_llm
        if getattr(base, "supports_gradient_checkpointing", False):
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            base.config.use_cache = False
        else:
            logger.warning("%s does not support gradient checkpointing", type(base).__name__)
        self.encoder.enable_gradient_checkpointing()

    # ------------------------------------------------------------------------------------------------------------
    # forward
    # ------------------------------------------------------------------------------------------------------------

    def encode_views(self, images: torch.Tensor, view_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Encoder tokens ``(B, V, N, D)`` of ``(B, V, C, H, W)`` views.

        A frozen encoder keeps no graph without a ``no_grad`` switch: the images require no gradient, so autograd
        records nothing unless a parameter does (and the forward needs no loop over the parameters to know).
        A MONAI ``MetaTensor`` (a loaded study) is read as a plain tensor: its metadata would otherwise follow every
        operation of the model and the LLM (several times the generation time).
        """
        if type(images) is not torch.Tensor:
            images = images.as_subclass(torch.Tensor)
        return self.encoder(images, view_mask)

    def finding_logits(self, visual_tokens: torch.Tensor, view_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Finding head logits ``(B, 14)`` (:data:`~monai_r2gen.metrics.chexpert.CHEXPERT_LABELS` order).

        Args:
            visual_tokens: encoder output ``(B, V, N, D)``, averaged over tokens and present views.
            view_mask: ``(B, V)`` bool, True for real views (None: all).

        Raises:
            ModelConfigError: the model has no finding head.
        """
        if self.finding_head is None:
            raise ModelConfigError("this model has no finding head (GeneratorConfig.finding_head=False)")
        per_view = visual_tokens.mean(dim=2, dtype=torch.float32)
        if view_mask is None:
            pooled = per_view.mean(dim=1)
        else:
            weights = view_mask.to(device=per_view.device, dtype=per_view.dtype).unsqueeze(-1)
            pooled = (per_view * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return self.finding_head(pooled)

    def finding_probabilities(self, visual_tokens: torch.Tensor, view_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The head's detached probabilities ``(B, 14)`` as the finding prompts take them (0/1 with
        ``config.hard_finding_prompts``)."""
        probabilities = torch.sigmoid(self.finding_logits(visual_tokens, view_mask)).detach()
        if self.config.hard_finding_prompts:
            probabilities = (probabilities > 0.5).to(probabilities.dtype)
        return probabilities

    def encode_images(
        self,
        images: torch.Tensor | None = None,
        view_mask: torch.Tensor | None = None,
        visual_tokens: torch.Tensor | None = None,
        finding_probabilities: torch.Tensor | None = None,
        attribute_values: SlotValues | None = None,
        feature_statistics: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Soft visual prompts of a batch of studies.

        Args:
            images: ``(B, V, C, H, W)`` (``(B, C, H, W)`` for one view).
            view_mask: ``(B, V)`` bool, True for real views.
            visual_tokens: precomputed encoder output ``(B, V, N, D)`` (frozen-encoder feature cache) instead of
                ``images``.
            finding_probabilities: ``(B, 14)`` values for the finding prompts instead of the head's prediction
                (teacher forcing with the report labels).
            attribute_values: values of the attribute slot prompts instead of the attribute head's prediction
                (:func:`~monai_r2gen.networks.attribute_slots.slot_values_from_targets`).
            feature_statistics: ``(statistics, rows)``: the known findings' map statistics of the attribute feature
                prompts for those rows (:meth:`~monai_r2gen.networks.kind_feature_prompts.KindFeaturePrompts.forward`).

        Returns:
            ``(prompts, prompt_mask)``: ``(B, K, H)`` float32 and ``(B, K)`` bool: the projector's prompts, then the
            14 finding prompts and the attribute slot prompts where the model has them.
        """
        if visual_tokens is None:
            if images is None:
                raise ValueError("give images or visual_tokens")
            visual_tokens = self.encode_views(images, view_mask)
        if not _autocast_enabled(visual_tokens.device):  # under autocast, autocast picks the matmul dtype
            visual_tokens = visual_tokens.to(self.projector_dtype)
        fused, token_mask = self.fusion(visual_tokens, view_mask)
        prompts, prompt_mask = self.projector(fused, token_mask)
        visual, features = prompts, None
        if self.attribute_features is not None:
            features = self._attribute_head_input(visual_tokens, view_mask, visual, (fused, token_mask))
            extra = self.attribute_features(features, view_mask, visual_tokens.shape[1], feature_statistics)
            prompts = torch.cat([prompts, extra.to(prompts.dtype)], dim=1)
            prompt_mask = torch.cat([prompt_mask, prompt_mask.new_ones(extra.shape[:2])], dim=1)
        if self.finding_prompts is not None:
            if finding_probabilities is None:
                finding_probabilities = self.finding_probabilities(visual_tokens, view_mask)
            extra = self.finding_prompts(finding_probabilities.to(prompts.device)).to(prompts.dtype)
            prompts = torch.cat([prompts, extra], dim=1)
            prompt_mask = torch.cat([prompt_mask, prompt_mask.new_ones(extra.shape[:2])], dim=1)
        if self.attribute_slots is not None:
            if attribute_values is None:
                if features is None:
                    features = self._attribute_head_input(visual_tokens, view_mask, visual, (fused, token_mask))
                attribute_values = slot_values_from_logits(*self.attribute_head(features),  # type: ignore[misc]
                                                           hard=self.config.hard_finding_prompts)  # fmt: skip
            extra = self.attribute_slots(attribute_values).to(prompts.dtype)
            prompts = torch.cat([prompts, extra], dim=1)
            prompt_mask = torch.cat([prompt_mask, prompt_mask.new_ones(extra.shape[:2])], dim=1)
        return prompts, prompt_mask

    def _attribute_reads_tokens(self) -> bool:
        return self.attribute_head is not None and self.attribute_head.reads_tokens

    def _attribute_head_input(
        self,
        visual_tokens: torch.Tensor | None,
        view_mask: torch.Tensor | None,
        prompts: torch.Tensor | None,
        fused: tuple[torch.Tensor, torch.Tensor | None] | None = None,
    ) -> torch.Tensor | None:
        """What the attribute head reads: its pooling of the fused encoder tokens (``fused``: already computed), its
        dense readout of each view's tokens, or the projector's prompts (None when the needed one is missing)."""
        if not self._attribute_reads_tokens():
            return prompts
        if visual_tokens is None:
            return None
        if not _autocast_enabled(visual_tokens.device):
            visual_tokens = visual_tokens.to(self.projector_dtype)
        if self.attribute_head.dense:  # type: ignore[union-attr]
            return self.attribute_head.features(visual_tokens, view_mask)  # type: ignore[union-attr]
        fused = fused if fused is not None else self.fusion(visual_tokens, view_mask)
        return self.attribute_head.features(*fused)  # type: ignore[union-attr]

    def prepare_inputs_embeds(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        images: torch.Tensor | None = None,
        view_mask: torch.Tensor | None = None,
        visual_tokens: torch.Tensor | None = None,
        finding_probabilities: torch.Tensor | None = None,
        prompts: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """LLM input embeddings with the visual prompts written over the image token positions.

        Without images (text-only, stage 0) the image positions are hidden from attention instead.
        ``finding_probabilities`` replace the head's prediction in the finding prompts (see :meth:`encode_images`);
        ``prompts`` (``(prompts, prompt_mask)`` of :meth:`encode_images`) replace the images.

        Returns:
            ``(inputs_embeds, attention_mask)``.

        Raises:
            ModelConfigError: a prompt whose number of image tokens differs from ``K``.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        image_positions = input_ids == self.image_token_id
        embeds = self.llm.get_input_embeddings()(input_ids)
        if images is None and visual_tokens is None and prompts is None:
            return embeds, attention_mask.masked_fill(image_positions, 0)
        if prompts is None:
            prompts = self.encode_images(images, view_mask, visual_tokens, finding_probabilities)
        prompts, prompt_mask = prompts
        counts = image_positions.sum(dim=1)
        # checked on CPU tensors only (host_syncs): on an accelerator TokenizeReportd's K image tokens are trusted
        wrong = prompts.shape[0] != input_ids.shape[0]
        if wrong or (host_reads_are_free(counts) and bool((counts != prompts.shape[1]).any())):
            raise ModelConfigError(
                f"the prompts hold {counts.tolist()} image tokens per study but the projector gives "
                f"{prompts.shape[1]} prompts for each of {prompts.shape[0]} studies; tokenize with "
                f"num_image_tokens={self.num_image_tokens}"
            )
        embeds = embeds.masked_scatter(image_positions.unsqueeze(-1), prompts.to(embeds.dtype))
        if not (host_reads_are_free(prompt_mask) and bool(prompt_mask.all())):
            # prompts of padded views (concat fusion, token-wise projector) are hidden from attention
            shown = torch.ones_like(attention_mask).masked_scatter(image_positions, prompt_mask.to(attention_mask))
            attention_mask = attention_mask * shown
        return embeds, attention_mask

    def forward(
        self,
        images: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        view_mask: torch.Tensor | None = None,
        visual_tokens: torch.Tensor | None = None,
        finding_labels: torch.Tensor | None = None,
        text_only: bool = False,
        findings_only: bool = False,
        teacher_forcing: float = 0.0,
        attribute_presence: torch.Tensor | None = None,
        attribute_fields: torch.Tensor | None = None,
        attribute_boxes: torch.Tensor | None = None,
        attribute_box_views: torch.Tensor | None = None,
        pack_sequences: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Run the LLM on prompt + report with the visual prompts spliced in.

        Args:
            images: ``(B, V, C, H, W)`` views; None for text-only training (stage 0).
            input_ids: ``(B, L)`` ids from :class:`~monai_r2gen.data.reports.TokenizeReportd` (K image tokens each).
            attention_mask: ``(B, L)``.
            labels: ``(B, L)``, -100 on prompt, image and padding positions.
            view_mask: ``(B, V)`` bool.
            visual_tokens: precomputed encoder tokens instead of ``images``.
            finding_labels: ``(B, 14)`` binary CheXpert labels of the reports
                (:class:`~monai_r2gen.data.reports.ReportFindingLabelsd`); with a finding head and images, ``.loss``
                becomes ``lm_loss + finding_loss_weight * finding_loss``. Ignored without a head or without images.
            text_only: hide the image positions from the LLM as in a text-only batch; the images only feed the
                finding head (stage 0 warms the language model and the encoder up side by side). With finding
                prompts, the report's own ``finding_labels`` fill the finding prompt positions (teacher forcing),
                so the language model learns to read them while it learns the language.
            findings_only: train the visual path alone: the LLM is not run and ``.loss`` is the finding head's
                binary cross-entropy and / or the attribute head's loss (encoder warm-up); needs images (or
                ``visual_tokens``) and the targets of a head the model has.
            teacher_forcing: with finding prompts, images and ``finding_labels``: the probability (per study) that
                the finding prompts carry the report's labels instead of the head's prediction, so the language
                model keeps learning to read them from clean labels while the head learns from the images.
            attribute_presence: ``(B, 9)`` finding-kind presence targets of the attribute head
                (:class:`~monai_r2gen.data.finding_attributes.FindingAttributeTargetsd`).
            attribute_fields: ``(B, F)`` attribute-field targets of the attribute head; with both and a trainable
                attribute head, ``.loss`` adds ``attribute_loss_weight`` times the head's loss on the visual prompts.
            attribute_boxes: ``(B, M, 6)`` finding boxes and ``attribute_box_views`` ``(B, V)`` the views whose boxes
                are known (:class:`~monai_r2gen.data.finding_boxes.FindingBoxesd`): the dense readout's presence
                maps are taught where each finding is (``attribute_box_weight``).
            pack_sequences: run the LLM on the attended positions packed into fewer rows
                (:mod:`~monai_r2gen.networks.packing`): the same loss without the padding's work; ``.logits`` are
                then in the packed layout (training only).
            **kwargs: passed to the LLM.

        Returns:
            The LLM's ``CausalLMOutputWithPast`` (``.loss`` when labels are given, ``.logits``); with the auxiliary
            losses it also holds ``lm_loss``, ``finding_loss`` and ``finding_logits``, ``attribute_loss``.
        """
        known = attribute_presence is not None and attribute_fields is not None
        attribute_targets = None
        if known and self._attribute_head_trains():
            attribute_targets = (attribute_presence, attribute_fields, attribute_boxes, attribute_box_views)
        # the attribute slot prompts of the studies' known attributes (teacher forcing, text-only stages)
        known_slots = None
        if known and self.attribute_slots is not None:
            known_slots = slot_values_from_targets(attribute_presence, attribute_fields)  # type: ignore[arg-type]
        if findings_only:
            return self._findings_only(images, view_mask, visual_tokens, finding_labels, attribute_targets)
        if input_ids is None:
            raise ValueError("input_ids are required")
        if labels is not None:  # the visual prompts are inputs, never targets
            labels = labels.masked_fill(input_ids == self.image_token_id, IGNORE_INDEX)
        aux = finding_labels is not None and self.finding_head is not None
        heads = aux or attribute_targets is not None or known_slots is not None
        if heads and visual_tokens is None and images is not None:  # encode once, for the prompts and the heads
            visual_tokens, images = self.encode_views(images, view_mask), None
        aux = aux and visual_tokens is not None  # text-only batches have no findings to predict
        if text_only:
            embeds, attention_mask = self._text_only_embeddings(input_ids, attention_mask, finding_labels, known_slots)
            prompts, alignment = None, None
        else:
            embeds, attention_mask, prompts, alignment = self._prompted_embeddings(
                images, input_ids, attention_mask, view_mask, visual_tokens, finding_labels if aux else None,
                known_slots, teacher_forcing, attribute_presence, attribute_fields, attribute_boxes,
                attribute_box_views,
            )  # fmt: skip
        output, labels = self._run_llm(embeds, attention_mask, labels, pack_sequences, **kwargs)
        self._add_auxiliary_losses(output, labels, visual_tokens, view_mask, finding_labels if aux else None,
                                   attribute_targets, prompts, alignment)  # fmt: skip
        return output

    def _add_auxiliary_losses(
        self,
        output: Any,
        labels: torch.Tensor | None,
        visual_tokens: torch.Tensor | None,
        view_mask: torch.Tensor | None,
        finding_labels: torch.Tensor | None,
        attribute_targets: tuple[torch.Tensor | None, ...] | None,
        prompts: Any,
        alignment: torch.Tensor | None,
    ) -> None:
        """Add the auxiliary losses to the LLM's ``output`` (each under its own key, weighted into ``.loss``): the
        finding head's (``finding_labels`` given), the attribute head's, the attribute-word loss and the prompt
        alignment loss."""
        if finding_labels is not None:
            finding_loss, logits = self._finding_loss(visual_tokens, view_mask, finding_labels)
            lm_loss = output.loss
            output["lm_loss"] = lm_loss
            output["finding_loss"] = finding_loss
            output["finding_logits"] = logits
            _add_loss(output, self.config.finding_loss_weight * finding_loss)
        if attribute_targets is not None:
            features = self._attribute_head_input(visual_tokens, view_mask, None if prompts is None else prompts[0])
            if features is not None:
                output["attribute_loss"] = self._attribute_loss(features, attribute_targets)
                _add_loss(output, self.config.attribute_loss_weight * output["attribute_loss"])
        if self._attribute_word_ids is not None and labels is not None and output.loss is not None:
            output["attribute_word_loss"] = attribute_word_loss(output.logits, labels, self._attribute_word_ids)
            _add_loss(output, self.config.attribute_word_weight * output["attribute_word_loss"])
        if alignment is not None and alignment.requires_grad:
            output["alignment_loss"] = alignment
            _add_loss(output, self.config.attribute_prompt_weight * alignment)

    def _text_only_embeddings(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        finding_labels: torch.Tensor | None,
        known_slots: SlotValues | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings of a text-only batch: the image positions hidden, the finding and slot prompts (when the
        model has them) filled from the studies' known labels and attributes."""
        embeds, text_mask = self.prepare_inputs_embeds(input_ids, attention_mask)
        labels_known = self.finding_prompts is not None and finding_labels is not None
        if labels_known or known_slots is not None:
            embeds, text_mask = self._label_prompts(
                input_ids, embeds, text_mask, attention_mask, finding_labels if labels_known else None, known_slots
            )
        return embeds, text_mask

    def _prompted_embeddings(
        self,
        images: torch.Tensor | None,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        view_mask: torch.Tensor | None,
        visual_tokens: torch.Tensor | None,
        finding_labels: torch.Tensor | None,
        known_slots: SlotValues | None,
        teacher_forcing: float,
        attribute_presence: torch.Tensor | None,
        attribute_fields: torch.Tensor | None,
        attribute_boxes: torch.Tensor | None,
        attribute_box_views: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, Any, torch.Tensor | None]:
        """Embeddings with the visual prompts written over the image positions (the studies' known labels and
        attributes forced into the finding, slot and feature prompts for a ``teacher_forcing`` share of them);
        returns the embeddings, their mask, the prompts and the attribute prompts' alignment loss."""
        forced, forced_slots = None, None
        forcing = finding_labels is not None and self.finding_prompts is not None
        if teacher_forcing > 0 and visual_tokens is not None and (forcing or known_slots is not None):
            pick = None  # every study
            if teacher_forcing < 1:
                pick = torch.rand(visual_tokens.shape[0], device=visual_tokens.device) < teacher_forcing
            if forcing:
                forced = self._forced_probabilities(visual_tokens, view_mask, finding_labels, teacher_forcing, pick)
            if known_slots is not None:
                forced_slots = self._forced_slot_values(visual_tokens, view_mask, known_slots, pick)
        forced_stats = None
        if teacher_forcing > 0 and self.attribute_features is not None and attribute_presence is not None:
            forced_stats = self._forced_feature_statistics(
                attribute_presence, attribute_boxes, attribute_box_views, view_mask, teacher_forcing
            )
        prompts = None
        if images is not None or visual_tokens is not None:
            prompts = self.encode_images(images, view_mask, visual_tokens, forced, forced_slots, forced_stats)
        shown, alignment = prompts, None
        if prompts is not None and self.attribute_prompts is not None and attribute_presence is not None:
            shown, alignment = self._target_prompts(prompts, attribute_presence, attribute_fields, teacher_forcing)
        embeds, mask = self.prepare_inputs_embeds(input_ids, attention_mask, prompts=shown)
        return embeds, mask, prompts, alignment

    def _run_llm(
        self,
        embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None,
        pack_sequences: bool,
        **kwargs: Any,
    ) -> tuple[Any, torch.Tensor | None]:
        """The LLM's output on the embeddings (packed into fewer rows with ``pack_sequences``) and the labels in the
        layout of its logits."""
        if pack_sequences:  # no attention mask: transformers masks each packed study from its position ids
            plan = plan_packing(attention_mask)
            embeds, mask, position_ids = pack(embeds, plan), None, plan.position_ids
            labels = None if labels is None else pack(labels, plan, IGNORE_INDEX)
            kwargs.setdefault("use_cache", False)
        else:
            mask = attention_mask
            position_ids = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
        output = self.llm(
            inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids, labels=labels, return_dict=True,
            **kwargs,
        )  # fmt: skip
        return output, labels

    def _target_prompts(
        self,
        prompts: tuple[torch.Tensor, torch.Tensor],
        presence: torch.Tensor,
        fields: torch.Tensor | None,
        share: float,
    ) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The prompts the LLM is shown with target prompts (:mod:`~monai_r2gen.networks.attribute_prompts`): the
        first 9 replaced by the study's targets for a random ``share`` of the studies, and the alignment loss of
        the projector's first 9 prompts to those targets."""
        assert self.attribute_prompts is not None
        values, mask = prompts
        if fields is None:
            raise ValueError("attribute prompts need attribute_fields beside attribute_presence")
        anchored = self.attribute_prompts.num_anchored
        targets = self.attribute_prompts(presence, fields).to(values.dtype)
        alignment = alignment_loss(values[:, :anchored], targets)
        if share <= 0:
            return prompts, alignment
        first = targets
        if share < 1:
            pick = torch.rand(values.shape[0], 1, 1, device=values.device) < share
            first = torch.where(pick, targets, values[:, :anchored])
        return (torch.cat([first, values[:, anchored:]], dim=1), mask), alignment

    def _attribute_loss(self, features: torch.Tensor, targets: tuple[torch.Tensor | None, ...]) -> torch.Tensor:
        """The attribute head's loss on ``features`` against ``(presence, fields, boxes, box_views)``."""
        head = self.attribute_head
        assert head is not None
        weight = self.config.attribute_box_weight
        return head.loss(features, *(targets if weight > 0 else targets[:2]), box_weight=weight).loss  # type: ignore

    def _attribute_head_trains(self) -> bool:
        head = self.attribute_head
        return head is not None and any(p.requires_grad for p in head.parameters())

    def _findings_only(
        self,
        images: torch.Tensor | None,
        view_mask: torch.Tensor | None,
        visual_tokens: torch.Tensor | None,
        finding_labels: torch.Tensor | None,
        attribute_targets: tuple[torch.Tensor | None, ...] | None,
    ) -> Any:
        from transformers.modeling_outputs import CausalLMOutputWithPast

        heads = (finding_labels is not None and self.finding_head is not None) or attribute_targets is not None
        if not heads or (images is None and visual_tokens is None):
            raise ValueError(
                "findings_only needs images (or visual_tokens) and the targets of the finding head "
                "(finding_labels) or of the attribute head (attribute_presence, attribute_fields)"
            )
        if visual_tokens is None:
            visual_tokens = self.encode_views(images, view_mask)
        output = CausalLMOutputWithPast()
        losses = []
        if finding_labels is not None and self.finding_head is not None:
            loss, logits = self._finding_loss(visual_tokens, view_mask, finding_labels)
            output["finding_loss"] = loss
            output["finding_logits"] = logits
            losses.append(loss)
        if attribute_targets is not None:
            features = self._attribute_head_input(visual_tokens, view_mask, None)
            if features is None:
                features, _ = self.encode_images(visual_tokens=visual_tokens, view_mask=view_mask)
            attribute_loss = self._attribute_loss(features, attribute_targets)
            output["attribute_loss"] = attribute_loss
            losses.append(self.config.attribute_loss_weight * attribute_loss)
        output["loss"] = torch.stack(losses).sum()
        return output

    def _finding_loss(
        self, visual_tokens: torch.Tensor, view_mask: torch.Tensor | None, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The finding head's binary cross-entropy against ``labels`` ``(B, 14)``, and its logits."""
        logits = self.finding_logits(visual_tokens, view_mask)
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits)), logits

    def _forced_probabilities(
        self,
        visual_tokens: torch.Tensor,
        view_mask: torch.Tensor | None,
        labels: torch.Tensor,
        share: float,
        pick: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Finding prompt values: the report ``labels`` for a random ``share`` of the studies (those ``pick``
        ``(B,)`` marks, when given), the head's prediction for the rest."""
        if pick is None:
            if share >= 1:
                return labels.float()
            pick = torch.rand(labels.shape[0], device=labels.device) < share
        predicted = self.finding_probabilities(visual_tokens, view_mask)
        labels = labels.to(device=predicted.device, dtype=predicted.dtype)
        return torch.where(pick.to(labels.device)[:, None], labels, predicted)

    def _forced_slot_values(
        self,
        visual_tokens: torch.Tensor,
        view_mask: torch.Tensor | None,
        known: SlotValues,
        pick: torch.Tensor | None,
    ) -> SlotValues:
        """Attribute slot values: the studies' ``known`` attributes where ``pick`` marks them (None: all), the
        attribute head's prediction for the rest."""
        if pick is None:
            return known
        features = self._attribute_head_input(visual_tokens, view_mask, None)
        if features is None:  # a prompt-reading head: its prediction needs the projector's prompts
            features, _ = self.encode_images(visual_tokens=visual_tokens, view_mask=view_mask, attribute_values=known)
        predicted = slot_values_from_logits(*self.attribute_head(features),  # type: ignore[misc]
                                            hard=self.config.hard_finding_prompts)  # fmt: skip
        return mix_slot_values(known, predicted, pick)

    def _forced_feature_statistics(
        self,
        presence: torch.Tensor,
        boxes: torch.Tensor | None,
        box_views: torch.Tensor | None,
        view_mask: torch.Tensor | None,
        share: float,
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The known findings' map statistics of the attribute feature prompts, and the rows that take them: a
        random ``share`` of the studies whose boxes are known on every real view (None without boxes)."""
        if boxes is None or box_views is None or self.attribute_features is None:
            return None
        features = self.attribute_features
        views = box_views.shape[1] if view_mask is None else view_mask.shape[1]
        known = box_views[:, :views].bool()
        maps = box_map_targets(boxes, views, int(self.encoder.num_tokens), features.num_kinds)
        stats = features.target_statistics(presence.to(maps.device), maps, view_mask)
        real = torch.ones_like(known) if view_mask is None else view_mask.to(device=known.device, dtype=torch.bool)
        rows = (known | ~real).all(dim=1)
        if share < 1:
            rows = rows & (torch.rand(rows.shape[0], device=rows.device) < share)
        return stats, rows

    def _label_prompts(
        self,
        input_ids: torch.Tensor,
        embeds: torch.Tensor,
        text_mask: torch.Tensor,
        attention_mask: torch.Tensor | None,
        labels: torch.Tensor | None,
        slot_values: SlotValues | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the finding prompts of known ``labels`` and the attribute slot prompts of known ``slot_values``
        over their image positions (after the projector's) and show them to the LLM."""
        image_positions = input_ids == self.image_token_id
        rank = image_positions.long().cumsum(dim=-1)
        end = self.num_image_tokens - (0 if self.attribute_slots is None else self.attribute_slots.num_prompts)
        parts = []
        if labels is not None and self.finding_prompts is not None:
            start = end - self.finding_prompts.num_labels
            parts.append((start, end, self.finding_prompts(labels.to(device=embeds.device, dtype=torch.float32))))
        if slot_values is not None and self.attribute_slots is not None:
            parts.append((end, self.num_image_tokens, self.attribute_slots(slot_values)))
        visible = torch.ones_like(text_mask) if attention_mask is None else attention_mask
        for start, stop, prompts in parts:
            slots = image_positions & (rank > start) & (rank <= stop)
            embeds = embeds.masked_scatter(slots.unsqueeze(-1), prompts.to(device=embeds.device, dtype=embeds.dtype))
            text_mask = torch.where(slots, visible, text_mask)
        return embeds, text_mask

    # ------------------------------------------------------------------------------------------------------------
    # generation
    # ------------------------------------------------------------------------------------------------------------

    def encode_prompts(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded prompt ids and attention mask for prompt templates (each with the image placeholder)."""
        rows = [encode_prompt(self.tokenizer, self.num_image_tokens, p, self.config.image_token) for p in prompts]
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(rows), width), int(pad), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row) :] = 1
        return ids, mask

    def generation_settings(self, **overrides: Any) -> dict[str, Any]:
        """The ``generate`` keyword arguments: config defaults, then ``overrides``, plus the special token ids."""
        settings = {**self.config.generation, **overrides}
        tok = self.tokenizer
        settings.setdefault("eos_token_id", tok.eos_token_id)
        settings.setdefault("pad_token_id", tok.pad_token_id)
        if tok.bos_token_id is not None:
            settings.setdefault("bos_token_id", tok.bos_token_id)
        settings.setdefault("suppress_tokens", [self.image_token_id])
        if int(settings.get("num_beams", 1)) == 1:
            settings.pop("length_penalty", None)
            settings.pop("early_stopping", None)
        return settings

    @torch.no_grad()
    def generate(
        self,
        images: torch.Tensor | None,
        view_mask: torch.Tensor | None = None,
        prompt: str | Sequence[str] | None = None,
        *,
        prompt_ids: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        visual_tokens: torch.Tensor | None = None,
        **generation_kwargs: Any,
    ) -> list[str]:
        """Write one report per study.

        Args:
            images: ``(B, V, C, H, W)`` views (None with ``visual_tokens``, or for text-only generation).
            view_mask: ``(B, V)`` bool.
            prompt: template (or one per study) with the image placeholder; default ``config.prompt_template``.
            prompt_ids: already tokenized, left-padded prompts (e.g. ``prompt_ids`` of the collate) instead of
                ``prompt``.
            prompt_attention_mask: their attention mask.
            visual_tokens: precomputed encoder tokens instead of ``images``.
            **generation_kwargs: Hugging Face ``generate`` settings over ``config.generation`` (``num_beams``,
                ``repetition_penalty``, ``length_penalty``, ``min_new_tokens``, ``max_new_tokens``,
                ``no_repeat_ngram_size``, ``do_sample`` ...).

        Returns:
            The decoded reports (special tokens removed, stripped), stopping at EOS.
        """
        source = images if images is not None else visual_tokens
        device = self.llm.get_input_embeddings().weight.device
        if prompt_ids is None:
            if isinstance(prompt, str) or prompt is None:
                if source is None:
                    batch = 1
                else:
                    batch = source.shape[0]
                prompts = [prompt or self.config.prompt_template] * batch
            else:
                prompts = list(prompt)
            prompt_ids, prompt_attention_mask = self.encode_prompts(prompts)
        prompt_ids = prompt_ids.to(device)
        if prompt_attention_mask is None:
            prompt_attention_mask = torch.ones_like(prompt_ids)
        prompt_attention_mask = prompt_attention_mask.to(device)
        was_training = self.training
        self.eval()
        try:
            embeds, attention_mask = self.prepare_inputs_embeds(
                prompt_ids, prompt_attention_mask, images, view_mask, visual_tokens
            )
            settings = self.generation_settings(**generation_kwargs)
            if supports_lean_greedy(settings):  # the same tokens, finished reports leaving the batch
                out = greedy_decode(self.llm, embeds, attention_mask, **settings)
            else:
                out = self.llm.generate(inputs_embeds=embeds, attention_mask=attention_mask, **settings)
        finally:
            self.train(was_training)
        return [text.strip() for text in self.tokenizer.batch_decode(out, skip_special_tokens=True)]

    # ------------------------------------------------------------------------------------------------------------
    # saving and loading (monai_r2gen.networks.model_files)
    # ------------------------------------------------------------------------------------------------------------

    def save_pretrained(self, save_dir: str | os.PathLike, merge_lora: bool = False) -> None:
        """Write what was trained (the layout: :mod:`monai_r2gen.networks.model_files`).

        A base counts as trained in full when a stage trained it (``self.trained``), when any of its base weights
        still requires grad, or when it was built from a config (random init); then its full weights are written.
        Otherwise only its LoRA adapter (if any) is written and the base is referenced by path and fingerprint.

        The model is written into a hidden sibling folder which then replaces ``save_dir`` in one rename, so a save
        that fails or is killed leaves an earlier model there as it was. Other files in ``save_dir`` (e.g. a training
        summary) are kept; model parts the new save does not write (an old ``llm_lora/``) are removed. Every file
        gets the permissions the process umask allows (safetensors writes 0600).

        A model card (``README.md``, :mod:`monai_r2gen.networks.model_card`) is written with the weights, from
        ``generator.json`` and the training summary / evaluation record of ``save_dir`` that describe these weights.
        A ``README.md`` of the user's (one without the card's marker) is kept as it is.

        Args:
            save_dir: output directory (created).
            merge_lora: merge LoRA adapters into full weights (``llm/`` and ``encoder/`` become standalone models).

        Raises:
            OutputFileError: ``save_dir`` is a file.
        """
        save_model(self, save_dir, merge_lora=merge_lora)

    @classmethod
    def from_pretrained(
        cls,
        model_dir: str | os.PathLike,
        encoder_path: str | os.PathLike | None = None,
        llm_path: str | os.PathLike | None = None,
        trust_remote_code: bool | None = None,
        dtype: str | None = None,
    ) -> RadiologyReportGenerator:
        """Load a model directory written by :meth:`save_pretrained`.

        Args:
            model_dir: the directory.
            encoder_path: base encoder when the directory holds only deltas (default: the recorded path).
            llm_path: base LLM when the directory holds only deltas (default: the recorded path).
            trust_remote_code: override the saved setting.
            dtype: override the saved dtype setting.

        Only safetensors weights are read (a pickle is refused, never unpickled).

        Raises:
            ModelFileError: a missing, damaged or wrong kind of file in the directory (``generator.json`` missing,
                not JSON or without its keys; ``modules.safetensors`` missing, truncated, corrupt or a pickle; a
                ``llm/``, ``encoder/``, ``tokenizer/`` or LoRA folder that is missing or unloadable); the message
                names the file and the reason.
            ModelConfigError: a base that cannot be found.
            CheckpointMismatchError: a base whose fingerprint differs from the one the model was trained on, or
                saved weights that do not fit the rebuilt model.
        """
        return load_model(cls, model_dir, encoder_path, llm_path, trust_remote_code=trust_remote_code, dtype=dtype)


def _autocast_enabled(device: torch.device) -> bool:
    """Whether autocast is on for ``device``'s type (False for a type autocast does not know, such as meta)."""
    try:
        return torch.is_autocast_enabled(device.type)
    except RuntimeError:
        return False


def _add_loss(output: Any, term: torch.Tensor) -> None:
    """Add an auxiliary loss ``term`` to ``output.loss`` (or make it the loss when the LLM computed none)."""
    output["loss"] = term if output.loss is None else output.loss + term.to(output.loss.dtype)
