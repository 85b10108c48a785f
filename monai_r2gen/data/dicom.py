"""DICOM radiographs: building and writing DX/CR datasets, decoding pixels to the display convention.

Reading goes straight through pydicom (not MONAI's ``PydicomReader``, which neither inverts MONOCHROME1 nor applies a
VOI window, and returns the image transposed). The decoded stored values are mapped, in this order, through

1. the modality LUT (Modality LUT Sequence, or Rescale Slope / Intercept),
2. the VOI transform: the first item of the VOI LUT Sequence, else the first window (Window Center / Width, honouring
   VOI LUT Function LINEAR, LINEAR_EXACT and SIGMOID, PS3.3 C.11.2.1.2), else a robust percentile window,
3. the inversion of MONOCHROME1 (so that 0 is always black and 1 white),

and returned as float32 in [0, 1] with shape (rows, cols).

The LUTs and windows are applied here rather than with pydicom's helpers, whose module moved between versions. Works
with pydicom 2.4 and 3.x: the calls that differ are isolated in ``_write_part10``, ``_missing_decoder`` and
``_color_to_gray``. Patient names and IDs are never logged nor copied into the metadata.
"""

from __future__ import annotations

import datetime
import logging
import os
import struct
import warnings
from typing import Any

import numpy as np
import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from monai_r2gen.errors import MultiFrameError, RadiographReadError, UnsupportedTransferSyntaxError

__all__ = [
    "PYDICOM_3",
    "SOP_CLASS_UIDS",
    "WINDOW_MODES",
    "make_radiograph_dataset",
    "write_dataset",
    "read_dicom_pixels",
    "dicom_metadata",
    "is_dicom_file",
    "require_nonempty_file",
    "apply_window",
    "percentile_window",
    "minmax_window",
    "rgb_to_gray",
    "select_frame",
]

logger = logging.getLogger(__name__)

PYDICOM_3 = int(pydicom.__version__.split(".")[0]) >= 3

#: SOP classes used by :func:`make_radiograph_dataset`, by modality.
SOP_CLASS_UIDS = {
    "CR": UID("1.2.840.10008.5.1.4.1.1.1"),  # Computed Radiography Image Storage
    "DX": UID("1.2.840.10008.5.1.4.1.1.1.1"),  # Digital X-Ray Image Storage - For Presentation
    "OT": UID("1.2.840.10008.5.1.4.1.1.7"),  # Secondary Capture Image Storage
}


# ----------------------------------------------------------------------------------------------------------------------
# Building and writing
# ----------------------------------------------------------------------------------------------------------------------


