"""Report text: cleaning, section extraction, prompt construction and tokenization.

Cleaning follows the conventions of the R2Gen family (R2Gen, R2GenCMN, R2GenGPT) so that scores stay comparable
with published numbers: lower case, list numbering removed, punctuation dropped, and sentences joined as
``"s1 . s2 ."``. Two deliberate departures from the reference implementation are documented in
:func:`clean_report`.

Section extraction reads raw MIMIC-CXR free-text reports (``FINAL REPORT`` banner, ``INDICATION:``,
``COMPARISON:``, ``FINDINGS:``, ``IMPRESSION:`` ...) and returns the findings and impression text.

:class:`TokenizeReportd` turns a report into the token sequence a decoder-only LLM is trained on::

    [BOS] prompt-before <image> x K prompt-after  report tokens  EOS
    labels: -100 ...................................  report ids   EOS

:class:`ReportFindingLabelsd` adds the report's 14 CheXpert labels (rule-based labeler) as the target of the
generator's optional finding head.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from monai_r2gen.errors import ReportError
from monai_r2gen.metrics.cleaning import BANNER_LINE as _BANNER_LINE
from monai_r2gen.metrics.cleaning import REPORT_STYLES, clean_report
from monai_r2gen.metrics.cleaning import SEPARATOR_LINE as _SEPARATOR_LINE
from monai_r2gen.metrics.cleaning import squash_whitespace as _squash

if TYPE_CHECKING:
    from monai_r2gen.metrics.chexpert import CheXpertLabeler

__all__ = [
    "DEFAULT_PROMPT",
    "IMAGE_PLACEHOLDER",
    "IMAGE_TOKEN",
    "IGNORE_INDEX",
    "REPORT_STYLES",
    "TARGETS",
    "clean_report",
    "extract_sections",
    "select_target",
    "expand_prompt",
    "image_token_id",
    "encode_prompt",
    "TokenizeReportd",
    "ReportFindingLabelsd",
]

logger = logging.getLogger(__name__)

DEFAULT_PROMPT = (
    "Human: <Img><ImageHere></Img> Generate a comprehensive and detailed diagnosis report for this chest xray image. "
    "\nAssistant:"
)
"""The R2GenGPT prompt; ``<ImageHere>`` is replaced by K image tokens."""

IMAGE_PLACEHOLDER = "<ImageHere>"
"""Placeholder for the visual prompts inside a prompt template."""

IMAGE_TOKEN = "<image>"
"""The tokenizer's special token; each occurrence receives one projected visual vector."""

IGNORE_INDEX = -100
"""Label value ignored by ``torch.nn.CrossEntropyLoss`` (prompt, image and padding positions)."""

TARGETS = ("findings", "impression", "findings+impression")

# ---------------------------------------------------------------------------------------------------------------
# sections
# ---------------------------------------------------------------------------------------------------------------

_FINDINGS = "findings"
_IMPRESSION = "impression"
_BOTH = "findings+impression"
_OTHER = "other"
_UNLABELED = "unlabeled"

# Headings that open a section we keep; every other heading only ends the current section.
_TARGET_HEADINGS = {
    "FINDINGS": _FINDINGS,
    "FINDING": _FINDINGS,
    "IMPRESSION": _IMPRESSION,
    "IMPRESSIONS": _IMPRESSION,
    "CONCLUSION": _IMPRESSION,
    "CONCLUSIONS": _IMPRESSION,
    "FINDINGS AND IMPRESSION": _BOTH,
    "FINDINGS AND IMPRESSIONS": _BOTH,
    "IMPRESSION AND FINDINGS": _BOTH,
    "FINDINGS/IMPRESSION": _BOTH,
    "IMPRESSION/FINDINGS": _BOTH,
    "FINDINGS & IMPRESSION": _BOTH,
}
_OTHER_HEADINGS = (
    "INDICATION", "INDICATIONS", "CLINICAL INDICATION", "HISTORY", "CLINICAL HISTORY", "CLINICAL INFORMATION",
    "REASON FOR EXAM", "REASON FOR EXAMINATION", "REASON FOR STUDY", "COMPARISON", "COMPARISONS", "TECHNIQUE",
    "EXAMINATION", "EXAM", "TYPE OF EXAMINATION", "PROCEDURE", "STUDY", "REFERENCE EXAM", "WET READ",
    "NOTIFICATION", "RECOMMENDATION", "RECOMMENDATIONS", "RECOMMENDATION(S)", "ADDENDUM",
    "PROVISIONAL FINDINGS IMPRESSION (PFI)",
)  # fmt: skip


