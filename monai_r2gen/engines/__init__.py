"""Engines: freeze policies (stages), training and evaluation workflows, handlers and the feature cache.

Names are resolved lazily so that ``import monai_r2gen.engines`` stays cheap.
"""

from __future__ import annotations

from monai_r2gen._lazy import lazy_exports

_EXPORTS = {
    "apply_stage": "monai_r2gen.engines.stages",
    "trainable_summary": "monai_r2gen.engines.stages",
    "get_stage": "monai_r2gen.engines.stages",
    "STAGES": "monai_r2gen.engines.stages",
    "StagePreset": "monai_r2gen.engines.stages",
    "DEFAULT_STAGES": "monai_r2gen.engines.stage_settings",
    "DEFAULT_STAGE_DEFAULTS": "monai_r2gen.engines.stage_settings",
    "DEFAULT_STAGE_SETTINGS": "monai_r2gen.engines.stage_settings",
    "StageSettings": "monai_r2gen.engines.stage_settings",
    "ReportTrainingWorkflow": "monai_r2gen.engines.workflows",
    "ReportEvaluationWorkflow": "monai_r2gen.engines.evaluation_workflow",
    "create_stage_trainer": "monai_r2gen.engines.engine_factories",
    "create_report_evaluator": "monai_r2gen.engines.engine_factories",
    "TrainableState": "monai_r2gen.engines.handlers",
    "ReportScores": "monai_r2gen.engines.handlers",
    "ReportWriter": "monai_r2gen.engines.handlers",
    "FeatureCache": "monai_r2gen.engines.feature_cache",
    "CachedTokensd": "monai_r2gen.engines.feature_cache",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
