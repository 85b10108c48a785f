"""Freeze presets: gradients reach exactly the parameters each stage trains."""

from __future__ import annotations

import logging

import pytest
import torch

from monai_r2gen.data.reports import TokenizeReportd
from monai_r2gen.data.tokenizer import train_report_tokenizer
from monai_r2gen.engines.stages import STAGES, StagePreset, apply_stage, get_stage, trainable_summary
from monai_r2gen.networks.generator import RadiologyReportGenerator
from tests.networks.conftest import IMAGE_SIZE, make_reports, tiny_config


@pytest.fixture(scope="module")
def reports():
    return make_reports(30)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory, reports):
    path = tmp_path_factory.mktemp("stage_tokenizer")
    train_report_tokenizer(reports, vocab_size=300, save_dir=path)
    return path


def _model(tokenizer_dir):
    return RadiologyReportGenerator.from_config(tiny_config(tokenizer_path=str(tokenizer_dir)))


def _expected(name: str, encoder: str, projector: bool, llm: str) -> bool:
    part = name.split(".", 1)[0]
    mode = {"encoder": encoder, "llm": llm}.get(part)
    if mode is None:  # fusion / projector
        return projector
    return mode == "full" or (mode == "lora" and "lora_" in name)


def _step(model, reports, text_only: bool) -> None:
    tok = TokenizeReportd("report", tokenizer=model.tokenizer, num_image_tokens=model.num_image_tokens, max_length=96)
    items = [tok({"report": r}) for r in reports[:2]]
    width = max(len(i["input_ids"]) for i in items)
    ids = torch.full((2, width), model.tokenizer.pad_token_id)
    labels = torch.full((2, width), -100)
    attention = torch.zeros((2, width), dtype=torch.long)
    for row, item in enumerate(items):
        n = len(item["input_ids"])
        ids[row, :n], labels[row, :n], attention[row, :n] = item["input_ids"], item["labels"], 1
    images = None if text_only else torch.rand(2, 2, 1, IMAGE_SIZE, IMAGE_SIZE)
    model.train()
    model(images, ids, attention, labels).loss.backward()


CASES = [
    ("stage0", None, ("frozen", False, "full")),
    ("stage1", None, ("frozen", True, "frozen")),
    ("stage1", True, ("full", True, "frozen")),
    ("stage2", None, ("frozen", True, "lora")),
    ("stage2", "lora", ("lora", True, "lora")),
    ("shallow", None, ("frozen", True, "frozen")),
    ("delta", None, ("lora", True, "frozen")),
    ("deep", None, ("full", True, "frozen")),
]


@pytest.mark.parametrize(("stage", "train_encoder", "modes"), CASES)
def test_gradients_reach_exactly_the_trained_parameters(tokenizer_dir, reports, stage, train_encoder, modes):
    model = _model(tokenizer_dir)
    summary = apply_stage(model, stage, train_encoder=train_encoder)
    preset = get_stage(stage)
    assert summary["stage"] == stage and summary["text_only"] == preset.text_only
    _step(model, reports, preset.text_only)
    for name, param in model.named_parameters():
        expected = _expected(name, *modes)
        assert param.requires_grad == expected, name
        assert (param.grad is not None) == expected, name
    lora = [n for n, _ in model.named_parameters() if "lora_" in n]
    assert bool(lora) == ("lora" in (modes[0], modes[2]))
    assert model.trained == {part for part, mode in (("encoder", modes[0]), ("llm", modes[2])) if mode == "full"}


def test_r2gengpt_presets_keep_the_llm_frozen():
    for name in ("shallow", "delta", "deep"):
        preset = STAGES[name]
        assert preset.llm == "frozen" and preset.projector and not preset.text_only
    assert (STAGES["shallow"].encoder, STAGES["delta"].encoder, STAGES["deep"].encoder) == ("frozen", "lora", "full")


def test_stage0_after_lora_and_summary_counts(tokenizer_dir, caplog):
    model = _model(tokenizer_dir)
    apply_stage(model, "stage2")
    with caplog.at_level(logging.INFO, logger="monai_r2gen.engines.stages"):
        summary = apply_stage(model, "stage0")  # back to full LM training: base weights trainable again
    assert any("trainable parameters" in r.getMessage() for r in caplog.records)
    llm = summary["components"]["llm"]
    assert llm["trainable"] == llm["total"] == sum(p.numel() for p in model.llm.parameters())
    assert summary["components"]["encoder"]["trainable"] == 0
    assert summary["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert summary["total"] == sum(p.numel() for p in model.parameters())
    assert 0 < summary["ratio"] < 1
    plain = trainable_summary(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    assert plain["total"] == 6 and plain["components"] == {"0": {"trainable": 6, "total": 6}}


def test_unknown_stage_and_encoder_mode(tokenizer_dir):
    model = _model(tokenizer_dir)
    with pytest.raises(ValueError, match="unknown stage"):
        apply_stage(model, "stage3")
    with pytest.raises(ValueError, match="train_encoder"):
        apply_stage(model, "stage1", train_encoder="partial")
    with pytest.raises(ValueError):
        StagePreset("x", "half", True, "frozen", False, "")
    custom = StagePreset("projector_and_lm", "frozen", True, "full", False, "custom")
    assert apply_stage(model, custom)["stage"] == "projector_and_lm"


def test_stage2_records_lora_targets_and_refuses_targets_that_match_nothing(tokenizer_dir):
    from monai_r2gen.errors import ModelConfigError

    model = _model(tokenizer_dir)
    assert apply_stage(model, "stage2")["llm_lora_targets"] == ["q_proj", "v_proj"]  # the Llama defaults
    odd = RadiologyReportGenerator.from_config(
        tiny_config(tokenizer_path=str(tokenizer_dir), llm_lora_target_modules=["c_attn"])
    )
    with pytest.raises(ModelConfigError, match=r"'llama' LLM; its Linear / Conv1D layers are named \['down_proj'"):
        apply_stage(odd, "stage2")
    assert not odd.has_llm_lora and "llm_lora_targets" not in apply_stage(odd, "stage1")