def make_radiograph_dataset(
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    modality: str = "DX",
    view_position: str | None = "PA",
    laterality: str | None = None,
    body_part: str = "CHEST",
    window: tuple[float, float] | None = None,
    rescale: tuple[float, float] | None = None,
    pixel_spacing: tuple[float, float] | None = None,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    patient_id: str = "ANON",
    patient_name: str = "Anonymous",
    study_id: str = "",
    instance_number: int = 1,
    extra: dict | None = None,
) -> Dataset:
    """Build a single-frame grayscale DX/CR image dataset with file meta (explicit VR little endian).

    Args:
        pixels: 2-D array (rows, cols) of non-negative integer stored values, each < 2**bits_stored.
        photometric: "MONOCHROME2" (0 = black) or "MONOCHROME1" (0 = white).
        bits_stored: bits per stored value (1..16); 8 bits are allocated up to 8 bits stored, else 16.
        modality: "DX" or "CR" (selects the SOP class; anything else is stored as Secondary Capture).
        view_position: DICOM ViewPosition, e.g. "PA", "AP", "LL"; omitted when None.
        laterality: ImageLaterality ("L", "R", "B", "U"); omitted when None.
        body_part: BodyPartExamined.
        window: (center, width) written as WindowCenter / WindowWidth; omitted when None.
        rescale: (slope, intercept) written as RescaleSlope / RescaleIntercept (identity when None).
        pixel_spacing: (row, column) spacing in mm, written as PixelSpacing and ImagerPixelSpacing.
        study_uid: StudyInstanceUID (generated when None).
        series_uid: SeriesInstanceUID (generated when None).
        sop_uid: SOPInstanceUID (generated when None).
        patient_id: PatientID.
        patient_name: PatientName.
        study_id: StudyID.
        instance_number: InstanceNumber.
        extra: further attributes by DICOM keyword (e.g. ``{"StudyDescription": "CHEST PA"}``), set last; an unknown
            keyword raises ``ValueError``.

    Returns:
        a ``pydicom.Dataset`` with ``file_meta``, ready for :func:`write_dataset`.

    Raises:
        ValueError: if the pixel array is not 2-D, not integer, negative or too large for ``bits_stored``, or an
            ``extra`` keyword is not a DICOM keyword.
    """
    arr = np.asarray(pixels)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"pixels must be a non-empty 2-D array (rows, cols), got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"pixels must hold integer stored values, got dtype {arr.dtype}")
    if not 1 <= int(bits_stored) <= 16:
        raise ValueError(f"bits_stored must be in 1..16, got {bits_stored}")
    if int(arr.min()) < 0 or int(arr.max()) >= 2 ** int(bits_stored):
        raise ValueError(
            f"pixel values must be in [0, {2 ** int(bits_stored) - 1}] for bits_stored={bits_stored}, "
            f"got [{int(arr.min())}, {int(arr.max())}]"
        )
    photometric = photometric.upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"photometric must be MONOCHROME1 or MONOCHROME2, got {photometric!r}")
    bits_allocated = 8 if bits_stored <= 8 else 16
    stored = np.ascontiguousarray(arr.astype(np.uint8 if bits_allocated == 8 else "<u2"))
    modality = modality.upper()
    sop_class = SOP_CLASS_UIDS.get(modality, SOP_CLASS_UIDS["OT"])
    sop_uid = sop_uid or generate_uid()
    now = datetime.datetime.now()

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian

    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = study_id
    ds.SeriesNumber = 1
    ds.InstanceNumber = int(instance_number)
    ds.Modality = modality
    ds.Manufacturer = "monai-r2gen"
    ds.BodyPartExamined = body_part
    if view_position is not None:
        ds.ViewPosition = view_position
    if laterality is not None:
        ds.ImageLaterality = laterality
    ds.PatientOrientation = ""
    ds.ImageType = ["DERIVED", "PRIMARY"]
    if modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.PixelIntensityRelationship = "LIN"
        ds.PixelIntensityRelationshipSign = 1
        ds.PresentationLUTShape = "INVERSE" if photometric == "MONOCHROME1" else "IDENTITY"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"

    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = (int(n) for n in stored.shape)
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = int(bits_stored)
    ds.HighBit = int(bits_stored) - 1
    ds.PixelRepresentation = 0
    slope, intercept = rescale if rescale is not None else (1.0, 0.0)
    ds.RescaleSlope = _ds_number(slope)
    ds.RescaleIntercept = _ds_number(intercept)
    ds.RescaleType = "US"
    if window is not None:
        ds.WindowCenter = _ds_number(window[0])
        ds.WindowWidth = _ds_number(window[1])
    if pixel_spacing is not None:
        ds.PixelSpacing = [_ds_number(v) for v in pixel_spacing]
        ds.ImagerPixelSpacing = [_ds_number(v) for v in pixel_spacing]

    data = stored.tobytes()
    if len(data) % 2:
        data += b"\x00"  # DICOM values have even length
    ds.PixelData = data
    ds["PixelData"].VR = "OB" if bits_allocated == 8 else "OW"

    for keyword, value in (extra or {}).items():
        if tag_for_keyword(keyword) is None:
            raise ValueError(f"extra: {keyword!r} is not a DICOM keyword")
        setattr(ds, keyword, value)
    return ds


def _ds_number(value: float) -> str | int:
    """A value suitable for a DS element (pydicom 2.4 and 3.x reject over-long float reprs in some cases)."""
    value = float(value)
    if value.is_integer():
        return int(value)
    return f"{value:.10g}"


