"""Analyses of soft visual prompts and attention, and the training protocol's ablation.

Names are resolved lazily so that ``import monai_r2gen.analysis`` stays cheap. The command-line glue is in
:mod:`monai_r2gen.analysis.cli` (``monai-r2gen analyze ...``).
"""

from __future__ import annotations

from monai_r2gen._lazy import lazy_exports

_EXPORTS = {
    "analyze_prompts": "monai_r2gen.analysis.runs",
    "analyze_attention": "monai_r2gen.analysis.runs",
    "ABLATION_VARIANTS": "monai_r2gen.analysis.ablation",
    "run_ablation": "monai_r2gen.analysis.ablation",
    "ablation_table": "monai_r2gen.analysis.ablation",
    "variant_stages": "monai_r2gen.analysis.ablation",
    "PromptStatistics": "monai_r2gen.analysis.prompts",
    "soft_prompt_statistics": "monai_r2gen.analysis.prompts",
    "text_embedding_statistics": "monai_r2gen.analysis.prompts",
    "prompt_table": "monai_r2gen.analysis.prompts",
    "write_prompt_report": "monai_r2gen.analysis.prompts",
    "AttentionAnalysis": "monai_r2gen.analysis.attention",
    "StudyAttention": "monai_r2gen.analysis.attention",
    "collect_attention": "monai_r2gen.analysis.attention",
    "visual_attention_share": "monai_r2gen.analysis.attention",
    "word_heatmaps": "monai_r2gen.analysis.attention",
    "box_attention": "monai_r2gen.analysis.grounding",
    "grounding_table": "monai_r2gen.analysis.grounding",
    "summarize_grounding": "monai_r2gen.analysis.grounding",
    "load_model": "monai_r2gen.analysis.loading",
    "load_studies": "monai_r2gen.analysis.loading",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
