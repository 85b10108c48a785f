"""DICOM building, writing and decoding to the display convention."""

from __future__ import annotations

import datetime
import logging

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSLossless,
    RLELossless,
)

from monai_r2gen.data.dicom import (
    PYDICOM_3,
    SOP_CLASS_UIDS,
    apply_window,
    make_radiograph_dataset,
    minmax_window,
    percentile_window,
    read_dicom_pixels,
    write_dataset,
)
from monai_r2gen.errors import MultiFrameError, RadiographReadError, UnsupportedTransferSyntaxError
from tests.data.dicom_factory import (
    chest_like,
    encapsulate,
    multi_frame_dataset,
    text_sr_dataset,
    voi_lut_dataset,
    write_dicom,
)

# ----------------------------------------------------------------------------------------------------------------------
# make_radiograph_dataset / write_dataset
# ----------------------------------------------------------------------------------------------------------------------


def test_make_and_write_round_trip(tmp_path):
    pixels = chest_like(20, 30, bits=12)
    ds = make_radiograph_dataset(
        pixels,
        window=(2048, 4000),
        rescale=(0.5, -10),
        pixel_spacing=(0.143, 0.15),
        laterality="L",
        view_position="AP",
        study_uid="1.2.3.4",
        instance_number=3,
        extra={"StudyDescription": "CHEST AP"},
    )
    path = tmp_path / "sub" / "img.dcm"
    write_dataset(ds, path)
    raw = path.read_bytes()
    assert raw[128:132] == b"DICM"  # Part-10 preamble + prefix
    back = pydicom.dcmread(path)
    assert back.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert back.SOPClassUID == SOP_CLASS_UIDS["DX"] == back.file_meta.MediaStorageSOPClassUID
    assert back.SOPInstanceUID == back.file_meta.MediaStorageSOPInstanceUID
    assert back.StudyInstanceUID == "1.2.3.4"
    assert (back.Rows, back.Columns, back.BitsStored, back.BitsAllocated, back.HighBit) == (20, 30, 12, 16, 11)
    assert (float(back.WindowCenter), float(back.WindowWidth)) == (2048.0, 4000.0)
    assert (float(back.RescaleSlope), float(back.RescaleIntercept)) == (0.5, -10.0)
    assert [float(v) for v in back.PixelSpacing] == [0.143, 0.15]
    assert (back.ViewPosition, back.ImageLaterality, back.InstanceNumber) == ("AP", "L", 3)
    assert back.StudyDescription == "CHEST AP"
    np.testing.assert_array_equal(back.pixel_array, pixels)


def test_make_dataset_defaults_and_cr_8bit():
    a = make_radiograph_dataset(np.zeros((4, 5), np.uint8), bits_stored=8, modality="CR", photometric="MONOCHROME1")
    b = make_radiograph_dataset(np.zeros((4, 5), np.uint8), bits_stored=8)
    assert a.SOPClassUID == SOP_CLASS_UIDS["CR"] and a.BitsAllocated == 8
    assert a.PhotometricInterpretation == "MONOCHROME1"
    assert len({a.SOPInstanceUID, b.SOPInstanceUID, a.StudyInstanceUID, b.StudyInstanceUID}) == 4  # generated UIDs
    assert "WindowCenter" not in a and "PixelSpacing" not in a


def test_study_datetime_is_shared_by_the_views_of_a_study():
    when = datetime.datetime(2025, 3, 4, 23, 59, 59)
    pixels = np.zeros((4, 5), np.uint16)
    views = [make_radiograph_dataset(pixels, study_datetime=when, view_position=v) for v in ("PA", "LL")]
    for ds in views:
        assert (ds.StudyDate, ds.SeriesDate, ds.ContentDate) == ("20250304",) * 3
        assert (ds.StudyTime, ds.SeriesTime, ds.ContentTime) == ("235959",) * 3
    assert make_radiograph_dataset(np.zeros((4, 5), np.uint16)).StudyDate != "20250304"  # now, when not given


