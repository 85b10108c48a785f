"""The training protocol's ablation on the embedded default, at one total budget counted in iterations.

Variants (stage lists for :class:`~monai_r2gen.engines.workflows.ReportTrainingWorkflow`):

==========================  ==============================================================================
``full``                    stage 0 (LM warm-up) -> stage 1 (alignment) -> stage 2 (LoRA), encoder frozen
                            after its augmented warm-up
``no_stage1``               stage 0 -> stage 2 (stage 1's iterations go to stage 2)
``no_stage0``               stage 1 -> stage 2 (stage 0's iterations shared in proportion)
``trained_encoder``         as ``full`` but the encoder is trained (unaugmented) in stages 1 and 2
``shallow`` / ``delta`` /   stage 0, then R2GenGPT's preset: LLM frozen; encoder frozen / LoRA / trained in
``deep``                    full (the embedded default's LLM starts from random weights, so the R2GenGPT
                            presets get the same stage-0 warm-up as the protocol)
==========================  ==============================================================================

Every variant gets the same number of iterations in stages 0-2 (``total_iterations``, default 340: the bundle's
200 + 40 + 100) at the same batch size, split in the bundle's proportions; budgets are counted in iterations, not
seconds, so runs compare across machines. Every variant starts with the same encoder warm-up
(``warmup_iterations``, default the bundle's; it trains the CNN and the attribute head without running the LLM,
so it is not part of the protocol under test). Each variant is trained from the same initial model (same data set,
same seed) for every seed, then scored on the test split: CheXpert-14 micro / macro F1, BLEU-4, CIDEr. The stage
settings below are those of ``bundle/configs/train.yaml``; every image stage teacher-forces the slot prompts.

Variants of a seed that begin with identical stages (the warm-up; stage 0 for all but ``no_stage0``) share them:
the workflow seeds every stage from the run seed and the stage's position, so a stage trained once is the stage
every such variant would train, and its completed folder is copied instead of training it again.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai_r2gen.engines.stage_settings import DEFAULT_STAGE_DEFAULTS, DEFAULT_STAGES

__all__ = [
    "ABLATION_VARIANTS",
    "ABLATION_METRICS",
    "variant_stages",
    "run_ablation",
    "share_completed_stages",
    "ablation_table",
]

logger = logging.getLogger(__name__)

#: the embedded default's stages (bundle/configs/train.yaml), each with the settings the recipe's stages share
_BASE_STAGES: dict[str, dict[str, Any]] = {s["name"]: {**DEFAULT_STAGE_DEFAULTS, **s} for s in DEFAULT_STAGES}
#: R2GenGPT's one-stage settings (shallow, delta, deep) on the recipe's shared ones
_R2GENGPT = {**DEFAULT_STAGE_DEFAULTS, "name": None, "teacher_forcing": 1.0, "warmup_steps": 10}

#: variant name -> (stage, overrides, budget weight) triples
ABLATION_VARIANTS: dict[str, list[tuple[str, dict[str, Any], int]]] = {
    "full": [("stage0", {}, 200), ("stage1", {}, 40), ("stage2", {}, 100)],
    "no_stage1": [("stage0", {}, 200), ("stage2", {}, 140)],
    "no_stage0": [("stage1", {}, 40), ("stage2", {}, 100)],
    "trained_encoder": [
        ("stage0", {}, 200),
        ("stage1", {"train_encoder": True}, 40),
        ("stage2", {"train_encoder": True}, 100),
    ],
    "shallow": [("stage0", {}, 200), ("shallow", {}, 140)],
    "delta": [("stage0", {}, 200), ("delta", {}, 140)],
    "deep": [("stage0", {}, 200), ("deep", {}, 140)],
}

#: scores reported per run (keys of ReportEvaluationWorkflow's "scores")
ABLATION_METRICS = ("CE-14 micro-F1", "CE-14 macro-F1", "BLEU-4", "CIDEr")


def _warmup_iterations(given: int | None) -> int:
    """The warm-up length asked for, or the bundle's."""
    return int(_BASE_STAGES["encoder_warmup"]["max_iterations"] if given is None else given)


