"""Clinical efficacy scores: hand-checked numbers, uncertain-label policies, input validation, Ignite metric."""

from __future__ import annotations

import math

import pytest
from ignite.engine import Engine

from monai_r2gen.errors import MetricError
from monai_r2gen.metrics.chexpert import CheXpertLabeler
from monai_r2gen.metrics.clinical import CE5_LABELS, CEMetric, binarize_labels, ce_score_keys, ce_scores

# Four studies with precomputed labels (missing keys = not mentioned).
REFS = [
    {"Cardiomegaly": 1, "Pleural Effusion": 1},
    {"Edema": 1, "Pleural Effusion": -1},
    {"No Finding": 1},
    {"Atelectasis": 1, "Cardiomegaly": 0},
]
HYPS = [
    {"Cardiomegaly": 1},
    {"Edema": 1, "Pleural Effusion": 1},
    {"No Finding": 1, "Atelectasis": -1},
    {"Consolidation": 1},
]


def test_hand_checked_uncertain_as_negative() -> None:
    s = ce_scores(REFS, HYPS)  # default: uncertain -> negative
    # CE-5 per label (TP, FP, FN): Atelectasis (0, 0, 1) -> P 0 (0/0 -> 0), R 0, F1 0; Cardiomegaly (1, 0, 0) -> 1;
    # Consolidation (0, 1, 0) -> 0; Edema (1, 0, 0) -> 1; Pleural Effusion: ref 1 is uncertain -> negative, so
    # (0, 1, 1) -> 0.  Macro = (0 + 1 + 0 + 1 + 0) / 5 = 0.4 for P, R and F1.
    assert s["CE-5 macro-P"] == pytest.approx(0.4)
    assert s["CE-5 macro-R"] == pytest.approx(0.4)
    assert s["CE-5 macro-F1"] == pytest.approx(0.4)
    # Micro: TP 2, FP 2, FN 2 -> P = R = F1 = 0.5.
    assert (s["CE-5 micro-P"], s["CE-5 micro-R"], s["CE-5 micro-F1"]) == pytest.approx((0.5, 0.5, 0.5))
    # Example-based on CE-5: study 0 Y={Card, PE} Yhat={Card}: P 1, R 1/2, F1 2/3; study 1 Y={Edema}
    # Yhat={Edema, PE}: P 1/2, R 1, F1 2/3; study 2 nothing on either side: 0, 0, 0 (zero_division); study 3
    # Y={Atel} Yhat={Cons}: 0.  Means: P 1.5/4, R 1.5/4, F1 (4/3)/4.
    assert s["CE-5 example-P"] == pytest.approx(0.375)
    assert s["CE-5 example-R"] == pytest.approx(0.375)
    assert s["CE-5 example-F1"] == pytest.approx(1 / 3)
    # CE-14 adds No Finding (study 2: TP) and 8 observations with no positive anywhere (P = R = F1 = 0, still in the
    # macro mean).  Micro: TP 3, FP 2, FN 2 -> 0.6.  Macro F1 = (Card + Edema + No Finding) / 14 = 3/14.
    assert s["CE-14 micro-F1"] == pytest.approx(0.6)
    assert s["CE-14 macro-F1"] == pytest.approx(3 / 14)
    # Example-based on 14: study 2 now Y = Yhat = {No Finding} -> 1, 1, 1.
    assert s["CE-14 example-P"] == pytest.approx((1 + 0.5 + 1 + 0) / 4)
    assert s["CE-14 example-F1"] == pytest.approx((2 / 3 + 2 / 3 + 1 + 0) / 4)
    assert s["per_label"]["Pleural Effusion"] == {
        "precision": 0.0, "recall": 0.0, "f1": 0.0, "tp": 0, "fp": 1, "fn": 1, "support": 1,
    }  # fmt: skip
    assert s["settings"]["uncertain"] == "negative"
    assert s["settings"]["not_mentioned"] == "negative"
    assert s["settings"]["labeler"] == "precomputed"


def test_hand_checked_uncertain_as_positive() -> None:
    s = ce_scores(REFS, HYPS, uncertain="positive")
    # Atelectasis: hyp of study 2 becomes positive -> (0, 1, 1); Pleural Effusion: ref of study 1 becomes positive
    # -> (1, 0, 1): P 1, R 1/2, F1 2/3.  Macro F1 = (0 + 1 + 0 + 1 + 2/3) / 5 = 8/15.
    assert s["CE-5 macro-F1"] == pytest.approx(8 / 15)
    assert s["per_label"]["Pleural Effusion"]["recall"] == pytest.approx(0.5)
    # Micro: TP 3, FP 2, FN 2 -> 0.6.
    assert s["CE-5 micro-P"] == pytest.approx(0.6)
    assert s["CE-5 micro-F1"] == pytest.approx(0.6)