def _heading_alternation(names: Sequence[str]) -> str:
    # longest first so that "FINDINGS AND IMPRESSION" wins over "FINDINGS" at the same position
    return "|".join(re.escape(n).replace(r"\ ", r"[ \t]+") for n in sorted(names, key=len, reverse=True))


_ALL_HEADINGS = {**_TARGET_HEADINGS, **dict.fromkeys(_OTHER_HEADINGS, _OTHER)}
# Upper-case known headings anywhere after whitespace (flattened one-line reports), title case only at a line start.
_KNOWN_UPPER = re.compile(rf"(?<!\S)(?P<name>{_heading_alternation(list(_ALL_HEADINGS))})[ \t]*:")
_KNOWN_TITLE = re.compile(
    rf"^[ \t]*(?P<name>{_heading_alternation([n.capitalize() for n in _ALL_HEADINGS])})[ \t]*:", re.MULTILINE
)
# A line starting with "WET READ" ("WET READ: ___ 10:20 AM", "WET READ VERSION #1 ___ 11:25 PM") is a heading.
_WET_READ_LINE = re.compile(r"^[ \t]*(?P<name>WET READ)\b.*$", re.MULTILINE)
# Any other upper-case heading at a line start ("CHEST PA AND LATERAL:") ends a section; at least 6 characters so
# that short abbreviations that start a findings line ("PICC:", "ETT:") do not.
_GENERIC_HEADING = re.compile(r"^[ \t]*(?P<name>[A-Z][A-Z0-9 ,/&()#\-]{4,}[A-Z0-9)])[ \t]*:", re.MULTILINE)


def _split_sections(text: str) -> list[tuple[str, str]]:
    """Splits a free-text report into ``(kind, body)`` pairs in document order.

    ``kind`` is ``findings``, ``impression``, ``findings+impression``, ``other`` (a section under another
    heading) or ``unlabeled`` (text before the first heading or after a banner). Bodies are whitespace-squashed.
    """
    # (start, end, kind): a boundary starts at `start`; its body starts at `end`.
    bounds: list[tuple[int, int, str]] = []
    for match in _KNOWN_UPPER.finditer(text):
        bounds.append((match.start("name"), match.end(), _ALL_HEADINGS[_squash(match.group("name"))]))
    for match in _KNOWN_TITLE.finditer(text):
        bounds.append((match.start("name"), match.end(), _ALL_HEADINGS[_squash(match.group("name")).upper()]))
    for pattern, kind in ((_WET_READ_LINE, _OTHER), (_BANNER_LINE, _UNLABELED), (_SEPARATOR_LINE, _UNLABELED)):
        bounds.extend((m.start(), m.end(), kind) for m in pattern.finditer(text))
    for match in _GENERIC_HEADING.finditer(text):
        bounds.append((match.start("name"), match.end(), _OTHER))
    bounds.sort(key=lambda b: (b[0], -b[1]))
    # drop boundaries that start inside an earlier one (a known heading also matched by the generic pattern)
    kept: list[tuple[int, int, str]] = []
    for bound in bounds:
        if kept and bound[0] < kept[-1][1]:
            continue
        kept.append(bound)
    sections: list[tuple[str, str]] = []
    head = _squash(text[: kept[0][0]] if kept else text)
    if head:
        sections.append((_UNLABELED, head))
    for i, (_, end, kind) in enumerate(kept):
        stop = kept[i + 1][0] if i + 1 < len(kept) else len(text)
        sections.append((kind, _squash(text[end:stop])))
    return sections


