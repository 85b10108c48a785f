"""DICOM radiographs: building and writing DX/CR datasets, decoding pixels to the display convention.

Reading goes straight through pydicom (not MONAI's ``PydicomReader``, which neither inverts MONOCHROME1 nor applies a
VOI window, and returns the image transposed). The decoded stored values are mapped, in this order, through

1. the modality LUT (Modality LUT Sequence, or Rescale Slope / Intercept),
2. the VOI transform: the first item of the VOI LUT Sequence, else the first window (Window Center / Width, honouring
   VOI LUT Function LINEAR, LINEAR_EXACT and SIGMOID, PS3.3 C.11.2.1.2), else a robust percentile window,
3. the inversion of MONOCHROME1 (so that 0 is always black and 1 white),

and returned as float32 in [0, 1] with shape (rows, cols).

Before any pixel is decoded, :func:`read_dicom_header` reads the header alone and refuses an empty, truncated or
non-image file and a declared size beyond :mod:`~monai_r2gen.data.radiograph_checks`' limits (a decompression bomb).
Study discovery uses the same function, so both say the same about a bad file. A Deflated Explicit VR Little Endian
file is inflated on demand, as far as its header first and then no further than its declared image (pydicom itself
inflates the whole data set before looking at it).

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
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid

from monai_r2gen.data import radiograph_checks
from monai_r2gen.data.radiograph_checks import (
    check_declared_size,
    require_regular_file,
    sniff_format,
)
from monai_r2gen.errors import MultiFrameError, RadiographReadError, UnsupportedTransferSyntaxError

__all__ = [
    "PYDICOM_3",
    "SOP_CLASS_UIDS",
    "WINDOW_MODES",
    "make_radiograph_dataset",
    "write_dataset",
    "read_dicom_pixels",
    "read_dicom_header",
    "read_instance_uids",
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
    study_datetime: datetime.datetime | None = None,
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
        study_datetime: the StudyDate / StudyTime (also written as the series and content date and time); the current
            time when None. Pass one value for every view of a study: views built a second apart would otherwise
            disagree on their study's time.
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
    now = study_datetime if study_datetime is not None else datetime.datetime.now()

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
                 AttributeError, IndexError, OverflowError, struct.error)  # fmt: skip


def require_nonempty_file(path: str | os.PathLike) -> str:
    """Return ``path`` as a string after checking, without opening it, that it names a non-empty regular file.

    Raises:
        RadiographReadError: "file not found", "not a regular file (...)" (a folder, a FIFO, a socket, a device) or
            "empty file (0 bytes)".
    """
    return require_regular_file(path)


def is_dicom_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a regular file that starts like a DICOM Part-10 file (128-byte preamble then ``DICM``)."""
    return sniff_format(path) == "dicom"


@dataclass(frozen=True)
class _Header:
    """What :func:`_scan_header` learned about a DICOM image file."""

    dataset: Dataset  # without pixel data
    deflated: bool
    data_offset: int  # where the data set starts (after the file meta; 0 for a bare data set)
    header_bytes: int  # bytes of the (inflated) data set before the pixel data element
    expected_bytes: int  # bytes of native pixel data the header declares


def read_dicom_header(path: str | os.PathLike, *, max_pixels: int | None = None) -> Dataset:
    """Read and check the header of a DICOM image (everything but the pixel data), without decoding or inflating it.

    The same checks, with the same messages, are made by :func:`read_dicom_pixels` and by study discovery
    (:func:`monai_r2gen.data.studies.read_view_info`):

    - a regular, non-empty file ("empty file (0 bytes)", "not a regular file (a FIFO (named pipe))");
    - readable DICOM ("not a DICOM file ...", "not a readable DICOM file (...)");
    - not truncated: the file meta, the header and (for uncompressed and encapsulated pixel data) the pixel data
      are complete ("truncated file (300 bytes): it ends inside the file meta information", "truncated file ...:
      pixel data has 312 of the 512 bytes its header declares", ...);
    - an image ("DICOM file has no pixel data (SOP class Basic Text SR Storage); it is not an image");
    - a declared size within :data:`~monai_r2gen.data.radiograph_checks.MAX_PIXELS` per frame and
      :data:`~monai_r2gen.data.radiograph_checks.MAX_DECODED_BYTES` in all (a decompression bomb is refused here).

    A Deflated Explicit VR Little Endian file is inflated only as far as its pixel data, and no further than
    :data:`~monai_r2gen.data.radiograph_checks.MAX_HEADER_BYTES`.

    Args:
        path: a DICOM file (Part-10, or a bare data set without the Part-10 header).
        max_pixels: most rows x columns of a frame (default ``MAX_PIXELS``).

    Returns:
        The data set without its pixel data (with ``file_meta`` for a Part-10 file).

    Raises:
        RadiographReadError: naming the file and the reason.
    """
    return _scan_header(require_nonempty_file(path), max_pixels).dataset


