"""Metrics: NLG scores (pycocoevalcap), clinical efficacy (CheXpert-14 labeler) and finding side / severity accuracy.

:func:`score_reports` is the one scoring function every path calls (validation, the bundle's ``evaluating``,
``monai-r2gen evaluate``, the ablation); :func:`compare_reports` is the paired test of two systems.

Names are resolved lazily so that ``import monai_r2gen.metrics`` stays cheap.
"""

from __future__ import annotations

from monai_r2gen._lazy import lazy_exports

_EXPORTS = {
    "score_reports": "monai_r2gen.metrics.report_scores",
    "compare_reports": "monai_r2gen.metrics.report_scores",
    "DEFAULT_CLEAN_STYLE": "monai_r2gen.metrics.report_scores",
    "clean_report": "monai_r2gen.metrics.cleaning",
    "REPORT_STYLES": "monai_r2gen.metrics.cleaning",
    "StudyStatistics": "monai_r2gen.metrics.bootstrap",
    "study_statistics": "monai_r2gen.metrics.bootstrap",
    "bootstrap_intervals": "monai_r2gen.metrics.bootstrap",
    "paired_test": "monai_r2gen.metrics.bootstrap",
    "nlg_scores": "monai_r2gen.metrics.nlg",
    "NLGMetric": "monai_r2gen.metrics.nlg",
    "CheXpertLabeler": "monai_r2gen.metrics.chexpert",
    "CHEXPERT_LABELS": "monai_r2gen.metrics.chexpert",
    "tokenize_reports": "monai_r2gen.metrics.nlg",
    "report_output_transform": "monai_r2gen.metrics.nlg",
    "NLG_KEYS": "monai_r2gen.metrics.nlg",
    "ce_scores": "monai_r2gen.metrics.clinical",
    "ce_score_keys": "monai_r2gen.metrics.clinical",
    "CEMetric": "monai_r2gen.metrics.clinical",
    "CE5_LABELS": "monai_r2gen.metrics.clinical",
    "CheXbertLabeler": "monai_r2gen.metrics.external",
    "chexbert_scores": "monai_r2gen.metrics.external",
    "radgraph_scores": "monai_r2gen.metrics.external",
    "read_finding_attributes": "monai_r2gen.metrics.attributes",
    "load_findings": "monai_r2gen.metrics.attributes",
    "attribute_scores": "monai_r2gen.metrics.attributes",
    "attribute_score_keys": "monai_r2gen.metrics.attributes",
    "format_attribute_table": "monai_r2gen.metrics.attributes",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
