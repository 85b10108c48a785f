"""Greedy decoding that drops finished reports from the batch.

Hugging Face's ``generate`` runs every sequence of a batch until the longest one ends: a report that ended at its
EOS keeps being extended with padding through the whole model. :func:`greedy_decode` writes the same tokens (argmax
of the same logits, the same suppressed tokens and minimum length) but removes each finished report from the batch
and from the KV cache, so that the model runs no more positions for it. The batch still takes as many steps as its
longest report (docs/performance.md: 1.16x on a trained model's test reports at batch 32 on 2 CPU cores).

It covers plain greedy search only (:func:`supports_lean_greedy` says whether a set of ``generate`` settings is
one): beams, sampling, repetition penalties or other logits processors go to Hugging Face's ``generate``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["greedy_decode", "supports_lean_greedy"]

#: ``generate`` settings greedy_decode implements (others must be absent or at their no-op value)
_HANDLED = {"max_new_tokens", "min_new_tokens", "eos_token_id", "pad_token_id", "bos_token_id", "suppress_tokens"}
_NO_OP = {"num_beams": 1, "do_sample": False, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0}


def supports_lean_greedy(settings: Mapping[str, Any]) -> bool:
    """Whether ``generate`` ``settings`` ask for plain greedy search with an EOS (what :func:`greedy_decode` does)."""
    for key, value in settings.items():
        if key in _NO_OP:
            if value is not None and value != _NO_OP[key]:
                return False
        elif key not in _HANDLED:
            return False
    return settings.get("eos_token_id") is not None and settings.get("max_new_tokens") is not None


def _cache_keyword(llm: nn.Module) -> str:
    """The name the LLM's forward gives its KV cache (``cache`` from transformers 5.24, ``past_key_values`` before)."""
    model = llm.get_base_model() if hasattr(llm, "get_base_model") else llm
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@torch.no_grad()
def greedy_decode(
    llm: nn.Module,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    eos_token_id: int | list[int],
    pad_token_id: int | None = None,
    min_new_tokens: int = 0,
    suppress_tokens: list[int] | None = None,
    **_: Any,
) -> torch.Tensor:
    """Greedy continuation of left-padded prompt embeddings, finished reports leaving the batch.

    Positions follow Hugging Face's ``generate`` for left padding (the attention mask's cumulative sum).

    Args:
        llm: a Hugging Face causal LM (or its peft wrapper) whose cache supports ``batch_select_indices``.
        inputs_embeds: ``(B, L, H)`` prompt embeddings, left-padded.
        attention_mask: ``(B, L)``.
        max_new_tokens: most tokens per report.
        eos_token_id: end-of-sequence token(s); a report stops at the first one (which it keeps).
        pad_token_id: what fills a report after its EOS (default: the first EOS).
        min_new_tokens: EOS is suppressed before this many tokens.
        suppress_tokens: tokens never generated.

    Returns:
        ``(B, T)`` new tokens, ``T <= max_new_tokens`` (the longest report), padded after each report's EOS.
    """
    eos = torch.tensor([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id))
    pad = int(eos[0]) if pad_token_id is None else int(pad_token_id)
    batch, device = inputs_embeds.shape[0], inputs_embeds.device
    eos = eos.to(device)
    cache_key = _cache_keyword(llm)
    embedding = llm.get_input_embeddings()
    mask = attention_mask.to(device=device, dtype=torch.long)
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    out = llm(inputs_embeds=inputs_embeds, attention_mask=mask, position_ids=positions, use_cache=True)
    cache = out[cache_key] if cache_key in out else out["past_key_values"]
    logits = out.logits[:, -1].float()
    last = positions[:, -1:]
    tokens = torch.full((batch, max_new_tokens), pad, dtype=torch.long, device=device)
    alive = torch.arange(batch, device=device)  # batch rows still in the model, in cache order
    done = torch.zeros(batch, dtype=torch.bool, device=device)  # rows that ended but stay (a cache that cannot drop)
    droppable = hasattr(cache, "batch_select_indices")
    length = 0
    for step in range(max_new_tokens):
        if suppress_tokens:
            logits[:, suppress_tokens] = -float("inf")
        if step < min_new_tokens:
            logits[:, eos] = -float("inf")
        chosen = logits.argmax(dim=-1).masked_fill(done, pad)
        tokens[alive, step] = chosen
        length = step + 1
        going = ~(torch.isin(chosen, eos) | done)
        if step + 1 == max_new_tokens or not bool(going.any()):
            break
        if not bool(going.all()):
            if droppable:
                keep = going.nonzero().squeeze(1)
                cache.batch_select_indices(keep)
                alive, chosen, mask, last, done = alive[keep], chosen[keep], mask[keep], last[keep], done[keep]
            else:
                done = ~going
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        last = last + 1
        out = llm(inputs_embeds=embedding(chosen)[:, None], attention_mask=mask, position_ids=last,
                  use_cache=True, **{cache_key: cache})  # fmt: skip
        cache = out[cache_key] if cache_key in out else out["past_key_values"]
        logits = out.logits[:, -1].float()
    return tokens[:, :length]
