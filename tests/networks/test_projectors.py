"""View fusion and projectors: shapes, masks, padded views."""

from __future__ import annotations

import pytest
import torch

from monai_r2gen.errors import ModelConfigError
from monai_r2gen.networks.projectors import (
    AttentionResampler,
    LinearProjector,
    MLPProjector,
    ViewFusion,
    build_projector,
)


@pytest.mark.parametrize("views", [1, 2, 3, 4])
def test_mean_fusion_averages_present_views_only(views):
    torch.manual_seed(0)
    tokens = torch.randn(2, views, 5, 8)
    mask = torch.ones(2, views, dtype=torch.bool)
    mask[1, 1:] = False
    fused, token_mask = ViewFusion("mean", 8, max_views=4)(tokens, mask)
    assert fused.shape == (2, 5, 8) and bool(token_mask.all())
    torch.testing.assert_close(fused[0], tokens[0].mean(dim=0))
    torch.testing.assert_close(fused[1], tokens[1, 0])


@pytest.mark.parametrize("views", [1, 2, 3, 4])
def test_concat_fusion_keeps_views_and_masks_padding(views):
    fusion = ViewFusion("concat", 8, max_views=4)
    tokens = torch.randn(2, views, 5, 8)
    mask = torch.ones(2, views, dtype=torch.bool)
    mask[0, -1] = views == 1  # study 0 misses its last view unless it has only one
    fused, token_mask = fusion(tokens, mask)
    assert fused.shape == (2, 4 * 5, 8) and token_mask.shape == (2, 20)
    assert int(token_mask[1].sum()) == 5 * views  # slots beyond the batch's views are padding
    assert int(token_mask[0].sum()) == 5 * (views if views == 1 else views - 1)
    torch.testing.assert_close(fused[1, :5], tokens[1, 0] + fusion.view_embedding[0])
    assert torch.count_nonzero(fused[~token_mask]) == 0


def test_fusion_rejects_studies_without_views_and_too_many_views():
    fusion = ViewFusion("mean", 8, max_views=2)
    with pytest.raises(ValueError, match="no view"):
        fusion(torch.randn(2, 2, 3, 8), torch.tensor([[True, False], [False, False]]))
    with pytest.raises(ValueError, match="at most 2"):
        fusion(torch.randn(1, 3, 3, 8))
    with pytest.raises(ModelConfigError):
        ViewFusion("max", 8)


@pytest.mark.parametrize("cls", [LinearProjector, MLPProjector])
def test_tokenwise_projectors(cls):
    projector = cls(8, 12)
    prompts, mask = projector(torch.randn(3, 7, 8))
    assert prompts.shape == (3, 7, 12) and mask.shape == (3, 7) and projector.num_outputs(7) == 7
    if cls is LinearProjector:  # LayerNorm output (R2GenGPT)
        torch.testing.assert_close(prompts.mean(-1), torch.zeros(3, 7), atol=1e-5, rtol=0)


@pytest.mark.parametrize("num_queries", [1, 4, 16])
def test_resampler_gives_k_prompts_and_ignores_masked_tokens(num_queries):
    torch.manual_seed(0)
    resampler = AttentionResampler(8, 12, num_queries=num_queries, num_heads=2).eval()
    tokens = torch.randn(2, 10, 8)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[:, 6:] = False
    prompts, prompt_mask = resampler(tokens, mask)
    assert prompts.shape == (2, num_queries, 12) and bool(prompt_mask.all())
    assert resampler.num_outputs(123) == num_queries
    changed = tokens.clone()
    changed[:, 6:] = 100.0  # masked tokens must not matter
    torch.testing.assert_close(resampler(changed, mask)[0], prompts)
    assert not torch.allclose(resampler(changed)[0], prompts)  # unmasked, they do


def test_build_projector_by_name():
    assert isinstance(build_projector("linear", 4, 6), LinearProjector)
    assert isinstance(build_projector("mlp", 4, 6), MLPProjector)
    assert build_projector("resampler", 4, 6, num_queries=3, resampler_heads=2).num_queries == 3
    with pytest.raises(ModelConfigError):
        build_projector("qformer", 4, 6)
    with pytest.raises(ModelConfigError, match="divisible"):
        build_projector("resampler", 4, 6, resampler_dim=6, resampler_heads=4)


def test_grid_projector_pools_regions():
    from monai_r2gen.networks.projectors import GridPoolProjector

    torch.manual_seed(0)
    projector = GridPoolProjector(6, 10, grid=2)
    tokens = torch.randn(3, 16, 6)
    prompts, mask = projector(tokens)
    assert prompts.shape == (3, 4, 10) and bool(mask.all()) and projector.num_outputs(16) == 4
    weights = projector.region_weights(16)
    assert weights.shape == (4, 16)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(4))
    assert weights[0].reshape(4, 4)[:2, :2].sum() == pytest.approx(1.0)  # region 0: the top-left 2x2 cells
    expected = projector.norm(projector.net(torch.einsum("kt,btd->bkd", weights, tokens)))
    torch.testing.assert_close(prompts, expected)
    with pytest.raises(ModelConfigError, match="square grid"):
        projector.num_outputs(15)


def test_attention_pool_starts_as_mean_pooling_and_masks_padded_tokens():
    from monai_r2gen.networks.projectors import AttentionPoolProjector

    torch.manual_seed(0)
    projector = AttentionPoolProjector(6, 10, num_queries=3)
    tokens = torch.randn(2, 8, 6)
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[1, 4:] = False
    weights = projector.attention(tokens, mask)
    assert weights.shape == (2, 3, 8)
    torch.testing.assert_close(weights[0], torch.full((3, 8), 1 / 8))  # zero scores: a mean pooling
    torch.testing.assert_close(weights[1, :, 4:], torch.zeros(3, 4))
    prompts, prompt_mask = projector(tokens, mask)
    assert prompts.shape == (2, 3, 10) and bool(prompt_mask.all())
    with torch.no_grad():
        projector.scores.weight.normal_()
    assert not torch.allclose(projector.attention(tokens)[0, 0], projector.attention(tokens)[0, 1])
