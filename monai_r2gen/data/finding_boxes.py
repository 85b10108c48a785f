"""Where each finding is: the boxes of a study's findings as fixed-size targets of the attribute head's presence maps.

A findings file may record, per finding, its boxes on each kind of view (the phantoms' ``findings.json`` does; a
user with region annotations writes the same)::

    {"kind": "pneumothorax", "side": "left", "severity": "small",
     "boxes": {"frontal": [[x0, y0, x1, y1], ...], "lateral": [[x0, y0, x1, y1]]}}

Coordinates are fractions of the image width / height, origin top-left, of the square image the model reads (the
phantoms are square; for other images, of the image after :class:`~monai_r2gen.data.transforms.ResizeWithPadSquare`).
:class:`FindingBoxesd` matches each loaded view slot to its kind of view by the study's ``view_position`` (PA / AP:
frontal, LL / LATERAL ...: lateral) and writes

- ``attribute_boxes`` ``(max_boxes, 6)`` float rows ``(kind index, view slot, x0, y0, x1, y1)``, kind index in
  :data:`~monai_r2gen.data.finding_attributes.ATTRIBUTE_KINDS` order, -1 on padding rows;
- ``attribute_box_views`` ``(max_views,)`` bool: the view slots whose boxes are known (the study's findings are
  recorded and each of them has boxes for that kind of view; a study without findings is known clean).

A study without recorded findings (read from its report) gets no known view.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from monai_r2gen.data.finding_attributes import ATTRIBUTE_KINDS
from monai_r2gen.data.studies import view_rank

__all__ = ["FindingBoxesd", "view_kind"]

logger = logging.getLogger(__name__)


def view_kind(view_position: str | None) -> str | None:
    """``"frontal"``, ``"lateral"`` or None (unknown) of a DICOM view position."""
    return {0: "frontal", 1: "frontal", 2: "lateral"}.get(view_rank(view_position))


class FindingBoxesd(MapTransform):
    """Write the finding boxes of a study as presence-map targets (see the module docstring).

    Args:
        keys: the key holding the study's finding records (exactly one key).
        view_key: the key holding each loaded view's position, in view-slot order.
        max_views: view slots of the model.
        max_boxes: rows of ``attribute_boxes`` (extra boxes are dropped, the study's views then unknown).
        boxes_key: where the boxes go.
        views_key: where the known-view mask goes.
    """

    def __init__(
        self,
        keys: KeysCollection = "findings",
        view_key: str = "view_position",
        max_views: int = 2,
        max_boxes: int = 32,
        boxes_key: str = "attribute_boxes",
        views_key: str = "attribute_box_views",
    ) -> None:
        super().__init__(keys, allow_missing_keys=True)
        if len(self.keys) != 1:
            raise ValueError(f"FindingBoxesd takes exactly one key, got {self.keys}")
        if int(max_views) < 1 or int(max_boxes) < 1:
            raise ValueError(f"max_views and max_boxes must be >= 1, got {max_views} and {max_boxes}")
        self.view_key = view_key
        self.max_views = int(max_views)
        self.max_boxes = int(max_boxes)
        self.boxes_key = boxes_key
        self.views_key = views_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        boxes = torch.full((self.max_boxes, 6), -1.0)
        known = torch.zeros(self.max_views, dtype=torch.bool)
        findings = d.get(self.keys[0])
        positions = d.get(self.view_key) or []
        if isinstance(positions, str):
            positions = [positions]
        if findings is not None:
            rows = []
            for slot, position in enumerate(list(positions)[: self.max_views]):
                kind_of_view = view_kind(position)
                slot_rows = _view_rows(findings, kind_of_view, slot) if kind_of_view else None
                if slot_rows is not None:
                    known[slot] = True
                    rows.extend(slot_rows)
            if len(rows) > self.max_boxes:
                logger.warning("FindingBoxesd: %d boxes, more than max_boxes=%d: the study's boxes are not used",
                               len(rows), self.max_boxes)  # fmt: skip
                rows, known = [], torch.zeros_like(known)
            if rows:
                boxes[: len(rows)] = torch.tensor(rows, dtype=torch.float32)
        d[self.boxes_key], d[self.views_key] = boxes, known
        return d


def _view_rows(findings: Sequence[Mapping[str, Any]], kind_of_view: str, slot: int) -> list[list[float]] | None:
    """Box rows of one view slot, or None when a finding has no boxes for that kind of view (unknown view)."""
    rows = []
    for finding in findings:
        kind = str(finding.get("kind"))
        if kind not in ATTRIBUTE_KINDS:
            continue
        per_view = finding.get("boxes")
        if not isinstance(per_view, Mapping) or kind_of_view not in per_view:
            return None
        for box in per_view[kind_of_view] or []:
            x0, y0, x1, y1 = (float(v) for v in box)
            rows.append([float(ATTRIBUTE_KINDS.index(kind)), float(slot), x0, y0, x1, y1])
    return rows
