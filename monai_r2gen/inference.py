"""The one inference path: load a trained model once, preprocess studies, generate reports, write them out.

Used by the bundle's ``inference`` run id, and meant for the CLI (``monai-r2gen generate``), MONAI Label and MONAI
Deploy, so every front end writes the same reports for the same images.

Inputs (:func:`collect_studies`):

- an image file (DICOM, PNG, JPEG, TIFF): one single-view study;
- a folder whose sub-folders hold images: one study per sub-folder (its images are the views);
- a folder of DICOM files: one study per StudyInstanceUID (files without the tag: one study per file);
- a folder of other images: one single-view study per file;
- a manifest (``.json`` annotation file, ``.jsonl``, ``.csv``) read with
  :func:`monai_r2gen.data.datasets.read_manifest`;
- a list of any of these.

Outputs (:func:`write_reports`): ``reports.jsonl`` (one line per study: id, images, report) and one ``<id>.txt`` per
study in the output folder.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from monai_r2gen.errors import InputFileError, R2GenError

__all__ = ["ReportInference", "collect_studies", "write_reports", "run_inference", "IMAGE_SUFFIXES"]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".dcm", ".dicom", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
_MANIFEST_SUFFIXES = (".json", ".jsonl", ".ndjson", ".csv")


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in (".dcm", ".dicom"):
        return True
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def _is_image(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and (
        path.suffix.lower() in IMAGE_SUFFIXES or (path.suffix == "" and _is_dicom(path))
    )


def _study_uid(path: Path) -> str | None:
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["StudyInstanceUID"])
    except Exception:  # unreadable headers are reported by the loader with a typed error
        return None
    value = getattr(ds, "StudyInstanceUID", None)
    return str(value) if value else None


def _safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "study"


def _studies_in_folder(folder: Path) -> list[dict[str, Any]]:
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and any(_is_image(f) for f in p.iterdir()))
    if subdirs:
        return [{"id": _safe_id(p.name), "image": [str(f) for f in sorted(p.iterdir()) if _is_image(f)]}
                for p in subdirs]  # fmt: skip
    files = sorted(f for f in folder.iterdir() if _is_image(f))
    if not files:
        raise InputFileError(folder, "no image files (DICOM, PNG, JPEG, TIFF) found")
    dicoms = [f for f in files if _is_dicom(f)]
    others = [f for f in files if f not in dicoms]
    studies: list[dict[str, Any]] = []
    groups: dict[str, list[Path]] = {}
    for f in dicoms:
        uid = _study_uid(f)
        groups.setdefault(uid or f"file:{f.name}", []).append(f)
    for index, (uid, members) in enumerate(groups.items()):
        if uid.startswith("file:"):
            name = members[0].stem
        elif len(groups) == 1:
            name = folder.name
        else:
            name = f"{folder.name}_{index:03d}"
        studies.append({"id": _safe_id(name), "image": [str(m) for m in members]})
    studies.extend({"id": _safe_id(f.stem), "image": [str(f)]} for f in others)
    return studies


def collect_studies(inputs: str | os.PathLike | Sequence[str | os.PathLike]) -> list[dict[str, Any]]:
    """Group input paths into studies ``{"id", "image": [view paths]}`` (see the module docstring).

    Raises:
        InputFileError: a path that does not exist or a folder without images.
        ManifestError: a malformed manifest.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    studies: list[dict[str, Any]] = []
    for item in inputs:
        path = Path(item)
        if not path.exists():
            raise InputFileError(path, "does not exist")
        if path.is_dir():
            studies.extend(_studies_in_folder(path))
        elif path.suffix.lower() in _MANIFEST_SUFFIXES:
            from monai_r2gen.data.datasets import read_manifest

            studies.extend({"id": str(e["id"]), "image": list(e["image"]), **({"report": e["report"]} if
                            "report" in e else {})} for e in read_manifest(path))  # fmt: skip
        else:
            studies.append({"id": _safe_id(path.stem), "image": [str(path)]})
    seen: dict[str, int] = {}
    for study in studies:  # unique ids (output file names)
        count = seen.get(study["id"], 0)
        seen[study["id"]] = count + 1
        if count:
            study["id"] = f"{study['id']}_{count}"
    return studies


