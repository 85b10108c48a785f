"""Loading a causal language model and its tokenizer from a local folder or a config, and choosing its LoRA targets
(per family, ``all-linear`` or a checked list).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from monai_r2gen.errors import ModelConfigError

__all__ = [
    "ALL_LINEAR",
    "default_lora_targets",
    "linear_module_names",
    "load_causal_lm",
    "load_tokenizer",
    "resolve_lora_targets",
]

logger = logging.getLogger(__name__)


# LoRA targets per LLM family (the attention query / value projections, as in R2GenGPT and the LoRA paper).
_LLM_LORA_TARGETS: dict[str, tuple[str, ...]] = {
    "llama": ("q_proj", "v_proj"),
    "mistral": ("q_proj", "v_proj"),
    "mixtral": ("q_proj", "v_proj"),
    "qwen2": ("q_proj", "v_proj"),
    "qwen3": ("q_proj", "v_proj"),
    "gemma": ("q_proj", "v_proj"),
    "gemma2": ("q_proj", "v_proj"),
    "phi": ("q_proj", "v_proj"),
    "phi3": ("qkv_proj",),
    "gpt2": ("c_attn",),
    "gpt_neox": ("query_key_value",),
    "falcon": ("query_key_value",),
    "mpt": ("Wqkv",),
}
# Fallback when the family is unknown (e.g. remote code): the first set whose names all exist.
_LORA_FALLBACK = (("q_proj", "v_proj"), ("c_attn",), ("qkv_proj",), ("query_key_value",), ("Wqkv",), ("query", "value"))


def _is_peft(module: nn.Module) -> bool:
    return hasattr(module, "peft_config") and hasattr(module, "get_base_model")


def load_causal_lm(
    path: str | os.PathLike | None = None,
    options: dict[str, Any] | None = None,
    tokenizer: Any = None,
    trust_remote_code: bool = False,
    dtype: torch.dtype | None = None,
) -> nn.Module:
    """Load an ``AutoModelForCausalLM`` from a local directory, or build one (random init) from a config.

    Args:
        path: local model directory (``local_files_only=True``).
        options: ``{"model_type": ..., **config kwargs}`` when ``path`` is None.
        tokenizer: when building from a config, gives the vocabulary size and the BOS / EOS / pad ids.
        trust_remote_code: allow code shipped in the directory.
        dtype: parameter dtype.

    Raises:
        ModelConfigError: missing directory, unknown model type or unloadable model.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    if path is not None:
        if not Path(path).is_dir():
            raise ModelConfigError(f"{path}: LLM directory not found")
        try:
            return AutoModelForCausalLM.from_pretrained(
                os.fspath(path), local_files_only=True, trust_remote_code=trust_remote_code, dtype=dtype
            )
        except (OSError, ValueError, KeyError) as exc:
            raise ModelConfigError(f"{path}: cannot load a causal LM ({exc})") from exc
    kwargs = dict(options or {})
    model_type = kwargs.pop("model_type", None)
    if not model_type:
        raise ModelConfigError("an LLM built from a config needs a 'model_type' (e.g. 'llama', 'gpt2')")
    if tokenizer is not None:
        kwargs.setdefault("vocab_size", len(tokenizer))
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            kwargs.setdefault(name, getattr(tokenizer, name, None))
    try:
        hf_config = AutoConfig.for_model(model_type, **kwargs)
        model = AutoModelForCausalLM.from_config(hf_config, trust_remote_code=trust_remote_code)
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelConfigError(f"cannot build a {model_type!r} causal LM: {exc}") from exc
    return model.to(dtype) if dtype is not None else model


# ``target_modules`` values that mean "the family's defaults" (a YAML ``null`` or a ``None`` given on a command line
# may reach here as a string); "all-linear" is peft's: every Linear / Conv1D layer except the output head.
_AUTO_TARGETS = ("auto", "default", "none", "null")
ALL_LINEAR = "all-linear"


def _model_type(model: nn.Module) -> str:
    base = model.get_base_model() if _is_peft(model) else model
    return str(getattr(getattr(base, "config", None), "model_type", "") or type(base).__name__)


def linear_module_names(model: nn.Module) -> list[str]:
    """The distinct leaf names of a model's ``nn.Linear`` and transformers ``Conv1D`` layers (LoRA target names).

    Args:
        model: a causal LM (or any module).

    Returns:
        sorted names, e.g. ``["c_attn", "c_fc", "c_proj", "lm_head"]`` for GPT-2.
    """
    from transformers.pytorch_utils import Conv1D

    names = set()
    for name, module in model.named_modules():
        parts = name.split(".")
        if not isinstance(module, (nn.Linear, Conv1D)) or any(p.startswith("lora_") for p in parts):
            continue
        while parts and parts[-1] == "base_layer":  # the layer a LoRA wrapper holds keeps its own name
            parts.pop()
        if parts:
            names.add(parts[-1])
    return sorted(names)


