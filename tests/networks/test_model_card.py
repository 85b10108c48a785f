"""The model card (README.md) written beside the weights by save_pretrained and refreshed by write_model_card."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from monai_r2gen.engines.stages import apply_stage
from monai_r2gen.inference import model_fingerprint
from monai_r2gen.networks.generator import RadiologyReportGenerator
from monai_r2gen.networks.llm_loading import load_causal_lm, load_tokenizer
from monai_r2gen.networks.model_card import (
    CARD_MARKER,
    EVALUATION_NAME,
    build_model_card,
    card_is_generated,
    model_card_facts,
    write_model_card,
)

from .conftest import tiny_llm

RESULT = {
    "scores": {"BLEU-4": 0.1234, "CIDEr": 0.5, "CE-14 micro-F1": 0.25, "CE-5 macro-P": 0.125, "note": "not a number"},
    "settings": {"split": "test", "tokenize": "simple", "generation": {"num_beams": 3}},
    "intervals": {"BLEU-4": {"score": 0.1234, "low": 0.1, "high": 0.15, "std": 0.01}},
}


def _card(model_dir: Path) -> tuple[dict, str]:
    """The front matter (parsed) and the body of a model directory's README.md."""
    text = (model_dir / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n")
    front, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(front), body


@pytest.fixture()
def model_copy(tiny_model_dir, tmp_path) -> Path:
    path = tmp_path / "model"
    shutil.copytree(tiny_model_dir, path)
    return path


@pytest.fixture(scope="module")
def hub_llama(tmp_path_factory, tokenizer_dir) -> Path:
    """A tiny llama in the layout of the Hugging Face cache, with its own Hub card (MIT licence)."""
    path = tmp_path_factory.mktemp("hub") / "models--acme--tiny-llama" / "snapshots" / "0123abcd"
    tokenizer = load_tokenizer(tokenizer_dir)
    torch.manual_seed(0)
    load_causal_lm(options=tiny_llm("llama"), tokenizer=tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / "README.md").write_text("---\nlicense: mit\n---\n# tiny llama\n")
    return path


def test_save_writes_a_card_with_front_matter(tiny_model_dir) -> None:
    front, body = _card(tiny_model_dir)
    assert front["license"] == "apache-2.0" and front["library_name"] == "monai-r2gen"
    assert front["pipeline_tag"] == "image-to-text" and "radiology" in front["tags"]
    assert "model-index" not in front  # no scores yet
    assert CARD_MARKER in body and card_is_generated(tiny_model_dir / "README.md")
    assert "| Vision encoder | small_cnn |" in body and "| Language model | llama |" in body
    assert model_fingerprint(tiny_model_dir) in body
    assert "not a medical device" in body and "reviewed, corrected and signed by a qualified radiologist" in body
    assert "## Intended use" in body and "No evaluation scores recorded" in body
    # the card is an extra: it does not change the model's identity, and the model still loads
    RadiologyReportGenerator.from_pretrained(tiny_model_dir)


def test_card_names_a_hub_base_with_its_fingerprint(make_model, hub_llama, tmp_path) -> None:
    model = make_model(llm_path=str(hub_llama), tokenizer_path=None)
    apply_stage(model, "stage2")
    model.save_pretrained(tmp_path / "m")
    front, body = _card(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "generator.json").read_text())
    assert front["base_model"] == "acme/tiny-llama" and front["base_model_relation"] == "adapter"
    assert front["license"] == "other"  # MIT base, Apache-2.0 encoder built here
    assert meta["bases"]["llm"]["fingerprint"] in body and "LoRA adapter in `llm_lora/`" in body
    assert "This folder does not hold the LLM" in body


def test_scores_and_training_summary_reach_the_card(model_copy) -> None:
    summary = {
        "stages": {"stage2": {"iterations": 12, "epochs": 1, "seconds": 3.5, "complete": True,
                              "last_scores": {"BLEU-4": 0.1}}},
        "stage_settings": {"stage2": {"name": "stage2", "lr": 5e-4, "lora": {"r": 8, "alpha": 16}}},
        "seed": 7,
        "dataset": {"name": "phantoms", "synthetic": True, "train_studies": 40},
        "model": model_fingerprint(model_copy),
    }  # fmt: skip
    (model_copy / "training_summary.json").write_text(json.dumps(summary))
    assert (
        write_model_card(model_copy, scores=RESULT, settings={"dataset_name": "phantoms"}) == model_copy / "README.md"
    )
    front, body = _card(model_copy)
    (result,) = front["model-index"][0]["results"]
    assert result["dataset"] == {"name": "phantoms", "type": "phantoms", "split": "test"}
    metrics = {m["name"]: (m["type"], m["value"]) for m in result["metrics"]}
    assert metrics == {"BLEU-4": ("bleu", 0.1234), "CIDEr": ("cider", 0.5), "CE-14 micro-F1": ("f1", 0.25)}
    assert "| BLEU-4 | 0.1234 | 0.1000 - 0.1500 |" in body and "tokenize: simple" in body
    assert "| CE-5 macro-P | 0.1250 | - |" in body and "| note |" not in body  # every score in the table, the usual
    # ones in the metadata
    assert "### stage2" in body and "| lr | 0.0005 |" in body and "iterations 12" in body
    assert "synthetic phantoms" in body and "seed: 7" in body
    record = json.loads((model_copy / EVALUATION_NAME).read_text())
    assert record["model"] == model_fingerprint(model_copy) and record["scores"]["CIDEr"] == 0.5


