"""Rule-based CheXpert-14 labeler for chest X-ray reports (offline, regex only).

The labeler follows the design of the Stanford CheXpert labeler (Irvin et al., AAAI 2019): mention phrases per
observation (with "unmention" phrases that cancel a match), then negation and uncertainty rules, then a per-report
aggregation. The phrase lists and the order of the rules are taken from that labeler's published lists; the NegBio
dependency-graph patterns are replaced by clause-scoped regular expressions, so nothing but :mod:`re` is needed (no
Java, no parser, no NegBio).

Output per report: a dict over :data:`CHEXPERT_LABELS` with ``1.0`` positive, ``0.0`` negative, ``-1.0`` uncertain
and ``None`` not mentioned.

How a report is labelled:

1. Text is lower-cased, a word hyphenated at a line break is joined ("pneumo-" + line break + "thorax"), a few
   abbreviations are normalised (``vs.``, ``w/o``, ``s/p``), IU-Xray's de-identification tokens ("XXXX") are
   dropped, and a spelling one slip away from a main observation word (a letter dropped, doubled or swapped with its
   neighbour, or in long words one vowel changed: "effusoin", "pneumothroax", "cardiomegally", "atelactasis") is
   read as that word. The text is split into sentences at ``.``, ``!``, ``?`` (not inside decimals) and at blank
   lines. Single line breaks are spaces.
2. Sentences are cut into clauses at hard boundaries: ``;``, ``:``, brackets, ``but``, ``however``, ``although``,
   ``though``, ``whereas``, ``while``, ``except``, ``other than``, ``apart from``, ``aside from``, ``which``,
   ``there is/are``, ``with`` (not in "consistent/compatible/associated with") and ``and the/there/a/an``.
3. Mentions are found per observation. Three kinds of phrases exist:

   * specific phrases ("effusion", "cardiomegaly", "ET tube", "PICC", "nodule", "mass", "collapse", ...), positive
     unless a rule below applies;
   * phrases that CheXpert always treats as uncertain ("vascular congestion", "pulmonary congestion",
     "indistinctness", "vascular prominence" for Edema);
   * generic anatomy ("heart size", "cardiac silhouette", "mediastinum", "costophrenic angle", and "pulmonary
     vascularity" for Edema): they carry a label only with a descriptor next to them in the clause ("enlarged",
     "widened", "blunted" -> positive; "normal", "sharp" -> negative; "borderline", "stable", "unchanged",
     "obscured", "accentuates" -> uncertain, as CheXpert's "stable cardiac silhouette" rule; vascularity that is
     "increased", "prominent" or "engorged" -> uncertain, as CheXpert's "vascular prominence"). Normal anatomy is
     negative through the negation rules ("heart size and pulmonary vascularity appear within normal limits"). A
     generic phrase without a descriptor, or in a positional phrase such as "projecting over the heart", is not a
     mention.

   Unmention phrases cancel an overlapping match ("pericardial effusion", "calcified nodule", "massive",
   "Kerley B lines", "plate-like", "subcutaneous edema", and "granulomatous infection" / "granulomatous disease"
   for Pneumonia: old granulomatous disease is an other finding, not a pneumonia).
4. Each mention gets the first rule that applies, in CheXpert's order:

   a. pre-negation uncertainty: "cannot exclude", "cannot be excluded", "not excluded", "cannot rule out",
      "no new ..." -> uncertain;
   b. negation: triggers before the mention ("no", "not", "without", "negative for", "free of", "clear of",
      "absence of", "no evidence of", "resolution of", "resolved", "removal of", "rule out", "rather than",
      "neither/nor", "history of", "normal", "unremarkable") scope forward to the end of the clause; a comma
      ends the scope when the text since the trigger already holds a verb ("no effusion is seen, small
      pneumothorax"), or when the next item starts with a severity word ("no effusion, mild cardiomegaly"), so
      lists such as "no effusion, pneumothorax or consolidation" stay negated. A severity word does not end a list
      that is closed by "or" / "nor" ("no focal consolidation, large pleural effusion, or pneumothorax": all three
      negative). Triggers after the mention ("... is not seen", "... has resolved", "... has been removed", "... is
      normal", "... within normal limits", "... within limits of normal", "... is absent") scope back over the
      clause's subject (stopping at a comma or at an earlier verb); "no (significant) change / increase / decrease
      / worsening / progression in", "not changed", "partially resolved" are not negations, and two findings after
      "no change in" are not alternatives ("no significant change in right pneumothorax or left effusion": both
      positive);
   c. uncertainty: triggers before ("may", "might", "could", "possible", "probable", "questionable",
      "suspicious for", "concerning for", "suggestive of", "versus", "less likely", "clinical correlation for",
      ...) or after ("... is
      suspected", "... may be present", "... is less likely", "... is obscured") the mention, and alternatives
      joined by "or" / "versus" ("atelectasis or pneumonia");
   d. the descriptor rule for generic anatomy and the always-uncertain phrases;
   e. otherwise positive.

   "likely" and "consistent with" leave a mention positive, as in CheXpert.
5. Per report, an observation takes the strongest of its mentions: positive beats uncertain beats negative.
   CheXpert's exception is kept: a positive or uncertain "CHF" / "heart failure" also makes Cardiomegaly
   uncertain.
6. No Finding is ``1.0`` when no observation other than Support Devices is positive or uncertain and no other
   abnormality from CheXpert's list (emphysema, scoliosis, granuloma, hernia, calcification, ...) is mentioned
   positively or uncertainly; otherwise ``None`` (CheXpert never labels No Finding negative). An empty report
   gets ``None`` everywhere.

Deviations from CheXpert, on purpose: generic anatomy without a descriptor is not a mention (CheXpert labels
"the heart" positive); "blunting of the costophrenic angle" is a Pleural Effusion mention; "pleural plaque" is
Pleural Other; "unlikely" is uncertain; "marker", "support", "defib" and "tracheostomy" are not used as device or
other-finding phrases; "subcutaneous/soft tissue edema" is not Edema; "wire(s)" (sternotomy, sternal, pacing wires) is
a Support Devices phrase; "pulmonary vascularity" is a generic Edema phrase; "granulomatous infection" is not
Pneumonia; misspellings of the main observation words are read as the words.
"""

