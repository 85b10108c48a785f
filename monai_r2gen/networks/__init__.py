"""Networks: vision encoders, projectors and the report generator.

Names are resolved lazily so that ``import monai_r2gen.networks`` stays cheap.
"""

from __future__ import annotations

from monai_r2gen._lazy import lazy_exports

_EXPORTS = {
    "RadiologyReportGenerator": "monai_r2gen.networks.generator",
    "GeneratorConfig": "monai_r2gen.networks.generator_config",
    "fingerprint": "monai_r2gen.networks.fingerprints",
    "load_causal_lm": "monai_r2gen.networks.llm_loading",
    "load_tokenizer": "monai_r2gen.networks.llm_loading",
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
    "FindingPrompts": "monai_r2gen.networks.projectors",
    "build_projector": "monai_r2gen.networks.projectors",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