def extract_sections(text: str) -> dict[str, str]:
    """Returns the FINDINGS and IMPRESSION text of a free-text report.

    Recognised headings (upper case anywhere after whitespace, or capitalised at the start of a line): ``FINDINGS``
    / ``FINDING``; ``IMPRESSION(S)`` / ``CONCLUSION(S)``; ``FINDINGS AND IMPRESSION`` (and its variants) whose text
    is returned under both keys. A section ends at the next heading of any kind (``INDICATION:``, ``COMPARISON:``,
    ``TECHNIQUE:``, ``HISTORY:``, ``WET READ:``, any other upper-case heading at a line start), a ``FINAL REPORT``
    banner or a separator line. Repeated sections are joined with a space; whitespace is squashed.

    Args:
        text: the free-text report.

    Returns:
        ``{"findings": ..., "impression": ...}``; a missing section is ``""``.
    """
    found: dict[str, list[str]] = {_FINDINGS: [], _IMPRESSION: []}
    for kind, body in _split_sections(text):
        if not body:
            continue
        if kind in (_FINDINGS, _BOTH):
            found[_FINDINGS].append(body)
        if kind in (_IMPRESSION, _BOTH):
            found[_IMPRESSION].append(body)
    return {key: " ".join(parts) for key, parts in found.items()}


def select_target(text: str, target: str = "findings") -> str:
    """Selects the report part a model is trained to write.

    A text without any heading (R2Gen's ``annotation.json`` reports, which are already one section) is returned
    whole (whitespace squashed) for every target. When the report has headings but not the requested section, the
    result is ``""``: a dataset can then drop the study, as R2Gen did for MIMIC-CXR studies without findings.

    Args:
        text: the report.
        target: ``"findings"``, ``"impression"`` or ``"findings+impression"`` (both in document order, a combined
            "FINDINGS AND IMPRESSION" section only once).

    Returns:
        The selected text.

    Raises:
        ReportError: unknown target.
    """
    if target not in TARGETS:
        raise ReportError(f"unknown report target {target!r}; expected one of {TARGETS}")
    sections = _split_sections(text)
    if all(kind == _UNLABELED for kind, _ in sections):
        return " ".join(body for _, body in sections)
    wanted = {_FINDINGS: (_FINDINGS, _BOTH), _IMPRESSION: (_IMPRESSION, _BOTH), _BOTH: (_FINDINGS, _IMPRESSION, _BOTH)}
    return " ".join(body for kind, body in sections if kind in wanted[target] and body)


# ---------------------------------------------------------------------------------------------------------------
# prompt and tokenization
# ---------------------------------------------------------------------------------------------------------------


def _split_template(template: str, placeholder: str) -> tuple[str, str]:
    count = template.count(placeholder)
    if count != 1:
        raise ReportError(f"the prompt template must contain the image placeholder {placeholder!r} exactly once, "
                          f"found {count}: {template!r}")  # fmt: skip
    before, after = template.split(placeholder)
    return before, after


def _check_num_image_tokens(num_image_tokens: int) -> int:
    if isinstance(num_image_tokens, bool) or not isinstance(num_image_tokens, int) or num_image_tokens < 1:
        raise ReportError(f"num_image_tokens must be a positive integer, got {num_image_tokens!r}")
    return num_image_tokens


def expand_prompt(
    template: str, num_image_tokens: int, image_token: str = IMAGE_TOKEN, placeholder: str = IMAGE_PLACEHOLDER
) -> str:
    """Replaces the image placeholder of a prompt template with ``num_image_tokens`` image tokens.

    Args:
        template: the prompt template, e.g. :data:`DEFAULT_PROMPT`.
        num_image_tokens: K, the number of visual prompt vectors the projector outputs.
        image_token: the tokenizer's image token.
        placeholder: the placeholder in the template.

    Returns:
        The prompt string with ``image_token * K`` in place of the placeholder.

    Raises:
        ReportError: the placeholder is missing or repeated, or K is not a positive integer.
    """
    before, after = _split_template(template, placeholder)
    return before + image_token * _check_num_image_tokens(num_image_tokens) + after


