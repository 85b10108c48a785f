"""MONAI Label app: a real `monailabel start_server` in its own venv, queried over REST.

Every wait is bounded and the server is always stopped (its whole process group, by id).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from monai_r2gen.apps.monailabel import APP_DIR
from monai_r2gen.data.studies import collect_studies
from monai_r2gen.inference import ReportInference
from monai_r2gen.metrics.chexpert import CHEXPERT_LABELS

from .servers import REQUEST_TIMEOUT, infer_report, stop_process_group

pytestmark = [pytest.mark.integration, pytest.mark.slow]

START_TIMEOUT = 180.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=REQUEST_TIMEOUT) as answer:
        return json.loads(answer.read())


def _expected(model_dir: Path, inputs: list[Path]) -> dict[str, str]:
    """Reports from the one inference path in this (main) venv, as `monai-r2gen generate` writes them."""
    studies = [s for s in collect_studies(inputs) if s.ok]
    results = ReportInference(model_dir, device="cpu")([{"id": s.study_id, "image": s.paths} for s in studies])
    return {r["id"]: r["report"] for r in results}


@pytest.fixture(scope="module")
def server(tmp_path_factory, label_venv, tiny_model_dir, rg1_uncompressed, synthetic_study):
    """A running server on a free port; yields (base URL, studies folder)."""
    root = tmp_path_factory.mktemp("monailabel")
    app, studies = root / "app", root / "studies"
    app.mkdir()
    shutil.copy(APP_DIR / "main.py", app / "main.py")  # start_server writes model/, logs/, bin/ into the app folder
    studies.mkdir()
    shutil.copy(rg1_uncompressed, studies / "RG1_UNCR.dcm")
    shutil.copytree(synthetic_study, studies / "synthetic_study")  # a sub-folder: reachable by its study UID
    port = _free_port()
    command = [str(label_venv / "bin" / "python"), "-m", "monailabel.main", "start_server", "--app", str(app),
               "--studies", str(studies), "--conf", "model_dir", str(tiny_model_dir), "--conf", "device", "cpu",
               "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    env = {**os.environ, "MONAI_LABEL_INFER_CONCURRENCY": "2", "PATH": f"{label_venv / 'bin'}:{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    log = open(root / "server.log", "w")  # noqa: SIM115 - closed in the finally below
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline, started = time.monotonic() + START_TIMEOUT, time.monotonic()
        while True:
            if process.poll() is not None:
                pytest.fail(f"server exited ({process.returncode}):\n{(root / 'server.log').read_text()[-4000:]}")
            try:
                _get(f"{base}/info/")
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    pytest.fail(f"server not up in {START_TIMEOUT} s:\n{(root / 'server.log').read_text()[-4000:]}")
                time.sleep(0.5)
        print(f"[monailabel server up in {time.monotonic() - started:.1f} s]")
        yield base, studies
    finally:
        stop_process_group(process)
        log.close()


def test_info_lists_the_report_model_unloaded(server, tiny_model_dir) -> None:
    base, _ = server
    info = _get(f"{base}/info/")
    model = info["models"]["report"]
    assert model["type"] == "others" and model["model_dir"] == str(tiny_model_dir)
    assert info["datastore"]["total"] == 1  # RG1_UNCR.dcm (the synthetic study is in a sub-folder)


def test_infer_returns_the_generate_report_for_rg1_and_for_a_study_uid(server, tiny_model_dir, synthetic_study):
    base, studies = server
    expected = _expected(tiny_model_dir, [studies / "RG1_UNCR.dcm", synthetic_study])
    status, rg1 = infer_report(base, "RG1_UNCR")
    assert status == 200, rg1
    assert rg1["report"] == expected[rg1["study_id"]]
    assert set(rg1["findings"]) == set(CHEXPERT_LABELS)
    assert rg1["views"] == [str(studies / "RG1_UNCR.dcm")] and rg1["view_positions"] == ["PA"]

    (synthetic,) = collect_studies([synthetic_study])
    status, study = infer_report(base, synthetic.study_instance_uid)
    assert status == 200, study
    assert study["report"] == expected[synthetic.study_instance_uid]
    assert [Path(p).name for p in study["views"]] == ["b_frontal.dcm", "a_lateral.dcm"]  # frontal first
    assert _get(f"{base}/info/")["models"]["report"]["loaded"] is True


def test_infer_params_and_bad_ids(server) -> None:
    base, _ = server
    status, short = infer_report(base, "RG1_UNCR", {"max_new_tokens": 2})
    assert status == 200 and short["report"] != infer_report(base, "RG1_UNCR")[1]["report"]
    status, answer = infer_report(base, "no-such-image")
    assert status == 404 and "no-such-image" in answer["detail"]
    status, answer = infer_report(base, "RG1_UNCR", {"num_beams": "many"})
    assert status == 400 and "num_beams" in answer["detail"]


def test_infer_task_is_thread_safe(label_venv, tiny_model_dir, rg1_uncompressed) -> None:
    """Six threads call one task at once: one model load, six identical reports."""
    script = textwrap.dedent(
        f"""
        import json, threading
        from monai_r2gen.apps.monailabel.lib.infers.report import ReportInferTask
        task = ReportInferTask({str(tiny_model_dir)!r}, device="cpu")
        barrier, out = threading.Barrier(6), []
        def run():
            barrier.wait()
            out.append(task({{"image": {str(rg1_uncompressed)!r}}})[1]["report"])
        threads = [threading.Thread(target=run) for _ in range(6)]
        [t.start() for t in threads]
        [t.join(120) for t in threads]
        print(json.dumps({{"reports": out, "loads": task.loads}}))
        """
    )
    done = subprocess.run([str(label_venv / "bin" / "python"), "-c", script], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["loads"] == 1
    assert len(answer["reports"]) == 6 and len(set(answer["reports"])) == 1
