"""Networks: vision encoders, projectors and the report generator.

Names are resolved lazily so that ``import monai_r2gen.networks`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "RadiologyReportGenerator": "monai_r2gen.networks.generator",
    "GeneratorConfig": "monai_r2gen.networks.generator",
    "build_generator": "monai_r2gen.networks.factory",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
