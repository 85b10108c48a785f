"""The parts a :class:`~monai_r2gen.networks.generator.RadiologyReportGenerator` is built from: the vision encoder
and the view fusion + projector for a :class:`~monai_r2gen.networks.generator_config.GeneratorConfig`, the optional
modules saved beside the projector, and seeded construction (each optional module draws its initialisation from its
own seed, the global RNG untouched).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from monai_r2gen.networks.encoders import VisionEncoder, build_encoder
from monai_r2gen.networks.generator_config import GeneratorConfig
from monai_r2gen.networks.projectors import ViewFusion, build_projector

__all__ = ["EXTRA_MODULES", "build_fusion_and_projector", "build_vision_encoder", "seeded"]

# the modules beside the projector (saved in modules.safetensors, trained in the "projector" group)
EXTRA_MODULES = (
    "finding_head",
    "finding_prompts",
    "attribute_head",
    "attribute_features",
    "attribute_prompts",
    "attribute_slots",
)


def build_vision_encoder(config: GeneratorConfig, path: str | os.PathLike | None, dtype: torch.dtype) -> VisionEncoder:
    """The vision encoder ``config`` names: from ``path`` (a Hugging Face folder) or built from its options."""
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


def build_fusion_and_projector(
    config: GeneratorConfig, encoder: VisionEncoder, llm: nn.Module
) -> tuple[ViewFusion, nn.Module]:
    """The view fusion and the projector from the encoder's width to the LLM's embedding width."""
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


def seeded(seed: int, build: Callable[..., nn.Module], *args: Any, **kwargs: Any) -> Any:
    """``build(*args, **kwargs)`` with its random initialisation drawn from ``seed`` (the global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build(*args, **kwargs)
