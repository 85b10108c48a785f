"""Build a :class:`~monai_r2gen.networks.generator.RadiologyReportGenerator` from one config.

Two kinds of builds share one path:

- real models on disk: ``GeneratorConfig(encoder="hf", encoder_path=".../swin-base", llm_path=".../llama")``; the
  tokenizer is the LLM's (plus the image token);
- tiny models built from configs (the embedded default and the test fixtures): a random-init LLM whose vocabulary
  comes from a byte-level BPE tokenizer trained on the report corpus with
  :func:`~monai_r2gen.data.tokenizer.train_report_tokenizer`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from monai_r2gen.data.tokenizer import train_report_tokenizer
from monai_r2gen.errors import ModelConfigError
from monai_r2gen.networks.generator import RadiologyReportGenerator
from monai_r2gen.networks.generator_config import TINY_LLAMA, GeneratorConfig
from monai_r2gen.networks.llm_loading import load_tokenizer

__all__ = [
    "EMBEDDED_GENERATION",
    "EMBEDDED_PROMPT",
    "GeneratorConfig",
    "TINY_LLM_FAMILIES",
    "build_generator",
    "embedded_default_config",
    "tiny_encoder_options",
    "tiny_llm_options",
]

logger = logging.getLogger(__name__)

# Greedy decoding for the embedded default: its tiny BPE vocabulary makes common words single tokens, which a
# repetition penalty of 2.0 (R2GenGPT's, tuned for Llama-2) would push out of every second sentence.
EMBEDDED_GENERATION: dict[str, Any] = {
    "num_beams": 1,
    "do_sample": False,
    "repetition_penalty": 1.0,
    "min_new_tokens": 1,
    "max_new_tokens": 96,
    "no_repeat_ngram_size": 0,
}


# A short prompt for the embedded default: its LLM starts from random weights, so instruction words carry nothing and
# would only lengthen every sequence (R2GenGPT's prompt is 27 tokens of our report tokenizer).
EMBEDDED_PROMPT = "<Img><ImageHere></Img> Report:"


# the families with a tiny preset; each has its LoRA defaults in monai_r2gen.networks.generator (docs/training.md)
TINY_LLM_FAMILIES = (
    "llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "phi", "phi3", "gpt2", "gpt_neox", "falcon",
    "mpt",
)  # fmt: skip


def tiny_llm_options(
    model_type: str = "llama",
    hidden_size: int = 256,
    num_layers: int = 4,
    num_heads: int = 4,
    max_positions: int = 512,
) -> dict[str, Any]:
    """Config kwargs of a small causal LM of a given family (vocabulary filled in from the tokenizer at build).

    Supported families: :data:`TINY_LLM_FAMILIES` (llama, mistral, mixtral, qwen2, qwen3, gemma, gemma2, phi, phi3,
    gpt2, gpt_neox, falcon, mpt); for others pass the HF config kwargs yourself.

    Raises:
        ModelConfigError: a family without a preset.
    """
    if model_type == "llama" and (hidden_size, num_layers, num_heads) == (256, 4, 4):
        return dict(TINY_LLAMA, max_position_embeddings=max_positions)
    if model_type == "gpt2":
        return {"model_type": "gpt2", "n_embd": hidden_size, "n_layer": num_layers, "n_head": num_heads,
                "n_positions": max_positions}  # fmt: skip
    if model_type == "mpt":
        return {"model_type": "mpt", "d_model": hidden_size, "n_layers": num_layers, "n_heads": num_heads,
                "max_seq_len": max_positions, "expansion_ratio": 2}  # fmt: skip
    if model_type not in TINY_LLM_FAMILIES:
        raise ModelConfigError(f"no tiny preset for {model_type!r} (presets: {', '.join(TINY_LLM_FAMILIES)}); give "
                               "llm_options with the HF config kwargs")  # fmt: skip
    options: dict[str, Any] = {
        "model_type": model_type,
        "hidden_size": hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "max_position_embeddings": max_positions,
    }
    if model_type == "falcon":  # Falcon's MLP is 4 x hidden; multi-query attention by default
        return options
    options["intermediate_size"] = 4 * hidden_size if model_type in ("phi", "gpt_neox") else (
        (hidden_size * 11 // 4 + 63) // 64 * 64)  # fmt: skip
    if model_type not in ("phi", "gpt_neox"):
        options["num_key_value_heads"] = num_heads
    if model_type in ("mistral", "mixtral", "qwen2", "qwen3"):
        options["sliding_window"] = None
    if model_type in ("qwen3", "gemma", "gemma2"):  # their head width does not follow from hidden / heads
        options["head_dim"] = hidden_size // num_heads
    if model_type == "mixtral":
        options.update(num_local_experts=2, num_experts_per_tok=1)
    return options


def tiny_encoder_options(
    model_type: str, image_size: int = 64, hidden_size: int = 32, num_layers: int = 1, num_heads: int = 2
) -> dict[str, Any]:
    """Config kwargs of a small Hugging Face vision model (swin, vit, clip_vision_model, siglip_vision_model, dinov2).

    Patch size 8 (Swin: patch 4, two stages, window 4), so a 64 px image gives an 8x8 grid.
    """
    if model_type == "swin":
        return {"model_type": "swin", "image_size": image_size, "patch_size": 4, "embed_dim": hidden_size // 2,
                "depths": [num_layers, num_layers], "num_heads": [num_heads, num_heads], "window_size": 4}  # fmt: skip
    options: dict[str, Any] = {
        "model_type": model_type,
        "image_size": image_size,
        "patch_size": 8,
        "hidden_size": hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
    }
    if model_type == "dinov2":
        options["mlp_ratio"] = 2
    elif model_type in ("vit", "clip_vision_model", "siglip_vision_model"):
        options["intermediate_size"] = 2 * hidden_size
    else:
        raise ModelConfigError(f"no tiny preset for vision model {model_type!r}")
    return options


#: the embedded default's auxiliary head and prompts (small CNN with an LLM built from a config)
_EMBEDDED_HEADS: dict[str, Any] = {
    "finding_head": False,
    "finding_prompts": False,
    "hard_finding_prompts": True,
    "attribute_head": True,
    "attribute_source": "dense",
    "attribute_box_weight": 10.0,
    "attribute_slots": True,
    "attribute_word_weight": 0.3,
}


def embedded_default_config(**overrides: Any) -> GeneratorConfig:
    """The embedded default: small CNN at 128 px (64 tokens of 128 per view), mean view fusion, attention resampler
    with K = 16 visual prompts, an attribute head on per-token presence maps of each view's tokens whose prediction
    fills 30 attribute slot prompts (``K`` = 46), random-init Llama 4 x 256, a short prompt
    (:data:`EMBEDDED_PROMPT`) and greedy decoding (:data:`EMBEDDED_GENERATION`).

    The attribute head (``attribute_source="dense"``, its maps taught by the data set's finding boxes with
    ``attribute_box_weight``) and the slot prompts are what make this tiny model read the image in minutes, side and
    size included: without an auxiliary head its LLM learned to ignore the visual prompts, and a finding head of
    14 labels (``finding_head`` / ``finding_prompts``, the earlier default) names the findings but cannot carry their
    side or size (docs/getting-started.md has the measurements).

    The CNN width applies to the small CNN, the short prompt to an LLM built from a config, and the head and slots
    to the two together: a real encoder or LLM given by override gets R2GenGPT's architecture and prompt unless
    the head settings are given explicitly.

    Args:
        **overrides: any :class:`GeneratorConfig` field.
    """
    settings: dict[str, Any] = {"generation": dict(EMBEDDED_GENERATION)}
    tiny_encoder = overrides.get("encoder", "small_cnn") == "small_cnn"
    tiny_llm = overrides.get("llm_path") is None
    if tiny_encoder:
        settings["encoder_options"] = {"channels": [16, 32, 64, 128]}
    if tiny_llm:  # a pretrained LLM keeps the R2GenGPT instruction prompt
        settings["prompt_template"] = EMBEDDED_PROMPT
    if tiny_encoder and tiny_llm:  # 46 prompts: 176 tokens leave room for 99% of the phantom reports
        settings.update(_EMBEDDED_HEADS, max_length=176)
    settings.update(overrides)
    return GeneratorConfig.from_dict(settings)


def build_generator(
    config: GeneratorConfig | dict[str, Any] | str | os.PathLike | None = None,
    *,
    corpus: Iterable[str] | None = None,
    tokenizer: Any = None,
) -> RadiologyReportGenerator:
    """Build a report generator from one config.

    The tokenizer is, in order: the one given; the one at ``config.tokenizer_path`` or ``config.llm_path``; or a
    byte-level BPE of ``config.tokenizer_vocab_size`` tokens trained on ``corpus`` (models built from scratch).

    Args:
        config: a :class:`GeneratorConfig`, a dict of its fields, a JSON file written by ``GeneratorConfig.save``,
            or None for the embedded default (:func:`embedded_default_config`).
        corpus: report texts to train a tokenizer on.
        tokenizer: a ready tokenizer.

    Raises:
        ModelConfigError: invalid config, or no way to get a tokenizer.
    """
    if config is None:
        config = embedded_default_config()
    elif isinstance(config, (str, os.PathLike)):
        config = GeneratorConfig.load(Path(config))
    elif isinstance(config, dict):
        config = GeneratorConfig.from_dict(config)
    if tokenizer is None:
        source = config.tokenizer_path or config.llm_path
        if source is not None:
            tokenizer = load_tokenizer(source, config.trust_remote_code)
        elif corpus is not None:
            tokenizer = train_report_tokenizer(
                corpus, vocab_size=config.tokenizer_vocab_size, prompt_template=config.prompt_template
            )
        else:
            raise ModelConfigError("the LLM is built from a config, so it needs a tokenizer: pass corpus=<report "
                                   "texts> to train one, tokenizer=, or set tokenizer_path")  # fmt: skip
    return RadiologyReportGenerator.from_config(config, tokenizer)
