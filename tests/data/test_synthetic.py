"""Tests of the phantom dataset generator: files, determinism, visible findings, report/label consistency."""

from __future__ import annotations

import csv
import dataclasses
import datetime
import filecmp
import json
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image

from monai_r2gen.data.synthetic import (
    FINDING_KINDS,
    FINDING_LABELS,
    Finding,
    SyntheticReportDataset,
    generate_dataset,
    render_study,
)
from monai_r2gen.data.synthetic.anatomy import compose, frontal_scene
from monai_r2gen.data.synthetic.drawing import apply_finding
from monai_r2gen.data.synthetic.findings import heart_ctr_of, rib_break_of
from monai_r2gen.metrics.chexpert import CHEXPERT_LABELS, CheXpertLabeler

SIZE = 128
N_STUDIES = 8


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("phantoms")
    generate_dataset(out, N_STUDIES, seed=3, image_size=SIZE, lateral_fraction=0.5, formats=("png", "dcm"))
    return out


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _annotation(root: Path) -> list[dict]:
    ann = json.loads((root / "annotation.json").read_text())
    return [e for split in ("train", "val", "test") for e in ann[split]]


def _pair(kind: str, index: int, seed: int = 11, noise: bool = True, **kwargs):
    """The same patient rendered with ``kind`` and without any finding."""
    with_f = render_study(seed, index, image_size=SIZE, findings=[kind], noise=noise, lateral=True, **kwargs)
    without = render_study(
        seed, index, image_size=SIZE, findings=[], noise=noise, lateral=True, projection=with_f.views[0].projection
    )
    return with_f, without


def _box_mask(boxes: list[list[float]], size: int = SIZE, pad: int = 1) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        r0, r1 = max(int(np.floor(y0 * size)) - pad, 0), min(int(np.ceil(y1 * size)) + pad, size)
        c0, c1 = max(int(np.floor(x0 * size)) - pad, 0), min(int(np.ceil(x1 * size)) + pad, size)
        mask[r0:r1, c0:c1] = True
    return mask


# ------------------------------------------------------------------------------------------------------------------
# files
# ------------------------------------------------------------------------------------------------------------------


def test_layout_annotation_labels_and_findings(dataset_dir: Path) -> None:
    ann = json.loads((dataset_dir / "annotation.json").read_text())
    assert set(ann) == {"train", "val", "test"} and all(ann[s] for s in ann)
    entries = _annotation(dataset_dir)
    assert sorted(e["id"] for e in entries) == [f"syn{i:06d}" for i in range(N_STUDIES)]
    findings = json.loads((dataset_dir / "findings.json").read_text())["studies"]
    with open(dataset_dir / "labels.csv", newline="") as fh:
        rows = {row["id"]: row for row in csv.DictReader(fh)}
    assert list(next(iter(rows.values())))[:2] == ["id", "split"]
    assert list(next(iter(rows.values())))[2:] == list(CHEXPERT_LABELS)
    n_lateral = 0
    for e in entries:
        assert e["report"] and "FINDINGS:" not in e["report"]
        assert e["report_full"] == f"FINDINGS: {e['report']}\n\nIMPRESSION: {e['impression']}"
        assert (dataset_dir / "reports" / f"{e['id']}.txt").read_text().strip() == e["report_full"]
        assert e["view_position"][0] in ("PA", "AP") and e["view_position"][1:] in ([], ["LL"])
        n_lateral += len(e["view_position"]) == 2
        assert len(e["image_path"]) == len(e["dicom_path"]) == len(e["view_position"])
        for rel in e["image_path"] + e["dicom_path"]:
            assert not Path(rel).is_absolute() and (dataset_dir / rel).is_file()
        row = rows[e["id"]]
        assert row["split"] == e["split"]
        assert all(row[name] in ("", "0", "1") for name in CHEXPERT_LABELS)
        # labels.csv positives == the CheXpert labels of the findings drawn (findings.json)
        record = findings[e["id"]]
        drawn = {label for f in record["findings"] for label in FINDING_LABELS[f["kind"]]}
        assert {n for n in CHEXPERT_LABELS if row[n] == "1"} - {"No Finding"} == drawn
        assert (row["No Finding"] == "1") == (not drawn - {"Support Devices"})
        for f in record["findings"]:
            assert f["boxes"]["frontal"], f"{f['kind']} has no box on the frontal view"
            for view_boxes in f["boxes"].values():
                for x0, y0, x1, y1 in view_boxes:
                    assert 0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0
    assert 0 < n_lateral < N_STUDIES
    meta = json.loads((dataset_dir / "dataset.json").read_text())
    assert meta["n_studies"] == N_STUDIES and meta["image_size"] == SIZE and meta["labels"] == list(CHEXPERT_LABELS)


