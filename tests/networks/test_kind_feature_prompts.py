"""Visual prompts read off the dense readout: one prompt per finding kind made of the features its map pools."""

from __future__ import annotations

import pytest
import torch

from monai_r2gen.data.finding_attributes import ATTRIBUTE_KINDS
from monai_r2gen.engines.stages import apply_stage
from monai_r2gen.errors import ModelConfigError
from monai_r2gen.networks.generator import RadiologyReportGenerator
from monai_r2gen.networks.kind_feature_prompts import KindFeaturePrompts

from .conftest import collate_reports as _batch

_KINDS = len(ATTRIBUTE_KINDS)


def test_each_kinds_prompt_reads_its_own_features_and_map():
    torch.manual_seed(0)
    prompts = KindFeaturePrompts(in_dim=12, dim=8, num_kinds=3, views=2, init_std=0.05)
    assert prompts.num_prompts == 3 and prompts.num_stats == 11
    readout = torch.randn(4, 3, 1 + 12 + 2 * 16)  # two views of 4 x 4 tokens
    readout[..., 1:13] = readout[..., 1:13] * 7.0 + 3.0  # any scale: the features are layer-normalised first
    out = prompts(readout)
    assert out.shape == (4, 3, 8)
    assert 0.02 < float(out.detach().std()) < 0.3  # near the scale it was given, not the features'
    changed = readout.clone()
    changed[:, 1, 1:13] += torch.randn(12)
    moved = (prompts(changed) - out).abs().amax(dim=(0, 2)) > 1e-6
    assert moved.tolist() == [False, True, False]

    maps = torch.full((1, 3, 2, 4, 4), -20.0)
    maps[0, 0, 0, :, :2] = 20.0  # kind 0: the left half of the first view
    maps[0, 2, 1] = 20.0  # kind 2: all of the second view
    readout = torch.cat([torch.zeros(1, 3, 13), maps.flatten(2)], dim=-1)
    stats = prompts.map_statistics(readout)
    torch.testing.assert_close(stats[0, :, 0], torch.zeros(3))  # pooled logit 0: presence 0.5 -> 2 p - 1 = 0
    stats = stats / 4.0  # areas of the view and its left, right, upper, lower halves
    torch.testing.assert_close(stats[0, 0, 1:6], torch.tensor([0.5, 1.0, 0.0, 0.5, 0.5]))
    torch.testing.assert_close(stats[0, 2, 6:], torch.ones(5))
    # the known findings' statistics are computed the same way from 0/1 box maps
    target = prompts.target_statistics(torch.tensor([[1.0, 0.0, 1.0]]), (maps > 0).float().flatten(2))
    torch.testing.assert_close(target[0, :, 1:], prompts.map_statistics(readout)[0, :, 1:])
    assert target[0, :, 0].tolist() == [1.0, -1.0, 1.0]
    forced = prompts(readout, forced=(target, torch.tensor([True])))
    presence_term = torch.einsum("ks,kso->ko", target[0, :, :1], prompts.stats_weight[:, :1])[None]
    torch.testing.assert_close(forced - prompts(readout), presence_term)  # only the presence statistic differs
    masked = prompts.map_statistics(readout, view_mask=torch.tensor([[True, False]]))
    assert float(masked[0, 2, 6:].abs().sum()) == 0.0  # a padded view says nothing
    one_view = prompts.map_statistics(readout[..., : 13 + 16], views=1)
    assert one_view.shape == (1, 3, 11) and float(one_view[..., 6:].abs().sum()) == 0.0
    with pytest.raises(ValueError, match="square token grids"):
        prompts(torch.randn(4, 3, 1 + 12 + 2 * 15))


def _feature_model(make_model):
    return make_model(attribute_head=True, attribute_source="dense", attribute_feature_prompts=True)


