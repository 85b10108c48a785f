"""Tests of collect_studies: grouping by Study Instance UID, view order, images, manifests and bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from monai_r2gen.data.dicom import make_radiograph_dataset, write_dataset
from monai_r2gen.data.studies import Study, collect_studies, order_views, read_view_info, view_rank
from monai_r2gen.errors import ManifestError, MultiFrameError, RadiographReadError


def _pixels(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4095, size=(16, 12), dtype=np.uint16)


def _write(path: Path, study_uid: str, view: str | None, number: int = 1, **kwargs) -> Path:
    ds = make_radiograph_dataset(_pixels(number), view_position=view, study_uid=study_uid, instance_number=number,
                                 **kwargs)  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    write_dataset(ds, path)
    return path


def test_study_folder_is_grouped_by_uid_and_frontal_view_comes_first(tmp_path: Path) -> None:
    uid_a, uid_b = generate_uid(), generate_uid()
    # names chosen so that alphabetical order is the wrong clinical order
    lat = _write(tmp_path / "in" / "a_lateral.dcm", uid_a, "LL", 1)
    pa = _write(tmp_path / "in" / "sub" / "z_pa.dcm", uid_a, "PA", 2)
    other = _write(tmp_path / "in" / "b_other.dcm", uid_b, "AP", 1)
    studies = collect_studies([tmp_path / "in"])
    assert [s.study_id for s in studies] == [uid_a, uid_b]
    first = studies[0]
    assert first.paths == [str(pa), str(lat)]
    assert first.view_positions == ["PA", "LL"]
    assert first.study_instance_uid == uid_a and first.ok and not first.errors
    assert studies[1].paths == [str(other)]


def test_files_of_one_study_given_separately_are_merged(tmp_path: Path) -> None:
    uid = generate_uid()
    lat = _write(tmp_path / "1.dcm", uid, "LATERAL", 1)
    ap = _write(tmp_path / "2.dcm", uid, "AP", 2)
    (study,) = collect_studies([lat, ap])
    assert study.paths == [str(ap), str(lat)]


def test_the_same_instance_twice_is_used_once(tmp_path: Path, rg1_uncompressed: Path) -> None:
    copy = tmp_path / "copy.dcm"
    copy.write_bytes(rg1_uncompressed.read_bytes())
    (study,) = collect_studies([rg1_uncompressed, tmp_path])
    assert study.paths == [str(rg1_uncompressed)]
    assert study.errors[0][0] == str(copy) and "SOP Instance UID" in study.errors[0][1]


def test_view_position_from_view_code_sequence(tmp_path: Path) -> None:
    uid = generate_uid()
    code_lat, code_pa = Dataset(), Dataset()
    code_lat.CodeMeaning = "left lateral"
    code_pa.CodeMeaning = "postero-anterior"
    lat = _write(tmp_path / "a.dcm", uid, None, 1, extra={"ViewCodeSequence": [code_lat]})
    pa = _write(tmp_path / "b.dcm", uid, None, 2, extra={"ViewCodeSequence": [code_pa]})
    assert read_view_info(lat).view_position == "LATERAL"
    (study,) = collect_studies([tmp_path])
    assert study.paths == [str(pa), str(lat)]


def test_view_rank_and_order() -> None:
    assert [view_rank(v) for v in ("PA", "ap", "LL", "RL", "LATERAL", None, "OBLIQUE")] == [0, 1, 2, 2, 2, 3, 3]
    assert order_views([]) == []


def test_png_is_one_study_and_duplicate_names_get_distinct_ids(tmp_path: Path) -> None:
    for folder in ("x", "y"):
        (tmp_path / folder).mkdir()
        Image.fromarray(np.full((8, 8), 100, dtype=np.uint8)).save(tmp_path / folder / "cxr.png")
    studies = collect_studies([tmp_path / "x" / "cxr.png", tmp_path / "y" / "cxr.png"])
    assert [s.study_id for s in studies] == ["cxr", "cxr_2"]
    assert all(s.source == "image" and s.study_instance_uid is None for s in studies)


def test_real_rg1_radiograph(rg1_uncompressed: Path) -> None:
    (study,) = collect_studies([rg1_uncompressed])
    assert study.paths == [str(rg1_uncompressed)]
    assert study.study_instance_uid and study.study_id == study.study_instance_uid


def test_bad_inputs_are_reported_per_file_and_the_rest_is_kept(tmp_path: Path) -> None:
    uid = generate_uid()
    good = _write(tmp_path / "study" / "good.dcm", uid, "PA")
    (tmp_path / "study" / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"garbage")
    sr = make_radiograph_dataset(_pixels(), study_uid=uid)
    for keyword in ("Rows", "Columns", "PixelData"):
        delattr(sr, keyword)
    sr.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    write_dataset(sr, tmp_path / "study" / "report_sr.dcm")
    (tmp_path / "notes.txt").write_text("not an image")
    studies = collect_studies([tmp_path / "study", tmp_path / "missing.dcm", tmp_path / "notes.txt"])
    by_id = {s.study_id: s for s in studies}
    assert by_id[uid].paths == [str(good)]
    reasons = dict(by_id[uid].errors)
    assert "not an image" in reasons[str(tmp_path / "study" / "report_sr.dcm")]
    failed = [s for s in studies if not s.ok]
    failed_paths = {path for s in failed for path, _ in s.errors}
    assert str(tmp_path / "missing.dcm") in failed_paths and str(tmp_path / "notes.txt") in failed_paths
    assert str(tmp_path / "study" / "broken.dcm") in failed_paths | {p for p, _ in by_id[uid].errors}


def test_multiframe_is_rejected_with_typed_error(tmp_path: Path) -> None:
    path = _write(tmp_path / "mf.dcm", generate_uid(), "PA", extra={"NumberOfFrames": 2})
    with pytest.raises(MultiFrameError, match="mf.dcm"):
        collect_studies([path], on_error="raise")
    (study,) = collect_studies([path])
    assert not study.ok and "multi-frame" in study.errors[0][1]


def test_raise_mode_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(RadiographReadError, match="nothing.png"):
        collect_studies([tmp_path / "nothing.png"], on_error="raise")
    with pytest.raises(ValueError):
        collect_studies([tmp_path], on_error="ignore")


def test_manifest_entries_become_studies_and_missing_views_are_listed(tmp_path: Path) -> None:
    Image.fromarray(np.full((8, 8), 50, dtype=np.uint8)).save(tmp_path / "f.png")
    manifest = tmp_path / "annotation.json"
    manifest.write_text(json.dumps({"test": [
        {"id": "s1", "report": "No acute disease.", "image_path": ["f.png", "gone.png"]},
        {"id": "s2", "report": "x", "image_path": ["gone2.png"]},
    ]}))  # fmt: skip
    s1, s2 = collect_studies([manifest])
    assert isinstance(s1, Study) and s1.study_id == "s1" and s1.reference == "No acute disease."
    assert s1.paths == [str(tmp_path / "f.png")] and s1.errors[0][0] == str(tmp_path / "gone.png")
    assert not s2.ok and s2.source == "error"
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    (failed,) = collect_studies([bad])
    assert not failed.ok and failed.errors[0][0] == str(bad)
    with pytest.raises(ManifestError):
        collect_studies([bad], on_error="raise")
