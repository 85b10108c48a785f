"""Ignite / MONAI handlers for report-generation workflows.

- :class:`TrainableState`: the checkpointable view of a model that holds only its trainable tensors (a 7B LLM is
  never written to a checkpoint; only the projector, LoRA adapters and whatever else a stage trains).
- :class:`GradientClipHandler`: clips gradients after backward, once per optimizer step (gradient accumulation and
  AMP aware).
- :class:`ReportScores`: an Ignite metric that collects generated and reference reports of a validation run and
  computes every NLG and clinical-efficacy score in one pass, plus the checkpoint-selection score.
- :class:`ReportWriter`: writes the generated validation reports (id, reference, prediction) to JSONL after every
  validation run.
- :class:`StageCompletion`: marks a training stage as finished on disk (the hand-over to the next stage and the
  resume logic read the marker).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.engines.utils import IterationEvents
from monai.utils import IgniteInfo, min_version, optional_import

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")
Metric, _ = optional_import("ignite.metrics", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Metric")

__all__ = [
    "SELECTION_SCORES",
    "TrainableState",
    "GradientClipHandler",
    "ReportScores",
    "ReportWriter",
    "StageCompletion",
    "compute_report_scores",
    "flatten_scores",
    "is_main_process",
    "unwrap_model",
]

logger = logging.getLogger(__name__)

#: composite selection scores understood by :class:`ReportScores` besides any single score name
SELECTION_SCORES: dict[str, Callable[[Mapping[str, float]], float]] = {
    # R2GenGPT's checkpoint rule
    "bleu4_cider": lambda s: 0.5 * float(s["BLEU-4"]) + 0.5 * float(s["CIDEr"]),
}


def is_main_process() -> bool:
    """True outside torch.distributed or on rank 0 (only the main process writes files)."""
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or (
        torch.distributed.get_rank() == 0
    )


def unwrap_model(module: torch.nn.Module) -> torch.nn.Module:
    """The model inside a ``DistributedDataParallel`` / ``DataParallel`` wrapper (any other module as it is)."""
    wrappers = (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)
    return module.module if isinstance(module, wrappers) else module


class TrainableState:
    """State-dict view of a module restricted to its trainable parameters (and the buffers that go with them).

    ``CheckpointSaver`` / ``CheckpointLoader`` call ``state_dict()`` / ``load_state_dict()`` on it: checkpoints then
    hold only what the current stage trains (projector, LoRA weights, unfrozen encoder ...), which keeps them small
    with a multi-billion-parameter LLM, and load back with ``torch.load(weights_only=True)``. The persistent buffers of
    every module with a trainable parameter of its own (batch-norm running statistics) are part of the view: weights
    restored without their statistics would be evaluated with the wrong normalisation.

    Args:
        module: the model (a DDP wrapper is looked through).
        names: parameter names to save; default: the parameters with ``requires_grad`` at construction time.
    """

    def __init__(self, module: torch.nn.Module, names: Iterable[str] | None = None) -> None:
        self.module = unwrap_model(module)
        if names is None:
            names = [n for n, p in self.module.named_parameters() if p.requires_grad]
        self.names = list(names)
        known = dict(self.module.named_parameters())
        missing = [n for n in self.names if n not in known]
        if missing:
            raise KeyError(f"parameters not found in the model: {missing[:5]}")
        wanted = set(self.names)
        self.buffer_names: list[str] = []
        for prefix, sub in self.module.named_modules():
            own = [f"{prefix}.{n}" if prefix else n for n, _ in sub.named_parameters(recurse=False)]
            if any(n in wanted for n in own):
                transient = sub._non_persistent_buffers_set
                persistent = [n for n, _ in sub.named_buffers(recurse=False) if n not in transient]
                self.buffer_names += [f"{prefix}.{n}" if prefix else n for n in persistent]

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {**dict(self.module.named_parameters()), **dict(self.module.named_buffers())}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The trainable tensors and their modules' buffers, detached, on their current device."""
        tensors = self._tensors()
        return {n: tensors[n].detach().clone() for n in self.names + self.buffer_names}

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor], strict: bool = True) -> None:
        """Copy tensors into the matching parameters.

        Args:
            state_dict: name -> tensor, as written by :meth:`state_dict`.
            strict: require exactly the names of this view.

        Raises:
            KeyError: with ``strict`` when names differ.
            ValueError: when a shape differs.
        """
        params = self._tensors()
        if strict:
            missing = sorted(set(self.names) - set(state_dict))
            unexpected = sorted(set(state_dict) - set(self.names) - set(self.buffer_names))
            if missing or unexpected:
                raise KeyError(
                    f"trainable-state mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}; the checkpoint was "
                    "written with other trainable parameters (a changed stage preset, LoRA rank or target modules "
                    "since the interrupted run?): resume with the same stage settings or start a new output_dir"
                )
        with torch.no_grad():
            for name, value in state_dict.items():
                if name not in params:
                    continue
                if params[name].shape != value.shape:
                    raise ValueError(f"shape mismatch for {name}: {tuple(value.shape)} vs {tuple(params[name].shape)}")
                params[name].copy_(value.to(params[name].device, params[name].dtype))


