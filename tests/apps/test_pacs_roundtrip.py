"""The PACS round trip against a real Orthanc with its DICOMweb plugin, started here on 127.0.0.1.

Orthanc gets its own configuration and storage folder under the test's temporary folder, HTTP on a free port with
remote access refused, the DICOM port off, and is stopped by process id. Two studies are stored over STOW-RS: the real
RG1 chest CR (pydicom-data) and a phantom PA + lateral DX study with patient attributes of its own. Then

- ``monai-r2gen pacs`` (its handler, in this process) finds both (QIDO-RS), retrieves them (WADO-RS), writes the
  reports and stores the SRs (STOW-RS); QIDO finds each SR in its study, WADO returns it, ``dciodvfy`` finds no error,
  the SR references the source images, names the model and says it needs a radiologist's review, and no log line
  names a patient;
- the MONAI Label app, started with ``--studies <Orthanc DICOMweb root>``, answers ``POST /infer/report`` on each
  study's series (and on a Study Instance UID) with the report ``monai-r2gen generate`` writes.

Skipped (with the reason) only where Orthanc or its DICOMweb plugin is not installed: ``scripts/setup_orthanc.sh``.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pydicom
import pytest

from monai_r2gen.apps.monailabel import APP_DIR
from monai_r2gen.data.dicom import write_dataset
from monai_r2gen.data.report_sr import BASIC_TEXT_SR, SR_SERIES_DESCRIPTION
from monai_r2gen.data.studies import collect_studies
from monai_r2gen.inference import ReportInference, model_fingerprint
from monai_r2gen.pacs.dicomweb import DicomWebClient, json_value, uids_of

from .servers import REQUEST_TIMEOUT, infer_report, stop_process_group

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PHANTOM_PATIENT = ("Phantom^Roundtrip", "PHANTOM-4711")
START_TIMEOUT = 60.0
LABEL_START_TIMEOUT = 180.0
PLUGIN_CANDIDATES = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so", "/usr/lib/orthanc/libOrthancDicomWeb.so*")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _orthanc_binary() -> str | None:
    """The Orthanc server (Debian installs it in /usr/sbin, which a user's PATH may lack)."""
    found = shutil.which("Orthanc")
    if found is None and os.access("/usr/sbin/Orthanc", os.X_OK):
        found = "/usr/sbin/Orthanc"
    return found


def _dicomweb_plugin() -> str | None:
    for pattern in PLUGIN_CANDIDATES:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


def _dciodvfy() -> str | None:
    return shutil.which("dciodvfy")


def _wait_until_up(process: subprocess.Popen, url: str, log: Path, timeout: float, what: str) -> float:
    """Seconds until ``url`` answers 200; fails the test with the log's tail if the process exits or time runs out."""
    start = time.monotonic()
    while True:
        if process.poll() is not None:
            pytest.fail(f"{what} exited ({process.returncode}):\n{log.read_text(errors='replace')[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                if answer.status == 200:
                    return time.monotonic() - start
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() - start > timeout:
            pytest.fail(f"{what} not up in {timeout} s:\n{log.read_text(errors='replace')[-4000:]}")
        time.sleep(0.25)


def orthanc_config(root: Path, http_port: int, plugin: str) -> dict:
    """The Orthanc configuration of the test (docs/deployment.md shows the same)."""
    return {
        "Name": "monai-r2gen-test",
        "StorageDirectory": str(root / "storage"),
        "IndexDirectory": str(root / "storage"),
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,  # only 127.0.0.1 may connect
        "AuthenticationEnabled": False,
        "DicomServerEnabled": False,  # no DICOM (DIMSE) port at all
        "WebDavEnabled": False,
        "ExecuteLuaEnabled": False,
        "SaveJobs": False,
        "Plugins": [plugin],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
    }


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    """A running Orthanc with the DICOMweb plugin; yields its DICOMweb root URL."""
    binary, plugin = _orthanc_binary(), _dicomweb_plugin()
    if binary is None or plugin is None:
        missing = "the Orthanc binary" if binary is None else "the Orthanc DICOMweb plugin (libOrthancDicomWeb.so)"
        pytest.skip(f"{missing} is not installed; scripts/setup_orthanc.sh installs orthanc and orthanc-dicomweb")
    root = tmp_path_factory.mktemp("orthanc")
    (root / "storage").mkdir()
    port = _free_port()
    config = root / "orthanc.json"
    config.write_text(json.dumps(orthanc_config(root, port, plugin), indent=2), encoding="utf-8")
    log_path = root / "orthanc.log"
    log = open(log_path, "w")  # noqa: SIM115 - closed in the finally below
    process = subprocess.Popen([binary, str(config)], stdout=log, stderr=subprocess.STDOUT, cwd=root,
                               start_new_session=True)  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}/dicom-web"
        seconds = _wait_until_up(process, f"{url}/studies", log_path, START_TIMEOUT, "Orthanc")
        print(f"[Orthanc up in {seconds:.1f} s]")
        yield url
    finally:
        stop_process_group(process)
        log.close()


@pytest.fixture(scope="module")
def stored(orthanc, tmp_path_factory, rg1_uncompressed, synthetic_study):
    """The RG1 radiograph and the phantom two-view study (patient attributes of its own), stored over STOW-RS.

    Returns ``{study UID: [source files]}`` and the patient names and IDs of the inputs.
    """
    phantom = tmp_path_factory.mktemp("phantom")
    for path in sorted(synthetic_study.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        ds.PatientName, ds.PatientID = PHANTOM_PATIENT
        write_dataset(ds, phantom / path.name)
    files = [Path(rg1_uncompressed), *sorted(phantom.glob("*.dcm"))]
    start = time.perf_counter()
    with DicomWebClient(orthanc) as client:
        answer = client.store_instances([f.read_bytes() for f in files])
    print(f"[STOW-RS of {len(files)} instances: {time.perf_counter() - start:.1f} s]")
    assert len(answer["00081199"]["Value"]) == len(files)
    by_study: dict[str, list[Path]] = {}
    patients = set()
    for file in files:
        ds = pydicom.dcmread(file, stop_before_pixels=True)
        by_study.setdefault(ds.StudyInstanceUID, []).append(file)
        patients.update({str(ds.PatientName), str(ds.PatientID), str(ds.PatientName).split("^")[0]})
    return by_study, patients


def _expected_reports(model: Path, by_study: dict[str, list[Path]]) -> dict[str, str]:
    """The reports ``monai-r2gen generate`` writes for the source files (same inference path, this venv)."""
    studies = [s for s in collect_studies([p for paths in by_study.values() for p in paths]) if s.ok]
    results = ReportInference(model, device="cpu")(studies)
    return {r["study_instance_uid"]: r["report"] for r in results}


def _items(ds, code_value: str):
    for item in ds.get("ContentSequence", []):
        if item.ConceptNameCodeSequence[0].CodeValue == code_value:
            yield item
        yield from _items(item, code_value)


def test_pacs_command_stores_a_valid_sr_in_each_study(orthanc, stored, tiny_model_dir, tmp_path, caplog, capsys):
    from monai_r2gen.pacs.cli import main

    by_study, patients = stored
    caplog.set_level(logging.DEBUG)
    start = time.perf_counter()
    code = main(["--url", orthanc, "--model", str(tiny_model_dir), "--device", "cpu", "--sr-dir", str(tmp_path / "sr")])
    seconds = time.perf_counter() - start
    out, err = capsys.readouterr()
    logs = caplog.text + out + err
    assert code == 0, err
    outcomes = {o["study_instance_uid"]: o for o in map(json.loads, out.splitlines())}
    assert set(outcomes) == set(by_study) and {o["status"] for o in outcomes.values()} == {"stored"}, outcomes
    expected = _expected_reports(tiny_model_dir, by_study)
    version = model_fingerprint(tiny_model_dir).split(":")[-1][:16]

    retrieved = []
    with DicomWebClient(orthanc) as client:
        for study_uid, files in by_study.items():
            # QIDO: the SR series is in the source study; WADO: the SR itself
            (series,) = client.search_series(study_uid, {"Modality": "SR"})
            series_uid = json_value(series, "SeriesInstanceUID")
            (sop_uid,) = uids_of(client.search_instances(study_uid, series_uid), "SOPInstanceUID")
            assert sop_uid == outcomes[study_uid]["sr_sop_instance_uid"]
            path = tmp_path / f"wado-{sop_uid}.dcm"
            path.write_bytes(client.retrieve_instance(study_uid, series_uid, sop_uid))
            ds = pydicom.dcmread(path)

            sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
            assert ds.SOPClassUID == BASIC_TEXT_SR and ds.Modality == "SR"
            assert ds.StudyInstanceUID == study_uid
            for keyword in ("PatientID", "PatientName", "StudyDate", "StudyTime", "AccessionNumber", "StudyID"):
                assert str(ds.get(keyword, "")) == str(sources[0].get(keyword, "")), keyword
            evidence = ds.CurrentRequestedProcedureEvidenceSequence
            referenced = {ref.ReferencedSOPInstanceUID for study in evidence for s in study.ReferencedSeriesSequence
                          for ref in s.ReferencedSOPSequence}  # fmt: skip
            assert referenced == {s.SOPInstanceUID for s in sources}
            (findings,) = _items(ds, "121071")
            assert findings.TextValue == expected[study_uid] == outcomes[study_uid]["report"]
            used = [item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for item in findings.ContentSequence]
            assert used == outcomes[study_uid]["views"] and set(used) == referenced
            # the model: name and version, in the equipment and in the content tree
            equipment = ds.ContributingEquipmentSequence[0]
            assert equipment.ManufacturerModelName == tiny_model_dir.name and equipment.SoftwareVersions == version
            assert [i.TextValue for i in _items(ds, "121013")] == [tiny_model_dir.name]
            assert [i.TextValue for i in _items(ds, "111003")] == [version]
            # machine-generated, needs a radiologist's review
            (comment,) = _items(ds, "121106")
            assert "Machine-generated" in comment.TextValue and "radiologist must review" in comment.TextValue
            assert ds.VerificationFlag == "UNVERIFIED" and ds.PreliminaryFlag == "PRELIMINARY"
            assert ds.SeriesDescription == SR_SERIES_DESCRIPTION
            if len(files) == 2:  # the phantom study: frontal first
                positions = {s.SOPInstanceUID: s.ViewPosition for s in sources}
                assert [positions[u] for u in used] == ["PA", "LL"]
            retrieved.append(path)

    assert "STOW-RS" in logs and all(uid in logs for uid in by_study)  # the logs were captured
    named = [p for p in patients if p and p in logs]
    assert not named, f"patient identifiers in the logs: {named}"

    # a second run finds the SRs and writes nothing
    capsys.readouterr()
    assert main(["--url", orthanc, "--model", str(tiny_model_dir), "--device", "cpu"]) == 0
    again, _ = capsys.readouterr()
    assert {json.loads(line)["status"] for line in again.splitlines()} == {"skipped"}
    print(f"[monai-r2gen pacs on {len(by_study)} studies: {seconds:.1f} s]")

    dciodvfy = _dciodvfy()
    if dciodvfy is None:
        pytest.skip("dciodvfy (dicom3tools) is not installed, so the SR was not validated: scripts/setup_orthanc.sh")
    for sr in [*retrieved, *sorted((tmp_path / "sr").glob("*.dcm"))]:
        done = subprocess.run([dciodvfy, str(sr)], capture_output=True, text=True, timeout=60)
        report = done.stdout + done.stderr
        assert "BasicTextSR" in report and not [line for line in report.splitlines() if line.startswith("Error")], (
            report
        )


# ----------------------------------------------------------------------------------------------------------------
# MONAI Label with Orthanc as its datastore
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def label_server(orthanc, stored, tmp_path_factory, label_venv, tiny_model_dir):
    """The MONAI Label app with Orthanc's DICOMweb root as its studies; yields (base URL, server log path)."""
    root = tmp_path_factory.mktemp("monailabel-dicomweb")
    app = root / "app"
    app.mkdir()
    shutil.copy(APP_DIR / "main.py", app / "main.py")
    port = _free_port()
    command = [str(label_venv / "bin" / "python"), "-m", "monailabel.main", "start_server", "--app", str(app),
               "--studies", orthanc, "--conf", "model_dir", str(tiny_model_dir), "--conf", "device", "cpu",
               "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    env = {**os.environ, "PATH": f"{label_venv / 'bin'}:{os.environ['PATH']}",
           "MONAI_LABEL_DATASTORE_CACHE_PATH": str(root / "cache")}  # fmt: skip
    env.pop("PYTHONPATH", None)
    log_path = root / "server.log"
    log = open(log_path, "w")  # noqa: SIM115 - closed in the finally below
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        seconds = _wait_until_up(process, f"{base}/info/", log_path, LABEL_START_TIMEOUT, "MONAI Label")
        print(f"[MONAI Label (DICOMweb datastore) up in {seconds:.1f} s]")
        yield base, log_path
    finally:
        stop_process_group(process)
        log.close()


def test_monailabel_infers_on_the_series_of_orthanc(label_server, stored, tiny_model_dir, orthanc) -> None:
    base, log_path = label_server
    by_study, patients = stored
    expected = _expected_reports(tiny_model_dir, by_study)
    with urllib.request.urlopen(f"{base}/datastore/?output=all", timeout=REQUEST_TIMEOUT) as answer:
        assert answer.status == 200
    with DicomWebClient(orthanc) as client:
        for study_uid, files in by_study.items():
            images = [s for s in client.search_series(study_uid) if json_value(s, "Modality") in ("CR", "DX")]
            (series_uid,) = uids_of(images, "SeriesInstanceUID")
            start = time.perf_counter()
            status, answer = infer_report(base, series_uid)
            print(f"[POST /infer/report on a series of {len(files)} view(s): {time.perf_counter() - start:.1f} s]")
            assert status == 200, answer
            assert answer["report"] == expected[study_uid]
            assert answer["study_instance_uid"] == study_uid and len(answer["views"]) == len(files)
            if len(files) == 2:
                assert answer["view_positions"] == ["PA", "LL"]  # frontal first
                status, by_uid = infer_report(base, study_uid)  # a Study Instance UID: all its CR / DX series
                assert status == 200 and by_uid["report"] == expected[study_uid], by_uid
    status, answer = infer_report(base, "1.2.3.4.5.6.7.8.9")
    assert status == 404 and "1.2.3.4.5.6.7.8.9" in answer["detail"]
    log = log_path.read_text(errors="replace")
    named = [p for p in patients if p and p in log]
    assert not named, f"patient identifiers in the MONAI Label log: {named}"
