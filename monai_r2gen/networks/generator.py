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

A model directory written by :meth:`RadiologyReportGenerator.save_pretrained` holds only what a user cannot get
elsewhere:

- ``generator.json``: the :class:`GeneratorConfig`, the base encoder and LLM it expects (path and fingerprint) and
  what the directory holds;
- ``tokenizer/``: the tokenizer (with its image token);
- ``modules.safetensors``: view fusion, projector and the optional finding head and finding prompts, plus the encoder
  when it is not a Hugging Face model and was trained or built from scratch;
- ``encoder/`` and ``llm/``: full Hugging Face model directories, written only when the base was built from a config
  (random init, e.g. the embedded tiny default) or was trained in full (stage 0 trains the whole LLM);
- ``encoder_lora/`` and ``llm_lora/``: LoRA adapters in peft's own format (``PeftModel.from_pretrained`` loads them).

A directory without ``llm/`` needs its base LLM: :meth:`RadiologyReportGenerator.from_pretrained` looks at the
recorded path (or the one given) and refuses a base whose fingerprint differs with
:class:`~monai_r2gen.errors.CheckpointMismatchError`.

Saving writes the whole directory beside the target and swaps it in by renaming, so a failed or killed save leaves
the earlier model whole; files get the permissions the umask allows. Loading reads safetensors only (a pickle is
refused, never unpickled) and checks every part first: a missing, truncated, corrupt or wrong kind of file is a
:class:`~monai_r2gen.errors.ModelFileError` naming that file and the reason.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from monai_r2gen.data.finding_attributes import ATTRIBUTE_KINDS
from monai_r2gen.data.reports import DEFAULT_PROMPT, IGNORE_INDEX, IMAGE_TOKEN, encode_prompt
from monai_r2gen.data.tokenizer import add_image_token
from monai_r2gen.errors import CheckpointMismatchError, ModelConfigError, ModelFileError
from monai_r2gen.files import OutputFileError, apply_umask
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
from monai_r2gen.networks.encoders import ENCODER_KINDS, HFVisionEncoder, VisionEncoder, build_encoder
from monai_r2gen.networks.greedy import greedy_decode, supports_lean_greedy
from monai_r2gen.networks.host_syncs import host_reads_are_free
from monai_r2gen.networks.kind_feature_prompts import KindFeaturePrompts
from monai_r2gen.networks.model_card import CARD_NAME, build_model_card, card_may_be_written, model_card_facts
from monai_r2gen.networks.packing import pack, plan_packing
from monai_r2gen.networks.projectors import (
    FUSION_MODES,
    PROJECTOR_KINDS,
    FindingPrompts,
    ViewFusion,
    build_projector,
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

FORMAT_VERSION = 1
CONFIG_NAME = "generator.json"
MODULES_NAME = "modules.safetensors"

# R2GenGPT decodes with beam 3 and repetition penalty 2.0 (its length penalty 2.0 and 80..120 new tokens are
# tuned for MIMIC-CXR findings and stay settings).
# the modules beside the projector (saved in modules.safetensors, trained in the "projector" group)
_EXTRA_MODULES = (
    "finding_head",
    "finding_prompts",
    "attribute_head",
    "attribute_features",
    "attribute_prompts",
    "attribute_slots",
)

DEFAULT_GENERATION: dict[str, Any] = {
    "num_beams": 3,
    "do_sample": False,
    "repetition_penalty": 2.0,
    "length_penalty": 1.0,
    "min_new_tokens": 1,
    "max_new_tokens": 120,
    "no_repeat_ngram_size": 0,
}

# The embedded default's language model: a Llama of 4 layers x 256 (a few MB), vocabulary from the tokenizer.
TINY_LLAMA: dict[str, Any] = {
    "model_type": "llama",
    "hidden_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "intermediate_size": 704,
    "max_position_embeddings": 512,
}

# LoRA targets per LLM family (the attention query / value projections, as in R2GenGPT and the LoRA paper).
_LLM_LORA_TARGETS: dict[str, tuple[str, ...]] = {
    "llama": ("q_proj", "v_proj"),
    "mistral": ("q_proj", "v_proj"),
    "mixtral": ("q_proj", "v_proj"),
    "qwen2": ("q_proj", "v_proj"),
    "qwen3": ("q_proj", "v_proj"),
    "gemma": ("q_proj", "v_proj"),
    "gemma2": ("q_proj", "v_proj"),
    "phi": ("q_proj", "v_proj"),
    "phi3": ("qkv_proj",),
    "gpt2": ("c_attn",),
    "gpt_neox": ("query_key_value",),
    "falcon": ("query_key_value",),
    "mpt": ("Wqkv",),
}
# Fallback when the family is unknown (e.g. remote code): the first set whose names all exist.
_LORA_FALLBACK = (("q_proj", "v_proj"), ("c_attn",), ("qkv_proj",), ("query_key_value",), ("Wqkv",), ("query", "value"))


def _parse_dtype(name: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}  # fmt: skip
    if name not in table:
        raise ModelConfigError(f"unknown dtype {name!r} (auto, float32, bfloat16, float16)")
    return table[name]


@dataclass
class GeneratorConfig:
    """Everything needed to build a :class:`RadiologyReportGenerator`; saved as JSON beside the weights.

    The defaults are the embedded default: a small CNN at 128 px (8x8 tokens), mean view fusion, an attention
    resampler giving 16 soft prompts and a random-init Llama of 4 layers x 256 whose vocabulary comes from a BPE
    tokenizer trained on the report corpus.

    Attributes:
        encoder: encoder kind (:data:`~monai_r2gen.networks.encoders.ENCODER_KINDS`).
        encoder_path: "hf": local model directory; MONAI kinds: optional weights file. None builds from
            ``encoder_options`` (random init).
        encoder_options: "hf" without a path: HF config (``{"model_type": "swin", ...}``); other kinds: constructor
            arguments.
        encoder_feature: "tokens" or "pooled" (R2GenGPT ``global_only``).
        image_size: encoder input size (None: the HF model config's).
        image_mean: normalisation mean (None: the image processor's / family default; small CNN 0.5).
        image_std: normalisation std.
        normalize_images: normalise inside the encoder (False when the data pipeline already did).
        max_views: most views per study.
        view_fusion: "mean" or "concat".
        projector: "linear", "mlp" or "resampler".
        num_queries: resampler prompts ``K``.
        resampler_dim: resampler width (None: min(LLM hidden, 512)).
        resampler_heads: resampler attention heads.
        resampler_layers: resampler layers.
        grid_size: regions per side of the "grid" projector (``K = grid_size**2``).
        prompt_scale: "layernorm" (the projector's LayerNorm starts at unit scale, norm about sqrt(H)) or
            "embedding" (it starts at the LLM's word-embedding scale, so visual prompts and words begin alike).
        llm_path: local Hugging Face causal LM directory; None builds from ``llm_options`` (random init).
        llm_options: HF config of a model built from scratch (``{"model_type": "llama", ...}``); the vocabulary size
            and special token ids come from the tokenizer.
        tokenizer_path: tokenizer directory (None: ``llm_path``; a model built from scratch needs a trained one).
        tokenizer_vocab_size: vocabulary of a tokenizer trained by :func:`~monai_r2gen.networks.factory.
            build_generator`.
        image_token: the tokenizer's image token.
        prompt_template: prompt with the image placeholder.
        max_length: longest training sequence (prompt + report + EOS), used by the data pipeline.
        llm_lora_r: LoRA rank on the LLM.
        llm_lora_alpha: LoRA alpha on the LLM.
        llm_lora_dropout: LoRA dropout on the LLM.
        llm_lora_target_modules: LoRA targets (None or "auto": per-family default, e.g. q_proj/v_proj, GPT-2 c_attn;
            "all-linear": every Linear / Conv1D layer but the output head; see :func:`resolve_lora_targets`).
        encoder_lora_r: LoRA rank on the encoder (R2GenGPT "delta").
        encoder_lora_alpha: LoRA alpha on the encoder.
        encoder_lora_dropout: LoRA dropout on the encoder.
        encoder_lora_target_modules: encoder LoRA targets (None: attention query/value).
        gradient_checkpointing: activation checkpointing in the LLM and a Hugging Face encoder.
        dtype: "auto" (bfloat16 with CUDA, else float32), "float32", "bfloat16" or "float16" for the encoder and
            LLM; view fusion and projector stay float32.
        trust_remote_code: allow code shipped in model directories (off by default).
        seed: seed of every random initialisation (encoder, projector, LLM built from scratch).
        generation: default ``generate`` settings (beam size, penalties, token limits), overridable per call.
        finding_head: add a linear head on the mean encoder token that predicts the 14 CheXpert labels of the report
            (an auxiliary loss for the vision encoder; off by default).
        finding_loss_weight: weight of the head's binary cross-entropy added to the LM loss.
        finding_prompts: append one prompt per label, mixed from learned "present" / "absent" vectors by the head's
            (detached) probability, to the visual prompts (needs ``finding_head``; ``K`` grows by 14).
        hard_finding_prompts: binarise the head's probabilities at 0.5 before they make the finding prompts (and the
            attribute head's prediction before it makes the attribute slot prompts), so the
            prompts of a prediction are exactly the prompts the language model was taught with the report labels
            (stage 0 and ``teacher_forcing``).
        attribute_head: add a linear probe on the visual prompts that predicts each finding kind's presence and
            attributes (side, size, lobe ...; :class:`~monai_r2gen.networks.attribute_head.FindingAttributeHead`),
            an auxiliary loss on the visual path wherever the projector or encoder trains.
        attribute_loss_weight: weight of the probe's loss added to the LM loss.
        attribute_source: what the attribute head reads: "prompts" (the projector's first 9 prompts, anchored one
            per finding kind), "tokens" (the encoder's tokens through an attention pooling of its own, so the
            visual prompts stay the projector's) or "dense" (the encoder's tokens through per-token presence maps,
            :class:`~monai_r2gen.networks.dense_readout.DenseKindReadout`: no kind can lose its finding).
        attribute_queries: with ``attribute_source`` "tokens", the head's attention poolings per finding kind
            (read side by side by the kind's probe: one pooling can find a right-sided finding, another a
            left-sided one).
        attribute_box_weight: with ``attribute_source`` "dense" and finding boxes in the batches
            (:class:`~monai_r2gen.data.finding_boxes.FindingBoxesd`, the phantoms' ``findings.json`` records them),
            weight of the presence maps' loss against the boxes
            (:func:`~monai_r2gen.networks.dense_readout.box_map_loss`): each map is taught where its finding is.
        attribute_slots: append one prompt per attribute field (side, size, lobe ...; 21 for the nine finding
            kinds, :class:`~monai_r2gen.networks.attribute_slots.AttributeSlotPrompts`) after the visual and
            finding prompts, mixed from learned value vectors by the attribute head's (detached) prediction and, in
            training, by each study's known attributes like the finding prompts (binarised with
            ``hard_finding_prompts``). Without finding prompts, one presence prompt per finding kind comes first
            (30 in all). Needs ``attribute_head``.
        attribute_feature_prompts: append one soft visual prompt per finding kind after the projector's: the dense
            readout's feature of that kind's presence map beside the study's mean feature, and the map's statistics
            (presence probability, soft areas per view and half), mapped to the LLM's width
            (:class:`~monai_r2gen.networks.kind_feature_prompts.KindFeaturePrompts`). Continuous image features,
            not a rounded prediction: the language model's loss reaches the encoder through them; with
            ``teacher_forcing`` the statistics of training studies with known boxes are the known findings'. Needs
            ``attribute_source`` "dense".
        attribute_prompts: learned target prompts of the first 9 visual prompts, built from each training study's
            findings (:class:`~monai_r2gen.networks.attribute_prompts.AttributeTargets`): with ``teacher_forcing``
            the language model reads the targets in place of the projector's prompts (per study), and an alignment
            loss pulls the projector's prompts towards them. Training only: at inference the projector's prompts
            are the only way in. Needs ``attribute_head`` (its targets reach the batches).
        attribute_prompt_weight: weight of the alignment loss added to the LM loss.
        attribute_word_weight: weight of an extra LM loss on the tokens of attribute words (sides, sizes, lobes;
            :mod:`~monai_r2gen.networks.attribute_words`), so that the LLM learns to write what the attribute
            prompts say as soon as it learns the rest of the report (0: off).
    """

    encoder: str = "small_cnn"
    encoder_path: str | None = None
    encoder_options: dict[str, Any] = field(default_factory=dict)
    encoder_feature: str = "tokens"
    image_size: int | None = 128
    image_mean: list[float] | None = None
    image_std: list[float] | None = None
    normalize_images: bool = True
    max_views: int = 2
    view_fusion: str = "mean"
    projector: str = "resampler"
    num_queries: int = 16
    resampler_dim: int | None = None
    resampler_heads: int = 4
    resampler_layers: int = 1
    grid_size: int = 4
    prompt_scale: str = "layernorm"
    llm_path: str | None = None
    llm_options: dict[str, Any] = field(default_factory=lambda: dict(TINY_LLAMA))
    tokenizer_path: str | None = None
    tokenizer_vocab_size: int = 1000
    image_token: str = IMAGE_TOKEN
    prompt_template: str = DEFAULT_PROMPT
    max_length: int = 128
    llm_lora_r: int = 16
    llm_lora_alpha: int = 16
    llm_lora_dropout: float = 0.05
    llm_lora_target_modules: list[str] | None = None
    encoder_lora_r: int = 16
    encoder_lora_alpha: int = 16
    encoder_lora_dropout: float = 0.1
    encoder_lora_target_modules: list[str] | None = None
    gradient_checkpointing: bool = False
    dtype: str = "auto"
    trust_remote_code: bool = False
    seed: int = 0
    generation: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_GENERATION))
    finding_head: bool = False
    finding_loss_weight: float = 1.0
    finding_prompts: bool = False
    hard_finding_prompts: bool = False
    attribute_head: bool = False
    attribute_loss_weight: float = 1.0
    attribute_source: str = "prompts"
    attribute_queries: int = 1
    attribute_box_weight: float = 0.0
    attribute_slots: bool = False
    attribute_feature_prompts: bool = False
    attribute_prompts: bool = False
    attribute_prompt_weight: float = 1.0
    attribute_word_weight: float = 0.0

    def __post_init__(self) -> None:
        checks = [
            (self.encoder in ENCODER_KINDS, f"encoder must be one of {ENCODER_KINDS}, got {self.encoder!r}"),
            (self.encoder_feature in ("tokens", "pooled"), "encoder_feature must be 'tokens' or 'pooled'"),
            (self.view_fusion in FUSION_MODES, f"view_fusion must be one of {FUSION_MODES}"),
            (self.projector in PROJECTOR_KINDS, f"projector must be one of {PROJECTOR_KINDS}"),
            (self.max_views >= 1 and self.num_queries >= 1, "max_views and num_queries must be >= 1"),
            (self.llm_path is not None or bool(self.llm_options.get("model_type")),
             "give llm_path or llm_options with a model_type"),
            ((self.image_mean is None) == (self.image_std is None), "image_mean and image_std go together"),
            (self.finding_loss_weight >= 0, "finding_loss_weight must be >= 0"),
            (self.attribute_loss_weight >= 0, "attribute_loss_weight must be >= 0"),
            (self.attribute_word_weight >= 0, "attribute_word_weight must be >= 0"),
            (self.attribute_box_weight >= 0, "attribute_box_weight must be >= 0"),
            (self.attribute_box_weight == 0 or self.attribute_source == "dense",
             "attribute_box_weight needs attribute_source 'dense' (the boxes teach its presence maps)"),
            (self.grid_size >= 1, "grid_size must be >= 1"),
            (self.prompt_scale in ("layernorm", "embedding"), "prompt_scale must be 'layernorm' or 'embedding'"),
            (self.finding_head or not self.finding_prompts, "finding_prompts needs finding_head"),
            (self.finding_prompts or self.attribute_slots or not self.hard_finding_prompts,
             "hard_finding_prompts needs finding_prompts or attribute_slots"),
            (self.attribute_head or not self.attribute_prompts, "attribute_prompts needs attribute_head"),
            (self.attribute_source in ("prompts", "tokens", "dense"),
             "attribute_source must be 'prompts', 'tokens' or 'dense'"),
            (self.attribute_queries == 1 or (self.attribute_queries > 1 and self.attribute_source == "tokens"),
             "attribute_queries > 1 needs attribute_source 'tokens' (and must be >= 1)"),
            (self.attribute_head or not self.attribute_slots, "attribute_slots needs attribute_head"),
            ((self.attribute_head and self.attribute_source == "dense") or not self.attribute_feature_prompts,
             "attribute_feature_prompts needs attribute_head with attribute_source 'dense'"),
        ]  # fmt: skip
        for ok, message in checks:
            if not ok:
                raise ModelConfigError(message)
        _parse_dtype(self.dtype)
        unknown = set(self.generation) - _GENERATE_KEYS
        if unknown:
            raise ModelConfigError(f"unknown generation settings {sorted(unknown)}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GeneratorConfig:
        """Build from a dict (e.g. parsed JSON / YAML); unknown keys are an error.

        Raises:
            ModelConfigError: unknown keys or invalid values.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ModelConfigError(f"unknown generator settings {sorted(unknown)}")
        return cls(**copy.deepcopy(dict(data)))

    def save(self, path: str | os.PathLike) -> None:
        """Write the config as JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | os.PathLike) -> GeneratorConfig:
        """Read a config written by :meth:`save`.

        Raises:
            ModelConfigError: unreadable file or invalid content.
        """
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelConfigError(f"{path}: cannot read a generator config ({exc})") from exc
        return cls.from_dict(data)