def test_scores_file_path_and_refresh_keep_recorded_scores(model_copy, tmp_path) -> None:
    scores_file = tmp_path / "scores.json"
    scores_file.write_text(json.dumps(RESULT))
    write_model_card(model_copy, scores=scores_file)
    write_model_card(model_copy)  # a refresh without scores keeps the recorded ones
    front, _ = _card(model_copy)
    assert {m["name"] for m in front["model-index"][0]["results"][0]["metrics"]} == {
        "BLEU-4",
        "CIDEr",
        "CE-14 micro-F1",
    }


def test_a_new_save_replaces_our_card_and_drops_stale_scores(model_copy) -> None:
    write_model_card(model_copy, scores=RESULT)
    model = RadiologyReportGenerator.from_pretrained(model_copy)
    with torch.no_grad():
        next(model.projector.parameters()).add_(1.0)  # other weights
    model.save_pretrained(model_copy)
    front, body = _card(model_copy)
    assert "model-index" not in front and "No evaluation scores recorded" in body  # the scores were of other weights
    assert model_fingerprint(model_copy) in body
    assert (model_copy / EVALUATION_NAME).is_file()  # kept beside the model like any other file
    assert [p.name for p in model_copy.parent.iterdir()] == ["model"]  # no staged folder left


def test_a_users_readme_is_never_overwritten(model_copy) -> None:
    (model_copy / "README.md").write_text("# our model\nhand written\n")
    model = RadiologyReportGenerator.from_pretrained(model_copy)
    model.save_pretrained(model_copy)
    assert (model_copy / "README.md").read_text() == "# our model\nhand written\n"
    assert write_model_card(model_copy, scores=RESULT) is None
    assert (model_copy / "README.md").read_text() == "# our model\nhand written\n"
    assert (model_copy / EVALUATION_NAME).is_file()  # the scores are still recorded
    write_model_card(model_copy, force=True)
    assert "CIDEr" in _card(model_copy)[1]


def test_card_when_staged_inside_the_model_folder(model_copy, monkeypatch) -> None:
    """A read-only parent: the parts (and the card) are renamed over the old ones inside the folder."""
    import tempfile

    mkdtemp = tempfile.mkdtemp

    def _read_only_parent(*args, dir=None, **kwargs):
        if Path(dir) == model_copy.parent:
            raise PermissionError(13, "Permission denied", str(dir))
        return mkdtemp(*args, dir=dir, **kwargs)

    (model_copy / "README.md").write_text(f"{CARD_MARKER}\nan old card\n")
    monkeypatch.setattr(tempfile, "mkdtemp", _read_only_parent)
    RadiologyReportGenerator.from_pretrained(model_copy).save_pretrained(model_copy)
    front, body = _card(model_copy)
    assert front["library_name"] == "monai-r2gen" and "an old card" not in body
    assert not [p for p in model_copy.iterdir() if p.name.startswith(".")]


def test_build_model_card_from_sparse_facts() -> None:
    text = build_model_card({"name": "x | y", "encoder": {"kind": "hf", "path": "/a|b"}})
    front = yaml.safe_load(text.split("---\n")[1])
    assert front["license"] == "other" and front["license_name"] == "see-base-models"
    assert "# x | y" in text and "/a\\|b" in text and CARD_MARKER in text
    assert "No training summary" in text and "not a medical device" in text


def test_facts_of_a_model_directory(tiny_model_dir) -> None:
    facts = model_card_facts(tiny_model_dir)
    assert facts["encoder"]["kind"] == "small_cnn" and facts["llm"]["model_type"] == "llama"
    assert facts["llm"]["saved"] == "hf_dir" and facts["evaluation"] is None
    assert facts["model_fingerprint"] == model_fingerprint(tiny_model_dir)