@pytest.mark.parametrize(
    ("pixels", "kwargs"),
    [
        (np.zeros((2, 3, 4), np.uint16), {}),  # not 2-D
        (np.zeros((3, 4), np.float32), {}),  # not integer
        (np.full((3, 4), 4096, np.uint16), {"bits_stored": 12}),  # too large for the bit depth
        (np.full((3, 4), -1, np.int16), {}),  # negative
        (np.zeros((3, 4), np.uint16), {"photometric": "RGB"}),
        (np.zeros((3, 4), np.uint16), {"extra": {"NotADicomKeyword": 1}}),
    ],
)
def test_make_dataset_rejects_bad_pixels(pixels, kwargs):
    with pytest.raises(ValueError):
        make_radiograph_dataset(pixels, **kwargs)


# ----------------------------------------------------------------------------------------------------------------------
# The real radiograph RG1 (pydicom-data)
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rg1(rg1_uncompressed):
    return read_dicom_pixels(rg1_uncompressed)


def test_rg1_lossless_variants_identical(rg1, rg1_j2k_lossless):
    image, meta = rg1
    j2k, j2k_meta = read_dicom_pixels(rg1_j2k_lossless)
    assert j2k_meta["transfer_syntax"] == JPEG2000Lossless
    np.testing.assert_array_equal(image, j2k)


