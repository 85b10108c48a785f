"""The attribute head's dense readout: per-token presence maps, their pooling and the box targets that teach them."""

from __future__ import annotations

import pytest
import torch

from monai_r2gen.data.finding_attributes import ATTRIBUTE_KINDS, FIELD_LIST
from monai_r2gen.data.finding_boxes import FindingBoxesd, view_kind
from monai_r2gen.engines.stages import apply_stage
from monai_r2gen.errors import ModelConfigError
from monai_r2gen.networks.attribute_head import FindingAttributeHead
from monai_r2gen.networks.dense_readout import DenseKindReadout, box_map_loss, box_map_targets

from .test_attribute_head import _targets
from .test_generator import _batch

PNEUMOTHORAX = ATTRIBUTE_KINDS.index("pneumothorax")


def _boxes(rows: list[list[float]], max_boxes: int = 4) -> torch.Tensor:
    out = torch.full((max_boxes, 6), -1.0)
    if rows:
        out[: len(rows)] = torch.tensor(rows)
    return out


def test_box_targets_mark_the_cells_a_box_overlaps_on_its_view():
    boxes = torch.stack([_boxes([[PNEUMOTHORAX, 0, 0.0, 0.0, 0.3, 0.2], [PNEUMOTHORAX, 1, 0.5, 0.5, 0.55, 0.55]]),
                         _boxes([])])  # fmt: skip
    targets = box_map_targets(boxes, views=2, tokens_per_view=16, num_kinds=len(ATTRIBUTE_KINDS))
    assert targets.shape == (2, len(ATTRIBUTE_KINDS), 32)
    frontal = targets[0, PNEUMOTHORAX, :16].reshape(4, 4)
    lateral = targets[0, PNEUMOTHORAX, 16:].reshape(4, 4)
    assert frontal.nonzero().tolist() == [[0, 0], [0, 1]]  # x up to 0.3 reaches the second column, y the first row
    assert lateral.nonzero().tolist() == [[2, 2]]  # a small box inside one cell still marks it
    assert float(targets.sum()) == 3.0  # nothing for other kinds, nothing for the second study
    with pytest.raises(ValueError, match="square token grid"):
        box_map_targets(boxes, views=2, tokens_per_view=15, num_kinds=9)


def test_box_loss_counts_only_known_views():
    maps = torch.zeros(1, len(ATTRIBUTE_KINDS), 8, requires_grad=True)  # 2 views of 4 tokens
    boxes = _boxes([[PNEUMOTHORAX, 1, 0.0, 0.0, 1.0, 1.0]])[None]
    none_known = box_map_loss(maps, boxes, torch.tensor([[False, False]]))
    assert float(none_known.detach()) == 0.0
    loss = box_map_loss(maps, boxes, torch.tensor([[False, True]]))
    loss.backward()
    assert maps.grad[..., :4].abs().sum() == 0  # the first view's boxes are unknown: no gradient
    assert maps.grad[0, PNEUMOTHORAX, 4:].lt(0).all()  # the box's cells are pushed up
    assert maps.grad[0, 0, 4:].gt(0).all()  # the other kinds' cells down


def test_readout_pools_each_kinds_map_over_real_views_only():
    torch.manual_seed(0)
    readout = DenseKindReadout(in_dim=6, dim=8, num_kinds=3, views=2)
    tokens = torch.randn(2, 2, 4, 6)
    mask = torch.tensor([[True, True], [True, False]])
    out = readout(tokens, mask)
    assert out.shape == (2, 3, 1 + 16 + 8)
    changed = tokens.clone()
    changed[1, 1] += 5.0  # the padded view of study 1 changes nothing
    torch.testing.assert_close(readout(changed, mask)[1, :, : 1 + 16], out[1, :, : 1 + 16])
    maps = out[..., 17:]
    assert (out[0, :, 0] <= maps[0].max(dim=-1).values + 1e-6).all()  # a soft maximum of the map
    assert (out[0, :, 0] >= maps[0].mean(dim=-1) - 1e-6).all()
    with pytest.raises(ValueError, match="view slots"):
        readout(torch.randn(1, 3, 4, 6))


