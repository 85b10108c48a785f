"""Attention analysis: exact visual shares on hand-built tensors, shapes on a tiny model, prompt-to-grid maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_r2gen.analysis.attention import (
    attention_to_positions,
    collect_attention,
    group_words,
    prompt_token_map,
    token_grid,
    visual_attention_share,
    word_heatmaps,
)


def _softmax_rows(scores: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
    return scores.masked_fill(~key_valid, float("-inf")).softmax(-1)


def test_visual_share_of_hand_built_attention_is_exact():
    # 2 layers, 2 studies, 2 heads, 4 queries over 4 keys; keys 1 and 2 are the image positions
    att = torch.zeros(2, 2, 2, 4, 4)
    att[0, 0, 0, 3] = torch.tensor([0.1, 0.2, 0.3, 0.4])  # layer 0, study 0, head 0, query 3: 0.5 on the image
    att[0, 0, 0, 2] = torch.tensor([0.5, 0.5, 0.0, 0.0])  # query 2: 0.5
    att[0, 0, 1, 3] = torch.tensor([0.0, 1.0, 0.0, 0.0])  # head 1: 1.0
    att[0, 0, 1, 2] = torch.tensor([1.0, 0.0, 0.0, 0.0])  # 0.0
    att[1, 0, :, 2:] = torch.tensor([0.25, 0.25, 0.25, 0.25])  # layer 1: 0.5 everywhere
    att[0, 1, :, 3] = torch.tensor([0.0, 0.0, 0.9, 0.1])  # study 1 (one query): 0.9
    att[1, 1, :, 3] = torch.tensor([0.7, 0.0, 0.0, 0.3])  # 0.0
    image = torch.tensor([[False, True, True, False]] * 2)
    queries = torch.tensor([[False, False, True, True], [False, False, False, True]])

    per_query = attention_to_positions(att, image)
    assert per_query.shape == (2, 2, 2, 4)
    assert per_query[0, 0, 0, 3].item() == pytest.approx(0.5)
    assert per_query[0, 0, 1, 3].item() == pytest.approx(1.0)

    share = visual_attention_share(list(att), image, queries)
    # study 0: layer 0 head 0 = (0.5 + 0.5)/2, head 1 = (1 + 0)/2; layer 1 = 0.5; study 1: 0.9 (layer 0), 0 (layer 1)
    expected = torch.tensor([[(0.5 + 0.9) / 2, (0.5 + 0.9) / 2], [(0.5 + 0.0) / 2, (0.5 + 0.0) / 2]])
    torch.testing.assert_close(share, expected)


def test_share_normalises_rows_and_ignores_silent_rows():
    att = torch.zeros(1, 1, 1, 2, 3)
    att[0, 0, 0, 0] = torch.tensor([2.0, 2.0, 0.0])  # unnormalised row: half on key 0
    image = torch.tensor([[True, False, False]])
    per_query = attention_to_positions(att, image)
    assert per_query[0, 0, 0, 0].item() == pytest.approx(0.5)
    assert per_query[0, 0, 0, 1].item() == 0.0  # a row with no mass gives 0, not NaN
    with pytest.raises(ValueError):
        visual_attention_share(att, image, torch.zeros(1, 2, dtype=torch.bool))


def test_group_words_merges_pieces_and_drops_punctuation():
    pieces = [" the", " pl", "eural", " ", "eff", "usion", ".", " No", " pneumothorax."]
    words = group_words(pieces)
    assert [w for w, _ in words] == ["the", "pleural", "effusion", "no", "pneumothorax"]
    assert words[1][1] == [1, 2] and words[2][1] == [4, 5]


def test_token_grid_handles_class_and_register_tokens():
    assert token_grid(64) == (0, 8, 8)
    assert token_grid(197) == (1, 14, 14)
    assert token_grid(261) == (5, 16, 16)
    with pytest.raises(ValueError):
        token_grid(1)


@pytest.mark.parametrize("projector", ["resampler", "linear"])
def test_collect_attention_shapes_and_ranges(tiny_model, projector):
    model = tiny_model(projector=projector)
    torch.manual_seed(0)
    images, mask = torch.rand(3, 2, 1, 64, 64), torch.tensor([[True, False], [True, True], [True, True]])
    reports = ["small left pleural effusion.", "the lungs are clear.", "no pneumothorax"]
    analysis = collect_attention(model, images, mask, ["a", "b", "c"], reports=reports)
    k, layers, heads = model.num_image_tokens, 1, 2
    assert (analysis.num_layers, analysis.num_heads, analysis.num_prompts) == (layers, heads, k)
    for study, text in zip(analysis.studies, reports):
        ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
        assert study.token_ids == ids
        assert study.visual_share.shape == (len(ids), layers, heads)
        assert study.prompt_attention.shape == (len(ids), layers, k)
        assert np.all((study.visual_share >= 0) & (study.visual_share <= 1))
        # the per-prompt attention (head mean) adds up to the head-mean visual share
        np.testing.assert_allclose(study.prompt_attention.sum(-1), study.visual_share.mean(-1), rtol=1e-5, atol=1e-6)
    matrix = analysis.share_matrix()
    assert matrix.shape == (layers, heads) and np.all((matrix > 0) & (matrix < 1))
    expected = np.mean([s.visual_share.mean(0) for s in analysis.studies], axis=0)
    np.testing.assert_allclose(matrix, expected)


def test_generated_reports_match_generate(tiny_model):
    model = tiny_model()
    torch.manual_seed(1)
    images = torch.rand(2, 2, 1, 64, 64)
    analysis = collect_attention(model, images, max_new_tokens=6)
    texts = model.generate(images, num_beams=1, max_new_tokens=6)
    assert [s.report for s in analysis.studies] == texts
    assert all(0 < len(s.token_ids) <= 6 for s in analysis.studies)


def test_resampler_map_rows_are_cross_attention_distributions(tiny_model):
    model = tiny_model(projector="resampler")
    images = torch.rand(2, 2, 1, 64, 64)
    weights, (rows, cols) = prompt_token_map(model, images)
    assert (rows, cols) == (8, 8) and weights.shape == (2, model.num_image_tokens, 64)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, model.num_image_tokens))
    # the hooks are removed afterwards: a plain forward still works and returns the same prompts
    before, _ = model.encode_images(images)
    prompt_token_map(model, images)
    after, _ = model.encode_images(images)
    torch.testing.assert_close(before, after)
    assert not model.projector.layers[0]["attn"]._forward_hooks


def test_linear_map_is_identity_and_heatmaps_keep_the_mass(tiny_model):
    model = tiny_model(projector="linear")
    images = torch.rand(1, 2, 1, 64, 64)
    weights, grid = prompt_token_map(model, images)
    torch.testing.assert_close(weights[0], torch.eye(64))
    analysis = collect_attention(model, images, reports=["small left pleural effusion"])
    maps = word_heatmaps(model, analysis, images)
    words = maps["0"]
    assert [w for w, _ in words] == ["small", "left", "pleural", "effusion"]
    for index, (_, heat) in enumerate(words):
        assert heat.shape == grid
        assert heat.sum() == pytest.approx(analysis.studies[0].word_prompt_attention(index).sum(), rel=1e-5)


def test_pooled_encoder_has_no_overlay(tiny_model):
    model = tiny_model(projector="linear", encoder_feature="pooled")
    with pytest.raises(ValueError, match="square grid"):
        prompt_token_map(model, torch.rand(1, 2, 1, 64, 64))


def test_class_token_is_dropped_from_the_grid(tiny_model):
    from monai_r2gen.networks.factory import tiny_encoder_options

    model = tiny_model(encoder="hf", encoder_options=tiny_encoder_options("vit", image_size=64), projector="linear",
                       image_mean=[0.5], image_std=[0.5])  # fmt: skip
    assert model.encoder.num_tokens == 65  # class token + 8 x 8 patches
    weights, grid = prompt_token_map(model, torch.rand(1, 2, 1, 64, 64))
    assert grid == (8, 8) and weights.shape == (1, 65, 64)
    assert float(weights[0, 0].abs().sum()) == 0.0  # the class-token prompt maps to no cell
    torch.testing.assert_close(weights[0, 1:], torch.eye(64))


def test_attention_through_llm_lora(tiny_model):
    model = tiny_model()
    model.enable_llm_lora()
    analysis = collect_attention(model, torch.rand(1, 2, 1, 64, 64), reports=["no pneumothorax"])
    assert analysis.studies[0].visual_share.shape[1:] == (1, 2)


def test_heatmaps_leave_out_the_finding_prompts(tiny_model):
    model = tiny_model(projector="resampler", finding_head=True, finding_prompts=True)
    images = torch.rand(1, 2, 1, 64, 64)
    weights, grid = prompt_token_map(model, images)
    visual = model.num_image_tokens - 14
    assert weights.shape == (1, visual, 64)
    analysis = collect_attention(model, images, reports=["small left pleural effusion"])
    maps = word_heatmaps(model, analysis, images)["0"]
    assert [w for w, _ in maps] == ["small", "left", "pleural", "effusion"]
    for index, (_, heat) in enumerate(maps):
        on_prompts = analysis.studies[0].word_prompt_attention(index)
        assert on_prompts.shape == (model.num_image_tokens,) and on_prompts[visual:].sum() > 0
        # the map keeps exactly the attention on the visual prompts (resampler rows sum to 1)
        assert heat.shape == grid and heat.sum() == pytest.approx(on_prompts[:visual].sum(), rel=1e-4)