from __future__ import annotations

import bisect
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "CHEXPERT_LABELS",
    "POSITIVE",
    "NEGATIVE",
    "UNCERTAIN",
    "Mention",
    "CheXpertLabeler",
]

logger = logging.getLogger(__name__)

#: The 14 CheXpert observations, in the column order of the CheXpert dataset.
CHEXPERT_LABELS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)

POSITIVE = 1.0
NEGATIVE = 0.0
UNCERTAIN = -1.0

# Aggregation order: a higher rank wins.
_RANK = {NEGATIVE: 0, UNCERTAIN: 1, POSITIVE: 2}

# --------------------------------------------------------------------------------------------------------------------
# Lexicon. Each entry is a regex fragment; all are matched on lower-cased, whitespace-normalised text.
# --------------------------------------------------------------------------------------------------------------------

_SPECIFIC: dict[str, list[str]] = {
    "Enlarged Cardiomediastinum": [
        r"mediastinal widening",
        r"widening of the (?:superior )?mediastinum",
    ],
    "Cardiomegaly": [
        r"cardiomegaly",
        r"cardiac enlargement",
        r"enlarge(?:d|ment of) (?:the )?(?:heart|cardiac silhouette|cardiac shadow)",
    ],
    "Lung Opacity": [
        r"opaci\w*",
        r"decreased translucency",
        r"increased densit(?:y|ies)",
        r"air[- ]?space (?:disease|process)",
        r"infiltrat\w*",
        r"interstitial (?:markings?|patterns?|lung disease|lung)",
        r"reticular (?:patterns?|markings?)",
        r"reticulation",
        r"(?:parenchymal )?scar(?:ring|s)?\b",
        r"(?:peribronchial|bronchial)? ?wall thickening",
    ],
    "Lung Lesion": [
        r"mass(?:es)?\b",
        r"nodules?\b",
        r"nodular (?:densit(?:y|ies)|opacit(?:y|ies)|opacification|lesions?)",
        r"lumps?\b",
        r"cavitary lesions?",
        r"carcinoma",
        r"neoplasms?",
        r"tumou?rs?\b",
        r"(?:lung|pulmonary) lesions?",
    ],
    "Edema": [
        r"o?edema(?:tous)?\b",
        r"(?:congestive )?heart failure",
        r"chf\b",
        r"(?:fluid|volume) overload",
    ],
    "Consolidation": [r"consolidat\w*"],
    "Pneumonia": [
        r"(?:broncho)?pneumonias?\b",
        r"infectious process",
        r"infections?\b",
        r"infectious\b",
    ],
    "Atelectasis": [r"atelecta\w*", r"collaps\w*"],
    "Pneumothorax": [r"(?:hydro)?pneumothora(?:x|ces)", r"ptx\b"],
    "Pleural Effusion": [r"effusions?\b", r"pleural fluid", r"hydrothora(?:x|ces)"],
    "Pleural Other": [
        r"pleural thickening",
        r"fibrothorax",
        r"fibrosis",
        r"pleural (?:parenchymal |-)?scar\w*",
        r"pleuro-?parenchymal scar\w*",
        r"pleuro-?pericardial scar\w*",
        r"pleural plaques?",
    ],
    "Fracture": [r"fractur\w*", r"fx\b"],
    "Support Devices": [
        r"tubes?\b",
        r"lines?\b",
        r"catheters?\b",
        r"picc\b",
        r"pac(?:er|emaker)s?\b",
        r"a?icds?\b",
        r"defibrillators?\b",
        r"(?:prosthetic |mechanical |bioprosthetic )?valves?\b",
        r"hardware",
        r"arthroplast\w*",
        r"devices?\b",
        r"drains?\b",
        r"plates?\b",
        r"screws?\b",
        r"cannula\w*",
        r"apparatus",
        r"coils?\b",
        r"equipment",
        r"mediport",
        r"port-?a-?cath",
        r"stents?\b",
        r"loop recorder",
        r"wires?\b",
        r"dobhoff",
        r"swan[- ]ganz",
    ],
}

