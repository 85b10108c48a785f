"""Radiologist-style FINDINGS / IMPRESSION text for the phantom studies.

Every sentence comes from a bank of paraphrases with severity and laterality words, and every explicit negative
("No pleural effusion or pneumothorax.") records which CheXpert observation it negates, so that ``labels.csv`` can
follow CheXpert's own report-level convention exactly (1 = described, 0 = explicitly negated, blank = not
mentioned). The wording keeps each label unambiguous for a rule-based labeler:

- "opacity"/"opacities" appears only when Lung Opacity is positive (consolidation, edema, atelectasis) or inside an
  explicit negative of it; nodules and masses are never called opacities or densities;
- no hedging ("likely", "possible", "may", "cannot exclude", "suggest", "consistent with"): findings are stated;
- words that CheXpert maps elsewhere are avoided: "line" for a pleural edge (Support Devices), "collapse" for a
  pneumothorax (Atelectasis), "contour" or "mediastinum" next to cardiomegaly (Enlarged Cardiomediastinum),
  "plate" (Support Devices), "pneumonia", "infection", "thickening" of the pleura (Pleural Other).

The FINDINGS section carries every positive and every negative; the IMPRESSION repeats the positives (or states a
normal study) and adds no new label, so both sections give the same labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from monai_r2gen.data.synthetic.findings import Finding

__all__ = ["Report", "write_report", "ordinal"]


@dataclass
class Report:
    """A generated report: its two sections and the observations its explicit negatives rule out."""

    findings: str
    impression: str
    negated: set[str] = field(default_factory=set)

    @property
    def full(self) -> str:
        """The report with both section headers (as written to ``reports/<id>.txt``)."""
        return f"FINDINGS: {self.findings}\n\nIMPRESSION: {self.impression}"


def ordinal(n: int) -> str:
    """1 -> "1st", 2 -> "2nd", 11 -> "11th"."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


class _Writer:
    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def pick(self, options: list[str] | tuple[str, ...]) -> str:
        return options[int(self.rng.integers(len(options)))]

    def chance(self, p: float) -> bool:
        return bool(self.rng.random() < p)

    def join(self, items: list[str]) -> str:
        if len(items) == 1:
            return items[0]
        comma = "," if len(items) > 2 and self.chance(0.5) else ""
        return ", ".join(items[:-1]) + f"{comma} or {items[-1]}"


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _sentence(text: str) -> str:
    text = _cap(text.strip())
    return text if text.endswith(".") else text + "."


# ----------------------------------------------------------------------------------------------------------------------
# positive findings: (findings sentence, impression sentence)
# ----------------------------------------------------------------------------------------------------------------------

_ADVERB = {"mild": "mildly", "moderate": "moderately", "severe": "severely"}


def _cardiomegaly(w: _Writer, f: Finding, ctr_seen: float) -> tuple[str, str]:
    sev = f.severity
    ratio = f" (cardiothoracic ratio about {ctr_seen:.2f})" if w.chance(0.3) else ""
    text = w.pick([
        f"The heart is {_ADVERB[sev]} enlarged{ratio}.",
        f"{_cap(sev)} cardiomegaly{ratio}.",
        f"There is {sev} enlargement of the cardiac silhouette{ratio}.",
        f"The cardiac silhouette is {_ADVERB[sev]} enlarged{ratio}.",
        f"{_cap(sev)} enlargement of the cardiac silhouette{ratio}.",
    ])
    imp = w.pick([f"{_cap(sev)} cardiomegaly.", "Cardiomegaly.", f"{_cap(sev)} enlargement of the cardiac silhouette."])
    return text, imp