_GENERATE_KEYS = {
    "num_beams", "do_sample", "repetition_penalty", "length_penalty", "min_new_tokens", "max_new_tokens",
    "no_repeat_ngram_size", "early_stopping", "temperature", "top_k", "top_p", "num_return_sequences",
    "bad_words_ids", "suppress_tokens", "diversity_penalty", "num_beam_groups",
}  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------
# fingerprints of base models
# ----------------------------------------------------------------------------------------------------------------

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
_VOLATILE_CONFIG_KEYS = ("transformers_version", "_name_or_path", "torch_dtype", "dtype")
_HEAD_BYTES = 4 << 20


def _hash_file_head(digest: Any, path: Path) -> None:
    digest.update(str(path.stat().st_size).encode())
    with path.open("rb") as fh:
        digest.update(fh.read(_HEAD_BYTES))


def fingerprint(path: str | os.PathLike) -> str:
    """A cheap identity of a base model: sha256 of its config and of its weight files' sizes and first 4 MiB.

    For a directory: ``config.json`` (without volatile keys such as ``transformers_version``) and every weight file
    (name, size, first 4 MiB). For a single weights file: its size and first 4 MiB.

    Raises:
        ModelConfigError: the path does not exist.
    """
    path = Path(path)
    digest = hashlib.sha256()
    if path.is_file():
        _hash_file_head(digest, path)
    elif path.is_dir():
        cfg = path / "config.json"
        if cfg.is_file():
            try:
                data = json.loads(cfg.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise ModelConfigError(f"{cfg}: unreadable model config ({exc})") from exc
            for key in _VOLATILE_CONFIG_KEYS:
                data.pop(key, None)
            digest.update(json.dumps(data, sort_keys=True).encode())
        for weight in sorted(p for p in path.iterdir() if p.suffix in _WEIGHT_SUFFIXES and p.is_file()):
            digest.update(weight.name.encode())
            _hash_file_head(digest, weight)
    else:
        raise ModelConfigError(f"{path}: base model not found")
    return "sha256:" + digest.hexdigest()


# ----------------------------------------------------------------------------------------------------------------
# language model helpers
# ----------------------------------------------------------------------------------------------------------------


def load_causal_lm(
    path: str | os.PathLike | None = None,
    options: dict[str, Any] | None = None,
    tokenizer: Any = None,
    trust_remote_code: bool = False,
    dtype: torch.dtype | None = None,
) -> nn.Module:
    """Load an ``AutoModelForCausalLM`` from a local directory, or build one (random init) from a config.

    Args:
        path: local model directory (``local_files_only=True``).
        options: ``{"model_type": ..., **config kwargs}`` when ``path`` is None.
        tokenizer: when building from a config, gives the vocabulary size and the BOS / EOS / pad ids.
        trust_remote_code: allow code shipped in the directory.
        dtype: parameter dtype.

    Raises:
        ModelConfigError: missing directory, unknown model type or unloadable model.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    if path is not None:
        if not Path(path).is_dir():
            raise ModelConfigError(f"{path}: LLM directory not found")
        try:
            return AutoModelForCausalLM.from_pretrained(
                os.fspath(path), local_files_only=True, trust_remote_code=trust_remote_code, dtype=dtype
            )
        except (OSError, ValueError, KeyError) as exc:
            raise ModelConfigError(f"{path}: cannot load a causal LM ({exc})") from exc
    kwargs = dict(options or {})
    model_type = kwargs.pop("model_type", None)
    if not model_type:
        raise ModelConfigError("an LLM built from a config needs a 'model_type' (e.g. 'llama', 'gpt2')")
    if tokenizer is not None:
        kwargs.setdefault("vocab_size", len(tokenizer))
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            kwargs.setdefault(name, getattr(tokenizer, name, None))
    try:
        hf_config = AutoConfig.for_model(model_type, **kwargs)
        model = AutoModelForCausalLM.from_config(hf_config, trust_remote_code=trust_remote_code)
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelConfigError(f"cannot build a {model_type!r} causal LM: {exc}") from exc
    return model.to(dtype) if dtype is not None else model


# ``target_modules`` values that mean "the family's defaults" (a YAML ``null`` or a ``None`` given on a command line
# may reach here as a string); "all-linear" is peft's: every Linear / Conv1D layer except the output head.
_AUTO_TARGETS = ("auto", "default", "none", "null")
ALL_LINEAR = "all-linear"


def _model_type(model: nn.Module) -> str:
    base = model.get_base_model() if _is_peft(model) else model
    return str(getattr(getattr(base, "config", None), "model_type", "") or type(base).__name__)


def linear_module_names(model: nn.Module) -> list[str]:
    """The distinct leaf names of a model's ``nn.Linear`` and transformers ``Conv1D`` layers (LoRA target names).

    Args:
        model: a causal LM (or any module).

    Returns:
        sorted names, e.g. ``["c_attn", "c_fc", "c_proj", "lm_head"]`` for GPT-2.
    """
    from transformers.pytorch_utils import Conv1D

    names = set()
    for name, module in model.named_modules():
        parts = name.split(".")
        if not isinstance(module, (nn.Linear, Conv1D)) or any(p.startswith("lora_") for p in parts):
            continue
        while parts and parts[-1] == "base_layer":  # the layer a LoRA wrapper holds keeps its own name
            parts.pop()
        if parts:
            names.add(parts[-1])
    return sorted(names)


def default_lora_targets(model: nn.Module) -> list[str]:
    """LoRA target module names for a causal LM: its family's attention projections (query / value).

    Raises:
        ModelConfigError: no known projection names in the model (give the targets explicitly); the message names
            the family and the Linear / Conv1D layer names it has.
    """
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    model_type = _model_type(model)
    candidates = ([_LLM_LORA_TARGETS[model_type]] if model_type in _LLM_LORA_TARGETS else []) + list(_LORA_FALLBACK)
    for candidate in candidates:
        if all(c in names for c in candidate):
            return list(candidate)
    raise ModelConfigError(f"no default LoRA targets for a {model_type!r} model; set the LoRA target_modules to "
                           f"some of its layers {linear_module_names(model)} or to {ALL_LINEAR!r}")  # fmt: skip


def resolve_lora_targets(model: nn.Module, targets: Sequence[str] | str | None) -> list[str] | str:
    """The LoRA ``target_modules`` to give peft for ``model``, checked against the modules it has.

    Args:
        model: the causal LM.
        targets: None, "auto" (or "default", "none", "null"): the family's defaults (:func:`default_lora_targets`);
            "all-linear": every Linear / Conv1D layer except the output head (peft's shorthand); another string: a
            regular expression that must match whole module names (peft's rule); a list: module names, matched as
            peft does (a full name or its last parts).

    Returns:
        the targets, as peft takes them.

    Raises:
        ModelConfigError: the targets match no module of the model; the message names the family (``model_type``)
            and the Linear / Conv1D layer names it has. A list of which only some names match is used, with a
            warning that names the others.
    """
    if targets is None or (isinstance(targets, str) and targets.strip().lower() in _AUTO_TARGETS):
        return default_lora_targets(model)
    model_type = _model_type(model)
    modules = [name for name, _ in model.named_modules() if name]

    def _refuse(what: str) -> ModelConfigError:
        return ModelConfigError(
            f"LoRA target_modules {what} match no module of the {model_type!r} LLM; its Linear / Conv1D layers are "
            f"named {linear_module_names(model)}: choose some of them, or null / 'auto' for the family's defaults, "
            f"or {ALL_LINEAR!r}"
        )

    if isinstance(targets, str):
        if targets.strip().lower() == ALL_LINEAR:
            if not linear_module_names(model):
                raise _refuse(repr(targets))
            return ALL_LINEAR
        try:
            pattern = re.compile(targets)
        except re.error as exc:
            raise ModelConfigError(f"LoRA target_modules {targets!r} is not a regular expression ({exc})") from exc
        if not any(pattern.fullmatch(name) for name in modules):
            raise _refuse(repr(targets))
        return targets
    targets = list(targets)
    if not targets or not all(isinstance(t, str) and t for t in targets):
        raise ModelConfigError(f"LoRA target_modules must be module names, got {targets!r}")
    unmatched = [t for t in targets if not any(name == t or name.endswith("." + t) for name in modules)]
    if len(unmatched) == len(targets):
        raise _refuse(str(targets))
    if unmatched:
        logger.warning("LoRA target_modules %s match no module of the %r LLM (its Linear / Conv1D layers: %s); "
                       "LoRA goes on the others", unmatched, model_type, linear_module_names(model))  # fmt: skip
    return targets


def _resize_embeddings(llm: nn.Module, size: int) -> None:
    """Grow the token embeddings (and an untied LM head) to ``size`` rows; new rows = the mean of the old ones.

    Deterministic, so a checkpoint that stores only deltas reloads to the same model.
    """
    old = llm.get_input_embeddings().weight.shape[0]
    if size <= old:
        return
    llm.resize_token_embeddings(size, mean_resizing=False)
    with torch.no_grad():
        emb = llm.get_input_embeddings().weight
        emb[old:] = emb[:old].mean(dim=0, keepdim=True)
        head = llm.get_output_embeddings()
        if head is not None and head.weight.data_ptr() != emb.data_ptr():
            head.weight[old:] = head.weight[:old].mean(dim=0, keepdim=True)
            if getattr(head, "bias", None) is not None:
                head.bias[old:] = head.bias[:old].mean()
    logger.info("resized the LLM token embeddings from %d to %d", old, size)


def _is_peft(module: nn.Module) -> bool:
    return hasattr(module, "peft_config") and hasattr(module, "get_base_model")


def _clean_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """State dict of a module with peft LoRA layers removed (``base_layer`` weights under their original names)."""
    state = {}
    for key, value in module.state_dict().items():
        if "lora_" in key:
            continue
        state[key.replace(".base_layer.", ".")] = value
    return state


def _save_safetensors(state: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(path))


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
            self.attribute_head = _seeded(config.seed + 1, FindingAttributeHead, self._num_image_tokens, width, tokens,
                                          config.attribute_queries, config.attribute_source == "dense",
                                          config.max_views)  # fmt: skip
            grid = int(getattr(encoder, "num_tokens", 0) or 0)
            if config.attribute_box_weight > 0 and math.isqrt(grid) ** 2 != grid:
                raise ModelConfigError(f"attribute_box_weight: the boxes are drawn on a square token grid per view, "
                                       f"the encoder gives {grid} tokens per view")  # fmt: skip
        self.attribute_features: KindFeaturePrompts | None = None
        if config.attribute_feature_prompts:  # after the projector's prompts, before the finding prompts
            self.attribute_features = _seeded(config.seed + 4, KindFeaturePrompts, 2 * width, width,
                                              len(ATTRIBUTE_KINDS), config.max_views, scale)  # fmt: skip
            self._num_image_tokens += self.attribute_features.num_prompts
        self.attribute_slots: AttributeSlotPrompts | None = None
        if config.attribute_slots:
            self.attribute_slots = _seeded(config.seed + 3, AttributeSlotPrompts, width, scale,
                                           presence=self.finding_prompts is None)  # fmt: skip
            self._num_image_tokens += self.attribute_slots.num_prompts
        self.attribute_prompts: AttributeTargets | None = None
        if config.attribute_prompts:
            self.attribute_prompts = _seeded(config.seed + 2, AttributeTargets, width, scale)
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
            encoder = _build_encoder(config, config.encoder_path, dtype)
            llm = load_causal_lm(config.llm_path, config.llm_options, tokenizer, config.trust_remote_code, dtype)
            _resize_embeddings(llm, len(tokenizer))
            fusion, projector = _build_head(config, encoder, llm)
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
            projector = part in ("fusion", "projector", *_EXTRA_MODULES)
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
        prompts, alignment = None, None
        if text_only:
            embeds, text_mask = self.prepare_inputs_embeds(input_ids, attention_mask)
            labels_known = self.finding_prompts is not None and finding_labels is not None
            if labels_known or known_slots is not None:
                embeds, text_mask = self._label_prompts(
                    input_ids, embeds, text_mask, attention_mask, finding_labels if labels_known else None, known_slots
                )
            attention_mask = text_mask
        else:
            forced, forced_slots = None, None
            forcing = aux and self.finding_prompts is not None
            if teacher_forcing > 0 and visual_tokens is not None and (forcing or known_slots is not None):
                pick = None  # every study
                if teacher_forcing < 1:
                    pick = torch.rand(visual_tokens.shape[0], device=visual_tokens.device) < teacher_forcing
                if aux and self.finding_prompts is not None:
                    forced = self._forced_probabilities(visual_tokens, view_mask, finding_labels, teacher_forcing, pick)
                if known_slots is not None:
                    forced_slots = self._forced_slot_values(visual_tokens, view_mask, known_slots, pick)
            forced_stats = None
            if teacher_forcing > 0 and self.attribute_features is not None and attribute_presence is not None:
                forced_stats = self._forced_feature_statistics(
                    attribute_presence, attribute_boxes, attribute_box_views, view_mask, teacher_forcing
                )
            if images is not None or visual_tokens is not None:
                prompts = self.encode_images(images, view_mask, visual_tokens, forced, forced_slots, forced_stats)
            shown, alignment = prompts, None
            if prompts is not None and self.attribute_prompts is not None and attribute_presence is not None:
                shown, alignment = self._target_prompts(prompts, attribute_presence, attribute_fields, teacher_forcing)
            embeds, attention_mask = self.prepare_inputs_embeds(input_ids, attention_mask, prompts=shown)
        if pack_sequences:  # no attention mask: transformers masks each packed study from its position ids
            plan = plan_packing(attention_mask)
            embeds, attention_mask, position_ids = pack(embeds, plan), None, plan.position_ids
            labels = None if labels is None else pack(labels, plan, IGNORE_INDEX)
            kwargs.setdefault("use_cache", False)
        else:
            position_ids = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
        output = self.llm(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            labels=labels,
            return_dict=True,
            **kwargs,
        )
        if aux:
            finding_loss, logits = self._finding_loss(visual_tokens, view_mask, finding_labels)
            lm_loss = output.loss
            aux_loss = self.config.finding_loss_weight * finding_loss
            output["loss"] = aux_loss if lm_loss is None else lm_loss + aux_loss.to(lm_loss.dtype)
            output["lm_loss"] = lm_loss
            output["finding_loss"] = finding_loss
            output["finding_logits"] = logits
        features = None
        if attribute_targets is not None:
            features = self._attribute_head_input(visual_tokens, view_mask, None if prompts is None else prompts[0])
        if attribute_targets is not None and features is not None:
            attribute_loss = self._attribute_loss(features, attribute_targets)
            output["attribute_loss"] = attribute_loss
            weighted = self.config.attribute_loss_weight * attribute_loss
            output["loss"] = weighted if output.loss is None else output.loss + weighted.to(output.loss.dtype)
        if self._attribute_word_ids is not None and labels is not None and output.loss is not None:
            word_loss = attribute_word_loss(output.logits, labels, self._attribute_word_ids)
            output["attribute_word_loss"] = word_loss
            output["loss"] = output.loss + self.config.attribute_word_weight * word_loss.to(output.loss.dtype)
        if alignment is not None and alignment.requires_grad:
            output["alignment_loss"] = alignment
            weighted = self.config.attribute_prompt_weight * alignment
            output["loss"] = weighted if output.loss is None else output.loss + weighted.to(output.loss.dtype)
        return output

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
    # saving and loading
    # ------------------------------------------------------------------------------------------------------------

    def _encoder_trained_in_full(self) -> bool:
        if "encoder" in self.trained or self.bases.get("encoder", {}).get("source") != "path":
            return True
        return any(p.requires_grad for n, p in self.encoder.named_parameters() if "lora_" not in n)

    def _llm_trained_in_full(self) -> bool:
        if "llm" in self.trained or self.bases.get("llm", {}).get("source") != "path":
            return True
        return any(p.requires_grad for n, p in self.llm.named_parameters() if "lora_" not in n)

    def save_pretrained(self, save_dir: str | os.PathLike, merge_lora: bool = False) -> None:
        """Write what was trained (see the module docstring for the layout).

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
        out = Path(save_dir)
        card = card_may_be_written(out)  # False: the user's own README.md, moved into the new folder as it is
        with _staged_model_dir(out) as stage:
            contents = self._write_model_files(stage, merge_lora)
            if card:
                facts = model_card_facts(stage, extras_dir=out)
                (stage / CARD_NAME).write_text(build_model_card(facts), encoding="utf-8")
        logger.info("saved the report generator to %s (%s)", out, contents)

    def _write_model_files(self, out: Path, merge_lora: bool) -> dict[str, Any]:
        """Write every part of the model directory into ``out`` (an empty folder); returns the contents record."""
        contents: dict[str, Any] = {"encoder": "base", "llm": "base", "encoder_lora": False, "llm_lora": False}
        modules: dict[str, torch.Tensor] = {}
        modules.update({f"fusion.{k}": v for k, v in self.fusion.state_dict().items()})
        modules.update({f"projector.{k}": v for k, v in self.projector.state_dict().items()})
        for name in _EXTRA_MODULES:
            module = getattr(self, name)
            if module is not None:
                modules.update({f"{name}.{k}": v for k, v in module.state_dict().items()})

        # encoder
        attr = self.encoder_backbone_name
        backbone = getattr(self.encoder, attr)
        enc_lora = _is_peft(backbone)
        full_encoder = self._encoder_trained_in_full() or (enc_lora and merge_lora)
        with _merged(backbone, enc_lora and merge_lora):
            if full_encoder and isinstance(self.encoder, HFVisionEncoder):
                base = backbone.get_base_model() if enc_lora else backbone
                base.save_pretrained(out / "encoder", state_dict=_clean_state_dict(base))
                contents["encoder"] = "hf_dir"
            elif full_encoder:
                clean = _clean_state_dict(backbone.get_base_model() if enc_lora else backbone)
                modules.update({f"encoder.{attr}.{k}": v for k, v in clean.items()})
                contents["encoder"] = "modules"
        if enc_lora and not merge_lora:
            backbone.save_pretrained(str(out / "encoder_lora"), save_embedding_layers=False)
            contents["encoder_lora"] = True

        # language model
        llm_lora = self.has_llm_lora
        with _merged(self.llm, llm_lora and merge_lora):
            if self._llm_trained_in_full() or (llm_lora and merge_lora):
                base = self.base_llm
                base.save_pretrained(out / "llm", state_dict=_clean_state_dict(base))
                self.tokenizer.save_pretrained(out / "llm")
                contents["llm"] = "hf_dir"
        if llm_lora and not merge_lora:
            self.llm.save_pretrained(str(out / "llm_lora"), save_embedding_layers=False)
            contents["llm_lora"] = True

        _save_safetensors(modules, out / MODULES_NAME)
        self.tokenizer.save_pretrained(out / "tokenizer")
        meta = {
            "format_version": FORMAT_VERSION,
            "config": self.config.to_dict(),
            "bases": self.bases,
            "contents": contents,
            "trained": sorted(self.trained),
            "num_image_tokens": self.num_image_tokens,
            "vocab_size": len(self.tokenizer),
        }
        (out / CONFIG_NAME).write_text(json.dumps(meta, indent=2))
        return contents

    def merge_and_save(self, save_dir: str | os.PathLike) -> None:
        """Save with LoRA merged: ``save_dir/llm`` is a standalone Hugging Face model directory (with tokenizer)."""
        self.save_pretrained(save_dir, merge_lora=True)

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
        root = Path(model_dir)
        meta = _read_model_meta(root)
        meta_path = root / CONFIG_NAME
        try:
            config = GeneratorConfig.from_dict(meta["config"])
        except (ModelConfigError, TypeError, ValueError) as exc:
            raise ModelFileError(meta_path, f"its 'config' is not a valid generator config ({exc})") from exc
        if trust_remote_code is not None:
            config.trust_remote_code = trust_remote_code
        if dtype is not None:
            config.dtype = dtype
        contents, bases = meta["contents"], meta.get("bases", {})
        _check_model_files(root, contents)  # every saved part is there and well-formed before anything loads
        tokenizer = _load_part(
            root / "tokenizer", "tokenizer", lambda: load_tokenizer(root / "tokenizer", config.trust_remote_code)
        )
        torch_dtype = _parse_dtype(config.dtype)

        # encoder
        if contents["encoder"] == "hf_dir":
            encoder = _load_part(root / "encoder", "vision encoder", lambda: build_encoder(
                "hf", root / "encoder", image_size=config.image_size, feature=config.encoder_feature,
                mean=config.image_mean, std=config.image_std, normalize=config.normalize_images,
                trust_remote_code=config.trust_remote_code, dtype=torch_dtype,
            ))  # fmt: skip
        elif contents["encoder"] == "modules":
            encoder = _build_encoder(config, None, torch_dtype)
        else:
            path = _resolve_base(root, "encoder", encoder_path, bases.get("encoder", {}))
            encoder = _build_encoder(config, path, torch_dtype)

        # language model
        if contents["llm"] == "hf_dir":
            llm = _load_saved_llm(root / "llm", config.trust_remote_code, torch_dtype)
        else:
            path = _resolve_base(root, "llm", llm_path, bases.get("llm", {}))
            llm = load_causal_lm(path, trust_remote_code=config.trust_remote_code, dtype=torch_dtype)
        add_image_token(tokenizer, config.image_token)
        _resize_embeddings(llm, len(tokenizer))

        fusion, projector = _build_head(config, encoder, llm)
        modules = _read_safetensors(root / MODULES_NAME)
        for name, module in (("fusion", fusion), ("projector", projector)):
            _load_prefixed(module, modules, f"{name}.", root / MODULES_NAME)
        if contents["encoder"] == "modules":
            _load_prefixed(encoder, modules, "encoder.", root / MODULES_NAME)

        model = cls(config, encoder, fusion, projector, llm, tokenizer, bases)
        for name in _EXTRA_MODULES:
            if getattr(model, name) is not None:
                _load_prefixed(getattr(model, name), modules, f"{name}.", root / MODULES_NAME)
        model.trained = set(meta.get("trained", []))
        if model.num_image_tokens != meta.get("num_image_tokens", model.num_image_tokens):
            raise CheckpointMismatchError(f"{root}: the rebuilt model gives {model.num_image_tokens} visual prompts, "
                                          f"the checkpoint was trained with {meta['num_image_tokens']}")  # fmt: skip
        if contents.get("encoder_lora"):
            attr = model.encoder_backbone_name
            setattr(encoder, attr, _load_adapter(getattr(encoder, attr), root / "encoder_lora", "encoder"))
        if contents.get("llm_lora"):
            model.llm = _load_adapter(model.llm, root / "llm_lora", "LLM")
        model.requires_grad_(False)
        if config.gradient_checkpointing:
            model.enable_gradient_checkpointing()
        logger.info("loaded the report generator from %s (%s)", root, contents)
        return model


# ----------------------------------------------------------------------------------------------------------------
# module-level helpers
# ----------------------------------------------------------------------------------------------------------------


def load_tokenizer(path: str | os.PathLike, trust_remote_code: bool = False) -> Any:
    """``AutoTokenizer.from_pretrained(path, local_files_only=True)`` with a typed error."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(
            os.fspath(path), local_files_only=True, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError, KeyError) as exc:
        raise ModelConfigError(f"{path}: cannot load a tokenizer ({exc})") from exc


def _build_encoder(config: GeneratorConfig, path: str | os.PathLike | None, dtype: torch.dtype) -> VisionEncoder:
    return build_encoder(
        config.encoder,
        path,
        options=config.encoder_options if (path is None or config.encoder != "hf") else None,
        image_size=config.image_size,
        feature=config.encoder_feature,
        mean=config.image_mean,
        std=config.image_std,
        normalize=config.normalize_images,
        trust_remote_code=config.trust_remote_code,
        dtype=dtype,
    )


def _build_head(config: GeneratorConfig, encoder: VisionEncoder, llm: nn.Module) -> tuple[ViewFusion, nn.Module]:
    hidden = int(llm.get_input_embeddings().weight.shape[1])
    fusion = ViewFusion(config.view_fusion, encoder.out_dim, config.max_views)
    projector = build_projector(
        config.projector,
        encoder.out_dim,
        hidden,
        num_queries=config.num_queries,
        resampler_dim=config.resampler_dim,
        resampler_heads=config.resampler_heads,
        resampler_layers=config.resampler_layers,
        grid=config.grid_size,
    )
    return fusion, projector


def _seeded(seed: int, build: Callable[..., nn.Module], *args: Any, **kwargs: Any) -> Any:
    """``build(*args, **kwargs)`` with its random initialisation drawn from ``seed`` (the global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build(*args, **kwargs)


def _autocast_enabled(device: torch.device) -> bool:
    """Whether autocast is on for ``device``'s type (False for a type autocast does not know, such as meta)."""
    try:
        return torch.is_autocast_enabled(device.type)
    except RuntimeError:
        return False


def _base_record(path: str | os.PathLike | None) -> dict[str, Any]:
    if path is None:
        return {"source": "config", "path": None, "fingerprint": None}
    return {"source": "path", "path": os.path.abspath(os.fspath(path)), "fingerprint": fingerprint(path)}


def _resolve_base(root: Path, part: str, given: str | os.PathLike | None, record: dict[str, Any]) -> str:
    """The base path to load and verify against the recorded fingerprint."""
    path = os.fspath(given) if given is not None else record.get("path")
    if path is None:
        raise ModelConfigError(f"{root}: holds no {part} weights and names no base {part}; pass {part}_path=")
    if not os.path.exists(path):
        raise ModelConfigError(f"{root}: base {part} {path} not found; pass {part}_path= to the base it was trained on")
    expected = record.get("fingerprint")
    found = fingerprint(path)
    if expected is not None and found != expected:
        raise CheckpointMismatchError(
            f"{root}: this checkpoint was trained on the base {part} {record.get('path')} ({expected[:19]}...), "
            f"but {path} is a different model ({found[:19]}...); pass {part}_path= to the original base"
        )
    return path


def _load_prefixed(module: nn.Module, state: dict[str, torch.Tensor], prefix: str, source: Path) -> None:
    sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    try:
        module.load_state_dict(sub, strict=True)
    except RuntimeError as exc:
        raise CheckpointMismatchError(f"{source}: weights under {prefix!r} do not fit the model ({exc})") from exc


@contextlib.contextmanager
def _merged(module: nn.Module, active: bool) -> Iterator[None]:
    """Merge a peft model's LoRA weights into its base weights for the block (``active``), unmerge after."""
    if not active:
        yield
        return
    module.merge_adapter()
    try:
        yield
    finally:
        module.unmerge_adapter()


# ----------------------------------------------------------------------------------------------------------------
# model directory files: atomic saving, checked loading
# ----------------------------------------------------------------------------------------------------------------

# what save_pretrained writes; anything else in a model directory (training summaries, logs) is the user's and kept
_MODEL_ENTRIES = (CONFIG_NAME, MODULES_NAME, "tokenizer", "encoder", "llm", "encoder_lora", "llm_lora")
_ENCODER_CONTENTS = ("base", "hf_dir", "modules")
_LLM_CONTENTS = ("base", "hf_dir")
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_MAX_HEADER_BYTES = 100 << 20  # safetensors' own limit on a header


def _apply_umask_tree(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            apply_umask(path)


@contextlib.contextmanager
def _staged_model_dir(out: Path) -> Iterator[Path]:
    """An empty hidden folder to write a model into; on success it replaces ``out``, on any error it is removed.

    The folder is a sibling of ``out``, swapped in with two renames: the earlier model stays whole until the new one
    is complete. Entries of the earlier ``out`` that are not model parts (:data:`_MODEL_ENTRIES`) move into the new
    one. When the parent folder cannot be written, the folder is made inside ``out`` and each part replaces its old
    one by a rename, ``generator.json`` last (removed first), so a directory is never half old and half new.
    """
    if out.is_symlink():
        out = out.resolve()
    if out.exists() and not out.is_dir():
        raise OutputFileError(out, "is a file; a model is saved into a folder")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # e.g. a file where a folder of the path should be
        raise OutputFileError(out, f"its folder cannot be made ({exc.strerror or exc})") from exc
    inside = False
    try:  # a unique name (not only the pid): two threads saving the same model must not share a folder
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    except OSError:  # e.g. a read-only parent: stage inside the model directory
        out.mkdir(exist_ok=True)
        stage, inside = Path(tempfile.mkdtemp(prefix=".", suffix=".partial", dir=out)), True
    old = stage.with_name(stage.name.removesuffix(".partial") + ".old")
    try:
        yield stage
        _apply_umask_tree(stage)
        apply_umask(stage, 0o777)  # mkdtemp makes it 0700
        if inside:
            _swap_entries(stage, out, old)
        elif out.is_dir():
            with contextlib.suppress(OSError):
                shutil.copymode(out, stage)
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            try:
                os.replace(stage, out)
            except BaseException:
                os.replace(old, out)
                raise
            kept = []  # the user's files beside the earlier model (training summary, logs) move to the new one
            for entry in old.iterdir():  # not those the new save wrote again (its model card)
                if entry.name not in _MODEL_ENTRIES and not os.path.lexists(out / entry.name):
                    try:
                        os.replace(entry, out / entry.name)
                    except OSError as exc:
                        kept.append(f"{entry.name} ({exc.strerror or exc})")
            if kept:
                logger.warning("saved the model to %s; could not move %s from the earlier model, left in %s", out,
                               ", ".join(kept), old)  # fmt: skip
            else:
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _swap_entries(stage: Path, out: Path, old: Path) -> None:
    """Move the model parts written in ``stage`` (inside ``out``) over those of ``out``, ``generator.json`` last."""
    old.mkdir(exist_ok=True)
    for name in (CONFIG_NAME, *(n for n in _MODEL_ENTRIES if n != CONFIG_NAME)):
        if (out / name).exists() or (out / name).is_symlink():
            os.replace(out / name, old / name)
    for name in (*(n for n in _MODEL_ENTRIES if n != CONFIG_NAME), CARD_NAME, CONFIG_NAME):
        if (stage / name).exists():
            os.replace(stage / name, out / name)
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(stage, ignore_errors=True)


def _read_model_meta(root: Path) -> dict[str, Any]:
    """``generator.json``, checked: a JSON object of the supported format with a config and a contents record.

    Raises:
        ModelFileError: naming the directory or ``generator.json`` and the reason.
    """
    meta_path = root / CONFIG_NAME
    if not root.is_dir():
        raise ModelFileError(root, "not found" if not root.exists() else "is a file, not a report generator directory")
    if not meta_path.is_file():
        raise ModelFileError(meta_path, f"missing: {root} is not a report generator directory (no {CONFIG_NAME})")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ModelFileError(meta_path, f"cannot be read ({exc.strerror or exc})") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(meta_path, f"is not JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise ModelFileError(meta_path, f"holds a JSON {type(meta).__name__} where the model record (an object) is "
                                        "expected")  # fmt: skip
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(meta_path, f"unsupported format version {meta.get('format_version')!r} (this version "
                                        f"reads {FORMAT_VERSION})")  # fmt: skip
    missing = [key for key in ("config", "contents") if key not in meta]
    if missing:
        raise ModelFileError(meta_path, f"lacks the key(s) {missing}")
    contents = meta["contents"]
    if not isinstance(meta["config"], dict):
        raise ModelFileError(meta_path, "its 'config' is not an object")
    if (
        not isinstance(contents, dict)
        or contents.get("encoder") not in _ENCODER_CONTENTS
        or contents.get("llm") not in _LLM_CONTENTS
        or not all(isinstance(contents.get(k, False), bool) for k in ("encoder_lora", "llm_lora"))
    ):
        raise ModelFileError(meta_path, f"its 'contents' record is malformed ({contents!r}): 'encoder' one of "
                                        f"{_ENCODER_CONTENTS}, 'llm' one of {_LLM_CONTENTS}, 'encoder_lora' / "
                                        "'llm_lora' true or false")  # fmt: skip
    checks = (
        ("bases", dict, {}),
        ("trained", list, []),
        ("num_image_tokens", int, 0),
    )
    for key, kind, default in checks:
        if not isinstance(meta.get(key, default), kind) or isinstance(meta.get(key, default), bool):
            raise ModelFileError(meta_path, f"its {key!r} is not a JSON {kind.__name__}")
    return meta


def _check_safetensors(path: Path) -> list[str]:
    """Check that ``path`` is a complete safetensors file without reading its tensors; returns the tensor names.

    Raises:
        ModelFileError: missing, empty, truncated, corrupt or a pickle (the reason says which).
    """
    if not path.is_file():
        pickles = [p.name for p in path.parent.glob(path.stem + ".*") if p.suffix in _PICKLE_SUFFIXES]
        if pickles:
            raise ModelFileError(path, f"missing; the folder holds pickled weights ({', '.join(pickles)}), which are "
                                       "never loaded (a pickle can run code): save them as safetensors")  # fmt: skip
        raise ModelFileError(path, "missing" if not path.exists() else "is not a file")
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            head = handle.read(8)
            declared = int.from_bytes(head, "little") if len(head) == 8 else -1
            raw = handle.read(declared) if 0 < declared <= min(size - 8, _MAX_HEADER_BYTES) else b""
    except OSError as exc:
        raise ModelFileError(path, f"cannot be read ({exc.strerror or exc})") from exc
    if size == 0:
        raise ModelFileError(path, "is empty (0 bytes)")
    if head[:4] == b"PK\x03\x04" or (head[:1] == b"\x80" and not raw):
        raise ModelFileError(path, "is a PyTorch pickle (torch.save), not safetensors; pickled weights are never "
                                   "loaded (a pickle can run code)")  # fmt: skip
    if not raw:
        raise ModelFileError(path, f"is not a safetensors file, or is truncated: its first 8 bytes declare a header "
                                   f"of {declared} bytes, the file has {size}")  # fmt: skip
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(path, f"is not a safetensors file, or is corrupt: its header is not JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise ModelFileError(path, "is not a safetensors file: its header is not a JSON object")
    end, names = 0, []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise ModelFileError(path, f"is corrupt: the header entry of tensor {name!r} has no data offsets")
        end = max(end, offsets[1])
        names.append(name)
    expected = 8 + declared + end
    if size < expected:
        raise ModelFileError(path, f"is truncated: {size} of its {expected} bytes")
    return names


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checked safetensors file (never a pickle)."""
    from safetensors.torch import load_file

    _check_safetensors(path)
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors' own error types (SafetensorError, OSError ...)
        raise ModelFileError(path, f"cannot be read as safetensors ({exc})") from exc


def _read_json_object(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise ModelFileError(path, f"missing: the {what} has no {path.name}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ModelFileError(path, f"cannot be read ({exc.strerror or exc})") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(path, f"is not JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ModelFileError(path, f"holds a JSON {type(data).__name__} where an object is expected")
    return data


def _check_hf_dir(folder: Path, what: str) -> None:
    """A Hugging Face model folder of a model directory: a ``config.json`` with a model type and safetensors weights.

    Raises:
        ModelFileError: naming the folder or the file and the reason.
    """
    if not folder.is_dir():
        raise ModelFileError(folder, f"missing: {CONFIG_NAME} says the {what} was saved here")
    config = _read_json_object(folder / "config.json", what)
    if not config.get("model_type"):
        raise ModelFileError(folder / "config.json", "has no 'model_type'")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json_object(index, what).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelFileError(index, "has no 'weight_map'")
        for shard in sorted(set(map(str, weight_map.values()))):
            _check_safetensors(folder / shard)
    else:
        _check_safetensors(folder / "model.safetensors")


def _check_adapter_dir(folder: Path, what: str) -> list[str]:
    """A peft LoRA folder: ``adapter_config.json`` and a safetensors ``adapter_model``; returns its tensor names."""
    if not folder.is_dir():
        raise ModelFileError(folder, f"missing: {CONFIG_NAME} says the {what}'s LoRA adapter was saved here")
    config = _read_json_object(folder / "adapter_config.json", f"{what} LoRA adapter")
    if not config.get("peft_type"):
        raise ModelFileError(folder / "adapter_config.json", "has no 'peft_type' (not a peft adapter config)")
    return _check_safetensors(folder / "adapter_model.safetensors")


def _check_model_files(root: Path, contents: dict[str, Any]) -> None:
    """Every part ``contents`` names is present and well-formed (cheap: headers only), before anything loads."""
    if not (root / "tokenizer").is_dir():
        raise ModelFileError(root / "tokenizer", "missing: the model's tokenizer folder")
    _check_safetensors(root / MODULES_NAME)
    if contents["encoder"] == "hf_dir":
        _check_hf_dir(root / "encoder", "vision encoder")
    if contents["llm"] == "hf_dir":
        _check_hf_dir(root / "llm", "LLM")
    if contents.get("encoder_lora"):
        _check_adapter_dir(root / "encoder_lora", "encoder")
    if contents.get("llm_lora"):
        _check_adapter_dir(root / "llm_lora", "LLM")


def _load_part(folder: Path, what: str, load: Any) -> Any:
    """``load()``, with any failure but one of our own typed errors raised as a ModelFileError naming ``folder``."""
    from monai_r2gen.errors import R2GenError

    try:
        return load()
    except R2GenError as exc:
        if not isinstance(exc, ModelConfigError):
            raise
        raise ModelFileError(folder, f"cannot be loaded as the {what} ({exc})") from exc
    except Exception as exc:  # the loaders' own errors (OSError, ValueError, tokenizers' bare Exception ...)
        raise ModelFileError(folder, f"cannot be loaded as the {what} ({type(exc).__name__}: {exc})") from exc


def _load_saved_llm(folder: Path, trust_remote_code: bool, dtype: torch.dtype | None) -> nn.Module:
    """The ``llm/`` folder of a model directory: safetensors only, and every weight of the model present."""
    from transformers import AutoModelForCausalLM

    def _load() -> tuple[nn.Module, dict[str, Any]]:
        return AutoModelForCausalLM.from_pretrained(
            os.fspath(folder), local_files_only=True, trust_remote_code=trust_remote_code, dtype=dtype,
            use_safetensors=True, output_loading_info=True,
        )  # fmt: skip

    llm, info = _load_part(folder, "LLM", _load)
    missing = sorted(info.get("missing_keys") or [])
    mismatched = info.get("mismatched_keys") or []
    if missing or mismatched:
        problems = ([f"{len(missing)} missing (e.g. {missing[:3]})"] if missing else []) + (
            [f"{len(mismatched)} of another shape"] if mismatched else [])  # fmt: skip
        raise ModelFileError(folder, f"its weights do not make the model its config.json describes: "
                                     f"{', '.join(problems)}")  # fmt: skip
    return llm


def _load_adapter(model: nn.Module, folder: Path, what: str) -> nn.Module:
    """A peft LoRA folder of a model directory on ``model``; every adapter weight the model gets must be in the file."""
    from peft import PeftModel

    saved = _check_adapter_dir(folder, what)
    wrapped = _load_part(folder, f"{what}'s LoRA adapter", lambda: PeftModel.from_pretrained(model, str(folder)))
    expected = sum(1 for name, _ in wrapped.named_parameters() if "lora_" in name)
    if len(saved) < expected:
        raise ModelFileError(folder / "adapter_model.safetensors", f"holds {len(saved)} of the {expected} LoRA weights "
                                                                   "its adapter_config.json asks for")  # fmt: skip
    return wrapped
