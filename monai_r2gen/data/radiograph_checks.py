"""Is this a chest radiograph we can read safely? The checks made before and after an image is decoded.

Two kinds of checks, with different escapes:

- **Safety** (never bypassed): the input must be a regular file (a FIFO or a device would block or never end), not
  empty, and its declared size must stay within :data:`MAX_PIXELS` per frame and :data:`MAX_DECODED_BYTES` in all,
  checked from the header *before* any pixel is decoded or inflated (a few hundred kilobytes of deflated DICOM, or a
  PNG / TIFF header, can declare 20000 x 20000 pixels and take gigabytes to decode). Failures raise
  :class:`~monai_r2gen.errors.RadiographReadError`.
- **Chest radiograph** (refused unless ``accept_nonstandard=True``): a DICOM modality and SOP class of a projection
  radiograph (CR, DX, digitised film), a body part that is the chest (or not given), a grayscale photometric
  interpretation, both sides at least :data:`MIN_SIDE` pixels, some alpha (not a fully transparent PNG) and some
  contrast (not a constant image). Failures raise :class:`~monai_r2gen.errors.NotAChestRadiographError`; with
  ``accept_nonstandard=True`` they are logged as warnings and the image is used.

The limits are module constants (read at call time, so that they can be changed for a whole program) and the size
limit can also be given per call (``max_pixels``). Nothing here reads patient identifiers.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from monai_r2gen.errors import NotAChestRadiographError, RadiographReadError

__all__ = [
    "MAX_PIXELS",
    "MAX_DECODED_BYTES",
    "MAX_HEADER_BYTES",
    "MIN_SIDE",
    "RADIOGRAPH_MODALITIES",
    "RADIOGRAPH_SOP_CLASSES",
    "SECONDARY_CAPTURE_SOP_CLASSES",
    "require_regular_file",
    "sniff_format",
    "check_declared_size",
    "header_problems",
    "pixel_problems",
    "refuse_nonstandard",
]

logger = logging.getLogger(__name__)

MAX_PIXELS = 8192 * 8192
"""Most pixels (rows x columns) of one frame: about 67 million, 4 to 16 times a chest radiograph's (a 43 x 43 cm
detector at 0.1 mm is 4300 x 4300). Larger declared images are refused before decoding."""

MAX_DECODED_BYTES = 1 << 30
"""Most bytes of decoded pixel data (rows x columns x frames x samples x bytes per sample) a DICOM file may declare:
1 GiB. pydicom decodes every frame of a file, even when one is used."""

MAX_HEADER_BYTES = 64 << 20
"""Most bytes a deflated DICOM data set may inflate to before its pixel data (its header): 64 MiB."""

MIN_SIDE = 32
"""Fewest pixels on either side of a usable radiograph (a 1 x 1 or 8 x 8 image says nothing about a chest)."""

RADIOGRAPH_MODALITIES = ("CR", "DX", "RG", "DR")
"""DICOM Modality values of projection radiographs (RG: film-screen; DR: not a defined term, but written by some
vendors). ``OT`` (other, e.g. a digitised film in a Secondary Capture) and a missing modality are accepted with an
info log; every other modality (CT, MR, US, NM, PT, MG, XA, RF, IO, PX, SR, ...) is refused."""

RADIOGRAPH_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1": "Computed Radiography Image Storage",
    "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray Image Storage - For Processing",
}
"""SOP classes of projection radiographs."""

SECONDARY_CAPTURE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.1": "Multi-frame Single Bit Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.3": "Multi-frame Grayscale Word Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.4": "Multi-frame True Color Secondary Capture Image Storage",
}
"""Secondary Capture SOP classes (digitised films, exports): accepted; their modality and colour decide."""

_STORAGE_ROOT = "1.2.840.10008.5.1.4.1.1."

# BodyPartExamined: a value holding one of these (letters only, upper case) is the chest ...
_CHEST_WORDS = ("CHEST", "THORAX", "TORAX", "TORACE", "LUNG", "RIB", "STERNUM", "MEDIASTIN", "HEART", "PECHO",
                "POUMON", "CXR")  # fmt: skip
# ... else one holding one of these is another part (CID 4031 terms and common free text); else it is not recognised
_OTHER_PART_WORDS = ("ABDOMEN", "ABD", "PELVIS", "HIP", "KNEE", "HAND", "FINGER", "THUMB", "WRIST", "ELBOW", "ARM",
                     "SHOULDER", "CLAVICLE", "SCAPULA", "HUMERUS", "FEMUR", "TIBIA", "FIBULA", "LEG", "ANKLE", "FOOT",
                     "FEET", "TOE", "HEEL", "CALCANEUS", "PATELLA", "SPINE", "SACRUM", "COCCYX", "SKULL", "HEAD",
                     "BRAIN", "FACE", "FACIAL", "SINUS", "ORBIT", "MANDIBLE", "JAW", "TMJ", "NECK", "DENTAL", "TOOTH",
                     "TEETH", "EXTREMITY", "LIMB", "BREAST", "KIDNEY", "BLADDER", "COLON", "KUB")  # fmt: skip

_GRAY_PHOTOMETRICS = ("MONOCHROME1", "MONOCHROME2")

# (path, message) of the info messages already logged: each is logged once, not at every epoch of a training run
_LOGGED: set[tuple[str, str]] = set()
_LOGGED_MAX = 10_000

# magic numbers of the formats read by content (see sniff_format)
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"II+\x00", "tiff"),  # BigTIFF
    (b"MM\x00+", "tiff"),
)


# ----------------------------------------------------------------------------------------------------------------------
# Safety
# ----------------------------------------------------------------------------------------------------------------------


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a plain file"


def require_regular_file(path: str | os.PathLike) -> str:
    """Return ``path`` as a string after checking, without opening it, that it is a non-empty regular file.

    Opening a FIFO blocks until a writer comes, and a device may never end: both are refused from ``os.stat``.

    Raises:
        RadiographReadError: "file not found", "not a regular file (a FIFO (named pipe))" (or a folder, a socket, a
            device), or "empty file (0 bytes)".
    """
    path = os.fspath(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise RadiographReadError(path, "file not found") from None
    except OSError as exc:
        raise RadiographReadError(path, f"cannot access the file ({exc.strerror or type(exc).__name__})") from None
    if not stat.S_ISREG(info.st_mode):
        raise RadiographReadError(path, f"not a regular file ({_kind(info.st_mode)})")
    if info.st_size == 0:
        raise RadiographReadError(path, "empty file (0 bytes)")
    return path


def sniff_format(path: str | os.PathLike) -> str | None:
    """The format of ``path`` told from its first bytes: "dicom" (a Part-10 file: 128-byte preamble then ``DICM``),
    "png", "jpeg", "tiff", or None (unknown, e.g. a DICOM data set without the Part-10 header, or not an image).

    Files that are not regular files are never opened (None).
    """
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return None
    if len(head) == 132 and head[128:132] == b"DICM":
        return "dicom"
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    return None


def _limit(value: int | None, default: int) -> int:
    limit = default if value is None else int(value)
    if limit < 1:
        raise ValueError(f"a size limit must be a positive integer, got {value}")
    return limit


def check_declared_size(
    path: str | os.PathLike,
    rows: int,
    cols: int,
    *,
    frames: int = 1,
    samples: int = 1,
    bits_allocated: int = 8,
    max_pixels: int | None = None,
) -> None:
    """Refuse a declared image size far beyond a radiograph's, before anything is decoded.

    Args:
        path: the file (for the error).
        rows: declared rows (height).
        cols: declared columns (width).
        frames: declared number of frames (all are decoded).
        samples: samples per pixel (3 for RGB).
        bits_allocated: bits per sample in the decoded array.
        max_pixels: most rows x columns of one frame (default :data:`MAX_PIXELS`).

    Raises:
        RadiographReadError: an empty or negative size, more than ``max_pixels`` pixels in a frame, or more than
            :data:`MAX_DECODED_BYTES` of decoded pixel data.
    """
    path = os.fspath(path)
    rows, cols, frames, samples = int(rows), int(cols), max(int(frames), 1), max(int(samples), 1)
    if rows < 1 or cols < 1:
        raise RadiographReadError(path, f"declared image size {rows} x {cols} is empty")
    limit = _limit(max_pixels, MAX_PIXELS)
    pixels = rows * cols
    if pixels > limit:
        raise RadiographReadError(
            path,
            f"declared image size {rows} x {cols} ({pixels:,} pixels) exceeds the limit of {limit:,} pixels "
            "(max_pixels); refused before decoding",
        )
    decoded = pixels * frames * samples * max(int(bits_allocated), 1) // 8
    if decoded > MAX_DECODED_BYTES:
        raise RadiographReadError(
            path,
            f"declared pixel data of {rows} x {cols} x {frames} frame(s) x {samples} sample(s) would decode to "
            f"{decoded / 2**20:,.0f} MiB, over the limit of {MAX_DECODED_BYTES / 2**20:,.0f} MiB "
            "(MAX_DECODED_BYTES); refused before decoding",
        )


# ----------------------------------------------------------------------------------------------------------------------
# Chest radiograph
# ----------------------------------------------------------------------------------------------------------------------


def _info_once(path: str, message: str) -> None:
    key = (path, message)
    if key in _LOGGED:
        return
    if len(_LOGGED) >= _LOGGED_MAX:
        _LOGGED.clear()
    _LOGGED.add(key)
    logger.info("%s: %s", path, message)


def _sop_class_problem(uid: str | None) -> str | None:
    if not uid or uid in RADIOGRAPH_SOP_CLASSES or uid in SECONDARY_CAPTURE_SOP_CLASSES:
        return None
    if not uid.startswith(_STORAGE_ROOT):
        return None  # a private or unknown class: the modality decides
    from pydicom.uid import UID

    name = getattr(UID(uid), "name", "") or ""
    if not name or name == uid:
        return None  # not a class pydicom knows
    return f"SOP class {name} is not a projection radiograph"


def _body_part_problem(path: str, body_part: str | None) -> str | None:
    letters = re.sub(r"[^A-Z]", "", (body_part or "").upper())
    if not letters:
        return None
    if any(word in letters for word in _CHEST_WORDS):
        return None
    if any(word in letters for word in _OTHER_PART_WORDS):
        return f"body part examined is {body_part!r}, not the chest"
    _info_once(path, f"body part {body_part!r} not recognised; assumed to be the chest")
    return None


def header_problems(path: str | os.PathLike, meta: Mapping[str, Any]) -> list[str]:
    """Why the header of a DICOM image says it is not a chest radiograph (empty when nothing is wrong).

    Args:
        path: the file (for the logs).
        meta: the metadata of :func:`monai_r2gen.data.dicom.dicom_metadata` ("modality", "sop_class_uid",
            "body_part", "photometric_interpretation", "original_shape").

    Returns:
        The reasons, e.g. ``["modality CT (not a radiograph: CR or DX expected)"]``.
    """
    path = os.fspath(path)
    problems: list[str] = []
    modality = (meta.get("modality") or "").strip().upper()
    if not modality:
        _info_once(path, "no Modality in the DICOM header; assumed to be a radiograph")
    elif modality == "OT":
        _info_once(path, "modality OT (other, e.g. a digitised film); assumed to be a radiograph")
    elif modality not in RADIOGRAPH_MODALITIES:
        problems.append(f"modality {modality} (not a radiograph: CR or DX expected)")
    sop_problem = _sop_class_problem(meta.get("sop_class_uid"))
    if sop_problem is not None and not problems:  # one reason is enough when the modality already says it
        problems.append(sop_problem)
    part_problem = _body_part_problem(path, meta.get("body_part"))
    if part_problem is not None:
        problems.append(part_problem)
    photometric = (meta.get("photometric_interpretation") or "").strip().upper()
    if photometric and photometric not in _GRAY_PHOTOMETRICS:
        problems.append(f"colour image (photometric interpretation {photometric}); radiographs are grayscale")
    shape = meta.get("original_shape")
    if shape:
        problems.extend(_size_problems(shape))
    return problems


def _size_problems(shape: Sequence[int]) -> list[str]:
    rows, cols = (int(n) for n in shape[:2])
    if min(rows, cols) < MIN_SIDE:
        return [f"image of {rows} x {cols} pixels is too small for a radiograph (at least {MIN_SIDE} per side)"]
    return []


def pixel_problems(image: np.ndarray, *, alpha_max: int | None = None, check_size: bool = True) -> list[str]:
    """Why decoded pixels are not a usable radiograph (empty when nothing is wrong).

    Args:
        image: the decoded (H, W) display image.
        alpha_max: the largest alpha value of an image with an alpha channel (None: no alpha channel).
        check_size: check :data:`MIN_SIDE` (off when the header was already checked).

    Returns:
        The reasons: too small, fully transparent, constant.
    """
    problems = _size_problems(image.shape) if check_size else []
    if alpha_max is not None and alpha_max == 0:
        problems.append("fully transparent image (its alpha channel is 0 everywhere)")
    elif image.size and float(np.max(image)) - float(np.min(image)) <= 0.0:
        problems.append(f"constant image (every pixel displays as {float(image.flat[0]):.3g}): nothing to read")
    return problems


def refuse_nonstandard(path: str | os.PathLike, problems: Sequence[str], accept_nonstandard: bool = False) -> None:
    """Raise :class:`NotAChestRadiographError` for ``problems``, or log them as a warning when the caller accepts
    non-standard inputs.

    Args:
        path: the file.
        problems: reasons from :func:`header_problems` / :func:`pixel_problems` (nothing happens when empty).
        accept_nonstandard: use the image anyway (logged).

    Raises:
        NotAChestRadiographError: ``problems`` is not empty and ``accept_nonstandard`` is False.
    """
    if not problems:
        return
    reason = "; ".join(problems)
    if not accept_nonstandard:
        raise NotAChestRadiographError(
            path, f"not a chest radiograph: {reason} (accept_nonstandard=True uses it anyway)"
        )
    logger.warning("%s: non-standard input used (accept_nonstandard=True): %s", os.fspath(path), reason)
