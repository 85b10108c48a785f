"""The attribute head on the visual prompts and the projectors that feed it."""

from __future__ import annotations

import pytest
import torch

from monai_r2gen.data.finding_attributes import ATTRIBUTE_KINDS, FIELD_LIST, IGNORE_INDEX, attribute_targets
from monai_r2gen.engines.stages import apply_stage
from monai_r2gen.errors import ModelConfigError
from monai_r2gen.networks.attribute_head import FindingAttributeHead

from .test_generator import _batch

RECORDS = [
    [{"kind": "pneumothorax", "side": "left", "severity": "large"}],
    [{"kind": "pleural_effusion", "side": "right", "severity": "small"}, {"kind": "cardiomegaly", "severity": "mild"}],
    [],
]


def _targets():
    pairs = [attribute_targets(r) for r in RECORDS]
    return torch.stack([p for p, _ in pairs]), torch.stack([f for _, f in pairs])


def test_head_reads_one_anchored_prompt_per_kind():
    torch.manual_seed(0)
    head = FindingAttributeHead(num_prompts=12, dim=8)
    prompts = torch.randn(3, 12, 8)
    presence, fields = head(prompts)
    assert presence.shape == (3, len(ATTRIBUTE_KINDS)) and len(fields) == len(FIELD_LIST)
    changed = prompts.clone()
    changed[:, 2] += torch.randn(8)  # prompt 2 is pneumothorax's: only its logits move
    presence2, fields2 = head(changed)
    moved = (presence2 - presence).abs().sum(0) > 1e-6
    assert moved.tolist() == [k == "pneumothorax" for k in ATTRIBUTE_KINDS]
    changed[:, 10] += torch.randn(8)  # free prompts are not read
    presence3, _ = head(changed)
    torch.testing.assert_close(presence3, presence2)
    with pytest.raises(ModelConfigError, match="at least 9"):
        FindingAttributeHead(num_prompts=4, dim=8)


def test_loss_ignores_unknown_fields_and_learns():
    torch.manual_seed(0)
    head = FindingAttributeHead(num_prompts=9, dim=16)
    presence, fields = _targets()
    prompts = torch.randn(3, 9, 16)
    first = head.loss(prompts, presence, fields)
    unknown = torch.full_like(fields, IGNORE_INDEX)
    only_presence = head.loss(prompts, presence, unknown)
    torch.testing.assert_close(only_presence.field_loss, torch.tensor(0.0))
    torch.testing.assert_close(only_presence.presence_loss, first.presence_loss)
    optimizer = torch.optim.Adam(head.parameters(), lr=0.05)
    for _ in range(60):
        loss = head.loss(prompts, presence, fields).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(loss) < 0.1 * float(first.loss)
    predicted = head.predict(prompts)
    assert predicted[0] == {"pneumothorax": {"side": "left", "severity": "large"}}
    assert set(predicted[1]) == {"pleural_effusion", "cardiomegaly"} and predicted[2] == {}
    assert predicted[1]["pleural_effusion"] == {"right_size": "small", "left_size": "none"}


