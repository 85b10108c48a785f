"""The protocol ablation: budgets, table, and a tiny end-to-end run."""

from __future__ import annotations

import json

import pytest
import torch

from monai_r2gen.analysis.ablation import (
    ABLATION_VARIANTS,
    ablation_table,
    run_ablation,
    share_completed_stages,
    variant_stages,
)
from monai_r2gen.networks.factory import tiny_llm_options


@pytest.mark.parametrize("variant", list(ABLATION_VARIANTS))
@pytest.mark.parametrize("total", [340, 7, 101, 4, 3])
def test_every_variant_gets_the_same_budget(variant, total):
    stages = variant_stages(variant, total, batch_size=4, warmup_iterations=50)
    assert stages[0]["name"] == "encoder_warmup" and stages[0]["max_iterations"] == 50
    assert sum(s["max_iterations"] for s in stages[1:]) == total
    assert all(s["max_iterations"] >= 1 and s["batch_size"] == 4 for s in stages)


def test_variant_contents():
    full = variant_stages("full")
    assert [s["name"] for s in full] == ["encoder_warmup", "stage0", "stage1", "stage2"]
    assert [s["max_iterations"] for s in full] == [1500, 200, 40, 100]  # bundle/configs/train.yaml
    assert [s["name"] for s in variant_stages("no_stage1", warmup_iterations=0)] == ["stage0", "stage2"]
    assert [s["name"] for s in variant_stages("no_stage0", warmup_iterations=0)] == ["stage1", "stage2"]
    assert [s.get("train_encoder") for s in full[1:]] == [False] * 3  # the CNN rests after its warm-up
    assert [s["train_encoder"] for s in variant_stages("trained_encoder")[2:]] == [True, True]
    assert variant_stages("delta")[2]["preset"] == "delta"
    with pytest.raises(ValueError):
        variant_stages("nope")
    with pytest.raises(ValueError):
        variant_stages("full", total_iterations=2)


def test_variants_follow_the_bundle_recipe():
    import yaml

    from monai_r2gen.networks.factory import embedded_default_config
    from tests.engines.test_bundle import CONFIGS

    train = yaml.safe_load((CONFIGS / "train.yaml").read_text())
    config = embedded_default_config()  # what the ablation builds
    assert (config.max_length, config.image_size, config.num_queries) == (
        train["max_length"],
        train["image_size"],
        train["network_config"]["num_queries"],
    )
    for stage in variant_stages("full"):
        bundle = {**train["stage_defaults"], **train[stage["name"]]}  # what the workflow merges
        assert stage["max_iterations"] == bundle["max_iterations"] and stage["batch_size"] == bundle["batch_size"]
        for key in ("lr", "warmup_steps", "end_lr", "teacher_forcing"):
            assert stage.get(key, 0.0) == pytest.approx(bundle.get(key, 0.0)), (stage["name"], key)
        for key in ("augment", "train_encoder", "text_only"):
            assert stage.get(key, False) == bundle.get(key, False), (stage["name"], key)
        if "lora" in stage:
            assert {k: stage["lora"][k] for k in ("r", "alpha", "target_modules")} == {
                k: bundle["lora"][k] for k in ("r", "alpha", "target_modules")
            }


def test_table_means_over_seeds():
    runs = [
        {
            "variant": "full",
            "seed": s,
            "scores": {"CE-14 micro-F1": v, "CE-14 macro-F1": None, "BLEU-4": 0.1, "CIDEr": 0.2},
        }
        for s, v in ((0, 0.9), (1, 0.7))
    ]
    table = ablation_table(runs)
    assert "| full | 0, 1 | 0.800 (0.900 / 0.700) | n/a | 0.100 (0.100 / 0.100) |" in table


_TINY = {
    "seeds": (0,), "batch_size": 4, "n_studies": 20, "image_size": 64, "eval_max_studies": 4, "device": "cpu",
    "network": {
        "llm_options": tiny_llm_options("llama", hidden_size=32, num_layers=1, num_heads=2, max_positions=256),
        "num_queries": 4, "resampler_heads": 2, "tokenizer_vocab_size": 300,
        "encoder_options": {"channels": [8, 16, 16]},
        "generation": {"num_beams": 1, "do_sample": False, "repetition_penalty": 1.0, "min_new_tokens": 1,
                       "max_new_tokens": 8},
    },
}  # fmt: skip


