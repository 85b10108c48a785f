"""MLflow tracking of a training run: parameters, per-stage losses, validation scores and the final model.

One MLflow run covers the whole multi-stage training: :class:`MLflowTracker` resolves (or creates) the run by name
once, and every stage attaches MONAI's ``MLFlowHandler`` to its trainer and evaluator with that run set, so the
stages' metrics land side by side under their stage's prefix:

- ``<stage>/train_loss`` and ``<stage>/lr`` at every iteration (step: the stage's iteration);
- ``<stage>/val/<score>`` after every validation (step: the trainer's iteration at that validation; a ``+`` in a
  score's name is spelled ``plus``, e.g. ``stage2/val/CE-14plus micro-F1``, as MLflow refuses it);
- parameters: the run's (``params``) as given, a stage's (``stage_params``) under ``<stage>/``; nested mappings
  are flattened with ``/``;
- the final model folder as artifacts under ``model/`` (:meth:`MLflowTracker.log_model_dir`).

The store is local by default. MLflow 3 refuses its old file store (``mlruns/`` folders), and MONAI's handler
rejects local paths and ``file://`` URIs, so a folder (or ``file://`` URI) given here becomes a SQLite database
``<folder>/mlruns.db`` with the artifacts in ``<folder>/mlruns/`` (the layout MONAI's handler uses by default);
``sqlite:///``, ``http(s)://`` and other URIs are used as they are. As in MONAI's handler, the environment
variable ``MLFLOW_TRACKING_URI`` wins over the argument. Browse a local store with
``mlflow ui --backend-store-uri sqlite:///<folder>/mlruns.db`` (the UI needs the full ``mlflow`` package).

A run left unfinished (a killed training) is taken up again by a tracker of the same run name, so a resumed
training continues its run; a finished run is never written to again (a new run of the same name is made).

mlflow is optional: ``pip install "monai-r2gen[tracking]"``. Only the main process (rank 0 under torch.distributed)
writes to the store; on other ranks every method does nothing.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from monai.utils import OptionalImportError, optional_import

from monai_r2gen.engines.handlers import is_main_process
from monai_r2gen.engines.progress import loss_of

__all__ = ["DEFAULT_EXPERIMENT", "MLflowTracker", "attach_mlflow", "log_model_dir", "mlflow_store"]

logger = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "monai-r2gen"
_DB_NAME = "mlruns.db"
_ARTIFACTS = "mlruns"
_INVALID_KEY = re.compile(r"[^\w\-. /]")  # MLflow's key characters on every system: alphanumerics, _ - . space /
_MAX_PARAM = 6000  # MLflow's limit on a parameter value


def mlflow_store(location: str | os.PathLike | None = None) -> tuple[str, str | None]:
    """The tracking URI and artifact location for a store given as a folder or a URI.

    Args:
        location: a folder or ``file://`` URI (a local SQLite store in it), a ``sqlite:///`` URI (artifacts in
            ``mlruns/`` beside the database), any other tracking URI (used as it is, artifacts where the server
            puts them), or None: ``$MLFLOW_TRACKING_URI`` when set, else the folder ``./mlruns``.

    Returns:
        ``(tracking_uri, artifact_location)``; the location is None for a remote store.
    """
    if location is None:
        location = os.environ.get("MLFLOW_TRACKING_URI") or "mlruns"
    text = os.fspath(location)
    if text.startswith("file:"):
        text = text[len("file://") :] if text.startswith("file://") else text[len("file:") :]
    elif "://" in text:
        if text.startswith("sqlite:///"):
            db = Path(text[len("sqlite:///") :])
            return text, (db.parent / _ARTIFACTS).absolute().as_uri()
        return text, None
    folder = Path(text).expanduser().absolute()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / _DB_NAME}", (folder / _ARTIFACTS).as_uri()


def _key(name: str) -> str:
    """A valid MLflow key: ``+`` spelled ``plus`` (``CE-14+ micro-F1``), other characters MLflow refuses ``_``."""
    return _INVALID_KEY.sub("_", str(name).replace("+", "plus"))


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{name}/"))
        else:
            flat[_key(name)] = value
    return flat


def _numbers(values: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric entries of a (nested) mapping, keys prefixed and made valid MLflow keys."""
    flat = _flatten(values, prefix)
    return {k: float(v) for k, v in flat.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class MLflowTracker:
    """One MLflow run of a (multi-stage) training, shared by the stages' engines.

    Args:
        tracking_uri: the store (see :func:`mlflow_store`; default ``./mlruns``, or ``$MLFLOW_TRACKING_URI``).
        experiment_name: the MLflow experiment (created when missing).
        run_name: the run; an unfinished run of that name is continued. Default: ``r2gen-<date>-<time>`` (a new
            run per tracker).
        log_every: iterations between two logged training losses.

    Raises:
        OptionalImportError: mlflow is not installed.
    """

    def __init__(
        self,
        tracking_uri: str | os.PathLike | None = None,
        experiment_name: str = DEFAULT_EXPERIMENT,
        run_name: str | None = None,
        log_every: int = 1,
    ) -> None:
        self._mlflow, has_mlflow = optional_import("mlflow")  # here, not at import: mlflow takes seconds to import
        self._entities, has_entities = optional_import("mlflow.entities")
        if not (has_mlflow and has_entities):
            raise OptionalImportError('MLflow tracking needs mlflow: pip install "monai-r2gen[tracking]"')
        env = os.environ.get("MLFLOW_TRACKING_URI")
        if env and tracking_uri is not None and os.fspath(tracking_uri) != env:
            logger.warning("MLFLOW_TRACKING_URI=%s is set and wins over tracking_uri=%s (as in MONAI's handler)", env,
                           tracking_uri)  # fmt: skip
        self.tracking_uri, self.artifact_location = mlflow_store(env or tracking_uri)
        self.experiment_name = experiment_name
        self.run_name = run_name or time.strftime("r2gen-%Y%m%d-%H%M%S")
        self.log_every = max(1, int(log_every))
        self._client: Any = None
        self._experiment: Any = None
        self._run_id: str | None = None

    # the run ---------------------------------------------------------------------------------------------------
    @property
    def client(self) -> Any:
        """The ``mlflow.MlflowClient`` of the store."""
        if self._client is None:
            self._client = self._mlflow.MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    @property
    def experiment(self) -> Any:
        """The experiment (created with the artifact location on first use)."""
        if self._experiment is None:
            found = self.client.get_experiment_by_name(self.experiment_name)
            if found is None:
                experiment_id = self.client.create_experiment(self.experiment_name,
                                                              artifact_location=self.artifact_location)  # fmt: skip
                found = self.client.get_experiment(experiment_id)
            self._experiment = found
        return self._experiment

    @property
    def run_id(self) -> str:
        """The run: the latest unfinished one of this name in the experiment, else a new one."""
        if self._run_id is None:
            finished = self._entities.RunStatus.to_string(self._entities.RunStatus.FINISHED)
            runs = self.client.search_runs([self.experiment.experiment_id], order_by=["attributes.start_time DESC"])
            for run in runs:
                if run.info.run_name == self.run_name and run.info.status != finished:
                    self._run_id = run.info.run_id
                    logger.info("MLflow: continuing run %s (%s) in %s", self.run_name, self._run_id, self.tracking_uri)
                    break
            else:
                run = self.client.create_run(self.experiment.experiment_id, run_name=self.run_name)
                self._run_id = run.info.run_id
                logger.info("MLflow: run %s (%s) in %s", self.run_name, self._run_id, self.tracking_uri)
        return self._run_id

    # logging ---------------------------------------------------------------------------------------------------
    def log_params(self, params: Mapping[str, Any], prefix: str = "") -> None:
        """Record parameters (nested mappings flattened with ``/``). A parameter already recorded with another
        value (MLflow's are immutable, e.g. after a resume with changed settings) is kept and a warning logged."""
        if not params or not is_main_process():
            return
        existing = self.client.get_run(self.run_id).data.params
        new = []
        for key, value in _flatten(params, prefix).items():
            text = str(value)[:_MAX_PARAM]
            if key not in existing:
                new.append(self._entities.Param(key, text))
            elif existing[key] != text:
                logger.warning("MLflow: parameter %s stays %r (this run gives %r)", key, existing[key], text)
        for start in range(0, len(new), 100):  # MLflow's limit on parameters per batch
            self.client.log_batch(self.run_id, params=new[start : start + 100])

    def log_metrics(self, metrics: Mapping[str, Any], step: int = 0, prefix: str = "") -> None:
        """Record the numeric entries of ``metrics`` (nested mappings flattened with ``/``) at ``step``."""
        if not is_main_process():
            return
        values = _numbers(metrics, prefix)
        if not values:
            return
        now = int(time.time() * 1000)
        batch = [self._entities.Metric(k, v, now, int(step)) for k, v in values.items()]
        for start in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[start : start + 1000])

    def log_model_dir(self, model_dir: str | os.PathLike, artifact_path: str = "model") -> None:
        """Upload a saved model folder (weights, ``generator.json``, model card, summaries) as run artifacts."""
        if not is_main_process():
            return
        self.client.log_artifacts(self.run_id, os.fspath(model_dir), artifact_path=artifact_path)
        logger.info("MLflow: logged %s as artifacts %s/ of run %s", model_dir, artifact_path, self.run_name)

    def close(self, status: str = "FINISHED") -> None:
        """Mark the run finished (or ``"FAILED"`` / ``"KILLED"``); a later tracker of this name starts a new run."""
        if self._run_id is not None and is_main_process():
            self.client.set_terminated(self._run_id, status)
        self._run_id = None

    # engines ---------------------------------------------------------------------------------------------------
    def _handler(self, **kwargs: Any) -> Any:
        from monai.handlers import MLFlowHandler

        handler = MLFlowHandler(tracking_uri=self.tracking_uri, experiment_name=self.experiment_name,
                                run_name=self.run_name, **kwargs)  # fmt: skip
        handler.client = self.client  # the run below lives in this store (also when $MLFLOW_TRACKING_URI is set)
        handler.experiment = self.experiment
        handler.cur_run = self.client.get_run(self.run_id)
        handler.default_tracking_params = []  # stage lengths are recorded, prefixed, with the stage's parameters
        return handler

    def attach(
        self,
        trainer: Any,
        evaluator: Any | None = None,
        stage: str = "train",
        params: Mapping[str, Any] | None = None,
        stage_params: Mapping[str, Any] | None = None,
        loss_transform: Callable[[Any], float | None] = loss_of,
    ) -> list[Any]:
        """Attach MONAI ``MLFlowHandler`` s to a stage's trainer (loss and learning rate per iteration) and
        evaluator (scores per validation) and record the parameters.

        Args:
            trainer: the stage's trainer (an Ignite engine; its ``optimizer`` attribute gives the learning rate).
            evaluator: the stage's evaluator (validation scores in ``state.metrics``), or None.
            stage: the stage name, the prefix of its metrics and of ``stage_params``.
            params: parameters of the whole run (model, data, seed ...).
            stage_params: the stage's settings.
            loss_transform: trainer output -> loss.

        Returns:
            the attached handlers (none on other ranks than the main one).
        """
        if not is_main_process():
            return []
        self.log_params(params or {})
        self.log_params(stage_params or {}, prefix=f"{stage}/")

        def _train_values(output: Any) -> dict[str, float] | None:
            loss = loss_transform(output)
            if loss is None:
                return None
            values = {_key(f"{stage}/train_loss"): loss}
            optimizer = getattr(trainer, "optimizer", None)
            if optimizer is not None and optimizer.param_groups:
                values[_key(f"{stage}/lr")] = float(optimizer.param_groups[0]["lr"])
            return values

        every = self.log_every
        train = self._handler(iteration_log=True if every == 1 else (lambda _, i: i % every == 0), epoch_log=False,
                              output_transform=_train_values, optimizer_param_names=[])  # fmt: skip
        train.attach(trainer)
        handlers = [train]
        if evaluator is not None:

            def _validation(engine: Any) -> None:
                self.log_metrics(engine.state.metrics, step=int(trainer.state.iteration), prefix=f"{stage}/val/")

            val = self._handler(iteration_log=False, epoch_log=True, epoch_logger=_validation)
            val.attach(evaluator)
            handlers.append(val)
        return handlers


