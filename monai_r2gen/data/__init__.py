"""Data: radiograph loading transforms, report processing, datasets and synthetic phantoms.

Names are resolved lazily so that ``import monai_r2gen.data`` stays cheap.
"""

from __future__ import annotations

from monai_r2gen._lazy import lazy_exports

_EXPORTS = {
    "LoadRadiograph": "monai_r2gen.data.transforms",
    "LoadRadiographd": "monai_r2gen.data.transforms",
    "LoadStudyViewsd": "monai_r2gen.data.transforms",
    "ResizeWithPadSquare": "monai_r2gen.data.transforms",
    "ResizeWithPadSquared": "monai_r2gen.data.transforms",
    "NormalizeToEncoderd": "monai_r2gen.data.transforms",
    "read_radiograph": "monai_r2gen.data.transforms",
    "make_radiograph_dataset": "monai_r2gen.data.dicom",
    "write_dataset": "monai_r2gen.data.dicom",
    "read_dicom_pixels": "monai_r2gen.data.dicom",
    "RandRadiographAugmentd": "monai_r2gen.data.transforms",
    "clean_report": "monai_r2gen.data.reports",
    "extract_sections": "monai_r2gen.data.reports",
    "select_target": "monai_r2gen.data.reports",
    "expand_prompt": "monai_r2gen.data.reports",
    "encode_prompt": "monai_r2gen.data.reports",
    "TokenizeReportd": "monai_r2gen.data.reports",
    "ReportFindingLabelsd": "monai_r2gen.data.reports",
    "DEFAULT_PROMPT": "monai_r2gen.data.reports",
    "IMAGE_TOKEN": "monai_r2gen.data.reports",
    "train_report_tokenizer": "monai_r2gen.data.tokenizer",
    "add_image_token": "monai_r2gen.data.tokenizer",
    "ReportDataset": "monai_r2gen.data.datasets",
    "read_manifest": "monai_r2gen.data.datasets",
    "ReportCollate": "monai_r2gen.data.datasets",
    "collect_studies": "monai_r2gen.data.studies",
    "Study": "monai_r2gen.data.studies",
    "generate_dataset": "monai_r2gen.data.synthetic",
    "SyntheticReportDataset": "monai_r2gen.data.synthetic",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
