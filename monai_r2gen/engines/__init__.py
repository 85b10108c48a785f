"""Engines: freeze policies (stages), training and evaluation workflows.

Names are resolved lazily so that ``import monai_r2gen.engines`` stays cheap.
"""

from __future__ import annotations

from monai_r2gen._lazy import lazy_exports

_EXPORTS = {
    "apply_stage": "monai_r2gen.engines.stages",
    "trainable_summary": "monai_r2gen.engines.stages",
    "get_stage": "monai_r2gen.engines.stages",
    "STAGES": "monai_r2gen.engines.stages",
    "StagePreset": "monai_r2gen.engines.stages",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