def test_rg1_display_convention_and_meta(rg1):
    image, meta = rg1
    assert image.dtype == np.float32 and image.shape == (1955, 1841)  # rows = height
    assert image.min() >= 0.0 and image.max() <= 1.0
    assert meta["photometric_interpretation"] == "MONOCHROME1" and meta["voi"] == "window"
    assert (meta["modality"], meta["view_position"], meta["body_part"]) == ("CR", "PA", "CHEST")
    assert meta["pixel_spacing"] is None  # the file's 0\0 placeholder is not a spacing
    # a PA chest at mid-height: mediastinum (centre strip) brighter than both lung fields (outer thirds)
    h, w = image.shape
    rows = slice(int(0.35 * h), int(0.55 * h))
    centre = image[rows, int(0.45 * w) : int(0.55 * w)].mean()
    left = image[rows, int(0.10 * w) : w // 3].mean()
    right = image[rows, 2 * w // 3 : int(0.90 * w)].mean()
    assert centre > left + 0.1 and centre > right + 0.1


# ----------------------------------------------------------------------------------------------------------------------
# Intensity pipeline
# ----------------------------------------------------------------------------------------------------------------------


def test_rescale_then_window(tmp_path):
    stored = np.array([[0, 50], [100, 150]], np.uint8)  # modality values -100, 0, 100, 200
    path = write_dicom(tmp_path / "r.dcm", stored, bits_stored=8, rescale=(2, -100), window=(50.5, 201))
    image, meta = read_dicom_pixels(path)
    # LINEAR window: (x - (c - 0.5)) / (w - 1) + 0.5 = (x - 50) / 200 + 0.5, clipped
    np.testing.assert_allclose(image, [[0.0, 0.25], [0.75, 1.0]], atol=1e-6)
    assert meta["voi"] == "window"


def test_voi_lut_sequence_wins_over_window(tmp_path):
    stored = np.arange(16, dtype=np.uint8).reshape(4, 4)
    table = np.array([0, 85, 170, 255])
    ds = voi_lut_dataset(stored, table, first_mapped=10, lut_bits=8)
    write_dataset(ds, tmp_path / "lut.dcm")
    image, meta = read_dicom_pixels(tmp_path / "lut.dcm")
    # below the first mapped value -> first entry, beyond the table -> last entry
    expected = table[np.clip(stored.astype(int) - 10, 0, 3)] / 255.0
    np.testing.assert_allclose(image, expected, atol=1e-6)
    assert meta["voi"] == "voi_lut"


@pytest.mark.parametrize("voi_function", ["LINEAR_EXACT", "SIGMOID"])
def test_voi_lut_function(tmp_path, voi_function):
    stored = np.array([[100, 200, 300]], np.uint16)
    path = write_dicom(tmp_path / "f.dcm", stored, window=(200, 100), extra={"VOILUTFunction": voi_function})
    image, _ = read_dicom_pixels(path)
    if voi_function == "LINEAR_EXACT":
        np.testing.assert_allclose(image, [[0.0, 0.5, 1.0]], atol=1e-6)
    else:  # 1 / (1 + exp(-4 (x - c) / w))
        np.testing.assert_allclose(image, [[1 / (1 + np.exp(4)), 0.5, 1 / (1 + np.exp(-4))]], atol=1e-6)


def test_monochrome1_twin_loads_to_same_image(tmp_path):
    m2 = chest_like(24, 18, bits=12, seed=3)
    m1 = (4095 - m2).astype(np.uint16)
    # no window: percentile window (symmetric percentiles are mirror images)
    a, _ = read_dicom_pixels(write_dicom(tmp_path / "m2.dcm", m2))
    b, meta = read_dicom_pixels(write_dicom(tmp_path / "m1.dcm", m1, photometric="MONOCHROME1"))
    assert meta["photometric_interpretation"] == "MONOCHROME1"
    np.testing.assert_allclose(a, b, atol=1e-5)
    # with a window mirrored about the bit range (LINEAR_EXACT is symmetric: c' = full - c)
    exact = {"VOILUTFunction": "LINEAR_EXACT"}
    a, _ = read_dicom_pixels(write_dicom(tmp_path / "w2.dcm", m2, window=(1500, 2000), extra=exact))
    b, _ = read_dicom_pixels(
        write_dicom(tmp_path / "w1.dcm", m1, window=(4095 - 1500, 2000), photometric="MONOCHROME1", extra=exact)
    )
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert a[:, 9].mean() > a[:, 0].mean()  # bright centre stays bright


def test_window_options(tmp_path):
    stored = np.arange(1000, dtype=np.uint16).reshape(40, 25)
    path = write_dicom(tmp_path / "o.dcm", stored, window=(10, 10))
    narrow, meta = read_dicom_pixels(path)
    assert meta["voi"] == "window" and (narrow > 0.999).mean() > 0.95
    pct, meta = read_dicom_pixels(path, window="percentile", percentiles=(10, 90))
    assert meta["voi"] == "percentile"
    assert 0.09 < (pct == 0).mean() < 0.12 and 0.09 < (pct == 1).mean() < 0.12
    mm, meta = read_dicom_pixels(path, window="minmax")
    np.testing.assert_allclose(mm, stored / 999.0, atol=1e-6)
    with pytest.raises(ValueError):
        read_dicom_pixels(path, window="bogus")


def test_window_helpers():
    x = np.array([0.0, 1.0, 2.0, 3.0])
    np.testing.assert_allclose(apply_window(x, 1.5, 2, "LINEAR_EXACT"), [0, 0.25, 0.75, 1])
    np.testing.assert_allclose(apply_window(x, 1.5, 1), [0, 0, 1, 1])  # width 1: a threshold
    np.testing.assert_array_equal(minmax_window(np.full((3, 3), 7.0)), np.zeros((3, 3)))
    np.testing.assert_array_equal(percentile_window(np.full((3, 3), 7.0)), np.zeros((3, 3)))
    with pytest.raises(ValueError):
        percentile_window(x, (90, 10))


def test_rgb_dicom_to_luminance(tmp_path):
    ds = make_radiograph_dataset(np.zeros((2, 2), np.uint8), bits_stored=8, modality="OT")
    rgb = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [255, 255, 255]]], np.uint8)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.PixelData = rgb.tobytes()
    write_dataset(ds, tmp_path / "rgb.dcm")
    image, _ = read_dicom_pixels(tmp_path / "rgb.dcm")
    np.testing.assert_allclose(image, [[0.299, 0.587], [0.114, 1.0]], atol=1e-3)


# ----------------------------------------------------------------------------------------------------------------------
# Transfer syntaxes
# ----------------------------------------------------------------------------------------------------------------------

_LOSSLESS = [
    (ImplicitVRLittleEndian, False),
    (ExplicitVRBigEndian, False),
    (RLELossless, False),
    (JPEGLSLossless, True),  # encoding needs pydicom 3 (pyjpegls); decoding works with 2.4 as well
    (JPEG2000Lossless, True),
]