def image_token_id(tokenizer: Any, image_token: str = IMAGE_TOKEN) -> int:
    """The id of ``image_token`` in ``tokenizer``.

    Raises:
        ReportError: the tokenizer does not know the token as a single token (call
            :func:`monai_r2gen.data.tokenizer.add_image_token` first).
    """
    token_id = tokenizer.convert_tokens_to_ids(image_token)
    unk_id = getattr(tokenizer, "unk_token_id", None)
    if token_id is None or (unk_id is not None and token_id == unk_id and image_token != tokenizer.unk_token):
        raise ReportError(f"the tokenizer has no {image_token!r} token; add it with add_image_token(tokenizer)")
    return int(token_id)


def _encode_text(tokenizer: Any, text: str, max_length: int | None = None) -> list[int]:
    if not text:
        return []
    if max_length is None:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if max_length <= 0:
        return []
    return list(tokenizer(text, add_special_tokens=False, truncation=True, max_length=max_length)["input_ids"])


def encode_prompt(
    tokenizer: Any,
    num_image_tokens: int,
    prompt_template: str = DEFAULT_PROMPT,
    image_token: str = IMAGE_TOKEN,
    placeholder: str = IMAGE_PLACEHOLDER,
    add_bos: bool = True,
) -> list[int]:
    """Token ids of the prompt: ``[BOS] ids(before) + [image id] * K + ids(after)``.

    The text before and after the placeholder is tokenized separately (no special tokens), so the image positions
    are exactly K whatever the tokenizer does around special tokens. BOS is prepended when ``add_bos`` and the
    tokenizer defines one. This is the one place prompts are built, for training (via :class:`TokenizeReportd`) and
    for generation.

    Raises:
        ReportError: bad template or K, a tokenizer without the image token, or a template whose text itself
            contains the image token.
    """
    before, after = _split_template(prompt_template, placeholder)
    k = _check_num_image_tokens(num_image_tokens)
    img_id = image_token_id(tokenizer, image_token)
    before_ids, after_ids = _encode_text(tokenizer, before), _encode_text(tokenizer, after)
    if img_id in before_ids or img_id in after_ids:
        raise ReportError(f"the prompt template contains {image_token!r} outside the placeholder: {prompt_template!r}")
    bos = getattr(tokenizer, "bos_token_id", None) if add_bos else None
    return ([int(bos)] if bos is not None else []) + before_ids + [img_id] * k + after_ids


