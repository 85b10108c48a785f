"""The CheXpert labeler on real report language: a hand-labelled sentence set and one regression per phenomenon.

``data/chexpert_real_language.jsonl`` holds report sentences written for this test in the way radiologists write
(hedges, negated lists, IU-Xray's "XXXX" tokens, resolved and removed findings, chronic and unchanged findings,
normal anatomy, laterality and lobe words, misspellings, devices, fractures, normal studies). None is copied from a
data set or a paper. Each line is ``{"text": ..., "labels": {observation: 1 | 0 | -1}, "tags": [...]}``; an
observation left out is "not mentioned". The labels follow CheXpert's conventions as written in the module docstring
of :mod:`monai_r2gen.metrics.chexpert` ("likely" and "consistent with" are positive, "versus" / "or" between two
findings and "may represent" are uncertain, a stable or unchanged finding is positive, "no new X" is uncertain, No
Finding is 1 or not mentioned, never 0).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from monai_r2gen.metrics.chexpert import CHEXPERT_LABELS, NEGATIVE, POSITIVE, UNCERTAIN, CheXpertLabeler

P, N, U = POSITIVE, NEGATIVE, UNCERTAIN
DATA = Path(__file__).parent / "data" / "chexpert_real_language.jsonl"

MICRO_F1_FLOOR = 0.90
LABEL_F1_FLOOR = 0.75
MIN_POSITIVES = 5  # a label's F1 floor applies when the set has at least this many positives of it
AGREEMENT_FLOOR = 0.99  # exact 4-way value (1 / 0 / -1 / not mentioned) over every sentence and observation


def load_set(path: Path = DATA) -> list[dict]:
    """The sentence set, one dict per line, with every observation's expected value (None = not mentioned)."""
    items = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                item = json.loads(line)
                item["expected"] = {k: _value(item["labels"].get(k)) for k in CHEXPERT_LABELS}
                items.append(item)
    return items


def _value(v: int | None) -> float | None:
    return None if v is None else float(v)


def score_set(labeler: CheXpertLabeler, items: list[dict]) -> dict:
    """Positive-mention F1 per observation and micro-F1 (1 vs anything else), and exact 4-way agreement."""
    counts = {k: {"tp": 0, "fp": 0, "fn": 0, "positives": 0} for k in CHEXPERT_LABELS}
    agree = 0
    errors = []
    for item in items:
        got = labeler.label(item["text"])
        for k in CHEXPERT_LABELS:
            want = item["expected"][k]
            c = counts[k]
            c["tp"] += want == P and got[k] == P
            c["fp"] += want != P and got[k] == P
            c["fn"] += want == P and got[k] != P
            c["positives"] += want == P
            if got[k] == want:
                agree += 1
            else:
                errors.append((item["text"], k, want, got[k]))

    def f1(tp: int, fp: int, fn: int) -> float:
        return 2 * tp / (2 * tp + fp + fn) if tp else 0.0

    per_label = {k: f1(c["tp"], c["fp"], c["fn"]) for k, c in counts.items()}
    micro = f1(*(sum(c[x] for c in counts.values()) for x in ("tp", "fp", "fn")))
    return {
        "per_label": per_label,
        "positives": {k: c["positives"] for k, c in counts.items()},
        "micro_f1": micro,
        "agreement": agree / (len(items) * len(CHEXPERT_LABELS)),
        "errors": errors,
    }


@pytest.fixture(scope="module")
def labeler() -> CheXpertLabeler:
    return CheXpertLabeler()


@pytest.fixture(scope="module")
def items() -> list[dict]:
    return load_set()


@pytest.fixture(scope="module")
def scores(labeler: CheXpertLabeler, items: list[dict]) -> dict:
    return score_set(labeler, items)