_ALWAYS_UNCERTAIN: dict[str, list[str]] = {
    "Edema": [
        r"(?:pulmonary )?vascular congestion",
        r"pulmonary congestion",
        r"(?:vascular )?indistinctness",
        r"vascular prominence",
        r"vascular engorgement",
    ],
}

_GENERIC: dict[str, list[str]] = {
    "Enlarged Cardiomediastinum": [
        r"cardio ?mediastin(?:um|al)(?: (?:silhouette|contours?|shadow|structures?|size|width))?",
        r"mediastin(?:um|al (?:silhouette|contours?|configuration|width|structures?|shadow))",
        r"mediastinal and hilar (?:contours?|silhouettes?|structures?)",
        r"pericardial silhouette",
        r"cardiac and mediastinal (?:contours?|silhouettes?)",
    ],
    "Cardiomegaly": [
        r"cardiac and mediastinal (?:contours?|silhouettes?)",
        r"heart size",
        r"size of the heart",
        r"heart\b(?! (?:failure|borders?|valves?|rate|disease))",
        r"cardiac (?:silhouette|size|shadow|contours?|diameter)",
    ],
    "Pleural Effusion": [r"(?:costophrenic|cp) (?:angles?|sulc(?:us|i))"],
    "Edema": [r"(?:pulmonary )?vascul(?:arity|ature)", r"pulmonary vessels", r"pulmonary vascular markings"],
}

_UNMENTION: dict[str, list[str]] = {
    "Cardiomegaly": [r"heart borders?", r"heart failure"],
    "Lung Opacity": [r"pleural (?:parenchymal |-)?scar\w*", r"pleuro-?(?:parenchymal|pericardial) scar\w*"],
    "Lung Lesion": [r"calcified (?:nodul\w*|granulom\w*)", r"massive", r"mass effect"],
    "Edema": [r"(?:subcutaneous|soft[- ]tissue|chest wall|scrotal) o?edema"],
    "Pleural Effusion": [r"pericardial effusions?"],
    "Pneumonia": [r"granulomatous (?:infections?|infectious (?:disease|process)|disease|exposure)"],
    "Support Devices": [
        r"kerley(?: [ab])? lines?",
        r"septal lines?",
        r"b-lines?",
        r"(?:visceral )?pleural lines?",
        r"skin ?fold lines?",
        r"plate-?like",
        r"valve (?:calcif\w*|disease)",
        r"valvular",
    ],
}

# Descriptors for generic anatomy, tried in this order: (pattern, status).
_HEART_DESCRIPTORS = [
    (
        r"\b(?:borderline|equivocal|difficult to (?:assess|evaluate)|(?:can ?not|not) be (?:assessed|evaluated)|"
        r"poorly (?:assessed|evaluated|visualized|seen)|obscur\w*|accentuat\w*|exaggerat\w*|magnif\w*|may|might|could|"
        r"possibl\w*|question\w*|suspect\w*|probabl\w*)\b",
        UNCERTAIN,
    ),
    (r"\b(?:enlarg\w*|large|larger|increased|prominen\w*|widen\w*|wide|dilat\w*|globular|cardiomegaly)\b", POSITIVE),
    (r"\b(?:stable|stably|unchanged|similar|not changed|no change)\b", UNCERTAIN),
]
_EFFUSION_DESCRIPTORS = [
    (r"\b(?:obscur\w*|may|might|could|possibl\w*)\b", UNCERTAIN),
    (r"\bblunt\w*", POSITIVE),
    (r"\b(?:sharp\w*|clear|preserved)\b", NEGATIVE),
]
# "pulmonary vascularity": normal -> negative comes from the negation rules; more vessels only hint at edema, as
# CheXpert's "vascular prominence" / "vascular congestion" (uncertain).
_VASCULAR_DESCRIPTORS = [
    (r"\b(?:increas\w*|prominen\w*|engorge\w*|congest\w*|indistinct\w*|enlarg\w*|distend\w*|plethor\w*)", UNCERTAIN),
]
_DESCRIPTORS = {
    "Edema": _VASCULAR_DESCRIPTORS,
    "Enlarged Cardiomediastinum": _HEART_DESCRIPTORS,
    "Cardiomegaly": _HEART_DESCRIPTORS,
    "Pleural Effusion": _EFFUSION_DESCRIPTORS,
}

