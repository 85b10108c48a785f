"""Rule-based CheXpert labeler: mentions, negation, uncertainty, aggregation, No Finding."""

from __future__ import annotations

import pickle

import pytest

from monai_r2gen.metrics.chexpert import CHEXPERT_LABELS, NEGATIVE, POSITIVE, UNCERTAIN, CheXpertLabeler

P, N, U = POSITIVE, NEGATIVE, UNCERTAIN


@pytest.fixture(scope="module")
def labeler() -> CheXpertLabeler:
    return CheXpertLabeler()


# (report, expected labels for some observations; None = not mentioned). Sentences are written the way MIMIC-CXR /
# IU-Xray reports are.
CASES = [
    # --- plain positive mentions and synonyms
    ("Small left pleural effusion.", {"Pleural Effusion": P, "Pneumothorax": None, "No Finding": None}),
    ("Moderate bilateral pleural effusions with adjacent atelectasis.", {"Pleural Effusion": P, "Atelectasis": P}),
    ("Blunting of the left costophrenic angle.", {"Pleural Effusion": P}),
    ("Persistent right pleural fluid.", {"Pleural Effusion": P}),
    ("Mild cardiomegaly.", {"Cardiomegaly": P}),
    ("The heart is mildly enlarged.", {"Cardiomegaly": P}),
    ("Enlargement of the cardiac silhouette.", {"Cardiomegaly": P}),
    ("The mediastinum is widened.", {"Enlarged Cardiomediastinum": P}),
    ("ET tube terminates 4 cm above the carina.", {"Support Devices": P, "No Finding": P}),
    ("Right PICC line tip in the mid SVC.", {"Support Devices": P}),
    ("Dual-lead pacemaker with leads in the right atrium and ventricle.", {"Support Devices": P}),
    ("Right upper lobe nodule.", {"Lung Lesion": P}),
    ("3 cm mass in the left hilum.", {"Lung Lesion": P}),
    ("Right lower lobe collapse.", {"Atelectasis": P}),
    ("Retrocardiac opacity.", {"Lung Opacity": P}),
    ("Left lower lobe consolidation.", {"Consolidation": P}),
    ("Mild pulmonary edema.", {"Edema": P}),
    ("Healed right rib fractures.", {"Fracture": P}),
    ("Small apical pneumothorax.", {"Pneumothorax": P}),
    ("Apical pleural thickening.", {"Pleural Other": P}),
    # --- negation, including lists and scope ends
    ("No pneumothorax.", {"Pneumothorax": N, "No Finding": P}),
    (
        "No focal consolidation, pleural effusion or pneumothorax.",
        {"Consolidation": N, "Pleural Effusion": N, "Pneumothorax": N, "No Finding": P},
    ),
    (
        "Lungs are clear without consolidation, effusion, or pneumothorax.",
        {"Consolidation": N, "Pleural Effusion": N, "Pneumothorax": N},
    ),
    (
        "No evidence of focal consolidation, pneumothorax, or large pleural effusion.",
        {"Consolidation": N, "Pneumothorax": N, "Pleural Effusion": N},
    ),
    ("There is no pneumothorax, but there is a small left effusion.", {"Pneumothorax": N, "Pleural Effusion": P}),
    ("No pneumothorax; small left effusion.", {"Pneumothorax": N, "Pleural Effusion": P}),
    ("No effusion is seen, small pneumothorax is noted.", {"Pleural Effusion": N, "Pneumothorax": P}),
    ("No pleural effusion, mild cardiomegaly.", {"Pleural Effusion": N, "Cardiomegaly": P}),
    ("No evidence of pneumonia with small effusions.", {"Pneumonia": N, "Pleural Effusion": P}),
    ("Negative for pneumothorax.", {"Pneumothorax": N}),
    ("Lungs are clear of consolidation.", {"Consolidation": N}),
    ("Pneumothorax is not seen.", {"Pneumothorax": N}),
    ("The previously seen right pneumothorax is no longer seen.", {"Pneumothorax": N}),
    ("No displaced rib fracture.", {"Fracture": N}),
    ("No lines or tubes.", {"Support Devices": N}),
    # --- resolved / removed findings
    ("Right pleural effusion has resolved.", {"Pleural Effusion": N}),
    ("Effusion and pneumothorax have resolved.", {"Pleural Effusion": N, "Pneumothorax": N}),
    ("Interval resolution of the left lower lobe pneumonia.", {"Pneumonia": N}),
    ("Near complete resolution of the left lower lobe pneumonia.", {"Pneumonia": P}),
    ("Partially resolved left effusion.", {"Pleural Effusion": P}),
    ("The left effusion has not resolved.", {"Pleural Effusion": P}),
    ("Interval removal of the endotracheal tube.", {"Support Devices": N}),
    ("The nasogastric tube has been removed.", {"Support Devices": N}),
    # --- normal anatomy descriptors
    ("Heart size is normal.", {"Cardiomegaly": N, "No Finding": P}),
    ("The heart is not enlarged.", {"Cardiomegaly": N}),
    (
        "Heart size and mediastinal contours are within normal limits.",
        {"Cardiomegaly": N, "Enlarged Cardiomediastinum": N, "No Finding": P},
    ),
    ("Normal heart size and mediastinal contours.", {"Cardiomegaly": N, "Enlarged Cardiomediastinum": N}),
    ("The cardiac silhouette is at the upper limits of normal.", {"Cardiomegaly": N}),
    ("Costophrenic angles are sharp.", {"Pleural Effusion": N}),
    ("Opacity projecting over the heart.", {"Lung Opacity": P, "Cardiomegaly": None}),
    # --- uncertainty
    ("Possible small left effusion.", {"Pleural Effusion": U}),
    ("Pneumothorax cannot be excluded.", {"Pneumothorax": U}),
    ("Cannot exclude a small pneumothorax.", {"Pneumothorax": U}),
    ("No new consolidation.", {"Consolidation": U}),
    ("Patchy opacity in the right lower lobe concerning for pneumonia.", {"Lung Opacity": P, "Pneumonia": U}),
    ("Atelectasis versus consolidation at the left base.", {"Atelectasis": U, "Consolidation": U}),
    ("Opacities may represent atelectasis or pneumonia.", {"Lung Opacity": P, "Atelectasis": U, "Pneumonia": U}),
    ("Findings are suggestive of mild interstitial edema.", {"Edema": U}),
    ("Suspicious for right upper lobe mass.", {"Lung Lesion": U}),
    ("Pneumonia is less likely.", {"Pneumonia": U}),
    ("Pulmonary vascular congestion.", {"Edema": U}),
    ("Borderline heart size.", {"Cardiomegaly": U}),
    ("Stable cardiomediastinal silhouette.", {"Enlarged Cardiomediastinum": U}),
    ("Heart size is difficult to assess given AP technique.", {"Cardiomegaly": U}),
    ("Left lower lobe consolidation, likely pneumonia.", {"Consolidation": P, "Pneumonia": P}),
    # --- CHF exception, unmentions, changes over time
    ("Findings consistent with CHF.", {"Edema": P, "Cardiomegaly": U}),
    ("Small pericardial effusion.", {"Pleural Effusion": None, "No Finding": None}),
    ("Calcified nodule in the left upper lobe.", {"Lung Lesion": None, "No Finding": None}),
    ("Massive cardiomegaly.", {"Lung Lesion": None, "Cardiomegaly": P}),
    ("Kerley B lines. Plate-like atelectasis.", {"Support Devices": None, "Atelectasis": P}),
    ("Subcutaneous edema in the chest wall.", {"Edema": None}),
    ("No significant interval change in the moderate cardiomegaly.", {"Cardiomegaly": P}),
    ("No change in the small left effusion.", {"Pleural Effusion": P}),
    # --- laterality: a positive side beats a negative side
    ("No right pleural effusion. Small left pleural effusion.", {"Pleural Effusion": P}),
    ("Left pneumothorax has resolved. Tiny right apical pneumothorax.", {"Pneumothorax": P}),
    # --- whole normal studies and other abnormalities
    (
        "PA and lateral views of the chest. The lungs are clear. The cardiomediastinal silhouette is normal. "
        "No acute osseous abnormality.",
        {"No Finding": P, "Enlarged Cardiomediastinum": N, "Lung Opacity": None},
    ),
    ("No acute cardiopulmonary process.", {"No Finding": P}),
    ("Degenerative changes of the thoracic spine.", {"No Finding": None}),
    ("The lungs are hyperinflated consistent with COPD.", {"No Finding": None}),
    ("Support lines and tubes are unchanged. Lungs are clear.", {"Support Devices": P, "No Finding": P}),
    ("No emphysema.", {"No Finding": P}),
]