def test_same_seed_gives_same_bytes_whatever_the_workers(dataset_dir: Path, tmp_path: Path) -> None:
    generate_dataset(tmp_path / "again", N_STUDIES, seed=3, image_size=SIZE, lateral_fraction=0.5, workers=2)
    files = _tree(dataset_dir)
    assert files == _tree(tmp_path / "again")
    assert any(f.endswith(".dcm") for f in files) and any(f.endswith(".png") for f in files)
    match, mismatch, errors = filecmp.cmpfiles(dataset_dir, tmp_path / "again", files, shallow=False)
    assert not mismatch and not errors
    generate_dataset(tmp_path / "other", N_STUDIES, seed=4, image_size=SIZE, lateral_fraction=0.5)
    for name in ("annotation.json", "labels.csv", "images/syn000000/0_PA.png"):
        if (tmp_path / "other" / name).exists():
            assert (dataset_dir / name).read_bytes() != (tmp_path / "other" / name).read_bytes()


def test_dicom_encoding_tags_and_uids(dataset_dir: Path) -> None:
    from monai_r2gen.data.dicom import read_dicom_pixels

    today = datetime.date.today().strftime("%Y%m%d")
    photometrics, study_uids, sop_uids = set(), set(), set()
    for e in _annotation(dataset_dir):
        uids_of_study = set()
        for k, (rel, png_rel) in enumerate(zip(e["dicom_path"], e["image_path"])):
            ds = pydicom.dcmread(dataset_dir / rel)
            assert ds.Modality in ("DX", "CR") and ds.BodyPartExamined == "CHEST"
            assert 12 <= int(ds.BitsStored) <= 16 and ds.BitsAllocated == 16
            assert ds.ViewPosition == e["view_position"][k] and ds.ImageLaterality == "U"
            assert float(ds.WindowWidth) > 1 and "WindowCenter" in ds
            assert (ds.Rows, ds.Columns) == (SIZE, SIZE) and "PixelSpacing" in ds
            assert ds.PatientID.startswith("SYN") and ds.PatientSex in ("F", "M") and ds.StudyDate
            # dates and times come from the study's seed, never from the clock
            acq = render_study(3, int(e["id"][3:]), images=False).acquisition
            second = acq["second"]
            assert ds.StudyDate == (datetime.date(2015, 1, 1) + datetime.timedelta(days=acq["day"])).strftime("%Y%m%d")
            assert ds.StudyTime == f"{second // 3600:02d}{second // 60 % 60:02d}{second % 60:02d}"
            assert all(elem.value != today for elem in ds.iterall() if elem.VR == "DA")
            photometrics.add(ds.PhotometricInterpretation)
            uids_of_study.add(ds.StudyInstanceUID)
            sop_uids.add(ds.SOPInstanceUID)
            # the DICOM decodes (VOI window, MONOCHROME1 inversion) to the PNG image
            pixels, meta = read_dicom_pixels(dataset_dir / rel)
            png = np.asarray(Image.open(dataset_dir / png_rel), np.float32) / 255
            assert np.abs(pixels - png).max() < 3 / 255
        assert len(uids_of_study) == 1
        study_uids |= uids_of_study
    assert len(study_uids) == N_STUDIES
    assert len(sop_uids) == sum(len(e["dicom_path"]) for e in _annotation(dataset_dir))
    assert photometrics == {"MONOCHROME1", "MONOCHROME2"}


