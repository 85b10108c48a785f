"""Resuming a killed training where it stopped: the data order (deterministic per epoch, skippable mid-epoch), the RNG
and best-checkpoint state saved with each checkpoint, and finding the latest checkpoint."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.handlers import CheckpointSaver
from monai.utils import IgniteInfo, min_version, optional_import
from torch.utils.data.distributed import DistributedSampler

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")

__all__ = ["RNGState", "ResumableSampler", "ResumeCheckpointSaver", "latest_checkpoint"]

logger = logging.getLogger(__name__)


class ResumableSampler(DistributedSampler):
    """A ``DistributedSampler`` (also for one process) that can skip the first batches of an epoch.

    MONAI workflows call ``set_epoch`` at every epoch start, so the shuffled order depends only on ``(seed, epoch)``;
    after resuming from a mid-epoch checkpoint, :meth:`skip` drops the samples the interrupted run had already seen,
    so the resumed run sees exactly the batches the uninterrupted run would have seen.

    With ``lengths``, batches are grouped by length (as Hugging Face's ``group_by_length``): each run of
    ``batch_size * group_batches`` shuffled samples is sorted by length and cut into batches, and the order of the
    full batches is shuffled again, so a batch is padded to about its own length instead of the longest report
    among random ones.

    Args:
        dataset: the dataset (its length).
        shuffle: shuffle every epoch.
        seed: shuffling seed.
        drop_last: as ``DistributedSampler``.
        lengths: one length per sample (e.g. report characters) to group batches by; None: no grouping.
        batch_size: the loader's batch size (needed with ``lengths``).
        group_batches: batches sorted together.
        **kwargs: ``num_replicas`` / ``rank`` (default: the process group's).
    """

    def __init__(
        self,
        dataset: Any,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        lengths: Sequence[int] | None = None,
        batch_size: int = 1,
        group_batches: int = 16,
        **kwargs: Any,
    ):
        dist = torch.distributed.is_available() and torch.distributed.is_initialized()
        kwargs.setdefault("num_replicas", torch.distributed.get_world_size() if dist else 1)
        kwargs.setdefault("rank", torch.distributed.get_rank() if dist else 0)
        super().__init__(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last, **kwargs)
        if lengths is not None and len(lengths) != len(dataset):
            raise ValueError(f"{len(lengths)} lengths for {len(dataset)} samples")
        self.lengths = list(lengths) if lengths is not None else None
        self.batch_size = max(1, int(batch_size))
        self.group_batches = max(1, int(group_batches))
        self._skip = 0

    def _group_by_length(self, indices: list[int]) -> list[int]:
        assert self.lengths is not None
        lengths, size, width = self.lengths, self.batch_size, self.batch_size * self.group_batches
        ordered = []
        for start in range(0, len(indices), width):
            ordered += sorted(indices[start : start + width], key=lambda i: -lengths[i])
        batches = [ordered[i : i + size] for i in range(0, len(ordered), size)]
        full = [b for b in batches if len(b) == size]
        generator = torch.Generator()
        generator.manual_seed(self.seed + 7919 * self.epoch + 1)
        order = torch.randperm(len(full), generator=generator).tolist() if self.shuffle else range(len(full))
        rest = batches[len(full) :]  # a last, partial batch stays last so that batches keep their boundaries
        return [i for b in [full[k] for k in order] + rest for i in b]

    def skip(self, num_samples: int) -> None:
        """Skip ``num_samples`` samples of the next iteration over the sampler (then back to 0)."""
        self._skip = max(0, int(num_samples))

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        if self.lengths is not None and self.batch_size > 1:
            indices = self._group_by_length(indices)
        skip, self._skip = self._skip, 0
        return iter(indices[skip:])


def _attach_resume_skip(trainer: Any, sampler: ResumableSampler, batch_size: int) -> None:
    """After a checkpoint is loaded (Events.STARTED), skip the samples already consumed in the current epoch."""

    def _skip(engine: Any) -> None:
        length = engine.state.epoch_length
        if length and engine.state.iteration % length:
            consumed = (engine.state.iteration % length) * batch_size
            sampler.skip(consumed)
            logger.info("resuming mid-epoch: skipping %d samples already seen", consumed)

    trainer.add_event_handler(Events.STARTED, _skip)


class RNGState:
    """Checkpointable torch RNG state (CPU, and CUDA when available), so a resumed run draws the same dropout masks."""

    def state_dict(self) -> dict[str, Any]:
        state = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        torch.set_rng_state(state["cpu"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda"])


class _SaverState:
    """Checkpointable best-model tracking of a ``CheckpointSaver`` (so a resumed run keeps its best score)."""

    def __init__(self, saver: Any, evaluator: Any) -> None:
        self.saver = saver
        self.evaluator = evaluator

    def state_dict(self) -> dict[str, Any]:
        ckpt = getattr(self.saver, "_key_metric_checkpoint", None)
        saved = [[float(p), str(f)] for p, f in ckpt._saved] if ckpt is not None else []
        return {
            "saved": saved,
            "best_metric": float(self.evaluator.state.best_metric),
            "best_metric_epoch": int(self.evaluator.state.best_metric_epoch),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        ckpt = getattr(self.saver, "_key_metric_checkpoint", None)
        if ckpt is not None and state.get("saved"):
            ckpt.load_state_dict({"saved": [tuple(item) for item in state["saved"]]})
        self.evaluator.state.best_metric = float(state.get("best_metric", -1))
        self.evaluator.state.best_metric_epoch = int(state.get("best_metric_epoch", -1))


def latest_checkpoint(directory: str | os.PathLike, prefix: str = "last") -> Path | None:
    """The resume checkpoint with the highest iteration in ``directory`` (``{prefix}_*=<iteration>.pt``)."""
    directory = Path(directory)
    best: tuple[int, Path] | None = None
    for path in directory.glob(f"{prefix}_*.pt"):
        match = re.search(r"=(\d+)\.pt$", path.name)
        if match and (best is None or int(match.group(1)) > best[0]):
            best = (int(match.group(1)), path)
    return best[1] if best else None


class ResumeCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` for the resume checkpoints, without the checkpoint it writes when an exception
    (Ctrl-C, a crash) stops the run: that one would record the iteration under way with the weights, learning-rate
    schedule and data order of some point inside it, so a resumed run would not continue the same run. The exception
    propagates; the last interval checkpoint is whole and a restarted run continues from it.
    """

    def exception_raised(self, engine: Any, e: Exception) -> None:
        """Re-raise ``e`` without saving."""
        raise e
