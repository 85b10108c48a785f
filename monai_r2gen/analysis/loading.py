"""What the analyses run on: a model (a trained directory, a training stage, or the embedded default) and studies.

- :func:`load_model`: a directory written by ``RadiologyReportGenerator.save_pretrained``, or ``"embedded"`` for the
  embedded default built from its config (random initialisation: good for checking the analyses, not for reading
  them; analyse a trained directory to learn something about a model).
- :func:`load_stage_weights`: put a training stage's hand-over weights (``stages/<name>/trainable.safetensors`` of a
  training run) into a model, e.g. to compare the soft prompts after stage 1 and after stage 2.
- :func:`load_studies`: the studies of a manifest split, preprocessed like training and inference
  (``LoadStudyViewsd``: views resized and padded to the model's image size).
- :func:`read_finding_boxes`: the boxes where the phantom generator drew each finding (``findings.json`` of a
  synthetic data set).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from monai_r2gen.errors import ManifestError, ModelConfigError

__all__ = [
    "EMBEDDED",
    "load_model",
    "load_stage_weights",
    "load_studies",
    "stack_studies",
    "read_finding_boxes",
    "train_reports",
]

logger = logging.getLogger(__name__)

#: the name that selects the embedded default instead of a model directory
EMBEDDED = "embedded"


def train_reports(manifest: str | os.PathLike, split: str = "train") -> list[str]:
    """Report texts of a manifest split (the corpus the embedded default's tokenizer is trained on)."""
    from monai_r2gen.data.datasets import read_manifest

    return [str(item.get("report", "")) for item in read_manifest(manifest, split=split) if item.get("report")]


def load_model(
    model: str | os.PathLike | None = None,
    *,
    corpus: Sequence[str] | None = None,
    encoder_path: str | None = None,
    llm_path: str | None = None,
    device: str | torch.device = "cpu",
    eager_attention: bool = True,
) -> Any:
    """A report generator for analysis, in eval mode, with eager attention (so the LLM can return its weights).

    Args:
        model: a model directory, or None / ``"embedded"`` for the embedded default built from its config.
        corpus: report texts for the embedded default's tokenizer (e.g. :func:`train_reports` of the data set).
        encoder_path: base encoder of a directory that holds only deltas.
        llm_path: base LLM of a directory that holds only deltas.
        device: torch device.
        eager_attention: switch the LLM to ``attn_implementation="eager"`` (needed for attention weights).

    Raises:
        ModelConfigError: not a model directory, or the embedded default without a corpus.
    """
    from monai_r2gen.networks.factory import build_generator, embedded_default_config
    from monai_r2gen.networks.generator import RadiologyReportGenerator

    if model is None or str(model) == EMBEDDED:
        if not corpus:
            raise ModelConfigError("the embedded default is built from its config and needs report texts to train "
                                   "its tokenizer on (give a manifest)")  # fmt: skip
        logger.warning("analysing the embedded default with random weights: the numbers describe an untrained model")
        network = build_generator(embedded_default_config(), corpus=list(corpus))
    else:
        network = RadiologyReportGenerator.from_pretrained(os.fspath(model), encoder_path=encoder_path,
                                                           llm_path=llm_path)  # fmt: skip
    if eager_attention:
        set_eager_attention(network)
    return network.to(device).eval()


def set_eager_attention(network: Any) -> None:
    """Switch the generator's LLM to eager attention (SDPA / flash kernels return no attention weights)."""
    base = network.base_llm
    if getattr(base.config, "_attn_implementation", None) == "eager":
        return
    try:
        base.set_attn_implementation("eager")
    except (AttributeError, ValueError) as exc:  # older transformers: the config attribute is read at call time
        logger.info("set_attn_implementation failed (%s); setting the config attribute", exc)
        base.config._attn_implementation = "eager"


def load_stage_weights(network: Any, run_dir: str | os.PathLike, stage: str) -> list[str]:
    """Load a completed stage's hand-over weights (``<run_dir>/stages/<stage>/trainable.safetensors``) into a model.

    Parameters the stage trained but the model lacks (e.g. LoRA weights of a later stage's adapter) are skipped with
    a log line; so are none when the model has the same structure as during training.

    Args:
        network: a generator built like the one trained (e.g. :func:`load_model` of the run's final model).
        run_dir: the training run's output directory.
        stage: stage name ("stage1", "stage2" ...).

    Returns:
        the names of the parameters that were loaded.

    Raises:
        ModelConfigError: no such completed stage, or a shape mismatch.
    """
    from safetensors.torch import load_file

    path = Path(run_dir) / "stages" / stage / "trainable.safetensors"
    if not path.is_file():
        raise ModelConfigError(f"{path}: no hand-over weights of stage {stage!r} (has the stage completed?)")
    state = load_file(str(path))
    params = dict(network.named_parameters())
    loaded, skipped = [], []
    with torch.no_grad():
        for name, value in state.items():
            if name not in params:
                skipped.append(name)
                continue
            if params[name].shape != value.shape:
                raise ModelConfigError(f"{path}: {name} has shape {tuple(value.shape)}, the model "
                                       f"{tuple(params[name].shape)}")  # fmt: skip
            params[name].copy_(value.to(params[name].device, params[name].dtype))
            loaded.append(name)
    if skipped:
        logger.info("stage %s: %d tensors not in this model were skipped (e.g. %s)", stage, len(skipped), skipped[0])
    logger.info("stage %s: loaded %d tensors from %s", stage, len(loaded), path)
    return loaded


def load_studies(
    manifest: str | os.PathLike,
    split: str | None = "test",
    *,
    image_root: str | os.PathLike | None = None,
    max_studies: int | None = None,
    image_size: int = 128,
    max_views: int = 2,
) -> list[dict[str, Any]]:
    """The studies of a manifest split, views loaded and resized / padded like in training.

    Returns:
        items ``{"id", "image": (max_views, 1, S, S) float32 in [0, 1], "view_mask": (max_views,) bool,
        "report", "paths"}``, in manifest order.

    Raises:
        ManifestError: unreadable manifest or an empty split.
    """
    from monai_r2gen.data.datasets import read_manifest
    from monai_r2gen.data.transforms import LoadStudyViewsd

    items = read_manifest(manifest, split=split, image_root=image_root)
    if max_studies is not None:
        items = items[: int(max_studies)]
    if not items:
        raise ManifestError(manifest, f"no study in split {split!r}")
    load = LoadStudyViewsd(keys="image", spatial_size=int(image_size), max_views=int(max_views))
    studies = []
    for item in items:
        out = load({"image": list(item["image"])})
        studies.append({"id": str(item["id"]), "image": torch.as_tensor(out["image"]).float(),
                        "view_mask": torch.as_tensor(out["view_mask"]).bool(), "report": item.get("report", ""),
                        "paths": list(item["image"])})  # fmt: skip
    return studies


def stack_studies(studies: Sequence[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images (B, V, 1, S, S), view_mask (B, V))`` of loaded studies (same ``V`` and ``S``)."""
    return torch.stack([s["image"] for s in studies]), torch.stack([s["view_mask"] for s in studies])


def read_finding_boxes(path: str | os.PathLike) -> dict[str, list[dict[str, Any]]]:
    """Finding boxes of a synthetic data set: study id -> ``[{"kind", "labels", "boxes": {view: [[x0, y0, x1, y1],
    ...]}}]`` (normalised coordinates, origin top-left), read from its ``findings.json``.

    Args:
        path: ``findings.json`` or the data set folder holding it.

    Raises:
        ManifestError: missing or malformed file.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "findings.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        studies = data["studies"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ManifestError(path, f"not a phantom findings file ({exc})") from exc
    out: dict[str, list[dict[str, Any]]] = {}
    for study_id, record in studies.items():
        out[str(study_id)] = [
            {"kind": f.get("kind"), "labels": list(f.get("labels", [])), "boxes": dict(f.get("boxes", {}))}
            for f in record.get("findings", [])
        ]
    return out
