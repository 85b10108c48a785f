"""monai-r2gen: chest X-ray radiology report generation for the MONAI ecosystem."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