# Other abnormalities (CheXpert's "No Finding" list): a positive or uncertain one means "finding present".
_OTHER_FINDINGS = [
    r"emphysema",
    r"blunt\w*",
    r"densit(?:y|ies)",
    r"elevat(?:ion|ed)",
    r"eventration",
    r"scoliosis",
    r"degenera\w*",
    r"calcifi\w*",
    r"hyperinflat\w*",
    r"hyperexpan\w*",
    r"bronchospasm",
    r"asthma",
    r"hernia\w*",
    r"copd",
    r"plaques?",
    r"osteophyt\w*",
    r"aortic disease",
    r"bronchiolitis",
    r"airways? disease",
    r"thickening",
    r"cephalization",
    r"aspiration",
    r"bulla(?:e)?\b",
    r"contusions?",
    r"atherosclero\w*",
    r"osteopenia",
    r"metasta\w*",
    r"granulom\w*",
    r"pneumomediastinum",
    r"pneumoperitoneum",
    r"osteodystrophy",
    r"cuffing",
    r"irregular lucenc\w*",
    r"inflam\w*",
    r"fissures?\b",
    r"hypertension",
    r"prominen\w*",
    r"kyphosis",
    r"bullets?\b",
    r"reticula\w*",
    r"thoracentesis",
    r"bronchitis",
    r"volume loss",
    r"deformit\w*",
    r"hemorrhage",
    r"hematoma",
    r"radiopaque",
    r"aerophagia",
    r"arthropathy",
    r"pericardial effusions?",
]

# --------------------------------------------------------------------------------------------------------------------
# Triggers and clause structure.
# --------------------------------------------------------------------------------------------------------------------

_NOT_A_NEGATION_AFTER_NOT = (
    r"(?!(?:\s+(?:significantly|appreciably|substantially|markedly|much|entirely|completely|definitely))?"
    r"\s+(?:changed?|improved|resolved|excluded|ruled|assessed|evaluated|well|clearly)\b)"
)
_CHANGE_WORDS = (
    r"(?:significant|significantly|interval|appreciable|substantial|major|definite|apparent|real|radiographic|gross|"
    r"other|large|evidence|of|further|overall)"
)
_CHANGE_NOUN = r"(?:change|increase|decrease|worsening|progression|improvement|difference)s?\b"
_NO_CHANGE = r"(?!(?:\s+" + _CHANGE_WORDS + r")*\s+" + _CHANGE_NOUN + ")"
_NOT_PARTIAL = (
    r"(?<!partial )(?<!partially )(?<!near )(?<!nearly )(?<!incomplete )(?<!incompletely )(?<!almost )"
    r"(?<!near complete )(?<!nearly complete )(?<!near-complete )(?<!almost complete )(?<!not )(?<!slowly )"
)

# "no significant change in X or Y": X and Y are both still there, not alternatives.
_NO_CHANGE_FWD = r"\b(?:no|without)(?:\s+" + _CHANGE_WORDS + r")*\s+" + _CHANGE_NOUN

