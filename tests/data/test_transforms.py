"""Radiograph loading (all formats), square resize/pad, normalisation, augmentation and study view stacking."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose
from PIL import Image

from monai_r2gen.data.transforms import (
    LoadRadiograph,
    LoadRadiographd,
    LoadStudyViewsd,
    NormalizeToEncoderd,
    RandRadiographAugmentd,
    ResizeWithPadSquare,
    ResizeWithPadSquared,
    read_radiograph,
)
from monai_r2gen.errors import MultiFrameError, RadiographReadError
from tests.data.dicom_factory import chest_like, save_pil, write_dicom

CONTRACT_META = (
    "filename_or_obj",
    "modality",
    "view_position",
    "body_part",
    "photometric_interpretation",
    "sop_instance_uid",
    "series_instance_uid",
    "study_instance_uid",
    "original_shape",
)


def _corner_image(rows: int, cols: int, dtype=np.uint8) -> np.ndarray:
    """Dark image with a bright block in the top-left corner (catches transposition and flips)."""
    full = np.iinfo(dtype).max
    arr = np.full((rows, cols), full // 10, dtype)
    arr[: rows // 4, : cols // 4] = full
    return arr


# ----------------------------------------------------------------------------------------------------------------------
# LoadRadiograph
# ----------------------------------------------------------------------------------------------------------------------


def test_load_rg1_metatensor(rg1_uncompressed):
    img = LoadRadiograph()(rg1_uncompressed)
    assert isinstance(img, MetaTensor) and img.shape == (1, 1955, 1841) and img.dtype == torch.float32
    assert float(img.min()) >= 0.0 and float(img.max()) <= 1.0
    for key in CONTRACT_META:
        assert key in img.meta, key
    assert img.meta["filename_or_obj"] == str(rg1_uncompressed)
    assert img.meta["original_shape"] == (1955, 1841)
    assert "pixel_spacing" not in img.meta  # missing values are absent, never None (MONAI's collate rejects None)


def test_dicom_meta_and_spacing(tmp_path):
    path = write_dicom(
        tmp_path / "a.dcm", chest_like(48, 40), pixel_spacing=(0.2, 0.25), laterality="R", view_position="LL"
    )
    img = LoadRadiograph()(path)
    assert img.meta["pixel_spacing"] == (0.2, 0.25) and img.meta["imager_pixel_spacing"] == (0.2, 0.25)
    assert (img.meta["laterality"], img.meta["view_position"], img.meta["modality"]) == ("R", "LL", "DX")
    np.testing.assert_allclose(torch.diag(img.affine)[:2].numpy(), [0.2, 0.25])
    assert not any("Anonymous" in str(v) or str(v) == "ANON" for v in img.meta.values())


def test_png_8bit_gray_exact_and_orientation(tmp_path):
    arr = _corner_image(48, 32)
    img = LoadRadiograph()(save_pil(tmp_path / "g.png", arr, "PNG"))
    assert img.shape == (1, 48, 32)  # rows = height
    np.testing.assert_allclose(img[0].numpy(), arr / 255.0, atol=1e-6)
    assert float(img[0, 0, 0]) == 1.0 and float(img[0, -1, -1]) < 0.2
    assert img.meta["photometric_interpretation"] == "MONOCHROME2" and img.meta["bits_stored"] == 8


def test_png_16bit(tmp_path):
    arr = _corner_image(48, 32, np.uint16)
    arr[-1, -1] = 1234
    path = save_pil(tmp_path / "g16.png", arr, "PNG")
    assert Image.open(path).mode.startswith("I")
    img = LoadRadiograph()(path)
    np.testing.assert_allclose(img[0].numpy(), arr / 65535.0, atol=1e-7)
    assert img.meta["bits_stored"] == 16
    pct = LoadRadiograph(window="percentile", percentiles=(1, 99))(path)
    assert float(pct.min()) == 0.0 and float(pct.max()) == 1.0


def test_png_rgb_to_gray(tmp_path):
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    rgb[0, 1] = (0, 255, 0)
    rgb[0, 2] = (0, 0, 255)
    rgb[1, :] = (255, 255, 255)
    img = LoadRadiograph(accept_nonstandard=True)(save_pil(tmp_path / "c.png", rgb, "PNG"))  # 2 x 3: too small
    assert img.shape == (1, 2, 3) and img.meta["photometric_interpretation"] == "RGB"
    assert "too small" in img.meta["nonstandard"]
    np.testing.assert_allclose(img[0].numpy(), [[0.299, 0.587, 0.114], [1, 1, 1]], atol=1e-4)


def test_jpeg(tmp_path):
    arr = _corner_image(40, 32)
    img = LoadRadiograph()(save_pil(tmp_path / "x.jpg", arr, "JPEG"))
    assert img.shape == (1, 40, 32) and img.meta["format"] == "JPEG"
    assert np.abs(img[0].numpy() - arr / 255.0).mean() < 0.02


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_tiff(tmp_path, dtype):
    arr = _corner_image(40, 36, dtype)
    img = LoadRadiograph()(save_pil(tmp_path / "x.tif", arr, "TIFF"))
    np.testing.assert_allclose(img[0].numpy(), arr / float(np.iinfo(dtype).max), atol=1e-6)


def test_multipage_tiff_rejected_or_selected(tmp_path):
    pages = [Image.fromarray(np.full((8, 6), v, np.uint8)) for v in (10, 200)]
    path = tmp_path / "pages.tif"
    pages[0].save(path, save_all=True, append_images=pages[1:])
    with pytest.raises(MultiFrameError, match=r"pages\.tif"):
        LoadRadiograph()(path)
    second = LoadRadiograph(frame=1, accept_nonstandard=True)(path)  # 8 x 6 and constant: non-standard
    np.testing.assert_allclose(second.numpy(), 200 / 255.0, atol=1e-6)


def test_dicom_without_preamble(tmp_path):
    path = write_dicom(tmp_path / "x.dcm", chest_like(40, 36))
    bare = tmp_path / "bare.dcm"
    bare.write_bytes(path.read_bytes()[132:])  # drop preamble + DICM; starts with the (0002,xxxx) group
    np.testing.assert_array_equal(LoadRadiograph()(bare).numpy(), LoadRadiograph()(path).numpy())


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("missing.png", None, "not found"),
        ("empty.png", b"", "empty file"),
        ("notes.txt", b"just some text, no image here\n" * 5, "not a recognised image format"),
        ("broken.png", "corrupt", "corrupt or truncated PNG"),
        ("half.png", "truncated", "corrupt or truncated PNG"),
    ],
)
def test_bad_image_files(tmp_path, name, content, reason):
    path = tmp_path / name
    if content in ("corrupt", "truncated"):
        good = save_pil(tmp_path / "good.png", chest_like(32, 32, bits=8), "PNG").read_bytes()
        if content == "truncated":
            path.write_bytes(good[: len(good) // 2])
        else:
            broken = bytearray(good)
            broken[60:90] = b"\xff" * 30  # inside the IDAT stream
            path.write_bytes(bytes(broken))
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(RadiographReadError) as info:
        LoadRadiograph()(path)
    assert str(path) in str(info.value) and reason in str(info.value)


def test_load_radiograph_rejects_bad_options():
    with pytest.raises(ValueError):
        LoadRadiograph(window="nope")
    with pytest.raises(ValueError):
        LoadRadiograph(percentiles=(50, 10))
    with pytest.raises(ValueError):
        read_radiograph("whatever.png", window="nope")


def test_load_radiographd_keys_and_missing(tmp_path):
    a = save_pil(tmp_path / "a.png", _corner_image(40, 32), "PNG")
    b = save_pil(tmp_path / "b.png", _corner_image(36, 48), "PNG")
    out = LoadRadiographd(keys=["image", "other"])({"image": a, "other": b, "report": "text"})
    assert out["image"].shape == (1, 40, 32) and out["other"].shape == (1, 36, 48) and out["report"] == "text"
    out = LoadRadiographd(keys=["image", "other"], allow_missing_keys=True)({"image": a})
    assert out["image"].shape == (1, 40, 32) and "other" not in out
    with pytest.raises(KeyError):
        LoadRadiographd(keys=["image", "other"])({"image": a})


# ----------------------------------------------------------------------------------------------------------------------
# Geometry and intensity
# ----------------------------------------------------------------------------------------------------------------------


def _bright_box(img: torch.Tensor) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(np.asarray(img[0]) > 0.5)
    return rows.min(), rows.max(), cols.min(), cols.max()


@pytest.mark.parametrize("shape", [(50, 100), (100, 50)])
def test_resize_with_pad_keeps_aspect(shape):
    arr = torch.zeros((1, *shape))
    arr[0, 10:30, 20:40] = 1.0  # a 20 x 20 bright square
    out = ResizeWithPadSquare(50)(MetaTensor(arr))
    assert isinstance(out, MetaTensor) and out.shape == (1, 50, 50)
    r0, r1, c0, c1 = _bright_box(out)
    assert (r1 - r0 + 1, c1 - c0 + 1) == (10, 10)  # still a square, half size
    # the padding (25 of the 50 pixels of the short axis) is black
    if shape[0] < shape[1]:
        assert float(out[0, :12].abs().max()) == 0.0 and float(out[0, -12:].abs().max()) == 0.0
    else:
        assert float(out[0, :, :12].abs().max()) == 0.0 and float(out[0, :, -12:].abs().max()) == 0.0


def test_resize_with_pad_enlarges_and_keeps_square_inputs():
    arr = torch.zeros((1, 10, 20))
    arr[0, 2:6, 4:8] = 1.0
    out = ResizeWithPadSquare(40)(arr)
    assert out.shape == (1, 40, 40)
    r0, r1, c0, c1 = _bright_box(out)
    assert abs((r1 - r0) - (c1 - c0)) <= 1 and 6 <= r1 - r0 + 1 <= 10
    same = torch.rand(1, 16, 16)
    torch.testing.assert_close(torch.as_tensor(ResizeWithPadSquare(16)(same)), same)
    with pytest.raises(ValueError):
        ResizeWithPadSquare(0)


def test_resize_with_pad_squared_dict():
    t = ResizeWithPadSquared(["image", "extra"], 32, allow_missing_keys=True)
    out = t({"image": torch.rand(1, 64, 40), "id": "x"})
    assert out["image"].shape == (1, 32, 32) and out["id"] == "x"
    with pytest.raises(KeyError):
        ResizeWithPadSquared(["image", "extra"], 32)({"image": torch.rand(1, 8, 8)})


def test_normalize_to_encoder():
    img = torch.full((1, 4, 4), 0.5)
    out = NormalizeToEncoderd("image", mean=0.5, std=0.25)({"image": img})["image"]
    torch.testing.assert_close(out, torch.zeros(1, 4, 4))
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    out = NormalizeToEncoderd("image", mean=mean, std=std)({"image": img})["image"]
    assert out.shape == (3, 4, 4)  # gray repeated for an RGB encoder
    torch.testing.assert_close(out[:, 0, 0], (0.5 - torch.tensor(mean)) / torch.tensor(std))
    views = torch.rand(2, 1, 4, 4)
    out = NormalizeToEncoderd("image", mean=mean, std=std)({"image": views})["image"]
    assert out.shape == (2, 3, 4, 4)
    torch.testing.assert_close(out[1, 2], (views[1, 0] - mean[2]) / std[2])
    with pytest.raises(ValueError, match="channels"):
        NormalizeToEncoderd("image", mean=mean, std=std)({"image": torch.rand(2, 4, 4)})
    with pytest.raises(ValueError):
        NormalizeToEncoderd("image", mean=0.5, std=0.0)
    kept = NormalizeToEncoderd(["image", "x"], mean=0.5, std=0.5, allow_missing_keys=True)({"image": img})
    assert set(kept) == {"image"}


def test_rand_augment_is_seeded_and_light():
    image = torch.zeros(1, 32, 32)
    image[0, 8:24, 12:20] = 0.8
    aug = RandRadiographAugmentd("image", prob=1.0, rotate_range=10, scale_range=0.1, contrast_range=(0.7, 1.4))
    a = aug.set_random_state(7)({"image": image.clone()})["image"]
    b = aug.set_random_state(7)({"image": image.clone()})["image"]
    c = aug.set_random_state(8)({"image": image.clone()})["image"]
    torch.testing.assert_close(torch.as_tensor(a), torch.as_tensor(b))
    assert not torch.allclose(torch.as_tensor(a), torch.as_tensor(c))
    assert a.shape == image.shape and float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert not torch.allclose(torch.as_tensor(a), image)  # it did something...
    assert abs(float(a.sum()) - float(image.sum())) < 0.5 * float(image.sum())  # ...but only a little
    untouched = RandRadiographAugmentd("image", prob=0.0)({"image": image})["image"]
    assert untouched is image


def test_rand_augment_without_range_is_the_identity_and_rotates_about_the_centre():
    image = torch.rand(2, 1, 24, 24)
    still = RandRadiographAugmentd("image", prob=1.0, rotate_range=0, scale_range=0, contrast_range=(1, 1))
    torch.testing.assert_close(still.set_random_state(0)({"image": image})["image"], image, atol=1e-5, rtol=0)
    square = torch.zeros(1, 24, 24)
    square[0, 8:16, 8:16] = 1.0  # centred: a small rotation keeps its centre of mass where it was
    turned = RandRadiographAugmentd("image", prob=1.0, rotate_range=10, scale_range=0, contrast_range=(1, 1))
    out = turned.set_random_state(1)({"image": square})["image"][0]
    rows, cols = torch.meshgrid(torch.arange(24.0), torch.arange(24.0), indexing="ij")
    centre = (float((out * rows).sum() / out.sum()), float((out * cols).sum() / out.sum()))
    assert abs(centre[0] - 11.5) < 0.1 and abs(centre[1] - 11.5) < 0.1 and not torch.allclose(out, square[0])

def test_rand_augment_view_stack_and_compose():
    views = torch.zeros(2, 1, 16, 16)
    views[0, 0, 4:12, 4:12] = 1.0  # second view slot is an absent (zero) view
    pipeline = Compose([RandRadiographAugmentd(["image", "missing"], prob=1.0, allow_missing_keys=True)])
    pipeline.set_random_state(3)
    out = pipeline({"image": views})["image"]
    assert out.shape == (2, 1, 16, 16)
    assert float(out[1].abs().max()) == 0.0 and float(out[0].sum()) > 0
    with pytest.raises(ValueError):
        RandRadiographAugmentd("image", contrast_range=(0.0, 1.0))


# ----------------------------------------------------------------------------------------------------------------------
# LoadStudyViewsd
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def view_files(tmp_path):
    paths = [write_dicom(tmp_path / "v0.dcm", chest_like(40, 36), view_position="PA")]
    paths += [save_pil(tmp_path / f"v{i}.png", _corner_image(32 + 4 * i, 36), "PNG") for i in range(1, 5)]
    return [str(p) for p in paths]


@pytest.mark.parametrize("n_views", [1, 2, 3, 4])
def test_study_views_shapes_and_mask(view_files, n_views):
    out = LoadStudyViewsd(spatial_size=16, max_views=4)({"id": "s1", "image": view_files[:n_views]})
    views, mask = out["image"], out["view_mask"]
    assert isinstance(views, MetaTensor) and views.shape == (4, 1, 16, 16) and views.dtype == torch.float32
    assert mask.dtype == torch.bool and mask.tolist() == [i < n_views for i in range(4)]
    assert all(float(views[i].abs().max()) == 0.0 for i in range(n_views, 4))
    assert all(float(views[i].max()) > 0.0 for i in range(n_views))
    assert views.meta["filename_or_obj"] == view_files[0] and views.meta["view_position"] == "PA"
    assert views.meta["num_views"] == n_views


def test_study_views_max_views_and_single_path(view_files, caplog):
    with caplog.at_level(logging.INFO, logger="monai_r2gen.data.transforms"):
        out = LoadStudyViewsd(spatial_size=8, max_views=2)({"id": "s2", "image": view_files})
    assert out["image"].shape == (2, 1, 8, 8) and out["view_mask"].tolist() == [True, True]
    assert "keeping the first 2" in caplog.text
    out = LoadStudyViewsd(spatial_size=8, max_views=2)({"image": view_files[1]})
    assert out["view_mask"].tolist() == [True, False]
    expected = ResizeWithPadSquare(8)(LoadRadiograph()(view_files[1]))
    torch.testing.assert_close(out["image"][0].as_tensor(), torch.as_tensor(expected).float())


def test_study_views_missing_files(view_files, tmp_path):
    gone = str(tmp_path / "gone.png")
    with pytest.raises(RadiographReadError, match="gone.png"):
        LoadStudyViewsd(spatial_size=8)({"image": [view_files[1], gone]})
    out = LoadStudyViewsd(spatial_size=8, on_missing="skip")({"image": [gone, view_files[1]]})
    assert out["view_mask"].tolist() == [True, False]  # the remaining view moves to the first slot
    with pytest.raises(RadiographReadError):
        LoadStudyViewsd(spatial_size=8, on_missing="skip")({"image": [gone]})
    with pytest.raises(RadiographReadError, match="no image views"):
        LoadStudyViewsd(spatial_size=8)({"id": "empty-study", "image": []})
    with pytest.raises(ValueError):
        LoadStudyViewsd(on_missing="ignore")


def test_study_views_allow_missing_keys(view_files):
    t = LoadStudyViewsd(keys=["image", "prior"], spatial_size=8, allow_missing_keys=True)
    out = t({"image": view_files[:2]})
    assert out["image"].shape == (2, 1, 8, 8) and "prior" not in out
    out = t({"image": view_files[:1], "prior": view_files[1:3]})
    assert out["view_mask"].tolist() == [True, False] and out["prior_view_mask"].tolist() == [True, True]
    with pytest.raises(KeyError):
        LoadStudyViewsd(keys=["image", "prior"], spatial_size=8)({"image": view_files[:1]})
