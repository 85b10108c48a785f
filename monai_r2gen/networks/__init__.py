"""Networks: vision encoders, projectors and the report generator.

Names are resolved lazily so that ``import monai_r2gen.networks`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "RadiologyReportGenerator": "monai_r2gen.networks.generator",
    "GeneratorConfig": "monai_r2gen.networks.generator",
    "fingerprint": "monai_r2gen.networks.generator",
    "build_generator": "monai_r2gen.networks.factory",
    "embedded_default_config": "monai_r2gen.networks.factory",
    "tiny_llm_options": "monai_r2gen.networks.factory",
    "tiny_encoder_options": "monai_r2gen.networks.factory",
    "build_encoder": "monai_r2gen.networks.encoders",
    "HFVisionEncoder": "monai_r2gen.networks.encoders",
    "SmallCNNEncoder": "monai_r2gen.networks.encoders",
    "ViewFusion": "monai_r2gen.networks.projectors",
    "AttentionResampler": "monai_r2gen.networks.projectors",
    "LinearProjector": "monai_r2gen.networks.projectors",
    "MLPProjector": "monai_r2gen.networks.projectors",
    "build_projector": "monai_r2gen.networks.projectors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
