"""Helpers of the integration tests' servers: stopping them (they run in sessions of their own) and asking the
MONAI Label app for a report."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.error
import urllib.parse
import urllib.request

REQUEST_TIMEOUT = 120.0


def stop_process_group(process: subprocess.Popen) -> None:
    """Stop a process started with ``start_new_session=True``: its group by id, SIGTERM then SIGKILL."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=20)


def infer_report(base: str, image: str, params: dict | None = None) -> tuple[int, dict]:
    """``POST /infer/report?image=...`` of a MONAI Label server at ``base``: the HTTP status and the JSON answer."""
    query = urllib.parse.urlencode({"image": image, "output": "json"})
    body = urllib.parse.urlencode({"params": json.dumps(params or {})}).encode()
    request = urllib.request.Request(f"{base}/infer/report?{query}", data=body, method="POST")
    request.add_header("Content-Type", "application/x-www-form-urlencoded")
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")
