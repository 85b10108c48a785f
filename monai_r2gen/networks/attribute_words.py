"""An extra language-model loss on the words that carry a finding's attributes (its side and size).

In a report the words "right", "left", "moderately" or "large" are a handful of tokens among a hundred; the
language-model loss averages over all of them, so a model can write fluent reports long before it learns to read
the side and size of a finding from its prompts (greedy decoding then writes the most frequent size whatever the
prompt says). :func:`attribute_word_loss` is the cross-entropy of those tokens only, added to the language-model
loss with ``GeneratorConfig.attribute_word_weight``: the tokens still count once in the ordinary loss, and this term
gives them the weight of a whole report.

The words are the values of :data:`~monai_r2gen.data.finding_attributes.ATTRIBUTE_FIELDS` (sides, sizes, lobes ...)
with their adverbs ("mildly") and capitalised forms; a form counts where the tokenizer gives it one token (with its
leading space, or at the start of a report), so the loss never weighs a word piece that begins other words too.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from monai_r2gen.data.finding_attributes import ATTRIBUTE_FIELDS
from monai_r2gen.data.reports import IGNORE_INDEX

__all__ = ["ATTRIBUTE_WORDS", "attribute_word_ids", "attribute_word_loss"]

_NOT_WORDS = {"no", "yes", "none"}  # values that stand for a finding's absence or a device's presence

#: the words whose tokens :func:`attribute_word_loss` weighs
ATTRIBUTE_WORDS: tuple[str, ...] = tuple(
    sorted(
        {
            word
            for fields in ATTRIBUTE_FIELDS.values()
            for values in fields.values()
            for value in values
            for word in value.split()
            if word not in _NOT_WORDS and word != "lobe" and word.isalpha()  # "lobe" names no attribute
        }
        | {"mildly", "moderately", "severely", "minimally"}
    )
)


def attribute_word_ids(tokenizer: Any, words: tuple[str, ...] = ATTRIBUTE_WORDS) -> list[int]:
    """The token ids of ``words`` (lower case and capitalised, with and without a leading space) that the tokenizer
    writes as a single token."""
    ids: set[int] = set()
    for word in words:
        for form in (word, word.capitalize()):
            for text in (" " + form, form):
                pieces = tokenizer(text, add_special_tokens=False)["input_ids"]
                if len(pieces) == 1:
                    ids.add(int(pieces[0]))
    return sorted(ids)


def attribute_word_loss(logits: torch.Tensor, labels: torch.Tensor, word_ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the positions whose target is one of ``word_ids`` (0 when none).

    Args:
        logits: ``(B, T, V)`` language-model logits.
        labels: ``(B, T)`` targets (:data:`~monai_r2gen.data.reports.IGNORE_INDEX` where not scored), unshifted as
            Hugging Face's causal LMs take them.
        word_ids: ``(W,)`` long.
    """
    targets = labels[:, 1:].to(logits.device)
    chosen = torch.isin(targets, word_ids.to(targets.device))
    targets = torch.where(chosen, targets, torch.full_like(targets, IGNORE_INDEX))
    total = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX,
                            reduction="sum")  # fmt: skip
    return total / chosen.sum().clamp(min=1)
