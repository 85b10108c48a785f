"""Adapters for learned report metrics whose weights the user already has on disk: CheXbert and RadGraph.

Nothing here downloads anything. Each scorer takes local paths; when no path is given it logs why it is skipped and
returns ``None``; when a path is given but unusable it raises :class:`~monai_r2gen.errors.MetricError` naming the
path and what is missing.

* **CheXbert** (Smit et al., 2020): the labeler checkpoint ``chexbert.pth`` of stanfordmlgroup/CheXbert (a BERT
  encoder with 13 four-class heads and one two-class No Finding head) plus a local BERT tokenizer folder
  (``bert-base-uncased``: ``vocab.txt`` and tokenizer config). The encoder's shape is read from the checkpoint, so only
  the transformers package is needed. Its labels feed :func:`~monai_r2gen.metrics.clinical.ce_scores`, giving the
  "CheXbert CE" scores of recent papers.
* **RadGraph F1** (Delbrouck et al., 2022): needs the optional ``radgraph`` package (``pip install radgraph``) and its
  model folder (``<model_dir>/<model_type>/`` with ``config.json``, ``vocabulary/`` and ``weights.th``, the layout
  ``radgraph`` extracts into its ``model_cache_dir``) plus the BERT it names in a local Hugging Face cache
  (``tokenizer_cache_dir``). The Hugging Face hub is switched to offline mode while RadGraph loads and runs.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from monai.utils import optional_import
from torch import nn

from monai_r2gen.errors import MetricError
from monai_r2gen.metrics.chexpert import CHEXPERT_LABELS, NEGATIVE, POSITIVE, UNCERTAIN
from monai_r2gen.metrics.clinical import ce_score_keys, ce_scores

__all__ = ["CHEXBERT_CONDITIONS", "CheXbertLabeler", "chexbert_scores", "radgraph_scores", "RADGRAPH_KEYS"]

logger = logging.getLogger(__name__)

#: Head order of the CheXbert checkpoint (13 four-class heads, then No Finding with two classes).
CHEXBERT_CONDITIONS: tuple[str, ...] = (*CHEXPERT_LABELS[1:], CHEXPERT_LABELS[0])
# CheXbert classes: 0 blank, 1 positive, 2 negative, 3 uncertain.
_CHEXBERT_CLASSES = (None, POSITIVE, NEGATIVE, UNCERTAIN)
RADGRAPH_KEYS: tuple[str, ...] = ("RadGraph-simple", "RadGraph-partial", "RadGraph-complete")


class _CheXbertNet(nn.Module):
    """BERT encoder + one linear head per observation on the [CLS] state (CheXbert's architecture)."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        from transformers import BertModel

        self.bert = BertModel(config)
        hidden = config.hidden_size
        heads = [nn.Linear(hidden, 4) for _ in range(len(CHEXBERT_CONDITIONS) - 1)] + [nn.Linear(hidden, 2)]
        self.linear_heads = nn.ModuleList(heads)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[torch.Tensor]:
        cls = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, 0]
        return [head(cls) for head in self.linear_heads]


def _chexbert_config(state: dict[str, torch.Tensor], num_attention_heads: int | None) -> Any:
    from transformers import BertConfig

    try:
        vocab, hidden = state["bert.embeddings.word_embeddings.weight"].shape
        max_pos = state["bert.embeddings.position_embeddings.weight"].shape[0]
        type_vocab = state["bert.embeddings.token_type_embeddings.weight"].shape[0]
        intermediate = state["bert.encoder.layer.0.intermediate.dense.weight"].shape[0]
    except KeyError as exc:
        raise MetricError(f"not a CheXbert state dict: missing {exc.args[0]!r}") from None
    layers = 1 + max(int(k.split(".")[3]) for k in state if k.startswith("bert.encoder.layer."))
    if num_attention_heads is None:
        if hidden % 64:
            raise MetricError(f"cannot infer the number of attention heads for hidden size {hidden}; pass it")
        num_attention_heads = hidden // 64
    return BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=num_attention_heads,
        intermediate_size=intermediate,
        max_position_embeddings=max_pos,
        type_vocab_size=type_vocab,
    )