def read_instance_uids(path: str | os.PathLike) -> tuple[str | None, str | None]:
    """(Study Instance UID, SOP Instance UID) of a DICOM file, as far as they can be read; (None, None) when not.

    Never raises and never inflates or reads more than a header: a hint to place an unreadable file in its study.
    """
    try:
        path = require_nonempty_file(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if is_dicom_file(path):
                offset, syntax = _file_meta_extent(path)
                if syntax == DeflatedExplicitVRLittleEndian:
                    ds = _read_deflated(path, offset, radiograph_checks.MAX_HEADER_BYTES, stop_before_pixels=True)[0]
                    return _text(ds.get("StudyInstanceUID")), _text(ds.get("SOPInstanceUID"))
            tags = ["StudyInstanceUID", "SOPInstanceUID"]
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=tags, force=True)
        return _text(ds.get("StudyInstanceUID")), _text(ds.get("SOPInstanceUID"))
    except Exception:  # only a hint
        return None, None


_PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}  # Pixel Data, Float Pixel Data, Double Float Pixel Data
_PIXEL_TAG_BYTES = {b"\xe0\x7f\x10\x00", b"\xe0\x7f\x08\x00", b"\xe0\x7f\x09\x00",  # little endian
                    b"\x7f\xe0\x00\x10", b"\x7f\xe0\x00\x08", b"\x7f\xe0\x00\x09"}  # big endian  # fmt: skip
_LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_ITEM, _SEQUENCE_END = b"\xfe\xff\x00\xe0", b"\xfe\xff\xdd\xe0"
_SLACK_BYTES = 16 << 20  # data a deflated file may hold after its pixel data (padding, signatures)


def _at_pixel_data(tag: Any, vr: Any, length: int) -> bool:
    return int(tag) in _PIXEL_TAGS


def _truncated(path: str, size: int, where: str) -> RadiographReadError:
    return RadiographReadError(path, f"truncated file ({size:,} bytes): {where}")


def _file_meta_extent(path: str) -> tuple[int, UID | None]:
    """(offset of the data set, transfer syntax) of a Part-10 file, from its group 0002 elements (explicit VR little
    endian); raises a "truncated" RadiographReadError when the file ends inside them."""
    size = os.path.getsize(path)
    syntax = None
    pos = 132
    with open(path, "rb") as fh:
        fh.seek(pos)
        while True:
            head = fh.read(8)
            if len(head) < 8:
                if not head and syntax is not None:
                    return pos, syntax  # nothing after the file meta: reported by the caller
                raise _truncated(path, size, "it ends inside the file meta information")
            group, element = struct.unpack("<HH", head[:4])
            if group != 0x0002:
                return pos, syntax
            vr = head[4:6]
            if not vr.isalpha() or not vr.isupper():
                return pos, syntax  # not explicit VR: leave it to pydicom
            if vr in _LONG_VRS:
                extra = fh.read(4)
                if len(extra) < 4:
                    raise _truncated(path, size, "it ends inside the file meta information")
                length, header = struct.unpack("<I", extra)[0], 12
            else:
                length, header = struct.unpack("<H", head[6:8])[0], 8
            if pos + header + length > size:
                raise _truncated(path, size, "it ends inside the file meta information")
            value = fh.read(length)
            if element == 0x0010:  # Transfer Syntax UID
                syntax = UID(value.rstrip(b"\x00 ").decode("ascii", "replace"))
            pos += header + length


class _InflateLimitError(Exception):
    """A deflated data set inflates past its limit."""


