"""Finding attributes as training targets: which findings a study shows, on which side, how large, and where.

A radiology report names each finding with its attributes ("small right pleural effusion", "displaced fracture of
the left lateral 5th rib"). :data:`ATTRIBUTE_FIELDS` lists, per finding kind, the categorical attributes a report
gives and their values; :func:`attribute_targets` turns a study's findings (the phantoms' ``findings.json`` records,
or the attributes a reader found in the report text) into the targets of the generator's attribute head
(:class:`~monai_r2gen.networks.attribute_head.FindingAttributeHead`):

- ``presence`` ``(9,)`` float: 1 for each finding kind of :data:`ATTRIBUTE_KINDS` the study shows;
- ``fields`` ``(F,)`` long: for every attribute field of :data:`FIELD_LIST`, the index of the study's value, or
  :data:`IGNORE_INDEX` when the finding is absent or the value unknown.

:class:`FindingAttributeTargetsd` writes both into a data dictionary from its ``findings`` entry, or, for a study
without one, from what :func:`~monai_r2gen.metrics.attributes.read_finding_attributes` reads in its report (kinds,
sides and severities; the other fields stay unknown).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from monai_r2gen.metrics.attributes import FINDING_KINDS

__all__ = [
    "ATTRIBUTE_KINDS",
    "ATTRIBUTE_FIELDS",
    "FIELD_LIST",
    "IGNORE_INDEX",
    "finding_values",
    "attribute_targets",
    "report_findings",
    "FindingAttributeTargetsd",
]

IGNORE_INDEX = -100

#: finding kinds, in the order of the attribute head's anchored prompts
ATTRIBUTE_KINDS: tuple[str, ...] = FINDING_KINDS

_SIZES = ("none", "small", "moderate", "large")
_LOBES = ("right upper lobe", "right middle lobe", "right lower lobe", "left upper lobe", "lingula", "left lower lobe")

#: per kind: attribute field -> its values
ATTRIBUTE_FIELDS: dict[str, dict[str, tuple[str, ...]]] = {
    "cardiomegaly": {"severity": ("mild", "moderate", "severe")},
    "pleural_effusion": {"right_size": _SIZES, "left_size": _SIZES},
    "pneumothorax": {"side": ("right", "left"), "severity": ("small", "moderate", "large")},
    "consolidation": {"lobe": _LOBES, "severity": ("lobar", "patchy")},
    "lung_nodule": {"side": ("right", "left"), "severity": ("nodule", "mass"), "zone": ("upper", "mid", "lower")},
    "edema": {"severity": ("mild", "moderate", "severe")},
    "atelectasis": {"side": ("right", "left", "bilateral"), "severity": ("minimal", "mild")},
    "support_devices": {
        "endotracheal_tube": ("no", "yes"),
        "central_line": ("no", "yes"),
        "pacemaker": ("no", "yes"),
        "enteric_tube": ("no", "yes"),
    },
    "rib_fracture": {
        "side": ("right", "left"),
        "severity": ("displaced", "minimally displaced"),
        "location": ("lateral", "posterior"),
        "rib_number": ("4", "5", "6", "7", "8"),
    },
}

#: every (kind, field, values) in target order
FIELD_LIST: tuple[tuple[str, str, tuple[str, ...]], ...] = tuple(
    (kind, name, values) for kind in ATTRIBUTE_KINDS for name, values in ATTRIBUTE_FIELDS[kind].items()
)


def finding_values(finding: Mapping[str, Any]) -> dict[str, str | None]:
    """The attribute values of one finding record (``{"kind", "side", "severity", "params"}``).

    Fields a record does not determine are None. A record without ``params`` (e.g. read from a report) gives what
    its side and severity imply.
    """
    kind = str(finding.get("kind"))
    side, severity = finding.get("side"), finding.get("severity")
    params = finding.get("params") or {}
    values: dict[str, str | None] = dict.fromkeys(ATTRIBUTE_FIELDS.get(kind, {}))
    if "side" in values:
        values["side"] = side
    if "severity" in values:
        values["severity"] = severity
    if kind == "pleural_effusion":
        sizes = dict(params.get("sizes") or {})
        if not sizes and side in ("right", "left", "bilateral") and severity:
            sizes = dict.fromkeys(("right", "left") if side == "bilateral" else (side,), severity)
        if sizes or side:
            values["right_size"] = sizes.get("right", "none")
            values["left_size"] = sizes.get("left", "none")
    elif kind == "consolidation":
        values["lobe"] = params.get("lobe")
    elif kind == "lung_nodule":
        values["zone"] = params.get("zone")
    elif kind == "support_devices":
        devices = {str(d.get("type")) for d in params.get("devices", [])} if "devices" in params else None
        for name in ATTRIBUTE_FIELDS["support_devices"]:
            values[name] = None if devices is None else ("yes" if name in devices else "no")
    elif kind == "rib_fracture":
        values["location"] = params.get("location")
        values["rib_number"] = None if params.get("rib_number") is None else str(params["rib_number"])
    return values


def attribute_targets(findings: Sequence[Mapping[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(presence, fields)`` targets of a study's findings (see the module docstring); unknown kinds are ignored."""
    presence = torch.zeros(len(ATTRIBUTE_KINDS), dtype=torch.float32)
    fields = torch.full((len(FIELD_LIST),), IGNORE_INDEX, dtype=torch.long)
    by_kind = {str(f.get("kind")): f for f in findings}
    for k, kind in enumerate(ATTRIBUTE_KINDS):
        if kind in by_kind:
            presence[k] = 1.0
    for i, (kind, name, choices) in enumerate(FIELD_LIST):
        if kind not in by_kind:
            continue
        value = finding_values(by_kind[kind]).get(name)
        if value in choices:
            fields[i] = choices.index(value)
    return presence, fields


def report_findings(report: str) -> list[dict[str, Any]]:
    """Finding records (``kind``, ``side``, ``severity``) of what a report states."""
    from monai_r2gen.metrics.attributes import read_finding_attributes

    return [{"kind": kind, **values} for kind, values in read_finding_attributes(report).items()]


class FindingAttributeTargetsd(MapTransform):
    """Write the attribute head's targets of a study's findings (:func:`attribute_targets`).

    Args:
        keys: the key holding the study's findings (a list of finding records; exactly one key).
        report_key: for a study without the findings key, read the findings from the report under this key
            (:func:`report_findings`); None: such a study is an error.
        presence_key: where the ``(9,)`` presence targets go.
        fields_key: where the ``(F,)`` field targets go.

    Raises:
        KeyError: at call: neither the findings nor the report (with ``report_key``) are in the data.
    """

    def __init__(
        self,
        keys: KeysCollection = "findings",
        report_key: str | None = "report",
        presence_key: str = "attribute_presence",
        fields_key: str = "attribute_fields",
    ) -> None:
        super().__init__(keys, allow_missing_keys=True)
        if len(self.keys) != 1:
            raise ValueError(f"FindingAttributeTargetsd takes exactly one key, got {self.keys}")
        self.report_key = report_key
        self.presence_key = presence_key
        self.fields_key = fields_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        key = self.keys[0]
        if d.get(key) is not None:
            findings = list(d[key])
        elif self.report_key is not None and self.report_key in d:
            findings = report_findings(str(d[self.report_key]))
        else:
            raise KeyError(f"FindingAttributeTargetsd: no {key!r} and no {self.report_key!r} in the data")
        d[self.presence_key], d[self.fields_key] = attribute_targets(findings)
        return d