class CheXbertLabeler:
    """CheXbert report labeler loaded from a local checkpoint; same output format as ``CheXpertLabeler``.

    Args:
        checkpoint: path of CheXbert's ``chexbert.pth`` (a dict with ``model_state_dict``; a ``module.`` prefix from
            ``DataParallel`` is removed) or of a bare state dict.
        tokenizer: local folder of the BERT tokenizer (``bert-base-uncased``), or its ``vocab.txt``.
        device: torch device for inference.
        batch_size: reports per forward pass.
        num_attention_heads: attention heads of the encoder; default hidden size / 64 (12 for CheXbert).

    Raises:
        MetricError: a path is missing or the checkpoint does not fit the CheXbert architecture.
    """

    version = "chexbert"

    def __init__(
        self,
        checkpoint: str | os.PathLike,
        tokenizer: str | os.PathLike,
        device: str | torch.device = "cpu",
        batch_size: int = 16,
        num_attention_heads: int | None = None,
    ) -> None:
        checkpoint, tokenizer = os.fspath(checkpoint), os.fspath(tokenizer)
        if not os.path.isfile(checkpoint):
            raise MetricError(f"CheXbert checkpoint {checkpoint!r} does not exist or is not a file")
        if not os.path.exists(tokenizer):
            raise MetricError(f"CheXbert tokenizer path {tokenizer!r} does not exist")
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.tokenizer = self._load_tokenizer(tokenizer)
        try:
            raw = torch.load(checkpoint, map_location="cpu", weights_only=True)
        except Exception as exc:  # any unpickling / format error
            raise MetricError(f"CheXbert checkpoint {checkpoint!r} could not be loaded: {exc}") from exc
        state = raw.get("model_state_dict", raw) if isinstance(raw, dict) else None
        if not isinstance(state, dict):
            raise MetricError(f"CheXbert checkpoint {checkpoint!r} holds no state dict")
        state = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}
        try:
            config = _chexbert_config(state, num_attention_heads)
            net = _CheXbertNet(config)
            net.load_state_dict(state, strict=False)
            missing, unexpected = self._check_keys(net, state)
        except MetricError as exc:
            raise MetricError(f"CheXbert checkpoint {checkpoint!r}: {exc}") from None
        except RuntimeError as exc:
            raise MetricError(f"CheXbert checkpoint {checkpoint!r} does not fit the CheXbert model: {exc}") from None
        if missing or unexpected:
            raise MetricError(
                f"CheXbert checkpoint {checkpoint!r} does not fit the CheXbert model: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}"
            )
        self.net = net.to(self.device).eval()
        self.checkpoint = checkpoint

    @staticmethod
    def _check_keys(net: nn.Module, state: dict) -> tuple[list[str], list[str]]:
        expected = set(net.state_dict())
        # position_ids is a buffer some transformers versions save and others do not
        ignore = {k for k in expected | set(state) if k.endswith("position_ids")}
        missing = sorted(expected - set(state) - ignore)
        unexpected = sorted(set(state) - expected - ignore)
        return missing, unexpected

    @staticmethod
    def _load_tokenizer(path: str) -> Any:
        from transformers import AutoTokenizer, BertTokenizerFast

        try:
            if os.path.isfile(path):
                return BertTokenizerFast(vocab_file=path, do_lower_case=True)
            return AutoTokenizer.from_pretrained(path, local_files_only=True)
        except Exception as exc:
            raise MetricError(f"CheXbert tokenizer {path!r} could not be loaded: {exc}") from exc

    @torch.no_grad()
    def label_many(self, texts: Sequence[str]) -> list[dict[str, float | None]]:
        """Label reports; returns dicts over ``CHEXPERT_LABELS`` (1.0 / 0.0 / -1.0 / None)."""
        out: list[dict[str, float | None]] = []
        for i in range(0, len(texts), self.batch_size):
            chunk = [" ".join(t.split()) for t in texts[i : i + self.batch_size]]
            enc = self.tokenizer(chunk, truncation=True, max_length=512, padding=True, return_tensors="pt")
            logits = self.net(enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device))
            classes = torch.stack([lg.argmax(dim=1) for lg in logits], dim=1).cpu().tolist()
            for row in classes:
                labels = {name: _CHEXBERT_CLASSES[c] for name, c in zip(CHEXBERT_CONDITIONS, row)}
                out.append({k: labels[k] for k in CHEXPERT_LABELS})
        return out

    def label(self, text: str) -> dict[str, float | None]:
        """Label one report."""
        return self.label_many([text])[0]


