"""The one inference path: load a trained model once, preprocess studies, generate reports, write them out.

Used by the bundle's ``inference`` run id, the CLI (``monai-r2gen generate``), MONAI Label and MONAI Deploy, so every
front end writes the same report for the same images.

Inputs are gathered into studies by :func:`monai_r2gen.data.studies.collect_studies` (DICOM files and folders grouped
by Study Instance UID with views ordered frontal first, PNG / JPEG / TIFF files, annotation files and manifests), or
given as :class:`~monai_r2gen.data.studies.Study` objects or study dicts ``{"id", "image": [view paths]}``.

Each study gives one result dict:

- ``id``: the study id (Study Instance UID, manifest id, file name, or the path of an unusable input);
- ``study_instance_uid``: the DICOM Study Instance UID, or None;
- ``views`` / ``view_positions``: the view files the report was written from (frontal first) and their positions;
- ``report``, or ``error`` (why there is no report);
- ``skipped``: per-file problems of this study, ``[{"file", "reason"}]`` (possibly empty);
- ``generation``: the effective ``generate`` settings (the model's defaults, then the engine's, then the call's);
- ``model``: ``{"name", "fingerprint"}`` of the model directory;
- ``seconds``: the study's loading time plus its share of its batch's generation time.

``generation`` and ``model`` are None when no input was usable (the model is then not loaded at all).

:func:`write_reports` writes ``reports.jsonl`` (one result per line) and one ``<id>.txt`` per report.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from monai_r2gen.data.datasets import stack_views
from monai_r2gen.data.studies import Study, collect_studies
from monai_r2gen.errors import InputFileError, ModelConfigError, R2GenError, RadiographReadError

__all__ = ["ReportInference", "model_fingerprint", "run_inference", "write_reports"]

logger = logging.getLogger(__name__)

_MODEL_PARTS = ("encoder", "llm", "encoder_lora", "llm_lora")  # sub-folders save_pretrained may write
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer.model")


def _safe_id(text: str) -> str:
    """A file-name-safe form of a study id."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "study"


