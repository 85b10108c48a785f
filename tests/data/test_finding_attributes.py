"""Attribute targets of the generator's attribute head: fields, indices, report fallback."""

from __future__ import annotations

import pytest
import torch

from monai_r2gen.data.finding_attributes import (
    ATTRIBUTE_FIELDS,
    ATTRIBUTE_KINDS,
    FIELD_LIST,
    IGNORE_INDEX,
    FindingAttributeTargetsd,
    attribute_targets,
    finding_values,
    report_findings,
)

EFFUSION = {"kind": "pleural_effusion", "side": "bilateral", "severity": "large",
            "params": {"sizes": {"right": "small", "left": "large"}}}  # fmt: skip
FRACTURE = {"kind": "rib_fracture", "side": "left", "severity": "minimally displaced",
            "params": {"rib_number": 6, "location": "posterior"}}  # fmt: skip
DEVICES = {"kind": "support_devices", "side": None, "severity": None,
           "params": {"devices": [{"type": "pacemaker"}, {"type": "enteric_tube"}]}}  # fmt: skip


def _field(fields: torch.Tensor, kind: str, name: str) -> int:
    index = [i for i, (k, n, _) in enumerate(FIELD_LIST) if (k, n) == (kind, name)]
    assert len(index) == 1
    return int(fields[index[0]])


def test_field_list_covers_every_kind_in_order():
    assert tuple(dict.fromkeys(k for k, _, _ in FIELD_LIST)) == ATTRIBUTE_KINDS
    assert len(FIELD_LIST) == sum(len(f) for f in ATTRIBUTE_FIELDS.values())


def test_targets_of_phantom_records():
    presence, fields = attribute_targets([EFFUSION, FRACTURE, DEVICES])
    assert presence.tolist() == [float(k in ("pleural_effusion", "rib_fracture", "support_devices"))
                                 for k in ATTRIBUTE_KINDS]  # fmt: skip
    sizes = ATTRIBUTE_FIELDS["pleural_effusion"]["right_size"]
    assert _field(fields, "pleural_effusion", "right_size") == sizes.index("small")
    assert _field(fields, "pleural_effusion", "left_size") == sizes.index("large")
    assert _field(fields, "rib_fracture", "severity") == 1  # "minimally displaced"
    assert _field(fields, "rib_fracture", "rib_number") == ATTRIBUTE_FIELDS["rib_fracture"]["rib_number"].index("6")
    assert _field(fields, "rib_fracture", "location") == 1
    assert _field(fields, "support_devices", "pacemaker") == 1
    assert _field(fields, "support_devices", "central_line") == 0
    # absent kinds are ignored, not "negative"
    assert _field(fields, "pneumothorax", "side") == IGNORE_INDEX
    assert _field(fields, "cardiomegaly", "severity") == IGNORE_INDEX


def test_records_without_params_give_what_side_and_severity_imply():
    values = finding_values({"kind": "pleural_effusion", "side": "left", "severity": "moderate"})
    assert values == {"right_size": "none", "left_size": "moderate"}
    values = finding_values({"kind": "support_devices"})
    assert set(values.values()) == {None}  # which devices is unknown: every field ignored
    presence, fields = attribute_targets([{"kind": "lung_nodule", "side": "right", "severity": "mass"}])
    assert _field(fields, "lung_nodule", "side") == 0 and _field(fields, "lung_nodule", "severity") == 1
    assert _field(fields, "lung_nodule", "zone") == IGNORE_INDEX
    assert presence[ATTRIBUTE_KINDS.index("lung_nodule")] == 1


def test_unknown_values_and_kinds_are_ignored():
    presence, fields = attribute_targets([{"kind": "pneumothorax", "side": "up", "severity": "huge"},
                                          {"kind": "hernia"}])  # fmt: skip
    assert presence.sum() == 1
    assert _field(fields, "pneumothorax", "side") == IGNORE_INDEX


def test_transform_reads_findings_or_falls_back_to_the_report():
    transform = FindingAttributeTargetsd(keys="findings")
    out = transform({"findings": [FRACTURE], "report": "No acute disease."})
    assert out["attribute_presence"][ATTRIBUTE_KINDS.index("rib_fracture")] == 1
    out = transform({"report": "Moderate right pneumothorax. No pleural effusion."})
    assert out["attribute_presence"].tolist() == [float(k == "pneumothorax") for k in ATTRIBUTE_KINDS]
    assert _field(out["attribute_fields"], "pneumothorax", "side") == 0
    assert _field(out["attribute_fields"], "pneumothorax", "severity") == 1
    assert report_findings("No pneumothorax.") == []
    with pytest.raises(KeyError, match="findings"):
        transform({"id": "x"})
    with pytest.raises(ValueError, match="exactly one key"):
        FindingAttributeTargetsd(keys=["a", "b"])
