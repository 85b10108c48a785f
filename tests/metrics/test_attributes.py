"""Finding attributes: reading side and severity from report text, loading ground truth, and the scores."""

from __future__ import annotations

import json
import math
import random
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from monai_r2gen.data.synthetic import FINDING_KINDS as GENERATOR_KINDS
from monai_r2gen.data.synthetic import FINDING_LABELS, generate_dataset
from monai_r2gen.data.synthetic import findings as generator_findings
from monai_r2gen.errors import InputFileError, MetricError
from monai_r2gen.metrics import CheXpertLabeler
from monai_r2gen.metrics.attributes import (
    FINDING_KINDS,
    SEVERITIES,
    SIDED_KINDS,
    SIDES,
    attribute_score_keys,
    attribute_scores,
    format_attribute_table,
    load_findings,
    read_finding_attributes,
)

N_STUDIES = 400


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A few hundred phantom studies (64 px PNG): their annotation entries and findings.json."""
    out = tmp_path_factory.mktemp("attribute_phantoms")
    summary = generate_dataset(out, N_STUDIES, seed=11, image_size=64, formats=("png",), workers=1)
    annotation = json.loads(Path(summary["annotation"]).read_text())
    entries = [e for split in ("train", "val", "test") for e in annotation[split]]
    return {"entries": entries, "findings_file": summary["findings"], "truth": load_findings(summary["findings"])}


def _expected(truth: list[dict]) -> dict[str, dict[str, str | None]]:
    return {
        f["kind"]: {"side": f["side"] if f["kind"] in SIDED_KINDS else None, "severity": f["severity"]} for f in truth
    }


def test_vocabulary_matches_the_generator() -> None:
    assert FINDING_KINDS == GENERATOR_KINDS
    assert SEVERITIES["cardiomegaly"] == tuple(generator_findings.CTR_RANGES)
    assert SEVERITIES["pleural_effusion"] == tuple(generator_findings.EFFUSION_HEIGHT)
    assert SEVERITIES["pneumothorax"] == tuple(generator_findings.PNEUMOTHORAX_DEPTH)
    assert SEVERITIES["edema"] == tuple(generator_findings.EDEMA_SPREAD)
    keys = attribute_score_keys()
    assert keys[:5] == ["attr/mention_recall", "attr/side_accuracy", "attr/side_prior", "attr/severity_accuracy",
                        "attr/severity_prior"]  # fmt: skip
    assert "attr/pleural_effusion/side_accuracy" in keys and "attr/cardiomegaly/side_accuracy" not in keys
    assert "attr/support_devices/mention_recall" in keys and "attr/support_devices/severity_prior" not in keys


# --------------------------------------------------------------------------------------------------------------------
# (a) the reference reports of the generator read back exactly
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["report", "report_full"])
def test_reference_reports_score_one_on_every_kind(phantoms, field) -> None:
    entries, truth = phantoms["entries"], phantoms["truth"]
    hyps = [e[field] for e in entries]
    result = attribute_scores(hyps, [truth[e["id"]] for e in entries])
    per_kind = result["per_kind"]
    assert set(per_kind) == set(FINDING_KINDS)  # every kind occurs in a few hundred studies
    for kind, row in per_kind.items():
        assert row["n"] > 0 and row["mention_recall"] == 1.0, kind
        assert row["spurious"] == 0, kind
        if kind in SIDED_KINDS:
            assert row["side_n"] == row["n"] and row["side_accuracy"] == 1.0, kind
        if SEVERITIES[kind]:
            assert row["severity_n"] == row["n"] and row["severity_accuracy"] == 1.0, kind
    for key in ("mention_recall", "side_accuracy", "severity_accuracy"):
        assert result[f"attr/{key}"] == 1.0
    assert all(isinstance(v, float) and not math.isnan(v) for k, v in result.items() if k.startswith("attr/"))
    # and per study: exactly the true kinds, sides and severities, nothing else
    for e, hyp in zip(entries, hyps):
        assert read_finding_attributes(hyp) == _expected(truth[e["id"]]), e["id"]


def test_positive_kinds_agree_with_the_chexpert_labeler(phantoms) -> None:
    labeler = CheXpertLabeler()
    for e in phantoms["entries"][:150]:
        labels = labeler.label(e["report_full"])
        read = set(read_finding_attributes(e["report_full"]))
        positive = {k for k in FINDING_KINDS if labels[FINDING_LABELS[k][0]] == 1.0}
        assert read == positive, e["report_full"]


# --------------------------------------------------------------------------------------------------------------------
# (b) reports of other studies with the same finding kinds: attributes at chance
# --------------------------------------------------------------------------------------------------------------------


def test_shuffled_reports_score_near_the_prior(phantoms) -> None:
    """Each study gets the report of another study with the same set of finding kinds (a random cycle per group),
    so the kinds are all right and the sides / severities are those of another patient.

    Study ``i`` then receives a report drawn uniformly from the other members of its group, so its attribute is right
    with probability p_i = (#same value in the group - 1) / (group size - 1). The test compares the number right
    with sum(p_i), within 4 standard deviations of a sum of independent Bernoullis (sqrt(sum p_i (1 - p_i))) plus one:
    that holds with probability > 0.999 whatever the seed. A random match cannot beat the majority value in
    expectation (sum of squared shares <= the largest share), so the accuracy must also stay below the prior (same
    tolerance), and well below 1.
    """
    entries, truth = phantoms["entries"], phantoms["truth"]
    groups: dict[frozenset, list[int]] = defaultdict(list)
    for i, e in enumerate(entries):
        kinds = frozenset(f["kind"] for f in truth[e["id"]])
        if kinds & set(SIDED_KINDS):
            groups[kinds].append(i)
    rng = random.Random(0)
    hyps, findings, expected = [], [], {"side": [0.0, 0.0], "severity": [0.0, 0.0]}
    for members in groups.values():
        if len(members) < 2:
            continue
        order = members[:]
        rng.shuffle(order)
        for pos, i in enumerate(order):
            donor = order[(pos + 1) % len(order)]
            hyps.append(entries[donor]["report"])
            findings.append(truth[entries[i]["id"]])
        for attr in ("side", "severity"):
            counts = Counter((f["kind"], f[attr]) for i in members for f in truth[entries[i]["id"]]
                             if f[attr] is not None and (attr == "severity" or f["kind"] in SIDED_KINDS))  # fmt: skip
            for c in counts.values():
                p = (c - 1) / (len(members) - 1)
                expected[attr][0] += c * p
                expected[attr][1] += c * p * (1 - p)
    result = attribute_scores(hyps, findings)
    assert result["attr/mention_recall"] == 1.0
    overall = result["overall"]
    for attr in ("side", "severity"):
        mean, var = expected[attr]
        tol = 4 * math.sqrt(var) + 1
        n = overall[f"{attr}_n"]
        assert n > 150, attr
        correct = overall[f"{attr}_correct"]
        print(f"{attr}: accuracy {correct / n:.3f}, expected {mean / n:.3f} +- {tol / n:.3f}, "
              f"prior {overall[f'{attr}_prior']:.3f} (n = {n})")  # fmt: skip
        assert abs(correct - mean) <= tol, attr
        assert correct <= overall[f"{attr}_prior_correct"] + tol, attr
        assert result[f"attr/{attr}_accuracy"] < 0.8, attr
        assert result[f"attr/{attr}_prior"] < 0.8, attr


# --------------------------------------------------------------------------------------------------------------------
# (c) hand-written reports
# --------------------------------------------------------------------------------------------------------------------

EFF, PTX, CARDIO = "pleural_effusion", "pneumothorax", "cardiomegaly"

HAND_CASES: list[tuple[str, dict[str, tuple[str | None, str | None]]]] = [
    ("No pleural effusion or pneumothorax.", {}),
    ("Heart size is normal. No focal consolidation, pleural effusion, or pneumothorax.", {}),
    ("No evidence of focal consolidation, pleural effusion, pulmonary edema, or pneumothorax.", {}),
    ("The cardiac silhouette is not enlarged. No displaced rib fracture.", {}),
    ("No pulmonary nodule or mass. Pneumothorax is not seen. The endotracheal tube has been removed.", {}),
    ("Small pericardial effusion.", {}),
    ("Bilateral pleural effusions, small on the right and large on the left.", {EFF: ("bilateral", "large")}),
    ("There is a small right and a moderate left pleural effusion.", {EFF: ("bilateral", "moderate")}),
    ("Small pleural effusions are present bilaterally, blunting both costophrenic angles.",
     {EFF: ("bilateral", "small")}),
    ("Minimal bibasilar atelectasis.", {"atelectasis": ("bilateral", "minimal")}),
    ("Lingular consolidation.", {"consolidation": ("left", None)}),
    ("Patchy consolidation in the lingula.", {"consolidation": ("left", "patchy")}),
    ("Dense consolidation of the left lower lobe with air bronchograms.", {"consolidation": ("left", "lobar")}),
    ("The heart is mildly enlarged.", {CARDIO: (None, "mild")}),
    ("Enlarged heart.", {CARDIO: (None, None)}),
    ("Cardiomegaly.", {CARDIO: (None, None)}),
    ("Minimally displaced fracture of the left 6th rib.", {"rib_fracture": ("left", "minimally displaced")}),
    ("Displaced right 5th rib fracture.", {"rib_fracture": ("right", "displaced")}),
    ("Non-displaced fracture of the right 4th rib.", {"rib_fracture": ("right", None)}),
    ("Small right-sided pleural effusion.", {EFF: ("right", "small")}),
    ("Moderate-to-large left pleural effusion.", {EFF: ("left", "large")}),
    ("No effusion, small right pneumothorax.", {PTX: ("right", "small")}),
    ("There is no pneumothorax but a large right pleural effusion.", {EFF: ("right", "large")}),
    ("No change in the small right pleural effusion.", {EFF: ("right", "small")}),
    ("A 3.5 cm mass in the right upper lung zone.", {"lung_nodule": ("right", "mass")}),
    ("Left-sided pacemaker with leads in the right atrium and right ventricle.", {"support_devices": (None, None)}),
    ("Severe pulmonary edema with confluent bilateral perihilar airspace opacities.",
     {"edema": ("bilateral", "severe")}),
    ("Moderate cardiomegaly and small bilateral effusions with mild pulmonary edema",
     {CARDIO: (None, "moderate"), EFF: ("bilateral", "small"), "edema": (None, "mild")}),
    # the first positive sentence that gives an attribute wins; the impression fills in what the findings omit
    ("FINDINGS: Bilateral pleural effusions.\n\nIMPRESSION: Small bilateral pleural effusions.",
     {EFF: ("bilateral", "small")}),
    ("Large left pneumothorax. Small right pneumothorax.", {PTX: ("left", "large")}),
    # model-like text: repetitions, missing punctuation, line breaks inside a sentence
    ("small left pleural effusion small left pleural effusion small left pleural effusion", {EFF: ("left", "small")}),
    ("mild cardiomegaly no pneumothorax small right pleural effusion",
     {CARDIO: (None, "mild"), EFF: ("right", "small")}),
    ("No pneumothorax small left effusion", {EFF: ("left", "small")}),
    ("Small left pleural\neffusion.", {EFF: ("left", "small")}),
    ("The heart is normal in size. Left lower lobe consolidation. No effusion is seen, small left apical pneumothorax.",
     {"consolidation": ("left", None), PTX: ("left", "small")}),
]


@pytest.mark.parametrize(("text", "want"), HAND_CASES, ids=[f"case{i:02d}" for i in range(len(HAND_CASES))])
def test_hand_written_reports(text, want) -> None:
    expected = {kind: {"side": side, "severity": severity} for kind, (side, severity) in want.items()}
    assert read_finding_attributes(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "   ", "....", "\x00\n\n;;", "right left bilateral mild severe small", "FINDINGS:\n\nIMPRESSION:",
     "no no no not without", "3.5.6 cm . . ,,, ((", "\u00e9\u00e8 \u2014 \U0001f600 lung", None, 42, ["effusion"]],
)  # fmt: skip
def test_garbage_gives_nothing(text) -> None:
    assert read_finding_attributes(text) == {}


def test_random_text_never_raises() -> None:
    """Random word salad from the reader's own vocabulary and punctuation: always a well-formed answer."""
    vocabulary = ("no not without small moderate large mild severe minimal right left bilateral both lingula lobar "
                  "patchy dense effusion effusions pneumothorax consolidation nodule mass edema atelectasis "
                  "cardiomegaly heart cardiac enlarged fracture rib displaced minimally tube line catheter pacemaker "
                  "is not seen and with but , . ; : ( ) - 3.5 cm")  # fmt: skip
    words = [*vocabulary.split(), "\n", "\n\n"]
    rng = np.random.default_rng(0)
    for _ in range(400):
        text = " ".join(rng.choice(words, size=int(rng.integers(1, 80))))
        read = read_finding_attributes(text)
        assert set(read) <= set(FINDING_KINDS)
        for kind, attrs in read.items():
            assert attrs["side"] in (None, *SIDES) and (kind in SIDED_KINDS or attrs["side"] is None)
            assert attrs["severity"] is None or attrs["severity"] in SEVERITIES[kind]
    assert set(read_finding_attributes("large left pleural effusion. " * 2000)) == {EFF}


# --------------------------------------------------------------------------------------------------------------------
# scores on hand-made ground truth
# --------------------------------------------------------------------------------------------------------------------


def test_scores_count_wrong_and_missing_attributes() -> None:
    truth = [
        [{"kind": EFF, "side": "right", "severity": "small"}],
        [{"kind": EFF, "side": "left", "severity": "small"}],
        [{"kind": EFF, "side": "left", "severity": "large"}, {"kind": CARDIO, "side": None, "severity": "mild"}],
        [{"kind": PTX, "side": "left", "severity": "small"}],
        [{"kind": "support_devices"}],
    ]
    hyps = [
        "Small left pleural effusion.",  # wrong side, right severity
        "Left pleural effusion.",  # right side, no written severity: wrong
        "Large left pleural effusion. Mild cardiomegaly. Small right pneumothorax.",  # all right, one spurious kind
        "No pneumothorax.",  # not mentioned
        "Endotracheal tube in standard position.",
    ]
    result = attribute_scores(hyps, truth)
    eff = result["per_kind"][EFF]
    assert (eff["n"], eff["mentioned"], eff["side_n"], eff["side_correct"]) == (3, 3, 3, 2)
    assert (eff["severity_n"], eff["severity_correct"]) == (3, 2)
    assert eff["side_prior_value"] == "left" and eff["side_prior"] == pytest.approx(2 / 3)
    assert eff["severity_prior_value"] == "small" and eff["severity_prior"] == pytest.approx(2 / 3)
    assert result["attr/pleural_effusion/side_accuracy"] == pytest.approx(2 / 3)
    assert result["attr/pleural_effusion/severity_accuracy"] == pytest.approx(2 / 3)
    ptx = result["per_kind"][PTX]
    assert ptx["mention_recall"] == 0.0 and ptx["spurious"] == 1
    assert ptx["side_accuracy"] is None and ptx["side_prior"] is None  # nothing mentioned: undefined, not NaN
    assert "attr/pneumothorax/side_accuracy" not in result and result["attr/pneumothorax/mention_recall"] == 0.0
    assert result["per_kind"][CARDIO]["side_n"] == 0 and "attr/cardiomegaly/side_accuracy" not in result
    assert result["attr/support_devices/mention_recall"] == 1.0
    assert set(result["per_kind"]) == {CARDIO, EFF, PTX, "support_devices"}  # kinds of the ground truth only
    # micro averages over kinds: 5 of 6 findings mentioned; sides 2/3 (effusions only); severities 3/4
    assert result["attr/mention_recall"] == pytest.approx(5 / 6)
    assert result["attr/side_accuracy"] == pytest.approx(2 / 3)
    assert result["attr/severity_accuracy"] == pytest.approx(3 / 4)
    assert result["attr/severity_prior"] == pytest.approx((2 + 1) / 4)  # majority per kind, summed
    assert result["overall"]["spurious"] == 1
    assert all(k in attribute_score_keys() for k in result if k.startswith("attr/"))
    table = format_attribute_table(result)
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["finding", "n", "recall"]
    assert lines[2].split() == [EFF, "3", "1.000", "0.667", "0.667", "3", "0.667", "0.667", "3", "0"]
    assert lines[3].split()[:4] == [PTX, "1", "0.000", "-"]
    assert lines[-1].startswith("all (micro)")


def test_precomputed_attributes_and_empty_inputs() -> None:
    truth = [[{"kind": EFF, "side": "right", "severity": "small"}], []]
    result = attribute_scores([{EFF: {"side": "right", "severity": "small"}}, "Normal chest."], truth)
    assert result["attr/side_accuracy"] == 1.0 and result["attr/severity_accuracy"] == 1.0
    empty = attribute_scores(["No acute disease."], [[]])
    assert empty["per_kind"] == {} and not [k for k in empty if k.startswith("attr/")]
    assert format_attribute_table(empty).splitlines()[-1].startswith("all (micro)")


def test_score_input_errors() -> None:
    with pytest.raises(MetricError, match="pair up"):
        attribute_scores(["a", "b"], [[]])
    with pytest.raises(MetricError, match="unknown kind 'pneumonia'"):
        attribute_scores(["a"], [[{"kind": "pneumonia"}]])
    with pytest.raises(MetricError, match="sequences"):
        attribute_scores("a report", [[]])
    with pytest.raises(MetricError, match="list of finding"):
        attribute_scores(["a"], [{"kind": EFF}])


# --------------------------------------------------------------------------------------------------------------------
# (d) ground-truth files
# --------------------------------------------------------------------------------------------------------------------


def test_load_findings_reads_both_layouts(phantoms, tmp_path) -> None:
    generated = load_findings(phantoms["findings_file"])
    assert len(generated) == N_STUDIES
    some = next(fs for fs in generated.values() if fs)
    assert {"kind", "side", "severity", "params", "boxes"} <= set(some[0])
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"s1": [{"kind": EFF, "side": "left", "severity": "small"}, {"kind": CARDIO}],
                                 "s2": []}))  # fmt: skip
    assert load_findings(plain) == {
        "s1": [{"kind": EFF, "side": "left", "severity": "small"}, {"kind": CARDIO, "side": None, "severity": None}],
        "s2": [],
    }


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "not found"),
        ("{not json", "invalid JSON"),
        ("[1, 2]", "top level is a list"),
        ("{}", "no studies"),
        ('{"s1": {"kind": "pleural_effusion"}}', "not a list of findings"),
        ('{"studies": {"s1": {"views": []}}}', "no 'findings' list"),
        ('{"s1": ["effusion"]}', "expected an object"),
        ('{"s1": [{"kind": "pneumonia"}]}', "unknown kind 'pneumonia'"),
        ('{"s1": [{"kind": "pleural_effusion", "side": "both"}]}', "side 'both'"),
        ('{"s1": [{"kind": "pleural_effusion", "severity": "mild"}]}', "severity 'mild'"),
        ('{"studies": {"s1": {"findings": [{"kind": "edema", "severity": "huge"}]}}}', "severity 'huge'"),
    ],
)
def test_load_findings_errors(tmp_path, content, message) -> None:
    path = tmp_path / "findings.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(InputFileError, match=message) as info:
        load_findings(path)
    assert info.value.path == str(path)


def test_load_findings_on_a_folder(tmp_path) -> None:
    with pytest.raises(InputFileError, match="is a directory"):
        load_findings(tmp_path)
