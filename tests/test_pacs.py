"""The DICOMweb path without a server: multipart bodies, the client's requests and errors (a fake transport), the
round trip's decisions per study (a fake PACS and a fake model), and the command's options."""

from __future__ import annotations

import argparse
import io
import json
import logging
import socket

import numpy as np
import pydicom
import pytest
import requests
from pydicom.uid import generate_uid

from monai_r2gen.data.dicom import make_radiograph_dataset, write_dataset
from monai_r2gen.data.report_sr import BASIC_TEXT_SR, SR_SERIES_DESCRIPTION
from monai_r2gen.errors import PacsError, PacsResponseError, R2GenError
from monai_r2gen.pacs.cli import build_parser, main, register_parser
from monai_r2gen.pacs.dicomweb import DicomWebClient, json_value, uids_of
from monai_r2gen.pacs.multipart import (
    MultipartError,
    content_type_parameter,
    decode_multipart_related,
    encode_multipart_related,
)
from monai_r2gen.pacs.roundtrip import PacsReporter

URL = "http://pacs.test/dicom-web"

# ----------------------------------------------------------------------------------------------------------------
# multipart
# ----------------------------------------------------------------------------------------------------------------


def test_multipart_round_trip_of_binary_parts() -> None:
    parts = [b"DICM\x00\r\n--not-a-boundary\r\n\r\n\xff", b"", b"\r\n", bytes(range(256)) * 3]
    body, header = encode_multipart_related(parts)
    assert header.startswith('multipart/related; type="application/dicom"; boundary=')
    decoded = decode_multipart_related(body, header)
    assert [p.content for p in decoded] == parts
    assert {p.content_type for p in decoded} == {"application/dicom"}


def test_multipart_decoding_of_what_servers_send() -> None:
    body = (
        b"preamble to ignore\r\n"
        b"--b1  \r\nContent-Type: application/dicom;\r\n transfer-syntax=1.2.840.10008.1.2.1\r\n"
        b"Content-Location: /x\r\n\r\nFIRST\r\n"
        b"--b1\r\n\r\nNO HEADERS\r\n"
        b"--b1--\r\nepilogue"
    )
    first, second = decode_multipart_related(body, 'multipart/related; type="application/dicom"; boundary="b1"')
    assert first.content == b"FIRST" and first.content_type == "application/dicom"
    assert first.headers["content-type"].endswith("transfer-syntax=1.2.840.10008.1.2.1")  # a folded line
    assert first.headers["content-location"] == "/x"
    assert second.content == b"NO HEADERS" and second.headers == {}


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (b"--b\r\n\r\nx\r\n--b--", "application/dicom", "not a multipart"),
        (b"--b\r\n\r\nx\r\n--b--", "multipart/related", "no boundary"),
        (b"nothing here", "multipart/related; boundary=b", "holds no boundary"),
        (b"--b\r\nContent-Type: application/dicom\r\n\r\ntruncated", "multipart/related; boundary=b", "truncated"),
        (b"--b junk\r\n\r\nx\r\n--b--", "multipart/related; boundary=b", "malformed boundary"),
        (b"--b\r\nno colon here\r\n\r\nx\r\n--b--", "multipart/related; boundary=b", "malformed part header"),
    ],
)
def test_multipart_decoding_errors(body: bytes, content_type: str, message: str) -> None:
    with pytest.raises(MultipartError, match=message):
        decode_multipart_related(body, content_type)


def test_multipart_encoding_errors_and_parameters() -> None:
    with pytest.raises(MultipartError, match="at least one"):
        encode_multipart_related([])
    with pytest.raises(MultipartError, match="occurs in a part"):
        encode_multipart_related([b"xx--abc--xx"], boundary="abc")
    with pytest.raises(MultipartError, match="invalid"):
        encode_multipart_related([b"x"], boundary="a" * 71)
    body, header = encode_multipart_related([b"x"], "application/octet-stream", boundary="fixed")
    assert body == b"--fixed\r\nContent-Type: application/octet-stream\r\n\r\nx\r\n--fixed--\r\n"
    assert content_type_parameter(header, "BOUNDARY") == "fixed"
    assert content_type_parameter(header, "type") == "application/octet-stream"
    assert content_type_parameter('multipart/related; boundary="a \\"b\\""', "boundary") == 'a "b"'
    assert content_type_parameter("multipart/related", "boundary") is None


# ----------------------------------------------------------------------------------------------------------------
# the client, on a fake transport
# ----------------------------------------------------------------------------------------------------------------


