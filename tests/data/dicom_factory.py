"""Test-only builders of small radiograph files (DICOM in every transfer syntax, PNG, JPEG, TIFF, bad files)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from monai_r2gen.data.dicom import PYDICOM_3, make_radiograph_dataset, write_dataset

try:  # pydicom >= 2.2 has encapsulate here in both major versions
    from pydicom.encaps import encapsulate
except ImportError:  # pragma: no cover
    encapsulate = None


def chest_like(rows: int = 48, cols: int = 40, bits: int = 12, seed: int = 0) -> np.ndarray:
    """A small (rows, cols) stored-value image with a dark 'lung' pair and a bright 'mediastinum' (MONOCHROME2)."""
    rng = np.random.default_rng(seed)
    full = 2**bits - 1
    img = np.full((rows, cols), 0.55 * full)
    img[:, : cols // 3] = 0.2 * full
    img[:, 2 * cols // 3 :] = 0.2 * full
    img += rng.normal(0, 0.02 * full, size=img.shape)
    return np.clip(np.rint(img), 0, full).astype(np.uint16 if bits > 8 else np.uint8)


def encode(ds: Dataset, syntax: str) -> Dataset:
    """Re-encode the (native, little endian) pixel data of ``ds`` in place with ``syntax``; returns ``ds``."""
    syntax = UID(syntax)
    if syntax == ImplicitVRLittleEndian:
        ds.file_meta.TransferSyntaxUID = syntax
    elif syntax == ExplicitVRBigEndian:
        if ds.BitsAllocated > 8:
            ds.PixelData = np.frombuffer(ds.PixelData, dtype="<u2").astype(">u2").tobytes()
        ds.file_meta.TransferSyntaxUID = syntax
    elif syntax in (JPEGBaseline8Bit, JPEGExtended12Bit):
        if ds.BitsAllocated != 8:
            raise ValueError("the Pillow-encoded JPEG test files are 8-bit")
        arr = np.frombuffer(ds.PixelData, dtype=np.uint8)[: ds.Rows * ds.Columns].reshape(ds.Rows, ds.Columns)
        buf = io.BytesIO()
        Image.fromarray(arr, mode="L").save(buf, format="JPEG", quality=95)
        ds.PixelData = encapsulate([buf.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = syntax
        ds.LossyImageCompression = "01"
    elif syntax in (RLELossless, JPEGLSLossless, JPEG2000Lossless):
        ds.compress(syntax, generate_instance_uid=False) if PYDICOM_3 else ds.compress(syntax)
    else:
        raise ValueError(f"no test encoder for {syntax}")
    return ds


def write_dicom(path: Path, pixels: np.ndarray, syntax: str | None = None, **kwargs) -> Path:
    """make_radiograph_dataset + optional re-encoding + write_dataset."""
    ds = make_radiograph_dataset(pixels, **kwargs)
    if syntax is not None:
        encode(ds, syntax)
    write_dataset(ds, path)
    return path


def multi_frame_dataset(frames: np.ndarray, bits_stored: int = 12) -> Dataset:
    """A native multi-frame dataset from (N, rows, cols) stored values."""
    ds = make_radiograph_dataset(frames[0], bits_stored=bits_stored)
    ds.NumberOfFrames = int(frames.shape[0])
    ds.PixelData = np.ascontiguousarray(frames.astype("<u2")).tobytes()
    return ds


def voi_lut_dataset(pixels: np.ndarray, table: np.ndarray, first_mapped: int, lut_bits: int) -> Dataset:
    """A dataset whose VOI transform is a VOI LUT Sequence item (US LUT Data)."""
    ds = make_radiograph_dataset(pixels, window=(100, 10))  # the LUT must win over the window
    item = Dataset()
    item.LUTDescriptor = [int(table.size), int(first_mapped), int(lut_bits)]
    item.LUTData = [int(v) for v in table]
    item["LUTData"].VR = "US"
    item.LUTExplanation = "test LUT"
    ds.VOILUTSequence = [item]
    return ds


def text_sr_dataset() -> Dataset:
    """A Basic Text SR document (no pixel data)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.88.11")
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "SR"
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    return ds


def save_pil(path: Path, arr: np.ndarray, fmt: str) -> Path:
    """Save ``arr`` with Pillow (uint16 arrays become mode I;16, uint8 L or RGB)."""
    Image.fromarray(arr).save(path, format=fmt)
    return path


def deflated_dicom(path: Path, rows: int, cols: int, pixel_length: int, zero_bytes: int, **kwargs) -> Path:
    """A Deflated Explicit VR Little Endian file declaring ``rows`` x ``cols`` 16-bit pixels whose Pixel Data element
    declares ``pixel_length`` bytes and holds ``zero_bytes`` zeros (deflated in 1 MiB chunks: nothing large is ever
    allocated, and the file stays small). With ``zero_bytes < pixel_length`` the data end early, as a bomb's may."""
    import zlib

    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = make_radiograph_dataset(chest_like(64, 64), **kwargs)
    ds.Rows, ds.Columns = int(rows), int(cols)
    del ds.PixelData
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    write_dataset(ds, path)
    raw = path.read_bytes()
    meta_end = 132 + 12 + int.from_bytes(raw[140:144], "little")  # (0002,0000) group length, explicit VR
    body = zlib.decompress(raw[meta_end:], -zlib.MAX_WBITS)
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [packer.compress(body + b"\xe0\x7f\x10\x00OW\x00\x00" + int(pixel_length).to_bytes(4, "little"))]
    chunk = bytes(1 << 20)
    left = int(zero_bytes)
    while left > 0:
        parts.append(packer.compress(chunk[: min(left, len(chunk))]))
        left -= len(chunk)
    parts.append(packer.flush())
    path.write_bytes(raw[:meta_end] + b"".join(parts))
    return path


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header declares ``width`` x ``height`` 8-bit gray pixels, with a token IDAT (never decodable)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", int(width), int(height), 8, 0, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(4096)))
    path.write_bytes(data + chunk(b"IEND", b""))
    return path