def test_dense_head_learns_where_a_finding_is_from_its_boxes():
    torch.manual_seed(0)
    head = FindingAttributeHead(num_prompts=0, dim=16, token_dim=8, dense=True, views=1)
    tokens = torch.randn(16, 1, 4, 8)
    where = torch.randint(0, 4, (16,))  # the one token of each study that shows a pneumothorax
    tokens[torch.arange(16), 0, where, :2] += 3.0
    presence = torch.zeros(16, len(ATTRIBUTE_KINDS))
    presence[:, PNEUMOTHORAX] = 1.0
    fields = torch.full((16, len(FIELD_LIST)), -100)
    boxes = torch.stack([_boxes([[PNEUMOTHORAX, 0, (w % 2) * 0.5 + 0.1, (w // 2) * 0.5 + 0.1, (w % 2) * 0.5 + 0.4,
                                  (w // 2) * 0.5 + 0.4]]) for w in where.tolist()])  # fmt: skip
    views = torch.ones(16, 1, dtype=torch.bool)
    optimizer = torch.optim.Adam(head.parameters(), lr=0.01)
    for _ in range(150):
        loss = head.loss(head.features(tokens, views), presence, fields, boxes, views, box_weight=1.0)
        optimizer.zero_grad()
        loss.loss.backward()
        optimizer.step()
    assert loss.box_loss is not None and float(loss.box_loss) < 0.1
    maps = head.features(tokens, views)[:, PNEUMOTHORAX, 1 + 32 :]
    assert (maps.argmax(dim=-1) == where).all()  # the map points at the finding
    presence_logits, fields_logits = head(head.features(tokens, views))
    assert presence_logits.shape == (16, len(ATTRIBUTE_KINDS)) and len(fields_logits) == len(FIELD_LIST)
    assert (presence_logits[:, PNEUMOTHORAX] > 0).all()
    with pytest.raises(ModelConfigError, match="dense readout"):
        FindingAttributeHead(num_prompts=9, dim=8, dense=True)


def test_finding_boxes_follow_the_view_slots():
    findings = [
        {"kind": "pneumothorax", "side": "left", "boxes": {"frontal": [[0.6, 0.1, 0.9, 0.4]], "lateral": []}},
        {"kind": "cardiomegaly", "boxes": {"frontal": [[0.3, 0.4, 0.7, 0.8]]}},  # no lateral box: lateral unknown
    ]
    out = FindingBoxesd(max_views=3, max_boxes=4)({"findings": findings, "view_position": ["LL", "PA"]})
    assert out["attribute_box_views"].tolist() == [False, True, False]
    rows = out["attribute_boxes"]
    assert rows[:2, :2].tolist() == [[PNEUMOTHORAX, 1], [ATTRIBUTE_KINDS.index("cardiomegaly"), 1]]
    assert (rows[2:, 0] == -1).all()
    clean = FindingBoxesd(max_views=2)({"findings": [], "view_position": ["PA", "LATERAL"]})
    assert clean["attribute_box_views"].tolist() == [True, True]  # recorded, no finding: known clean
    unrecorded = FindingBoxesd(max_views=2)({"view_position": ["PA"], "report": "No effusion."})
    assert not unrecorded["attribute_box_views"].any()
    too_many = FindingBoxesd(max_views=1, max_boxes=1)({"findings": findings, "view_position": ["PA"]})
    assert not too_many["attribute_box_views"].any()
    assert [view_kind(v) for v in ("PA", "ap", "LL", "lateral", None, "OBL")] == [
        "frontal", "frontal", "lateral", "lateral", None, None]  # fmt: skip


def test_generator_adds_the_box_loss_with_a_dense_head(make_model, reports):
    model = make_model(attribute_head=True, attribute_source="dense", attribute_box_weight=2.0)
    batch, _ = _batch(model, reports[:3], views=[1, 2, 2], max_length=200)
    presence, fields = _targets()
    n = model.attribute_head.pool.view_embedding.shape[0]
    boxes = torch.stack([_boxes([[PNEUMOTHORAX, 0, 0.0, 0.0, 0.5, 0.5]]), _boxes([]), _boxes([])])
    box_views = torch.ones(3, n, dtype=torch.bool)
    apply_stage(model, "encoder_warmup")
    common = {"view_mask": batch["view_mask"], "findings_only": True, "attribute_presence": presence,
              "attribute_fields": fields}  # fmt: skip
    with_boxes = model(batch["image"], attribute_boxes=boxes, attribute_box_views=box_views, **common)
    without = model(batch["image"], **common)
    with torch.no_grad():
        features = model.attribute_head.features(model.encode_views(batch["image"], batch["view_mask"]),
                                                 batch["view_mask"])  # fmt: skip
        parts = model.attribute_head.loss(features, presence, fields, boxes, box_views, box_weight=2.0)
    torch.testing.assert_close(with_boxes.loss, parts.loss)
    torch.testing.assert_close(with_boxes.loss - without.loss, 2.0 * parts.box_loss)
    with pytest.raises(ModelConfigError, match="attribute_source"):
        make_model(attribute_head=True, attribute_source="grid")
    with pytest.raises(ModelConfigError, match="attribute_box_weight needs"):
        make_model(attribute_head=True, attribute_source="tokens", attribute_box_weight=1.0)


def test_batch_preparer_passes_the_boxes_on():
    from monai_r2gen.engines.workflows import ReportBatchPreparer

    batch = {"image": torch.zeros(2, 1, 1, 8, 8), "view_mask": torch.ones(2, 1, dtype=torch.bool),
             "attribute_presence": torch.zeros(2, 9), "attribute_fields": torch.zeros(2, len(FIELD_LIST)),
             "attribute_boxes": torch.stack([_boxes([]), _boxes([])]),
             "attribute_box_views": torch.ones(2, 1, dtype=torch.bool)}  # fmt: skip
    _, _, _, extra = ReportBatchPreparer("findings")(batch)
    assert extra["attribute_boxes"].shape == (2, 4, 6) and extra["attribute_box_views"].all()
    _, _, _, extra = ReportBatchPreparer("generate")(batch)
    assert "attribute_boxes" not in extra