class FakeTransport(requests.adapters.BaseAdapter):
    """Answers requests from a handler ``(method, url, headers, body) -> (status, headers, body)``; records them."""

    def __init__(self, handler) -> None:
        super().__init__()
        self.handler = handler
        self.requests: list[requests.PreparedRequest] = []

    def send(self, request, **kwargs):
        self.requests.append(request)
        status, headers, body = self.handler(request.method, request.url, request.headers, request.body)
        response = requests.Response()
        response.status_code, response.url, response.request = status, request.url, request
        response.reason = {200: "OK", 204: "No Content", 404: "Not Found", 409: "Conflict"}.get(status, "Error")
        response.headers.update(headers)
        response.raw = io.BytesIO(body)
        return response

    def close(self) -> None:
        pass


def _client(handler) -> tuple[DicomWebClient, FakeTransport]:
    session = requests.Session()
    transport = FakeTransport(handler)
    session.mount("http://", transport)
    return DicomWebClient(URL, session=session, timeout=5), transport


def _json(status: int, value) -> tuple[int, dict, bytes]:
    return status, {"Content-Type": "application/dicom+json"}, json.dumps(value).encode()


def test_search_builds_the_qido_query_and_reads_dicom_json() -> None:
    match = {"0020000D": {"vr": "UI", "Value": ["1.2.3"]}, "00080061": {"vr": "CS", "Value": ["CR", "DX"]}}
    client, transport = _client(lambda *_: _json(200, [match, match]))
    found = client.search_studies({"ModalitiesInStudy": "CR", "includefield": ["A", "B"]}, limit=5)
    assert uids_of(found, "StudyInstanceUID") == ["1.2.3"] and json_value(found[0], "ModalitiesInStudy") == "CR"
    url = transport.requests[0].url
    assert url == f"{URL}/studies?ModalitiesInStudy=CR&includefield=A&includefield=B&limit=5"
    assert transport.requests[0].headers["Accept"] == "application/dicom+json"
    client.search_series("1.2.3", {"Modality": "SR"})
    client.search_instances("1.2.3", "4.5")
    assert transport.requests[1].url == f"{URL}/studies/1.2.3/series?Modality=SR"
    assert transport.requests[2].url == f"{URL}/studies/1.2.3/series/4.5/instances"


def test_search_without_matches_and_with_bad_answers() -> None:
    client, _ = _client(lambda *_: (204, {}, b""))
    assert client.search_studies() == []
    client, _ = _client(lambda *_: (200, {"Content-Type": "text/html"}, b"<html>login</html>"))
    with pytest.raises(PacsResponseError, match="not JSON"):
        client.search_studies()
    client, _ = _client(lambda *_: _json(200, {"not": "a list"}))
    with pytest.raises(PacsResponseError, match="not a list"):
        client.search_series("1.2")


def test_http_errors_name_the_url_and_status() -> None:
    client, _ = _client(lambda *_: _json(404, {"Message": "Unknown resource"}))
    with pytest.raises(PacsError) as caught:
        client.retrieve_series("1.2", "3.4")
    assert caught.value.status == 404 and caught.value.url == f"{URL}/studies/1.2/series/3.4"
    assert str(caught.value).startswith(f"{URL}/studies/1.2/series/3.4: HTTP 404: Not Found")
    assert "Unknown resource" in str(caught.value) and isinstance(caught.value, R2GenError)


def test_unreachable_server_and_credentials_kept_out_of_messages() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = DicomWebClient(f"http://user:secret@127.0.0.1:{port}/dicom-web", timeout=5)
    with pytest.raises(PacsError, match="cannot connect") as caught:
        client.search_studies()
    assert caught.value.status is None and "secret" not in str(caught.value) and "user" not in str(caught.value)
    with pytest.raises(PacsError, match="not an http"):
        DicomWebClient("ftp://pacs/dicom-web")


def test_retrieve_decodes_the_wado_multipart_answer() -> None:
    body, header = encode_multipart_related([b"ONE", b"TWO"])
    client, transport = _client(lambda *_: (200, {"Content-Type": header}, body))
    assert client.retrieve_series("1.2", "3.4") == [b"ONE", b"TWO"]
    assert transport.requests[0].headers["Accept"].startswith('multipart/related; type="application/dicom"')
    client, _ = _client(lambda *_: (200, {"Content-Type": "application/dicom"}, b"DICM"))
    with pytest.raises(PacsResponseError, match="unusable WADO-RS answer"):
        client.retrieve_study("1.2")
    client, _ = _client(lambda *_: (200, {"Content-Type": header}, body))
    with pytest.raises(PacsResponseError, match="expected one instance"):
        client.retrieve_instance("1.2", "3.4", "5.6")