class _InflatingReader:
    """A read-only, seekable view of a raw deflate stream, inflated on demand and never past ``limit`` bytes.

    pydicom inflates a whole deflated data set at once (``zlib.decompress`` of the rest of the file); reading through
    this lets a header be parsed, and its declared size checked, before the pixel data are inflated.
    """

    def __init__(self, raw: Any, limit: int, name: str) -> None:
        self._raw = raw
        self._z = zlib.decompressobj(-zlib.MAX_WBITS)
        self._buf = bytearray()
        self._pending = b""
        self._pos = 0
        self._done = False
        self.limit = int(limit)
        self.name = name

    @property
    def complete(self) -> bool:
        """Whether the end of the compressed stream was reached."""
        return bool(self._z.eof)

    def _fill(self, size: int) -> None:
        while len(self._buf) < size and not self._done:
            if not self._pending:
                self._pending = self._raw.read(1 << 16)
                if not self._pending:
                    self._buf += self._z.flush()
                    self._done = True
                    break
            self._buf += self._z.decompress(self._pending, 1 << 20)
            self._pending = self._z.unconsumed_tail
            self._done = self._z.eof
            if len(self._buf) > self.limit:
                raise _InflateLimitError(len(self._buf))

    def read(self, size: int | None = -1) -> bytes:
        end = self.limit + 1 if size is None or size < 0 else self._pos + int(size)
        self._fill(end)
        with memoryview(self._buf) as view:
            data = bytes(view[self._pos : end])
        self._pos += len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 2:
            self._fill(self.limit + 1)
            base = len(self._buf)
        else:
            base = self._pos if whence == 1 else 0
        self._pos = max(0, base + int(offset))
        return self._pos

    def tell(self) -> int:
        return self._pos


