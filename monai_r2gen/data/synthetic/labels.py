"""CheXpert-14 ground truth of a phantom study.

Conventions (those of the CheXpert labeler, applied to the generated report):

- ``1.0``: the finding is drawn in the images and described in the report;
- ``0.0``: the finding is absent and the report explicitly negates it ("No pleural effusion.");
- ``None`` (blank in ``labels.csv``): absent and not mentioned;
- no label is ever uncertain (``-1``): the generator does not hedge.

Decisions on the parent/child labels:

- Lung Opacity is positive for consolidation, edema and atelectasis (the reports describe an opacity for each);
  a nodule or mass is Lung Lesion only, and its report never uses the words opacity or density.
- Cardiomegaly does not make Enlarged Cardiomediastinum positive: the phantom enlarges the heart, not the
  mediastinum, and the cardiomegaly reports do not mention the mediastinum (so it stays blank there).
- Pneumonia and Pleural Other are never drawn nor mentioned: always blank.
- No Finding is ``1.0`` when no observation other than Support Devices is positive, else blank (CheXpert never
  labels No Finding negative).
"""

from __future__ import annotations

from collections.abc import Iterable

from monai_r2gen.data.synthetic.findings import Finding
from monai_r2gen.metrics.chexpert import CHEXPERT_LABELS

__all__ = ["CHEXPERT_LABELS", "study_labels", "positive_labels", "format_label"]


def positive_labels(findings: Iterable[Finding]) -> set[str]:
    """CheXpert observations made positive by ``findings`` (No Finding excluded)."""
    out: set[str] = set()
    for f in findings:
        out.update(f.labels)
    return out


def study_labels(findings: Iterable[Finding], negated: Iterable[str]) -> dict[str, float | None]:
    """The 14 labels of a study from its findings and the observations its report explicitly negates."""
    positive = positive_labels(findings)
    labels: dict[str, float | None] = dict.fromkeys(CHEXPERT_LABELS)
    for name in positive:
        labels[name] = 1.0
    for name in negated:
        if labels[name] is None:
            labels[name] = 0.0
    labels["No Finding"] = None if positive - {"Support Devices"} else 1.0
    return labels


def format_label(value: float | None) -> str:
    """A label as written in ``labels.csv``: "1", "0", "-1" or "" (blank)."""
    return "" if value is None else str(int(value))