def test_store_sends_multipart_and_reports_refused_instances() -> None:
    stored = {"00081199": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": ["9.9"]}}]}}
    client, transport = _client(lambda *_: _json(200, stored))
    assert client.store_instances([b"SR-BYTES"], "1.2") == stored
    sent = transport.requests[0]
    assert sent.method == "POST" and sent.url == f"{URL}/studies/1.2"
    assert [p.content for p in decode_multipart_related(sent.body, sent.headers["Content-Type"])] == [b"SR-BYTES"]
    failed = {"00081198": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": ["9.9"]},
                                                  "00081197": {"vr": "US", "Value": [272]}}]}}  # fmt: skip
    client, _ = _client(lambda *_: _json(202, failed))
    with pytest.raises(PacsResponseError, match=r"refused 9\.9 \(failure reason 272\)"):
        client.store_instances([b"SR-BYTES"])


# ----------------------------------------------------------------------------------------------------------------
# the round trip, on a fake PACS and a fake model
# ----------------------------------------------------------------------------------------------------------------


class FakePacs:
    """Studies in memory, with the client methods the reporter uses."""

    url = URL

    def __init__(self, files) -> None:
        self.instances = [pydicom.dcmread(f) for f in files]
        self.raw = {ds.SOPInstanceUID: f.read_bytes() for ds, f in zip(self.instances, files)}
        self.stored: list[pydicom.Dataset] = []
        self.retrieved: list[str] = []

    def _series(self):
        every = [*self.instances, *self.stored]
        return {(ds.StudyInstanceUID, ds.SeriesInstanceUID): ds for ds in every}

    def search_studies(self, filters=None, limit=None):
        modality = (filters or {}).get("ModalitiesInStudy")
        studies = {s for (s, _), ds in self._series().items() if modality in (None, ds.Modality)}
        return [{"0020000D": {"Value": [uid]}} for uid in sorted(studies)]

    def search_series(self, study_uid, filters=None):
        return [{"0020000E": {"Value": [series]}, "00080060": {"Value": [ds.Modality]},
                 "0008103E": {"Value": [ds.get("SeriesDescription", "")]}}
                for (study, series), ds in self._series().items() if study == study_uid]  # fmt: skip

    def retrieve_series(self, study_uid, series_uid):
        self.retrieved.append(series_uid)
        return [self.raw[ds.SOPInstanceUID] for ds in self.instances if ds.SeriesInstanceUID == series_uid]

    def store_instances(self, instances, study_uid=None):
        for content in instances:
            ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(content))
            assert ds.StudyInstanceUID == study_uid
            self.stored.append(ds)
        return {}


class FakeEngine:
    """Writes a fixed report for the views it is given (frontal first, as collect_studies orders them)."""

    model_dir = "/models/fake-cxr"

    def __init__(self, report: str | None = "No acute cardiopulmonary process.") -> None:
        self.report = report
        self.calls = 0

    def __call__(self, studies):
        self.calls += 1
        (study,) = studies
        if self.report is None:
            return [{"id": study.study_id, "error": "all views unreadable", "views": []}]
        return [{"id": study.study_id, "report": self.report, "views": list(study.paths),
                 "model": {"name": "fake-cxr", "fingerprint": "sha256:" + "0f" * 32}}]  # fmt: skip


@pytest.fixture
def pacs(tmp_path):
    """A fake PACS with a two-view DX study (patient Roe^Richard, R-77) and a CT study."""
    study_uid, series_uid = generate_uid(), generate_uid()
    files = []
    for number, view in enumerate(("LL", "PA"), start=1):
        ds = make_radiograph_dataset(np.full((32, 32), 500 * number, dtype=np.uint16), view_position=view,
                                     study_uid=study_uid, series_uid=series_uid, instance_number=number,
                                     patient_name="Roe^Richard", patient_id="R-77")  # fmt: skip
        files.append(tmp_path / f"dx{number}.dcm")
        write_dataset(ds, files[-1])
    ct = make_radiograph_dataset(np.zeros((8, 8), dtype=np.uint16), modality="OT", patient_id="R-77")
    ct.Modality = "CT"
    files.append(tmp_path / "ct.dcm")
    write_dataset(ct, files[-1])
    return FakePacs(files), study_uid, ct.StudyInstanceUID