def attach_mlflow(
    trainer: Any,
    evaluator: Any | None = None,
    tracking_uri: str | os.PathLike | None = None,
    experiment_name: str = DEFAULT_EXPERIMENT,
    run_name: str | None = None,
    params: Mapping[str, Any] | None = None,
    stage: str = "train",
    stage_params: Mapping[str, Any] | None = None,
    tracker: MLflowTracker | None = None,
) -> MLflowTracker:
    """Track one stage in MLflow: :meth:`MLflowTracker.attach` on ``tracker`` (a new one when None).

    Keep the returned tracker for the next stages (one run for the whole training), then call
    :func:`log_model_dir` with the saved model and :meth:`MLflowTracker.close`.

    Args:
        trainer / evaluator: the stage's engines.
        tracking_uri / experiment_name / run_name: the store, experiment and run of a new tracker.
        params: parameters of the whole run.
        stage: the stage name (metric prefix).
        stage_params: the stage's settings.
        tracker: an existing tracker (its store and run are used).

    Returns:
        the tracker.
    """
    tracker = tracker or MLflowTracker(tracking_uri, experiment_name=experiment_name, run_name=run_name)
    tracker.attach(trainer, evaluator, stage=stage, params=params, stage_params=stage_params)
    return tracker


def log_model_dir(tracker: MLflowTracker, model_dir: str | os.PathLike, artifact_path: str = "model") -> None:
    """Upload the final model folder to the tracker's run (see :meth:`MLflowTracker.log_model_dir`)."""
    tracker.log_model_dir(model_dir, artifact_path=artifact_path)
