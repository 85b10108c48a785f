"""Models, stage weights, studies and finding boxes for the analyses."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from monai_r2gen.analysis.loading import (
    load_model,
    load_stage_weights,
    load_studies,
    read_finding_boxes,
    stack_studies,
)
from monai_r2gen.errors import ManifestError, ModelConfigError


def test_load_model_directory_uses_eager_attention(saved_model_dir):
    model = load_model(saved_model_dir)
    assert model.base_llm.config._attn_implementation == "eager"
    assert not model.training


def test_embedded_default_needs_a_corpus():
    with pytest.raises(ModelConfigError, match="report texts"):
        load_model("embedded")


def test_stage_weights_are_loaded(tiny_model, tmp_path):
    model = tiny_model()
    stage_dir = tmp_path / "stages" / "stage1"
    stage_dir.mkdir(parents=True)
    queries = torch.full_like(model.projector.queries, 0.5)
    save_file({"projector.queries": queries, "llm.not.here": torch.zeros(1)}, str(stage_dir / "trainable.safetensors"))
    assert load_stage_weights(model, tmp_path, "stage1") == ["projector.queries"]
    torch.testing.assert_close(model.projector.queries.detach(), queries)
    with pytest.raises(ModelConfigError, match="stage2"):
        load_stage_weights(model, tmp_path, "stage2")
    save_file({"projector.queries": torch.zeros(1)}, str(stage_dir / "trainable.safetensors"))
    with pytest.raises(ModelConfigError, match="shape"):
        load_stage_weights(model, tmp_path, "stage1")


def test_studies_and_boxes_of_a_phantom_set(phantom_dir):
    studies = load_studies(phantom_dir / "annotation.json", "test", max_studies=3, image_size=64, max_views=2)
    assert len(studies) == 3
    images, mask = stack_studies(studies)
    assert images.shape == (3, 2, 1, 64, 64) and mask.dtype == torch.bool and bool(mask[:, 0].all())
    boxes = read_finding_boxes(phantom_dir)
    assert {s["id"] for s in studies} <= set(boxes)
    drawn = [f for fs in boxes.values() for f in fs]
    assert drawn and all(len(b) == 4 for f in drawn for b in f["boxes"]["frontal"])
    with pytest.raises(ManifestError):
        load_studies(phantom_dir / "annotation.json", "val")
    with pytest.raises(ManifestError):
        read_finding_boxes(phantom_dir / "annotation.json")
