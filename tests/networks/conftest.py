"""Tiny tokenizer, models and real-layout model directories, built once per test session."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from monai_r2gen.data.tokenizer import train_report_tokenizer
from monai_r2gen.networks.factory import tiny_encoder_options, tiny_llm_options
from monai_r2gen.networks.generator import RadiologyReportGenerator
from monai_r2gen.networks.generator_config import GeneratorConfig
from monai_r2gen.networks.llm_loading import load_causal_lm, load_tokenizer

LLM_FAMILIES = ("llama", "gpt2", "qwen2", "mistral", "phi")
ENCODER_FAMILIES = ("swin", "vit", "clip_vision_model", "siglip_vision_model", "dinov2")
IMAGE_SIZE = 32

_SENTENCES = (
    "the heart is normal in size",
    "the cardiomediastinal silhouette is within normal limits",
    "mild cardiomegaly",
    "the lungs are clear",
    "there is a small left pleural effusion",
    "there is a right pleural effusion",
    "no pneumothorax",
    "no focal consolidation",
    "patchy opacity in the right lower lobe",
    "degenerative changes of the spine",
    "a right internal jugular catheter terminates in the svc",
    "no acute cardiopulmonary process",
)


def make_reports(n: int, seed: int = 0) -> list[str]:
    """Short report-like texts made of a few sentences each."""
    rng = random.Random(seed)
    return [". ".join(rng.sample(_SENTENCES, rng.randint(2, 4))) + "." for _ in range(n)]


def collate_reports(model, reports, views, max_length=96, seed=0):
    """Tokenized + collated batch, one study per report with ``views[i]`` random views; also the prompt length."""
    from monai_r2gen.data.datasets import ReportCollate
    from monai_r2gen.data.reports import TokenizeReportd

    gen = torch.Generator().manual_seed(seed)
    tok = TokenizeReportd("report", tokenizer=model.tokenizer, num_image_tokens=model.num_image_tokens,
                          prompt_template=model.config.prompt_template, max_length=max_length)  # fmt: skip
    items = []
    for report, v in zip(reports, views):
        item = tok({"report": report})
        item["image"] = torch.rand(v, 1, IMAGE_SIZE, IMAGE_SIZE, generator=gen)
        items.append(item)
    return ReportCollate(model.tokenizer.pad_token_id)(items), len(tok.prompt_ids)


def tiny_llm(family: str = "llama") -> dict:
    """Config kwargs of a 1-layer, 32-wide causal LM of a family."""
    return tiny_llm_options(family, hidden_size=32, num_layers=1, num_heads=2, max_positions=256)


def tiny_config(**overrides) -> GeneratorConfig:
    """A generator config small enough for unit tests (small CNN at 32 px: 4x4 tokens of 16; K = 4)."""
    settings = {
        "encoder": "small_cnn",
        "encoder_options": {"channels": [8, 16, 16]},
        "image_size": IMAGE_SIZE,
        "projector": "resampler",
        "num_queries": 4,
        "resampler_heads": 2,
        "llm_options": tiny_llm("llama"),
        "dtype": "float32",
        "max_views": 2,
        "llm_lora_r": 4,
        "llm_lora_alpha": 8,
        "llm_lora_dropout": 0.0,
        "encoder_lora_r": 4,
        "encoder_lora_alpha": 8,
        "encoder_lora_dropout": 0.0,
        "generation": {"num_beams": 1, "do_sample": False, "repetition_penalty": 1.0, "min_new_tokens": 1,
                       "max_new_tokens": 8},
    }  # fmt: skip
    settings.update(overrides)
    return GeneratorConfig.from_dict(settings)


@pytest.fixture(scope="session")
def reports() -> list[str]:
    return make_reports(40)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory, reports) -> Path:
    path = tmp_path_factory.mktemp("tokenizer")
    train_report_tokenizer(reports, vocab_size=320, save_dir=path)
    return path


@pytest.fixture()
def make_model(tokenizer_dir) -> Callable[..., RadiologyReportGenerator]:
    """Build a fresh tiny generator: ``make_model(**GeneratorConfig overrides)``."""

    def _make(**overrides) -> RadiologyReportGenerator:
        overrides.setdefault("tokenizer_path", str(tokenizer_dir))
        return RadiologyReportGenerator.from_config(tiny_config(**overrides))

    return _make


def _save_llm(path: Path, family: str, tokenizer_dir: Path, seed: int) -> Path:
    tokenizer = load_tokenizer(tokenizer_dir)
    torch.manual_seed(seed)
    model = load_causal_lm(options=tiny_llm(family), tokenizer=tokenizer)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def llm_dirs(tmp_path_factory, tokenizer_dir) -> dict[str, Path]:
    """Real-layout Hugging Face causal LM directories (config.json + safetensors + tokenizer), one per family."""
    root = tmp_path_factory.mktemp("llms")
    return {family: _save_llm(root / family, family, tokenizer_dir, seed=i) for i, family in enumerate(LLM_FAMILIES)}


@pytest.fixture(scope="session")
def other_llama_dir(tmp_path_factory, tokenizer_dir) -> Path:
    """A llama directory of the same architecture as ``llm_dirs["llama"]`` but other weights."""
    return _save_llm(tmp_path_factory.mktemp("llms_other") / "llama", "llama", tokenizer_dir, seed=123)


@pytest.fixture(scope="session")
def encoder_dirs(tmp_path_factory) -> dict[str, Path]:
    """Real-layout Hugging Face vision model directories, one per family (32 px, 32 wide)."""
    from monai_r2gen.networks.encoders import load_hf_vision_model

    root = tmp_path_factory.mktemp("encoders")
    dirs = {}
    for i, family in enumerate(ENCODER_FAMILIES):
        torch.manual_seed(i)
        model = load_hf_vision_model(config=tiny_encoder_options(family, image_size=IMAGE_SIZE))
        model.save_pretrained(root / family)
        dirs[family] = root / family
    # an image processor config with its own normalisation, as real checkpoints ship
    (dirs["vit"] / "preprocessor_config.json").write_text(
        json.dumps({"do_normalize": True, "image_mean": [0.4, 0.4, 0.4], "image_std": [0.2, 0.2, 0.2]})
    )
    return dirs