def test_files_load_through_loader_and_report_dataset(dataset_dir: Path) -> None:
    from monai_r2gen.data.datasets import ReportDataset
    from monai_r2gen.data.transforms import LoadRadiographd, LoadStudyViewsd

    entry = _annotation(dataset_dir)[0]
    loaded = LoadRadiographd(keys=["png", "dcm"])(
        {"png": str(dataset_dir / entry["image_path"][0]), "dcm": str(dataset_dir / entry["dicom_path"][0])}
    )
    assert loaded["png"].shape == loaded["dcm"].shape == (1, SIZE, SIZE)
    assert loaded["dcm"].meta["view_position"] == entry["view_position"][0]
    # lungs dark, mediastinum bright: the centre column is brighter than the mid-lung columns
    img = loaded["dcm"][0].numpy()
    rows = slice(SIZE // 3, SIZE // 2)
    assert img[rows, SIZE // 2 - 2 : SIZE // 2 + 2].mean() > img[rows, 20:30].mean() + 0.2
    ds = ReportDataset(
        dataset_dir / "annotation.json", split="train", transform=LoadStudyViewsd(keys="image", spatial_size=SIZE)
    )
    item = ds[0]
    assert item["image"].shape == (2, 1, SIZE, SIZE) and item["report"]
    assert item["view_mask"].sum() == len(
        next(e for e in _annotation(dataset_dir) if e["id"] == item["id"])["image_path"]
    )


# ------------------------------------------------------------------------------------------------------------------
# findings are in the pixels, where the boxes say
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [k for k in FINDING_KINDS if k != "pneumothorax"])
def test_finding_changes_pixels_inside_its_boxes(kind: str) -> None:
    for index in range(3):
        with_f, without = _pair(kind, index)
        finding = with_f.findings[0]
        for k, view in enumerate(with_f.views):
            boxes = finding.boxes.get(view.name, [])
            diff = view.image - without.views[k].image
            if not boxes:
                assert view.name == "lateral" and kind == "rib_fracture"
                assert np.abs(diff).max() < 1e-6
                continue
            inside = _box_mask(boxes)
            mass = np.abs(diff)
            assert mass[inside].sum() > 0.97 * mass.sum(), f"{kind}: change outside its boxes on the {view.name} view"
            if kind == "rib_fracture":
                assert mass[inside].max() > 0.05
            elif kind == "support_devices":  # metal is bright, also over the bright mediastinum
                for box in boxes:
                    one = _box_mask([box])
                    assert view.image[one].max() > 0.9 and diff[one].max() > 0.1
            elif kind == "cardiomegaly":
                assert diff[inside].mean() > 0.02
            else:  # fluid, airspace disease, masses, atelectasis: brighter
                in_box = diff[_box_mask(boxes, pad=0)]
                assert in_box.mean() > 0.01 and np.percentile(in_box, 95) > 0.12, f"{kind} does not brighten its box"


def test_effusion_raises_costophrenic_intensity() -> None:
    for index in range(3):
        with_f, without = _pair("pleural_effusion", index)
        for box in with_f.findings[0].boxes["frontal"]:
            inside = _box_mask([box], pad=0)
            gain = (with_f.views[0].image - without.views[0].image)[inside].mean()
            assert gain > 0.05
            # the box sits low in the thorax, at the costophrenic angle
            assert box[3] > 0.5


def test_cardiomegaly_widens_the_heart_shadow() -> None:
    def width(img: np.ndarray, row: int, col: int) -> int:
        prof = img[row]
        bright = prof > 0.5 * (np.percentile(prof, 10) + prof[col])
        left, right = col, col
        while left > 0 and bright[left - 1]:
            left -= 1
        while right < len(prof) - 1 and bright[right + 1]:
            right += 1
        return right - left + 1

    ratios = []
    for index in range(4):
        with_f, without = _pair("cardiomegaly", index, noise=False, projection="PA")
        assert with_f.findings[0].params["ctr"] > 0.5 >= without.ctr_seen
        x0, y0, x1, y1 = with_f.findings[0].boxes["frontal"][0]
        col = int(0.5 * (x0 + x1) * SIZE)
        rows = range(int((y0 + 0.5 * (y1 - y0)) * SIZE), int((y0 + 0.85 * (y1 - y0)) * SIZE))
        w_with = np.median([width(with_f.views[0].image, r, col) for r in rows])
        w_without = np.median([width(without.views[0].image, r, col) for r in rows])
        ratios.append(w_with / w_without)
    assert min(ratios) > 1.03 and np.mean(ratios) > 1.12


def test_pneumothorax_darkens_and_removes_lung_markings() -> None:
    for index in range(3):
        with_f, without = _pair("pneumothorax", index, noise=False)
        finding = with_f.findings[0]
        assert finding.boxes["lateral"] == []
        diff = with_f.views[0].image - without.views[0].image
        region = diff < -0.03  # the pleural space, now darker than lung
        assert region.sum() > 20 and _box_mask(finding.boxes["frontal"])[region].all()
        # lung markings are the part of the image that depends on the marking texture: re-rendered with another
        # texture, the pleural space does not change at all, the lung still does
        images = []
        for seed in (with_f.anatomy.seed, with_f.anatomy.seed + 1):
            anat = dataclasses.replace(with_f.anatomy, seed=seed)
            scene = frontal_scene(
                anat, SIZE, with_f.views[0].projection, heart_ctr_of(with_f.findings), rib_break_of(with_f.findings)
            )
            apply_finding(finding, scene)
            images.append(compose(scene, {"gain": 1.5, "gamma": 1.0, "noise": 0.0}, None))
        texture = np.abs(images[0] - images[1])
        core = region & (diff < -0.06)
        for axis in (0, 1):  # erode by 1 px: the [1, 2, 1] smoothing blends the edge of the pleural space
            for shift in (-1, 1):
                core &= np.roll(core, shift, axis=axis)
        assert core.sum() > 5
        lung_side = (np.abs(diff) < 1e-6) & (texture > 0)
        assert texture[core].mean() < 0.1 * texture[lung_side].mean()


@pytest.mark.parametrize(
    "device",
    [
        {"type": "endotracheal_tube", "tip_cm": 4.0},
        {"type": "central_line", "route": "right internal jugular", "tip": "superior vena cava"},
        {"type": "pacemaker", "side": "left", "leads": 1},
        {"type": "enteric_tube"},
    ],
)
def test_devices_are_at_least_3_px_wide_at_128_px(device: dict) -> None:
    finding = Finding("support_devices", params={"devices": [device]})
    with_f = render_study(2, 0, image_size=SIZE, findings=[finding], lateral=False, projection="AP")
    without = render_study(2, 0, image_size=SIZE, findings=[], lateral=False, projection="AP")
    metal = (with_f.views[0].image - without.views[0].image) > 0.05
    runs = []
    for row in metal:  # horizontal extent of the device in each row it crosses
        edges = np.flatnonzero(np.diff(np.r_[0, row.astype(int), 0]))
        runs.extend(edges[1::2] - edges[::2])
    assert len(runs) > 10
    assert np.percentile(runs, 10) >= 3, sorted(runs)[:10]


def test_render_is_deterministic_and_seed_dependent() -> None:
    a = render_study(1, 5, image_size=SIZE)
    b = render_study(1, 5, image_size=SIZE)
    c = render_study(2, 5, image_size=SIZE)
    assert a.report.full == b.report.full and all(np.array_equal(x.image, y.image) for x, y in zip(a.views, b.views))
    assert not np.array_equal(a.views[0].image, c.views[0].image)
    assert a.views[0].image.dtype == np.float32 and 0.0 <= a.views[0].image.min() <= a.views[0].image.max() <= 1.0


def test_invalid_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="prevalence"):
        generate_dataset(tmp_path, 2, prevalence={"pneumonia": 0.5})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        generate_dataset(tmp_path, 2, prevalence={"edema": 1.5})
    with pytest.raises(ValueError, match="formats"):
        generate_dataset(tmp_path, 2, formats=("jpg",))
    with pytest.raises(ValueError, match="n_studies"):
        generate_dataset(tmp_path, 0)
    with pytest.raises(ValueError, match="unknown finding"):
        render_study(0, 0, findings=["tumour"])


