"""Attribute target prompts: a clean code of each study's findings that the LLM learns to read, and the alignment of
the projector's prompts to it (training only)."""

from __future__ import annotations

import pytest
import torch

from monai_r2gen.data.finding_attributes import ATTRIBUTE_KINDS, attribute_targets
from monai_r2gen.engines.stages import apply_stage
from monai_r2gen.errors import ModelConfigError
from monai_r2gen.networks.attribute_prompts import AttributeTargets, alignment_loss

from .test_attribute_head import RECORDS, _targets
from .test_generator import _batch


def test_targets_code_presence_and_each_attribute_in_the_kinds_own_prompt():
    torch.manual_seed(0)
    targets = AttributeTargets(dim=8, init_std=0.5)
    presence, fields = _targets()
    out = targets(presence, fields)
    assert out.shape == (len(RECORDS), len(ATTRIBUTE_KINDS), 8)
    # the same findings give the same targets; a left pneumothorax differs from a right one in its own prompt only
    right = [{"kind": "pneumothorax", "side": "right", "severity": "large"}]
    p2, f2 = attribute_targets(right)
    other = targets(p2[None], f2[None])[0]
    moved = (other - out[0]).abs().sum(-1) > 1e-6
    assert moved.tolist() == [k == "pneumothorax" for k in ATTRIBUTE_KINDS]
    # a study without findings: every prompt is its kind's "absent" code plus "unknown" fields
    torch.testing.assert_close(out[2], targets(torch.zeros(1, 9), torch.full_like(fields[:1], -100))[0])
    # the loss is relative to the targets' size and reaches 0 at the targets
    assert float(alignment_loss(out.clone(), out)) == 0.0
    torch.testing.assert_close(alignment_loss(torch.zeros_like(out), out), torch.tensor(1.0))


def test_generator_shows_the_targets_and_aligns_the_projector(make_model, reports):
    model = make_model(projector="attention_pool", num_queries=10, attribute_head=True, attribute_prompts=True,
                       attribute_prompt_weight=0.5, prompt_scale="embedding")  # fmt: skip
    batch, _ = _batch(model, reports[:3], views=[1, 2, 2], max_length=200)
    presence, fields = _targets()
    args = (batch["image"], batch["input_ids"], batch["attention_mask"], batch["labels"], batch["view_mask"])
    kwargs = {"attribute_presence": presence, "attribute_fields": fields}
    apply_stage(model, "stage0", train_projector=True)
    assert all(p.requires_grad for n, p in model.named_parameters() if n.startswith("attribute_prompts."))

    forced = model(*args, teacher_forcing=1.0, **kwargs)
    with torch.no_grad():
        prompts, mask = model.encode_images(batch["image"], batch["view_mask"])
        targets = model.attribute_prompts(presence, fields)
        shown = torch.cat([targets, prompts[:, 9:]], dim=1)
        embeds, attention = model.prepare_inputs_embeds(batch["input_ids"], batch["attention_mask"],
                                                        prompts=(shown, mask))  # fmt: skip
        position_ids = (attention.long().cumsum(-1) - 1).masked_fill(attention == 0, 0)
        lm = model.llm(inputs_embeds=embeds, attention_mask=attention, position_ids=position_ids,
                       labels=batch["labels"]).loss  # fmt: skip
    torch.testing.assert_close(forced.alignment_loss, alignment_loss(prompts[:, :9], targets))
    torch.testing.assert_close(forced.loss, lm + forced.attribute_loss + 0.5 * forced.alignment_loss)
    model.zero_grad()
    forced.loss.backward()
    assert model.attribute_prompts.presence.grad.abs().sum() > 0  # the LLM's loss trains the code it reads
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters()
               if n.startswith("projector."))  # fmt: skip

    # without teacher forcing the LLM reads the projector's prompts; the alignment loss is still added in training
    plain = model(*args, **kwargs)
    torch.testing.assert_close(plain.alignment_loss, forced.alignment_loss)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(*args, **kwargs).logits, model(*args).logits)
        assert "alignment_loss" not in model(*args, **kwargs)  # nothing trains: no auxiliary loss
    # generation never needs the targets
    assert len(model.generate(batch["image"], view_mask=batch["view_mask"], max_new_tokens=3)) == 3


def test_attribute_prompts_need_the_head_and_are_saved(make_model, tmp_path):
    from monai_r2gen.networks.generator import RadiologyReportGenerator

    with pytest.raises(ModelConfigError, match="attribute_prompts needs attribute_head"):
        make_model(attribute_prompts=True)
    model = make_model(projector="attention_pool", num_queries=9, attribute_head=True, attribute_prompts=True)
    with torch.no_grad():
        model.attribute_prompts.presence.add_(1.0)
    model.save_pretrained(tmp_path)
    loaded = RadiologyReportGenerator.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded.attribute_prompts.presence, model.attribute_prompts.presence)
