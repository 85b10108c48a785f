"""ReportFindingLabelsd: CheXpert labels of a report as the target of the generator's finding head."""

from __future__ import annotations

import pytest
import torch

from monai_r2gen.data import ReportFindingLabelsd
from monai_r2gen.errors import ReportError
from monai_r2gen.metrics.chexpert import CHEXPERT_LABELS


def _positives(labels: torch.Tensor) -> set[str]:
    return {name for name, value in zip(CHEXPERT_LABELS, labels.tolist()) if value == 1.0}


def test_labels_effusion_and_device() -> None:
    report = ("there is a small left pleural effusion . a right internal jugular catheter terminates in the svc . "
              "no pneumothorax .")  # fmt: skip
    out = ReportFindingLabelsd(keys="report")({"report": report, "id": "a"})
    labels = out["finding_labels"]
    assert labels.dtype == torch.float32 and labels.shape == (len(CHEXPERT_LABELS),) == (14,)
    assert _positives(labels) == {"Pleural Effusion", "Support Devices"}
    assert out["report"] == report and out["id"] == "a"


def test_uncertain_policy_label_key_and_errors() -> None:
    item = {"report": "possible left lower lobe atelectasis ."}
    assert _positives(ReportFindingLabelsd()(item)["finding_labels"]) == set()
    positive = ReportFindingLabelsd(label_key="y", uncertain="positive")(item)
    assert _positives(positive["y"]) == {"Atelectasis"} and "finding_labels" not in positive
    assert "finding_labels" not in ReportFindingLabelsd(allow_missing_keys=True)({"id": "x"})
    with pytest.raises(ReportError, match="uncertain"):
        ReportFindingLabelsd(uncertain="ignore")
    with pytest.raises(ReportError, match="one report key"):
        ReportFindingLabelsd(keys=["a", "b"])
    with pytest.raises(ReportError, match="string"):
        ReportFindingLabelsd()({"report": 3})