@pytest.mark.parametrize("bits", [8, 12])
@pytest.mark.parametrize(("syntax", "needs_pydicom3_encoder"), _LOSSLESS, ids=[s.name for s, _ in _LOSSLESS])
def test_lossless_transfer_syntaxes_round_trip(tmp_path, syntax, needs_pydicom3_encoder, bits):
    if needs_pydicom3_encoder and not PYDICOM_3:
        pytest.skip("test file encoder needs pydicom 3")
    pixels = chest_like(36, 40, bits=bits, seed=bits)  # OpenJPEG needs >= 32 px
    reference, _ = read_dicom_pixels(write_dicom(tmp_path / "ref.dcm", pixels, bits_stored=bits, window=(100, 200)))
    path = write_dicom(tmp_path / "enc.dcm", pixels, syntax, bits_stored=bits, window=(100, 200))
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == syntax
    image, meta = read_dicom_pixels(path)
    assert meta["transfer_syntax"] == syntax
    np.testing.assert_array_equal(image, reference)
    np.testing.assert_allclose(image, np.clip((pixels - 99.5) / 199 + 0.5, 0, 1), atol=1e-6)


@pytest.mark.parametrize("syntax", [JPEGBaseline8Bit, JPEGExtended12Bit], ids=["baseline", "extended"])
def test_lossy_jpeg_transfer_syntaxes(tmp_path, syntax):
    pixels = chest_like(32, 24, bits=8, seed=1)
    path = write_dicom(tmp_path / "jpg.dcm", pixels, syntax, bits_stored=8)
    image, meta = read_dicom_pixels(path, window="minmax")
    assert meta["transfer_syntax"] == syntax and image.shape == (32, 24)
    expected = minmax_window(pixels.astype(float))
    assert np.abs(image - expected).mean() < 0.03


def test_real_12bit_jpeg_extended():
    path = pydicom.data.get_testdata_file("JPGExtended.dcm")
    if path is None:
        pytest.skip("pydicom test file JPGExtended.dcm not available")
    ds = pydicom.dcmread(path)
    image, meta = read_dicom_pixels(path)
    assert meta["transfer_syntax"] == JPEGExtended12Bit and meta["bits_stored"] == 12
    assert image.shape == (ds.Rows, ds.Columns) and 0 <= image.min() < image.max() <= 1


# ----------------------------------------------------------------------------------------------------------------------
# Multi-frame
# ----------------------------------------------------------------------------------------------------------------------


def test_multi_frame_rejected_or_selected(tmp_path):
    frames = np.stack([chest_like(10, 12, seed=s) for s in range(3)])
    write_dataset(multi_frame_dataset(frames), tmp_path / "mf.dcm")
    with pytest.raises(MultiFrameError, match=r"mf\.dcm.*3 frames"):
        read_dicom_pixels(tmp_path / "mf.dcm")
    single, _ = read_dicom_pixels(write_dicom(tmp_path / "f1.dcm", frames[1]))
    image, meta = read_dicom_pixels(tmp_path / "mf.dcm", frame=1)
    np.testing.assert_array_equal(image, single)
    assert (meta["frame"], meta["number_of_frames"]) == (1, 3)
    last, meta = read_dicom_pixels(tmp_path / "mf.dcm", frame=-1)
    assert meta["frame"] == 2
    with pytest.raises(MultiFrameError, match="out of range"):
        read_dicom_pixels(tmp_path / "mf.dcm", frame=3)


# ----------------------------------------------------------------------------------------------------------------------
# Bad input: typed errors naming the file and the reason
# ----------------------------------------------------------------------------------------------------------------------


# the size of a cut file is filled in from the file (generated UIDs vary in length)
_CUT = "truncated file ({size:,} bytes)"


def _good_bytes(tmp_path) -> bytes:
    return write_dicom(tmp_path / "good.dcm", chest_like(16, 16)).read_bytes()


