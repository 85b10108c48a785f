"""What image inputs are accepted: decompression bombs, non-chest images, and files that are empty, truncated,
misnamed, not regular or duplicated (issue 14, items 2, 3 and the image parts of 6)."""

from __future__ import annotations

import logging
import os
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.uid import CTImageStorage, JPEG2000Lossless, generate_uid

from monai_r2gen.data import radiograph_checks
from monai_r2gen.data.dicom import (
    PYDICOM_3,
    make_radiograph_dataset,
    read_dicom_header,
    read_dicom_pixels,
    write_dataset,
)
from monai_r2gen.data.studies import collect_studies, read_view_info
from monai_r2gen.data.transforms import LoadRadiograph, LoadRadiographd, LoadStudyViewsd, read_radiograph
from monai_r2gen.errors import NotAChestRadiographError, RadiographReadError
from tests.data.dicom_factory import chest_like, deflated_dicom, png_header_only, save_pil, write_dicom

BOMB_SIDE = 20000


def _testdata(name: str) -> str:
    try:
        path = get_testdata_file(name)
    except Exception:  # pydicom 2.4 looks the external data up with pkg_resources, absent from some environments
        path = None
    if path is None:
        pytest.skip(f"pydicom test file {name} not available")
    return path


def _reason(exc_info: pytest.ExceptionInfo, path: str | os.PathLike) -> str:
    """The reason of a typed error after checking that it names ``path``."""
    assert exc_info.value.path == str(path) and str(exc_info.value).startswith(f"{path}: ")
    return exc_info.value.reason