def _effusion(w: _Writer, f: Finding) -> tuple[str, str]:
    sizes = f.params["sizes"]
    if f.side == "bilateral":
        if sizes["right"] == sizes["left"]:
            size = sizes["right"]
            text = w.pick([
                f"{_cap(size)} bilateral pleural effusions.",
                f"There are {size} bilateral pleural effusions.",
                f"{_cap(size)} pleural effusions are present bilaterally, blunting both costophrenic angles."
                if size == "small" else f"{_cap(size)} bilateral pleural effusions layer at the lung bases.",
            ])
            imp = f"{_cap(size)} bilateral pleural effusions."
        else:
            text = w.pick([
                f"Bilateral pleural effusions, {sizes['right']} on the right and {sizes['left']} on the left.",
                f"There is a {sizes['right']} right and a {sizes['left']} left pleural effusion.",
            ])
            imp = w.pick([
                f"Bilateral pleural effusions, {sizes['right']} on the right and {sizes['left']} on the left.",
                "Bilateral pleural effusions.",
            ])
        return text, imp
    side, size = f.side, sizes[f.side]
    options = [
        f"{_cap(size)} {side} pleural effusion.",
        f"There is a {size} {side} pleural effusion.",
        f"A {size} {side}-sided pleural effusion is present.",
        f"{_cap(size)} {side} pleural effusion with a meniscus along the lateral chest wall.",
    ]
    if size == "small":
        options.append(f"Blunting of the {side} costophrenic angle from a small pleural effusion.")
    else:
        options.append(f"{_cap(size)} {side} pleural effusion obscuring the {side} hemidiaphragm.")
    imp = w.pick([f"{_cap(size)} {side} pleural effusion.", f"{_cap(size)} {side}-sided pleural effusion."])
    return w.pick(options), imp


def _pneumothorax(w: _Writer, f: Finding) -> tuple[str, str]:
    side, size = f.side, f.severity
    where = " apical" if size == "small" else ""
    text = w.pick([
        f"{_cap(size)} {side}{where} pneumothorax.",
        f"There is a {size} {side}{where} pneumothorax.",
        f"A {size} {side}{where} pneumothorax is present, with the visceral pleural edge visible and no lung markings "
        f"peripheral to it.",
        f"{_cap(size)} {side}-sided{where} pneumothorax; the visceral pleural edge is seen with absent lung markings "
        f"beyond it.",
    ])
    imp = w.pick([f"{_cap(size)} {side}{where} pneumothorax.", f"{_cap(size)} {side} pneumothorax."])
    return text, imp


def _consolidation(w: _Writer, f: Finding) -> tuple[str, str]:
    lobe = f.params["lobe"]
    the = "the " + lobe
    if f.severity == "lobar":
        text = w.pick([
            f"Dense consolidation of {the} with air bronchograms, seen as a homogeneous opacity.",
            f"There is a homogeneous opacity in {the} with air bronchograms, representing lobar consolidation.",
            f"Lobar consolidation of {the}: confluent opacity with air bronchograms.",
            f"Confluent opacity with air bronchograms in {the} from consolidation.",
        ])
    else:
        text = w.pick([
            f"Patchy opacities in {the} with areas of consolidation.",
            f"There is patchy consolidation in {the}, with ill-defined airspace opacities.",
            f"Patchy airspace opacity and consolidation in {the}.",
            f"Ill-defined patchy opacities with consolidation are seen in {the}.",
        ])
    name = "Lingular" if lobe == "lingula" else _cap(lobe)
    imp = w.pick([f"{name} consolidation.", f"Consolidation in {the}.",
                  f"{_cap(f.severity)} consolidation of {the}."])
    return text, imp


def _nodule(w: _Writer, f: Finding) -> tuple[str, str]:
    p = f.params
    kind = f.severity  # "nodule" or "mass"
    size = f"{p['diameter_cm']:.1f} cm"
    zone = {"upper": "upper lung zone", "mid": "mid lung zone", "lower": "lower lung zone"}[p["zone"]]
    where = f"{f.side} {zone}"
    edge = w.pick(["well-circumscribed", "lobulated", "rounded", "smoothly marginated"])
    text = w.pick([
        f"A {size} {edge} {kind} is seen in the {where}.",
        f"There is a {edge} {size} {kind} in the {where}.",
        f"{_cap(edge)} {kind} measuring {size} in the {where}.",
        f"A {kind} measuring approximately {size} projects over the {where}.",
    ])
    follow = w.pick([" Chest CT is recommended for further evaluation.", " Recommend CT for further characterization.",
                     ""])
    imp = f"{size} {f.side} {zone} {kind}.{follow}"
    return text, imp


