"""Fixtures of the integration tests: the separate venvs (the tiny trained model and the synthetic DICOM study are in
tests/conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SETUP_TIMEOUT = 20 * 60  # a fresh venv takes 1-3 min here; allow for a slow mirror


def _venv(env_var: str, default: str, script: str) -> Path:
    """The venv named by ``env_var`` (default ``<repo>/<default>``), created or checked by its setup script."""
    path = Path(os.environ.get(env_var) or REPO / default).resolve()  # absolute: the apps run in other folders
    start = time.perf_counter()
    done = subprocess.run(["bash", str(REPO / "scripts" / script), str(path)], capture_output=True, text=True,
                          timeout=SETUP_TIMEOUT)  # fmt: skip
    if done.returncode != 0:
        output = f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        pytest.fail(f"scripts/{script} {path} failed ({done.returncode}):\n{output}")
    sys.stderr.write(f"\n[{script}: {time.perf_counter() - start:.1f} s] ")
    return path


@pytest.fixture(scope="session")
def label_venv() -> Path:
    """The MONAI Label venv (``$R2GEN_LABEL_VENV`` or ``<repo>/.venv-label``), created when missing."""
    return _venv("R2GEN_LABEL_VENV", ".venv-label", "setup_label_venv.sh")


@pytest.fixture(scope="session")
def deploy_venv() -> Path:
    """The MONAI Deploy venv (``$R2GEN_DEPLOY_VENV`` or ``<repo>/.venv-deploy``), created when missing."""
    return _venv("R2GEN_DEPLOY_VENV", ".venv-deploy", "setup_deploy_venv.sh")