class GradientClipHandler:
    """Clip the gradient norm after backward, on the iterations where the optimizer steps.

    With gradient accumulation the gradients are clipped once, on the accumulated sum; with AMP they are unscaled
    first (``GradScaler.unscale_``) so that ``max_norm`` is in the true units.

    Args:
        max_norm: maximum total norm (``torch.nn.utils.clip_grad_norm_``); <= 0 disables the handler.
        norm_type: type of the norm.
    """

    def __init__(self, max_norm: float, norm_type: float = 2.0) -> None:
        self.max_norm = float(max_norm)
        self.norm_type = float(norm_type)

    def attach(self, engine: Any) -> None:
        """Attach to a ``SupervisedTrainer`` (``IterationEvents.BACKWARD_COMPLETED``)."""
        if self.max_norm > 0:
            engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    @staticmethod
    def steps_now(engine: Any) -> bool:
        """Whether the trainer will call ``optimizer.step()`` at the end of this iteration."""
        acc = int(getattr(engine, "accumulation_steps", 1) or 1)
        if acc <= 1:
            return True
        epoch_length = engine.state.epoch_length
        if epoch_length is not None:
            local = (engine.state.iteration - 1) % epoch_length
            return (local + 1) % acc == 0 or (local + 1) == epoch_length
        return engine.state.iteration % acc == 0

    def __call__(self, engine: Any) -> None:
        if not self.steps_now(engine):
            return
        params = [p for group in engine.optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not params:
            return
        scaler = getattr(engine, "scaler", None)
        if getattr(engine, "amp", False) and scaler is not None:
            scaler.unscale_(engine.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(params, self.max_norm, norm_type=self.norm_type)
        engine.state.grad_norm = float(norm)


def flatten_scores(scores: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Flatten a nested score dict to ``{"a/b": float}``, keeping numeric leaves only (None and NaN are dropped)."""
    flat: dict[str, float] = {}
    for key, value in scores.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_scores(value, prefix=f"{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(float(value)):
            flat[name] = float(value)
    return flat


def compute_report_scores(
    references: Sequence[str],
    hypotheses: Sequence[str],
    nlg: bool = True,
    clinical: bool = True,
    tokenize: str = "simple",
    uncertain: str | None = None,
    nlg_metrics: Sequence[str] | None = None,
    clean_style: str | None = None,
) -> dict[str, float]:
    """Every score of :func:`monai_r2gen.metrics.report_scores.score_reports` as a flat dict (validation).

    Keys are those of ``score_reports`` ("BLEU-4", "CE-14 micro-F1", "attr/side_accuracy" ...; per-label CE scores as
    "per_label/<observation>/<score>"); the finding-attribute truth is what the references state.

    Args:
        references: reference reports.
        hypotheses: generated reports, same order.
        nlg: compute the NLG scores.
        clinical: compute the CE and attribute scores.
        tokenize: NLG tokenization.
        uncertain: CE mapping of uncertain mentions (None: ``score_reports``' default).
        nlg_metrics: subset of ("BLEU", "METEOR", "ROUGE-L", "CIDEr"); None: all (METEOR starts a Java process).
        clean_style: cleaning of both sides for NLG (None: ``score_reports``' default, the one every path uses).
    """
    from monai_r2gen.metrics.report_scores import score_reports

    kwargs: dict[str, Any] = {} if uncertain is None else {"uncertain": uncertain}
    if clean_style is not None:
        kwargs["clean_style"] = clean_style
    result = score_reports(list(references), list(hypotheses), tokenize=tokenize,
                           nlg_metrics=nlg_metrics if nlg else (), clinical=clinical,
                           findings="references" if clinical else None, **kwargs)  # fmt: skip
    scores = dict(result["scores"])
    if "per_label" in result:
        scores.update(flatten_scores({"per_label": result["per_label"]}))
    return scores


def _select(scores: Mapping[str, float], selection: str) -> float:
    if selection in SELECTION_SCORES:
        return float(SELECTION_SCORES[selection](scores))
    if selection in scores:
        return float(scores[selection])
    raise KeyError(f"selection score {selection!r} is not among the computed scores: {sorted(scores)}")


class ReportScores(Metric):  # type: ignore[misc, valid-type]
    """Ignite metric: all report scores of a validation run; its value is the checkpoint-selection score.

    The engine output must hold generated reports (``list[str]``) under ``pred_key`` and references under
    ``label_key`` (``SupervisedEvaluator`` with :class:`monai_r2gen.engines.workflows.GenerateInferer`). On
    completion the selection score is stored under the metric's name and every individual score under its own key
    in ``engine.state.metrics`` (so StatsHandler / TensorBoard log them and the last scores stay readable).

    Args:
        selection: "bleu4_cider" (0.5·BLEU-4 + 0.5·CIDEr, R2GenGPT's rule) or any computed key, e.g. "BLEU-4" or a
            CE key such as "CE-14 micro-F1" (see :func:`compute_report_scores`).
        nlg: compute the NLG scores.
        clinical: compute the CE scores.
        pred_key: output key of the generated reports.
        label_key: output key of the reference reports.
        tokenize: NLG tokenization passed to ``nlg_scores``.
        uncertain: CE treatment of uncertain mentions passed to ``ce_scores`` (None: its default).
        nlg_metrics: NLG metrics computed during validation; default without METEOR, whose Java start-up costs
            seconds per validation (None: all).
    """

    def __init__(
        self,
        selection: str = "bleu4_cider",
        nlg: bool = True,
        clinical: bool = True,
        pred_key: str = "pred",
        label_key: str = "label",
        tokenize: str = "simple",
        uncertain: str | None = None,
        nlg_metrics: Sequence[str] | None = ("BLEU", "ROUGE-L", "CIDEr"),
    ) -> None:
        self.selection = selection
        self.nlg = nlg
        self.clinical = clinical
        self.pred_key = pred_key
        self.label_key = label_key
        self.tokenize = tokenize
        self.uncertain = uncertain
        self.nlg_metrics = list(nlg_metrics) if nlg_metrics is not None else None
        self._refs: list[str] = []
        self._hyps: list[str] = []
        self.last_scores: dict[str, float] = {}
        super().__init__(output_transform=self._pair)

    def _pair(self, output: Any) -> tuple[list[str], list[str]]:
        if isinstance(output, Mapping):
            return list(output[self.pred_key]), list(output[self.label_key])
        hyps, refs = output
        return list(hyps), list(refs)

    def reset(self) -> None:
        self._refs = []
        self._hyps = []

    def update(self, output: Any) -> None:
        hyps, refs = self._pair(output)
        if len(hyps) != len(refs):
            raise ValueError(f"{len(hyps)} generated reports for {len(refs)} references")
        self._hyps.extend(str(h) for h in hyps)
        self._refs.extend(str(r) for r in refs)

    def compute_all(self) -> dict[str, float]:
        """All scores of the reports seen since the last reset (empty run -> empty dict)."""
        refs, hyps = self._refs, self._hyps  # under torch.distributed every rank validates the same studies
        if not refs:
            return {}
        return compute_report_scores(
            refs,
            hyps,
            nlg=self.nlg,
            clinical=self.clinical,
            tokenize=self.tokenize,
            uncertain=self.uncertain,
            nlg_metrics=self.nlg_metrics,
        )

    def compute(self) -> float:
        self.last_scores = self.compute_all()
        return _select(self.last_scores, self.selection) if self.last_scores else float("nan")

    def completed(self, engine: Any, name: str) -> None:
        value = self.compute()
        for key, score in self.last_scores.items():
            if not key.startswith("per_label/"):  # keep the logs readable; all scores stay in last_scores
                engine.state.metrics[key] = score
        engine.state.metrics[name] = value


def _default_name(engine: Any) -> str:
    return f"epoch{engine.state.epoch:04d}"


class ReportWriter:
    """Write the reports generated in a validation run to JSONL (one line: id, reference, prediction).

    Attach to the evaluator. Files are named ``{prefix}_{tag}.jsonl`` in ``output_dir``, where the tag comes from
    ``tag_fn(engine)`` (by default the trainer's iteration when ``trainer`` is given, otherwise the evaluator's
    epoch); a copy of the newest file is kept as ``{prefix}_latest.jsonl``.

    Args:
        output_dir: directory for the JSONL files.
        prefix: file-name prefix (e.g. the stage name).
        trainer: the trainer whose iteration tags the file.
        id_key: batch key of the study ids.
        pred_key: output key of the generated reports.
        label_key: output key of the reference reports.
        tag_fn: custom tag function.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        prefix: str = "val",
        trainer: Any | None = None,
        id_key: str = "id",
        pred_key: str = "pred",
        label_key: str = "label",
        tag_fn: Callable[[Any], str] | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.prefix = prefix
        self.trainer = trainer
        self.id_key = id_key
        self.pred_key = pred_key
        self.label_key = label_key
        self.tag_fn = tag_fn
        self.rows: list[dict[str, str]] = []
        self.last_path: Path | None = None

    def attach(self, engine: Any) -> None:
        """Attach to an evaluator."""
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _reset(self, engine: Any) -> None:
        self.rows = []

    def _collect(self, engine: Any) -> None:
        output, batch = engine.state.output, engine.state.batch
        preds, refs = list(output[self.pred_key]), list(output[self.label_key])
        ids = batch.get(self.id_key) if isinstance(batch, Mapping) else None
        ids = list(ids) if ids is not None else [str(len(self.rows) + i) for i in range(len(preds))]
        for study_id, ref, pred in zip(ids, refs, preds):
            self.rows.append({"id": str(study_id), "reference": str(ref), "prediction": str(pred)})

    def _tag(self, engine: Any) -> str:
        if self.tag_fn is not None:
            return self.tag_fn(engine)
        if self.trainer is not None:
            return f"iter{self.trainer.state.iteration:07d}"
        return _default_name(engine)

    def _write(self, engine: Any) -> None:
        if not is_main_process():
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in self.rows)
        path = self.output_dir / f"{self.prefix}_{self._tag(engine)}.jsonl"
        path.write_text(text, encoding="utf-8")
        (self.output_dir / f"{self.prefix}_latest.jsonl").write_text(text, encoding="utf-8")
        self.last_path = path
        logger.info("wrote %d validation reports to %s", len(self.rows), path)


class StageCompletion:
    """On trainer completion, save the stage's trainable weights and a marker file that says the stage is done.

    The marker (``stage_complete.json``) records the stage name, iterations and epochs run and the best validation
    score; a restarted run skips completed stages and loads their ``trainable.safetensors`` instead. ``COMPLETED``
    fires when the budget is used up or the trainer was terminated (early stopping); a killed or crashed run never
    gets there. ``interrupted`` tells a deliberate stop that must not count as completion.

    Args:
        stage_dir: the stage's output directory.
        stage_name: name recorded in the marker.
        state: the :class:`TrainableState` to save.
        evaluator: optional evaluator whose best metric is recorded.
        interrupted: returns True when the run was stopped on purpose before its budget (then nothing is written).
    """

    MARKER = "stage_complete.json"
    WEIGHTS = "trainable.safetensors"

    def __init__(
        self,
        stage_dir: str | os.PathLike,
        stage_name: str,
        state: TrainableState,
        evaluator: Any | None = None,
        interrupted: Callable[[], bool] | None = None,
    ) -> None:
        self.stage_dir = Path(stage_dir)
        self.stage_name = stage_name
        self.state = state
        self.evaluator = evaluator
        self.interrupted = interrupted or (lambda: False)
        self.completed = False

    def attach(self, engine: Any) -> None:
        """Attach to a trainer (``Events.COMPLETED``)."""
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Any) -> None:
        state = engine.state
        if self.interrupted():
            logger.info("stage %s stopped at iteration %d: not marked complete", self.stage_name, state.iteration)
            return
        self.completed = True
        if not is_main_process():
            return
        from safetensors.torch import save_file

        self.stage_dir.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state.state_dict().items()}
        save_file(tensors, str(self.stage_dir / self.WEIGHTS))
        info: dict[str, Any] = {
            "stage": self.stage_name,
            "iterations": int(state.iteration),
            "epochs": int(state.epoch),
        }
        if self.evaluator is not None:
            info["best_metric"] = float(self.evaluator.state.best_metric)
            info["best_metric_epoch"] = int(self.evaluator.state.best_metric_epoch)
            info["key_metric_name"] = self.evaluator.state.key_metric_name
        (self.stage_dir / self.MARKER).write_text(json.dumps(info, indent=2), encoding="utf-8")
        logger.info("stage %s complete after %d iterations", self.stage_name, state.iteration)

    @classmethod
    def is_complete(cls, stage_dir: str | os.PathLike) -> bool:
        """Whether ``stage_dir`` holds a completed stage."""
        return (Path(stage_dir) / cls.MARKER).is_file() and (Path(stage_dir) / cls.WEIGHTS).is_file()

    @classmethod
    def load_weights(cls, stage_dir: str | os.PathLike, state: TrainableState) -> None:
        """Load a completed stage's trainable weights into ``state`` (names not in the model are ignored)."""
        from safetensors.torch import load_file

        tensors = load_file(str(Path(stage_dir) / cls.WEIGHTS))
        state.load_state_dict(tensors, strict=False)