def write_dataset(ds: Dataset, path: str | os.PathLike) -> None:
    """Write ``ds`` as a standard DICOM Part-10 file (preamble, ``DICM``, file meta group).

    The dataset is encoded with the transfer syntax in ``ds.file_meta.TransferSyntaxUID`` (explicit VR little endian
    when absent). Values of OW/OF... elements are written as they are: for a big-endian transfer syntax the caller must
    have byte-swapped them.

    Args:
        ds: the dataset (with or without ``file_meta``).
        path: destination file; parent folders are created.
    """
    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    if not hasattr(ds, "file_meta") or ds.file_meta is None:
        ds.file_meta = FileMetaDataset()
    meta = ds.file_meta
    if "TransferSyntaxUID" not in meta:
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if "MediaStorageSOPClassUID" not in meta and "SOPClassUID" in ds:
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
    if "MediaStorageSOPInstanceUID" not in meta and "SOPInstanceUID" in ds:
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    _write_part10(ds, path)


def _write_part10(ds: Dataset, path: str) -> None:
    """The version-specific part of :func:`write_dataset`."""
    if PYDICOM_3:
        # pydicom 3 derives the encoding from the transfer syntax in the file meta
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
    else:  # pragma: no cover - exercised in the pydicom 2.4 environment
        syntax = UID(ds.file_meta.TransferSyntaxUID)
        ds.is_little_endian = syntax.is_little_endian
        ds.is_implicit_VR = syntax.is_implicit_VR
        pydicom.dcmwrite(path, ds, write_like_original=False)


# ----------------------------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------------------------

#: VOI choices understood by :func:`read_dicom_pixels` (and ``LoadRadiograph(window=...)``).
WINDOW_MODES = ("auto", "percentile", "minmax")

_DICOM_ERRORS = (pydicom.errors.InvalidDicomError, EOFError, OSError, ValueError, TypeError, KeyError,
                 AttributeError, IndexError, OverflowError, struct.error)


def require_nonempty_file(path: str | os.PathLike) -> str:
    """Return ``path`` as a string after checking that it names a readable, non-empty file.

    Raises:
        RadiographReadError: if the file does not exist, is a folder or has 0 bytes.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise RadiographReadError(path, "file not found")
    if not os.path.isfile(path):
        raise RadiographReadError(path, "not a regular file")
    if os.path.getsize(path) == 0:
        raise RadiographReadError(path, "empty file (0 bytes)")
    return path


def is_dicom_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` starts like a DICOM Part-10 file (128-byte preamble then ``DICM``)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def read_dicom_pixels(
    path: str | os.PathLike,
    frame: int | None = None,
    *,
    window: str = "auto",
    percentiles: tuple[float, float] = (0.5, 99.5),
) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode a DICOM radiograph to a float32 (rows, cols) array in [0, 1], 0 black and 1 white.

    Args:
        path: a DICOM file (Part-10, or a bare dataset without preamble).
        frame: the frame to use for a multi-frame image (negative values count from the end); a multi-frame image
            without a frame raises :class:`MultiFrameError`. Ignored for single-frame images when 0 or -1.
        window: "auto" (VOI LUT Sequence, else the first Window Center/Width, else a percentile window), "percentile"
            (always the percentile window) or "minmax" (the full range of the image after the modality LUT).
        percentiles: (low, high) percentiles of the robust window.

    Returns:
        ``(image, meta)``: the display image and the metadata from :func:`dicom_metadata` plus ``"voi"`` (which
        VOI transform was used), ``"frame"`` and ``"number_of_frames"``.

    Raises:
        RadiographReadError: missing, empty, unreadable or truncated file, no pixel data, unusable pixel format.
        UnsupportedTransferSyntaxError: no installed decoder for the file's transfer syntax.
        MultiFrameError: more than one frame and ``frame`` is None (or out of range).
    """
    if window not in WINDOW_MODES:
        raise ValueError(f"window must be one of {WINDOW_MODES}, got {window!r}")
    path = require_nonempty_file(path)
    ds = _read_dataset(path)
    if "PixelData" not in ds:
        raise RadiographReadError(path, _no_pixel_data_reason(ds))
    meta = dicom_metadata(ds)
    n_frames = meta["number_of_frames"]
    index = select_frame(path, n_frames, frame)
    arr = _decode(path, ds)
    if n_frames > 1:
        if arr.shape[0] != n_frames:
            raise RadiographReadError(path, f"decoded {arr.shape[0]} frames, expected {n_frames}")
        arr = arr[index]
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = meta["photometric_interpretation"] or ("MONOCHROME2" if samples == 1 else "RGB")
    if samples == 1 and photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise RadiographReadError(path, f"unsupported photometric interpretation {photometric} for a radiograph")
    expected = (int(ds.Rows), int(ds.Columns)) + ((samples,) if samples > 1 else ())
    if tuple(arr.shape) != expected:
        raise RadiographReadError(path, f"decoded pixel array has shape {arr.shape}, expected {expected}")

    if samples > 1:
        values = _color_to_gray(arr, photometric)
        if window == "auto":
            values = values / float(2 ** int(ds.get("BitsStored", 8)) - 1)
            voi = "bits"
        else:
            voi = window
            values = percentile_window(values, percentiles) if window == "percentile" else minmax_window(values)
    else:
        values = _apply_modality_lut(arr, ds)
        values, voi = _apply_voi(values, ds, window, percentiles)
        if photometric == "MONOCHROME1":
            values = 1.0 - values
    meta.update({"voi": voi, "frame": index if n_frames > 1 else None})
    return np.clip(values, 0.0, 1.0).astype(np.float32), meta


