"""MONAI Deploy app: run in its own venv on the real RG1 study and on a synthetic two-view study; validate the SR."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pydicom
import pytest

from monai_r2gen.data.studies import collect_studies
from monai_r2gen.inference import ReportInference

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RUN_TIMEOUT = 300
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"


def _run_app(deploy_venv: Path, study: Path, model: Path, out: Path) -> tuple[Path, dict]:
    env = {**os.environ, "PATH": f"{deploy_venv / 'bin'}:{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    start = time.perf_counter()
    done = subprocess.run([str(deploy_venv / "bin" / "python"), "-m", "monai_r2gen.apps.deploy.app", "-i", str(study),
                           "-m", str(model), "-o", str(out)], capture_output=True, text=True, env=env,
                          timeout=RUN_TIMEOUT, cwd=out.parent)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    print(f"[deploy app on {study.name}: {time.perf_counter() - start:.1f} s]")
    (sr,) = sorted(out.glob("*.dcm"))
    result = json.loads(sr.with_suffix(".json").read_text(encoding="utf-8"))
    return sr, result


def _dciodvfy(deploy_venv: Path, sr: Path) -> str:
    done = subprocess.run([str(deploy_venv / "bin" / "dciodvfy"), str(sr)], capture_output=True, text=True, timeout=60)
    return done.stdout + done.stderr


def _items(ds, keyword_value):
    """Content items (depth first) whose concept name code value is ``keyword_value``."""
    for item in ds.get("ContentSequence", []):
        if item.ConceptNameCodeSequence[0].CodeValue == keyword_value:
            yield item
        yield from _items(item, keyword_value)


def _check_sr(deploy_venv: Path, sr: Path, result: dict, study_dir: Path, model: Path) -> pydicom.Dataset:
    (study,) = collect_studies([study_dir])
    (expected,) = ReportInference(model, device="cpu")([{"id": study.study_id, "image": study.paths}])

    report = _dciodvfy(deploy_venv, sr)
    errors = [line for line in report.splitlines() if line.startswith("Error")]
    assert not errors, report
    assert "BasicTextSR" in report

    ds = pydicom.dcmread(sr)
    assert ds.SOPClassUID == BASIC_TEXT_SR and ds.Modality == "SR"
    assert ds.StudyInstanceUID == study.study_instance_uid == result["study_instance_uid"]
    (text,) = _items(ds, "121071")  # Findings
    assert text.TextValue == expected["report"] == result["report"]
    assert ds.ContentSequence[0].ConceptNameCodeSequence[0].CodeMeaning == "Observer Type"
    (review,) = _items(ds, "121106")  # Comment: machine-generated, for a radiologist to review
    assert "Machine-generated" in review.TextValue and "radiologist" in review.TextValue
    assert ds.VerificationFlag == "UNVERIFIED" and ds.PreliminaryFlag == "PRELIMINARY"

    # the model: equipment and content name the same device UID
    equipment = ds.ContributingEquipmentSequence[0]
    (observer_uid,) = _items(ds, "121012")
    assert equipment.DeviceUID == observer_uid.UID == result["model"]["uid"]
    assert equipment.ManufacturerModelName == result["model"]["name"] == model.name

    # evidence: every source instance of the study; images referenced from the text, frontal first
    sources = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in study.paths}
    evidence = ds.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == study.study_instance_uid
    referenced = {ref.ReferencedSOPInstanceUID for s in evidence.ReferencedSeriesSequence for ref in
                  s.ReferencedSOPSequence}  # fmt: skip
    assert referenced == set(sources)
    image_refs = [item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for item in text.ContentSequence]
    assert [sources[uid] for uid in image_refs] == study.paths
    return ds


def test_deploy_app_on_real_rg1(tmp_path, deploy_venv, tiny_model_dir, rg1_uncompressed) -> None:
    study_dir = tmp_path / "rg1"
    study_dir.mkdir()
    shutil.copy(rg1_uncompressed, study_dir / "RG1_UNCR.dcm")
    sr, result = _run_app(deploy_venv, study_dir, tiny_model_dir, tmp_path / "out")
    ds = _check_sr(deploy_venv, sr, result, study_dir, tiny_model_dir)
    source = pydicom.dcmread(rg1_uncompressed, stop_before_pixels=True)
    for keyword in ("StudyDate", "StudyTime", "AccessionNumber", "StudyID", "PatientID"):
        assert ds.get(keyword) == source.get(keyword), keyword
    assert result["view_positions"] == ["PA"]


def test_deploy_app_on_synthetic_two_view_study(tmp_path, deploy_venv, tiny_model_dir, synthetic_study) -> None:
    sr, result = _run_app(deploy_venv, synthetic_study, tiny_model_dir, tmp_path / "out")
    _check_sr(deploy_venv, sr, result, synthetic_study, tiny_model_dir)
    assert [Path(p).name for p in result["views"]] == ["b_frontal.dcm", "a_lateral.dcm"]
    assert result["view_positions"] == ["PA", "LL"]
