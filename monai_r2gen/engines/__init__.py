"""Engines: freeze policies (stages), training and evaluation workflows.

Names are resolved lazily so that ``import monai_r2gen.engines`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "apply_stage": "monai_r2gen.engines.stages",
    "trainable_summary": "monai_r2gen.engines.stages",
    "get_stage": "monai_r2gen.engines.stages",
    "STAGES": "monai_r2gen.engines.stages",
    "StagePreset": "monai_r2gen.engines.stages",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
