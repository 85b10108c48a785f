"""On-the-fly phantom studies as a MONAI ``Dataset``: fresh studies every epoch from a seed stream.

A small model trained on a fixed set of a few thousand phantom studies memorises them; rendering new studies each
epoch removes that shortcut. Items look like those of :class:`~monai_r2gen.data.datasets.ReportDataset` after
``LoadStudyViewsd`` (images already loaded), so ``TokenizeReportd`` and ``ReportCollate`` apply unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import Dataset

from monai_r2gen.data.synthetic.labels import CHEXPERT_LABELS, positive_labels
from monai_r2gen.data.synthetic.study import STREAM_ONLINE, SyntheticStudy, check_prevalence, render_study

__all__ = ["SyntheticReportDataset", "study_item"]

logger = logging.getLogger(__name__)


def study_item(study: SyntheticStudy, max_views: int = 2) -> dict[str, Any]:
    """A rendered study as a report-generation item.

    Keys: ``id``; ``image`` float32 tensor ``(max_views, 1, S, S)`` in [0, 1] (display convention, frontal first,
    missing views zero); ``view_mask`` bool ``(max_views,)``; ``report`` (FINDINGS section), ``report_full``,
    ``impression``, ``report_target`` ("findings"); ``chexpert_labels`` float32 ``(14,)`` in
    :data:`CHEXPERT_LABELS` order, 1 where the finding is drawn (No Finding: 1 when nothing but support devices is),
    0 elsewhere (image truth, so blank and negated are both 0 here); ``view_position`` ("PA"/"AP" of the frontal
    view); ``split`` ("train").

    (``chexpert_labels`` is not called ``labels``: ``TokenizeReportd`` writes the token labels under that key.)
    """
    views = study.views[:max_views]
    size = views[0].image.shape[0]
    image = torch.zeros((max_views, 1, size, size), dtype=torch.float32)
    mask = torch.zeros(max_views, dtype=torch.bool)
    for k, view in enumerate(views):
        image[k, 0] = torch.from_numpy(view.image)
        mask[k] = True
    positive = positive_labels(study.findings)
    truth = [1.0 if name in positive else 0.0 for name in CHEXPERT_LABELS]
    truth[CHEXPERT_LABELS.index("No Finding")] = 0.0 if positive - {"Support Devices"} else 1.0
    return {
        "id": study.id,
        "image": image,
        "view_mask": mask,
        "report": study.report.findings,
        "report_full": study.report.full,
        "impression": study.report.impression,
        "report_target": "findings",
        "chexpert_labels": torch.tensor(truth, dtype=torch.float32),
        "view_position": views[0].projection,
        "split": "train",
    }


class SyntheticReportDataset(Dataset):
    """Phantom chest X-ray studies rendered on the fly, different every epoch, deterministic per (seed, epoch).

    Study ``i`` of epoch ``e`` is rendered from the seed stream ``(seed, online, e, i)``, which never coincides with
    the studies written by :func:`~monai_r2gen.data.synthetic.generate_dataset` for the same seed (so a dataset
    written to disk can serve as a held-out test set). Call :meth:`set_epoch` at the start of each epoch (e.g. from
    an Ignite ``EPOCH_STARTED`` handler); with ``DataLoader(persistent_workers=True)`` the workers keep their own
    copy of the epoch, so use non-persistent workers.

    Args:
        n_studies_per_epoch: number of studies per epoch (the dataset's length).
        seed: stream seed.
        image_size: side of the square images in pixels.
        transform: a MONAI (dictionary) transform or sequence of transforms applied to each item (e.g.
            ``TokenizeReportd``, ``NormalizeToEncoderd``); the images are already loaded.
        lateral_fraction: share of studies with a lateral view.
        prevalence: per-finding probabilities (see :data:`~.findings.DEFAULT_PREVALENCE`).
        max_views: views per item (1: frontal only, 2: frontal + lateral slot).
        epoch: the initial epoch.

    Raises:
        ValueError: on invalid arguments.
    """

    def __init__(
        self,
        n_studies_per_epoch: int = 1000,
        seed: int = 0,
        image_size: int = 224,
        transform: Callable | Sequence[Callable] | None = None,
        lateral_fraction: float = 0.4,
        prevalence: dict[str, float] | None = None,
        max_views: int = 2,
        epoch: int = 0,
    ) -> None:
        if int(n_studies_per_epoch) < 1:
            raise ValueError(f"n_studies_per_epoch must be >= 1, got {n_studies_per_epoch}")
        if not 32 <= int(image_size) <= 2048:
            raise ValueError(f"image_size must be in [32, 2048], got {image_size}")
        if int(max_views) not in (1, 2):
            raise ValueError(f"max_views must be 1 or 2, got {max_views}")
        if not 0.0 <= float(lateral_fraction) <= 1.0:
            raise ValueError(f"lateral_fraction must be in [0, 1], got {lateral_fraction}")
        self.seed = int(seed)
        self.image_size = int(image_size)
        self.lateral_fraction = float(lateral_fraction) if int(max_views) > 1 else 0.0
        self.prevalence = check_prevalence(prevalence)
        self.max_views = int(max_views)
        self.epoch = int(epoch)
        super().__init__(data=np.arange(int(n_studies_per_epoch)).tolist(), transform=transform)

    def set_epoch(self, epoch: int) -> None:
        """Switch to the studies of ``epoch``."""
        self.epoch = int(epoch)

    def render(self, index: int) -> SyntheticStudy:
        """The study behind item ``index`` of the current epoch (with its findings, boxes and labels)."""
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} studies")
        return render_study(
            self.seed,
            index,
            image_size=self.image_size,
            lateral_fraction=self.lateral_fraction,
            prevalence=self.prevalence,
            stream=STREAM_ONLINE,
            epoch=self.epoch,
        )

    def _transform(self, index: int) -> Any:
        item = study_item(self.render(index), self.max_views)
        return self.transform(item)