def _edema(w: _Writer, f: Finding) -> tuple[str, str]:
    sev = f.severity
    text = w.pick([
        f"{_cap(sev)} pulmonary edema with perihilar haziness and bilateral interstitial opacities.",
        f"There is {sev} interstitial pulmonary edema, with bilateral perihilar opacities.",
        f"Bilateral perihilar opacities and septal prominence at the bases from {sev} pulmonary edema."
        if sev != "mild" else "Bilateral perihilar opacities from mild pulmonary edema.",
        f"{_cap(sev)} pulmonary edema: hazy perihilar opacities in both lungs.",
    ])
    if sev == "severe":
        text = w.pick([text, "Severe pulmonary edema with confluent bilateral perihilar airspace opacities."])
    imp = w.pick([f"{_cap(sev)} pulmonary edema.", f"{_cap(sev)} interstitial pulmonary edema."])
    return text, imp


def _atelectasis(w: _Writer, f: Finding) -> tuple[str, str]:
    sev = f.severity
    if f.side == "bilateral":
        text = w.pick([
            f"Linear opacities at both lung bases from {sev} bibasilar atelectasis.",
            f"{_cap(sev)} bibasilar atelectasis, seen as linear opacities at both bases.",
            f"There are band-like opacities at both lung bases representing {sev} discoid atelectasis.",
        ])
        imp = w.pick(["Bibasilar atelectasis.", f"{_cap(sev)} bibasilar atelectasis."])
        return text, imp
    side = f.side
    text = w.pick([
        f"Linear opacity at the {side} lung base from {sev} subsegmental atelectasis.",
        f"{_cap(sev)} {side} basilar atelectasis, seen as a linear opacity.",
        f"There is a band-like opacity at the {side} base representing {sev} discoid atelectasis.",
        f"{_cap(sev)} linear atelectasis in the {side} lower zone, with a linear opacity above the hemidiaphragm.",
    ])
    imp = w.pick([f"{_cap(side)} basilar atelectasis.", f"{_cap(sev)} {side} basilar atelectasis."])
    return text, imp


def _devices(w: _Writer, f: Finding) -> tuple[str, str]:
    sentences = []
    short = []
    for d in f.params["devices"]:
        kind = d["type"]
        if kind == "endotracheal_tube":
            cm = f"{d['tip_cm']:.1f} cm"
            sentences.append(w.pick([
                f"Endotracheal tube terminates {cm} above the carina.",
                f"The endotracheal tube tip is {cm} above the carina.",
                f"An endotracheal tube is in place with its tip {cm} above the carina.",
            ]))
            short.append("endotracheal tube")
        elif kind == "central_line":
            route, tip = d["route"], d["tip"]
            tip_words = "the superior vena cava" if tip == "superior vena cava" else "the cavoatrial junction"
            sentences.append(w.pick([
                f"{_cap(route)} central venous catheter terminates in {tip_words}.",
                f"A {route} central line has its tip in {tip_words}.",
                f"{_cap(route)} catheter with the tip projecting over {tip_words}.",
            ]))
            short.append(f"{route} catheter")
        elif kind == "pacemaker":
            leads = (
                "leads in the right atrium and right ventricle" if int(d["leads"]) == 2
                else "a single lead in the right ventricle"
            )
            sentences.append(w.pick([
                f"{_cap(d['side'])}-sided pacemaker with {leads}.",
                f"A {d['side']} chest wall pacemaker device is present with {leads}.",
                f"{'Dual' if int(d['leads']) == 2 else 'Single'}-chamber pacemaker in the {d['side']} chest wall with "
                f"{leads}.",
            ]))
            short.append("pacemaker")
        elif kind == "enteric_tube":
            sentences.append(w.pick([
                "Enteric tube courses below the diaphragm with the tip in the stomach.",
                "A nasogastric tube is seen with its tip in the stomach.",
                "The enteric tube passes below the diaphragm into the stomach.",
            ]))
            short.append("enteric tube")
    if len(short) == 1:
        imp = w.pick([f"{_cap(short[0])} in standard position.", f"{_cap(short[0])} appropriately positioned."])
    else:
        imp = w.pick(["Lines and tubes in standard position.", "Support devices in standard position.",
                      f"{_cap(', '.join(short[:-1]))} and {short[-1]} in standard position."])
    return " ".join(sentences), imp


