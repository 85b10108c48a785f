"""monai-r2gen: chest X-ray radiology report generation for the MONAI ecosystem.

``ReportInference`` and ``run_inference`` (:mod:`monai_r2gen.inference`) are resolved lazily, so that
``import monai_r2gen`` stays cheap.
"""

from __future__ import annotations

from monai_r2gen._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "ReportInference": "monai_r2gen.inference",
    "run_inference": "monai_r2gen.inference",
}

__getattr__, _lazy_dir, _lazy_all = lazy_exports(__name__, _EXPORTS)
__all__ = ["__version__", *_lazy_all]


def __dir__() -> list:
    return sorted({*globals(), *_lazy_dir()})