@pytest.mark.slow
def test_tiny_ablation_end_to_end(tmp_path):
    kwargs = dict(_TINY, variants=["full", "no_stage0"], total_iterations=4, warmup_iterations=2)
    result = run_ablation(tmp_path / "data", tmp_path / "out", **kwargs)
    assert [(r["variant"], r["seed"]) for r in result["runs"]] == [("full", 0), ("no_stage0", 0)]
    for run in result["runs"]:
        assert 0.0 <= run["scores"]["CE-14 micro-F1"] <= 1.0 and run["scores"]["CIDEr"] >= 0.0
    summary = json.loads((tmp_path / "out" / "full" / "seed0" / "model" / "training_summary.json").read_text())
    assert summary["stages"]["encoder_warmup"]["iterations"] == 2
    assert sum(s["iterations"] for name, s in summary["stages"].items() if name != "encoder_warmup") == 4
    assert (tmp_path / "out" / "ablation.md").read_text().startswith("| variant |")
    again = run_ablation(tmp_path / "data", tmp_path / "out", **kwargs)  # finished runs are not trained again
    assert again["runs"] == result["runs"]
    shared = json.loads((tmp_path / "out" / "no_stage0" / "seed0" / "eval" / "scores.json").read_text())
    assert shared["shared_stages"] == ["encoder_warmup"]  # the same warm-up: trained once, copied


def test_share_completed_stages_takes_the_longest_identical_completed_prefix(tmp_path):
    full = variant_stages("full", warmup_iterations=5)
    no_stage1 = variant_stages("no_stage1", warmup_iterations=5)
    donor = tmp_path / "full"
    for stage in full[:2]:  # warm-up and stage 0 complete, stage 1 not
        (donor / "stages" / stage["name"]).mkdir(parents=True)
        (donor / "stages" / stage["name"] / "stage_complete.json").write_text("{}")
        (donor / "stages" / stage["name"] / "trainable.safetensors").write_text(stage["name"])
    (donor / "stages" / "stage1").mkdir()  # started, not complete
    copied = share_completed_stages(tmp_path / "a", no_stage1, [(donor, full)])
    assert copied == ["encoder_warmup", "stage0"]
    assert (tmp_path / "a" / "stages" / "stage0" / "trainable.safetensors").read_text() == "stage0"
    assert share_completed_stages(tmp_path / "a", no_stage1, [(donor, full)]) == []  # already there
    # a different warm-up length shares nothing; a different stage 0 shares only the warm-up
    assert share_completed_stages(tmp_path / "b", variant_stages("full", warmup_iterations=6), [(donor, full)]) == []
    other = variant_stages("full", warmup_iterations=5)
    other[1]["lr"] = 1e-4
    assert share_completed_stages(tmp_path / "c", other, [(donor, full)]) == ["encoder_warmup"]
    assert not (tmp_path / "c" / "stages" / "stage0").exists()


@pytest.mark.slow
def test_shared_stages_give_the_weights_of_an_unshared_run(tmp_path):
    from safetensors.torch import load_file

    kwargs = dict(_TINY, total_iterations=8, warmup_iterations=2)  # stage 0: 5 iterations in both variants
    run_ablation(tmp_path / "data", tmp_path / "shared", variants=["full", "no_stage1"], **kwargs)
    run_ablation(tmp_path / "data", tmp_path / "alone", variants=["no_stage1"], **kwargs)
    scores = [json.loads((tmp_path / out / "no_stage1" / "seed0" / "eval" / "scores.json").read_text())
              for out in ("shared", "alone")]  # fmt: skip
    assert scores[0]["shared_stages"] == ["encoder_warmup", "stage0"] and scores[1]["shared_stages"] == []
    weights = [load_file(tmp_path / out / "no_stage1" / "seed0" / "model" / "modules.safetensors")
               for out in ("shared", "alone")]  # fmt: skip
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key
    assert scores[0]["scores"] == scores[1]["scores"]
