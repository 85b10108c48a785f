"""Tiny models and a tiny phantom data set for the analysis tests (built once per session)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from monai_r2gen.data.tokenizer import train_report_tokenizer
from monai_r2gen.networks.generator import RadiologyReportGenerator
from tests.networks.conftest import make_reports, tiny_config

IMAGE_SIZE = 64


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory) -> Path:
    """Twelve phantom studies at 64 px (PNG only) with findings.json, every finding likely present somewhere."""
    from monai_r2gen.data.synthetic import generate_dataset

    out = tmp_path_factory.mktemp("phantoms")
    prevalence = {"pleural_effusion": 0.6, "cardiomegaly": 0.5, "pneumothorax": 0.3, "consolidation": 0.3}
    generate_dataset(
        out, 12, seed=3, image_size=IMAGE_SIZE, formats=("png",), prevalence=prevalence, splits=(0.5, 0.0, 0.5)
    )
    return out


@pytest.fixture(scope="session")
def analysis_tokenizer(phantom_dir):
    """A small BPE tokenizer trained on phantom reports plus generic report sentences."""
    from monai_r2gen.analysis.loading import train_reports

    corpus = train_reports(phantom_dir / "annotation.json", split=None) + make_reports(40)
    return train_report_tokenizer(corpus, vocab_size=400)


@pytest.fixture()
def tiny_model(analysis_tokenizer) -> Callable[..., RadiologyReportGenerator]:
    """``tiny_model(**GeneratorConfig overrides)``: a fresh 1-layer generator at 64 px with eager attention."""
    from monai_r2gen.analysis.loading import set_eager_attention

    def _make(**overrides) -> RadiologyReportGenerator:
        overrides.setdefault("image_size", IMAGE_SIZE)
        model = RadiologyReportGenerator.from_config(tiny_config(**overrides), analysis_tokenizer)
        set_eager_attention(model)
        return model.eval()

    return _make


@pytest.fixture(scope="session")
def saved_model_dir(tmp_path_factory, analysis_tokenizer) -> Path:
    """A tiny model directory written by save_pretrained (resampler projector, 64 px)."""
    out = tmp_path_factory.mktemp("model") / "tiny"
    model = RadiologyReportGenerator.from_config(tiny_config(image_size=IMAGE_SIZE), analysis_tokenizer)
    model.save_pretrained(out)
    return out
