"""Model cards: a ``README.md`` beside the weights of a saved report generator, in the layout of Hugging Face cards.

A card is YAML front matter (``license``, ``library_name``, ``pipeline_tag``, ``tags``, ``base_model`` and
``base_model_relation`` when a base is a Hub model, ``model-index`` when evaluation scores are known) followed by
Markdown sections: model description (base encoder and LLM with their fingerprints, what the folder holds), training
data, training procedure (each stage's settings and result), evaluation (scores and the settings they were computed
with), intended use, limitations (research only, not a medical device, every report reviewed by a radiologist), how
to load it and the files. A model directory can therefore be shared, or pushed to the Hub, as it is.

Two layers:

- :func:`build_model_card` is a pure function from a dict of facts to the card's text;
- :func:`model_card_facts` gathers those facts from a model directory: ``generator.json`` (config, bases and their
  fingerprints, contents), ``training_summary.json`` (written by the training workflow: per-stage results and, when
  recorded, per-stage settings and the data set) and ``evaluation.json`` (the scores :func:`write_model_card` was
  given). A summary or evaluation record naming another model (its ``"model"`` key, a
  :func:`monai_r2gen.inference.model_fingerprint`, differs from this directory's) is ignored: the files stay beside
  the weights when a folder is saved into again, and the scores of earlier weights must not describe new ones.

``RadiologyReportGenerator.save_pretrained`` writes the card inside its staged folder, so the card and the weights
appear together. :func:`write_model_card` refreshes the card afterwards (the training workflow after writing its
summary, the evaluation workflow with the final scores).

A ``README.md`` is ours when it holds :data:`CARD_MARKER` (an HTML comment, invisible when rendered). A user's own
``README.md`` (no marker) is never overwritten, by a save or by :func:`write_model_card` (unless ``force``); delete
the marker line of a generated card to keep hand edits.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from monai_r2gen.errors import ModelFileError
from monai_r2gen.files import atomic_write_text

__all__ = [
    "CARD_MARKER",
    "CARD_NAME",
    "EVALUATION_NAME",
    "SUMMARY_NAME",
    "build_model_card",
    "card_is_generated",
    "card_may_be_written",
    "model_card_facts",
    "write_model_card",
]

logger = logging.getLogger(__name__)

CARD_NAME = "README.md"
EVALUATION_NAME = "evaluation.json"
SUMMARY_NAME = "training_summary.json"
#: the line that marks a README.md as written (and rewritable) by monai-r2gen
CARD_MARKER = "<!-- monai-r2gen model card: generated from generator.json; delete this line to keep your edits -->"

_GENERATOR_NAME = "generator.json"  # monai_r2gen.networks.generator.CONFIG_NAME (not imported: no cycle)
_PACKAGE_LICENSE = "apache-2.0"
_TAGS = ["medical", "radiology", "chest-x-ray", "report-generation", "image-to-text", "monai", "research-only"]
_HUB_CACHE = re.compile(r"models--(?P<org>[^/\\]+?)--(?P<name>[^/\\]+)[/\\]snapshots(?:[/\\]|$)")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# model-index metric types for the usual report-generation scores (others: the name, lower-cased and slugged)
_METRIC_TYPES = {"BLEU": "bleu", "METEOR": "meteor", "ROUGE": "rouge", "CIDER": "cider", "F1": "f1"}
_STAGE_RESULT_KEYS = ("iterations", "epochs", "seconds", "complete", "best_metric")
# the scores shown for a stage's last validation and put in the card's model-index (the table lists every score)
_HEADLINE = ("BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "CE-14 micro-F1", "CE-14 macro-F1", "CE-5 micro-F1")
_SAVED = {
    "base": "not included: the base is referenced by path and fingerprint",
    "hf_dir": "full weights in `{part}/`",
    "modules": "full weights in `modules.safetensors`",
}
_LIMITATIONS = (
    "**Research use only. This model is not a medical device**: it has not been cleared or approved by any "
    "regulator (FDA, CE / MDR or other) and must not be used for diagnosis, triage or any clinical decision.",
    "**Every generated report must be reviewed, corrected and signed by a qualified radiologist** before it is used "
    "for anything; it is a draft written by a machine.",
    "Generated reports can miss findings, describe findings that are not in the image (hallucination), get the side, "
    "size or severity wrong, and copy phrasing that is frequent in the training reports.",
    "The model only knows the population, devices, views and reporting style of its training data; it is not "
    "validated on other sites, paediatric patients, portable / supine studies or other modalities.",
    "The NLG scores (BLEU, ROUGE, CIDEr, METEOR) measure overlap with the reference wording, not clinical "
    "correctness; the CheXpert-label scores come from a rule-based labeler and are approximate.",
)


# ----------------------------------------------------------------------------------------------------------------
# the marker
# ----------------------------------------------------------------------------------------------------------------


def card_is_generated(path: str | os.PathLike) -> bool:
    """True when ``path`` is a regular file holding :data:`CARD_MARKER` (a card this package wrote)."""
    path = Path(path)
    if path.is_symlink() or not path.is_file():
        return False
    try:
        return CARD_MARKER in path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False


def card_may_be_written(model_dir: str | os.PathLike) -> bool:
    """True when ``model_dir`` has no ``README.md`` or has one this package wrote (anything else is the user's)."""
    card = Path(model_dir) / CARD_NAME
    return not (card.exists() or card.is_symlink()) or card_is_generated(card)


# ----------------------------------------------------------------------------------------------------------------
# gathering the facts
# ----------------------------------------------------------------------------------------------------------------


def _read_json(path: Path, what: str) -> dict[str, Any] | None:
    """A JSON object from ``path``; None (with a warning) when it is missing, unreadable or not an object."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        logger.warning("model card: %s %s ignored (%s)", what, path, exc)
        return None
    if not isinstance(data, dict):
        logger.warning("model card: %s %s ignored (not a JSON object)", what, path)
        return None
    return data


def _front_matter(path: Path) -> dict[str, Any]:
    """The YAML front matter of a Markdown file (a base model's Hub card), or {}."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return {}
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.DOTALL)
    if not match:
        return {}
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def _hub_id(path: str | None, config: Mapping[str, Any]) -> str | None:
    """The Hub repository id of a base: from a Hub cache path (``models--org--name/snapshots/...``) or the
    ``_name_or_path`` of its ``config.json`` when that is a Hub id rather than a local folder."""
    if path:
        match = _HUB_CACHE.search(path)
        if match:
            return f"{match.group('org')}/{match.group('name')}"
    name = config.get("_name_or_path")
    if isinstance(name, str) and _HUB_ID.match(name) and not os.path.exists(name):
        return name
    return None


def _base_facts(part: str, meta: Mapping[str, Any]) -> dict[str, Any]:
    """What the card says about the encoder or the LLM: kind, source, path, fingerprint, what the folder holds."""
    config = meta.get("config", {})
    record = meta.get("bases", {}).get(part, {}) or {}
    contents = meta.get("contents", {})
    path = record.get("path")
    base_config: dict[str, Any] = {}
    base_card: dict[str, Any] = {}
    if path and os.path.isdir(path):
        base_config = _read_json(Path(path) / "config.json", f"base {part} config") or {}
        base_card = _front_matter(Path(path) / CARD_NAME)
    options = config.get(f"{part}_options") or {}
    facts: dict[str, Any] = {
        "source": record.get("source", "config" if path is None else "path"),
        "path": path,
        "fingerprint": record.get("fingerprint"),
        "saved": contents.get(part, "base"),
        "lora": bool(contents.get(f"{part}_lora", False)),
        "trained_in_full": part in (meta.get("trained") or []),
        "model_type": base_config.get("model_type") or options.get("model_type"),
        "hub_id": _hub_id(path, base_config),
        "license": base_card.get("license"),
    }
    if part == "encoder":
        facts.update(
            kind=config.get("encoder"), feature=config.get("encoder_feature"), image_size=config.get("image_size")
        )
    else:
        size = {k: base_config.get(k, options.get(k)) for k in ("hidden_size", "num_hidden_layers")}
        facts.update({k: v for k, v in size.items() if v is not None})
    if facts["lora"]:
        prefix = "llm_lora" if part == "llm" else "encoder_lora"
        facts["lora_settings"] = {k: config.get(f"{prefix}_{k}") for k in ("r", "alpha", "dropout", "target_modules")}
    return facts


def _license(encoder: Mapping[str, Any], llm: Mapping[str, Any]) -> str:
    """The package's licence for parts built here; a base's own (from its Hub card) when every base agrees."""
    found = {_PACKAGE_LICENSE if part["source"] != "path" else part.get("license") for part in (encoder, llm)}
    if len(found) == 1 and None not in found:
        return str(found.pop())
    return "other"


def _numeric(scores: Mapping[str, Any]) -> dict[str, float]:
    return {str(k): float(v) for k, v in scores.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _evaluation(scores: Mapping[str, Any] | None, settings: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """An evaluation record from a flat score mapping or a whole ``scores.json`` result (``{"scores", "settings",
    "intervals"}``, the layout of :class:`~monai_r2gen.engines.workflows.ReportEvaluationWorkflow`)."""
    if scores is None:
        return None
    if isinstance(scores, Mapping) and isinstance(scores.get("scores"), Mapping):
        result = scores
        record = {"scores": _numeric(result["scores"]), "settings": dict(result.get("settings") or {})}
        if isinstance(result.get("intervals"), Mapping):
            record["intervals"] = dict(result["intervals"])
    else:
        record = {"scores": _numeric(scores), "settings": {}}
    record["settings"].update(dict(settings or {}))
    return record


def _training(summary: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Stages (settings and results, in run order), seed and data set from a training summary."""
    if not summary:
        return None
    results = summary.get("stages") if isinstance(summary.get("stages"), Mapping) else {}
    settings = summary.get("stage_settings") if isinstance(summary.get("stage_settings"), Mapping) else {}
    names = list(dict.fromkeys([*settings, *results]))
    stages = []
    for name in names:
        stage_settings = settings.get(name) if isinstance(settings.get(name), Mapping) else {}
        result = results.get(name) if isinstance(results.get(name), Mapping) else {}
        stages.append({
            "name": str(name),
            "settings": {k: v for k, v in stage_settings.items() if k not in ("name", "enabled")},
            "result": {k: result[k] for k in _STAGE_RESULT_KEYS if k in result},
            "last_scores": _numeric(result.get("last_scores") or {}),
        })  # fmt: skip
    extra = {k: summary[k] for k in ("seed", "image_size", "max_views", "max_length") if summary.get(k) is not None}
    dataset = summary.get("dataset") if isinstance(summary.get("dataset"), Mapping) else None
    return {"stages": stages, "dataset": dict(dataset) if dataset else None, **extra}


def _matches(record: Mapping[str, Any] | None, identity: str, what: str, path: Path) -> bool:
    if record is None:
        return False
    named = record.get("model")
    if named is not None and named != identity:
        logger.info("model card: %s %s is of another model (%s), not used", what, path, str(named)[:19])
        return False
    return True


def model_card_facts(
    model_dir: str | os.PathLike,
    extras_dir: str | os.PathLike | None = None,
    scores: Mapping[str, Any] | None = None,
    settings: Mapping[str, Any] | None = None,
    license: str | None = None,
) -> dict[str, Any]:
    """The facts :func:`build_model_card` writes, read from a model directory.

    Args:
        model_dir: a directory written by ``RadiologyReportGenerator.save_pretrained`` (its ``generator.json``).
        extras_dir: where ``training_summary.json`` and ``evaluation.json`` are looked for (default: ``model_dir``;
            ``save_pretrained`` passes the folder the staged model will replace).
        scores: evaluation scores (a flat ``{name: value}`` or a whole ``scores.json`` result); default: those of
            ``evaluation.json`` when it names this model.
        settings: settings the scores were computed with (merged over the result's own ``settings``).
        license: the card's licence (default: the package's, apache-2.0, when both bases were built here; a base's
            own licence read from its Hub card when every base has the same one; else ``other``).

    Returns:
        ``{"name", "license", "model_fingerprint", "library_version", "encoder", "llm", "architecture",
        "generation", "trained", "num_image_tokens", "vocab_size", "training", "evaluation"}``; ``training`` and
        ``evaluation`` are None when nothing is recorded.

    Raises:
        ModelFileError: ``generator.json`` is missing or not a JSON object.
    """
    from monai_r2gen import __version__
    from monai_r2gen.inference import model_fingerprint

    root = Path(model_dir)
    extras = Path(extras_dir) if extras_dir is not None else root
    meta_path = root / _GENERATOR_NAME
    if not meta_path.is_file():
        raise ModelFileError(meta_path, f"missing: {root} is not a report generator directory")
    meta = _read_json(meta_path, "generator record")
    if meta is None or not isinstance(meta.get("config"), dict):
        raise ModelFileError(meta_path, "is not a report generator record (a JSON object with a 'config')")
    identity = model_fingerprint(root)
    config = meta["config"]
    encoder, llm = _base_facts("encoder", meta), _base_facts("llm", meta)

    summary_path = extras / SUMMARY_NAME
    summary = _read_json(summary_path, "training summary")
    training = _training(summary) if _matches(summary, identity, "training summary", summary_path) else None
    evaluation = _evaluation(scores, settings)
    if evaluation is None:
        eval_path = extras / EVALUATION_NAME
        record = _read_json(eval_path, "evaluation record")
        if _matches(record, identity, "evaluation record", eval_path) and isinstance(record.get("scores"), Mapping):
            evaluation = _evaluation(record, None)

    architecture_keys = ("max_views", "view_fusion", "projector", "num_queries", "prompt_scale", "finding_head",
                         "finding_prompts", "attribute_head", "attribute_source", "attribute_queries",
                         "attribute_slots", "attribute_feature_prompts", "attribute_word_weight", "max_length",
                         "prompt_template",
                         "dtype")  # fmt: skip
    return {
        "name": root.resolve().name if extras_dir is None else Path(extras).resolve().name,
        "license": license or _license(encoder, llm),
        "model_fingerprint": identity,
        "library_version": __version__,
        "encoder": encoder,
        "llm": llm,
        "architecture": {k: config.get(k) for k in architecture_keys if k in config},
        "generation": dict(config.get("generation") or {}),
        "trained": list(meta.get("trained") or []),
        "num_image_tokens": meta.get("num_image_tokens"),
        "vocab_size": meta.get("vocab_size"),
        "training": training,
        "evaluation": evaluation,
    }


# ----------------------------------------------------------------------------------------------------------------
# the card
# ----------------------------------------------------------------------------------------------------------------


def _cell(value: Any, score: bool = False) -> str:
    """A value as one Markdown table cell (a score with 4 decimals, other numbers with 6 significant digits)."""
    if value is None:
        text = "-"
    elif isinstance(value, bool):
        text = "yes" if value else "no"
    elif isinstance(value, float):
        text = (f"{value:.4f}" if score else f"{value:.6g}") if math.isfinite(value) else str(value)
    elif isinstance(value, (Mapping, list, tuple)):
        text = json.dumps(value, default=str)
    else:
        text = str(value)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], score: bool = False) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(v, score) for v in row) + " |" for row in rows]
    return lines


def _code(value: Any) -> list[str]:
    """A mapping as a fenced YAML block."""
    text = yaml.safe_dump(json.loads(json.dumps(value, default=str)), sort_keys=False, allow_unicode=True).rstrip()
    return ["```yaml", text, "```"]


def _headline(scores: Mapping[str, float]) -> dict[str, float]:
    """The usual report-generation scores among ``scores`` (all of them when none is)."""
    found = {k: scores[k] for k in _HEADLINE if k in scores}
    return found or dict(scores)


def _metric_type(name: str) -> str:
    upper = name.upper()
    for key, kind in _METRIC_TYPES.items():
        if upper.startswith(key) or (key == "F1" and "F1" in upper):
            return kind
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "score"


def _dataset_name(evaluation: Mapping[str, Any], training: Mapping[str, Any] | None) -> str:
    settings = evaluation.get("settings") or {}
    dataset = (training or {}).get("dataset") or {}
    for value in (settings.get("dataset_name"), dataset.get("name"), settings.get("dataset_dir")):
        if value:
            return Path(str(value)).name or str(value)
    return "chest X-ray reports"


def _front(facts: Mapping[str, Any]) -> dict[str, Any]:
    """The card's YAML front matter (Hugging Face model card metadata)."""
    front: dict[str, Any] = {"license": facts.get("license") or "other"}
    if front["license"] == "other":
        front["license_name"] = "see-base-models"
    front.update(library_name="monai-r2gen", pipeline_tag="image-to-text", tags=list(_TAGS), language=["en"])
    parts = [facts.get("encoder") or {}, facts.get("llm") or {}]
    hub = [p["hub_id"] for p in parts if p.get("hub_id")]
    if hub:
        front["base_model"] = hub if len(hub) > 1 else hub[0]
        referenced = [p for p in parts if p.get("hub_id") and p.get("saved") == "base"]
        front["base_model_relation"] = (
            "adapter" if referenced and all(p.get("lora") for p in referenced) else "finetune"
        )
    evaluation = facts.get("evaluation")
    if evaluation and evaluation.get("scores"):
        settings = evaluation.get("settings") or {}
        name = _dataset_name(evaluation, facts.get("training"))
        dataset = {"name": name, "type": re.sub(r"[^A-Za-z0-9._-]+", "-", name)}
        if settings.get("split"):
            dataset["split"] = str(settings["split"])
        metrics = [
            {"type": _metric_type(k), "name": k, "value": round(v, 6)}
            for k, v in _headline(evaluation["scores"]).items()
            if math.isfinite(v)
        ]
        front["model-index"] = [{
            "name": facts.get("name") or "report-generator",
            "results": [{
                "task": {"type": "image-to-text", "name": "Chest X-ray report generation"},
                "dataset": dataset,
                "metrics": metrics,
            }],
        }]  # fmt: skip
    return front


_SOURCE_NOTES = {"tokens": " (on the encoder tokens)", "dense": " (per-token presence maps of the encoder tokens)"}


def _part_rows(facts: Mapping[str, Any]) -> list[list[Any]]:
    rows = []
    for label, key in (("Vision encoder", "encoder"), ("Language model", "llm")):
        part = facts.get(key) or {}
        kind = part.get("kind") if key == "encoder" else None
        model_type = part.get("model_type")
        what = " / ".join(str(v) for v in (kind, model_type) if v) or "-"
        if part.get("source") == "path" or (part.get("source") is None and part.get("path")):
            origin = part.get("hub_id") or part.get("path")
        elif part.get("source") is None:
            origin = None
        else:
            origin = "built from its config (random init), trained here"
        saved = _SAVED.get(part.get("saved"), str(part.get("saved") or "not recorded")).format(part=key)
        if part.get("lora"):
            saved += f"; LoRA adapter in `{key}_lora/`"
        rows.append([label, what, origin, part.get("fingerprint") or "-", saved])
    return rows


def _description(facts: Mapping[str, Any]) -> list[str]:
    arch = facts.get("architecture") or {}
    lines = [
        "## Model description",
        "",
        "A radiology report generator for chest radiographs: a vision encoder reads each view of a study, the views "
        "are fused, a projector turns the image tokens into soft visual prompts, and a causal language model writes "
        "the report from the prompt and those visual prompts (R2GenGPT-style).",
        "",
        *_table(["Part", "Model", "Base", "Fingerprint", "In this folder"], _part_rows(facts)),
        "",
        f"- Model fingerprint (weights, config and tokenizer): `{facts.get('model_fingerprint')}`",
        f"- Written by monai-r2gen {facts.get('library_version')}",
        f"- Visual prompts per study: {facts.get('num_image_tokens')}; views per study: {arch.get('max_views')} "
        f"(fusion: {arch.get('view_fusion')}); projector: {arch.get('projector')}",
        f"- Auxiliary heads: finding head {_cell(bool(arch.get('finding_head')))}, finding prompts "
        f"{_cell(bool(arch.get('finding_prompts')))}, attribute head {_cell(bool(arch.get('attribute_head')))}"
        f"{_SOURCE_NOTES.get(arch.get('attribute_source'), '')}, attribute slot prompts "
        f"{_cell(bool(arch.get('attribute_slots')))}, attribute feature prompts "
        f"{_cell(bool(arch.get('attribute_feature_prompts')))}",
        f"- Bases a stage trained in full: {', '.join(facts.get('trained') or []) or 'none'}",
    ]
    for key in ("encoder", "llm"):
        part = facts.get(key) or {}
        if part.get("lora_settings"):
            lines.append(f"- LoRA on the {'LLM' if key == 'llm' else 'encoder'}: {_cell(part['lora_settings'])}")
    if facts.get("generation"):
        lines.append(f"- Default decoding: {_cell(facts['generation'])}")
    referenced = [k for k in ("encoder", "llm") if (facts.get(k) or {}).get("saved") == "base"]
    if referenced:
        names = " and ".join("the LLM" if k == "llm" else "the encoder" for k in referenced)
        lines += [
            "",
            f"This folder does not hold {names}: loading needs the same base (the fingerprint above is checked; "
            "pass `encoder_path=` / `llm_path=` when it is elsewhere).",
        ]
    return lines


def _training_lines(facts: Mapping[str, Any]) -> list[str]:
    training = facts.get("training")
    lines = ["## Training data", ""]
    dataset = (training or {}).get("dataset")
    if dataset:
        lines += _table(["Setting", "Value"], [[k, v] for k, v in dataset.items()])
        if dataset.get("synthetic"):
            lines += ["", "The training data are **synthetic phantoms**, not patient images: this model only shows "
                          "that the pipeline works and has no clinical meaning."]  # fmt: skip
    else:
        lines.append("Not recorded in this folder (see the training run's configuration).")
    lines += ["", "## Training procedure", ""]
    if not training or not training.get("stages"):
        lines.append("No training summary in this folder.")
        return lines
    general = {k: training[k] for k in ("seed", "image_size", "max_views", "max_length") if k in training}
    if general:
        lines += [", ".join(f"{k}: {_cell(v)}" for k, v in general.items()), ""]
    lines.append("Stages, in the order they ran:")
    for stage in training["stages"]:
        lines += ["", f"### {stage['name']}", ""]
        if stage["settings"]:
            lines += _table(["Setting", "Value"], [[k, v] for k, v in stage["settings"].items()])
        else:
            lines.append("Settings not recorded.")
        if stage["result"]:
            lines += ["", "Result: " + ", ".join(f"{k} {_cell(v)}" for k, v in stage["result"].items())]
        if stage["last_scores"]:
            scores = ", ".join(f"{k} {_cell(v, score=True)}" for k, v in _headline(stage["last_scores"]).items())
            lines += ["", f"Last validation: {scores}"]
    return lines


def _evaluation_lines(facts: Mapping[str, Any]) -> list[str]:
    evaluation = facts.get("evaluation")
    lines = ["## Evaluation", ""]
    if not evaluation or not evaluation.get("scores"):
        lines.append(
            "No evaluation scores recorded for these weights. Score them with the bundle's `evaluating` run; "
            "`monai_r2gen.networks.model_card.write_model_card(model_dir, scores)` adds them here."
        )
        return lines
    intervals = evaluation.get("intervals") or {}
    rows = []
    for name, value in evaluation["scores"].items():
        interval = intervals.get(name) if isinstance(intervals.get(name), Mapping) else None
        bounds = f"{interval['low']:.4f} - {interval['high']:.4f}" if interval and "low" in interval else "-"
        rows.append([name, value, bounds])
    lines += _table(["Score", "Value", "95% interval"], rows, score=True)
    if evaluation.get("settings"):
        lines += ["", "Computed with:", "", *_code(evaluation["settings"])]
    return lines


def build_model_card(facts: Mapping[str, Any]) -> str:
    """The model card (Markdown with YAML front matter) of a report generator.

    Args:
        facts: the mapping :func:`model_card_facts` returns (missing keys are shown as not recorded).

    Returns:
        the text of ``README.md``, ending with a newline.
    """
    name = facts.get("name") or "report-generator"
    front = yaml.safe_dump(_front(facts), sort_keys=False, allow_unicode=True).rstrip()
    lines = [
        "---",
        front,
        "---",
        CARD_MARKER,
        "",
        f"# {name}",
        "",
        "> **Research use only. Not a medical device.** Reports written by this model are drafts: a radiologist must "
        "review every one before it is used.",
        "",
        *_description(facts),
        "",
        *_training_lines(facts),
        "",
        *_evaluation_lines(facts),
        "",
        "## Intended use",
        "",
        "Research on automatic radiology report generation for chest radiographs (frontal and lateral views): "
        "method development, benchmarking, and studies of draft reports that radiologists review. Not for clinical "
        "use, not for use without a radiologist, not for images other than chest radiographs.",
        "",
        "## Limitations",
        "",
        *(f"- {text}" for text in _LIMITATIONS),
    ]
    if facts.get("license") == "other":
        lines.append("- Licence: the bases' own licences apply to the weights derived from them; check them before "
                     "sharing.")  # fmt: skip
    lines += [
        "",
        "## How to use",
        "",
        "```python",
        "from monai_r2gen.networks import RadiologyReportGenerator",
        "",
        'model = RadiologyReportGenerator.from_pretrained("path/to/this/folder")',
        "```",
        "",
        "or from the command line: `monai-r2gen generate path/to/this/folder study_folder/ --output reports.jsonl`.",
        "",
        "## Files",
        "",
        "- `generator.json`: configuration, the bases with their fingerprints, what the folder holds",
        "- `modules.safetensors`: view fusion, projector and auxiliary heads",
        "- `tokenizer/`: the tokenizer with its image token",
        "- `encoder/`, `llm/`: full weights (when trained in full or built here); `encoder_lora/`, `llm_lora/`: "
        "LoRA adapters (peft format)",
        f"- `{SUMMARY_NAME}`, `{EVALUATION_NAME}`: training summary and evaluation scores, when present",
        "",
    ]
    return "\n".join(lines)


def _write_card(model_dir: Path, facts: Mapping[str, Any]) -> Path:
    return atomic_write_text(model_dir / CARD_NAME, build_model_card(facts))


def write_model_card(
    model_dir: str | os.PathLike,
    scores: Mapping[str, Any] | str | os.PathLike | None = None,
    settings: Mapping[str, Any] | None = None,
    license: str | None = None,
    force: bool = False,
) -> Path | None:
    """Write (or refresh) ``README.md`` of a saved model; with ``scores``, record them in ``evaluation.json`` first.

    ``evaluation.json`` holds ``{"model": <model fingerprint>, "scores", "settings", "intervals"}``; it describes
    these weights only (a later save of other weights into the folder leaves it out of the card).

    Args:
        model_dir: a directory written by ``RadiologyReportGenerator.save_pretrained``.
        scores: evaluation scores: a flat ``{name: value}``, a whole ``scores.json`` result of the evaluation
            workflow, or the path of such a file. None: keep the recorded ones.
        settings: the settings the scores were computed with (split, generation, tokenization ...), merged over
            the result's own.
        license: the card's licence (see :func:`model_card_facts`).
        force: overwrite a ``README.md`` that this package did not write.

    Returns:
        the card's path, or None when a user's own ``README.md`` was kept.

    Raises:
        ModelFileError: not a model directory, or a ``scores`` file that cannot be read.
    """
    from monai_r2gen.inference import model_fingerprint

    root = Path(model_dir)
    if isinstance(scores, (str, os.PathLike)):
        loaded = _read_json(Path(scores), "scores file")
        if loaded is None:
            raise ModelFileError(scores, "is not a readable JSON object of scores")
        scores = loaded
    evaluation = _evaluation(scores, settings)
    if evaluation is not None:
        record = {"model": model_fingerprint(root), **evaluation}
        atomic_write_text(root / EVALUATION_NAME, json.dumps(record, indent=2, default=str) + "\n")
    if not (force or card_may_be_written(root)):
        logger.info("%s has its own %s (no monai-r2gen marker): left as it is", root, CARD_NAME)
        return None
    return _write_card(root, model_card_facts(root, license=license))
