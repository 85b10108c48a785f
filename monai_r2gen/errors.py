"""Typed errors raised by monai-r2gen.

Every error that concerns a file names the file and the reason, so that a user who feeds a
folder of studies can tell which input was bad and why without reading a traceback from deep
inside a decoder.
"""

from __future__ import annotations

import os

__all__ = [
    "R2GenError",
    "InputFileError",
    "RadiographReadError",
    "UnsupportedTransferSyntaxError",
    "MultiFrameError",
    "NotAChestRadiographError",
    "ModelFileError",
    "ManifestError",
    "ReportError",
    "ModelConfigError",
    "CheckpointMismatchError",
    "MetricError",
    "ScorerTimeoutError",
]


class R2GenError(Exception):
    """Base class of every error raised on purpose by monai-r2gen."""


class InputFileError(R2GenError, ValueError):
    """An input file could not be used.

    Args:
        path: the offending file.
        reason: a short human-readable reason (no patient identifiers).
    """

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # keep the two-argument signature picklable (DataLoader workers)
        return (self.__class__, (self.path, self.reason))


class RadiographReadError(InputFileError):
    """A radiograph (DICOM, PNG, JPEG, TIFF) could not be read or decoded."""


class UnsupportedTransferSyntaxError(RadiographReadError):
    """A DICOM file is compressed with a transfer syntax for which no decoder is installed."""


class MultiFrameError(RadiographReadError):
    """A multi-frame image was given where a single radiograph is expected."""


class NotAChestRadiographError(RadiographReadError):
    """A readable image that is not a chest radiograph (modality, body part, colour, size): refused unless the
    caller accepts non-standard inputs explicitly."""


class ModelFileError(InputFileError):
    """A file of a saved model directory is missing, damaged or of the wrong kind."""


class ManifestError(InputFileError):
    """An annotation file or manifest (annotation.json, JSONL, CSV) is malformed."""


class ReportError(R2GenError, ValueError):
    """A report text or prompt template is unusable (e.g. a template without its image placeholder)."""


class ModelConfigError(R2GenError, ValueError):
    """A model configuration is inconsistent or names something that does not exist locally."""


class CheckpointMismatchError(R2GenError, ValueError):
    """A saved model expects a different base encoder or LLM than the one given."""


class MetricError(R2GenError, ValueError):
    """Metric inputs are inconsistent (e.g. different numbers of references and hypotheses)."""


class ScorerTimeoutError(MetricError):
    """An external scorer (the Java METEOR / SPICE jars) ran past its time limit."""
