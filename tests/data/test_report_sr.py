"""The report SR builder: study and patient copied, evidence, model identity, review statement, valid DICOM."""

from __future__ import annotations

import datetime
import shutil
import subprocess

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from monai_r2gen.data.dicom import make_radiograph_dataset, write_dataset
from monai_r2gen.data.report_sr import (
    BASIC_TEXT_SR,
    SR_SERIES_DESCRIPTION,
    SourceInstance,
    build_report_sr,
    dataset_bytes,
    evidence_sequence,
    model_identity,
    read_sources,
    review_statement,
    sr_text,
    views_in_order,
    write_report_sr,
)

MODEL = {"name": "cxr-tiny", "version": "0123456789abcdef", "uid": "2.25.1234567890", "creator": "monai-r2gen"}
REPORT = "Keine Ergüsse. Herz normal groß – no pleural effusion.\nHeart size normal."


@pytest.fixture
def study(tmp_path):
    """Two DX views (lateral written first) of one study, patient attributes set; returns the file paths."""
    study_uid, series_uid = generate_uid(), generate_uid()
    paths = []
    for number, view in enumerate(("LL", "PA"), start=1):
        pixels = np.full((32, 32), 1000 + number, dtype=np.uint16)
        extra = {"AccessionNumber": "A-99", "PatientAge": "061Y"}
        ds = make_radiograph_dataset(pixels, view_position=view, study_uid=study_uid, series_uid=series_uid,
                                     instance_number=number, patient_id="P-0042", patient_name="Doe^Jane",
                                     study_id="S7", extra=extra)  # fmt: skip
        path = tmp_path / f"{number}_{view}.dcm"
        write_dataset(ds, path)
        paths.append(path)
    return paths


def _items(ds, code_value):
    for item in ds.get("ContentSequence", []):
        if item.ConceptNameCodeSequence[0].CodeValue == code_value:
            yield item
        yield from _items(item, code_value)


def _built(paths, views=None, **kwargs):
    source, instances = read_sources(paths)
    ordered = views_in_order(instances, views if views is not None else reversed(paths))
    return source, instances, build_report_sr(REPORT, MODEL, instances, ordered, source=source, **kwargs)


def test_sr_is_in_the_source_study_with_patient_and_study_copied(study) -> None:
    source, _, ds = _built(study)
    assert ds.SOPClassUID == BASIC_TEXT_SR == ds.file_meta.MediaStorageSOPClassUID and ds.Modality == "SR"
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    for keyword in ("StudyInstanceUID", "PatientName", "PatientID", "StudyID", "AccessionNumber", "StudyDate",
                    "StudyTime", "PatientAge"):  # fmt: skip
        assert str(ds[keyword].value) == str(source[keyword].value), keyword
    assert ds.SeriesInstanceUID != source.SeriesInstanceUID and ds.SOPInstanceUID != source.SOPInstanceUID
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert "StudyDescription" not in ds  # type 3, absent from the source: not written
    assert ds.PatientBirthDate == ""  # type 2: present, empty


def test_evidence_and_image_references(study) -> None:
    _, instances, ds = _built(study)
    (evidence,) = ds.CurrentRequestedProcedureEvidenceSequence
    assert evidence.StudyInstanceUID == instances[0].study_instance_uid
    (series,) = evidence.ReferencedSeriesSequence
    assert [r.ReferencedSOPInstanceUID for r in series.ReferencedSOPSequence] == [i.sop_instance_uid for i in instances]
    (findings,) = _items(ds, "121071")
    used = [item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for item in findings.ContentSequence]
    assert used == [instances[1].sop_instance_uid, instances[0].sop_instance_uid]  # the order given (PA first)
    assert {item.RelationshipType for item in findings.ContentSequence} == {"INFERRED FROM"}


def test_evidence_groups_by_study_and_series_once_each() -> None:
    a = SourceInstance("1.1", "1.1.1", "1.2.840.10008.5.1.4.1.1.1", "1.1.1.1")
    b = SourceInstance("1.1", "1.1.2", "1.2.840.10008.5.1.4.1.1.1", "1.1.2.1")
    c = SourceInstance("1.2", "1.2.1", "1.2.840.10008.5.1.4.1.1.1", "1.2.1.1")
    items = evidence_sequence([a, b, a, c])
    assert [i.StudyInstanceUID for i in items] == ["1.1", "1.2"]
    assert [len(s.ReferencedSOPSequence) for s in items[0].ReferencedSeriesSequence] == [1, 1]


