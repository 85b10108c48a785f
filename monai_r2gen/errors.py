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
    "PacsError",
    "PacsResponseError",
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


class PacsError(R2GenError):
    """A DICOMweb request to a PACS failed: the server could not be reached, or it answered with an error status.

    Args:
        url: the request URL (user and password, if any, are removed from the message).
        reason: a short reason (no patient identifiers).
        status: the HTTP status code, when the server answered.
    """

    def __init__(self, url: str, reason: str, status: int | None = None) -> None:
        self.url = _without_credentials(url)
        self.reason = reason
        self.status = status
        where = f"{self.url}: HTTP {status}" if status is not None else self.url
        super().__init__(f"{where}: {reason}")

    def __reduce__(self):  # keep the signature picklable, as InputFileError does
        return (self.__class__, (self.url, self.reason, self.status))


class PacsResponseError(PacsError):
    """A PACS answered, but not with what DICOMweb prescribes (not JSON, a malformed multipart body, an instance it
    refused to store)."""


def _without_credentials(url: str) -> str:
    """``url`` without a ``user:password@`` part."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host  # an IPv6 address
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))