# ------------------------------------------------------------------------------------------------------------------
# reports and labels
# ------------------------------------------------------------------------------------------------------------------

# our own mention keywords (independent of the metrics labeler)
_MENTIONS = {
    "Cardiomegaly": r"cardiomegaly|heart is \w+ enlarged|cardiac silhouette|heart size|heart is normal",
    "Enlarged Cardiomediastinum": r"mediastin",
    "Lung Opacity": r"opacit",
    "Lung Lesion": r"nodule|\bmass\b",
    "Edema": r"edema",
    "Consolidation": r"consolidat",
    "Pneumonia": r"pneumonia|infect",
    "Atelectasis": r"atelecta|collapse",
    "Pneumothorax": r"pneumothora",
    "Pleural Effusion": r"effusion",
    "Pleural Other": r"pleural thickening|fibrosis|scar",
    "Fracture": r"fracture",
    "Support Devices": r"\btube\b|catheter|\bline\b|pacemaker",
}
_NEGATIVE = re.compile(r"^(no |there is no )|normal|not enlarged")


@pytest.fixture(scope="module")
def planned_studies() -> list:
    prevalence = dict.fromkeys(FINDING_KINDS, 0.3)
    return [render_study(9, i, prevalence=prevalence, images=False) for i in range(300)]


