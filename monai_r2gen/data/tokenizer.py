"""Report tokenizers: a small byte-level BPE trained on report text, and image-token set-up for any HF tokenizer.

The trained tokenizer is what the embedded tiny models use; real LLM tokenizers (Llama, GPT-2, ...) go through
:func:`add_image_token` only. Facts this module relies on (transformers 5.x):

- ``PreTrainedTokenizerFast(tokenizer_object=...)`` wraps a raw ``tokenizers.Tokenizer`` but adds no BOS/EOS
  unless the raw tokenizer has a post-processor, so one that prepends BOS is installed here;
- byte-level BPE needs the ``ByteLevel`` decoder, otherwise ``decode`` returns ``Ġ``-marked text;
- GPT-2 has BOS = EOS = ``<|endoftext|>``, adds no BOS when encoding, and has no pad token; Llama adds BOS and has
  no pad token. Nothing here assumes either.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import Any

from monai.utils import optional_import

from monai_r2gen.data.reports import DEFAULT_PROMPT, IMAGE_PLACEHOLDER, IMAGE_TOKEN, image_token_id
from monai_r2gen.errors import ModelConfigError, ReportError

tokenizers, _ = optional_import("tokenizers")
transformers, _ = optional_import("transformers")

__all__ = ["SPECIAL_TOKENS", "train_report_tokenizer", "add_image_token"]

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}

_BYTE_ALPHABET_SIZE = 256


def train_report_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 1000,
    min_frequency: int = 1,
    save_dir: str | os.PathLike | None = None,
    prompt_template: str | None = DEFAULT_PROMPT,
) -> Any:
    """Trains a byte-level BPE tokenizer on report texts.

    Ids: ``<pad>`` 0, ``<s>`` 1, ``</s>`` 2, ``<unk>`` 3, ``<image>`` 4, then the 256 byte symbols and the merges.
    Encoding prepends BOS (``add_special_tokens=True``); EOS is appended by :class:`~monai_r2gen.data.reports.
    TokenizeReportd`, not by the tokenizer. Any text round-trips: ``decode(encode(x), skip_special_tokens=True) == x``.

    Args:
        texts: report strings (typically the cleaned training reports).
        vocab_size: target vocabulary size, at least 256 + 5.
        min_frequency: minimum pair frequency for a merge.
        save_dir: if given, the tokenizer is saved there with ``save_pretrained`` (loadable with
            ``AutoTokenizer.from_pretrained(save_dir, local_files_only=True)``).
        prompt_template: the prompt the tokenizer will serve; its text (around the image placeholder) is counted once
            per report, as often as it occurs in training sequences, so that BPE merges cover it too and the prompt
            takes few positions. ``None`` trains on the reports alone.

    Returns:
        A ``transformers.PreTrainedTokenizerFast`` with ``padding_side="right"``.

    Raises:
        ReportError: no non-empty text.
        ModelConfigError: ``vocab_size`` too small to hold the byte alphabet and the special tokens.
    """
    specials = [SPECIAL_TOKENS[k] for k in ("pad_token", "bos_token", "eos_token", "unk_token")] + [IMAGE_TOKEN]
    minimum = _BYTE_ALPHABET_SIZE + len(specials)
    if vocab_size < minimum:
        raise ModelConfigError(f"vocab_size={vocab_size} is too small: byte-level BPE needs at least {minimum}")
    corpus = [t for t in texts if isinstance(t, str) and t.strip()]
    if not corpus:
        raise ReportError("cannot train a tokenizer without any non-empty report text")

    raw = tokenizers.Tokenizer(tokenizers.models.BPE())
    raw.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    prompt_text = prompt_template.replace(IMAGE_PLACEHOLDER, " ") if prompt_template else ""
    training = corpus + [prompt_text] * len(corpus) if prompt_text.strip() else corpus
    raw.train_from_iterator(training, trainer=trainer, length=len(training))
    bos = SPECIAL_TOKENS["bos_token"]
    raw.post_processor = tokenizers.processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B:1", special_tokens=[(bos, raw.token_to_id(bos))]
    )
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=raw, padding_side="right", clean_up_tokenization_spaces=False, **SPECIAL_TOKENS
    )
    add_image_token(tokenizer)
    logger.info("trained a byte-level BPE tokenizer: %d tokens from %d texts", len(tokenizer), len(corpus))
    if save_dir is not None:
        tokenizer.save_pretrained(os.fspath(save_dir))
        logger.info("saved the tokenizer to %s", os.fspath(save_dir))
    return tokenizer


def add_image_token(tokenizer: Any, image_token: str = IMAGE_TOKEN) -> int:
    """Makes sure ``tokenizer`` has ``image_token`` as a special token, an EOS token and a pad token.

    The image token is added as an extra special token when missing (never split, skipped by
    ``decode(..., skip_special_tokens=True)``). A missing pad token becomes the EOS token (GPT-2, Llama); a missing
    EOS token becomes ``</s>``. Tokens added here grow ``len(tokenizer)``: resize the LLM's embeddings to match.

    Args:
        tokenizer: a Hugging Face tokenizer (modified in place).
        image_token: the image token.

    Returns:
        The id of the image token.
    """
    added = 0
    if image_token not in tokenizer.all_special_tokens:
        # the second positional argument is `replace_additional_special_tokens` (4.x) / `replace_extra_special_tokens`
        # (5.x): keep the tokenizer's own extra special tokens
        added += tokenizer.add_special_tokens({"additional_special_tokens": [image_token]}, False)
    if tokenizer.eos_token is None:
        added += tokenizer.add_special_tokens({"eos_token": SPECIAL_TOKENS["eos_token"]})
        logger.warning("the tokenizer had no EOS token; added %r", SPECIAL_TOKENS["eos_token"])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
        logger.info("the tokenizer had no pad token; using EOS %r for padding", tokenizer.eos_token)
    if added:
        logger.info("added %d token(s) to the tokenizer (now %d): resize the model embeddings", added, len(tokenizer))
    return image_token_id(tokenizer, image_token)
