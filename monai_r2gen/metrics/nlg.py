"""Natural-language-generation scores (BLEU-1..4, METEOR, ROUGE-L, CIDEr) computed with pycocoevalcap.

The numbers are exactly those of pycocoevalcap's scorers called on the same tokenized strings: every report is a
one-element list keyed by its position, BLEU uses pycocoevalcap's default ``"closest"`` reference length, CIDEr is
CIDEr-D as shipped (n=4, sigma=6, document frequencies from the references of this evaluation), METEOR is
Meteor 1.5 (``-l en -norm``) and ROUGE-L uses beta=1.2. References are never truncated.

Tokenization (``tokenize=``):

* ``"simple"`` (default): lower case; tokens are words (letters/digits, with inner ``-``, ``'`` or ``/``), decimal
  numbers (``1.5``) and single punctuation marks, joined by one space. Applied to text already cleaned the R2Gen way
  (``monai_r2gen.data.clean_report``, which lower-cases and keeps `` . `` as a token) it changes nothing, so scores
  match R2Gen-family code that scores its cleaned strings directly.
* ``"ptb"``: the Stanford PTB tokenizer shipped with pycocoevalcap (Java; lower case, punctuation removed), as in the
  COCO caption evaluation.
* ``"none"``: whitespace runs collapsed to one space, nothing else (for strings that are already tokenized).

Cleaning (section selection, R2Gen-style normalisation) is not done here; :func:`monai_r2gen.evaluation.evaluate_files`
applies it before calling :func:`nlg_scores`.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced

from monai_r2gen.errors import MetricError

__all__ = [
    "NLG_KEYS",
    "TOKENIZERS",
    "tokenize_reports",
    "nlg_scores",
    "meteor_scorer",
    "ReportListMetric",
    "NLGMetric",
    "report_output_transform",
]

logger = logging.getLogger(__name__)

#: Keys returned by :func:`nlg_scores`, in table order.
NLG_KEYS: tuple[str, ...] = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")
#: Accepted values of ``tokenize``.
TOKENIZERS: tuple[str, ...] = ("simple", "ptb", "none")
#: Metric groups accepted by ``nlg_scores(metrics=...)``.
NLG_METRICS: tuple[str, ...] = ("BLEU", "METEOR", "ROUGE-L", "CIDEr")

_SIMPLE_TOKEN = re.compile(r"\d+(?:[.,]\d+)+|[^\W_]+(?:[-'/][^\W_]+)*|[^\w\s]|_")
_WHITESPACE = re.compile(r"\s+")


def _check_pairs(references: Sequence[str], hypotheses: Sequence[str]) -> None:
    if isinstance(references, str) or isinstance(hypotheses, str):
        raise MetricError("references and hypotheses must be sequences of strings, not a single string")
    if len(references) != len(hypotheses):
        raise MetricError(f"{len(references)} references but {len(hypotheses)} hypotheses; they must pair up")
    if len(references) == 0:
        raise MetricError("no reports to score (empty references and hypotheses)")
    for name, seq in (("reference", references), ("hypothesis", hypotheses)):
        for i, text in enumerate(seq):
            if not isinstance(text, str):
                raise MetricError(f"{name} {i} is a {type(text).__name__}, not a str")


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise MetricError(
            "METEOR and the PTB tokenizer need a Java runtime ('java' not found on PATH); install one "
            "(e.g. apt-get install default-jre-headless) or use metrics without METEOR and tokenize='simple'"
        )
    return java


def _ptb_tokenize(texts: Sequence[str]) -> list[str]:
    """Stanford PTB tokenizer of pycocoevalcap, run once over all texts (one line each)."""
    from pycocoevalcap.tokenizer import ptbtokenizer

    jar = os.path.join(os.path.dirname(os.path.abspath(ptbtokenizer.__file__)), ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR)
    lines = [_WHITESPACE.sub(" ", t).strip() for t in texts]
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as fh:
        fh.write("\n".join(lines))
        path = fh.name
    try:
        cmd = [_java(), "-cp", jar, "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase", path]
        proc = subprocess.run(cmd, capture_output=True, check=False)
    finally:
        os.remove(path)
    if proc.returncode != 0:
        reason = proc.stderr.decode(errors="replace")[:500]
        raise MetricError(f"PTB tokenizer failed (exit {proc.returncode}): {reason}")
    out = proc.stdout.decode("utf-8").split("\n")
    if len(out) < len(lines):
        raise MetricError(f"PTB tokenizer returned {len(out)} lines for {len(lines)} reports")
    punctuation = set(ptbtokenizer.PUNCTUATIONS)
    return [" ".join(w for w in line.rstrip().split(" ") if w not in punctuation) for line in out[: len(lines)]]


def tokenize_reports(texts: Sequence[str], tokenize: str = "simple") -> list[str]:
    """Tokenize report texts the way :func:`nlg_scores` does before scoring.

    Args:
        texts: report strings.
        tokenize: ``"simple"``, ``"ptb"`` or ``"none"`` (see the module docstring).

    Returns:
        one space-joined token string per text.
    """
    if tokenize not in TOKENIZERS:
        raise MetricError(f"tokenize must be one of {TOKENIZERS}, got {tokenize!r}")
    if tokenize == "ptb":
        return _ptb_tokenize(texts)
    if tokenize == "none":
        return [_WHITESPACE.sub(" ", t).strip() for t in texts]
    return [" ".join(_SIMPLE_TOKEN.findall(t.lower())) for t in texts]


@contextmanager
def meteor_scorer() -> Iterator[Any]:
    """pycocoevalcap's ``Meteor`` scorer with its Java process started on entry and closed on exit.

    Yields:
        a ``pycocoevalcap.meteor.meteor.Meteor`` instance (use ``compute_score(gts, res)``).
    """
    _java()
    from pycocoevalcap.meteor.meteor import Meteor

    scorer = Meteor()
    try:
        yield scorer
    finally:
        proc = scorer.meteor_p
        with scorer.lock:
            if proc.stdin is not None and not proc.stdin.closed:
                proc.stdin.close()
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()


def _parse_metrics(metrics: Sequence[str] | None) -> tuple[str, ...]:
    if metrics is None:
        return NLG_METRICS
    if isinstance(metrics, str):
        metrics = (metrics,)
    unknown = [m for m in metrics if m not in NLG_METRICS]
    if unknown:
        raise MetricError(f"unknown NLG metric(s) {unknown}; choose from {NLG_METRICS}")
    return tuple(m for m in NLG_METRICS if m in metrics)


def nlg_scores(
    references: Sequence[str],
    hypotheses: Sequence[str],
    tokenize: str = "simple",
    metrics: Sequence[str] | None = None,
) -> dict[str, float]:
    """Corpus-level BLEU-1..4, METEOR, ROUGE-L and CIDEr of generated reports against their references.

    Args:
        references: one reference report per study (never truncated).
        hypotheses: the generated report of each study, same order.
        tokenize: ``"simple"`` (default), ``"ptb"`` or ``"none"``; see the module docstring.
        metrics: subset of ``("BLEU", "METEOR", "ROUGE-L", "CIDEr")``; default all. METEOR starts one Java process
            for the call and closes it before returning.

    Returns:
        dict with keys from :data:`NLG_KEYS` (only the requested ones) and float values.

    Raises:
        MetricError: different lengths, empty input, non-string items, unknown options, or Java missing for METEOR /
            PTB tokenization.
    """
    _check_pairs(references, hypotheses)
    wanted = _parse_metrics(metrics)
    toks = tokenize_reports(list(references) + list(hypotheses), tokenize)
    n = len(references)
    gts = {i: [toks[i]] for i in range(n)}
    res = {i: [toks[n + i]] for i in range(n)}

    scores: dict[str, float] = {}
    if "BLEU" in wanted:
        from pycocoevalcap.bleu.bleu import Bleu

        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        scores.update({f"BLEU-{k + 1}": float(v) for k, v in enumerate(bleu)})
    if "METEOR" in wanted:
        with meteor_scorer() as meteor:
            try:
                value, _ = meteor.compute_score(gts, res)
            except (ValueError, BrokenPipeError) as exc:
                raise MetricError(f"METEOR (Java) failed while scoring {n} reports: {exc}") from exc
        scores["METEOR"] = float(value)
    if "ROUGE-L" in wanted:
        from pycocoevalcap.rouge.rouge import Rouge

        value, _ = Rouge().compute_score(gts, res)
        scores["ROUGE-L"] = float(value)
    if "CIDEr" in wanted:
        from pycocoevalcap.cider.cider import Cider

        value, _ = Cider().compute_score(gts, res)
        scores["CIDEr"] = float(value)
    return {k: scores[k] for k in NLG_KEYS if k in scores}


# --------------------------------------------------------------------------------------------------------------------
# Ignite metrics
# --------------------------------------------------------------------------------------------------------------------


def report_output_transform(
    pred_key: str = "pred_report", ref_key: str = "report", id_key: str | None = "id"
) -> Callable[[Any], tuple]:
    """Build an ``output_transform`` that pulls report strings out of an engine output.

    Accepts a dict of lists (``{"pred_report": [...], "report": [...]}``) or a list of per-sample dicts (MONAI's
    decollated ``engine.state.output``).

    Args:
        pred_key: key of the generated report.
        ref_key: key of the reference report.
        id_key: key of the study id (used to drop duplicates added by a distributed sampler); ``None`` to skip.

    Returns:
        a callable ``output -> (hypotheses, references)`` or ``(hypotheses, references, ids)``.
    """

    def _transform(output: Any) -> tuple:
        if isinstance(output, Mapping):
            hyps, refs = list(output[pred_key]), list(output[ref_key])
            ids = list(output[id_key]) if id_key is not None and id_key in output else None
        else:
            hyps = [o[pred_key] for o in output]
            refs = [o[ref_key] for o in output]
            ids = [o[id_key] for o in output] if id_key is not None and all(id_key in o for o in output) else None
        return (hyps, refs) if ids is None else (hyps, refs, [str(i) for i in ids])

    return _transform


class ReportListMetric(Metric):
    """Base Ignite metric that collects (hypothesis, reference[, id]) strings and scores them once per epoch.

    ``update`` receives ``(hypotheses, references)`` or ``(hypotheses, references, ids)`` after
    ``output_transform``. ``compute`` gathers the lists from every distributed rank with
    ``ignite.distributed.all_gather`` (every rank gets the same result); when ids are given, repeated ids (the
    padding a ``DistributedSampler`` adds) are scored once.

    Subclasses implement :meth:`score` ``(references, hypotheses) -> dict[str, float]``.

    Args:
        output_transform: maps ``engine.state.output`` to the tuple above; see :func:`report_output_transform`.
        key: optional score to publish under the metric's own name as a float (a key of the score dict, or a callable
            ``dict -> float``), so that MONAI's ``key_val_metric`` can compare epochs; every score is still written to
            ``engine.state.metrics`` under its own key. Without it, the dict itself is published under the name.
        device: kept for Ignite's API; strings are gathered as Python objects.
    """

    required_output_keys = None

    def __init__(
        self,
        output_transform: Callable = lambda x: x,
        key: str | Callable[[dict[str, float]], float] | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self._key = key
        self._hyps: list[str] = []
        self._refs: list[str] = []
        self._ids: list[str] | None = None
        super().__init__(output_transform=output_transform, device=device)

    @reinit__is_reduced
    def reset(self) -> None:
        self._hyps = []
        self._refs = []
        self._ids = None

    @reinit__is_reduced
    def update(self, output: Sequence) -> None:
        if not isinstance(output, (tuple, list)) or len(output) not in (2, 3):
            raise MetricError(
                "expected (hypotheses, references) or (hypotheses, references, ids) from output_transform"
            )
        hyps, refs = output[0], output[1]
        if isinstance(hyps, str):
            hyps, refs = [hyps], [refs]
        hyps, refs = list(hyps), list(refs)
        if len(hyps) != len(refs):
            raise MetricError(f"batch has {len(hyps)} hypotheses but {len(refs)} references")
        ids = None
        if len(output) == 3:
            ids = [str(i) for i in ([output[2]] if isinstance(output[2], (str, int)) else output[2])]
            if len(ids) != len(hyps):
                raise MetricError(f"batch has {len(hyps)} hypotheses but {len(ids)} ids")
        if self._hyps and (ids is None) != (self._ids is None):
            raise MetricError("either every batch or no batch must carry ids")
        self._hyps.extend(hyps)
        self._refs.extend(refs)
        if ids is not None:
            self._ids = (self._ids or []) + ids

    def gathered(self) -> tuple[list[str], list[str]]:
        """(references, hypotheses) from every rank, duplicates by id removed."""
        payload = (self._hyps, self._refs, self._ids)
        if idist.get_world_size() > 1:
            parts = idist.all_gather(payload)
        else:
            parts = [payload]
        hyps: list[str] = []
        refs: list[str] = []
        seen: set[str] = set()
        for part_hyps, part_refs, part_ids in parts:
            if part_ids is None:
                hyps.extend(part_hyps)
                refs.extend(part_refs)
                continue
            for h, r, i in zip(part_hyps, part_refs, part_ids):
                if i in seen:
                    continue
                seen.add(i)
                hyps.append(h)
                refs.append(r)
        return refs, hyps

    def score(self, references: list[str], hypotheses: list[str]) -> dict[str, float]:
        raise NotImplementedError

    def compute(self) -> dict[str, float]:
        refs, hyps = self.gathered()
        if not refs:
            raise MetricError(f"{type(self).__name__} must have at least one report before it can be computed")
        return self.score(refs, hyps)

    def completed(self, engine: Engine, name: str) -> None:
        if self._key is None:
            super().completed(engine, name)
            return
        result = self.compute()
        engine.state.metrics.update(result)
        engine.state.metrics[name] = float(self._key(result) if callable(self._key) else result[self._key])


class NLGMetric(ReportListMetric):
    """Ignite metric of :func:`nlg_scores` over a whole evaluation epoch, gathered across distributed ranks.

    Example (MONAI evaluator, model selection on R2GenGPT's 0.5 * BLEU-4 + 0.5 * CIDEr)::

        metric = NLGMetric(
            output_transform=report_output_transform("pred_report", "report", "id"),
            key=lambda s: 0.5 * s["BLEU-4"] + 0.5 * s["CIDEr"],
        )
        evaluator = monai.engines.Evaluator(..., key_val_metric={"val_nlg": metric})

    Args:
        output_transform: see :class:`ReportListMetric`.
        tokenize: passed to :func:`nlg_scores`.
        metrics: passed to :func:`nlg_scores` (e.g. ``("BLEU", "CIDEr")`` to skip Java during training).
        key: see :class:`ReportListMetric`.
        device: see :class:`ReportListMetric`.
    """

    def __init__(
        self,
        output_transform: Callable = lambda x: x,
        tokenize: str = "simple",
        metrics: Sequence[str] | None = None,
        key: str | Callable[[dict[str, float]], float] | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        if tokenize not in TOKENIZERS:
            raise MetricError(f"tokenize must be one of {TOKENIZERS}, got {tokenize!r}")
        self._tokenize = tokenize
        self._metrics = _parse_metrics(metrics)
        super().__init__(output_transform=output_transform, key=key, device=device)

    def score(self, references: list[str], hypotheses: list[str]) -> dict[str, float]:
        return nlg_scores(references, hypotheses, tokenize=self._tokenize, metrics=self._metrics)