@pytest.mark.parametrize(("text", "expected"), CASES, ids=[c[0][:48] for c in CASES])
def test_labeler_cases(labeler: CheXpertLabeler, text: str, expected: dict) -> None:
    labels = labeler.label(text)
    got = {k: labels[k] for k in expected}
    assert got == expected, [(m.observation, m.text, m.status, m.rule) for m in labeler.explain(text)]


def test_output_has_the_14_observations_in_order(labeler: CheXpertLabeler) -> None:
    labels = labeler.label("Mild cardiomegaly. No effusion.")
    assert tuple(labels) == CHEXPERT_LABELS
    assert len(CHEXPERT_LABELS) == 14
    assert set(labels.values()) <= {P, N, U, None}


def test_aggregation_positive_beats_uncertain_beats_negative(labeler: CheXpertLabeler) -> None:
    assert labeler.label("No effusion. Possible left effusion.")["Pleural Effusion"] == U
    assert labeler.label("Possible right effusion. Small left effusion. No effusion.")["Pleural Effusion"] == P
    assert labeler.label("No effusion. No pleural fluid.")["Pleural Effusion"] == N


def test_no_finding_ignores_support_devices_but_not_uncertain_findings(labeler: CheXpertLabeler) -> None:
    assert labeler.label("Right IJ catheter in the SVC. No pneumothorax.")["No Finding"] == P
    assert labeler.label("Possible small left effusion.")["No Finding"] is None
    # CheXpert never labels No Finding negative: absent or positive only
    assert labeler.label("Large right pneumothorax.")["No Finding"] is None


