"""Shared test fixtures."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


def _data_store() -> Path | None:
    spec = importlib.util.find_spec("data_store")  # the import name of the PyPI package `pydicom-data`
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "data"


@pytest.fixture(scope="session")
def pydicom_data_dir() -> Path:
    """Folder of the real DICOM files shipped by the `pydicom-data` package (RG1_*, RG3_*)."""
    path = _data_store()
    if path is None or not (path / "RG1_UNCR.dcm").exists():
        pytest.fail("pydicom-data is not installed: `pip install -e .[test]`")
    return path


@pytest.fixture(scope="session")
def rg1_uncompressed(pydicom_data_dir: Path) -> Path:
    """A real PA chest CR: MONOCHROME1, 15-bit, uncompressed explicit VR little endian."""
    return pydicom_data_dir / "RG1_UNCR.dcm"


@pytest.fixture(scope="session")
def rg1_j2k_lossless(pydicom_data_dir: Path) -> Path:
    """The same image as ``rg1_uncompressed``, JPEG 2000 lossless."""
    return pydicom_data_dir / "RG1_J2KR.dcm"