def default_lora_targets(model: nn.Module) -> list[str]:
    """LoRA target module names for a causal LM: its family's attention projections (query / value).

    Raises:
        ModelConfigError: no known projection names in the model (give the targets explicitly); the message names
            the family and the Linear / Conv1D layer names it has.
    """
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    model_type = _model_type(model)
    candidates = ([_LLM_LORA_TARGETS[model_type]] if model_type in _LLM_LORA_TARGETS else []) + list(_LORA_FALLBACK)
    for candidate in candidates:
        if all(c in names for c in candidate):
            return list(candidate)
    raise ModelConfigError(f"no default LoRA targets for a {model_type!r} model; set the LoRA target_modules to "
                           f"some of its layers {linear_module_names(model)} or to {ALL_LINEAR!r}")  # fmt: skip


def resolve_lora_targets(model: nn.Module, targets: Sequence[str] | str | None) -> list[str] | str:
    """The LoRA ``target_modules`` to give peft for ``model``, checked against the modules it has.

    Args:
        model: the causal LM.
        targets: None, "auto" (or "default", "none", "null"): the family's defaults (:func:`default_lora_targets`);
            "all-linear": every Linear / Conv1D layer except the output head (peft's shorthand); another string: a
            regular expression that must match whole module names (peft's rule); a list: module names, matched as
            peft does (a full name or its last parts).

    Returns:
        the targets, as peft takes them.

    Raises:
        ModelConfigError: the targets match no module of the model; the message names the family (``model_type``)
            and the Linear / Conv1D layer names it has. A list of which only some names match is used, with a
            warning that names the others.
    """
    if targets is None or (isinstance(targets, str) and targets.strip().lower() in _AUTO_TARGETS):
        return default_lora_targets(model)
    model_type = _model_type(model)
    modules = [name for name, _ in model.named_modules() if name]

    def _refuse(what: str) -> ModelConfigError:
        return ModelConfigError(
            f"LoRA target_modules {what} match no module of the {model_type!r} LLM; its Linear / Conv1D layers are "
            f"named {linear_module_names(model)}: choose some of them, or null / 'auto' for the family's defaults, "
            f"or {ALL_LINEAR!r}"
        )

    if isinstance(targets, str):
        if targets.strip().lower() == ALL_LINEAR:
            if not linear_module_names(model):
                raise _refuse(repr(targets))
            return ALL_LINEAR
        try:
            pattern = re.compile(targets)
        except re.error as exc:
            raise ModelConfigError(f"LoRA target_modules {targets!r} is not a regular expression ({exc})") from exc
        if not any(pattern.fullmatch(name) for name in modules):
            raise _refuse(repr(targets))
        return targets
    targets = list(targets)
    if not targets or not all(isinstance(t, str) and t for t in targets):
        raise ModelConfigError(f"LoRA target_modules must be module names, got {targets!r}")
    unmatched = [t for t in targets if not any(name == t or name.endswith("." + t) for name in modules)]
    if len(unmatched) == len(targets):
        raise _refuse(str(targets))
    if unmatched:
        logger.warning("LoRA target_modules %s match no module of the %r LLM (its Linear / Conv1D layers: %s); "
                       "LoRA goes on the others", unmatched, model_type, linear_module_names(model))  # fmt: skip
    return targets


def _resize_embeddings(llm: nn.Module, size: int) -> None:
    """Grow the token embeddings (and an untied LM head) to ``size`` rows; new rows = the mean of the old ones.

    Deterministic, so a checkpoint that stores only deltas reloads to the same model.
    """
    old = llm.get_input_embeddings().weight.shape[0]
    if size <= old:
        return
    llm.resize_token_embeddings(size, mean_resizing=False)
    with torch.no_grad():
        emb = llm.get_input_embeddings().weight
        emb[old:] = emb[:old].mean(dim=0, keepdim=True)
        head = llm.get_output_embeddings()
        if head is not None and head.weight.data_ptr() != emb.data_ptr():
            head.weight[old:] = head.weight[:old].mean(dim=0, keepdim=True)
            if getattr(head, "bias", None) is not None:
                head.bias[old:] = head.bias[:old].mean()
    logger.info("resized the LLM token embeddings from %d to %d", old, size)


def load_tokenizer(path: str | os.PathLike, trust_remote_code: bool = False) -> Any:
    """``AutoTokenizer.from_pretrained(path, local_files_only=True)`` with a typed error."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(
            os.fspath(path), local_files_only=True, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError, KeyError) as exc:
        raise ModelConfigError(f"{path}: cannot load a tokenizer ({exc})") from exc
