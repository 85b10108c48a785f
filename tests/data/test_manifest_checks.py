"""Manifest checks (issue 14, item 6): entries without a report, repeated study ids, over-long reports.

Under ``on_error="skip"`` (check-data) each is a logged skip with its reason in ``ReportDataset.skipped``; under
``on_error="raise"`` a ManifestError naming the manifest and the study.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from monai_r2gen.data.datasets import MAX_REPORT_CHARS, REPORT_SPLITS, ReportDataset, read_manifest
from monai_r2gen.errors import ManifestError, ModelConfigError

REPORT = "The heart is normal in size. The lungs are clear."
SECRET = "ZZPATIENTNAMEZZ"  # must never reach the log
LONG = SECRET + " " + "No pleural effusion. " * (1_000_000 // 21)  # a 1 MB report


def _entry(study: str, root: Path, **fields) -> dict:
    path = root / f"{study}.png"
    if not path.exists():
        Image.fromarray(np.full((8, 8), 100, dtype=np.uint8)).save(path)
    return {"id": study, "image_path": [path.name], **fields}


def _write(root: Path, ann: dict) -> Path:
    path = root / "annotation.json"
    path.write_text(json.dumps(ann))
    return path


@pytest.fixture()
def bad_manifest(tmp_path: Path) -> Path:
    """One annotation.json with every problem, beside good studies."""
    ann = {
        "train": [
            _entry("good1", tmp_path, report=REPORT),
            _entry("noreport", tmp_path),
            _entry("empty", tmp_path, report="   "),
            _entry("nullreport", tmp_path, report=None),
            _entry("number", tmp_path, report=3),
            _entry("long", tmp_path, report=LONG),
            _entry("good1", tmp_path, report=REPORT),  # repeated within train
            _entry("good2", tmp_path, report=REPORT),
        ],
        "val": [_entry("good3", tmp_path, report=REPORT)],
        "test": [_entry("good2", tmp_path, report=REPORT), _entry("good4", tmp_path, report=REPORT)],  # leak
    }
    return _write(tmp_path, ann)


def test_skip_mode_records_each_problem_with_its_reason(bad_manifest: Path, caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.WARNING, logger="monai_r2gen.data.datasets"):
        train = ReportDataset(bad_manifest, split="train", on_error="skip")
    assert [item["id"] for item in train.data] == ["good1", "good2"]
    reasons = {study: reason for study, _, reason in train.skipped}
    assert set(reasons) == {"noreport", "empty", "nullreport", "number", "long", "good1"}
    assert all(path == str(bad_manifest) for _, path, _ in train.skipped)
    assert train.num_skipped == 6  # the repeated good1 once, its first occurrence kept
    assert reasons["noreport"] == reasons["empty"] == reasons["nullreport"] == "no report"
    assert "'report' must be a string, got int" in reasons["number"]
    assert f"{len(LONG)} characters" in reasons["long"] and str(MAX_REPORT_CHARS) in reasons["long"]
    assert "duplicated study id within split 'train'" in reasons["good1"]
    # logged with the id and the reason, never the report text
    logged = [r.getMessage() for r in caplog.records]
    assert any("long" in m and "characters" in m for m in logged)
    assert not any(SECRET in m for m in logged)

    test = ReportDataset(bad_manifest, split="test", on_error="skip")
    assert [item["id"] for item in test.data] == ["good4"]
    ((study, path, reason),) = test.skipped
    assert (study, path) == ("good2", str(bad_manifest))
    assert "in split 'test', already in split 'train'" in reason
    val = ReportDataset(bad_manifest, split="val", on_error="skip")
    assert val.skipped == [] and len(val) == 1  # problems of other splits are listed with their own split


@pytest.mark.parametrize(
    ("ann", "match"),
    [
        ({"train": [{"id": "a", "report": REPORT}, {"id": "b"}]}, "study 'b': no report"),
        ({"train": [{"id": "a", "report": REPORT}, {"id": "b", "report": ""}]}, "study 'b': no report"),
        ({"train": [{"id": "b", "report": ["x"]}]}, r"'report' must be a string, got list \(study 'b'\)"),
        ({"train": [{"id": "b", "report": LONG}]}, "study 'b': report of .* characters is longer than the limit"),
        ({"train": [{"id": "b", "report": REPORT}, {"id": "b", "report": REPORT}]}, "within split 'train': 'b'"),
        ({"train": [{"id": "b", "report": REPORT}], "test": [{"id": "b", "report": REPORT}]},
         "in split 'test', already in split 'train': 'b'"),
    ],
)  # fmt: skip
def test_raise_mode_names_the_manifest_and_the_study(tmp_path: Path, ann: dict, match: str):
    ann = {split: [_entry(e.pop("id"), tmp_path, **e) for e in entries] for split, entries in ann.items()}
    path = _write(tmp_path, ann)
    with pytest.raises(ManifestError, match=match) as info:
        ReportDataset(path, split="train", on_error="raise")
    assert info.value.path == str(path)


def test_repeated_ids_are_refused_wherever_the_manifest_is_read(tmp_path: Path, bad_manifest: Path):
    # the whole manifest is checked, whatever the split asked for: evaluate and training read it this way
    root = tmp_path / "leak"
    root.mkdir()
    leak = {"train": [_entry("a", root, report=REPORT), _entry("b", root, report=REPORT)],
            "test": [_entry("b", root, report=REPORT)]}  # fmt: skip
    path = _write(root, leak)
    with pytest.raises(ManifestError, match="'test', already in split 'train': 'b'") as info:
        read_manifest(path, split="train")
    assert info.value.path == str(path)
    skipped: list = []
    items = read_manifest(bad_manifest, skipped=skipped)
    assert len({item["id"] for item in items}) == len(items)
    assert [s[0] for s in skipped] == ["number", "good1", "good2"]  # report checks are the dataset's, not these


def test_a_list_of_items_is_checked_for_repeats_among_its_items(tmp_path: Path):
    items = [_entry("a", tmp_path, report=REPORT, split="train"), _entry("a", tmp_path, report=REPORT, split="train")]
    with pytest.raises(ManifestError, match="<items>.*duplicated study id within split 'train': 'a'"):
        ReportDataset(items, image_root=tmp_path)
    ds = ReportDataset(items, image_root=tmp_path, on_error="skip")
    assert len(ds) == 1 and ds.skipped[0][0] == "a" and "duplicated" in ds.skipped[0][2]


def test_mimic_entries_of_one_study_are_not_repeats(tmp_path: Path):
    entry = {"study_id": 50414267, "subject_id": 10000032, "report": REPORT}
    ann = {"train": [_entry("img1", tmp_path, **entry), _entry("img2", tmp_path, **entry)],
           "test": [_entry("img3", tmp_path, study_id=50000001, subject_id=1, report=REPORT)]}  # fmt: skip
    path = _write(tmp_path, ann)
    ds = ReportDataset(path, split="train", on_error="raise")
    assert [(item["id"], item["source_ids"]) for item in ds.data] == [("50414267", ["img1", "img2"])]
    assert len(read_manifest(path, group_studies=False)) == 3


def test_reports_are_needed_only_where_they_are_used(tmp_path: Path):
    assert REPORT_SPLITS == ("train", "val", "test")
    # an inference manifest: no split, no report
    (tmp_path / "infer.jsonl").write_text("".join(json.dumps(_entry(s, tmp_path)) + "\n" for s in ("a", "b")))
    ds = ReportDataset(tmp_path / "infer.jsonl")
    assert len(ds) == 2 and ds.skipped == []
    # a split of another name keeps the old rule: dropped (and recorded) only when other studies have a report
    rows = [_entry("a", tmp_path, report=REPORT, split="extra"), _entry("b", tmp_path, split="extra")]
    assert ReportDataset(rows, image_root=tmp_path).skipped == [("b", "<items>", "no report")]
    # require_report overrides the split rule both ways
    with pytest.raises(ManifestError, match="study 'a': no report"):
        ReportDataset(tmp_path / "infer.jsonl", require_report=True)
    no_reports = [_entry("a", tmp_path, split="test"), _entry("b", tmp_path, split="test")]
    with pytest.raises(ManifestError, match="no report"):
        ReportDataset(no_reports, image_root=tmp_path)
    assert len(ReportDataset(no_reports, image_root=tmp_path, require_report=False)) == 2


def test_the_report_limit_is_configurable(tmp_path: Path):
    rows = [_entry("a", tmp_path, report=LONG, split="train")]
    assert len(ReportDataset(rows, image_root=tmp_path, max_report_chars=None)) == 1
    with pytest.raises(ManifestError, match="limit of 100 "):
        ReportDataset([_entry("a", tmp_path, report="x" * 101, split="train")], image_root=tmp_path,
                      max_report_chars=100)  # fmt: skip
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ModelConfigError, match="max_report_chars"):
            ReportDataset(rows, image_root=tmp_path, max_report_chars=bad)
    with pytest.raises(ModelConfigError, match="require_report"):
        ReportDataset(rows, image_root=tmp_path, require_report="yes")


def test_the_synthetic_data_set_passes_every_check(tmp_path: Path):
    from monai_r2gen.data.synthetic import generate_dataset

    generate_dataset(tmp_path, n_studies=12, seed=0, image_size=64, formats=("png",))
    ann = tmp_path / "annotation.json"
    read_manifest(ann)  # no repeated id
    for split in REPORT_SPLITS:
        for on_error in ("raise", "skip"):
            ds = ReportDataset(ann, split=split, on_error=on_error)
            assert ds.skipped == [] and len(ds) > 0


def test_check_data_lists_the_problems(bad_manifest: Path, capsys: pytest.CaptureFixture):
    from monai_r2gen.cli import main

    code = main(["check-data", str(bad_manifest), "--split", "train", "--spatial-size", "8", "--strict"])
    out = capsys.readouterr().out
    assert code == 1
    for study, reason in [("noreport", "no report"), ("number", "must be a string"), ("long", "characters"),
                          ("good1", "duplicated study id")]:  # fmt: skip
        assert any(f"skipped {study}:" in line and reason in line for line in out.splitlines()), (study, out)
    main(["check-data", str(bad_manifest), "--split", "test", "--spatial-size", "8"])
    assert "already in split 'train'" in capsys.readouterr().out
