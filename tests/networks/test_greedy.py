"""Greedy decoding with finished reports leaving the batch: the same tokens as Hugging Face's ``generate``."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from monai_r2gen.networks.greedy import greedy_decode, supports_lean_greedy


def _llama() -> torch.nn.Module:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, eos_token_id=None)  # fmt: skip
    return LlamaForCausalLM(config).eval()


def _gpt2() -> torch.nn.Module:
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=4, bos_token_id=None,
                                      eos_token_id=None)).eval()  # fmt: skip


def _prompts(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Left-padded prompt embeddings, and EOS tokens that some rows write after their first token (found by a first
    run, so that a minimum length of one leaves the runs alike until the EOS)."""
    torch.manual_seed(0)
    ids = torch.randint(3, 50, (6, 7))
    mask = torch.ones(6, 7, dtype=torch.long)
    mask[1, :3] = 0
    mask[4, :5] = 0
    embeds = model.get_input_embeddings()(ids).detach()
    free = model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=20, do_sample=False,
                          eos_token_id=None, pad_token_id=0, suppress_tokens=[7])  # fmt: skip
    later = [int(t) for t in free[:, 1:-1].flatten() if t not in free[:, 0]]
    return embeds, mask, sorted(set(later))[:2]


@pytest.mark.parametrize("build", [_llama, _gpt2], ids=["llama", "gpt2"])
@pytest.mark.parametrize("droppable", [True, False], ids=["drop-rows", "keep-rows"])
def test_greedy_decode_equals_generate(build, droppable, monkeypatch) -> None:
    model = build()
    embeds, mask, eos = _prompts(model)
    settings = {"max_new_tokens": 20, "min_new_tokens": 1, "eos_token_id": eos, "pad_token_id": 0,
                "suppress_tokens": [7]}  # fmt: skip
    reference = model.generate(inputs_embeds=embeds, attention_mask=mask, do_sample=False, num_beams=1, **settings)
    ended = torch.isin(reference[:, :-1], torch.tensor(eos)).any(dim=1)
    assert ended.any()  # some reports end early
    if not droppable:  # a cache that cannot drop rows: finished rows stay, their tokens are padding
        owner = next(c for c in DynamicCache.__mro__ if "batch_select_indices" in vars(c))
        monkeypatch.delattr(owner, "batch_select_indices")
    ours = greedy_decode(model, embeds, mask, **settings)
    assert torch.equal(ours, reference)
    assert not (ours == 7).any()


def test_greedy_decode_stops_when_every_report_ended() -> None:
    model = _llama()
    embeds, mask, _ = _prompts(model)
    first = greedy_decode(model, embeds, mask, max_new_tokens=1, eos_token_id=2)[:, 0]
    # every report's first token is an EOS: one step, no padding
    out = greedy_decode(model, embeds, mask, max_new_tokens=10, eos_token_id=first.unique().tolist())
    assert out.shape == (6, 1)
    assert torch.equal(out[:, 0], first)


def test_supports_lean_greedy() -> None:
    base = {"max_new_tokens": 8, "eos_token_id": 2, "pad_token_id": 0}
    assert supports_lean_greedy({**base, "num_beams": 1, "do_sample": False, "repetition_penalty": 1.0,
                                 "no_repeat_ngram_size": 0, "min_new_tokens": 1, "suppress_tokens": [5]})  # fmt: skip
    assert not supports_lean_greedy({**base, "num_beams": 3})
    assert not supports_lean_greedy({**base, "do_sample": True})
    assert not supports_lean_greedy({**base, "repetition_penalty": 2.0})
    assert not supports_lean_greedy({**base, "no_repeat_ngram_size": 3})
    assert not supports_lean_greedy({**base, "top_k": 5})  # a setting it does not implement
    assert not supports_lean_greedy({"max_new_tokens": 8})  # no EOS: nothing ends early