_PRE_UNCERTAIN_FWD = (
    r"\b(?:(?:can ?not|can't|could not|couldn't|unable to|difficult to|hard to) (?:entirely |completely |definitely )?"
    r"(?:exclude|rule out)|no new)\b"
)
_PRE_UNCERTAIN_BWD = (
    r"\b(?:(?:can ?not|can't|could not|couldn't) be (?:entirely |completely |definitely |totally )?"
    r"(?:excluded|ruled out)|not (?:entirely |completely |definitely |totally )?(?:excluded|ruled out)|"
    r"(?:difficult|hard|unable) to (?:exclude|rule out))\b"
)
_NEG_FWD = (
    r"\bno\b" + _NO_CHANGE + r"|\bnot\b" + _NOT_A_NEGATION_AFTER_NOT + r"|\bwithout\b" + _NO_CHANGE + r"|"
    r"\bnegative for\b|\bfree of\b|\bclear of\b|\babsen(?:ce of|t)\b|" + _NOT_PARTIAL + r"\b(?:interval )?"
    r"(?:resolution of|resolved)\b|\bremoval of\b|\bremoved\b|\bclearing of\b|\brule out\b|\bruled out\b|"
    r"\bto exclude\b|\bexclude[sd]?\b|\brather than\b|\bneither\b|\bnor\b|\bhistory of\b|\bdisappearance of\b|"
    r"\bnormal\b|\bunremarkable\b"
)
_NEG_BWD = (
    r"\bnot\b" + _NOT_A_NEGATION_AFTER_NOT + r"|\bno longer\b|\babsent\b|" + _NOT_PARTIAL + r"\bresolved\b|"
    r"\bremoved\b|\bcleared\b|\bexcluded\b|\bruled out\b|\bdisappeared\b|\bwithin normal limits\b|"
    r"\bwithin (?:the )?limits of normal\b|\bwithin (?:the )?normal range\b|"
    r"\b(?:at |within )?(?:the )?upper limits? of normal\b|\b(?:top|upper|high)[- ]normal\b|\bnormal\b|\bunremarkable\b"
)
_UNC_FWD = (
    r"\b(?:may|might|could|would|possibl[ey]|probabl[ey]|presum\w*|questionabl[ey]|question of|suspect\w*|"
    r"suspicio\w*|concern(?:ing)? for|worrisome|suggest\w*|differential|versus|vs|equivocal|indeterminate|"
    r"less likely|unlikely|cannot be excluded|(?:clinical(?:ly)? )?correlat\w* (?:clinically )?for)\b"
)
_UNC_BWD = (
    r"\b(?:(?:is|are|was|were) (?:possible|suspected|questioned|questionable|equivocal|uncertain|"
    r"a consideration|considered|favou?red)|(?:may|might|could) (?:also )?be (?:present|seen|noted|considered)|"
    r"less likely|unlikely|not well (?:seen|visualized|evaluated|assessed)|not clearly (?:seen|visualized)|"
    r"poorly (?:seen|visualized|evaluated|assessed)|obscured|versus|vs)\b"
)
_BOUNDARY = (
    r"[;:()\[\]]|\b(?:but|however|although|though|whereas|while|except|other than|apart from|aside from|which|"
    r"there (?:is|are|has been|have been|was|were))\b|"
    r"(?<!consistent )(?<!compatible )(?<!associated )(?<!along )(?<!together )\bwith\b|"
    r"\band (?=(?:the|there|a|an|it|its|this|these)\b)"
)
_VERB = (
    r"\b(?:is|are|was|were|be|been|being|has|have|had|appears?|appeared|remains?|remained|seen|noted|identified|"
    r"demonstrated|visualized|shows?|showing|demonstrates?|reveals?|persists?|measures?|projects?|terminates?|"
    r"extends?|overlies|lies|seems?|looks?)\b"
)
_SEVERITY = (
    r"(?:small|large|moderate|moderately|mild|mildly|severe|new|increas\w*|decreas\w*|worsen\w*|improv\w*|"
    r"persistent|minimal|trace|tiny|marked|markedly|extensive|subtle|patchy|residual|stable|unchanged|enlarg\w*)\b"
)
# Copulas and adverbs between a mention and a trigger that follows it ("heart size IS normal").
_COPULA_TAIL = re.compile(
    r"(?:\s*\b(?:is|are|was|were|has|have|had|been|be|appears?|remains?|now|again|otherwise|still|also|"
    r"essentially|grossly|overall|completely|entirely|since|interval|largely|mostly|no|longer)\b)*\s*$"
)
_ALTERNATIVE = re.compile(r"^\s*,?\s*(?:or|versus|vs|and/or)\s+(?:[\w-]+\s+){0,3}$")
_POSITIONAL = re.compile(
    r"\b(?:over|overlying|overlies|overlie|projecting over|projects over|behind|through|in|within|into|along|"
    r"across|obscuring|posterior to|anterior to)\s+(?:the\s+)?(?:[\w-]+\s+)?$"
)

_ABBREVIATIONS = [
    (re.compile(r"\bvs\."), "vs"),
    (re.compile(r"\be\.g\."), "eg"),
    (re.compile(r"\bi\.e\."), "ie"),
    (re.compile(r"\bw/o\b"), "without"),
    (re.compile(r"\bw/"), "with "),
    (re.compile(r"\bs/p\b"), "status post"),
    (re.compile(r"&"), " and "),
]
# IU-Xray's de-identification token ("No XXXX pleural effusion", "XXXX sternotomy wires"): dropped, as it stands for
# a word we cannot know.
_DEIDENTIFIED = re.compile(r"\bx{3,}\b")

# Misspellings of the main observation words that an OCR pass or a hurried typist leaves ("effusoin", "pneumothroax",
# "cardiomegally"): every spelling one slip away from a word below (a letter dropped, doubled, two neighbours swapped,
# and in long words one vowel changed) is read as the word. Real words are never rewritten.
_TYPO_TARGETS = (
    "effusion",
    "effusions",
    "pneumothorax",
    "pneumothoraces",
    "cardiomegaly",
    "atelectasis",
    "consolidation",
    "pneumonia",
    "edema",
    "opacity",
    "opacities",
    "infiltrate",
    "infiltrates",
    "fracture",
    "fractures",
)
_NOT_TYPOS = frozenset({"pleura", "plural", "dema", "fracturer"})
_VOWELS = "aeiou"


def _typo_table(words: Iterable[str]) -> dict[str, str]:
    table: dict[str, str] = {}
    words = tuple(words)
    for word in words:
        variants = set()
        for i in range(len(word)):
            if len(word) >= 5:
                variants.add(word[:i] + word[i + 1 :])  # dropped letter
            variants.add(word[:i] + word[i] + word[i:])  # doubled letter
            if i + 1 < len(word) and word[i] != word[i + 1]:
                variants.add(word[:i] + word[i + 1] + word[i] + word[i + 2 :])  # swapped neighbours
            if len(word) >= 8 and word[i] in _VOWELS:
                variants.update(word[:i] + v + word[i + 1 :] for v in _VOWELS if v != word[i])
        for v in variants:
            if v not in words and v not in _NOT_TYPOS:
                table.setdefault(v, word)
    return table


