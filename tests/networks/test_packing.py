"""Padding-free packing: the plan, and the generator's loss and gradients with and without it."""

from __future__ import annotations

import pytest
import torch

from monai_r2gen.data.reports import IGNORE_INDEX
from monai_r2gen.engines.workflows import ReportBatchPreparer
from monai_r2gen.networks.packing import pack, plan_packing

from .conftest import LLM_FAMILIES, collate_reports, tiny_llm


def test_plan_packs_longest_first_with_restarting_positions() -> None:
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [0, 1, 1, 1, 1]])  # lengths 4, 2, 3, 4
    plan = plan_packing(mask)
    free = mask.numel()
    # rows of 4, longest first: study 0, study 3, study 2 (1 slot left, too small for study 1), study 1
    assert plan.index.tolist() == [[0, 1, 2, 3], [16, 17, 18, 19], [10, 11, 12, free], [5, 6, free, free]]
    assert plan.position_ids.tolist() == [[0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 0], [0, 1, 0, 1]]
    values = torch.arange(mask.numel()).reshape(mask.shape)
    packed = pack(values, plan, fill=-1)
    assert packed.tolist() == [[0, 1, 2, 3], [16, 17, 18, 19], [10, 11, 12, -1], [5, 6, -1, -1]]


def test_plan_fills_rows_first_fit() -> None:
    mask = torch.zeros(4, 10, dtype=torch.long)
    for row, n in enumerate((10, 6, 4, 3)):
        mask[row, :n] = 1
    plan = plan_packing(mask)
    assert plan.index.shape == (3, 10)  # [10], [6 + 4], [3 + 7 free]
    assert plan.position_ids[1].tolist() == [0, 1, 2, 3, 4, 5, 0, 1, 2, 3]


def test_a_study_without_attended_positions_is_refused() -> None:
    with pytest.raises(ValueError, match="no attended position"):
        plan_packing(torch.tensor([[1, 1], [0, 0]]))


@pytest.mark.parametrize("settings", [{}, {"projector": "linear", "view_fusion": "concat"},
                                      {"finding_head": True, "finding_prompts": True}])  # fmt: skip
@pytest.mark.parametrize("text_only", [False, True])
def test_packed_batches_give_the_padded_loss_and_gradients(make_model, reports, settings, text_only) -> None:
    model = make_model(**settings).eval()
    long = " ".join(reports[:6])  # the row length: room for two of the short ones
    texts = [long, "no pneumothorax.", reports[6], "mild cardiomegaly.", "the lungs are clear.", long]
    batch, _ = collate_reports(model, texts, views=[1, 2, 1, 2, 1, 1], max_length=256)
    assert batch["attention_mask"].sum() < batch["attention_mask"].numel()  # there is padding to skip
    labels = (torch.rand(6, 14, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    extra = {"finding_labels": labels} if settings.get("finding_head") else {}
    results = []
    for packed in (False, True):
        model.zero_grad()
        output = model(batch["image"], batch["input_ids"], batch["attention_mask"], batch["labels"],
                       view_mask=batch["view_mask"], text_only=text_only, pack_sequences=packed, **extra)  # fmt: skip
        output.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((output.loss.detach(), grads, output.logits.shape[0]))
    (loss, grads, rows), (packed_loss, packed_grads, packed_rows) = results
    torch.testing.assert_close(packed_loss, loss, atol=1e-6, rtol=1e-6)
    assert grads.keys() == packed_grads.keys()
    for name in grads:
        torch.testing.assert_close(packed_grads[name], grads[name], atol=1e-6, rtol=1e-5, msg=name)
    assert packed_rows < rows  # fewer, fuller rows


def test_preparer_asks_for_packing_in_training_modes_only() -> None:
    batch = {"input_ids": torch.ones(2, 3, dtype=torch.long), "attention_mask": torch.ones(2, 3, dtype=torch.long),
             "labels": torch.full((2, 3), IGNORE_INDEX), "image": torch.zeros(2, 1, 1, 4, 4),
             "view_mask": torch.ones(2, 1, dtype=torch.bool), "report": ["a", "b"]}  # fmt: skip
    for mode in ("train", "text"):
        assert ReportBatchPreparer(mode=mode, pack_sequences=True)(batch)[3]["pack_sequences"] is True
        assert "pack_sequences" not in ReportBatchPreparer(mode=mode)(batch)[3]
    assert "pack_sequences" not in ReportBatchPreparer(mode="generate", pack_sequences=True)(batch)[3]


@pytest.mark.parametrize("family", LLM_FAMILIES)
def test_packing_keeps_the_loss_for_every_llm_family(make_model, reports, family) -> None:
    """Each family must mask the packed studies from each other (transformers' packed-sequence masks); a family
    that ignored the position ids would let studies attend across a row and change the loss."""
    model = make_model(llm_options=tiny_llm(family)).eval()
    long = " ".join(reports[:6])
    batch, _ = collate_reports(model, [long, "no pneumothorax.", "mild cardiomegaly.", long], [1, 2, 1, 1], 256)
    args = (batch["image"], batch["input_ids"], batch["attention_mask"], batch["labels"])
    with torch.no_grad():
        losses = [model(*args, view_mask=batch["view_mask"], pack_sequences=packed).loss for packed in (False, True)]
    torch.testing.assert_close(losses[1], losses[0], atol=1e-5, rtol=1e-5)