def _fracture(w: _Writer, f: Finding) -> tuple[str, str]:
    p = f.params
    rib = f"{ordinal(int(p['rib_number']))} rib"
    disp = f.severity  # "displaced" or "minimally displaced"
    loc = p["location"]
    text = w.pick([
        f"Acute {disp} fracture of the {f.side} {loc} {rib}.",
        f"There is a {disp} fracture of the {loc} {f.side} {rib}.",
        f"{_cap(disp)} {f.side} {loc} {rib} fracture.",
    ])
    imp = w.pick([f"{_cap(disp)} {f.side} {rib} fracture.", f"Acute {f.side} {rib} fracture."])
    return text, imp


# ----------------------------------------------------------------------------------------------------------------------
# negatives
# ----------------------------------------------------------------------------------------------------------------------

#: name of an absent observation in a negative list -> the CheXpert label it negates
_LUNG_NEGATIVES = {
    "consolidation": (("focal consolidation", "consolidation"), "Consolidation"),
    "edema": (("pulmonary edema", "edema"), "Edema"),
    "opacity": (("focal airspace opacity", "airspace opacity"), "Lung Opacity"),
}
_PLEURAL_NEGATIVES = {
    "effusion": (("pleural effusion",), "Pleural Effusion"),
    "pneumothorax": (("pneumothorax",), "Pneumothorax"),
}


def _negative_list(w: _Writer, names: list[str], bank: dict, negated: set[str]) -> str | None:
    if not names:
        return None
    words = [w.pick(bank[n][0]) for n in names]
    for n in names:
        negated.add(bank[n][1])
    listed = w.join(words)
    single = len(words) == 1
    return w.pick([
        f"No {listed}.",
        f"There is no {listed}.",
        f"No evidence of {listed}.",
        f"No {listed} is seen." if single else f"No {listed} is identified.",
    ])


