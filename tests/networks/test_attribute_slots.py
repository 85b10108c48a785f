"""Attribute slot prompts: one prompt per attribute field, filled from known attributes or the attribute head."""

from __future__ import annotations

import pytest
import torch

from monai_r2gen.data.finding_attributes import ATTRIBUTE_KINDS, FIELD_LIST, IGNORE_INDEX, attribute_targets
from monai_r2gen.engines.stages import apply_stage
from monai_r2gen.errors import ModelConfigError
from monai_r2gen.networks.attribute_slots import (
    AttributeSlotPrompts,
    mix_slot_values,
    slot_values_from_logits,
    slot_values_from_targets,
)
from monai_r2gen.networks.generator import RadiologyReportGenerator
from monai_r2gen.networks.generator_config import GeneratorConfig

from .test_generator import _batch

RECORDS = [
    [{"kind": "pneumothorax", "side": "left", "severity": "large"}],
    [{"kind": "pneumothorax", "side": "right", "severity": "large"}],
    [{"kind": "lung_nodule", "side": "right"}],  # present, severity and zone not recorded
]
_PNX_SIDE = next(i for i, (kind, name, _) in enumerate(FIELD_LIST) if (kind, name) == ("pneumothorax", "side"))
_NODULE_SIZE = next(i for i, (kind, name, _) in enumerate(FIELD_LIST) if (kind, name) == ("lung_nodule", "severity"))


def _targets(records=RECORDS):
    pairs = [attribute_targets(r) for r in records]
    return torch.stack([p for p, _ in pairs]), torch.stack([f for _, f in pairs])


def test_known_values_are_one_hot_and_unknown_ones_uniform():
    presence, fields = _targets()
    assert int(fields[2, _NODULE_SIZE]) == IGNORE_INDEX
    p, values = slot_values_from_targets(presence, fields)
    assert p.shape == (3, len(ATTRIBUTE_KINDS)) and len(values) == len(FIELD_LIST)
    assert values[_PNX_SIDE].tolist()[:2] == [[0.0, 1.0], [1.0, 0.0]]  # left, right
    torch.testing.assert_close(values[_NODULE_SIZE][2], torch.full((2,), 0.5))
    for v in values:
        torch.testing.assert_close(v.sum(dim=1), torch.ones(3))


def test_slot_of_an_absent_finding_is_its_absent_vector_and_a_side_moves_only_its_slot():
    torch.manual_seed(0)
    slots = AttributeSlotPrompts(dim=8)
    assert slots.num_prompts == len(FIELD_LIST)
    prompts = slots(slot_values_from_targets(*_targets()))
    assert prompts.shape == (3, len(FIELD_LIST), 8)
    cardio = next(i for i, (kind, _, _) in enumerate(FIELD_LIST) if kind == "cardiomegaly")
    torch.testing.assert_close(prompts[:, cardio], slots.values[cardio][-1].expand(3, 8))  # absent
    torch.testing.assert_close(prompts[0, _PNX_SIDE], slots.values[_PNX_SIDE][1])  # left
    torch.testing.assert_close(prompts[1, _PNX_SIDE], slots.values[_PNX_SIDE][0])  # right
    differs = (prompts[0] - prompts[1]).abs().sum(dim=1) > 0
    assert differs.nonzero().flatten().tolist() == [_PNX_SIDE]  # the two studies differ in the side only


def test_hard_prediction_matches_the_taught_values_and_mixing_picks_per_study():
    presence, fields = _targets()
    known = slot_values_from_targets(presence, fields)
    logits = (presence * 8 - 4, [torch.nn.functional.one_hot(f.clamp(min=0), len(v)).float() * 5
                                 for f, (_, _, v) in zip(fields.T, FIELD_LIST)])  # fmt: skip
    hard = slot_values_from_logits(*logits, hard=True)
    torch.testing.assert_close(hard[0], known[0])
    torch.testing.assert_close(hard[1][_PNX_SIDE][:2], known[1][_PNX_SIDE][:2])  # the present ones
    soft = slot_values_from_logits(*logits, hard=False)
    assert 0.9 < float(soft[1][_PNX_SIDE][0, 1]) < 1.0
    mixed = mix_slot_values(known, soft, torch.tensor([True, False, True]))
    torch.testing.assert_close(mixed[1][_PNX_SIDE][1], soft[1][_PNX_SIDE][1])
    torch.testing.assert_close(mixed[1][_PNX_SIDE][0], known[1][_PNX_SIDE][0])


def test_config_checks():
    with pytest.raises(ModelConfigError, match="attribute_slots needs attribute_head"):
        GeneratorConfig(attribute_slots=True)
    with pytest.raises(ModelConfigError, match="attribute_source"):
        GeneratorConfig(attribute_head=True, attribute_source="pixels")


def _slot_model(make_model):
    return make_model(finding_head=True, finding_prompts=True, hard_finding_prompts=True, attribute_head=True,
                      attribute_source="tokens", attribute_slots=True)  # fmt: skip


