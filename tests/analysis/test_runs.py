"""The analyses end to end on a tiny saved model and a tiny phantom data set."""

from __future__ import annotations

import json

from PIL import Image

from monai_r2gen.analysis.runs import analyze_attention, analyze_prompts


def test_analyze_prompts_writes_table_and_histograms(saved_model_dir, phantom_dir, tmp_path):
    result = analyze_prompts(
        saved_model_dir, phantom_dir / "annotation.json", tmp_path, max_studies=4, compare=[saved_model_dir]
    )
    assert len(result["rows"]) == 2 and result["rows"][0]["studies"] == 4
    assert result["rows"][0]["prompt_norm_mean"] == result["rows"][1]["prompt_norm_mean"]  # same model twice
    for key in ("norms", "max_cosine"):
        with Image.open(result["files"][key]) as png:
            assert png.format == "PNG"


def test_analyze_prompts_on_the_embedded_default(phantom_dir, tmp_path):
    result = analyze_prompts("embedded", phantom_dir / "annotation.json", tmp_path, max_studies=2)
    # 16 visual prompts, then the 30 attribute slot prompts of the embedded default
    assert result["rows"][0]["name"] == "embedded" and result["rows"][0]["prompts_per_study"] == 46


def test_analyze_attention_with_reference_reports_and_boxes(saved_model_dir, phantom_dir, tmp_path):
    wanted = ["effusion", "pneumothorax", "enlarged", "heart", "no"]
    result = analyze_attention(
        saved_model_dir, phantom_dir / "annotation.json", tmp_path, max_studies=3, reports="reference", words=wanted
    )
    record = json.loads((tmp_path / "attention.json").read_text())
    assert len(record["share_matrix"]) == 1 and len(record["share_matrix"][0]) == 2
    assert 0 < result["summary"]["visual_share_mean"] < 1
    overlays = sorted((tmp_path / "overlays").rglob("*.png"))
    expected = sum(w in wanted for s in record["studies"] for w in s["words"])
    assert expected > 0 and len(overlays) == record["overlay_count"] == expected
    with Image.open(result["files"]["heatmap"]) as png:
        assert png.format == "PNG"
    # the phantom reports name their findings, so the box check has rows
    grounding = json.loads((tmp_path / "grounding.json").read_text())
    assert grounding["rows"] and all(0 <= r["inside"] <= 1 and 0 < r["area"] <= 1 for r in grounding["rows"])
    assert {s["kind"] for s in result["grounding"]} == {r["kind"] for r in grounding["rows"]}


def test_analyze_attention_generated_with_word_filter(saved_model_dir, phantom_dir, tmp_path):
    result = analyze_attention(
        saved_model_dir, phantom_dir / "annotation.json", tmp_path, max_studies=2, max_new_tokens=4, words=["zzz-never"]
    )
    assert result["summary"]["source"] == "generated"
    assert not list((tmp_path / "overlays").rglob("*.png"))


def test_analyze_prompts_per_stage(saved_model_dir, phantom_dir, tmp_path):
    from safetensors.torch import save_file

    from monai_r2gen.analysis.loading import load_model

    model = load_model(saved_model_dir)
    stage = tmp_path / "run" / "stages" / "stage1"
    stage.mkdir(parents=True)
    moved = {"projector.out_norm.weight": model.projector.out_norm.weight.detach() * 2.0}
    save_file(moved, str(stage / "trainable.safetensors"))
    result = analyze_prompts(
        saved_model_dir,
        phantom_dir / "annotation.json",
        tmp_path / "out",
        max_studies=2,
        run_dir=tmp_path / "run",
        stages=["stage1"],
        compare=[saved_model_dir],
    )
    assert [r["name"] for r in result["rows"]] == ["stage1", "tiny"]
    first, second = (r["prompt_norm_mean"] for r in result["rows"])
    assert abs(first - 2.0 * second) < 1e-3 * first  # the stage's weights were used (LayerNorm gain doubled)
