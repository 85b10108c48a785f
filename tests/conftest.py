"""Shared test fixtures."""

from __future__ import annotations

import datetime
import importlib.util
from pathlib import Path
from typing import Any

import pytest

REPORT = "The lungs are clear. No pleural effusion or pneumothorax."
"""The sentence the tiny test model is fitted to write, whatever the image (readable text for the DICOM SR)."""


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


def _fit(model, steps: int = 40) -> None:
    """Fit the tiny model to write REPORT (image-independent), so that greedy decoding gives readable text."""
    import torch

    tok = model.tokenizer
    prompt_ids, _ = model.encode_prompts([model.config.prompt_template])
    report_ids = tok(REPORT, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    input_ids = torch.cat([prompt_ids, torch.tensor([report_ids])], dim=1)
    labels = torch.full_like(input_ids, -100)
    labels[0, prompt_ids.shape[1] :] = torch.tensor(report_ids)
    size = model.config.image_size
    images = torch.rand(1, 1, 1, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # the encoder stays as built: its tokens are computed once
        tokens = model.encoder(images, None)
    trained = [p for name, p in model.named_parameters() if not name.startswith("encoder.")]
    optimizer = torch.optim.AdamW(trained, lr=3e-3)
    model.train()
    for _ in range(steps):
        loss = model(None, input_ids, torch.ones_like(input_ids), labels=labels, visual_tokens=tokens).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny generator (CNN 64 px, 1-layer Llama of width 64), fitted for a few steps to write REPORT, saved."""
    import torch

    from monai_r2gen.networks.factory import build_generator, embedded_default_config, tiny_llm_options

    torch.manual_seed(0)
    corpus = [REPORT, "Mild cardiomegaly.", "Right lower lobe consolidation.", "No acute disease."] * 4
    config = embedded_default_config(
        image_size=64,
        num_queries=4,
        tokenizer_vocab_size=300,
        llm_options=tiny_llm_options(hidden_size=64, num_layers=1, num_heads=2, max_positions=256),
        generation={"num_beams": 1, "do_sample": False, "max_new_tokens": 48, "repetition_penalty": 1.0},
    )
    model = build_generator(config, corpus=corpus)
    _fit(model)
    out = tmp_path_factory.mktemp("model")
    model.save_pretrained(out)
    return out


def _pixels(rows: int, cols: int, lateral: bool) -> Any:
    """A chest-like 12-bit image (uint16 array): dark lung fields either side of a bright mediastinum (or one field,
    lateral)."""
    import numpy as np

    y, x = np.mgrid[0:rows, 0:cols] / np.array([rows, cols])[:, None, None]
    body = 0.35 + 0.3 * np.exp(-(((x - 0.5) / 0.12) ** 2))
    if lateral:
        body = 0.3 + 0.35 * np.exp(-(((x - 0.6) / 0.2) ** 2))
    body = body + 0.1 * y
    return np.clip(body * 4095, 0, 4095).astype(np.uint16)


@pytest.fixture(scope="session")
def synthetic_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-view DX study folder (lateral file named first, so view ordering matters), with one study UID."""
    from pydicom.uid import generate_uid

    from monai_r2gen.data.dicom import make_radiograph_dataset, write_dataset

    folder = tmp_path_factory.mktemp("synthetic_study")
    study_uid, series_uid = generate_uid(), generate_uid()
    acquired = datetime.datetime(2026, 1, 2, 8, 18, 25)
    for number, (name, view) in enumerate([("a_lateral.dcm", "LL"), ("b_frontal.dcm", "PA")], start=1):
        ds = make_radiograph_dataset(_pixels(96, 80, view == "LL"), view_position=view, study_uid=study_uid,
                                     series_uid=series_uid, instance_number=number, study_id="SYN1",
                                     study_datetime=acquired, window=(2048.0, 4096.0))  # fmt: skip
        write_dataset(ds, folder / name)
    return folder
