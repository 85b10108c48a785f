"""Natural-language-generation scores (BLEU-1..4, METEOR, ROUGE-L, CIDEr) computed with pycocoevalcap.

The numbers are exactly those of pycocoevalcap's scorers called on the same tokenized strings: every report is a
one-element list keyed by its position, BLEU uses pycocoevalcap's default ``"closest"`` reference length, CIDEr is
CIDEr-D as shipped (n=4, sigma=6, document frequencies from the references of this evaluation), METEOR is
Meteor 1.5 (``-l en -norm``) and ROUGE-L uses beta=1.2. References are never cut to a model's ``max_length``.

Bounds (so that a hostile or broken input cannot hang an evaluation):

* Report length: a report longer than :data:`MAX_REPORT_CHARS` characters (four times a very long real radiology
  report, which stays under ~5,000) is cut to that limit, at a word boundary, before tokenization
  (:func:`truncate_reports`); the number of cut references and hypotheses is logged as a warning (never the text).
  Real reports are never affected.
* Java scorers: METEOR and the PTB tokenizer run under a time limit, by default :func:`scorer_timeout` of the input
  size (``SCORER_TIMEOUT_BASE_S`` plus one second per ``SCORER_CHARS_PER_S`` characters), overridable with
  ``nlg_scores(timeout=...)``; past it the Java process is killed and :class:`~monai_r2gen.errors.ScorerTimeoutError`
  names the scorer and the limit.

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
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Engine
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced

from monai_r2gen.errors import MetricError, ScorerTimeoutError

__all__ = [
    "NLG_KEYS",
    "TOKENIZERS",
    "MAX_REPORT_CHARS",
    "SCORER_TIMEOUT_BASE_S",
    "SCORER_CHARS_PER_S",
    "truncate_reports",
    "scorer_timeout",
    "tokenize_reports",
    "nlg_scores",
    "meteor_scorer",
    "meteor_score",
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

#: Longest report scored, in characters; longer ones are cut to it (:func:`truncate_reports`). A real radiology
#: report is under ~5,000 characters; the manifest checks of :class:`monai_r2gen.data.ReportDataset` use the same bound.
MAX_REPORT_CHARS: int = 20_000
#: Fixed part of the default time limit of a Java scorer run (JVM start, METEOR's paraphrase tables), in seconds.
SCORER_TIMEOUT_BASE_S: float = 120.0
#: Characters per second assumed by the default time limit (METEOR does ~40,000/s on one core: a 20x margin).
SCORER_CHARS_PER_S: float = 2_000.0

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


def truncate_reports(
    texts: Sequence[str], max_chars: int | None = MAX_REPORT_CHARS, what: str = "reports"
) -> tuple[list[str], int]:
    """Cut every text longer than ``max_chars`` characters to that limit, dropping a word cut in two.

    Args:
        texts: report strings.
        max_chars: the limit (default :data:`MAX_REPORT_CHARS`); ``None`` keeps every text whole.
        what: what the texts are, for the log message (e.g. ``"references"``).

    Returns:
        ``(texts, number of texts that were cut)``; a warning with the count (no report text) is logged when it is
        not zero.

    Raises:
        MetricError: ``max_chars`` is not a positive integer.
    """
    if max_chars is None:
        return list(texts), 0
    if isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars <= 0:
        raise MetricError(f"max_chars must be a positive integer or None, got {max_chars!r}")
    out: list[str] = []
    cut = 0
    for text in texts:
        if len(text) <= max_chars:
            out.append(text)
            continue
        head = text[:max_chars]
        if not text[max_chars].isspace():  # the limit falls inside a word: drop its first part
            words = head.rsplit(None, 1)
            head = words[0] if len(words) == 2 else head
        out.append(head.rstrip())
        cut += 1
    if cut:
        logger.warning("%d of %d %s are longer than %d characters and were truncated to that limit",
                       cut, len(out), what, max_chars)  # fmt: skip
    return out, cut


def scorer_timeout(num_chars: int) -> float:
    """Default time limit in seconds of one Java scorer run over ``num_chars`` characters of text:
    ``SCORER_TIMEOUT_BASE_S + num_chars / SCORER_CHARS_PER_S``."""
    return SCORER_TIMEOUT_BASE_S + max(int(num_chars), 0) / SCORER_CHARS_PER_S


def _check_timeout(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise MetricError(f"timeout must be a positive number of seconds or None (the default), got {timeout!r}")
    return float(timeout)


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise MetricError(
            "METEOR and the PTB tokenizer need a Java runtime ('java' not found on PATH); install one "
            "(e.g. apt-get install default-jre-headless) or use metrics without METEOR and tokenize='simple'"
        )
    return java


def _ptb_tokenize(texts: Sequence[str], timeout: float | None = None) -> list[str]:
    """Stanford PTB tokenizer of pycocoevalcap, run once over all texts (one line each), killed past ``timeout``
    seconds (default :func:`scorer_timeout` of the text size)."""
    from pycocoevalcap.tokenizer import ptbtokenizer

    timeout = _check_timeout(timeout)

    jar = os.path.join(os.path.dirname(os.path.abspath(ptbtokenizer.__file__)), ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR)
    lines = [_WHITESPACE.sub(" ", t).strip() for t in texts]
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as fh:
        fh.write("\n".join(lines))
        path = fh.name
    limit = timeout if timeout is not None else scorer_timeout(sum(len(line) for line in lines))
    try:
        cmd = [_java(), "-cp", jar, "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase", path]
        try:
            proc = subprocess.run(cmd, capture_output=True, check=False, timeout=limit)
        except subprocess.TimeoutExpired:
            raise ScorerTimeoutError(
                f"the PTB tokenizer (Java) ran past its time limit of {limit:g} s on {len(lines)} reports; "
                "give a larger timeout (nlg_scores(timeout=...)) or use tokenize='simple'"
            ) from None
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


def tokenize_reports(texts: Sequence[str], tokenize: str = "simple", timeout: float | None = None) -> list[str]:
    """Tokenize report texts the way :func:`nlg_scores` does before scoring.

    Args:
        texts: report strings.
        tokenize: ``"simple"``, ``"ptb"`` or ``"none"`` (see the module docstring).
        timeout: time limit in seconds of the PTB tokenizer's Java run (default: :func:`scorer_timeout`).

    Returns:
        one space-joined token string per text.

    Raises:
        MetricError: unknown ``tokenize``, Java missing or failing for ``"ptb"``.
        ScorerTimeoutError: the PTB tokenizer ran past ``timeout``.
    """
    if tokenize not in TOKENIZERS:
        raise MetricError(f"tokenize must be one of {TOKENIZERS}, got {tokenize!r}")
    if tokenize == "ptb":
        return _ptb_tokenize(texts, timeout)
    if tokenize == "none":
        return [_WHITESPACE.sub(" ", t).strip() for t in texts]
    return [" ".join(_SIMPLE_TOKEN.findall(t.lower())) for t in texts]


@contextmanager
def meteor_scorer() -> Iterator[Any]:
    """pycocoevalcap's ``Meteor`` scorer with its Java process started on entry and closed on exit.

    Yields:
        a ``pycocoevalcap.meteor.meteor.Meteor`` instance (use ``compute_score(gts, res)``, or :func:`meteor_score`
        for a time limit).
    """
    _java()
    from pycocoevalcap.meteor.meteor import Meteor

    scorer = Meteor()
    try:
        yield scorer
    finally:
        proc = scorer.meteor_p
        # a compute_score that raised (broken pipe, killed process) leaves pycocoevalcap's lock held: free it, or
        # taking it here (and in Meteor.__del__) would block for ever
        if scorer.lock.locked():
            scorer.lock.release()
        with scorer.lock:
            if proc.stdin is not None and not proc.stdin.closed:
                with suppress(BrokenPipeError):  # the process is gone with unread input
                    proc.stdin.close()
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()


def meteor_score(scorer: Any, gts: Mapping, res: Mapping, timeout: float) -> tuple[float, list[float]]:
    """``scorer.compute_score(gts, res)`` with its Java process killed after ``timeout`` seconds.

    Args:
        scorer: a scorer yielded by :func:`meteor_scorer`.
        gts: ``{key: [reference]}`` (tokenized).
        res: ``{key: [hypothesis]}`` (tokenized), same keys.
        timeout: time limit in seconds.

    Returns:
        ``(corpus METEOR, per-report METEOR)`` as pycocoevalcap computes them.

    Raises:
        ScorerTimeoutError: METEOR ran past ``timeout`` (its process is killed; the scorer cannot be used again).
        MetricError: the Java process failed or died.
    """
    proc = scorer.meteor_p
    fired = threading.Event()

    def _kill() -> None:
        fired.set()
        if proc.poll() is None:
            proc.kill()

    watchdog = threading.Timer(timeout, _kill)
    watchdog.daemon = True
    watchdog.start()
    try:
        value, per_report = scorer.compute_score(gts, res)
    except (ValueError, OSError) as exc:  # BrokenPipeError is an OSError; a dead process reads '' -> ValueError
        if fired.is_set():
            raise ScorerTimeoutError(
                f"METEOR (Java) ran past its time limit of {timeout:g} s while scoring {len(gts)} reports and was "
                "stopped; give a larger timeout (nlg_scores(timeout=...)) or leave METEOR out (metrics=...)"
            ) from None
        raise MetricError(f"METEOR (Java) failed while scoring {len(gts)} reports: {exc}") from exc
    finally:
        watchdog.cancel()
    return float(value), [float(v) for v in per_report]


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
    max_chars: int | None = MAX_REPORT_CHARS,
    timeout: float | None = None,
) -> dict[str, float]:
    """Corpus-level BLEU-1..4, METEOR, ROUGE-L and CIDEr of generated reports against their references.

    Args:
        references: one reference report per study (never cut to a model's length; only beyond ``max_chars``).
        hypotheses: the generated report of each study, same order.
        tokenize: ``"simple"`` (default), ``"ptb"`` or ``"none"``; see the module docstring.
        metrics: subset of ``("BLEU", "METEOR", "ROUGE-L", "CIDEr")``; default all. METEOR starts one Java process
            for the call and closes it before returning.
        max_chars: reports longer than this many characters are cut to it before tokenization, counted and logged
            (:func:`truncate_reports`; default :data:`MAX_REPORT_CHARS`); ``None`` scores them whole.
        timeout: time limit in seconds of each Java run (PTB tokenizer, METEOR); default :func:`scorer_timeout` of
            the size of the texts.

    Returns:
        dict with keys from :data:`NLG_KEYS` (only the requested ones) and float values.

    Raises:
        MetricError: different lengths, empty input, non-string items, unknown options, or Java missing for METEOR /
            PTB tokenization.
        ScorerTimeoutError: a Java scorer ran past ``timeout``.
    """
    return nlg_study_scores(references, hypotheses, tokenize, metrics, max_chars, timeout)["scores"]


def nlg_study_scores(
    references: Sequence[str],
    hypotheses: Sequence[str],
    tokenize: str = "simple",
    metrics: Sequence[str] | None = None,
    max_chars: int | None = MAX_REPORT_CHARS,
    timeout: float | None = None,
) -> dict[str, Any]:
    """:func:`nlg_scores` with what the confidence intervals need, computed in the same pass.

    Returns:
        ``{"scores": {name: float}, "per_study": {"METEOR" | "ROUGE-L" | "CIDEr": (n,) array}, "references":
        [tokenized], "hypotheses": [tokenized], "truncated": {"references": int, "hypotheses": int}}``. ROUGE-L and
        CIDEr are the means of their per-study values; METEOR's corpus score is the Java scorer's aggregate, its
        per-study values are the segment scores; BLEU's statistics are counts, which
        :func:`monai_r2gen.metrics.bootstrap.study_statistics` recomputes from the tokens.
    """
    _check_pairs(references, hypotheses)
    wanted = _parse_metrics(metrics)
    timeout = _check_timeout(timeout)
    references, cut_refs = truncate_reports(references, max_chars, "references")
    hypotheses, cut_hyps = truncate_reports(hypotheses, max_chars, "hypotheses")
    toks = tokenize_reports(references + hypotheses, tokenize, timeout=timeout)
    n = len(references)
    gts = {i: [toks[i]] for i in range(n)}
    res = {i: [toks[n + i]] for i in range(n)}

    scores: dict[str, float] = {}
    per_study: dict[str, np.ndarray] = {}
    if "BLEU" in wanted:
        from pycocoevalcap.bleu.bleu import Bleu

        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        scores.update({f"BLEU-{k + 1}": float(v) for k, v in enumerate(bleu)})
    if "METEOR" in wanted:
        limit = timeout if timeout is not None else scorer_timeout(sum(len(t) for t in toks))
        with meteor_scorer() as meteor:
            scores["METEOR"], values = meteor_score(meteor, gts, res, limit)
        per_study["METEOR"] = np.asarray(values, dtype=float)
    if "ROUGE-L" in wanted:
        from pycocoevalcap.rouge.rouge import Rouge

        value, values = Rouge().compute_score(gts, res)
        scores["ROUGE-L"] = float(value)
        per_study["ROUGE-L"] = np.asarray(values, dtype=float)
    if "CIDEr" in wanted:
        from pycocoevalcap.cider.cider import Cider

        value, values = Cider().compute_score(gts, res)
        scores["CIDEr"] = float(value)
        per_study["CIDEr"] = np.asarray(values, dtype=float)
    return {
        "scores": {k: scores[k] for k in NLG_KEYS if k in scores},
        "per_study": per_study,
        "references": toks[:n],
        "hypotheses": toks[n:],
        "truncated": {"references": cut_refs, "hypotheses": cut_hyps},
    }


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
        max_chars: passed to :func:`nlg_scores` (report length bound).
        timeout: passed to :func:`nlg_scores` (time limit of the Java scorers).
    """

    def __init__(
        self,
        output_transform: Callable = lambda x: x,
        tokenize: str = "simple",
        metrics: Sequence[str] | None = None,
        key: str | Callable[[dict[str, float]], float] | None = None,
        device: str | torch.device = "cpu",
        max_chars: int | None = MAX_REPORT_CHARS,
        timeout: float | None = None,
    ) -> None:
        if tokenize not in TOKENIZERS:
            raise MetricError(f"tokenize must be one of {TOKENIZERS}, got {tokenize!r}")
        self._tokenize = tokenize
        self._metrics = _parse_metrics(metrics)
        self._max_chars = max_chars
        self._timeout = _check_timeout(timeout)
        super().__init__(output_transform=output_transform, key=key, device=device)

    def score(self, references: list[str], hypotheses: list[str]) -> dict[str, float]:
        return nlg_scores(references, hypotheses, tokenize=self._tokenize, metrics=self._metrics,
                          max_chars=self._max_chars, timeout=self._timeout)  # fmt: skip