def _read_deflated(path: str, offset: int, limit: int, stop_before_pixels: bool) -> tuple[Dataset, _InflatingReader]:
    """Parse a Deflated Explicit VR Little Endian data set through an :class:`_InflatingReader` bounded by ``limit``;
    returns the data set (with ``file_meta``) and the reader, positioned where parsing stopped."""
    meta = pydicom.filereader.read_file_meta_info(path)
    with open(path, "rb") as raw:
        raw.seek(offset)
        stream = _InflatingReader(raw, limit, path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.filereader.read_dataset(
                stream, False, True, stop_when=_at_pixel_data if stop_before_pixels else None
            )
    ds.file_meta = meta
    if not PYDICOM_3:  # pragma: no cover - pydicom 2.4 reads the encoding from these attributes
        ds.is_little_endian, ds.is_implicit_VR = True, False
    return ds, stream


def _scan_header(path: str, max_pixels: int | None) -> _Header:
    """The checked header of a DICOM image (see :func:`read_dicom_header`)."""
    size = os.path.getsize(path)
    part10 = is_dicom_file(path)
    offset, syntax = _file_meta_extent(path) if part10 else (0, None)
    deflated = syntax == DeflatedExplicitVRLittleEndian
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns on odd but readable files; errors are handled below
            if deflated:
                ds, stream = _read_deflated(path, offset, radiograph_checks.MAX_HEADER_BYTES, stop_before_pixels=True)
                tag_at = stream.tell()
                element = stream.read(12)
                at_end = len(element) < 4
            else:
                with open(path, "rb") as fh:
                    ds = pydicom.dcmread(fh, stop_before_pixels=True, force=not part10)
                    tag_at = fh.tell()
                    element = fh.read(12)
                at_end = tag_at >= size
    except _InflateLimitError as exc:
        limit = radiograph_checks.MAX_HEADER_BYTES >> 20
        raise RadiographReadError(
            path, f"deflated DICOM header inflates past {limit} MiB before any pixel data (MAX_HEADER_BYTES); refused"
        ) from exc
    except (zlib.error, *_DICOM_ERRORS) as exc:
        raise RadiographReadError(path, f"not a readable DICOM file ({_short(exc)})") from exc
    found = element[:4] in _PIXEL_TAG_BYTES
    if not found:
        if not part10 and "SOPClassUID" not in ds and "Rows" not in ds:
            raise RadiographReadError(path, "not a DICOM file (no preamble and no DICOM image elements)")
        if not at_end:
            raise RadiographReadError(path, f"not a readable DICOM file (parsing stopped at byte {tag_at:,})")
        raise RadiographReadError(path, _no_pixel_data_reason(ds, size, part10))
    expected = _declared_size(path, ds, max_pixels)
    if not deflated:
        _check_pixel_extent(path, element, tag_at, size)
    return _Header(ds, deflated, offset, tag_at, expected)


def _declared_size(path: str, ds: Dataset, max_pixels: int | None) -> int:
    """Check the declared image size against the limits; returns the bytes of native pixel data it declares."""
    if "Rows" not in ds or "Columns" not in ds:
        raise RadiographReadError(path, "DICOM file has pixel data but no Rows / Columns")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        bits = int(ds.get("BitsAllocated", 16) or 16)
    except (TypeError, ValueError) as exc:
        raise RadiographReadError(path, f"unusable image attributes ({_short(exc)})") from exc
    frames = _number_of_frames(ds)
    check_declared_size(path, rows, cols, frames=frames, samples=samples, bits_allocated=bits, max_pixels=max_pixels)
    return (rows * cols * frames * samples * bits + 7) // 8


def _check_pixel_extent(path: str, element: bytes, tag_at: int, size: int) -> None:
    """Check that the pixel data element starting at ``tag_at`` (first bytes ``element``) ends inside the file."""
    if len(element) < 8:
        raise _truncated(path, size, "it ends inside the pixel data element header")
    endian = "<" if element[:2] == b"\xe0\x7f" else ">"
    if element[4:6] in _LONG_VRS:
        if len(element) < 12:
            raise _truncated(path, size, "it ends inside the pixel data element header")
        length, start = struct.unpack(endian + "I", element[8:12])[0], tag_at + 12
    else:
        length, start = struct.unpack(endian + "I", element[4:8])[0], tag_at + 8
    if length == 0xFFFFFFFF:
        _check_fragments(path, start, size)
        return
    if start + length > size:
        raise _truncated(path, size, f"pixel data has {size - start:,} of the {length:,} bytes its header declares")


def _check_fragments(path: str, start: int, size: int) -> None:
    """Walk the items of encapsulated pixel data (seeking, not reading them) up to the sequence delimiter."""
    pos, n = start, 0
    with open(path, "rb") as fh:
        while True:
            fh.seek(pos)
            item = fh.read(8)
            if not item and n >= 2:
                logger.debug("%s: encapsulated pixel data without a sequence delimiter", path)
                return
            if len(item) < 8:
                raise _truncated(path, size, f"encapsulated pixel data ends after {max(n - 1, 0)} fragment(s)")
            tag, length = item[:4], struct.unpack("<I", item[4:])[0]
            if tag == _SEQUENCE_END:
                return
            if tag != _ITEM:
                raise RadiographReadError(path, f"corrupt encapsulated pixel data (no item tag at byte {pos:,})")
            if pos + 8 + length > size:
                where = "basic offset table" if n == 0 else f"fragment {n}"
                raise _truncated(path, size, f"the pixel data's {where} has {size - pos - 8:,} of its {length:,} bytes")
            pos += 8 + length
            n += 1


def _read_full(path: str, header: _Header) -> Dataset:
    """The whole data set, pixel data included; a deflated one is inflated no further than its declared size."""
    if not header.deflated:
        return _read_dataset(path)
    limit = header.header_bytes + 12 + header.expected_bytes + _SLACK_BYTES
    try:
        ds, stream = _read_deflated(path, header.data_offset, limit, stop_before_pixels=False)
    except _InflateLimitError as exc:
        raise RadiographReadError(
            path, f"deflated data inflate past the declared image size ({limit:,} bytes); refused"
        ) from exc
    except (zlib.error, *_DICOM_ERRORS) as exc:
        raise RadiographReadError(path, f"not a readable DICOM file ({_short(exc)})") from exc
    if not stream.complete:
        raise RadiographReadError(path, "truncated file: its deflated data end before the end of the stream")
    return ds


def _check_native_length(path: str, ds: Dataset, expected: int) -> None:
    """Uncompressed pixel data shorter than the image its header declares (written truncated)."""
    syntax = _syntax_of(ds)
    if syntax is not None and syntax.is_transfer_syntax and syntax.is_compressed:
        return
    data = ds.get("PixelData")
    length = len(data) if isinstance(data, (bytes, bytearray)) else None
    if length is not None and length < expected:
        raise RadiographReadError(
            path,
            f"pixel data has {length:,} bytes but the image it declares ({int(ds.Rows)} x {int(ds.Columns)}, "
            f"{_number_of_frames(ds)} frame(s)) needs {expected:,} (truncated when written?)",
        )


def read_dicom_pixels(
    path: str | os.PathLike,
    frame: int | None = None,
    *,
    window: str = "auto",
    percentiles: tuple[float, float] = (0.5, 99.5),
    max_pixels: int | None = None,
    check: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode a DICOM radiograph to a float32 (rows, cols) array in [0, 1], 0 black and 1 white.

    The header is read and checked first (:func:`read_dicom_header`: a truncated file, a non-image or a declared size
    beyond ``max_pixels`` is refused before any pixel is inflated or decoded), then ``check`` is called with its
    metadata, then the pixel data are decoded.

    Args:
        path: a DICOM file (Part-10, or a bare dataset without preamble).
        frame: the frame to use for a multi-frame image (negative values count from the end); a multi-frame image
            without a frame raises :class:`MultiFrameError`. Ignored for single-frame images when 0 or -1.
        window: "auto" (VOI LUT Sequence, else the first Window Center/Width, else a percentile window), "percentile"
            (always the percentile window) or "minmax" (the full range of the image after the modality LUT).
        percentiles: (low, high) percentiles of the robust window.
        max_pixels: most rows x columns of a frame (default
            :data:`~monai_r2gen.data.radiograph_checks.MAX_PIXELS`).
        check: called with the header metadata (:func:`dicom_metadata`) before decoding; raise to refuse the file
            (``read_radiograph`` refuses non-chest images this way).

    Returns:
        ``(image, meta)``: the display image and the metadata from :func:`dicom_metadata` plus ``"voi"`` (which
        VOI transform was used), ``"frame"`` and ``"number_of_frames"``.

    Raises:
        RadiographReadError: missing, empty, unreadable or truncated file, no pixel data, unusable pixel format, a
            declared size beyond the limits.
        UnsupportedTransferSyntaxError: no installed decoder for the file's transfer syntax.
        MultiFrameError: more than one frame and ``frame`` is None (or out of range).
    """
    if window not in WINDOW_MODES:
        raise ValueError(f"window must be one of {WINDOW_MODES}, got {window!r}")
    path = require_nonempty_file(path)
    header = _scan_header(path, max_pixels)
    meta = dicom_metadata(header.dataset)
    if check is not None:
        check(dict(meta))
    n_frames = meta["number_of_frames"]
    index = select_frame(path, n_frames, frame)
    ds = _read_full(path, header)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise RadiographReadError(path, _no_pixel_data_reason(ds, os.path.getsize(path), is_dicom_file(path)))
    _check_native_length(path, ds, header.expected_bytes)
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
    values = np.array(values, dtype=np.float32)  # a copy: never a view of the decoded pixels
    return np.clip(values, 0.0, 1.0, out=values), meta


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


def _no_pixel_data_reason(ds: Dataset, size: int, part10: bool) -> str:
    """Why a DICOM file that was read to its end has no pixel data: truncated, or not an image."""
    uid = ds.get("SOPClassUID")
    name = (getattr(UID(str(uid)), "name", "") or str(uid)) if uid is not None else None
    known = name is not None and name != str(uid)
    if known and "Image Storage" not in name:
        return f"DICOM file has no pixel data (SOP class {name}); it is not an image"
    if known:
        return f"truncated file ({size:,} bytes): the {name} header ends before its pixel data"
    if "Rows" in ds or "BitsAllocated" in ds:
        return f"truncated file ({size:,} bytes): it ends before the pixel data"
    if name is None:
        if part10 and not len(ds):
            return f"truncated file ({size:,} bytes): nothing after the file meta information"
        return f"truncated file ({size:,} bytes)? it has no SOP class and no pixel data"
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
        text = str(exc)
        corrupt = "exceptions were raised by all available plugins" in text  # pydicom 3: the plugins ran and failed
        if not corrupt and ("missing required dependencies" in text or "plugin" in text):
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
    """Stored values -> modality values (Modality LUT Sequence, else Rescale Slope/Intercept), float32 (exact for
    stored values of up to 24 bits)."""
    if ds.get("ModalityLUTSequence"):
        table, first, _ = _lut(ds.ModalityLUTSequence[0], _little_endian(ds))
        return _apply_lut(arr, table, first)
    values = arr.astype(np.float32)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope not in (None, "") and intercept not in (None, ""):
        values *= np.float32(slope)
        values += np.float32(intercept)
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
    x = np.asarray(values)
    if function == "SIGMOID":
        x = x.astype(np.float64)
        return 1.0 / (1.0 + np.exp(np.clip(-4.0 * (x - center) / width, -700, 700)))
    if function == "LINEAR_EXACT":
        return np.clip((x.astype(np.float64) - center) / width + 0.5, 0.0, 1.0)
    if function != "LINEAR":
        logger.warning("unknown VOI LUT Function %r, using LINEAR", function)
    if width <= 1:  # C.11.2.1.2.1: width >= 1; a width of 1 is a threshold at the center
        return (x > center - 0.5).astype(np.float32)
    # float32 and in place: a 2k x 2k radiograph is windowed in a few ms (float64 with copies took ~30 ms)
    out = np.subtract(x, np.float32(center - 0.5), dtype=np.float32)
    out *= np.float32(1.0 / (width - 1))
    out += np.float32(0.5)
    return np.clip(out, 0.0, 1.0, out=out)


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