_TYPOS = _typo_table(_TYPO_TARGETS)
# only words that could be a misspelling go through the table (a cheap filter on length and first letters)
_TYPO_CANDIDATE = re.compile(r"\b(?:" + "|".join(sorted({v[:2] for v in _TYPOS})) + r")[a-z]{2,14}\b")


def _fix_typo(match: re.Match) -> str:
    word = match.group()
    return _TYPOS.get(word, word)


# a word hyphenated at a line break ("pneumo-\nthorax") is joined again
_LINE_BREAK_HYPHEN = re.compile(r"(?<=[a-z])-[ \t]*\r?\n[ \t]*(?=[a-z])")
_BLANK_LINE = re.compile(r"\n\s*\n")
_WHITESPACE = re.compile(r"\s+")
_SENTENCE_END = re.compile(r"(?<!\d)\.|\.(?!\d)|[!?]")
_DIGIT_ONLY = re.compile(r"^[\s\d]*$")
_COMMA = re.compile(",")


def _alternation(fragments: Iterable[str]) -> str:
    # Longer fragments first so that "heart size" wins over "heart" at the same position.
    return "|".join(sorted(set(fragments), key=len, reverse=True))


def _compile_words(fragments: Iterable[str]) -> re.Pattern | None:
    fragments = list(fragments)
    if not fragments:
        return None
    return re.compile(r"\b(?:" + _alternation(fragments) + ")")


@dataclass(frozen=True)
class Mention:
    """One labelled mention found in a report (see :meth:`CheXpertLabeler.explain`).

    Attributes:
        observation: CheXpert observation name, or ``"Other finding"`` for CheXpert's No Finding blockers.
        text: the matched text (lower case).
        sentence: index of the sentence in the report.
        status: ``1.0`` positive, ``0.0`` negative or ``-1.0`` uncertain.
        rule: short name of the rule that decided the status.
    """

    observation: str
    text: str
    sentence: int
    status: float
    rule: str


@dataclass(frozen=True)
class _Observation:
    name: str
    pattern: re.Pattern  # groups: "g" generic, "u" always uncertain, else specific
    unmention: re.Pattern | None
    descriptors: tuple[tuple[re.Pattern, float], ...]


def _build_observation(name: str) -> _Observation:
    parts = []
    if name in _ALWAYS_UNCERTAIN:
        parts.append("(?P<u>" + _alternation(_ALWAYS_UNCERTAIN[name]) + ")")
    if name in _SPECIFIC:
        parts.append("(?P<s>" + _alternation(_SPECIFIC[name]) + ")")
    if name in _GENERIC:
        parts.append("(?P<g>" + _alternation(_GENERIC[name]) + ")")
    pattern = re.compile(r"\b(?:" + "|".join(parts) + ")")
    descriptors = tuple((re.compile(p), s) for p, s in _DESCRIPTORS.get(name, ()))
    return _Observation(name, pattern, _compile_words(_UNMENTION.get(name, ())), descriptors)


class _Sentence:
    """Clause boundaries and trigger scopes of one sentence, computed once."""

    __slots__ = ("text", "bounds", "commas", "_scopes")

    def __init__(self, text: str, labeler: CheXpertLabeler) -> None:
        self.text = text
        bounds = [0]
        for m in labeler._boundary.finditer(text):
            bounds.append(m.start())
            bounds.append(m.end())
        bounds.append(len(text))
        self.bounds = bounds  # pairs (start, end) of clauses: bounds[0:2], bounds[2:4], ...
        self.commas = [m.start() for m in _COMMA.finditer(text)]
        self._scopes: dict[str, list[tuple[int, int]]] = {}

    def clause(self, pos: int) -> tuple[int, int]:
        """(start, end) of the clause that holds ``pos``."""
        i = bisect.bisect_right(self.bounds, pos) - 1
        if i % 2 == 1:  # inside a boundary token: use the following clause
            i += 1
        i = min(i, len(self.bounds) - 2)
        return self.bounds[i], self.bounds[i + 1]

    def forward_scopes(self, key: str, pattern: re.Pattern, labeler: CheXpertLabeler) -> list[tuple[int, int]]:
        if key in self._scopes:
            return self._scopes[key]
        scopes = []
        text = self.text
        for m in pattern.finditer(text):
            start = m.end()
            end = self.clause(m.start())[1]
            for c in self.commas:
                if c < start or c >= end:
                    continue
                if labeler._verb.search(text, start, c):
                    end = c
                    break
                if labeler._severity_next.match(text, c + 1):
                    # "no effusion, mild cardiomegaly" ends the list; "no consolidation, large effusion, or
                    # pneumothorax" is one list closed by "or" / "nor", and the severity word stays inside it
                    closing = labeler._list_close.search(text, c, end)
                    if closing is None or labeler._verb.search(text, c, closing.start()):
                        end = c
                        break
            sev = labeler._and_severity.search(text, start, end)
            if sev:
                end = sev.start()
            scopes.append((start, end))
        self._scopes[key] = scopes
        return scopes

    def backward_scopes(self, key: str, pattern: re.Pattern, labeler: CheXpertLabeler) -> list[tuple[int, int]]:
        if key in self._scopes:
            return self._scopes[key]
        scopes = []
        text = self.text
        for m in pattern.finditer(text):
            end = m.start()
            start = self.clause(end)[0]
            for c in reversed(self.commas):
                if start <= c < end:
                    start = c + 1
                    break
            head = text[start:end]
            tail = _COPULA_TAIL.search(head)
            head = head[: tail.start()] if tail else head
            last_verb = None
            for v in labeler._verb.finditer(head):
                last_verb = v
            if last_verb is not None:
                start += last_verb.end()
            scopes.append((start, end))
        self._scopes[key] = scopes
        return scopes