def test_set_is_well_formed(items: list[dict]) -> None:
    assert len(items) >= 150
    texts = [i["text"] for i in items]
    assert len(set(texts)) == len(texts), "duplicate sentences"
    for item in items:
        assert set(item["labels"]) <= set(CHEXPERT_LABELS), item
        assert set(item["labels"].values()) <= {1, 0, -1}, item
        # the labeler's No Finding rule: 1 only when no other observation but Support Devices is positive/uncertain
        findings = [k for k, v in item["labels"].items() if k not in ("No Finding", "Support Devices") and v != 0]
        assert item["labels"].get("No Finding") in (None, 1), item
        assert not (item["labels"].get("No Finding") == 1 and findings), item
    tags = {t for i in items for t in i["tags"]}
    for tag in (
        "hedge",
        "negation-list",
        "xxxx",
        "resolved",
        "chronic",
        "unchanged",
        "normal-anatomy",
        "granulomatous",
        "laterality",
        "typo",
        "devices",
        "fracture",
        "normal-study",
    ):
        assert tag in tags


def test_positive_mention_micro_f1(scores: dict) -> None:
    assert scores["micro_f1"] >= MICRO_F1_FLOOR, scores["errors"][:10]


def test_positive_mention_f1_per_label(scores: dict) -> None:
    low = {
        k: round(f, 3)
        for k, f in scores["per_label"].items()
        if scores["positives"][k] >= MIN_POSITIVES and f < LABEL_F1_FLOOR
    }
    assert not low, (low, scores["errors"][:10])


def test_every_label_with_enough_positives_is_checked(scores: dict) -> None:
    # the set exercises every observation's positive F1 floor
    assert all(n >= MIN_POSITIVES for n in scores["positives"].values()), scores["positives"]


def test_exact_four_way_agreement(scores: dict) -> None:
    assert scores["agreement"] >= AGREEMENT_FLOOR, scores["errors"][:10]