def _no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any pixel decoding or full DICOM read fail the test."""
    import monai_r2gen.data.dicom as dicom

    def forbidden(*args, **kwargs):
        raise AssertionError("pixel data were read or decoded")

    monkeypatch.setattr(dicom, "_decode", forbidden)
    monkeypatch.setattr(dicom, "_read_full", forbidden)


# ----------------------------------------------------------------------------------------------------------------------
# 1. Decompression bombs: refused from the header, before anything is inflated or decoded
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def deflated_bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~66 KB of deflated DICOM declaring 20000 x 20000 16-bit pixels (800 MB), 64 MiB of them present."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.dcm"
    return deflated_dicom(path, BOMB_SIDE, BOMB_SIDE, BOMB_SIDE * BOMB_SIDE * 2, 64 << 20)


def test_deflated_bomb_is_refused_before_inflating(deflated_bomb: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert deflated_bomb.stat().st_size < 200_000
    assert pydicom.dcmread(deflated_bomb, stop_before_pixels=True).Rows == BOMB_SIDE  # a valid file: a real bomb
    _no_decoding(monkeypatch)
    for read in (read_dicom_pixels, read_radiograph, LoadRadiograph(accept_nonstandard=True), read_view_info):
        tracemalloc.start()
        try:
            with pytest.raises(RadiographReadError) as info:
                read(deflated_bomb)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        reason = _reason(info, deflated_bomb)
        assert "20000 x 20000" in reason and "exceeds the limit" in reason and "before decoding" in reason
        assert peak < 16 << 20, f"{read}: {peak / 2**20:.0f} MiB allocated"  # pydicom alone inflates the 64 MiB


def test_deflated_bomb_in_study_discovery_is_reported_not_inflated(deflated_bomb: Path) -> None:
    tracemalloc.start()
    try:
        (study,) = collect_studies([deflated_bomb.parent])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert not study.ok and "exceeds the limit" in study.errors[0][1]
    assert peak < 16 << 20


def test_deflated_pixel_data_longer_than_declared_are_not_inflated(tmp_path: Path) -> None:
    path = deflated_dicom(tmp_path / "long.dcm", 64, 64, 64 << 20, 64 << 20)  # 64 x 64 declared, 64 MiB present
    tracemalloc.start()
    try:
        with pytest.raises(RadiographReadError) as info:
            read_dicom_pixels(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "inflate past the declared image size" in _reason(info, path)
    assert peak < 48 << 20


def test_deflated_files_still_read(tmp_path: Path) -> None:
    real = _testdata("image_dfl.dcm")  # pydicom's deflated Secondary Capture
    image, meta = read_dicom_pixels(real)
    assert image.shape == (512, 512) and meta["transfer_syntax"] == pydicom.uid.DeflatedExplicitVRLittleEndian
    pixels = pydicom.dcmread(real).pixel_array
    np.testing.assert_allclose(read_dicom_pixels(real, window="minmax")[0], (pixels - pixels.min()) / np.ptp(pixels),
                               atol=1e-6)  # fmt: skip
    small = chest_like(48, 40)
    ds = make_radiograph_dataset(small)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    write_dataset(ds, tmp_path / "small_dfl.dcm")
    reference = read_dicom_pixels(write_dicom(tmp_path / "small.dcm", small))[0]
    np.testing.assert_array_equal(LoadRadiograph()(tmp_path / "small_dfl.dcm")[0].numpy(), reference)


def test_uncompressed_declared_size_is_checked_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = make_radiograph_dataset(chest_like(64, 64))
    ds.Rows = ds.Columns = BOMB_SIDE  # 8 KB of pixel data declared as 800 MB
    write_dataset(ds, tmp_path / "huge.dcm")
    _no_decoding(monkeypatch)
    with pytest.raises(RadiographReadError) as info:
        read_radiograph(tmp_path / "huge.dcm")
    assert "exceeds the limit" in _reason(info, tmp_path / "huge.dcm")


def test_size_limits_are_documented_and_overridable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert radiograph_checks.MAX_PIXELS >= 8000 * 8000  # far beyond a radiograph (about 4300 x 4300)
    path = write_dicom(tmp_path / "cxr.dcm", chest_like(64, 64))
    with pytest.raises(RadiographReadError, match="max_pixels"):
        LoadRadiograph(max_pixels=1000)(path)
    png = save_pil(tmp_path / "cxr.png", chest_like(64, 64, bits=8), "PNG")
    with pytest.raises(RadiographReadError, match="exceeds the limit of 1,000 pixels"):
        LoadStudyViewsd(spatial_size=32, max_pixels=1000)({"image": [png]})
    monkeypatch.setattr(radiograph_checks, "MAX_PIXELS", 64 * 63)
    with pytest.raises(RadiographReadError, match="exceeds the limit"):
        read_radiograph(path)
    assert LoadRadiograph(max_pixels=64 * 64)(path).shape == (1, 64, 64)  # a call's limit wins
    monkeypatch.setattr(radiograph_checks, "MAX_DECODED_BYTES", 1000)
    with pytest.raises(RadiographReadError, match="MAX_DECODED_BYTES"):
        read_dicom_pixels(path, max_pixels=10**6)
    with pytest.raises(ValueError):
        LoadRadiograph(max_pixels=0)


@pytest.mark.parametrize("side", [10000, BOMB_SIDE])  # below and above Pillow's own error threshold
def test_png_bomb_is_refused_before_decoding(tmp_path: Path, side: int) -> None:
    path = png_header_only(tmp_path / "bomb.png", side, side)
    tracemalloc.start()
    try:
        with pytest.raises(RadiographReadError) as info:
            LoadRadiograph(accept_nonstandard=True)(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    reason = _reason(info, path)
    assert "refused before decoding" in reason and ("exceeds the limit" in reason or "too large" in reason)
    assert peak < 16 << 20


# ----------------------------------------------------------------------------------------------------------------------
# 2. Not a chest radiograph: refused with the reason, unless accept_nonstandard=True (logged)
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("CT_small.dcm", "modality CT"),
        ("MR_small.dcm", "modality MR"),
        ("US1_J2KR.dcm", "modality US"),
        ("OBXXXX1A.dcm", "modality US"),  # PALETTE COLOR ultrasound
        ("SC_rgb.dcm", "colour image (photometric interpretation RGB)"),
        ("SC_ybr_full_uncompressed.dcm", "colour image (photometric interpretation YBR_FULL)"),
    ],
)
def test_pydicom_non_chest_files_are_refused(name: str, reason: str, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _testdata(name)
    with monkeypatch.context() as patch:
        _no_decoding(patch)  # refused from the header
        with pytest.raises(NotAChestRadiographError) as info:
            LoadRadiograph()(path)
    assert reason in _reason(info, path) and "not a chest radiograph" in info.value.reason


def test_accept_nonstandard_uses_the_image_and_logs_it(caplog: pytest.LogCaptureFixture) -> None:
    ct = _testdata("CT_small.dcm")
    with caplog.at_level(logging.WARNING, logger="monai_r2gen.data.radiograph_checks"):
        img = LoadRadiograph(accept_nonstandard=True)(ct)
    assert img.shape == (1, 128, 128) and "modality CT" in img.meta["nonstandard"]
    assert "modality CT" in caplog.text and "accept_nonstandard=True" in caplog.text and ct in caplog.text
    rgb = _testdata("SC_rgb.dcm")
    out = LoadRadiographd(keys="image", accept_nonstandard=True)({"image": rgb})
    assert out["image"].shape == (1, 100, 100)
    views = LoadStudyViewsd(spatial_size=32, accept_nonstandard=True)({"image": [ct, rgb]})
    assert views["view_mask"].tolist() == [True, True]
    with pytest.raises(NotAChestRadiographError, match="modality CT"):
        LoadStudyViewsd(spatial_size=32)({"image": [ct]})


def test_real_chest_radiograph_is_accepted_and_the_extremity_is_not(pydicom_data_dir: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        rg1 = LoadRadiograph()(pydicom_data_dir / "RG1_UNCR.dcm")  # CR, CHEST, MONOCHROME1
    assert "nonstandard" not in rg1.meta and "non-standard" not in caplog.text
    assert LoadRadiograph()(pydicom_data_dir / "RG1_J2KR.dcm").shape == rg1.shape
    rg3 = pydicom_data_dir / "RG3_UNCR.dcm"  # a CR whose header says BodyPartExamined EXTREMITY
    with pytest.raises(NotAChestRadiographError, match="body part examined is 'EXTREMITY'"):
        LoadRadiograph()(rg3)
    assert LoadRadiograph(accept_nonstandard=True)(rg3).shape == (1, 1760, 1760)


@pytest.mark.parametrize("body_part", ["HAND", "KNEE", "SKULL", "L SPINE", "ABDOMEN", "PELVIS"])
def test_other_body_parts_are_refused(tmp_path: Path, body_part: str) -> None:
    path = write_dicom(tmp_path / "x.dcm", chest_like(64, 64), body_part=body_part)
    with pytest.raises(NotAChestRadiographError) as info:
        read_radiograph(path)
    assert f"body part examined is {body_part!r}, not the chest" in _reason(info, path)


@pytest.mark.parametrize("body_part", ["CHEST", "", "THORAX", "CHESTABDOMEN", "CHEST PA", "LUNG", "PORTABLE"])
def test_chest_and_unknown_body_parts_are_accepted(tmp_path: Path, body_part: str) -> None:
    path = write_dicom(tmp_path / "x.dcm", chest_like(64, 64), body_part=body_part)
    assert read_radiograph(path)[0].shape == (64, 64)


@pytest.mark.parametrize("modality", ["CR", "DX", "OT", None])
def test_radiograph_modalities_and_a_missing_one_are_accepted(tmp_path: Path, modality, caplog) -> None:
    ds = make_radiograph_dataset(chest_like(64, 64), modality=modality or "DX")
    if modality is None:
        del ds.Modality
    write_dataset(ds, tmp_path / "x.dcm")
    with caplog.at_level(logging.INFO, logger="monai_r2gen.data.radiograph_checks"):
        image, meta = read_radiograph(tmp_path / "x.dcm")
    assert image.shape == (64, 64) and "nonstandard" not in meta
    if modality in (None, "OT"):
        assert "assumed to be a radiograph" in caplog.text  # accepted, with a log


def test_non_radiograph_sop_class_is_refused(tmp_path: Path) -> None:
    ds = make_radiograph_dataset(chest_like(64, 64))  # modality DX ...
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CTImageStorage  # ... but a CT image
    write_dataset(ds, tmp_path / "x.dcm")
    with pytest.raises(NotAChestRadiographError, match="SOP class CT Image Storage is not a projection radiograph"):
        read_radiograph(tmp_path / "x.dcm")


def test_tiny_transparent_and_constant_images_are_refused(tmp_path: Path) -> None:
    one = save_pil(tmp_path / "one.png", np.array([[128]], np.uint8), "PNG")
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., :3] = chest_like(64, 64, bits=8)[..., None]  # a picture under an alpha of 0 everywhere
    clear = save_pil(tmp_path / "clear.png", rgba, "PNG")
    flat = save_pil(tmp_path / "flat.png", np.full((64, 64), 90, np.uint8), "PNG")
    flat_dicom = write_dicom(tmp_path / "flat.dcm", np.full((64, 64), 700, np.uint16))
    narrow = write_dicom(tmp_path / "narrow.dcm", chest_like(200, 16))
    cases = [(one, "1 x 1 pixels is too small"), (clear, "fully transparent"), (flat, "constant image"),
             (flat_dicom, "constant image"), (narrow, "200 x 16 pixels is too small")]  # fmt: skip
    for path, reason in cases:
        with pytest.raises(NotAChestRadiographError) as info:
            LoadRadiograph()(path)
        assert reason in _reason(info, path), path
        assert LoadRadiograph(accept_nonstandard=True)(path).ndim == 3
    rgba[..., 3] = 255
    rgba[:8, :8, 3] = 0  # partly transparent: fine
    assert LoadRadiograph()(save_pil(tmp_path / "opaque.png", rgba, "PNG")).shape == (1, 64, 64)


def test_phantom_and_grayscale_png_radiographs_are_accepted(tmp_path: Path) -> None:
    from monai_r2gen.data.synthetic import generate_dataset

    generate_dataset(tmp_path / "phantoms", 3, seed=5, image_size=64, lateral_fraction=1.0)
    files = sorted((tmp_path / "phantoms").rglob("*.dcm")) + sorted((tmp_path / "phantoms").rglob("*.png"))
    assert len(files) >= 6
    for path in files:
        assert "nonstandard" not in LoadRadiograph()(path).meta, path
    png16 = save_pil(tmp_path / "g16.png", chest_like(64, 56, bits=16), "PNG")
    assert LoadRadiograph()(png16).shape == (1, 64, 56)


# ----------------------------------------------------------------------------------------------------------------------
# 6. Empty, truncated, misnamed, not regular, duplicated; folders without images
# ----------------------------------------------------------------------------------------------------------------------


def _good_dicom(path: Path, **kwargs) -> Path:
    return write_dicom(path, chest_like(64, 64), **kwargs)


def _study_reason(path: Path) -> str:
    (study,) = collect_studies([path])
    assert not study.ok
    ((file, reason),) = study.errors
    assert file == str(path)
    return reason


def _api_reason(path: Path) -> str:
    with pytest.raises(RadiographReadError) as info:
        read_radiograph(path)
    return _reason(info, path)


def test_empty_and_truncated_dicom_say_the_same_everywhere(tmp_path: Path) -> None:
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    good = _good_dicom(tmp_path / "good.dcm").read_bytes()
    cut = {n: tmp_path / f"cut{n}.dcm" for n in (300, 600, len(good) - 100)}
    for n, path in cut.items():
        path.write_bytes(good[:n])
    assert _study_reason(empty) == _api_reason(empty) == "empty file (0 bytes)"
    for n, path in cut.items():
        reason = _api_reason(path)
        assert reason == _study_reason(path) and reason.startswith(f"truncated file ({n:,} bytes)"), reason
        with pytest.raises(RadiographReadError) as info:
            collect_studies([path], on_error="raise")
        assert _reason(info, path) == reason
    assert "pixel data has" in _api_reason(cut[len(good) - 100])


def test_truncated_encapsulated_pixel_data(tmp_path: Path) -> None:
    if not PYDICOM_3:
        pytest.skip("the test file encoder needs pydicom 3")
    good = write_dicom(tmp_path / "j2k.dcm", chest_like(64, 64), JPEG2000Lossless).read_bytes()
    path = tmp_path / "cut_j2k.dcm"
    path.write_bytes(good[:-40])
    reason = _study_reason(path)
    assert reason.startswith("truncated file") and "fragment" in reason and reason == _api_reason(path)


def test_png_named_dcm_is_read_by_content(tmp_path: Path) -> None:
    path = save_pil(tmp_path / "cxr.dcm", chest_like(64, 56, bits=8), "PNG")
    (study,) = collect_studies([tmp_path])
    assert study.ok and study.source == "image" and study.paths == [str(path)]
    (study,) = collect_studies([path])
    assert study.ok and study.source == "image"
    assert LoadRadiograph()(path).meta["format"] == "PNG"


def _in_thread(fn, *args):
    """Run fn(*args) in a thread; fail if it does not return within 20 s (opening a FIFO would block forever)."""
    box: dict = {}

    def run():
        try:
            box["value"] = fn(*args)
        except Exception as exc:  # handed back to the test
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(20)
    assert not thread.is_alive(), "blocked"
    if "error" in box:
        raise box["error"]
    return box["value"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_fifo_is_not_a_regular_file_and_never_opened(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.dcm"
    os.mkfifo(fifo)
    reason = "not a regular file (a FIFO (named pipe))"
    (study,) = _in_thread(collect_studies, [fifo])
    assert study.errors == [(str(fifo), reason)]
    with pytest.raises(RadiographReadError) as info:
        _in_thread(read_radiograph, fifo)
    assert _reason(info, fifo) == reason
    good = _good_dicom(tmp_path / "good.dcm")
    studies = _in_thread(collect_studies, [tmp_path])  # the FIFO inside a folder: reported, the rest kept
    assert any(s.paths == [str(good)] for s in studies)
    assert (str(fifo), reason) in [e for s in studies for e in s.errors]


@pytest.mark.parametrize("truncated_first", [True, False])
def test_duplicate_sop_instance_keeps_the_readable_copy(tmp_path: Path, caplog, truncated_first: bool) -> None:
    sop = generate_uid()
    names = ("a_copy.dcm", "b_copy.dcm") if truncated_first else ("b_copy.dcm", "a_copy.dcm")
    good = _good_dicom(tmp_path / names[1], sop_uid=sop, patient_name="Doe^Jane", patient_id="PID-98765")
    bad = tmp_path / names[0]
    bad.write_bytes(good.read_bytes()[:-500])
    with caplog.at_level(logging.INFO, logger="monai_r2gen.data.studies"):
        (study,) = collect_studies([tmp_path])
    assert study.paths == [str(good)]
    ((file, reason),) = study.errors
    assert file == str(bad) and reason.startswith("truncated file") and f"is read from {good}" in reason
    assert str(good) in caplog.text and str(bad) in caplog.text and sop in caplog.text
    assert "Doe" not in caplog.text and "PID-98765" not in caplog.text


def test_folder_without_images_says_why(tmp_path: Path) -> None:
    folder = tmp_path / "notes"
    folder.mkdir()
    for name in ("a.txt", "b.txt", "c.txt"):
        (folder / name).write_text("not an image\n")
    (study,) = collect_studies([folder])
    assert not study.ok and study.source == "error"
    ((path, reason),) = study.errors
    assert path == str(folder)
    assert reason == "no DICOM or image files in this folder (3 file(s): 3 skipped: not images (.txt: 3))"
    (folder / "annotation.json").write_text("{}")
    assert "1 manifest(s) skipped" in _study_reason(folder)
    with pytest.raises(RadiographReadError, match="no DICOM or image files"):
        collect_studies([folder], on_error="raise")
    Image.fromarray(chest_like(64, 64, bits=8)).save(folder / "cxr.png")
    (study,) = collect_studies([folder])
    assert study.ok  # the text files are ignored when there is something to read


def test_read_dicom_header_is_the_shared_check(tmp_path: Path) -> None:
    path = _good_dicom(tmp_path / "good.dcm")
    ds = read_dicom_header(path)
    assert ds.Rows == 64 and "PixelData" not in ds
    assert read_view_info(path).sop_instance_uid == ds.SOPInstanceUID
