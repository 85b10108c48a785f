"""The PACS round trip over DICOMweb: studies in (QIDO-RS, WADO-RS), report SRs out (STOW-RS).

- :mod:`~monai_r2gen.pacs.multipart`: ``multipart/related`` bodies (STOW-RS requests, WADO-RS answers);
- :mod:`~monai_r2gen.pacs.dicomweb`: :class:`DicomWebClient`, a small client on ``requests``;
- :mod:`~monai_r2gen.pacs.roundtrip`: :class:`PacsReporter`, retrieval, generation, SR and storage per study;
- :mod:`~monai_r2gen.pacs.cli`: the ``monai-r2gen pacs`` subcommand (also ``python -m monai_r2gen.pacs``).

The SR itself is built by :mod:`monai_r2gen.data.report_sr`, shared with the MONAI Deploy app. Names are imported
on first use, so ``import monai_r2gen.pacs`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["DicomWebClient", "PacsReporter", "StudyOutcome", "decode_multipart_related", "encode_multipart_related"]

_WHERE = {
    "DicomWebClient": "dicomweb",
    "PacsReporter": "roundtrip",
    "StudyOutcome": "roundtrip",
    "decode_multipart_related": "multipart",
    "encode_multipart_related": "multipart",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
