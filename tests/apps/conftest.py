"""Fixtures of the integration tests: the separate venvs, a tiny trained model, synthetic and real DICOM studies."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
REPORT = "The lungs are clear. No pleural effusion or pneumothorax."
"""The sentence the tiny test model is fitted to write, whatever the image (readable text for the DICOM SR)."""

SETUP_TIMEOUT = 20 * 60  # a fresh venv takes 1-3 min here; allow for a slow mirror


def _venv(env_var: str, default: str, script: str) -> Path:
    """The venv named by ``env_var`` (default ``<repo>/<default>``), created or checked by its setup script."""
    path = Path(os.environ.get(env_var) or REPO / default)
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


def _fit(model, steps: int = 40) -> None:
    """Fit the tiny model to write REPORT (image-independent), so that greedy decoding gives readable text."""
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


def _pixels(rows: int, cols: int, lateral: bool) -> np.ndarray:
    """A chest-like 12-bit image: dark lung fields either side of a bright mediastinum (or one field, lateral)."""
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
    for number, (name, view) in enumerate([("a_lateral.dcm", "LL"), ("b_frontal.dcm", "PA")], start=1):
        ds = make_radiograph_dataset(_pixels(96, 80, view == "LL"), view_position=view, study_uid=study_uid,
                                     series_uid=series_uid, instance_number=number, study_id="SYN1",
                                     window=(2048.0, 4096.0))  # fmt: skip
        write_dataset(ds, folder / name)
    return folder