def dicom_metadata(ds: Dataset) -> dict[str, Any]:
    """Non-identifying metadata of an image dataset (never the patient's name or ID).

    Returns:
        dict with "modality", "view_position", "body_part", "laterality", "pixel_spacing",
        "imager_pixel_spacing", "photometric_interpretation", "sop_instance_uid", "sop_class_uid",
        "series_instance_uid", "study_instance_uid", "transfer_syntax", "bits_stored", "number_of_frames" and
        "original_shape" ((rows, cols)); values missing from the dataset are None.
    """
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    rows, cols = ds.get("Rows"), ds.get("Columns")
    return {
        "modality": _text(ds.get("Modality")),
        "view_position": _text(ds.get("ViewPosition")),
        "body_part": _text(ds.get("BodyPartExamined")),
        "laterality": _text(ds.get("ImageLaterality")) or _text(ds.get("Laterality")),
        "pixel_spacing": _spacing(ds.get("PixelSpacing")),
        "imager_pixel_spacing": _spacing(ds.get("ImagerPixelSpacing")),
        "photometric_interpretation": _text(ds.get("PhotometricInterpretation")),
        "sop_instance_uid": _text(ds.get("SOPInstanceUID")),
        "sop_class_uid": _text(ds.get("SOPClassUID")),
        "series_instance_uid": _text(ds.get("SeriesInstanceUID")),
        "study_instance_uid": _text(ds.get("StudyInstanceUID")),
        "transfer_syntax": _text(syntax),
        "bits_stored": int(ds.BitsStored) if ds.get("BitsStored") not in (None, "") else None,
        "number_of_frames": _number_of_frames(ds),
        "original_shape": (int(rows), int(cols)) if rows and cols else None,
    }


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _spacing(value: Any) -> tuple[float, float] | None:
    try:
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    if len(numbers) != 2 or not all(np.isfinite(numbers)) or min(numbers) <= 0:
        return None  # absent, malformed or the placeholder 0\0 some modalities write
    return numbers


def _number_of_frames(ds: Dataset) -> int:
    try:
        return max(int(ds.get("NumberOfFrames", 1) or 1), 1)
    except (TypeError, ValueError):
        return 1


def _no_pixel_data_reason(ds: Dataset) -> str:
    if "Rows" in ds or "BitsAllocated" in ds:
        return "DICOM file has image attributes but no pixel data (truncated file?)"
    uid = ds.get("SOPClassUID")
    if uid is None:
        return "DICOM file has no SOP class and no pixel data (truncated file?)"
    name = getattr(UID(str(uid)), "name", "") or str(uid)
    return f"DICOM file has no pixel data (SOP class {name}); it is not an image"