def model_fingerprint(model_dir: str | os.PathLike) -> str:
    """A cheap identity of a saved report generator: same files, same fingerprint.

    Hashes ``generator.json`` (config, expected bases with their fingerprints, contents), the weight files at the top
    level and in each model sub-folder (see :func:`monai_r2gen.networks.generator.fingerprint`: size and first 4 MiB
    of each, plus ``config.json``) and the tokenizer's vocabulary files. Files written beside the model by training
    (summaries, logs) do not count.

    Args:
        model_dir: a directory written by ``RadiologyReportGenerator.save_pretrained``.

    Returns:
        ``"sha256:<hex>"``.

    Raises:
        ModelConfigError: not a model directory (no readable ``generator.json``).
    """
    from monai_r2gen.networks.fingerprints import fingerprint
    from monai_r2gen.networks.model_files import CONFIG_NAME

    root = Path(model_dir)
    try:
        meta = json.loads((root / CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelConfigError(f"{root}: not a readable report generator directory ({exc})") from exc
    digest = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    digest.update(fingerprint(root).encode())  # modules.safetensors
    for part in _MODEL_PARTS:
        if (root / part).is_dir():
            digest.update(f"{part}:{fingerprint(root / part)}".encode())
    for name in _TOKENIZER_FILES:
        path = root / "tokenizer" / name
        if path.is_file():
            digest.update(f"tokenizer/{name}:{fingerprint(path)}".encode())
    return "sha256:" + digest.hexdigest()


def write_reports(results: Iterable[Mapping[str, Any]], output_dir: str | os.PathLike) -> Path:
    """Write ``reports.jsonl`` (one result per line) and one ``<id>.txt`` per result with a report.

    Args:
        results: result dicts of :class:`ReportInference`.
        output_dir: folder (created).

    Returns:
        The path of ``reports.jsonl``.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = list(results)
    jsonl = out / "reports.jsonl"
    with open(jsonl, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(dict(row), ensure_ascii=False) + "\n")
    for row in rows:
        if "report" in row:
            (out / f"{_safe_id(str(row['id']))}.txt").write_text(str(row["report"]) + "\n", encoding="utf-8")
    return jsonl


def _reasons(skipped: Sequence[Mapping[str, str]]) -> str:
    return "; ".join(f"{os.path.basename(f['file'])}: {f['reason']}" for f in skipped)


def _as_study(item: Study | Mapping[str, Any]) -> Study:
    if isinstance(item, Study):
        return item
    if "id" not in item or "image" not in item:
        raise ValueError(f"a study dict needs 'id' and 'image', got keys {sorted(item)}")
    images = item["image"]
    paths = [os.fspath(images)] if isinstance(images, (str, os.PathLike)) else [os.fspath(p) for p in images]
    return Study(str(item["id"]), paths, source="manifest", view_positions=[None] * len(paths),
                 reference=item.get("report"))  # fmt: skip


class ReportInference:
    """Load a trained generator once and write reports for studies; safe to call from several threads.

    The model is loaded on first use, once, under a lock. Generation settings are given per call and never stored, so
    concurrent calls with different settings do not interfere.

    Args:
        model_dir: directory written by ``RadiologyReportGenerator.save_pretrained``.
        encoder_path: local base encoder when the saved model refers to one.
        llm_path: local base LLM when the saved model refers to one.
        device: torch device (default: cuda when available).
        image_size: view size (default: the model config's).
        max_views: views per study (default: the model config's); further views are listed in ``skipped``.
        batch_size: studies generated together.
        generation: ``generate()`` settings over the model's defaults, for every call (a call's own settings come on
            top).
        on_error: "raise": the first unusable input or unreadable view raises its typed error; "skip": it is logged
            and reported in the results (``skipped``, and ``error`` for a study left without any readable view).
        accept_nonstandard: write reports for views that are not chest radiographs (a CT slice, a colour image, a
            tiny or constant image...; see :mod:`monai_r2gen.data.radiograph_checks`), each logged as a warning. By
            default such a view is refused with ``NotAChestRadiographError`` (skipped, with its reason, under
            ``on_error="skip"``).
    """

    def __init__(
        self,
        model_dir: str | os.PathLike,
        encoder_path: str | None = None,
        llm_path: str | None = None,
        device: str | torch.device | None = None,
        image_size: int | None = None,
        max_views: int | None = None,
        batch_size: int = 8,
        generation: Mapping[str, Any] | None = None,
        on_error: str = "raise",
        accept_nonstandard: bool = False,
    ) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.model_dir = Path(model_dir)
        self.encoder_path = encoder_path
        self.llm_path = llm_path
        self.device = (
            torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        )
        self._image_size = image_size
        self._max_views = max_views
        self.batch_size = int(batch_size)
        self.generation = dict(generation or {})
        self.on_error = on_error
        self.accept_nonstandard = bool(accept_nonstandard)
        self.load_seconds: float | None = None
        self._lock = threading.Lock()
        self._network: Any = None
        self._transform: Any = None
        self._model_info: dict[str, str] | None = None
        self._prompt: tuple[torch.Tensor, torch.Tensor] | None = None

    # ------------------------------------------------------------------------------------------------------------
    # the model, loaded once
    # ------------------------------------------------------------------------------------------------------------

    def load(self) -> Any:
        """Load the generator (once, thread-safe) and return it."""
        if self._network is not None:
            return self._network
        with self._lock:
            if self._network is None:
                from monai_r2gen.data.transforms import LoadStudyViewsd
                from monai_r2gen.networks.generator import RadiologyReportGenerator

                start = time.perf_counter()
                network = RadiologyReportGenerator.from_pretrained(
                    str(self.model_dir), encoder_path=self.encoder_path, llm_path=self.llm_path
                )
                network = network.to(self.device).eval()
                size = int(self._image_size or network.config.image_size or 224)
                views = int(self._max_views or network.config.max_views)
                self._transform = LoadStudyViewsd(
                    keys="image", spatial_size=size, max_views=views, accept_nonstandard=self.accept_nonstandard
                )
                # the prompt is the same for every study: tokenized once here, so that concurrent calls never use the
                # (not thread-safe) tokenizer for encoding
                self._prompt = network.encode_prompts([network.config.prompt_template])
                self._model_info = {"name": self.model_dir.resolve().name or "monai-r2gen",
                                    "fingerprint": model_fingerprint(self.model_dir)}  # fmt: skip
                self.load_seconds = time.perf_counter() - start
                self._network = network  # last: other threads use the model once this is set
                logger.info("loaded %s in %.1f s", self.model_dir, self.load_seconds)
        return self._network

    @property
    def network(self) -> Any:
        """The generator, loaded on first use."""
        return self.load()

    @property
    def loaded(self) -> bool:
        """Whether the model is loaded."""
        return self._network is not None

    @property
    def image_size(self) -> int:
        """Side of the square views fed to the model."""
        self.load()
        return int(self._transform.spatial_size)

    @property
    def max_views(self) -> int:
        """View slots per study."""
        self.load()
        return int(self._transform.max_views)

    @property
    def model_info(self) -> dict[str, str]:
        """``{"name", "fingerprint"}`` of the model directory (computed once, at load)."""
        self.load()
        return dict(self._model_info or {})

    def generation_settings(self, generation: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The effective ``generate`` settings: the model's defaults, then this engine's, then ``generation``."""
        return self.network.generation_settings(**{**self.generation, **dict(generation or {})})

    # ------------------------------------------------------------------------------------------------------------
    # steps
    # ------------------------------------------------------------------------------------------------------------

    def preprocess(self, study: Study | Mapping[str, Any]) -> dict[str, Any]:
        """Load a study's views: ``{"image": (V, 1, S, S), "view_mask": (V,), ...}``.

        Raises:
            RadiographReadError: a view that cannot be read (naming the file).
        """
        study = _as_study(study)
        self.load()
        return self._transform({"id": study.study_id, "image": list(study.paths)})

    @torch.no_grad()
    def generate(self, loaded: Sequence[Mapping[str, Any]], generation: Mapping[str, Any] | None = None) -> list[str]:
        """Reports of preprocessed studies (one batch).

        Args:
            loaded: outputs of :meth:`preprocess`.
            generation: settings for this call over the engine's and the model's defaults.
        """
        network = self.load()
        settings = self.generation_settings(generation)
        images, view_mask = stack_views(loaded)
        batch = images.float().to(self.device)
        view_mask = view_mask.to(self.device)
        prompt_ids, prompt_mask = self._prompt  # type: ignore[misc]
        return list(network.generate(batch, view_mask=view_mask, prompt_ids=prompt_ids.repeat(len(loaded), 1),
                                     prompt_attention_mask=prompt_mask.repeat(len(loaded), 1), **settings))  # fmt: skip

    def studies(self, inputs: Any) -> list[Study]:
        """The studies of ``inputs``: paths (see :func:`~monai_r2gen.data.studies.collect_studies`), ``Study``
        objects or study dicts ``{"id", "image": [paths]}``, or a list mixing them (consecutive paths are collected
        together, so DICOM files are grouped by study across them)."""
        if isinstance(inputs, (str, os.PathLike, Study, Mapping)):
            inputs = [inputs]
        studies: list[Study] = []
        paths: list[str | os.PathLike] = []
        for item in inputs:
            if isinstance(item, (str, os.PathLike)):
                paths.append(item)
                continue
            if paths:
                studies.extend(collect_studies(paths, on_error=self.on_error))
                paths = []
            studies.append(_as_study(item))
        if paths:
            studies.extend(collect_studies(paths, on_error=self.on_error))
        return studies

    def _load_views(self, study: Study, skipped: list[dict[str, str]]) -> tuple[dict[str, Any], list[int]]:
        """Preprocess a study's first ``max_views`` readable views; with ``on_error="skip"``, a view that cannot be
        read is recorded in ``skipped`` and the next view takes its place. Views beyond ``max_views`` are recorded in
        ``skipped`` too.

        Returns:
            The preprocessed study and the indices (into ``study.paths``) of the views used.

        Raises:
            R2GenError: with ``on_error="raise"``, the first view that cannot be read; else when no view can be read.
        """
        candidates = list(range(len(study.paths)))
        while True:
            keep = candidates[: self.max_views]
            paths = [study.paths[i] for i in keep]
            try:
                loaded = self._transform({"id": study.study_id, "image": paths})
            except InputFileError as exc:
                if self.on_error == "raise" or exc.path not in paths:
                    raise
                logger.warning("study %s: skipped %s: %s", study.study_id, exc.path, exc.reason)
                skipped.append({"file": exc.path, "reason": exc.reason})
                candidates = [i for i in candidates if study.paths[i] != exc.path]
                if not candidates:
                    raise R2GenError(f"no view could be read ({_reasons(skipped)})") from exc
                continue
            for index in candidates[self.max_views :]:
                reason = f"the model takes {self.max_views} views at most"
                skipped.append({"file": study.paths[index], "reason": reason})
            return loaded, keep

    # ------------------------------------------------------------------------------------------------------------
    # running
    # ------------------------------------------------------------------------------------------------------------

    def iter_results(self, inputs: Any, generation: Mapping[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """Results (see the module docstring) one batch at a time, in study order.

        Args:
            inputs: paths, ``Study`` objects or study dicts (see :meth:`studies`).
            generation: settings for this call over the engine's and the model's defaults.
        """
        studies = self.studies(inputs)
        usable = any(s.ok for s in studies)
        settings = self.generation_settings(generation) if usable else None  # loads the model
        model = self.model_info if usable else None
        for start in range(0, len(studies), self.batch_size):
            yield from self._run_batch(studies[start : start + self.batch_size], settings, model)

    def _run_batch(
        self, studies: Sequence[Study], settings: dict[str, Any] | None, model: dict[str, str] | None
    ) -> list[dict[str, Any]]:
        """Results of a few studies: each loaded on its own, the usable ones generated as one batch."""
        results: list[dict[str, Any]] = []
        pending: list[tuple[dict[str, Any], dict[str, Any]]] = []
        for study in studies:
            skipped = [{"file": path, "reason": reason} for path, reason in study.errors]
            result: dict[str, Any] = {"id": study.study_id, "study_instance_uid": study.study_instance_uid,
                                      "views": [], "view_positions": []}  # fmt: skip
            start = time.perf_counter()
            error = None
            if not study.ok:
                error = f"no usable image ({_reasons(skipped)})" if skipped else "no usable image"
                if self.on_error == "raise":
                    raise RadiographReadError(study.study_id, error)
            else:
                try:
                    loaded, used = self._load_views(study, skipped)
                except R2GenError as exc:
                    if self.on_error == "raise":
                        raise
                    error = str(exc)
                else:
                    positions = list(study.view_positions) or [None] * len(study.paths)
                    result["views"] = [study.paths[i] for i in used]
                    result["view_positions"] = [positions[i] if i < len(positions) else None for i in used]
                    pending.append((result, loaded))
            if error is not None:
                logger.warning("study %s: no report: %s", study.study_id, error)
                result["error"] = error
            result["skipped"] = skipped
            result["generation"] = dict(settings) if settings is not None else None  # a copy per result
            result["model"] = dict(model) if model is not None else None
            result["seconds"] = time.perf_counter() - start
            results.append(result)
        if pending:
            start = time.perf_counter()
            reports = self.generate([loaded for _, loaded in pending], generation=settings)
            share = (time.perf_counter() - start) / len(pending)
            for (result, _), report in zip(pending, reports):
                result["report"] = report
                result["seconds"] += share
        for result in results:
            result["seconds"] = round(result["seconds"], 4)
            if "report" in result:  # key order of the documented contract
                result.update({k: result.pop(k) for k in ("skipped", "generation", "model", "seconds")})
        return results

    def __call__(self, inputs: Any, generation: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Results for input paths, ``Study`` objects or study dicts ``{"id", "image": [paths]}``, in study order.

        Args:
            inputs: see :meth:`studies`.
            generation: settings for this call over the engine's and the model's defaults (``num_beams``,
                ``max_new_tokens``, ``repetition_penalty`` ...); the engine is not changed.
        """
        return list(self.iter_results(inputs, generation=generation))

    def run(
        self, inputs: Any, output_dir: str | os.PathLike, generation: Mapping[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """Generate, then write ``reports.jsonl`` + ``<id>.txt`` (and ``errors.jsonl`` for failed studies)."""
        results = self(inputs, generation=generation)
        written = [r for r in results if "report" in r]
        path = write_reports(written, output_dir)
        failed = [r for r in results if "error" in r]
        if failed:
            (Path(output_dir) / "errors.jsonl").write_text(
                "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in failed), encoding="utf-8"
            )
        logger.info("wrote %d reports to %s (%d studies failed)", len(written), path, len(failed))
        return results


def run_inference(
    inputs: Any, model_dir: str | os.PathLike, output_dir: str | os.PathLike, **kwargs: Any
) -> list[dict[str, Any]]:
    """One call: load the model, write reports for ``inputs`` to ``output_dir`` (kwargs: :class:`ReportInference`)."""
    return ReportInference(model_dir, **kwargs).run(inputs, output_dir)