def test_generator_reads_the_slots_in_text_only_and_teacher_forced_batches(make_model, reports):
    model = _slot_model(make_model)
    plain = make_model(finding_head=True, finding_prompts=True)
    assert model.num_image_tokens == plain.num_image_tokens + len(FIELD_LIST)
    assert model.attribute_head.reads_tokens
    batch, _ = _batch(model, reports[:2], views=[1, 2], max_length=200)
    labels = torch.zeros(2, 14)
    args = (batch["image"], batch["input_ids"], batch["attention_mask"], batch["labels"], batch["view_mask"])
    left, right = _targets(RECORDS[:2]), _targets(RECORDS[1::-1])
    apply_stage(model, "stage0", train_encoder=True)  # as the embedded default's stage 0
    model.eval()
    with torch.no_grad():
        text = [model(*args, finding_labels=labels, text_only=True, attribute_presence=p, attribute_fields=f)
                for p, f in (left, right)]  # fmt: skip
        hidden = model(*args, finding_labels=labels, text_only=True)
        forced = [model(*args, finding_labels=labels, teacher_forcing=1.0, attribute_presence=p, attribute_fields=f)
                  for p, f in (left, right)]  # fmt: skip
    # the text-only positions hold exactly the prompts encode_images appends (finding prompts, then slots)
    known = slot_values_from_targets(*left)
    with torch.no_grad():
        shown, _ = model.encode_images(batch["image"], batch["view_mask"], finding_probabilities=labels,
                                       attribute_values=known)  # fmt: skip
        embeds, mask = model.prepare_inputs_embeds(batch["input_ids"], batch["attention_mask"])
        written, mask = model._label_prompts(batch["input_ids"], embeds, mask, batch["attention_mask"], labels, known)
    image = batch["input_ids"] == model.image_token_id
    labelled = 14 + len(FIELD_LIST)
    for row in range(2):
        torch.testing.assert_close(written[row][image[row]][-labelled:], shown[row, -labelled:])
        assert bool(mask[row][image[row]][-labelled:].all()) and not bool(mask[row][image[row]][:-labelled].any())
    # the LLM sees the side: swapping it between the studies changes the loss, with or without images
    assert abs(float(text[0].lm_loss) - float(text[1].lm_loss)) > 1e-6
    assert abs(float(hidden.lm_loss) - float(text[0].lm_loss)) > 1e-6
    assert abs(float(forced[0].lm_loss) - float(forced[1].lm_loss)) > 1e-6
    # the token-reading head trains with the encoder in stage 0 (its loss is in the total)
    assert "attribute_loss" in text[0] and any(p.requires_grad for p in model.attribute_head.parameters())
    assert all(p.requires_grad for p in model.attribute_slots.parameters())  # read by the fully trained LLM
    apply_stage(model, "encoder_warmup")  # no LLM reads them; the head trains with the encoder
    assert not any(p.requires_grad for p in model.attribute_slots.parameters())
    assert all(p.requires_grad for p in model.attribute_head.parameters())


def test_prediction_fills_the_slots_and_the_model_round_trips(make_model, reports, tmp_path):
    model = _slot_model(make_model)
    batch, _ = _batch(model, reports[:2], views=[1, 2], max_length=200)
    with torch.no_grad():  # trained weights of the slots and of the head's own pooling must come back
        model.attribute_slots.values[_PNX_SIDE].add_(1.0)
        model.attribute_head.pool.scores.weight.normal_()
    model.eval()
    with torch.no_grad():
        prompts, mask = model.encode_images(batch["image"], batch["view_mask"])
    assert prompts.shape[1] == model.num_image_tokens and bool(mask.all())
    reports_written = model.generate(batch["image"], view_mask=batch["view_mask"], max_new_tokens=4)
    assert len(reports_written) == 2
    model.save_pretrained(tmp_path / "model")
    loaded = RadiologyReportGenerator.from_pretrained(tmp_path / "model").eval()
    assert loaded.config.attribute_slots and loaded.attribute_head.reads_tokens
    with torch.no_grad():
        again, _ = loaded.encode_images(batch["image"], batch["view_mask"])
    torch.testing.assert_close(again, prompts)


def test_without_finding_prompts_the_kinds_presence_comes_first(make_model, reports):
    torch.manual_seed(0)
    slots = AttributeSlotPrompts(dim=8, presence=True)
    assert slots.num_prompts == len(ATTRIBUTE_KINDS) + len(FIELD_LIST)
    prompts = slots(slot_values_from_targets(*_targets()))
    pnx = ATTRIBUTE_KINDS.index("pneumothorax")
    torch.testing.assert_close(prompts[0, pnx], slots.presence[pnx, 1])  # present
    torch.testing.assert_close(prompts[2, pnx], slots.presence[pnx, 0])  # absent
    side = len(ATTRIBUTE_KINDS) + _PNX_SIDE  # the field prompts follow the kinds'
    torch.testing.assert_close(prompts[0, side], slots.values[_PNX_SIDE][1])
    model = make_model(attribute_head=True, attribute_source="tokens", attribute_slots=True, hard_finding_prompts=True)
    assert model.finding_prompts is None and model.attribute_slots.presence is not None
    assert model.num_image_tokens == model.config.num_queries + len(ATTRIBUTE_KINDS) + len(FIELD_LIST)
    batch, _ = _batch(model, reports[:2], views=[1, 2], max_length=200)
    present, absent = _targets(RECORDS[:2]), _targets([[], []])
    model.eval()
    with torch.no_grad():
        losses = [model(batch["image"], batch["input_ids"], batch["attention_mask"], batch["labels"],
                        batch["view_mask"], text_only=True, attribute_presence=p, attribute_fields=f).loss
                  for p, f in (present, absent)]  # fmt: skip
    assert abs(float(losses[0]) - float(losses[1])) > 1e-6