def test_the_prompts_are_the_readouts_features_and_carry_the_lm_loss_to_the_encoder(make_model, reports):
    model = _feature_model(make_model)
    queries = model.config.num_queries
    assert model.num_image_tokens == queries + _KINDS
    batch, _ = _batch(model, reports[:3], views=[1, 2, 2], max_length=200)
    with torch.no_grad():
        prompts, mask = model.encode_images(batch["image"], batch["view_mask"])
        tokens = model.encode_views(batch["image"], batch["view_mask"])
        features = model.attribute_head.features(tokens, batch["view_mask"])
        expected = model.attribute_features(features, batch["view_mask"])
    assert prompts.shape[1] == model.num_image_tokens and bool(mask.all())
    torch.testing.assert_close(prompts[:, queries:], expected)
    assert (prompts[0, queries:] - prompts[1, queries:]).abs().amax() > 1e-4  # image features differ per study

    apply_stage(model, "encoder_warmup")  # the LLM is not run: the prompts stay frozen (unused weights break DDP)
    assert not any(p.requires_grad for p in model.attribute_features.parameters())
    apply_stage(model, "stage2", train_encoder=True)
    assert all(p.requires_grad for p in model.attribute_features.parameters())
    out = model(batch["image"], input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                labels=batch["labels"], view_mask=batch["view_mask"])  # fmt: skip
    out.loss.backward()  # the LM loss alone: the head has no targets here
    assert model.attribute_features.weight.grad.abs().sum() > 0
    assert model.attribute_head.pool.hidden[0].weight.grad.abs().sum() > 0  # through the pooled features
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())


def test_feature_prompts_need_a_dense_head_and_round_trip(make_model, reports, tmp_path):
    with pytest.raises(ModelConfigError, match="attribute_feature_prompts needs"):
        make_model(attribute_head=True, attribute_source="tokens", attribute_feature_prompts=True)
    with pytest.raises(ModelConfigError, match="attribute_feature_prompts needs"):
        make_model(attribute_feature_prompts=True)
    model = _feature_model(make_model)
    with torch.no_grad():
        model.attribute_features.bias.add_(0.5)  # trained weights must come back
    model.eval()
    batch, _ = _batch(model, reports[:2], views=[1, 2], max_length=200)
    with torch.no_grad():
        prompts, _ = model.encode_images(batch["image"], batch["view_mask"])
    model.save_pretrained(tmp_path / "model")
    loaded = RadiologyReportGenerator.from_pretrained(tmp_path / "model").eval()
    assert loaded.config.attribute_feature_prompts and loaded.num_image_tokens == model.num_image_tokens
    with torch.no_grad():
        again, _ = loaded.encode_images(batch["image"], batch["view_mask"])
    torch.testing.assert_close(again, prompts)


def test_teacher_forcing_shows_the_known_findings_statistics(make_model, reports):
    from .test_attribute_head import _targets
    from .test_dense_readout import PNEUMOTHORAX, _boxes

    model = make_model(attribute_head=True, attribute_source="dense", attribute_feature_prompts=True,
                       attribute_box_weight=1.0)  # fmt: skip
    batch, _ = _batch(model, reports[:3], views=[1, 2, 2], max_length=200)
    presence, fields = _targets()
    boxes = torch.stack([_boxes([[PNEUMOTHORAX, 0, 0.0, 0.0, 0.5, 0.5]]), _boxes([]), _boxes([])])
    box_views = torch.tensor([[True, False], [True, True], [True, False]])  # study 2's lateral view is unknown
    stats, rows = model._forced_feature_statistics(presence, boxes, box_views, batch["view_mask"], 1.0)
    assert rows.tolist() == [True, True, False]  # study 0 has one view: its padded slot needs no boxes
    assert stats[:, :, 0].tolist() == (2 * presence - 1).tolist()
    assert float(stats[0, PNEUMOTHORAX, 1]) == 4.0 * 0.25  # the box covers a quarter of the frontal view
    assert model._forced_feature_statistics(presence, None, None, batch["view_mask"], 1.0) is None

    apply_stage(model, "stage2", train_encoder=True)
    common = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": batch["labels"],
              "view_mask": batch["view_mask"], "attribute_presence": presence, "attribute_fields": fields,
              "attribute_boxes": boxes, "attribute_box_views": box_views}  # fmt: skip
    with torch.no_grad():
        forced = model(batch["image"], teacher_forcing=1.0, **common)
        free = model(batch["image"], teacher_forcing=0.0, **common)
    assert not torch.allclose(forced.logits, free.logits)  # the LLM was shown other prompts
    torch.testing.assert_close(forced.attribute_loss, free.attribute_loss)  # the head's loss does not change
