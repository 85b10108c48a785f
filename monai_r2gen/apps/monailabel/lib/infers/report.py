"""MONAI Label infer task that writes a radiology report for an image or a study.

The task is of type ``OTHERS`` and returns no label file, only JSON: ``POST /infer/<model>?image=<id>`` (or with
``output=json``) answers ``{"report": "...", "findings": {<CheXpert observation>: 1.0 | 0.0 | -1.0 | null}, ...}``.
Generation runs through :class:`monai_r2gen.inference.ReportInference`, the code path the CLI, the bundle and the
MONAI Deploy app use, so every front end writes the same report for the same images.

The model is loaded on the first request (the server starts fast and ``/info/`` answers at once); a lock makes the
load happen once and serialises generation, so the task is safe under MONAI Label's infer thread pool
(``MONAI_LABEL_INFER_CONCURRENCY``) and batch inference.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from monai_r2gen.data.studies import Study, collect_studies
from monai_r2gen.errors import R2GenError

__all__ = ["GENERATION_PARAMS", "ReportInferTask"]

logger = logging.getLogger(__name__)

GENERATION_PARAMS = {"num_beams": int, "max_new_tokens": int, "repetition_penalty": float}
"""Generation settings a request may override (``params={"num_beams": 3}``), with their types."""

_MODEL_FILE = "generator.json"  # written by RadiologyReportGenerator.save_pretrained


def _bad_request(reason: str) -> HTTPException:
    """An HTTP 400 answer naming the reason (MONAI Label turns any other exception into a bare 500)."""
    return HTTPException(status_code=400, detail=reason)


class ReportInferTask(InferTask):
    """Report generation for one image or one study (several views).

    Args:
        model_dir: folder written by ``RadiologyReportGenerator.save_pretrained`` (a trained model).
        device: torch device; None picks CUDA when available.
        generation: generation settings over the model's saved defaults.
        description: shown by ``/info/``.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike,
        device: str | None = None,
        generation: Mapping[str, Any] | None = None,
        description: str = "Chest X-ray radiology report (text) with CheXpert-14 findings",
    ) -> None:
        super().__init__(
            type=InferType.OTHERS,
            labels=None,
            dimension=2,
            description=description,
            config=dict.fromkeys(GENERATION_PARAMS, ""),
        )
        self.model_dir = Path(model_dir)
        self.device = device
        self.generation = dict(generation or {})
        self._lock = threading.Lock()
        self._engine: Any = None
        self._labeler: Any = None
        self.loads = 0  # how many times the model was loaded (1 after the first request)

    def is_valid(self) -> bool:
        """True when ``model_dir`` holds a saved model (``/info/`` lists only valid models)."""
        return (self.model_dir / _MODEL_FILE).is_file()

    def info(self) -> dict[str, Any]:
        """``/info/`` entry, with the model folder and whether it is loaded yet."""
        info = super().info()
        info.update({"model_dir": str(self.model_dir), "loaded": self._engine is not None, "output": "json"})
        return info

    def _engine_locked(self) -> Any:
        """The inference engine; call with ``self._lock`` held."""
        if self._engine is None:
            from monai_r2gen.inference import ReportInference
            from monai_r2gen.metrics.chexpert import CheXpertLabeler

            start = time.perf_counter()
            engine = ReportInference(self.model_dir, device=self.device, batch_size=1, generation=self.generation,
                                     on_error="raise")  # fmt: skip
            _ = engine.network  # load now, under the lock, not in the middle of a later request
            self._labeler = CheXpertLabeler()
            self._engine = engine
            self.loads += 1
            logger.info("report model loaded from %s in %.1f s", self.model_dir, time.perf_counter() - start)
        return self._engine

    @staticmethod
    def _overrides(request: Mapping[str, Any]) -> dict[str, Any]:
        overrides = {}
        for name, kind in GENERATION_PARAMS.items():
            value = request.get(name)
            if value in (None, ""):
                continue
            try:
                overrides[name] = kind(value)
            except (TypeError, ValueError):
                raise _bad_request(f"parameter {name!r} must be {kind.__name__}, got {value!r}") from None
        return overrides

    @staticmethod
    def _study(request: Mapping[str, Any]) -> Study:
        views = request.get("views") or [request.get("image")]
        if not views or not all(isinstance(v, str) and v for v in views):
            raise _bad_request("no image or study given")
        studies = collect_studies(views, on_error="skip")
        usable = [s for s in studies if s.ok]
        if not usable:
            reasons = "; ".join(f"{os.path.basename(p)}: {r}" for s in studies for p, r in s.errors)
            raise _bad_request(f"no usable radiograph ({reasons})")
        if len(usable) > 1:
            logger.warning("request holds %d studies; reporting on the first (%s)", len(usable), usable[0].study_id)
        return usable[0]

    def __call__(self, request: Mapping[str, Any]) -> tuple[None, dict[str, Any]]:
        """Run generation; returns ``(None, result)`` (no label file, JSON only).

        ``request["image"]`` is an image file or a folder (a DICOM series or study); ``request["views"]`` (set by the
        app for a study id) lists a study's view files.
        """
        study = self._study(request)
        overrides = self._overrides(request)
        start = time.perf_counter()
        with self._lock:
            engine = self._engine_locked()
            try:
                (result,) = engine([study], generation=overrides)  # settings per call; the engine is not changed
            except R2GenError as exc:
                raise _bad_request(str(exc)) from exc
            report = str(result["report"])
            findings = self._labeler.label(report)
        response = {key: value for key, value in result.items() if key != "id"}
        response.update(
            {
                "report": report,
                "findings": findings,
                "study_id": study.study_id,
                "skipped": [{"file": os.path.basename(f["file"]), "reason": f["reason"]} for f in result["skipped"]],
                "latency": round(time.perf_counter() - start, 3),
            }
        )
        return None, response
