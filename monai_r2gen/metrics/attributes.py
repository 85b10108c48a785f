"""Finding attributes: the side and severity a report writes for each finding, scored against region annotations.

CE scores (:mod:`~monai_r2gen.metrics.clinical`) say whether a report names a finding; they do not say whether it
puts the effusion on the right side or calls a large pneumothorax small. This module reads both from the text and
scores them against ground truth that records them (the phantom generator's ``findings.json``, or a user's region
annotations).

**Reading a report** (:func:`read_finding_attributes`). The text is lower-cased and cut into sentences at ``.``
(not inside decimals), ``!``, ``?``, ``;`` and blank lines. In each sentence:

1. Mentions of the nine finding kinds (:data:`FINDING_KINDS`) are found by their words: effusion(s) (not
   "pericardial effusion"), pneumothorax, consolidation / air bronchograms, nodule / mass (not "mass effect"),
   edema (not subcutaneous / soft-tissue edema), atelectasis, cardiomegaly or "enlarged" / "enlargement" with
   "heart" / "cardiac" close by, fracture, and tube / catheter / line / PICC / pacemaker / device.
2. A mention is negated by a cue before it in its clause ("no", "not", "without", "negative for", "free of",
   "neither", "nor", "absence of", "resolution of", "resolved", "removal of", "rather than"; "no change" is not a
   cue) within :data:`NEGATION_WINDOW` words, or by one after it ("... is not seen", "... has resolved", "... has
   been removed", "... is absent"). The scope of a cue ends at "but", "however", "although", "except", "there is",
   ``:`` or brackets, at a comma when the negated clause already holds a verb ("no effusion is seen, ..."), and
   where an attribute word follows another mention ("no pneumothorax, small effusion", "no pneumothorax small
   effusion"), so negative lists ("no consolidation, effusion, or pneumothorax") stay negated as a whole.
   Hedged mentions ("possible small effusion") count as stated: the reader reads attributes, not certainty.
3. Each run of mentions of one kind owns a segment of the sentence: the text up to the last connector (``,``,
   "and", "with", "plus", "as well as", "no", "without", ...) before the next kind's mention, so "mild cardiomegaly
   and small left effusion" gives "mild" to the heart and "small left" to the effusion.
4. In the segment, the side is "bilateral" for bilateral / bilaterally / both / bibasilar or when "right" and
   "left" both occur ("a small right and a moderate left pleural effusion"); otherwise right or left ("lingula" is
   left; "right-sided" is right). Severity words per kind (:data:`SEVERITIES`): ordered scales take the most
   severe word of the segment (an effusion's severity is its largest side, "moderate-to-large" is large);
   "mildly enlarged" is mild, "marked" severe, "trace" small / minimal. Consolidation is "lobar" or "patchy", and
   also lobar when written "dense", "confluent" or "homogeneous"; a lung lesion's severity is its own word
   ("nodule" or "mass"); "minimally displaced" is read before "displaced".

A kind is stated when one of its mentions is positive; its side (severity) is that of the first positive segment
that gives one, over sentences in order (FINDINGS before IMPRESSION). Cardiomegaly and support devices have no side,
support devices no severity.

**Scores** (:func:`attribute_scores`), per finding kind of the ground truth and micro-averaged over kinds:

* ``mention_recall`` = mentioned / n: the share of true findings whose kind the report states;
* ``side_accuracy`` = among mentioned findings with a true side, the share whose written side is the true one (no
  written side is wrong); ``severity_accuracy`` likewise;
* ``side_prior`` / ``severity_prior`` = the accuracy of always writing the most frequent true side (severity) of the
  kind among the same mentioned findings: what a report that knows the finding but guesses its attributes reaches.

Flat keys are ``"attr/<score>"`` (micro over kinds) and ``"attr/<kind>/<score>"`` (see :func:`attribute_score_keys`).
A ratio with no finding to count (a kind never mentioned, a kind without sides) is **omitted** from the flat scores
and ``None`` in the ``"per_kind"`` table, so no score is ever NaN. Each true finding is compared with the attributes
read for its kind; a study with two findings of one kind on different sides can get at most one side right.

**Ground-truth files** (:func:`load_findings`) are JSON in one of two layouts::

    {"generator": "...", "studies": {"<study id>": {"findings": [{"kind": "pleural_effusion", "side": "left",
                                                                  "severity": "small", ...}, ...], ...}, ...}}
    {"<study id>": [{"kind": "pleural_effusion", "side": "left", "severity": "small"}, ...], ...}

the first being the phantom generator's ``findings.json``. ``kind`` is one of :data:`FINDING_KINDS`; ``side`` is
"right", "left", "bilateral" or null; ``severity`` one of the kind's :data:`SEVERITIES` or null (missing keys are
null). A study listed with ``[]`` has no finding.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monai_r2gen.errors import InputFileError, MetricError

__all__ = [
    "FINDING_KINDS",
    "SIDES",
    "SIDED_KINDS",
    "SEVERITIES",
    "NEGATION_WINDOW",
    "READER_VERSION",
    "read_finding_attributes",
    "load_findings",
    "attribute_scores",
    "attribute_score_keys",
    "format_attribute_table",
]

#: finding kinds (the phantom generator draws these; ``monai_r2gen.data.synthetic.FINDING_KINDS`` is this tuple)
FINDING_KINDS: tuple[str, ...] = (
    "cardiomegaly",
    "pleural_effusion",
    "pneumothorax",
    "consolidation",
    "lung_nodule",
    "edema",
    "atelectasis",
    "support_devices",
    "rib_fracture",
)
#: side values
SIDES: tuple[str, ...] = ("right", "left", "bilateral")
#: kinds that have a side
SIDED_KINDS: tuple[str, ...] = tuple(k for k in FINDING_KINDS if k not in ("cardiomegaly", "support_devices"))
#: severity values per kind (ordered scales from least to most severe)
SEVERITIES: dict[str, tuple[str, ...]] = {
    "cardiomegaly": ("mild", "moderate", "severe"),
    "pleural_effusion": ("small", "moderate", "large"),
    "pneumothorax": ("small", "moderate", "large"),
    "consolidation": ("lobar", "patchy"),
    "lung_nodule": ("nodule", "mass"),
    "edema": ("mild", "moderate", "severe"),
    "atelectasis": ("minimal", "mild"),
    "support_devices": (),
    "rib_fracture": ("displaced", "minimally displaced"),
}
#: most words between a negation cue and the mention it negates
NEGATION_WINDOW = 10
READER_VERSION = "monai-r2gen-attributes-1"

_SCORES = ("mention_recall", "side_accuracy", "side_prior", "severity_accuracy", "severity_prior")

# --------------------------------------------------------------------------------------------------------------------
# lexicon (matched on lower-cased text)
# --------------------------------------------------------------------------------------------------------------------

_MENTIONS: dict[str, re.Pattern[str]] = {
    "cardiomegaly": re.compile(r"\bcardiomegaly\b|\benlarge(?:d|ment)\b"),
    "pleural_effusion": re.compile(r"\beffusions?\b"),
    "pneumothorax": re.compile(r"\b(?:hydro)?pneumothora(?:x|ces)\b"),
    "consolidation": re.compile(r"\bconsolidat\w*|\bair[- ]?bronchograms?\b"),
    "lung_nodule": re.compile(r"\bnodules?\b|\bmass(?:es)?\b"),
    "edema": re.compile(r"\bo?edema\b"),
    "atelectasis": re.compile(r"\batelecta\w*"),
    "support_devices": re.compile(r"\b(?:tubes?|catheters?|lines?|picc|pac(?:er|emaker)s?|devices?)\b"),
    "rib_fracture": re.compile(r"\bfractur\w*"),
}
_UNMENTIONS: dict[str, re.Pattern[str]] = {
    "pleural_effusion": re.compile(r"\bpericardial\s+effusions?\b"),
    "edema": re.compile(r"\b(?:subcutaneous|soft[- ]tissue)\s+o?edema\b"),
    "lung_nodule": re.compile(r"\bmass\s+effect\b"),
}
_HEART = re.compile(r"\b(?:heart|cardiac)\b")
_HEART_REACH = 50  # characters either side of "enlarged" where a heart word makes it cardiomegaly

_SENTENCE_END = re.compile(r"(?<!\d)\.|\.(?!\d)|[!?;]|\n\s*\n")
_NEG_CUE = re.compile(
    r"\b(?:no|not|without|negative\s+for|free\s+of|neither|nor|absence\s+of|resolution\s+of|resolved|removal\s+of"
    r"|rather\s+than)\b"
)
_PSEUDO_NEG = re.compile(r"(?:no|not)\s+(?:significant\s+|interval\s+|appreciable\s+)?change[ds]?\b")
_POST_NEG = re.compile(
    r"(?:\s+[a-z-]+){0,3}?\s+(?:is|are|was|were|has|have)\s+(?:been\s+)?(?:not\s+(?:seen|present|identified|"
    r"visualized|demonstrated|evident|appreciated|noted)|no\s+longer\s+(?:seen|present|visualized)|absent|resolved|"
    r"removed)\b"
)
_SCOPE_END = re.compile(
    r"\b(?:but|however|although|though|whereas|while|except|apart\s+from|aside\s+from|other\s+than|which|"
    r"there\s+(?:is|are))\b|[:()\[\]]"
)
_VERB = re.compile(r"\b(?:is|are|was|were|seen|identified|noted|present|visualized|demonstrated|evident|appreciated)\b")
_ATTRIBUTE_WORD = (
    r"(?:small|moderate|moderately|large|mild|mildly|minimal|minimally|severe|severely|marked|markedly|trace|tiny|"
    r"massive|right|left|bilateral|bibasilar|lobar|patchy|dense|displaced|new|acute)\b"
)
_AFTER_MENTION_ATTRIBUTE = re.compile(r"\s*(?:,\s*)?(?:and\s+)?" + _ATTRIBUTE_WORD)
_AFTER_COMMA_ATTRIBUTE = re.compile(r"\s*(?:and\s+)?" + _ATTRIBUTE_WORD)
_CONNECTOR = re.compile(r",|\b(?:and|with|plus|as\s+well\s+as|along\s+with|but|while|whereas|no|without|also)\b")

_BILATERAL = re.compile(r"\b(?:bilateral(?:ly)?|both|bibasilar|bibasal|bilat)\b")
_RIGHT = re.compile(r"\bright\b")
_LEFT = re.compile(r"\b(?:left|lingula|lingular)\b")

_MILD_MODERATE_SEVERE = (
    ("mild", re.compile(r"\b(?:mild(?:ly)?|slight(?:ly)?)\b")),
    ("moderate", re.compile(r"\bmoderate(?:ly)?\b")),
    ("severe", re.compile(r"\b(?:severe(?:ly)?|marked(?:ly)?|massive(?:ly)?)\b")),
)
_SMALL_MODERATE_LARGE = (
    ("small", re.compile(r"\b(?:small|trace|tiny)\b")),
    ("moderate", re.compile(r"\bmoderate(?:ly)?\b")),
    ("large", re.compile(r"\b(?:large|massive)\b")),
)
#: ordered scales: the most severe word of the segment wins
_ORDERED: dict[str, tuple[tuple[str, re.Pattern[str]], ...]] = {
    "cardiomegaly": _MILD_MODERATE_SEVERE,
    "edema": _MILD_MODERATE_SEVERE,
    "pleural_effusion": _SMALL_MODERATE_LARGE,
    "pneumothorax": _SMALL_MODERATE_LARGE,
    "atelectasis": (("minimal", re.compile(r"\b(?:minimal|trace)\b")), ("mild", re.compile(r"\bmild(?:ly)?\b"))),
}
#: categorical values: the first word of the segment wins (each list in order of trust)
_CATEGORICAL: dict[str, tuple[tuple[tuple[str, re.Pattern[str]], ...], ...]] = {
    "consolidation": (
        (("lobar", re.compile(r"\blobar\b")), ("patchy", re.compile(r"\bpatchy\b"))),
        (("lobar", re.compile(r"\b(?:dense|confluent|homogeneous)\b")),),
    ),
    "rib_fracture": (
        (
            ("minimally displaced", re.compile(r"\bminimally[- ]displaced\b")),
            ("displaced", re.compile(r"(?<!minimally )(?<!minimally-)(?<!non-)(?<!non )\bdisplaced\b")),
        ),
    ),
}


# --------------------------------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class _Mention:
    kind: str
    start: int
    end: int
    word: str
    positive: bool = True


@dataclass
class _Group:
    kind: str
    positive: bool
    mentions: list[_Mention] = field(default_factory=list)

    @property
    def start(self) -> int:
        return self.mentions[0].start

    @property
    def end(self) -> int:
        return self.mentions[-1].end


def _normalise(text: str) -> str:
    text = text.lower()
    text = re.sub(r"[\u2010-\u2015]", "-", text)
    text = re.sub(r"\r\n?", "\n", text)
    return text


def _sentences(text: str) -> list[str]:
    out = []
    for part in _SENTENCE_END.split(text):
        sentence = re.sub(r"\s+", " ", part).strip()
        if sentence:
            out.append(sentence)
    return out


def _find_mentions(sentence: str) -> list[_Mention]:
    found: list[_Mention] = []
    for kind, pattern in _MENTIONS.items():
        blocked = [m.span() for m in _UNMENTIONS[kind].finditer(sentence)] if kind in _UNMENTIONS else []
        for m in pattern.finditer(sentence):
            if any(a <= m.start() < b for a, b in blocked):
                continue
            word = m.group(0)
            if kind == "cardiomegaly" and word.startswith("enlarge"):
                near = sentence[max(0, m.start() - _HEART_REACH) : m.end() + _HEART_REACH]
                if not _HEART.search(near):
                    continue
            found.append(_Mention(kind, m.start(), m.end(), word))
    found.sort(key=lambda x: (x.start, -x.end))
    kept: list[_Mention] = []
    for mention in found:  # overlapping matches of two kinds: the earlier, longer one wins
        if kept and mention.start < kept[-1].end:
            continue
        kept.append(mention)
    return kept


def _scope_broken(sentence: str, cue_end: int, mention: _Mention, mentions: list[_Mention]) -> bool:
    """Whether the negation scope that starts at ``cue_end`` ends before ``mention``."""
    between = sentence[cue_end : mention.start]
    if len(between.split()) > NEGATION_WINDOW or _SCOPE_END.search(between):
        return True
    for comma in re.finditer(",", between):
        if _VERB.search(between[: comma.start()]) or _AFTER_COMMA_ATTRIBUTE.match(between, comma.end()):
            return True
    for other in mentions:
        if cue_end <= other.start and other.end <= mention.start:
            after = _AFTER_MENTION_ATTRIBUTE.match(sentence, other.end)
            if after is not None and after.end() <= mention.start:
                return True
    return False


def _negated(sentence: str, mention: _Mention, mentions: list[_Mention]) -> bool:
    for cue in _NEG_CUE.finditer(sentence, 0, mention.start):
        if _PSEUDO_NEG.match(sentence, cue.start()):
            continue
        if not _scope_broken(sentence, cue.end(), mention, mentions):
            return True
    post = _POST_NEG.match(sentence, mention.end)
    if post is not None:
        return not any(mention.end < m.start < post.end() for m in mentions)
    return False


def _groups(sentence: str, mentions: list[_Mention]) -> list[_Group]:
    groups: list[_Group] = []
    for mention in mentions:
        mention.positive = not _negated(sentence, mention, mentions)
        if groups and groups[-1].kind == mention.kind and groups[-1].positive == mention.positive:
            groups[-1].mentions.append(mention)
        else:
            groups.append(_Group(mention.kind, mention.positive, [mention]))
    return groups


def _split_point(sentence: str, left_end: int, right_start: int) -> int:
    last = None
    for last in _CONNECTOR.finditer(sentence, left_end, right_start):  # noqa: B007 - the last one is wanted
        pass
    return last.start() if last is not None else left_end


def _read_side(segment: str) -> str | None:
    if _BILATERAL.search(segment):
        return "bilateral"
    right, left = bool(_RIGHT.search(segment)), bool(_LEFT.search(segment))
    if right and left:
        return "bilateral"
    return "right" if right else "left" if left else None


def _read_severity(kind: str, segment: str, group: _Group) -> str | None:
    if kind == "lung_nodule":
        return "mass" if group.mentions[0].word.startswith("mass") else "nodule"
    if kind in _ORDERED:
        best = None
        for rank, (_value, pattern) in enumerate(_ORDERED[kind]):
            if pattern.search(segment):
                best = rank
        return None if best is None else _ORDERED[kind][best][0]
    for options in _CATEGORICAL.get(kind, ()):
        hits = [(m.start(), value) for value, pattern in options for m in pattern.finditer(segment)]
        if hits:
            return min(hits)[1]
    return None


def read_finding_attributes(text: str) -> dict[str, dict[str, str | None]]:
    """The finding kinds a report states as present, each with the side and severity it writes for it.

    See the module docstring for the rules. Never raises: anything that is not a string, or holds no finding, gives
    ``{}``.

    Args:
        text: a report (any section layout; model output with missing punctuation or repetitions is fine).

    Returns:
        ``{kind: {"side": str | None, "severity": str | None}}`` for each stated kind, in :data:`FINDING_KINDS`
        order. ``side`` is one of :data:`SIDES` or None (always None for cardiomegaly and support devices);
        ``severity`` is one of the kind's :data:`SEVERITIES` or None.

    Example:
        >>> read_finding_attributes("No pneumothorax. Bilateral pleural effusions, small on the right and large on "
        ...                         "the left. Mildly enlarged heart.")
        {'cardiomegaly': {'side': None, 'severity': 'mild'}, 'pleural_effusion': {'side': 'bilateral', 'severity': 'large'}}
    """  # noqa: E501
    if not isinstance(text, str) or not text.strip():
        return {}
    found: dict[str, dict[str, str | None]] = {}
    for sentence in _sentences(_normalise(text)):
        mentions = _find_mentions(sentence)
        if not mentions:
            continue
        groups = _groups(sentence, mentions)
        bounds = [0]
        for left, right in zip(groups[:-1], groups[1:]):
            bounds.append(_split_point(sentence, left.end, right.start))
        bounds.append(len(sentence))
        for k, group in enumerate(groups):
            if not group.positive:
                continue
            segment = sentence[bounds[k] : bounds[k + 1]]
            entry = found.setdefault(group.kind, {"side": None, "severity": None})
            if entry["side"] is None and group.kind in SIDED_KINDS:
                entry["side"] = _read_side(segment)
            if entry["severity"] is None and SEVERITIES[group.kind]:
                entry["severity"] = _read_severity(group.kind, segment, group)
    return {kind: found[kind] for kind in FINDING_KINDS if kind in found}


# --------------------------------------------------------------------------------------------------------------------
# ground truth
# --------------------------------------------------------------------------------------------------------------------


def _check_finding(item: Any, where: str, complain: Any) -> dict[str, Any]:
    if not isinstance(item, Mapping):
        raise complain(f"{where}: expected an object with 'kind', 'side' and 'severity', got {type(item).__name__}")
    kind = item.get("kind")
    if kind not in FINDING_KINDS:
        raise complain(f"{where}: unknown kind {kind!r}; expected one of {', '.join(FINDING_KINDS)}")
    side, severity = item.get("side"), item.get("severity")
    if side is not None and side not in SIDES:
        raise complain(f"{where} ({kind}): side {side!r} is not one of {', '.join(SIDES)} or null")
    if severity is not None and severity not in SEVERITIES[kind]:
        allowed = ", ".join(SEVERITIES[kind]) or "none"
        raise complain(f"{where} ({kind}): severity {severity!r} is not one of: {allowed} (or null)")
    out = dict(item)
    out.update(kind=kind, side=side, severity=severity)
    return out


def load_findings(path: str | os.PathLike) -> dict[str, list[dict[str, Any]]]:
    """Read ground-truth findings with their sides and severities (either layout of the module docstring).

    Args:
        path: the JSON file (a phantom ``findings.json`` or ``{study_id: [finding, ...]}``).

    Returns:
        ``{study_id: [finding, ...]}`` in file order; each finding is a copy of its record with ``kind``, ``side`` and
        ``severity`` always present (missing ones None); other keys (``params``, ``boxes`` ...) are kept.

    Raises:
        InputFileError: missing / unreadable file, invalid JSON, another layout, an unknown kind, side or severity,
            or no study at all.
    """
    path = Path(path)

    def complain(reason: str) -> InputFileError:
        return InputFileError(path, reason)

    try:
        raw = json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise complain("findings file not found") from None
    except IsADirectoryError:
        raise complain("is a directory, expected a findings JSON file") from None
    except json.JSONDecodeError as exc:
        raise complain(f"invalid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise complain(f"cannot be read ({exc})") from None
    layout = "expected {'studies': {id: {'findings': [...]}}} or {id: [{'kind', 'side', 'severity'}, ...]}"
    if not isinstance(raw, Mapping):
        raise complain(f"top level is a {type(raw).__name__}; {layout}")
    generator = isinstance(raw.get("studies"), Mapping)
    studies = raw["studies"] if generator else raw
    out: dict[str, list[dict[str, Any]]] = {}
    for study_id, value in studies.items():
        if generator:
            if not isinstance(value, Mapping) or not isinstance(value.get("findings"), list):
                raise complain(f"study {study_id!r}: no 'findings' list")
            items = value["findings"]
        else:
            if not isinstance(value, list):
                raise complain(f"study {study_id!r}: value is a {type(value).__name__}, not a list of findings; "
                               f"{layout}")  # fmt: skip
            items = value
        out[str(study_id)] = [_check_finding(f, f"study {study_id!r} finding {i}", complain) for i, f in
                              enumerate(items)]  # fmt: skip
    if not out:
        raise complain("no studies")
    return out


# --------------------------------------------------------------------------------------------------------------------
# scores
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class _Tally:
    n: int = 0
    mentioned: int = 0
    spurious: int = 0
    side: Counter = field(default_factory=Counter)  # true side -> mentioned findings with it
    side_correct: int = 0
    severity: Counter = field(default_factory=Counter)
    severity_correct: int = 0


def _ratio(num: int, den: int) -> float | None:
    return float(num) / float(den) if den else None


def _majority(counts: Counter, order: Sequence[str]) -> tuple[str | None, int]:
    if not counts:
        return None, 0
    rank = {v: i for i, v in enumerate(order)}
    value = min(counts, key=lambda v: (-counts[v], rank.get(v, len(rank)), str(v)))
    return value, counts[value]


def _row(t: _Tally, side_prior: tuple[str | None, int], severity_prior: tuple[str | None, int]) -> dict[str, Any]:
    side_n, severity_n = sum(t.side.values()), sum(t.severity.values())
    return {
        "n": t.n,
        "mentioned": t.mentioned,
        "spurious": t.spurious,
        "mention_recall": _ratio(t.mentioned, t.n),
        "side_n": side_n,
        "side_correct": t.side_correct,
        "side_accuracy": _ratio(t.side_correct, side_n),
        "side_prior_value": side_prior[0],
        "side_prior_correct": side_prior[1],
        "side_prior": _ratio(side_prior[1], side_n),
        "severity_n": severity_n,
        "severity_correct": t.severity_correct,
        "severity_accuracy": _ratio(t.severity_correct, severity_n),
        "severity_prior_value": severity_prior[0],
        "severity_prior_correct": severity_prior[1],
        "severity_prior": _ratio(severity_prior[1], severity_n),
    }


def attribute_score_keys(kinds: Sequence[str] = FINDING_KINDS) -> list[str]:
    """Every flat key :func:`attribute_scores` may return, in table order: ``"attr/mention_recall"``,
    ``"attr/side_accuracy"``, ``"attr/side_prior"``, ``"attr/severity_accuracy"``, ``"attr/severity_prior"``, then
    ``"attr/<kind>/<score>"`` per kind (no side scores for kinds without a side, no severity scores for support
    devices)."""
    keys = [f"attr/{s}" for s in _SCORES]
    for kind in kinds:
        for s in _SCORES:
            if (s.startswith("side") and kind not in SIDED_KINDS) or (s.startswith("severity") and
                                                                      not SEVERITIES.get(kind)):  # fmt: skip
                continue
            keys.append(f"attr/{kind}/{s}")
    return keys


_KEYS = frozenset(attribute_score_keys())


def attribute_scores(
    hypotheses: Sequence[str | Mapping[str, Mapping[str, str | None]]],
    findings: Sequence[Sequence[Mapping[str, Any]]],
) -> dict[str, Any]:
    """Mention recall, side and severity accuracy (and their majority priors) of reports against true findings.

    Definitions in the module docstring.

    Args:
        hypotheses: one report per study (read with :func:`read_finding_attributes`), or its already-read attributes.
        findings: the true findings of each study, same order; each a mapping with ``kind`` and optional ``side`` /
            ``severity`` (e.g. the values of :func:`load_findings`).

    Returns:
        the flat float scores of :func:`attribute_score_keys` that are defined (undefined ones are omitted, never NaN),
        plus ``"per_kind"`` (kind -> counts and scores, None where undefined; only kinds present in the ground truth,
        in :data:`FINDING_KINDS` order), ``"overall"`` (the same counts summed over kinds; its priors add up each
        kind's majority) and ``"settings"`` (reader version, number of reports, how undefined scores are given).

    Raises:
        MetricError: lengths differ, a study's findings are not a list, or a finding has an unknown kind.
    """
    if isinstance(hypotheses, (str, Mapping)) or isinstance(findings, (str, Mapping)):
        raise MetricError("hypotheses and findings must be sequences (one item per study)")
    if len(hypotheses) != len(findings):
        raise MetricError(f"{len(hypotheses)} hypotheses but {len(findings)} findings lists; they must pair up")
    tallies = {kind: _Tally() for kind in FINDING_KINDS}
    for i, (hyp, truth) in enumerate(zip(hypotheses, findings)):
        if isinstance(truth, (str, Mapping)) or not isinstance(truth, Sequence):
            raise MetricError(f"study {i}: findings must be a list of finding mappings, got {type(truth).__name__}")
        read = hyp if isinstance(hyp, Mapping) else read_finding_attributes(hyp)
        true_kinds = set()
        for j, f in enumerate(truth):
            kind = f.get("kind") if isinstance(f, Mapping) else None
            if kind not in tallies:
                raise MetricError(f"study {i} finding {j}: unknown kind {kind!r}; expected one of {FINDING_KINDS}")
            true_kinds.add(kind)
            t = tallies[kind]
            t.n += 1
            if kind not in read:
                continue
            t.mentioned += 1
            written = read[kind] or {}
            side, severity = f.get("side"), f.get("severity")
            if kind in SIDED_KINDS and side is not None:
                t.side[side] += 1
                t.side_correct += int(written.get("side") == side)
            if SEVERITIES[kind] and severity is not None:
                t.severity[severity] += 1
                t.severity_correct += int(written.get("severity") == severity)
        for kind in read:
            if kind in tallies and kind not in true_kinds:
                tallies[kind].spurious += 1

    per_kind: dict[str, dict[str, Any]] = {}
    total = _Tally()
    side_prior_total = severity_prior_total = 0
    for kind, t in tallies.items():
        side_prior, severity_prior = _majority(t.side, SIDES), _majority(t.severity, SEVERITIES[kind])
        total.spurious += t.spurious
        if t.n == 0:
            continue
        per_kind[kind] = _row(t, side_prior, severity_prior)
        total.n += t.n
        total.mentioned += t.mentioned
        total.side.update({f"{kind}/{k}": v for k, v in t.side.items()})
        total.side_correct += t.side_correct
        total.severity.update({f"{kind}/{k}": v for k, v in t.severity.items()})
        total.severity_correct += t.severity_correct
        side_prior_total += side_prior[1]
        severity_prior_total += severity_prior[1]
    overall = _row(total, (None, side_prior_total), (None, severity_prior_total))
    overall.pop("side_prior_value")
    overall.pop("severity_prior_value")

    result: dict[str, Any] = {}
    for name, row in [("", overall)] + [(f"{k}/", r) for k, r in per_kind.items()]:
        for s in _SCORES:
            if row[s] is not None and f"attr/{name}{s}" in _KEYS:
                result[f"attr/{name}{s}"] = float(row[s])
    result["per_kind"] = per_kind
    result["overall"] = overall
    result["settings"] = {
        "reader": READER_VERSION,
        "num_reports": len(hypotheses),
        "undefined": "omitted from the flat scores, None in per_kind",
        "missing_written_attribute": "wrong",
        "prior": "always the most frequent true value of the kind among its mentioned findings",
    }
    return result


def _cell(value: float | None, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:{width}.3f}"


def format_attribute_table(result: Mapping[str, Any]) -> str:
    """Readable per-kind table of :func:`attribute_scores` (n, mentioned, mention recall, side and severity accuracy
    beside their priors, with the counts behind them); ``-`` marks an undefined score. No trailing newline."""
    per_kind = result.get("per_kind") or {}
    overall = result.get("overall")
    header = (f"{'finding':<17}{'n':>5}{'recall':>8}{'side':>8}{'prior':>7}{'(n)':>6}"
              f"{'severity':>10}{'prior':>7}{'(n)':>6}{'spurious':>10}")  # fmt: skip
    lines = [header]
    rows = list(per_kind.items()) + ([("all (micro)", overall)] if overall else [])
    for name, row in rows:
        lines.append(
            f"{name:<17}{row['n']:>5}{_cell(row['mention_recall'], 8)}{_cell(row['side_accuracy'], 8)}"
            f"{_cell(row['side_prior'], 7)}{row['side_n']:>6}{_cell(row['severity_accuracy'], 10)}"
            f"{_cell(row['severity_prior'], 7)}{row['severity_n']:>6}{row['spurious']:>10}"
        )
    return "\n".join(lines)