def write_report(
    findings: list[Finding], rng: np.random.Generator, projection: str = "PA", has_lateral: bool = True,
    ctr_seen: float = 0.45,
) -> Report:
    """Write the FINDINGS and IMPRESSION of a study.

    Args:
        findings: the study's findings.
        rng: the study's report stream (chooses the paraphrases).
        projection: "PA" or "AP" of the frontal view.
        has_lateral: whether a lateral view was acquired.
        ctr_seen: the cardiothoracic ratio as projected on the frontal view (quoted in some cardiomegaly phrasings).
    """
    w = _Writer(rng)
    by_kind = {f.kind: f for f in findings}
    present = set(by_kind)
    negated: set[str] = set()
    body: list[str] = []
    impressions: list[tuple[int, str]] = []

    if w.chance(0.35):
        if projection == "AP":
            body.append(w.pick(["Portable AP view of the chest.", "Single portable AP chest radiograph."]))
        elif has_lateral:
            body.append(w.pick(["PA and lateral views of the chest.", "Frontal and lateral views of the chest."]))
        else:
            body.append(w.pick(["Single PA view of the chest.", "PA view of the chest."]))

    def add(kind: str, priority: int, text_imp: tuple[str, str]) -> None:
        body.append(text_imp[0])
        impressions.append((priority, text_imp[1]))

    if "support_devices" in present:
        add("support_devices", 8, _devices(w, by_kind["support_devices"]))

    # lungs
    lung_kinds = [k for k in ("consolidation", "edema", "lung_nodule", "atelectasis") if k in present]
    order = list(lung_kinds)
    if len(order) > 1 and w.chance(0.5):
        order = order[1:] + order[:1]
    writers = {"consolidation": (_consolidation, 1), "edema": (_edema, 2), "lung_nodule": (_nodule, 3),
               "atelectasis": (_atelectasis, 6)}
    for k in order:
        fn, prio = writers[k]
        add(k, prio, fn(w, by_kind[k]))
    opacity_positive = any(k in present for k in ("consolidation", "edema", "atelectasis"))
    parenchymal = lung_kinds or {"pleural_effusion", "pneumothorax"} & present
    if not parenchymal and w.chance(0.6):
        body.append(w.pick(["The lungs are clear.", "The lungs are well expanded and clear.",
                            "Both lungs are clear.", "Lungs are clear bilaterally."]))
    absent_lung = [n for n in ("consolidation", "edema") if n not in present]
    if not opacity_positive and w.chance(0.3):
        absent_lung.append("opacity")
    chosen = [n for n in absent_lung if w.chance(0.65)]
    if chosen:
        sentence = _negative_list(w, chosen, _LUNG_NEGATIVES, negated)
        if sentence:
            body.append(sentence)
    if "lung_nodule" not in present and w.chance(0.15):
        body.append(w.pick(["No pulmonary nodule or mass.", "No suspicious pulmonary nodule or mass is seen."]))
        negated.add("Lung Lesion")

    # pleura
    if "pleural_effusion" in present:
        add("pleural_effusion", 1, _effusion(w, by_kind["pleural_effusion"]))
    if "pneumothorax" in present:
        add("pneumothorax", 0, _pneumothorax(w, by_kind["pneumothorax"]))
    absent_pleura = [n for n, k in (("effusion", "pleural_effusion"), ("pneumothorax", "pneumothorax"))
                     if k not in present and w.chance(0.8)]
    sentence = _negative_list(w, absent_pleura, _PLEURAL_NEGATIVES, negated)
    if sentence:
        body.append(sentence)

    # heart and mediastinum
    if "cardiomegaly" in present:
        add("cardiomegaly", 4, _cardiomegaly(w, by_kind["cardiomegaly"], ctr_seen))
    elif w.chance(0.85):
        options = [
            ("Heart size is normal.", {"Cardiomegaly"}),
            ("The heart is normal in size.", {"Cardiomegaly"}),
            ("Normal heart size.", {"Cardiomegaly"}),
            ("The cardiac silhouette is not enlarged.", {"Cardiomegaly"}),
            ("Heart size and mediastinal contours are normal.", {"Cardiomegaly", "Enlarged Cardiomediastinum"}),
            ("Normal heart size and mediastinal contours.", {"Cardiomegaly", "Enlarged Cardiomediastinum"}),
        ]
        text, labels = options[int(w.rng.integers(len(options)))]
        body.append(text)
        negated |= labels
        if "Enlarged Cardiomediastinum" not in labels and w.chance(0.4):
            body.append(w.pick(["The mediastinal contours are normal.",
                                "Mediastinal contours are within normal limits."]))
            negated.add("Enlarged Cardiomediastinum")

    # bones
    if "rib_fracture" in present:
        add("rib_fracture", 5, _fracture(w, by_kind["rib_fracture"]))
    elif w.chance(0.3):
        body.append(w.pick(["No displaced rib fracture.", "No acute rib fracture is seen.",
                            "No displaced fracture is identified."]))
        negated.add("Fracture")

    pathologic = [imp for prio, imp in sorted(impressions, key=lambda x: x[0]) if prio != 8]
    devices = [imp for prio, imp in impressions if prio == 8]
    if pathologic:
        impression = " ".join(pathologic + devices)
    else:
        normal = w.pick(["No acute cardiopulmonary process.", "No acute cardiopulmonary abnormality.",
                         "No acute intrathoracic process.", "Normal chest radiograph." if not devices
                         else "No acute cardiopulmonary process."])
        impression = " ".join(devices + [normal])
    findings_text = " ".join(_sentence(s) for s in body)
    return Report(findings=findings_text, impression=impression, negated=negated)