def test_reporter_stores_an_sr_in_the_study_then_skips_it(pacs, tmp_path, caplog) -> None:
    server, study_uid, ct_uid = pacs
    caplog.set_level(logging.DEBUG)
    engine = FakeEngine()
    reporter = PacsReporter(server, engine, sr_dir=tmp_path / "sr")
    assert reporter.find_studies() == [study_uid]  # only the study with a CR / DX series
    (outcome,) = reporter.run()
    assert outcome.status == "stored" and outcome.report == engine.report
    (sr,) = server.stored
    assert sr.SOPClassUID == BASIC_TEXT_SR and sr.StudyInstanceUID == study_uid and sr.PatientID == "R-77"
    positions = {ds.SOPInstanceUID: ds.ViewPosition for ds in server.instances}
    assert [positions[uid] for uid in outcome.views] == ["PA", "LL"]
    assert sr.SeriesDescription == SR_SERIES_DESCRIPTION
    assert pydicom.dcmread(outcome.sr_file).SOPInstanceUID == sr.SOPInstanceUID == outcome.sr_sop_instance_uid
    assert outcome.model["name"] == "fake-cxr" and outcome.model["version"] == "0f" * 8
    assert "Roe" not in caplog.text and "R-77" not in caplog.text and study_uid in caplog.text

    again = reporter.report_study(study_uid)
    assert again.status == "skipped" and "already holds a report SR" in again.reason and engine.calls == 1
    assert PacsReporter(server, engine, again=True).report_study(study_uid).status == "stored"
    assert len(server.stored) == 2


def test_reporter_outcomes_for_studies_it_cannot_report_on(pacs, tmp_path) -> None:
    server, study_uid, ct_uid = pacs
    reporter = PacsReporter(server, FakeEngine())
    assert reporter.report_study(ct_uid).status == "skipped" and server.retrieved == []  # CT: nothing retrieved
    missing = reporter.report_study("1.2.3.4")
    assert missing.status == "failed" and "no such study" in missing.reason
    failed = PacsReporter(server, FakeEngine(report=None)).report_study(study_uid)
    assert failed.status == "failed" and failed.reason == "all views unreadable" and not server.stored
    written = PacsReporter(server, FakeEngine(), store=False, sr_dir=tmp_path / "dry").report_study(study_uid)
    assert written.status == "written" and not server.stored and (tmp_path / "dry").is_dir()
    with pytest.raises(ValueError, match="sr_dir"):
        PacsReporter(server, FakeEngine(), store=False)


def test_reporter_turns_server_errors_of_a_study_into_failures(pacs) -> None:
    server, study_uid, _ = pacs

    def refuse(instances, study_uid=None):
        raise PacsError(f"{URL}/studies/{study_uid}", "Conflict", 409)

    server.store_instances = refuse
    outcome = PacsReporter(server, FakeEngine()).report_study(study_uid)
    assert outcome.status == "failed" and "HTTP 409" in outcome.reason

    def unreachable(*args, **kwargs):
        raise PacsError(URL, "cannot connect")

    server.search_series = unreachable
    with pytest.raises(PacsError, match="cannot connect"):  # every further study would fail the same way
        PacsReporter(server, FakeEngine()).report_study(study_uid)


# ----------------------------------------------------------------------------------------------------------------
# the command
# ----------------------------------------------------------------------------------------------------------------


def test_register_parser_adds_the_pacs_subcommand() -> None:
    parser = argparse.ArgumentParser(prog="monai-r2gen")
    register_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["pacs", "--url", URL, "--model", "m", "--study", "1.2", "3.4", "--study", "5.6",
                              "--modality", "DX", "--limit", "3", "--dry-run", "--sr-dir", "out"])  # fmt: skip
    assert args.study == ["1.2", "3.4", "5.6"] and args.modality == ["DX"] and args.limit == 3
    assert args.func.__name__ == "cmd_pacs" and args.dry_run and args.sr_dir == "out"
    with pytest.raises(SystemExit):
        parser.parse_args(["pacs", "--model", "m"])  # --url is required
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--url", URL, "--model", "m", "--limit", "0"])


def test_command_user_errors_exit_2(tmp_path, capsys) -> None:
    assert main(["--url", URL, "--model", str(tmp_path)]) == 2
    assert "not a report generator directory" in capsys.readouterr().err
    assert main(["--url", URL, "--model", str(tmp_path), "--dry-run"]) == 2
    assert "--sr-dir" in capsys.readouterr().err
