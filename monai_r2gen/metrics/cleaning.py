"""Report cleaning of the R2Gen family (R2Gen, R2GenCMN, R2GenGPT), shared by training data and scoring.

It lives with the metrics because every score is computed on texts cleaned this way (:mod:`monai_r2gen.metrics.
report_scores`); :mod:`monai_r2gen.data.reports` re-exports it for the training data.
"""

from __future__ import annotations

import re

from monai_r2gen.errors import ReportError

__all__ = ["REPORT_STYLES", "BANNER_LINE", "SEPARATOR_LINE", "clean_report", "squash_whitespace"]

REPORT_STYLES = ("iu_xray", "mimic_cxr", "none")


# Characters the R2Gen cleaner deletes from every sentence (after lower-casing). Its character class
# ``[.,?;*!%^&_+():-\[\]{}]`` contains the range ``:-\[`` (":" to "["), so besides the listed punctuation it also
# deletes ``< = > @`` (and A-Z, irrelevant after lower-casing) while the hyphen survives. Quotes, slashes and
# backslashes are deleted separately. Periods are handled on their own (see ``_STRAY_PERIOD``).
_DELETED_CHARS = re.compile(r"""[,?;*!%^&_+():<=>@\[\]{}"'/\\]""")
# A period that is not a decimal point (digits on both sides) is deleted inside a sentence.
_STRAY_PERIOD = re.compile(r"(?<!\d)\.|\.(?!\d)")
_REPEATED_PERIODS = re.compile(r"\.(?:\s*\.)+")
# "1. ", " 2. ": a list number preceded by start/whitespace and followed by whitespace.
_LIST_NUMBER = re.compile(r"(?<!\S)(\d{1,2})\.(?=\s)")
# Sentence end: a period followed by whitespace or the end of the text; the marker inserted for list numbers.
_SENTENCE_END = re.compile(r"\.(?=\s|$)|\n")
# MIMIC-CXR banner lines: "FINAL REPORT", "PRELIMINARY REPORT" on a line of their own.
BANNER_LINE = re.compile(r"^[ \t]*(?:FINAL|PRELIMINARY|ADDENDUM TO)?[ \t]*REPORT[ \t]*$", re.MULTILINE)
# Separator lines made of underscores / dashes / equal signs (MIMIC-CXR puts one under a wet read).
SEPARATOR_LINE = re.compile(r"^[ \t]*[_=\-]{10,}[ \t]*$", re.MULTILINE)
_WHITESPACE = re.compile(r"\s+")


def squash_whitespace(text: str) -> str:
    """Collapses runs of whitespace (line breaks included) into single spaces and strips the ends."""
    return _WHITESPACE.sub(" ", text).strip()


def _mark_list_numbers(text: str) -> str:
    """Replaces list numbering ("1. ...  2. ...") with a sentence boundary marker (a newline).

    A number counts as list numbering when it is ``1`` or continues the previous list number (``n + 1``), so a
    trailing "grade 3." is not mistaken for an item of a list that never started.
    """
    pieces: list[str] = []
    last = 0
    expected = 1
    for match in _LIST_NUMBER.finditer(text):
        number = int(match.group(1))
        if number not in (1, expected):
            continue
        pieces.append(text[last : match.start()])
        pieces.append("\n")
        last = match.end()
        expected = number + 1
    pieces.append(text[last:])
    return "".join(pieces)


def _clean_sentence(sentence: str) -> str:
    sentence = _DELETED_CHARS.sub("", sentence)
    sentence = _STRAY_PERIOD.sub("", sentence)
    return squash_whitespace(sentence)


def clean_report(text: str, style: str = "mimic_cxr") -> str:
    """Normalises a report the way the R2Gen family does before training and scoring.

    Rules (``iu_xray`` and ``mimic_cxr``): line breaks and runs of spaces collapse to one space; repeated periods
    collapse to one; list numbering ("1. ", " 2. ") becomes a sentence boundary; the text is lower-cased and split into
    sentences at a period followed by whitespace; inside each sentence the punctuation ``, ? ; * ! % ^ & _ + ( ) : < =
    > @ [ ] { } " ' / \\`` and stray periods are deleted (hyphens are kept); sentences are joined as ``"s1 . s2 ."``.
    ``mimic_cxr`` additionally drops the ``FINAL REPORT`` banner and separator lines; its de-identification blanks
    (``___``) disappear with the underscore rule. IU-Xray's ``XXXX`` blanks are kept as the word ``xxxx``, as in
    R2Gen.

    Departures from the R2Gen code, on purpose: empty sentences are dropped (R2Gen's emptiness test never fires and
    leaves ``" .  ."`` artefacts), and a decimal point between digits is kept (R2Gen turns "2.5 cm" into "25 cm").
    An empty or punctuation-only report gives ``""``.

    Args:
        text: the report (any section or the whole free text).
        style: ``"iu_xray"``, ``"mimic_cxr"`` or ``"none"`` (whitespace squashed, nothing else changed).

    Returns:
        The cleaned report.

    Raises:
        ReportError: unknown style or a text that is not a string.
    """
    if style not in REPORT_STYLES:
        raise ReportError(f"unknown report style {style!r}; expected one of {REPORT_STYLES}")
    if not isinstance(text, str):
        raise ReportError(f"a report must be a string, got {type(text).__name__}")
    if style == "none":
        return squash_whitespace(text)
    if style == "mimic_cxr":
        text = BANNER_LINE.sub(" ", text)
        text = SEPARATOR_LINE.sub(" ", text)
    text = squash_whitespace(text)
    text = _REPEATED_PERIODS.sub(".", text)
    text = _mark_list_numbers(text).lower()
    sentences = (_clean_sentence(s) for s in _SENTENCE_END.split(text))
    sentences = [s for s in sentences if s]
    return " . ".join(sentences) + " ." if sentences else ""