@pytest.mark.parametrize("projector", ["attention_pool", "resampler"])
def test_generator_adds_the_attribute_loss_where_the_visual_path_trains(make_model, reports, projector):
    model = make_model(projector=projector, num_queries=10, attribute_head=True, attribute_loss_weight=0.5)
    assert any(n.startswith("attribute_head.") for n, _ in model.component_parameters()["projector"])
    batch, _ = _batch(model, reports[:3], views=[1, 2, 2], max_length=200)
    presence, fields = _targets()
    args = (batch["image"], batch["input_ids"], batch["attention_mask"], batch["labels"], batch["view_mask"])

    apply_stage(model, "stage1")  # projector (and attribute head) train
    out = model(*args, attribute_presence=presence, attribute_fields=fields)
    lm = model(*args).loss
    with torch.no_grad():
        prompts, _ = model.encode_images(batch["image"], batch["view_mask"])
        expected = model.attribute_head.loss(prompts, presence, fields).loss
    torch.testing.assert_close(out.attribute_loss, expected)
    torch.testing.assert_close(out.loss, lm + 0.5 * expected)
    model.zero_grad()
    out.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters()
               if n.startswith("projector."))  # fmt: skip

    apply_stage(model, "stage0", train_projector=False)  # nothing of the visual path trains: no attribute loss
    out = model(*args, attribute_presence=presence, attribute_fields=fields)
    assert "attribute_loss" not in out

    apply_stage(model, "encoder_warmup")  # no LLM: encoder, projector and head on the attribute loss alone
    assert all(p.requires_grad for n, p in model.named_parameters() if n.startswith(("projector.", "attribute_head.")))
    assert not any(p.requires_grad for n, p in model.named_parameters() if n.startswith("llm."))
    out = model(batch["image"], view_mask=batch["view_mask"], findings_only=True, attribute_presence=presence,
                attribute_fields=fields)  # fmt: skip
    torch.testing.assert_close(out.loss, 0.5 * out.attribute_loss)
    with pytest.raises(ValueError, match="findings_only needs"):
        model(batch["image"], view_mask=batch["view_mask"], findings_only=True)


def test_attribute_head_is_saved_and_loaded(make_model, tmp_path):
    from monai_r2gen.networks.generator import RadiologyReportGenerator

    model = make_model(projector="attention_pool", num_queries=9, attribute_head=True, prompt_scale="embedding")
    embedding_std = float(model.llm.get_input_embeddings().weight.std())
    torch.testing.assert_close(model.projector.norm.weight, torch.full_like(model.projector.norm.weight, embedding_std))
    with torch.no_grad():  # trained weights: the loaded model must keep them, not the initial embedding scale
        model.attribute_head.probes[3].weight.add_(1.0)
        model.projector.norm.weight.mul_(3.0)
    model.save_pretrained(tmp_path)
    loaded = RadiologyReportGenerator.from_pretrained(tmp_path)
    for (name, a), (_, b) in zip(model.attribute_head.state_dict().items(), loaded.attribute_head.state_dict().items()):
        torch.testing.assert_close(a, b, msg=name)
    torch.testing.assert_close(loaded.projector.norm.weight, model.projector.norm.weight)


def test_several_poolings_per_kind_are_read_side_by_side(make_model):
    torch.manual_seed(0)
    head = FindingAttributeHead(num_prompts=0, dim=8, token_dim=6, queries=3)
    tokens = torch.randn(2, 10, 6)
    features = head.features(tokens)
    assert features.shape == (2, 3 * len(ATTRIBUTE_KINDS), 8)  # kind k's poolings at 3k, 3k + 1, 3k + 2
    weights = head.pool.attention(tokens)
    assert not torch.allclose(weights[:, 0], weights[:, 1])  # the poolings of one kind differ from the start
    presence, fields = head(features)
    assert presence.shape == (2, len(ATTRIBUTE_KINDS)) and len(fields) == len(FIELD_LIST)
    changed = features.clone()
    changed[:, 3 * ATTRIBUTE_KINDS.index("pneumothorax") + 2] += torch.randn(8)  # pneumothorax's third pooling
    moved = (head(changed)[0] - presence).abs().sum(0) > 1e-6
    assert moved.tolist() == [k == "pneumothorax" for k in ATTRIBUTE_KINDS]
    with pytest.raises(ModelConfigError, match="encoder tokens"):
        FindingAttributeHead(num_prompts=9, dim=8, queries=2)  # prompts are anchored one per kind
    with pytest.raises(ModelConfigError, match="attribute_queries"):
        make_model(attribute_head=True, attribute_queries=2)  # attribute_source "prompts"
    model = make_model(attribute_head=True, attribute_source="tokens", attribute_queries=2)
    assert model.attribute_head.pool.num_queries == 2 * len(ATTRIBUTE_KINDS)