def test_reports_describe_every_label_and_nothing_else(planned_studies: list) -> None:
    for study in planned_studies:
        labels = study.labels
        sentences = [s.strip().lower() for s in study.report.findings.split(". ") if s.strip()]
        mentioned_pos, mentioned_neg = set(), set()
        for sentence in sentences:
            negative = bool(_NEGATIVE.search(sentence))
            for name, pattern in _MENTIONS.items():
                if re.search(pattern, sentence):
                    (mentioned_neg if negative else mentioned_pos).add(name)
        positives = {n for n in CHEXPERT_LABELS if labels[n] == 1.0} - {"No Finding"}
        negatives = {n for n in CHEXPERT_LABELS if labels[n] == 0.0}
        assert mentioned_pos == positives, study.report.findings
        assert negatives <= mentioned_neg and not (mentioned_neg - negatives - positives), study.report.findings
        assert all(v in (None, 0.0, 1.0) for v in labels.values())
        assert labels["Pneumonia"] is None and labels["Pleural Other"] is None
        assert (labels["No Finding"] == 1.0) == (not positives - {"Support Devices"})
        if labels["Lung Opacity"] != 1.0:  # "opacity" only in an explicit negative then
            assert all(_NEGATIVE.search(s) for s in sentences if "opacit" in s), study.report.findings
        # the impression adds no observation of its own
        for name, pattern in _MENTIONS.items():
            if re.search(pattern, study.report.impression.lower()):
                assert name in positives, study.report.impression


def test_reports_are_varied(planned_studies: list) -> None:
    texts = [s.report.findings for s in planned_studies]
    assert len(set(texts)) > 0.95 * len(texts)
    normal = [s.report.findings for s in planned_studies if s.labels["No Finding"] == 1.0]
    assert len(set(normal)) > 0.5 * len(normal)


def test_chexpert_labeler_agrees_with_labels(planned_studies: list) -> None:
    labeler = CheXpertLabeler()
    for study in planned_studies:
        for text in (study.report.findings, study.report.full):
            got = labeler.label(text)
            bad = {n: (study.labels[n], got[n]) for n in CHEXPERT_LABELS if got[n] != study.labels[n]}
            assert not bad, f"{study.id}: {bad}\n{text}"


# ------------------------------------------------------------------------------------------------------------------
# on-the-fly dataset
# ------------------------------------------------------------------------------------------------------------------


def test_synthetic_report_dataset_items_and_epochs() -> None:
    from monai_r2gen.data.datasets import ReportCollate

    ds = SyntheticReportDataset(n_studies_per_epoch=4, seed=3, image_size=64)
    assert len(ds) == 4
    item = ds[1]
    assert item["image"].shape == (2, 1, 64, 64) and item["image"].dtype == torch.float32
    assert float(item["image"].min()) >= 0.0 and float(item["image"].max()) <= 1.0
    assert item["view_mask"].dtype == torch.bool and bool(item["view_mask"][0])
    assert bool(item["view_mask"][1]) == bool(item["image"][1].abs().sum() > 0)
    assert item["chexpert_labels"].shape == (len(CHEXPERT_LABELS),) and item["report"]
    again = ds[1]
    assert torch.equal(item["image"], again["image"]) and item["report"] == again["report"]
    ds.set_epoch(1)
    other = ds[1]
    assert not torch.equal(item["image"], other["image"]) and other["id"] != item["id"]
    # the on-the-fly stream never repeats the written dataset of the same seed
    assert render_study(3, 1, image_size=64).report.full != item["report_full"]
    batch = ReportCollate(pad_token_id=0)([ds[0], ds[1], ds[2]])
    assert batch["image"].shape == (3, 2, 1, 64, 64) and batch["view_mask"].shape == (3, 2)
    assert batch["chexpert_labels"].shape == (3, len(CHEXPERT_LABELS))
    frontal_only = SyntheticReportDataset(n_studies_per_epoch=2, seed=3, image_size=64, max_views=1)
    assert frontal_only[0]["image"].shape == (1, 1, 64, 64)