def write_reports(results: Iterable[Mapping[str, Any]], output_dir: str | os.PathLike) -> Path:
    """Write ``reports.jsonl`` and one ``<id>.txt`` per study; returns the JSONL path."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = list(results)
    jsonl = out / "reports.jsonl"
    with open(jsonl, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(dict(row), ensure_ascii=False) + "\n")
    for row in rows:
        (out / f"{_safe_id(str(row['id']))}.txt").write_text(str(row["report"]) + "\n", encoding="utf-8")
    return jsonl


class ReportInference:
    """Load a trained generator once and write reports for studies.

    Args:
        model_dir: directory written by ``RadiologyReportGenerator.save_pretrained``.
        encoder_path: local base encoder when the saved model refers to one.
        llm_path: local base LLM when the saved model refers to one.
        device: torch device (default: cuda when available).
        image_size: view size (default: the model config's).
        max_views: views per study (default: the model config's).
        batch_size: studies generated together.
        generation: ``generate()`` settings over the model's defaults.
        on_error: "raise" or "skip": a study whose image cannot be read is skipped with a logged reason and
            reported in the results with ``"error"`` instead of ``"report"``.
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
    ) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.model_dir = Path(model_dir)
        self.encoder_path = encoder_path
        self.llm_path = llm_path
        self.device = torch.device(device) if device is not None else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu"
        )
        self._image_size = image_size
        self._max_views = max_views
        self.batch_size = int(batch_size)
        self.generation = dict(generation or {})
        self.on_error = on_error
        self._network: Any = None
        self._transform: Any = None

    @property
    def network(self) -> Any:
        """The generator, loaded on first use."""
        if self._network is None:
            from monai_r2gen.networks.generator import RadiologyReportGenerator

            start = time.perf_counter()
            network = RadiologyReportGenerator.from_pretrained(
                str(self.model_dir), encoder_path=self.encoder_path, llm_path=self.llm_path
            )
            self._network = network.to(self.device).eval()
            logger.info("loaded %s in %.1f s", self.model_dir, time.perf_counter() - start)
        return self._network

    @property
    def image_size(self) -> int:
        return int(self._image_size or self.network.config.image_size or 224)

    @property
    def max_views(self) -> int:
        return int(self._max_views or self.network.config.max_views)

    def preprocess(self, study: Mapping[str, Any]) -> dict[str, Any]:
        """Load a study's views: ``{"image": (V, 1, S, S), "view_mask": (V,), ...}``."""
        if self._transform is None:
            from monai_r2gen.data.transforms import LoadStudyViewsd

            self._transform = LoadStudyViewsd(keys="image", spatial_size=self.image_size, max_views=self.max_views)
        return self._transform(dict(study))

    @torch.no_grad()
    def generate(self, loaded: Sequence[Mapping[str, Any]]) -> list[str]:
        """Reports of preprocessed studies (one batch)."""
        views = max(int(d["image"].shape[0]) for d in loaded)
        images, masks = [], []
        for d in loaded:
            image = torch.as_tensor(d["image"]).float()
            mask = torch.as_tensor(d.get("view_mask", torch.ones(image.shape[0], dtype=torch.bool))).bool()
            if image.shape[0] < views:
                image = torch.cat([image, image.new_zeros((views - image.shape[0], *image.shape[1:]))])
                mask = torch.cat([mask, mask.new_zeros(views - mask.shape[0])])
            images.append(image)
            masks.append(mask)
        batch = torch.stack(images).to(self.device)
        view_mask = torch.stack(masks).to(self.device)
        return list(self.network.generate(batch, view_mask=view_mask, **self.generation))

    def __call__(self, inputs: str | os.PathLike | Sequence[Any]) -> list[dict[str, Any]]:
        """Reports for input paths (see :func:`collect_studies`) or study dicts ``{"id", "image": [paths]}``."""
        if isinstance(inputs, (list, tuple)) and inputs and isinstance(inputs[0], Mapping):
            studies = [dict(s) for s in inputs]
        else:
            studies = collect_studies(inputs)  # type: ignore[arg-type]
        results: list[dict[str, Any]] = []
        pending: list[tuple[dict[str, Any], dict[str, Any]]] = []

        def flush() -> None:
            if not pending:
                return
            reports = self.generate([loaded for _, loaded in pending])
            for (study, _), report in zip(pending, reports):
                results.append({"id": study["id"], "images": list(study["image"]), "report": report})
            pending.clear()

        for study in studies:
            try:
                loaded = self.preprocess(study)
            except R2GenError as exc:
                if self.on_error == "raise":
                    raise
                logger.warning("study %s skipped: %s", study["id"], exc)
                results.append({"id": study["id"], "images": list(study["image"]), "error": str(exc)})
                continue
            pending.append((study, loaded))
            if len(pending) >= self.batch_size:
                flush()
        flush()
        order = {s["id"]: i for i, s in enumerate(studies)}
        results.sort(key=lambda r: order[r["id"]])
        return results

    def run(self, inputs: str | os.PathLike | Sequence[Any], output_dir: str | os.PathLike) -> list[dict[str, Any]]:
        """Generate and write ``reports.jsonl`` + ``<id>.txt`` files to ``output_dir``."""
        results = self(inputs)
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
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    model_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    **kwargs: Any,
) -> list[dict[str, Any]]:
    """One call: load the model, write reports for ``inputs`` to ``output_dir`` (kwargs: :class:`ReportInference`)."""
    return ReportInference(model_dir, **kwargs).run(inputs, output_dir)