class TokenizeReportd(MapTransform):
    """Builds the LLM input ids, attention mask and labels of one study from its report.

    Adds 1-D ``torch.long`` tensors to the dictionary:

    - ``input_ids``: ``[BOS] prompt(with K image tokens) report EOS``;
    - ``attention_mask``: ones, same length;
    - ``labels``: :data:`IGNORE_INDEX` on BOS, prompt and image positions, the report ids and EOS elsewhere;
    - ``prompt_ids``: the prompt alone (with BOS), for generation.

    The report is truncated so that the whole sequence fits in ``max_length``; EOS is always the last token, so the
    model learns to stop even on long reports (R2GenGPT loses EOS on truncation). When the report key is missing and
    ``allow_missing_keys`` is True, only ``prompt_ids`` is written (inference).

    Args:
        keys: the key holding the report string (exactly one key).
        tokenizer: a Hugging Face tokenizer that knows ``image_token`` and has an EOS token.
        num_image_tokens: K, the number of visual prompt vectors.
        prompt_template: template with :data:`IMAGE_PLACEHOLDER`.
        max_length: maximum total length (prompt + report + EOS).
        image_token: the tokenizer's image token.
        allow_missing_keys: do not fail when the report key is missing.

    Raises:
        ReportError: at construction: bad template or K, unknown image token, no EOS token, or a prompt that leaves no
            room for EOS; at call: a report that is not a string.
    """

    def __init__(
        self,
        keys: KeysCollection = "report",
        *,
        tokenizer: Any,
        num_image_tokens: int,
        prompt_template: str = DEFAULT_PROMPT,
        max_length: int = 128,
        image_token: str = IMAGE_TOKEN,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ReportError(f"TokenizeReportd takes exactly one report key, got {self.keys}")
        eos = getattr(tokenizer, "eos_token_id", None)
        if eos is None:
            raise ReportError("the tokenizer has no EOS token; generated reports could never end")
        self.tokenizer = tokenizer
        self.num_image_tokens = num_image_tokens
        self.prompt_template = prompt_template
        self.max_length = int(max_length)
        self.image_token = image_token
        self.eos_token_id = int(eos)
        self.prompt_ids = encode_prompt(tokenizer, num_image_tokens, prompt_template, image_token)
        if len(self.prompt_ids) + 1 > self.max_length:
            raise ReportError(f"max_length={self.max_length} leaves no room for the report: the prompt alone takes "
                              f"{len(self.prompt_ids)} tokens (K={num_image_tokens}) plus EOS")  # fmt: skip

    def tokenize(self, report: str) -> dict[str, torch.Tensor]:
        """Tokenizes one report; see the class docstring for the returned tensors."""
        if not isinstance(report, str):
            raise ReportError(f"a report must be a string, got {type(report).__name__}")
        budget = self.max_length - len(self.prompt_ids) - 1
        report_ids = _encode_text(self.tokenizer, report.strip(), max_length=budget)
        report_ids = report_ids[:budget] + [self.eos_token_id]
        ids = self.prompt_ids + report_ids
        labels = [IGNORE_INDEX] * len(self.prompt_ids) + report_ids
        return {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "attention_mask": torch.ones(len(ids), dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "prompt_ids": torch.tensor(self.prompt_ids, dtype=torch.long),
        }

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        found = False
        for key in self.key_iterator(d):
            d.update(self.tokenize(d[key]))
            found = True
        if not found:
            d["prompt_ids"] = torch.tensor(self.prompt_ids, dtype=torch.long)
        return d


class ReportFindingLabelsd(MapTransform):
    """Labels the report with the 14 CheXpert observations, the target of the generator's finding head.

    Runs the rule-based :class:`~monai_r2gen.metrics.chexpert.CheXpertLabeler` (the one the clinical-efficacy
    metrics use) on the report text and writes a ``float32`` tensor of shape ``(14,)`` in
    :data:`~monai_r2gen.metrics.chexpert.CHEXPERT_LABELS` order: 1 for a positive mention, 0 otherwise (negative or
    not mentioned); uncertain mentions count as ``uncertain``.

    Args:
        keys: the key holding the report string (exactly one key).
        label_key: where the labels are written.
        uncertain: ``"negative"`` or ``"positive"``: the value of uncertain mentions.
        labeler: the labeler (default: the shared instance of :mod:`monai_r2gen.metrics.clinical`).
        allow_missing_keys: do not fail when the report key is missing (nothing is written).

    Raises:
        ReportError: at construction: several keys or an unknown ``uncertain``; at call: a report that is not a
            string.
    """

    def __init__(
        self,
        keys: KeysCollection = "report",
        label_key: str = "finding_labels",
        uncertain: str = "negative",
        labeler: CheXpertLabeler | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ReportError(f"ReportFindingLabelsd takes exactly one report key, got {self.keys}")
        if uncertain not in ("negative", "positive"):
            raise ReportError(f"uncertain must be 'negative' or 'positive', got {uncertain!r}")
        if labeler is None:
            from monai_r2gen.metrics.clinical import _labeler

            labeler = _labeler()
        self.label_key = label_key
        self.uncertain = uncertain
        self.labeler = labeler

    def labels(self, report: str) -> torch.Tensor:
        """The ``(14,)`` float32 labels of one report."""
        from monai_r2gen.metrics.clinical import binarize_labels

        if not isinstance(report, str):
            raise ReportError(f"a report must be a string, got {type(report).__name__}")
        positive, _ = binarize_labels([self.labeler.label(report)], uncertain=self.uncertain)
        return torch.as_tensor(positive[0], dtype=torch.float32)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.label_key] = self.labels(d[key])
        return d