def test_empty_report_has_no_labels(labeler: CheXpertLabeler) -> None:
    assert all(v is None for v in labeler.label("").values())
    assert all(v is None for v in labeler.label("  \n ").values())


def test_case_line_breaks_and_decimals(labeler: CheXpertLabeler) -> None:
    text = "FINDINGS:\nNO PLEURAL\nEFFUSION. A 1.5 cm\nnodule in the right upper lobe."
    labels = labeler.label(text)
    assert labels["Pleural Effusion"] == N
    assert labels["Lung Lesion"] == P


def test_explain_reports_rule_and_sentence(labeler: CheXpertLabeler) -> None:
    mentions = labeler.explain("Small effusion. No pneumothorax.")
    found = {(m.observation, m.sentence, m.status, m.rule) for m in mentions}
    assert ("Pleural Effusion", 0, P, "mention") in found
    assert ("Pneumothorax", 1, N, "neg_fwd") in found


def test_label_many_matches_label_and_is_picklable(labeler: CheXpertLabeler) -> None:
    texts = ["Mild cardiomegaly.", "No effusion.", ""]
    assert labeler.label_many(texts) == [labeler.label(t) for t in texts]
    clone = pickle.loads(pickle.dumps(labeler))
    assert clone.label(texts[0]) == labeler.label(texts[0])


def test_non_string_is_rejected(labeler: CheXpertLabeler) -> None:
    with pytest.raises(TypeError, match="str"):
        labeler.label(None)  # type: ignore[arg-type]


def test_agrees_with_the_phantom_generator_labels(labeler: CheXpertLabeler) -> None:
    """The synthetic data's labels.csv follows CheXpert conventions; the labeler must read its reports the same way."""
    from monai_r2gen.data.synthetic.study import render_study

    disagreements = []
    for index in range(200):
        study = render_study(seed=7, index=index, images=False)
        for text in (study.report.findings, study.report.full):
            got = labeler.label(text)
            wrong = {k: (study.labels[k], got[k]) for k in CHEXPERT_LABELS if got[k] != study.labels[k]}
            if wrong:
                disagreements.append((text, wrong))
    assert not disagreements, disagreements[:3]
