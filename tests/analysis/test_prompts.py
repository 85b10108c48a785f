"""Soft-prompt statistics against the text embeddings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from monai_r2gen.analysis.prompts import (
    format_table,
    prompt_table,
    soft_prompt_statistics,
    text_embedding_statistics,
    write_prompt_report,
)


def test_norms_and_cosines_match_a_direct_computation(tiny_model):
    model = tiny_model()
    torch.manual_seed(0)
    images, mask = torch.rand(3, 2, 1, 64, 64), torch.tensor([[True, True], [True, False], [True, True]])
    stats = soft_prompt_statistics(model, images, mask, ["a", "b", "c"], top_k=3)
    k = model.num_image_tokens
    assert stats.norms.shape == (3, k) and stats.max_cosine.shape == (3, k)
    assert stats.nearest_ids.shape == (3, k, 3) and len(stats.nearest_tokens[2][k - 1]) == 3

    prompts, _ = model.encode_images(images, mask)
    np.testing.assert_allclose(stats.norms, prompts.norm(dim=-1).detach().numpy(), rtol=1e-5)
    table = model.llm.get_input_embeddings().weight.detach()
    special = set(model.tokenizer.all_special_ids) | {model.image_token_id}
    assert not special & set(stats.nearest_ids.ravel().tolist())
    cos = torch.nn.functional.cosine_similarity(prompts[1, 0][None], table, dim=-1)
    nearest = int(stats.nearest_ids[1, 0, 0])
    assert stats.max_cosine[1, 0] == pytest.approx(cos[nearest].item(), abs=1e-5)
    allowed = torch.tensor([i for i in range(len(model.tokenizer)) if i not in special])
    assert stats.max_cosine[1, 0] == pytest.approx(cos[allowed].max().item(), abs=1e-5)
    assert np.all(np.diff(stats.nearest_cosine, axis=-1) <= 1e-6)  # nearest first
    assert model.tokenizer.convert_ids_to_tokens([nearest]) == [stats.nearest_tokens[1][0][0]]


def test_text_nearest_neighbour_excludes_itself(tiny_model):
    model = tiny_model()
    emb = model.llm.get_input_embeddings().weight
    special = set(model.tokenizer.all_special_ids) | {model.image_token_id}
    a, b = [i for i in range(len(model.tokenizer)) if i not in special][:2]
    with torch.no_grad():
        emb[b] = 3.0 * emb[a]  # same direction: their nearest neighbours have cosine 1
    norms, nearest = text_embedding_statistics(model)
    assert len(norms) == len(model.tokenizer) - len(special)
    assert nearest.max() == pytest.approx(1.0, abs=1e-5)
    assert np.sort(nearest)[-3] < 0.999  # only those two
    _, sampled = text_embedding_statistics(model, max_tokens=10)
    assert sampled.shape == (10,)


def test_summary_table_and_files(tiny_model, tmp_path):
    first, second = tiny_model(), tiny_model(seed=1)
    images = torch.rand(2, 2, 1, 64, 64)
    a = soft_prompt_statistics(first, images, name="stage1")
    b = soft_prompt_statistics(second, images, name="stage2")
    rows = prompt_table([a, b])
    assert [r["name"] for r in rows] == ["stage1", "stage2"]
    assert rows[0]["prompt_norm_median"] == pytest.approx(float(np.median(a.norms)))
    assert rows[0]["norm_ratio"] == pytest.approx(np.median(a.norms) / np.median(a.text_norms))
    table = format_table(rows)
    assert table.count("\n") == 3 and "| stage2 |" in table
    result = write_prompt_report({"x": a, "y": b}, tmp_path)
    for name in ("norms", "max_cosine"):
        with Image.open(result["files"][name]) as png:
            assert png.format == "PNG" and png.size == (640, 400)
    assert (tmp_path / "prompts.md").read_text().startswith("| model |")
    assert '"studies"' in (tmp_path / "prompts.json").read_text()


def test_slot_cosine_is_the_mean_pairwise_cosine():
    from monai_r2gen.analysis.prompts import slot_cosine

    prompts = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[0.0, 2.0], [3.0, 0.0]], [[1.0, 1.0], [1.0, 0.0]]])
    # slot 0: cos(a,b)=0, cos(a,c)=cos(b,c)=1/sqrt(2); slot 1: all pairs identical directions
    expected = [(0.0 + 2 / np.sqrt(2)) / 3, 1.0]
    np.testing.assert_allclose(slot_cosine(prompts), expected, rtol=1e-6)
    assert np.isnan(slot_cosine(prompts[:1])).all()
