"""The optional finding head of RadiologyReportGenerator: auxiliary CheXpert BCE added to the LM loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from monai_r2gen.data.reports import ReportFindingLabelsd
from monai_r2gen.engines.stages import apply_stage
from monai_r2gen.errors import ModelConfigError
from monai_r2gen.networks.generator import RadiologyReportGenerator

from .test_generator import _batch


def _labelled_batch(model, reports, views=(1, 2, 2)):
    batch, _ = _batch(model, reports[: len(views)], views=list(views), max_length=200)
    labeler = ReportFindingLabelsd()
    batch["finding_labels"] = torch.stack([labeler({"report": r})["finding_labels"] for r in reports[: len(views)]])
    return batch


def _forward(model, batch, **kwargs):
    return model(batch["image"], batch["input_ids"], batch["attention_mask"], batch["labels"], batch["view_mask"],
                 **kwargs)  # fmt: skip


def test_loss_is_lm_plus_weighted_bce_and_gradients_reach_encoder_and_head(make_model, reports):
    model = make_model(finding_head=True, finding_loss_weight=0.5)
    assert model.finding_head is not None and model.finding_head.out_features == 14
    assert any(name.startswith("finding_head.") for name, _ in model.component_parameters()["projector"])
    apply_stage(model, "deep")  # encoder + projector (and head) train
    batch = _labelled_batch(model, reports)
    assert batch["finding_labels"].sum() > 0

    out = _forward(model, batch, finding_labels=batch["finding_labels"])
    lm = _forward(model, batch).loss
    with torch.no_grad():  # the head by hand: mean over tokens, then over the present views
        tokens = model.encoder(batch["image"], batch["view_mask"]).mean(dim=2)
        mask = batch["view_mask"].float().unsqueeze(-1)
        pooled = (tokens * mask).sum(dim=1) / mask.sum(dim=1)
        bce = F.binary_cross_entropy_with_logits(model.finding_head(pooled), batch["finding_labels"])
    torch.testing.assert_close(out.lm_loss, lm)
    torch.testing.assert_close(out.finding_loss, bce)
    torch.testing.assert_close(out.loss, lm + 0.5 * bce)
    assert out["loss"] is out.loss and out.finding_logits.shape == (3, 14)

    model.zero_grad()
    out.loss.backward()
    for prefix in ("finding_head.", "encoder.", "projector."):
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(prefix) and p.requires_grad]
        assert grads and any(g is not None and g.abs().sum() > 0 for g in grads), prefix


def test_encoder_runs_once_and_cached_tokens_train_the_head(make_model, reports):
    model = make_model(finding_head=True)
    apply_stage(model, "stage1")  # frozen encoder: the head trains with the projector
    batch = _labelled_batch(model, reports)
    calls = []
    handle = model.encoder.register_forward_hook(lambda *args: calls.append(1))
    out = _forward(model, batch, finding_labels=batch["finding_labels"])
    handle.remove()
    assert len(calls) == 1

    with torch.no_grad():
        tokens = model.encoder(batch["image"], batch["view_mask"])
    cached = model(None, batch["input_ids"], batch["attention_mask"], batch["labels"], batch["view_mask"],
                   visual_tokens=tokens, finding_labels=batch["finding_labels"])  # fmt: skip
    torch.testing.assert_close(cached.loss, out.loss)
    cached.loss.backward()
    assert model.finding_head.weight.grad is not None and model.finding_head.weight.grad.abs().sum() > 0


def test_finding_labels_ignored_without_head_or_images(make_model, reports):
    model = make_model()
    assert model.finding_head is None
    batch = _labelled_batch(model, reports)
    plain = _forward(model, batch)
    out = _forward(model, batch, finding_labels=batch["finding_labels"])
    torch.testing.assert_close(out.loss, plain.loss)
    assert "finding_loss" not in out and getattr(out, "finding_loss", None) is None
    with pytest.raises(ModelConfigError, match="no finding head"):
        model.finding_logits(torch.zeros(1, 1, 4, 16))

    headed = make_model(finding_head=True)
    text_batch = (None, batch["input_ids"], batch["attention_mask"], batch["labels"])
    text = headed(*text_batch, finding_labels=batch["finding_labels"])
    torch.testing.assert_close(text.loss, headed(*text_batch).loss)
    assert "finding_loss" not in text


def test_head_round_trips_through_save_and_load(make_model, reports, tmp_path):
    model = make_model(finding_head=True, finding_loss_weight=0.25)
    with torch.no_grad():
        model.finding_head.weight.normal_()
    model.save_pretrained(tmp_path / "m")
    loaded = RadiologyReportGenerator.from_pretrained(tmp_path / "m")
    assert loaded.config.finding_head and loaded.config.finding_loss_weight == 0.25
    for name, value in model.finding_head.state_dict().items():
        torch.testing.assert_close(loaded.finding_head.state_dict()[name], value)
    batch = _labelled_batch(model, reports)
    model.eval()
    loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(_forward(loaded, batch, finding_labels=batch["finding_labels"]).loss,
                                   _forward(model, batch, finding_labels=batch["finding_labels"]).loss)  # fmt: skip

    # a model saved without the head loads without one
    plain = make_model()
    plain.save_pretrained(tmp_path / "plain")
    assert RadiologyReportGenerator.from_pretrained(tmp_path / "plain").finding_head is None


def test_negative_weight_is_rejected(make_model):
    with pytest.raises(ModelConfigError, match="finding_loss_weight"):
        make_model(finding_head=True, finding_loss_weight=-1.0)


def test_finding_prompts_follow_the_visual_prompts(make_model, reports):
    with pytest.raises(ModelConfigError, match="finding_prompts needs finding_head"):
        make_model(finding_prompts=True)
    plain = make_model(finding_head=True)
    model = make_model(finding_head=True, finding_prompts=True)
    assert model.num_image_tokens == plain.num_image_tokens + 14
    batch = _labelled_batch(model, reports)
    model.eval()
    with torch.no_grad():
        prompts, mask = model.encode_images(batch["image"], batch["view_mask"])
        tokens = model.encode_views(batch["image"], batch["view_mask"])
        p = torch.sigmoid(model.finding_logits(tokens, batch["view_mask"])).unsqueeze(-1)
    assert prompts.shape[1] == model.num_image_tokens and bool(mask[:, -14:].all())
    expected = p * model.finding_prompts.present + (1 - p) * model.finding_prompts.absent
    torch.testing.assert_close(prompts[:, -14:], expected)

    # the prompt weights learn from the LM loss; the head only from its own loss (probabilities are detached)
    apply_stage(model, "stage1")
    model.train()
    lm = _forward(model, batch).loss
    lm.backward()
    assert model.finding_prompts.present.grad.abs().sum() > 0
    assert model.finding_head.weight.grad is None or model.finding_head.weight.grad.abs().sum() == 0


def test_text_only_stage_reads_the_report_labels_through_the_finding_prompts(make_model, reports):
    model = make_model(finding_head=True, finding_prompts=True)
    apply_stage(model, "stage0", train_encoder=True)
    batch = _labelled_batch(model, reports)
    labels = batch["finding_labels"]
    text = (batch["input_ids"], batch["attention_mask"], batch["labels"])

    def loss(images, finding_labels):
        return model(images, *text, batch["view_mask"], finding_labels=finding_labels, text_only=True)

    out = loss(batch["image"], labels)
    flipped = loss(batch["image"], 1 - labels)
    assert not torch.allclose(out.lm_loss, flipped.lm_loss)  # the LLM sees the label prompts
    # the visual prompts stay hidden: other images change only the head's loss, not the LM loss
    torch.testing.assert_close(loss(torch.rand_like(batch["image"]), labels).lm_loss, out.lm_loss)
    torch.testing.assert_close(loss(None, labels).loss, out.lm_loss)
    # without labels every image position is hidden, as in a plain text-only batch
    torch.testing.assert_close(model(None, *text).loss, model(None, *text, text_only=True).loss)

    model.zero_grad()
    out.loss.backward()
    for prefix in ("finding_prompts.", "finding_head.", "encoder."):
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(prefix) and p.requires_grad]
        assert grads and any(g is not None and g.abs().sum() > 0 for g in grads), prefix
    assert not any(p.requires_grad for n, p in model.named_parameters() if n.startswith("projector."))


def test_finding_prompts_round_trip(make_model, reports, tmp_path):
    model = make_model(finding_head=True, finding_prompts=True)
    with torch.no_grad():
        model.finding_prompts.present.normal_()
    model.save_pretrained(tmp_path / "m")
    loaded = RadiologyReportGenerator.from_pretrained(tmp_path / "m")
    torch.testing.assert_close(loaded.finding_prompts.present, model.finding_prompts.present)
    assert loaded.num_image_tokens == model.num_image_tokens


def test_findings_only_trains_the_head_without_running_the_llm(make_model, reports):
    model = make_model(finding_head=True, finding_prompts=True)
    apply_stage(model, "encoder_warmup")
    trained = {n.split(".", 1)[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trained == {"encoder", "finding_head"}
    batch = _labelled_batch(model, reports)
    calls = []
    handle = model.llm.register_forward_hook(lambda *args: calls.append(1))
    out = model(batch["image"], view_mask=batch["view_mask"], finding_labels=batch["finding_labels"],
                findings_only=True)  # fmt: skip
    handle.remove()
    assert not calls
    with torch.no_grad():
        expected = F.binary_cross_entropy_with_logits(
            model.finding_logits(model.encode_views(batch["image"], batch["view_mask"]), batch["view_mask"]),
            batch["finding_labels"],
        )
    torch.testing.assert_close(out.loss, expected, rtol=1e-4, atol=1e-5)  # batch norm in training mode
    out.loss.backward()
    assert model.encoder.features[0].conv.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="finding_labels"):
        model(batch["image"], view_mask=batch["view_mask"], findings_only=True)
    with pytest.raises(ValueError, match="has none"):
        apply_stage(make_model(), "encoder_warmup")


def test_teacher_forcing_puts_the_report_labels_in_the_finding_prompts(make_model, reports):
    model = make_model(finding_head=True, finding_prompts=True)
    apply_stage(model, "stage2")
    model.eval()  # no dropout: equal inputs give equal losses
    batch = _labelled_batch(model, reports)
    labels = batch["finding_labels"]
    with torch.no_grad():
        predicted = _forward(model, batch, finding_labels=labels)
        forced = _forward(model, batch, finding_labels=labels, teacher_forcing=1.0)
        flipped = _forward(model, batch, finding_labels=1 - labels, teacher_forcing=1.0)
        none = _forward(model, batch, finding_labels=labels, teacher_forcing=0.0)
        # the same LM loss as when the prompts are given those labels by hand
        embeds, mask = model.prepare_inputs_embeds(batch["input_ids"], batch["attention_mask"], batch["image"],
                                                   batch["view_mask"], finding_probabilities=labels)  # fmt: skip
        by_hand = model.llm(inputs_embeds=embeds, attention_mask=mask, labels=batch["labels"],
                            position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).loss  # fmt: skip
    torch.testing.assert_close(forced.lm_loss, by_hand)
    assert not torch.allclose(forced.lm_loss, predicted.lm_loss)
    assert not torch.allclose(forced.lm_loss, flipped.lm_loss)
    torch.testing.assert_close(none.lm_loss, predicted.lm_loss)
    # the head still learns from the images, whatever fills the prompts
    torch.testing.assert_close(forced.finding_loss, predicted.finding_loss)

    # a share: each study takes the labels or the prediction, never a mixture
    torch.manual_seed(0)
    head = model.finding_probabilities(model.encode_views(batch["image"], batch["view_mask"]), batch["view_mask"])
    rows = set()
    for _ in range(20):
        values = model._forced_probabilities(
            model.encode_views(batch["image"], batch["view_mask"]), batch["view_mask"], labels, 0.5
        )
        for i in range(len(labels)):
            if torch.equal(values[i], labels[i]):
                rows.add((i, "labels"))
            else:
                torch.testing.assert_close(values[i], head[i])
                rows.add((i, "head"))
    assert {kind for _, kind in rows} == {"labels", "head"}


def test_hard_finding_prompts_binarise_the_head(make_model, reports, tmp_path):
    with pytest.raises(ModelConfigError, match="hard_finding_prompts needs finding_prompts"):
        make_model(finding_head=True, hard_finding_prompts=True)
    model = make_model(finding_head=True, finding_prompts=True, hard_finding_prompts=True)
    batch = _labelled_batch(model, reports)
    model.eval()
    with torch.no_grad():
        model.finding_head.bias.copy_(torch.linspace(-3, 3, 14))  # some labels above 0.5, some below
        tokens = model.encode_views(batch["image"], batch["view_mask"])
        soft = torch.sigmoid(model.finding_logits(tokens, batch["view_mask"]))
        hard = model.finding_probabilities(tokens, batch["view_mask"])
        prompts, _ = model.encode_images(batch["image"], batch["view_mask"])
    assert set(hard.unique().tolist()) == {0.0, 1.0}
    torch.testing.assert_close(hard, (soft > 0.5).float())
    torch.testing.assert_close(prompts[:, -14:], model.finding_prompts(hard))
    model.save_pretrained(tmp_path / "m")
    assert RadiologyReportGenerator.from_pretrained(tmp_path / "m").config.hard_finding_prompts
