"""Phantom chest radiographs with known findings, reports and CheXpert labels (the embedded default data).

- :func:`generate_dataset` writes PNG / DICOM studies, ``annotation.json``, ``labels.csv`` and ``findings.json``;
- :class:`SyntheticReportDataset` renders fresh studies every epoch, on the fly;
- :func:`render_study` renders one study in memory (images, report, labels, finding boxes);
- :func:`rewrite_reports` re-writes studies' reports from ``findings.json`` with other paraphrases (``ceiling``).

Modules: ``geometry`` (pixel grid, pose, drawing primitives), ``anatomy`` (normal chest), ``findings`` (what each
finding looks like and where), ``reports`` (wording), ``labels`` (CheXpert ground truth), ``study`` (one study from
its seed), ``writer`` (files on disk), ``dataset`` (on-the-fly MONAI dataset), ``ceiling`` (re-written reports).
Names resolve lazily so that ``generate_dataset`` does not import torch.
"""

from __future__ import annotations

from monai_r2gen._lazy import lazy_exports

_EXPORTS = {
    "generate_dataset": "monai_r2gen.data.synthetic.writer",
    "GENERATOR_VERSION": "monai_r2gen.data.synthetic.writer",
    "SyntheticReportDataset": "monai_r2gen.data.synthetic.dataset",
    "study_item": "monai_r2gen.data.synthetic.dataset",
    "render_study": "monai_r2gen.data.synthetic.study",
    "SyntheticStudy": "monai_r2gen.data.synthetic.study",
    "Finding": "monai_r2gen.data.synthetic.findings",
    "FINDING_KINDS": "monai_r2gen.data.synthetic.findings",
    "FINDING_LABELS": "monai_r2gen.data.synthetic.findings",
    "DEFAULT_PREVALENCE": "monai_r2gen.data.synthetic.findings",
    "rewrite_reports": "monai_r2gen.data.synthetic.ceiling",
    "study_report": "monai_r2gen.data.synthetic.ceiling",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