class CheXpertLabeler:
    """Rule-based labeler of the 14 CheXpert observations; see the module docstring for the rules.

    The instance holds precompiled regular expressions only: create it once and reuse it. It is thread safe and
    picklable.

    Example:
        >>> labeler = CheXpertLabeler()
        >>> labels = labeler.label("Small left pleural effusion. No pneumothorax. Heart size is normal.")
        >>> labels["Pleural Effusion"], labels["Pneumothorax"], labels["Cardiomegaly"], labels["Edema"]
        (1.0, 0.0, 0.0, None)
    """

    version = "monai-r2gen-chexpert-rules-2"

    def __init__(self) -> None:
        self._observations = tuple(_build_observation(name) for name in CHEXPERT_LABELS if name != "No Finding")
        self._other = _compile_words(_OTHER_FINDINGS)
        # cheap first pass: a sentence without any phrase of any kind needs no further work
        self._any = _compile_words(
            [f for table in (_SPECIFIC, _ALWAYS_UNCERTAIN, _GENERIC) for frags in table.values() for f in frags]
            + _OTHER_FINDINGS
        )
        self._boundary = re.compile(_BOUNDARY)
        self._verb = re.compile(_VERB)
        self._severity_next = re.compile(r"\s*(?:and\s+)?" + _SEVERITY)
        self._and_severity = re.compile(r"\band\s+" + _SEVERITY)
        self._list_close = re.compile(r"\b(?:or|nor)\b")
        self._triggers = {
            "pre_unc_fwd": re.compile(_PRE_UNCERTAIN_FWD),
            "pre_unc_bwd": re.compile(_PRE_UNCERTAIN_BWD),
            "neg_fwd": re.compile(_NEG_FWD),
            "neg_bwd": re.compile(_NEG_BWD),
            "unc_fwd": re.compile(_UNC_FWD),
            "unc_bwd": re.compile(_UNC_BWD),
            "no_change_fwd": re.compile(_NO_CHANGE_FWD),
        }

    # ------------------------------------------------------------------------------------------------ public API
    def label(self, text: str) -> dict[str, float | None]:
        """Label one report.

        Args:
            text: report text (any case, any line breaks).

        Returns:
            dict over :data:`CHEXPERT_LABELS`: ``1.0`` positive, ``0.0`` negative, ``-1.0`` uncertain, ``None`` not
            mentioned.
        """
        return self._aggregate(self._mentions(text), bool(text and text.strip()))

    def label_many(self, texts: Iterable[str]) -> list[dict[str, float | None]]:
        """Label several reports; see :meth:`label`."""
        return [self.label(t) for t in texts]

    def explain(self, text: str) -> list[Mention]:
        """Every mention found in ``text`` with its status and the rule that set it (for debugging rules)."""
        return self._mentions(text)

    # ------------------------------------------------------------------------------------------------ internals
    @staticmethod
    def _sentences(text: str) -> list[str]:
        text = _LINE_BREAK_HYPHEN.sub("", text.lower())
        for pattern, repl in _ABBREVIATIONS:
            text = pattern.sub(repl, text)
        text = _DEIDENTIFIED.sub(" ", text)
        text = _TYPO_CANDIDATE.sub(_fix_typo, text)
        text = _BLANK_LINE.sub(" . ", text)
        text = _WHITESPACE.sub(" ", text)
        out = []
        for s in _SENTENCE_END.split(text):
            s = s.strip()
            if s and not _DIGIT_ONLY.match(s):
                out.append(" " + s + " ")  # padding keeps look-behinds and \b simple at the edges
        return out

    def _mentions(self, text: str) -> list[Mention]:
        if not isinstance(text, str):
            raise TypeError(f"report text must be a str, got {type(text).__name__}")
        mentions: list[Mention] = []
        for index, sentence in enumerate(self._sentences(text)):
            mentions.extend(self._sentence_mentions(index, sentence))
        return mentions

    def _sentence_mentions(self, index: int, text: str) -> list[Mention]:
        if not self._any.search(text):
            return []
        sent = _Sentence(text, self)
        found: list[tuple[int, int, str, str]] = []  # (start, end, observation, kind)
        for obs in self._observations:
            unmentions = None
            for m in obs.pattern.finditer(text):
                if obs.unmention is not None:
                    if unmentions is None:
                        unmentions = [u.span() for u in obs.unmention.finditer(text)]
                    if any(m.start() < ue and m.end() > us for us, ue in unmentions):
                        continue
                kind = m.lastgroup or "s"
                if kind == "g":
                    clause_start = sent.clause(m.start())[0]
                    if _POSITIONAL.search(text, clause_start, m.start()):
                        continue
                found.append((m.start(), m.end(), obs.name, kind))
        if self._other is not None:
            for m in self._other.finditer(text):
                found.append((m.start(), m.end(), "Other finding", "s"))
        if not found:
            return []
        found.sort()
        alternatives = self._alternatives(sent, found)
        out = []
        for i, (start, end, name, kind) in enumerate(found):
            status, rule = self._classify(sent, start, end, name, kind, i in alternatives)
            if status is None:
                continue
            out.append(Mention(name, text[start:end], index, status, rule))
        return out

    def _alternatives(self, sent: _Sentence, found: list[tuple[int, int, str, str]]) -> set[int]:
        """Indices of mentions joined to a neighbour by "or" / "versus" in the same clause."""
        alt: set[int] = set()
        for i in range(len(found) - 1):
            a_end, b_start = found[i][1], found[i + 1][0]
            if b_start < a_end or sent.clause(found[i][0]) != sent.clause(b_start):
                continue
            if _ALTERNATIVE.match(sent.text[a_end:b_start]):
                alt.update((i, i + 1))
        return alt

    def _covered(self, sent: _Sentence, key: str, start: int, end: int) -> bool:
        pattern = self._triggers[key]
        if key.endswith("fwd"):
            return any(s <= start < e for s, e in sent.forward_scopes(key, pattern, self))
        return any(s <= start and end <= e for s, e in sent.backward_scopes(key, pattern, self))

    def _classify(
        self, sent: _Sentence, start: int, end: int, name: str, kind: str, alternative: bool
    ) -> tuple[float | None, str]:
        for key in ("pre_unc_fwd", "pre_unc_bwd"):
            if self._covered(sent, key, start, end):
                return UNCERTAIN, key
        for key in ("neg_fwd", "neg_bwd"):
            if self._covered(sent, key, start, end):
                return NEGATIVE, key
        for key in ("unc_fwd", "unc_bwd"):
            if self._covered(sent, key, start, end):
                return UNCERTAIN, key
        if alternative and not self._covered(sent, "no_change_fwd", start, end):
            return UNCERTAIN, "alternative"
        if kind == "u":
            return UNCERTAIN, "uncertain_phrase"
        if kind == "g":
            return self._describe(sent, start, end, name)
        return POSITIVE, "mention"

    def _describe(self, sent: _Sentence, start: int, end: int, name: str) -> tuple[float | None, str]:
        """Status of a generic anatomy mention from the descriptors next to it, or None."""
        cs, ce = sent.clause(start)
        text = sent.text
        left = text[cs:start].split()[-4:]
        right_end = ce
        for c in sent.commas:
            if end <= c < right_end:
                right_end = c
                break
        right = text[end:right_end].split()[:7]
        window = " ".join(left) + " | " + " ".join(right)
        obs = next(o for o in self._observations if o.name == name)
        for pattern, status in obs.descriptors:
            if pattern.search(window):
                return status, "descriptor"
        return None, "no_descriptor"

    @staticmethod
    def _aggregate(mentions: Sequence[Mention], nonempty: bool) -> dict[str, float | None]:
        result: dict[str, float | None] = dict.fromkeys(CHEXPERT_LABELS)
        if not nonempty:
            return result
        other_finding = False
        for m in mentions:
            if m.observation == "Other finding":
                other_finding = other_finding or m.status != NEGATIVE
                continue
            statuses = [(m.observation, m.status)]
            if m.observation == "Edema" and m.status != NEGATIVE and ("chf" in m.text or "heart failure" in m.text):
                statuses.append(("Cardiomegaly", UNCERTAIN))
            for name, status in statuses:
                old = result[name]
                if old is None or _RANK[status] > _RANK[old]:
                    result[name] = status
        finding = other_finding or any(
            v is not None and v != NEGATIVE for k, v in result.items() if k not in ("No Finding", "Support Devices")
        )
        result["No Finding"] = None if finding else POSITIVE
        return result
