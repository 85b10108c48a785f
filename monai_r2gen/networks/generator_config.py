"""The configuration of a :class:`~monai_r2gen.networks.generator.RadiologyReportGenerator`: every field that
builds one (saved as ``generator.json`` beside its weights), the default generation settings and the embedded
default's tiny Llama.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from monai_r2gen.data.reports import DEFAULT_PROMPT, IMAGE_TOKEN
from monai_r2gen.errors import ModelConfigError
from monai_r2gen.flags import as_flag
from monai_r2gen.networks.encoders import ENCODER_KINDS
from monai_r2gen.networks.projectors import FUSION_MODES, PROJECTOR_KINDS

__all__ = ["DEFAULT_GENERATION", "TINY_LLAMA", "GeneratorConfig"]

# R2GenGPT decodes with beam 3 and repetition penalty 2.0 (its length penalty 2.0 and 80..120 new tokens are
# tuned for MIMIC-CXR findings and stay settings).


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
        for item in dataclasses.fields(self):  # `--network_config#finding_prompts false` arrives as 'false'
            if item.type == "bool":
                setattr(self, item.name, as_flag(getattr(self, item.name), item.name))
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