def _read_dataset(path: str) -> Dataset:
    """Parse the whole dataset (pixel data included) or raise a RadiographReadError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns on odd but readable files; errors are handled below
            try:
                return pydicom.dcmread(path)
            except pydicom.errors.InvalidDicomError:
                ds = pydicom.dcmread(path, force=True)  # a bare dataset without the Part-10 header
    except _DICOM_ERRORS as exc:
        raise RadiographReadError(path, f"not a readable DICOM file ({_short(exc)})") from exc
    if "SOPClassUID" not in ds and "PixelData" not in ds:
        raise RadiographReadError(path, "not a DICOM file (no preamble and no DICOM image elements)")
    return ds


def select_frame(path: str, n_frames: int, frame: int | None) -> int:
    """The frame index to use (``frame`` may count from the end), or a MultiFrameError naming ``path``."""
    if frame is None:
        if n_frames > 1:
            raise MultiFrameError(path, f"multi-frame image with {n_frames} frames; select one with frame=<index>")
        return 0
    if not -n_frames <= int(frame) < n_frames:
        raise MultiFrameError(path, f"frame {frame} out of range for an image with {n_frames} frame(s)")
    return int(frame) % n_frames


def _syntax_of(ds: Dataset) -> UID | None:
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        return None
    return UID(str(meta.TransferSyntaxUID))


def _missing_decoder(syntax: UID) -> str | None:
    """Why no installed decoder can handle ``syntax`` (None when one can, or when it cannot be told up front)."""
    if PYDICOM_3:
        from pydicom.pixels.decoders.base import get_decoder

        try:
            decoder = get_decoder(syntax)
        except NotImplementedError:
            return "pydicom has no decoder for it"
        if not decoder.is_available:
            missing = "; ".join(decoder.missing_dependencies) or "no plugin available"
            return f"no decoder plugin installed ({missing})"
        return None
    handlers = [h for h in pydicom.config.pixel_data_handlers if h.supports_transfer_syntax(syntax)]
    if not handlers:
        return "pydicom has no decoder for it"
    if not any(h.is_available() for h in handlers):
        return "no decoder plugin installed (" + ", ".join(h.HANDLER_NAME for h in handlers) + " unavailable)"
    return None


def _decode(path: str, ds: Dataset) -> np.ndarray:
    """``ds.pixel_array`` with every decoder failure turned into a typed error naming the file."""
    syntax = _syntax_of(ds)
    label = f"{syntax.name or syntax}" if syntax is not None else "unknown transfer syntax"
    if syntax is not None and syntax.is_transfer_syntax:
        reason = _missing_decoder(syntax)
        if reason is not None:
            raise UnsupportedTransferSyntaxError(path, f"transfer syntax {label} ({syntax}) not supported: {reason}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.asarray(ds.pixel_array)
    except NotImplementedError as exc:
        raise UnsupportedTransferSyntaxError(path, f"transfer syntax {label} not supported: {_short(exc)}") from exc
    except RuntimeError as exc:  # pydicom 2.x: handlers exist but their plugins are missing
        if "missing required dependencies" in str(exc) or "plugin" in str(exc):
            raise UnsupportedTransferSyntaxError(path, f"transfer syntax {label}: {_short(exc)}") from exc
        raise RadiographReadError(path, f"could not decode pixel data ({label}): {_short(exc)}") from exc
    except Exception as exc:  # decoders raise anything from struct.error to plugin-specific errors
        raise RadiographReadError(path, f"could not decode pixel data ({label}): {_short(exc)}") from exc


def _short(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def rgb_to_gray(rgb: np.ndarray) -> np.ndarray:
    """Luminance (ITU-R BT.601 weights, the Y of YCbCr) of an (..., 3) RGB array, as float64."""
    return np.asarray(rgb, dtype=np.float64)[..., :3] @ np.array([0.299, 0.587, 0.114])


def _color_to_gray(arr: np.ndarray, photometric: str) -> np.ndarray:
    """Luminance of a 3-sample image (RGB, or YBR whose first channel already is the luminance)."""
    if photometric.startswith("YBR") and not PYDICOM_3:
        return arr[..., 0].astype(np.float64)  # pydicom 2.x returns YBR as stored; pydicom 3 converts to RGB
    return rgb_to_gray(arr)


def _lut(item: Dataset, little_endian: bool) -> tuple[np.ndarray, int, int]:
    """(table, first mapped value, bits per entry) of a Modality/VOI LUT Sequence item."""
    n_entries, first, bits = (int(v) for v in item.LUTDescriptor)
    n_entries = n_entries or 2**16
    data = item.LUTData
    if isinstance(data, (bytes, bytearray)):
        table = np.frombuffer(data, dtype="<u2" if little_endian else ">u2")[:n_entries]
    else:
        table = np.atleast_1d(np.asarray(list(data) if hasattr(data, "__iter__") else data))
    table = table.astype(np.float64)
    if table.size == 0:
        raise ValueError("empty LUT Data")
    return table, first, bits


def _apply_lut(values: np.ndarray, table: np.ndarray, first: int) -> np.ndarray:
    index = np.clip(np.rint(values) - first, 0, table.size - 1).astype(np.int64)
    return table[index]


def _little_endian(ds: Dataset) -> bool:
    syntax = _syntax_of(ds)
    if syntax is not None and syntax.is_transfer_syntax:
        return bool(syntax.is_little_endian)
    return True


def _apply_modality_lut(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """Stored values -> modality values (Modality LUT Sequence, else Rescale Slope/Intercept), float64."""
    if ds.get("ModalityLUTSequence"):
        table, first, _ = _lut(ds.ModalityLUTSequence[0], _little_endian(ds))
        return _apply_lut(arr, table, first)
    values = arr.astype(np.float64)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope not in (None, "") and intercept not in (None, ""):
        values = values * float(slope) + float(intercept)
    return values


def _first(value: Any) -> float:
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0]
    return float(value)


def _apply_voi(
    values: np.ndarray, ds: Dataset, window: str, percentiles: tuple[float, float]
) -> tuple[np.ndarray, str]:
    """Modality values -> [0, 1] following ``window``; returns the image and the name of the VOI used."""
    if window == "percentile":
        return percentile_window(values, percentiles), "percentile"
    if window == "minmax":
        return minmax_window(values), "minmax"
    if ds.get("VOILUTSequence"):
        table, first, bits = _lut(ds.VOILUTSequence[0], _little_endian(ds))
        return _apply_lut(values, table, first) / float(2**bits - 1), "voi_lut"
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center not in (None, "") and width not in (None, ""):
        try:
            center, width = _first(center), _first(width)
        except (TypeError, ValueError, IndexError):
            center = width = None
        if center is not None and width is not None and width > 0:
            function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
            return apply_window(values, center, width, function), "window"
        logger.debug("ignoring unusable window center/width %s/%s", center, width)
    return percentile_window(values, percentiles), "percentile"


def apply_window(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """The VOI window of DICOM PS3.3 C.11.2.1.2 with an output range of [0, 1].

    Args:
        values: modality values.
        center: Window Center.
        width: Window Width (> 0; >= 1 for LINEAR).
        function: VOI LUT Function: "LINEAR", "LINEAR_EXACT" or "SIGMOID".
    """
    x = np.asarray(values, dtype=np.float64)
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(np.clip(-4.0 * (x - center) / width, -700, 700)))
    if function == "LINEAR_EXACT":
        return np.clip((x - center) / width + 0.5, 0.0, 1.0)
    if function != "LINEAR":
        logger.warning("unknown VOI LUT Function %r, using LINEAR", function)
    if width <= 1:  # C.11.2.1.2.1: width >= 1; a width of 1 is a threshold at the center
        return (x > center - 0.5).astype(np.float64)
    return np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def percentile_window(values: np.ndarray, percentiles: tuple[float, float] = (0.5, 99.5)) -> np.ndarray:
    """Map the (low, high) percentiles of ``values`` to 0 and 1, clipping outside (a robust window).

    At most about a million evenly spaced samples are used for the percentiles. Falls back to the min-max range when
    the percentiles coincide; a constant image maps to 0.
    """
    low_p, high_p = (float(p) for p in percentiles)
    if not 0.0 <= low_p < high_p <= 100.0:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles}")
    x = np.asarray(values, dtype=np.float64)
    step = max(1, int(np.sqrt(x.size / 1_000_000))) if x.ndim == 2 else 1
    sample = x[::step, ::step] if x.ndim == 2 else x
    low, high = np.percentile(sample, [low_p, high_p])
    if high <= low:
        return minmax_window(x)
    return np.clip((x - low) / (high - low), 0.0, 1.0)


def minmax_window(values: np.ndarray) -> np.ndarray:
    """Map the minimum of ``values`` to 0 and the maximum to 1 (a constant image maps to 0)."""
    x = np.asarray(values, dtype=np.float64)
    low, high = float(x.min()), float(x.max())
    if high <= low:
        return np.zeros_like(x)
    return (x - low) / (high - low)