# One regression per phenomenon: (text, expected values of some observations; None = not mentioned).
REGRESSIONS = [
    # hedges
    ("Left basilar opacity may represent atelectasis.", {"Lung Opacity": P, "Atelectasis": U}),
    ("A small left apical pneumothorax cannot be excluded.", {"Pneumothorax": U, "No Finding": None}),
    ("Right lower lobe opacity, atelectasis versus pneumonia.", {"Lung Opacity": P, "Atelectasis": U, "Pneumonia": U}),
    ("Possibly a small right pleural effusion.", {"Pleural Effusion": U}),
    ("Findings suggestive of mild pulmonary edema.", {"Edema": U}),
    ("Right lower lobe consolidation, likely pneumonia.", {"Consolidation": P, "Pneumonia": P}),
    ("Patchy left lower lobe opacity concerning for pneumonia.", {"Lung Opacity": P, "Pneumonia": U}),
    ("Recommend clinical correlation for pneumonia.", {"Pneumonia": U}),
    # scope of negation over a list: the severity word of one item must not leak
    (
        "No focal consolidation, large pleural effusion, or pneumothorax.",
        {"Consolidation": N, "Pleural Effusion": N, "Pneumothorax": N, "No Finding": P},
    ),
    (
        "No pneumothorax, large effusion, or consolidation is seen.",
        {"Consolidation": N, "Pleural Effusion": N, "Pneumothorax": N, "No Finding": P},
    ),
    ("No pneumothorax, small left pleural effusion.", {"Pneumothorax": N, "Pleural Effusion": P}),
    # IU-Xray de-identification tokens
    ("No XXXX pleural effusion or pneumothorax.", {"Pleural Effusion": N, "Pneumothorax": N, "No Finding": P}),
    ("XXXX sternotomy wires are intact.", {"Support Devices": P, "No Finding": P}),
    ("Heart size is XXXX.", {"Cardiomegaly": None, "No Finding": P}),
    # resolved / removed / no longer seen
    ("The right pneumothorax has resolved.", {"Pneumothorax": N, "No Finding": P}),
    ("Interval removal of the left chest tube.", {"Support Devices": N, "No Finding": P}),
    ("The left pleural effusion is no longer seen.", {"Pleural Effusion": N, "No Finding": P}),
    # chronic findings are present findings
    ("Chronic right pleural thickening.", {"Pleural Other": P}),
    ("Stable chronic left lower lobe atelectasis.", {"Atelectasis": P}),
    # unchanged / no change: the finding is still there
    ("Unchanged right pneumothorax.", {"Pneumothorax": P, "No Finding": None}),
    ("No significant change in right pneumothorax.", {"Pneumothorax": P, "No Finding": None}),
    ("No increase in right pneumothorax.", {"Pneumothorax": P}),
    ("No significant change in right pneumothorax or left effusion.", {"Pneumothorax": P, "Pleural Effusion": P}),
    # normal anatomy is negative, not uncertain
    (
        "Heart size and pulmonary vascularity appear within normal limits.",
        {"Cardiomegaly": N, "Edema": N, "No Finding": P},
    ),
    (
        "Heart size and pulmonary vascular engorgement appear within limits of normal.",
        {"Cardiomegaly": N, "Edema": N, "No Finding": P},
    ),
    ("Increased pulmonary vascularity.", {"Edema": U}),
    # old granulomatous disease is not pneumonia (but it is a finding)
    ("Residuals of prior granulomatous infection.", {"Pneumonia": None, "No Finding": None}),
    # laterality and lobe words
    ("Right lower lobe pneumonia.", {"Pneumonia": P}),
    ("Left basilar atelectasis.", {"Atelectasis": P}),
    ("Bibasilar opacities.", {"Lung Opacity": P}),
    # misspellings
    ("Small right pleural effusoin.", {"Pleural Effusion": P, "No Finding": None}),
    ("No pneumothroax.", {"Pneumothorax": N, "No Finding": P}),
    ("Mild cardiomegally.", {"Cardiomegaly": P, "No Finding": None}),
    ("Small right pneumo-\nthorax.", {"Pneumothorax": P}),
    # support devices
    ("Endotracheal tube terminates 5 cm above the carina.", {"Support Devices": P, "No Finding": P}),
    ("Right-sided PICC with tip in the cavoatrial junction.", {"Support Devices": P}),
    ("Left chest wall pacemaker with leads in the right atrium and right ventricle.", {"Support Devices": P}),
    ("Median sternotomy wires are intact.", {"Support Devices": P, "No Finding": P}),
    # fractures
    ("Healed right rib fracture.", {"Fracture": P, "No Finding": None}),
    ("No acute displaced rib fractures.", {"Fracture": N, "No Finding": P}),
    # normal studies
    ("No acute cardiopulmonary process.", {"No Finding": P}),
]


@pytest.mark.parametrize(("text", "expected"), REGRESSIONS, ids=[c[0][:48] for c in REGRESSIONS])
def test_real_language_regressions(labeler: CheXpertLabeler, text: str, expected: dict) -> None:
    labels = labeler.label(text)
    got = {k: labels[k] for k in expected}
    assert got == expected, [(m.observation, m.text, m.status, m.rule) for m in labeler.explain(text)]


def test_regressions_are_in_the_set(items: list[dict]) -> None:
    """Most regressions are also sentences of the set, labelled the same way."""
    by_text = {i["text"]: i["expected"] for i in items}
    shared = [(t, e) for t, e in REGRESSIONS if t in by_text]
    assert len(shared) >= 30
    for text, expected in shared:
        assert {k: by_text[text][k] for k in expected} == expected, text


def test_misspellings_do_not_rewrite_real_words(labeler: CheXpertLabeler) -> None:
    assert labeler.label("The pleura is smooth.")["Pleural Effusion"] is None
    assert labeler.label("No effusions.")["Pleural Effusion"] == N
    assert labeler.label("Left-\nsided pleural effusion.")["Pleural Effusion"] == P