def test_model_identity_review_statement_and_flags(study) -> None:
    _, _, ds = _built(study)
    (equipment,) = ds.ContributingEquipmentSequence
    assert equipment.ManufacturerModelName == MODEL["name"] and equipment.SoftwareVersions == MODEL["version"]
    assert equipment.DeviceUID == MODEL["uid"] and equipment.Manufacturer == "monai-r2gen"
    assert equipment.PurposeOfReferenceCodeSequence[0].CodeMeaning == "Processing Algorithm"
    assert [i.UID for i in _items(ds, "121012")] == [MODEL["uid"]]
    assert [i.TextValue for i in _items(ds, "121013")] == [MODEL["name"]]
    assert [i.TextValue for i in _items(ds, "111003")] == [MODEL["version"]]
    assert next(_items(ds, "121005")).ConceptCodeSequence[0].CodeMeaning == "Device"
    (comment,) = _items(ds, "121106")
    assert comment.TextValue == review_statement(MODEL)
    assert "Machine-generated" in comment.TextValue and "radiologist must review" in comment.TextValue
    assert MODEL["name"] in comment.TextValue and MODEL["version"] in comment.TextValue
    assert (
        ds.VerificationFlag == "UNVERIFIED" and ds.PreliminaryFlag == "PRELIMINARY" and ds.CompletionFlag == "COMPLETE"
    )
    assert ds.SeriesDescription == SR_SERIES_DESCRIPTION and len(SR_SERIES_DESCRIPTION) <= 64
    assert ds.ConceptNameCodeSequence[0].CodeValue == "18748-4"


def test_bytes_round_trip_keeps_utf8_text(study) -> None:
    _, _, ds = _built(study)
    back = pydicom.dcmread(pydicom.filebase.DicomBytesIO(dataset_bytes(ds)))
    assert next(_items(back, "121071")).TextValue == REPORT
    assert str(back.PatientName) == "Doe^Jane" and back.SOPInstanceUID == ds.SOPInstanceUID
    assert back.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian


def test_write_replaces_the_target_only_when_complete(study, tmp_path) -> None:
    _, _, ds = _built(study)
    out = write_report_sr(ds, tmp_path / "out" / "sr.dcm")
    assert pydicom.dcmread(out).SOPInstanceUID == ds.SOPInstanceUID
    assert [p.name for p in out.parent.iterdir()] == ["sr.dcm"]  # no temporary file left


def test_new_study_when_no_source(study) -> None:
    _, instances = read_sources(study)
    ds = build_report_sr("No acute disease.", MODEL, instances, now=datetime.datetime(2024, 5, 6, 7, 8, 9))
    assert ds.StudyInstanceUID != instances[0].study_instance_uid
    assert ds.PatientName == "" and ds.PatientID == ""
    assert ds.ContentDate == "20240506" and ds.ContentTime == "070809"
    (findings,) = _items(ds, "121071")
    assert "ContentSequence" not in findings  # no view given


def test_errors_and_helpers(study) -> None:
    with pytest.raises(ValueError, match="uid"):
        build_report_sr("x", {"name": "m", "version": "1"}, [])
    with pytest.raises(ValueError, match="UIDs"):
        SourceInstance.from_dataset(pydicom.Dataset())
    with pytest.raises(ValueError, match="no source"):
        read_sources([])
    assert sr_text("a\x00b\x1bc\td\r\ne") == "abc\td\r\ne"
    _, instances = read_sources(study)
    assert views_in_order(instances, [study[1], "/nowhere.dcm"]) == [instances[1]]
    identity = model_identity({"model": {"name": "m" * 80, "fingerprint": "sha256:" + "ab" * 32}}, "/unused")
    assert identity["name"] == "m" * 64 and identity["version"] == "ab" * 8
    same = model_identity({"model": {"name": "x", "fingerprint": "sha256:" + "ab" * 32}}, "/")
    other = model_identity({"model": {"name": "x", "fingerprint": "sha256:" + "cd" * 32}}, "/")
    assert identity["uid"] == same["uid"] != other["uid"]  # the same model, the same Device UID
    assert identity["uid"].startswith("2.25.") and len(identity["uid"]) <= 64


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) not installed")
def test_dciodvfy_finds_no_error(study, tmp_path) -> None:
    _, _, ds = _built(study)
    path = write_report_sr(ds, tmp_path / "sr.dcm")
    done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    report = done.stdout + done.stderr
    assert "BasicTextSR" in report and not [line for line in report.splitlines() if line.startswith("Error")], report