def test_hand_checked_uncertain_ignored() -> None:
    s = ce_scores(REFS, HYPS, uncertain="ignore")
    # Pairs dropped: (study 1, Pleural Effusion) and (study 2, Atelectasis).  Micro on CE-5: TP 2 (Card, Edema),
    # FP 1 (Cons), FN 2 (Atel study 3, PE study 0) -> P 2/3, R 1/2, F1 4/7.
    assert s["CE-5 micro-P"] == pytest.approx(2 / 3)
    assert s["CE-5 micro-R"] == pytest.approx(0.5)
    assert s["CE-5 micro-F1"] == pytest.approx(4 / 7)
    assert s["per_label"]["Pleural Effusion"]["fp"] == 0
    assert s["settings"]["uncertain"] == "ignore"


def test_zero_division_one() -> None:
    s = ce_scores(REFS, HYPS, zero_division=1.0)
    # Atelectasis P = 0/0 -> 1, Consolidation R = 0/0 -> 1; F1 of both stays 0 (denominator > 0).
    assert s["CE-5 macro-P"] == pytest.approx((1 + 1 + 0 + 1 + 0) / 5)
    assert s["CE-5 macro-R"] == pytest.approx((0 + 1 + 1 + 1 + 0) / 5)
    assert s["CE-5 macro-F1"] == pytest.approx(0.4)
    # study 2 (nothing on either side) now scores 1.
    assert s["CE-5 example-F1"] == pytest.approx((2 / 3 + 2 / 3 + 1 + 0) / 4)


def test_strings_equal_their_labels() -> None:
    labeler = CheXpertLabeler()
    refs = ["Small left effusion. Mild cardiomegaly.", "No acute process.", "Possible pneumonia."]
    hyps = ["Left effusion.", "Possible pneumonia.", "Right lower lobe pneumonia."]
    from_text = ce_scores(refs, hyps)
    from_labels = ce_scores(labeler.label_many(refs), labeler.label_many(hyps))
    for key in ce_score_keys():
        assert from_text[key] == pytest.approx(from_labels[key])
    assert from_text["settings"]["labeler"] == labeler.version
    assert from_text["CE-5 micro-P"] == pytest.approx(1.0)  # the only predicted CE-5 positive (effusion) is right


def test_returned_keys_and_values() -> None:
    s = ce_scores(REFS, HYPS)
    keys = ce_score_keys()
    assert len(keys) == 18 and keys[0] == "CE-14 micro-P" and keys[-1] == "CE-5 example-F1"
    assert all(0.0 <= s[k] <= 1.0 for k in keys)
    assert set(s["per_label"]) >= set(CE5_LABELS)
    assert s["settings"]["num_reports"] == 4


def test_nan_is_not_mentioned_and_binarize() -> None:
    pos, unc = binarize_labels([{"Edema": math.nan, "Atelectasis": -1.0}], labels=("Edema", "Atelectasis"))
    assert pos.tolist() == [[False, False]] and unc.tolist() == [[False, True]]
    pos, _ = binarize_labels([{"Atelectasis": -1.0}], labels=("Atelectasis",), uncertain="positive")
    assert pos.tolist() == [[True]]


@pytest.mark.parametrize(
    ("refs", "hyps", "kwargs", "match"),
    [
        (REFS, HYPS[:3], {}, "pair up"),
        ([], [], {}, "no reports"),
        (REFS, HYPS, {"uncertain": "maybe"}, "uncertain"),
        (REFS, HYPS, {"zero_division": 0.5}, "zero_division"),
        ([{"Effusion": 1}], [{}], {}, "unknown observation"),
        ([{"Edema": 2}], [{}], {}, "not 1, 0, -1"),
        ([{"Edema": "yes"}], [{}], {}, "not a number"),
        ([3], [{}], {}, "label dict"),
        ("a report", "another", {}, "sequences"),
    ],
)
def test_invalid_inputs(refs, hyps, kwargs, match) -> None:
    with pytest.raises(MetricError, match=match):
        ce_scores(refs, hyps, **kwargs)


def test_ce_metric_in_an_ignite_engine() -> None:
    refs = ["Mild cardiomegaly.", "No effusion.", "Small left effusion.", "Right lower lobe pneumonia."]
    hyps = ["Cardiomegaly.", "Small effusion.", "Left effusion.", "No pneumonia."]
    batches = [(hyps[:2], refs[:2]), (hyps[2:], refs[2:])]
    engine = Engine(lambda e, b: b)
    CEMetric(key="CE-14 micro-F1").attach(engine, "ce")
    state = engine.run(batches)
    expected = ce_scores(refs, hyps)
    assert state.metrics["ce"] == pytest.approx(expected["CE-14 micro-F1"])
    assert state.metrics["CE-5 macro-F1"] == pytest.approx(expected["CE-5 macro-F1"])