@pytest.mark.parametrize(
    ("name", "make", "reason"),
    [
        ("missing.dcm", None, "not found"),
        ("empty.dcm", lambda p, tmp: p.write_bytes(b""), "empty file"),
        ("cut_pixels.dcm", lambda p, tmp: p.write_bytes(_good_bytes(tmp)[:-200]), _CUT + ": pixel data"),
        ("cut_header.dcm", lambda p, tmp: p.write_bytes(_good_bytes(tmp)[:300]), _CUT),
        ("report.dcm", lambda p, tmp: write_dataset(text_sr_dataset(), p), "Basic Text SR"),
        ("notes.dcm", lambda p, tmp: p.write_text("not a DICOM file\n" * 20), "not a DICOM file"),
    ],
)
def test_bad_dicom_files(tmp_path, name, make, reason):
    path = tmp_path / name
    if make is not None:
        make(path, tmp_path)
    with pytest.raises(RadiographReadError) as info:
        read_dicom_pixels(path)
    reason = reason.format(size=path.stat().st_size) if path.exists() else reason
    assert str(path) in str(info.value) and reason in str(info.value)
    assert info.value.path == str(path)


def test_decoder_error_is_chained(tmp_path):
    ds = make_radiograph_dataset(chest_like(16, 16, bits=8), bits_stored=8)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xe0 not a JPEG stream \xff\xd9"])  # complete file, corrupt JPEG
    ds["PixelData"].VR = "OB"
    write_dataset(ds, tmp_path / "corrupt_jpeg.dcm")
    with pytest.raises(RadiographReadError, match="could not decode pixel data") as info:
        read_dicom_pixels(tmp_path / "corrupt_jpeg.dcm")
    assert info.value.__cause__ is not None  # raise ... from the decoder's exception


def test_transfer_syntax_without_decoder(tmp_path):
    ds = make_radiograph_dataset(chest_like(8, 8))
    ds.file_meta.TransferSyntaxUID = pydicom.uid.UID("1.2.840.10008.1.2.4.100")  # MPEG2: pydicom decodes no video
    ds.PixelData = encapsulate([b"\x00\x01" * 16])
    ds["PixelData"].VR = "OB"
    write_dataset(ds, tmp_path / "mpeg2.dcm")
    with pytest.raises(UnsupportedTransferSyntaxError, match=r"mpeg2\.dcm.*MPEG2.*not supported"):
        read_dicom_pixels(tmp_path / "mpeg2.dcm")


def test_missing_decoder_plugin(tmp_path, monkeypatch):
    if not PYDICOM_3:
        pytest.skip("the test file encoder needs pydicom 3")
    path = write_dicom(tmp_path / "j2k.dcm", chest_like(32, 32), JPEG2000Lossless)
    from pydicom.pixels.decoders import JPEG2000LosslessDecoder

    # pretend pylibjpeg-openjpeg (and Pillow's openjpeg) are not installed
    monkeypatch.setattr(JPEG2000LosslessDecoder, "_available", {})
    monkeypatch.setattr(JPEG2000LosslessDecoder, "_unavailable", {"pylibjpeg": ("pylibjpeg-openjpeg>=2.0",)})
    with pytest.raises(UnsupportedTransferSyntaxError, match=r"j2k\.dcm.*JPEG 2000.*pylibjpeg-openjpeg"):
        read_dicom_pixels(path)


def test_patient_identifiers_never_in_meta_or_logs(tmp_path, caplog):
    path = write_dicom(tmp_path / "p.dcm", chest_like(8, 8), patient_name="Doe^Jane", patient_id="PID-98765")
    with caplog.at_level(logging.DEBUG):
        _, meta = read_dicom_pixels(path)
    text = repr(meta) + caplog.text
    assert "Doe" not in text and "PID-98765" not in text
    assert meta["sop_instance_uid"] and meta["study_instance_uid"] and meta["original_shape"] == (8, 8)


def test_non_image_sop_class_is_named(tmp_path):
    ds = text_sr_dataset()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CTImageStorage  # claims an image class, has no pixels
    write_dataset(ds, tmp_path / "ct.dcm")
    with pytest.raises(RadiographReadError, match="CT Image Storage"):
        read_dicom_pixels(tmp_path / "ct.dcm")