def variant_stages(variant: str, total_iterations: int = 340, batch_size: int = 32, validate: bool = False,
                   warmup_iterations: int | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Stage settings of a variant: the encoder warm-up, then stages whose iterations sum to ``total_iterations``.

    Args:
        variant: a key of :data:`ABLATION_VARIANTS`.
        total_iterations: the budget shared by stages 0-2 (or the variant's stages in their place).
        batch_size: training batch size of every stage.
        validate: validate during training (off by default: every variant hands over its last weights, so the
            budget is exactly the same).
        warmup_iterations: iterations of the encoder warm-up that precedes every variant (0: none; None: the
            bundle's).

    Raises:
        ValueError: unknown variant or a budget too small to give every stage an iteration.
    """
    if variant not in ABLATION_VARIANTS:
        raise ValueError(f"unknown ablation variant {variant!r}; choose from {', '.join(ABLATION_VARIANTS)}")
    plan = ABLATION_VARIANTS[variant]
    if total_iterations < len(plan):
        raise ValueError(f"{total_iterations} iterations cannot be shared by {len(plan)} stages")
    weights = sum(w for _, _, w in plan)
    counts = [max(1, round(total_iterations * w / weights)) for _, _, w in plan]
    while sum(counts) != total_iterations:  # exact total: the largest stage absorbs rounding, every stage keeps >= 1
        largest = max(range(len(counts)), key=lambda i: counts[i])
        counts[largest] += 1 if sum(counts) < total_iterations else -1
    stages = []
    warmup_iterations = _warmup_iterations(warmup_iterations)
    if warmup_iterations > 0:
        warmup = copy.deepcopy(_BASE_STAGES["encoder_warmup"])
        warmup.update({"max_iterations": int(warmup_iterations), "batch_size": int(batch_size), "handover": "last"})
        stages.append(warmup)
    for (name, overrides, _), iterations in zip(plan, counts):
        base = copy.deepcopy(_BASE_STAGES.get(name, {**_R2GENGPT, "name": name, "preset": name}))
        base.update(copy.deepcopy(overrides))
        base.update({"max_iterations": int(iterations), "batch_size": int(batch_size), "handover": "last"})
        if name != "stage0":
            base["validate"] = bool(validate)
        stages.append(base)
    return stages


def run_ablation(
    dataset_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    variants: Sequence[str] | None = None,
    seeds: Sequence[int] = (0, 1),
    total_iterations: int = 340,
    warmup_iterations: int | None = None,
    batch_size: int = 32,
    n_studies: int = 2000,
    image_size: int = 128,
    eval_max_studies: int | None = None,
    network: Mapping[str, Any] | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Train and score every variant for every seed; write ``ablation.json`` and ``ablation.md`` to ``out_dir``.

    A run whose ``scores.json`` already exists is not trained again (a killed ablation continues).

    Args:
        dataset_dir: synthetic data set folder (generated with ``n_studies`` / ``image_size`` when empty).
        out_dir: one sub-folder per variant and seed, plus the tables.
        variants: subset of :data:`ABLATION_VARIANTS` (default: all).
        seeds: training seeds.
        total_iterations: iterations per run, shared by its stages 0-2.
        warmup_iterations: encoder warm-up iterations before every variant (0: none; None: the bundle's).
        batch_size: batch size of every stage.
        n_studies: studies of a generated data set.
        image_size: view size.
        eval_max_studies: score only the first N test studies (None: all).
        network: :class:`~monai_r2gen.networks.GeneratorConfig` fields over the embedded default.
        device: torch device.

    Returns:
        ``{"runs": [{"variant", "seed", "scores", "seconds"}], "table": markdown, "settings": {...}}``.
    """
    from monai_r2gen.engines.workflows import ReportEvaluationWorkflow, ReportTrainingWorkflow

    names = list(variants or ABLATION_VARIANTS)
    for name in names:
        if name not in ABLATION_VARIANTS:
            raise ValueError(f"unknown ablation variant {name!r}; choose from {', '.join(ABLATION_VARIANTS)}")
    out = Path(out_dir)
    runs = []
    donors: dict[int, list[tuple[Path, list[dict[str, Any]]]]] = {}  # seed -> (train dir, stage list) of earlier runs
    for name in names:
        for seed in seeds:
            run_dir = out / name / f"seed{seed}"
            stages = variant_stages(name, total_iterations, batch_size, warmup_iterations=warmup_iterations)
            shared = share_completed_stages(run_dir / "train", stages, donors.setdefault(int(seed), []))
            donors[int(seed)].append((run_dir / "train", stages))
            scores_file = run_dir / "eval" / "scores.json"
            if scores_file.is_file():
                data = json.loads(scores_file.read_text(encoding="utf-8"))
                runs.append({"variant": name, "seed": int(seed), "scores": data["scores"],
                             "seconds": data.get("train_seconds")})  # fmt: skip
                continue
            config = {"image_size": image_size, "seed": int(seed), **dict(network or {})}
            start = time.perf_counter()
            workflow = ReportTrainingWorkflow(
                network=config, dataset_dir=dataset_dir, output_dir=run_dir / "train", model_dir=run_dir / "model",
                stages=stages, image_size=image_size,
                synthetic={"n_studies": n_studies, "seed": 0, "image_size": image_size}, seed=int(seed),
                tensorboard=False, device=device,
            )  # fmt: skip
            workflow.run()
            train_seconds = time.perf_counter() - start
            result = ReportEvaluationWorkflow(
                model_dir=run_dir / "model", dataset_dir=dataset_dir, output_dir=run_dir / "eval", split="test",
                max_studies=eval_max_studies, device=device,
            ).run()  # fmt: skip
            result["train_seconds"] = round(train_seconds, 1)
            result["shared_stages"] = shared
            scores_file.write_text(json.dumps(result, indent=2), encoding="utf-8")
            logger.info("ablation %s seed %d: %s", name, seed, {k: result["scores"].get(k) for k in ABLATION_METRICS})
            runs.append({"variant": name, "seed": int(seed), "scores": result["scores"],
                         "seconds": round(train_seconds, 1)})  # fmt: skip
    settings = {"total_iterations": total_iterations, "warmup_iterations": _warmup_iterations(warmup_iterations),
                "batch_size": batch_size, "seeds": list(seeds),
                "n_studies": n_studies, "image_size": image_size, "eval_max_studies": eval_max_studies}  # fmt: skip
    table = ablation_table(runs)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.json").write_text(json.dumps({"runs": runs, "settings": settings}, indent=2), encoding="utf-8")
    (out / "ablation.md").write_text(table + "\n", encoding="utf-8")
    return {"runs": runs, "table": table, "settings": settings}


def share_completed_stages(
    train_dir: str | os.PathLike, stages: Sequence[Mapping[str, Any]], donors: Sequence[tuple[Path, Sequence[Mapping]]]
) -> list[str]:
    """Copy into ``train_dir`` the completed stage folders of the longest identical leading stages of a donor run.

    Only valid between runs of one model configuration and seed: the training workflow seeds each stage from the run
    seed and the stage's position, so identical leading stages train to identical weights.

    Args:
        train_dir: the ``output_dir`` of the run about to train.
        stages: its stage settings.
        donors: ``(output_dir, stage settings)`` of earlier runs with the same model configuration and seed.

    Returns:
        The names of the stages copied (none when ``train_dir`` already holds them or no donor matches).
    """
    from monai_r2gen.engines.handlers import StageCompletion

    best: tuple[int, Path | None] = (0, None)
    for donor_dir, donor_stages in donors:
        common = 0
        for mine, theirs in zip(stages, donor_stages):
            done = Path(donor_dir) / "stages" / str(mine["name"]) / StageCompletion.MARKER
            if dict(mine) != dict(theirs) or not done.is_file():
                break
            common += 1
        if common > best[0]:
            best = (common, Path(donor_dir))
    copied = []
    count, source = best
    for stage in stages[:count]:
        target = Path(train_dir) / "stages" / stage["name"]
        if target.exists():
            continue
        assert source is not None
        shutil.copytree(source / "stages" / stage["name"], target)
        copied.append(str(stage["name"]))
    if copied:
        logger.info("%s: stages %s copied from %s (identical settings and seed)", train_dir, copied, source)
    return copied


def ablation_table(runs: Sequence[Mapping[str, Any]], metrics: Sequence[str] = ABLATION_METRICS) -> str:
    """Markdown table: one row per variant, each metric as the per-seed values and their mean."""
    by_variant: dict[str, list[Mapping[str, Any]]] = {}
    for run in runs:
        by_variant.setdefault(run["variant"], []).append(run)
    lines = ["| variant | seeds | " + " | ".join(metrics) + " |", "|---|---|" + "---|" * len(metrics)]
    for name, group in by_variant.items():
        cells = []
        for metric in metrics:
            values = [float(r["scores"][metric]) for r in group if r["scores"].get(metric) is not None]
            if not values:
                cells.append("n/a")
                continue
            each = " / ".join(f"{v:.3f}" for v in values)
            cells.append(f"{statistics.fmean(values):.3f} ({each})" if len(values) > 1 else each)
        seeds = ", ".join(str(r["seed"]) for r in group)
        lines.append(f"| {name} | {seeds} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