def chexbert_scores(
    references: Sequence[str],
    hypotheses: Sequence[str],
    checkpoint: str | os.PathLike | None = None,
    tokenizer: str | os.PathLike | None = None,
    uncertain: str = "negative",
    device: str | torch.device = "cpu",
    batch_size: int = 16,
) -> dict[str, Any] | None:
    """CE scores with CheXbert labels (keys prefixed ``"CheXbert "``, e.g. ``"CheXbert CE-14 micro-F1"``).

    Args:
        references: reference reports.
        hypotheses: generated reports, same order.
        checkpoint: local ``chexbert.pth``; ``None`` skips (logged) and returns ``None``.
        tokenizer: local BERT tokenizer folder or ``vocab.txt`` (required with ``checkpoint``).
        uncertain: passed to :func:`~monai_r2gen.metrics.clinical.ce_scores`.
        device: torch device.
        batch_size: reports per forward pass.

    Returns:
        the scores (plus ``"CheXbert per_label"`` and ``"CheXbert settings"``), or ``None`` when skipped.
    """
    if checkpoint is None:
        logger.info("CheXbert scores skipped: no local CheXbert checkpoint path given")
        return None
    if tokenizer is None:
        raise MetricError("CheXbert needs a local BERT tokenizer path (bert-base-uncased) next to the checkpoint")
    labeler = CheXbertLabeler(checkpoint, tokenizer, device=device, batch_size=batch_size)
    refs = labeler.label_many(list(references))
    hyps = labeler.label_many(list(hypotheses))
    scores = ce_scores(refs, hyps, uncertain=uncertain)
    scores["settings"]["labeler"] = f"CheXbert ({os.path.basename(labeler.checkpoint)})"
    out = {f"CheXbert {k}": scores[k] for k in ce_score_keys()}
    out["CheXbert per_label"] = scores["per_label"]
    out["CheXbert settings"] = scores["settings"]
    return out


@contextmanager
def _hub_offline() -> Iterator[None]:
    """Force Hugging Face hub offline mode (env and the already-imported constant) for the duration."""
    hub_constants, has_hub = optional_import("huggingface_hub.constants")
    saved_env = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    saved_flag = getattr(hub_constants, "HF_HUB_OFFLINE", None) if has_hub else None
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    if has_hub:
        hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if has_hub:
            hub_constants.HF_HUB_OFFLINE = saved_flag


def radgraph_scores(
    references: Sequence[str],
    hypotheses: Sequence[str],
    model_dir: str | os.PathLike | None = None,
    model_type: str = "radgraph",
    tokenizer_cache_dir: str | os.PathLike | None = None,
) -> dict[str, float] | None:
    """RadGraph F1 (simple / partial / complete reward levels) from a local RadGraph model.

    Args:
        references: reference reports.
        hypotheses: generated reports, same order.
        model_dir: folder holding ``<model_type>/config.json``, ``<model_type>/weights.th`` and
            ``<model_type>/vocabulary/`` (radgraph's ``model_cache_dir``); ``None`` skips (logged) and returns ``None``.
        model_type: ``"radgraph"`` or ``"radgraph-xl"``.
        tokenizer_cache_dir: local Hugging Face cache holding the BERT model RadGraph's config names.

    Returns:
        ``{"RadGraph-simple": ..., "RadGraph-partial": ..., "RadGraph-complete": ...}`` or ``None`` when skipped.

    Raises:
        MetricError: the folder or its files are missing, the ``radgraph`` package is not installed or too old, or
            RadGraph fails to load offline.
    """
    if model_dir is None:
        logger.info("RadGraph scores skipped: no local RadGraph model folder given")
        return None
    if len(references) != len(hypotheses):
        raise MetricError(f"{len(references)} references but {len(hypotheses)} hypotheses; they must pair up")
    model_dir = os.fspath(model_dir)
    sub = os.path.join(model_dir, model_type)
    if not os.path.isdir(sub):
        raise MetricError(f"RadGraph model folder {sub!r} does not exist (expected {model_type}/ inside {model_dir!r})")
    missing = [f for f in ("config.json", "weights.th", "vocabulary") if not os.path.exists(os.path.join(sub, f))]
    if missing:
        raise MetricError(f"RadGraph model folder {sub!r} lacks {missing}")
    radgraph, has_radgraph = optional_import("radgraph")
    if not has_radgraph:
        raise MetricError("RadGraph scores need the optional 'radgraph' package: pip install radgraph")
    params = inspect.signature(radgraph.RadGraph.__init__).parameters
    if "model_cache_dir" not in params:
        raise MetricError(
            "the installed radgraph package cannot load a local model folder (no model_cache_dir); upgrade it"
        )
    kwargs: dict[str, Any] = {"model_cache_dir": model_dir, "cuda": -1}
    if tokenizer_cache_dir is not None:
        kwargs["tokenizer_cache_dir"] = os.fspath(tokenizer_cache_dir)
    with _hub_offline():
        try:
            scorer = radgraph.F1RadGraph(reward_level="all", model_type=model_type, **kwargs)
            mean, *_ = scorer(refs=list(references), hyps=list(hypotheses))
        except Exception as exc:
            raise MetricError(f"RadGraph failed with model folder {sub!r} (offline): {exc}") from exc
    return {k: float(v) for k, v in zip(RADGRAPH_KEYS, mean)}
