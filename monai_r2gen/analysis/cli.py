"""Command-line glue of ``monai-r2gen analyze prompts | attention | ablation``.

:func:`add_analyze_parser` adds the ``analyze`` subcommand (with its three sub-subcommands) to the CLI's
subparsers; each sets ``func`` to a handler that runs the analysis (:mod:`monai_r2gen.analysis.runs`,
:mod:`monai_r2gen.analysis.ablation`) and prints its table. Like ``cli.py``, this module is a front end: it prints
for people, while the analysis modules only log. Nothing heavy is imported until a handler runs.
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_analyze_parser", "cmd_prompts", "cmd_attention", "cmd_ablation"]


def _int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _str_list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def cmd_prompts(args: argparse.Namespace) -> int:
    """``analyze prompts``: soft-prompt norms and nearest words; prints the table."""
    from monai_r2gen.analysis.runs import analyze_prompts

    result = analyze_prompts(
        args.model, args.manifest, args.out, split=args.split, max_studies=args.max_studies,
        compare=args.compare or (), run_dir=args.run_dir, stages=args.stages or (), top_k=args.top_k,
        image_root=args.image_root, device=args.device,
    )  # fmt: skip
    print(result["table"])
    for name, path in result["files"].items():
        print(f"  {name:<11} {path}")
    return 0


def cmd_attention(args: argparse.Namespace) -> int:
    """``analyze attention``: visual attention per layer / head, per-word overlays, phantom box check."""
    from monai_r2gen.analysis.prompts import format_table
    from monai_r2gen.analysis.runs import analyze_attention

    result = analyze_attention(
        args.model, args.manifest, args.out, split=args.split, max_studies=args.max_studies, reports=args.reports,
        findings=args.findings, words=args.words, layers=args.layers, max_new_tokens=args.max_new_tokens,
        overlays=not args.no_overlays, image_root=args.image_root, device=args.device,
    )  # fmt: skip
    summary = result["summary"]
    print(
        f"visual share of attention ({summary['source']} reports, {summary['studies']} studies, "
        f"{summary['report_tokens']} tokens): mean {summary['visual_share_mean']:.3f}"
    )
    for layer, value in enumerate(summary["visual_share_per_layer"]):
        print(f"  layer {layer:<3} {value:.3f}")
    best = summary["most_visual_head"]
    print(f"  most visual head: layer {best['layer']} head {best['head']} ({best['share']:.3f})")
    if result["grounding"]:
        columns = (
            ("kind", "finding"),
            ("words", "words"),
            ("inside_mean", "inside boxes"),
            ("area_mean", "box area"),
            ("ratio_mean", "ratio"),
            ("above_chance", "share > 1"),
        )
        print(format_table(result["grounding"], columns))
    for name, path in result["files"].items():
        print(f"  {name:<11} {path}")
    return 0


def cmd_ablation(args: argparse.Namespace) -> int:
    """``analyze ablation``: train and score the protocol's variants; prints the table."""
    from monai_r2gen.analysis.ablation import run_ablation

    result = run_ablation(
        args.data, args.out, variants=args.variants, seeds=args.seeds, total_iterations=args.iterations,
        warmup_iterations=args.warmup_iterations, batch_size=args.batch_size, n_studies=args.n_studies,
        image_size=args.image_size,
        eval_max_studies=args.eval_max_studies, device=args.device,
    )  # fmt: skip
    print(result["table"])
    print(f"  written to {args.out}/ablation.md and ablation.json")
    return 0


def add_ablation_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``analyze ablation`` (also those of ``benchmarks/ablation.py``)."""
    parser.add_argument("--data", required=True, help="synthetic data set folder (generated when empty)")
    parser.add_argument("--out", required=True, help="output folder (one run per variant and seed + tables)")
    parser.add_argument("--variants", type=_str_list, default=None, help="comma-separated subset (default: all)")
    parser.add_argument("--seeds", type=_int_list, default=[0, 1], help="comma-separated seeds")
    parser.add_argument("--iterations", type=int, default=340, help="iterations per run shared by stages 0-2")
    parser.add_argument(
        "--warmup-iterations",
        type=int,
        default=None,
        help="encoder warm-up before every variant (default: the bundle's)",
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--n-studies", type=int, default=2000, help="studies of a generated data set")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--eval-max-studies", type=int, default=None, help="score the first N test studies")
    parser.add_argument("--device", default=None)
    return parser


def _common(parser: argparse.ArgumentParser, max_studies: int) -> None:
    parser.add_argument(
        "--model",
        default="embedded",
        help="model directory (save_pretrained) or 'embedded' (the embedded default, random weights)",
    )
    parser.add_argument("--manifest", required=True, help="annotation.json / JSONL / CSV of the studies")
    parser.add_argument("--split", default="test")
    parser.add_argument("--max-studies", type=int, default=max_studies, help="first N studies of the split")
    parser.add_argument("--image-root", default=None, help="folder of relative image paths (default: the manifest's)")
    parser.add_argument("--out", required=True, help="output folder (tables, JSON, PNG figures)")
    parser.add_argument("--device", default="cpu")  # fmt: skip


def add_analyze_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``analyze {prompts, attention, ablation}`` to the CLI's subparsers; returns the ``analyze`` parser."""
    analyze = subparsers.add_parser("analyze", help="soft-prompt, attention and ablation analyses")
    sub = analyze.add_subparsers(dest="analysis", required=True)

    prompts = sub.add_parser("prompts", help="norms and nearest vocabulary embeddings of the soft visual prompts")
    _common(prompts, 32)
    prompts.add_argument("--compare", nargs="*", default=None, help="more model directories, same studies")
    prompts.add_argument("--run-dir", default=None, help="training run directory (with --stages)")
    prompts.add_argument("--stages", nargs="*", default=None, help="stages of --run-dir to compare, e.g. stage1 stage2")
    prompts.add_argument("--top-k", type=int, default=5, help="nearest vocabulary entries kept per prompt")
    prompts.set_defaults(func=cmd_prompts)

    attention = sub.add_parser("attention", help="attention of report words on the image: heatmap and overlays")
    _common(attention, 8)
    attention.add_argument(
        "--reports",
        default="generated",
        choices=["generated", "reference"],
        help="analyse the model's greedy reports or the reference reports (teacher-forced)",
    )
    attention.add_argument(
        "--findings",
        default=None,
        help="findings.json of a phantom data set (default: beside the manifest, if present)",
    )
    attention.add_argument("--words", type=_str_list, default=None, help="comma-separated words to draw overlays for")
    attention.add_argument("--layers", type=_int_list, default=None, help="comma-separated LLM layers to average")
    attention.add_argument("--max-new-tokens", type=int, default=64)
    attention.add_argument("--no-overlays", action="store_true", help="skip the per-word PNG overlays")
    attention.set_defaults(func=cmd_attention)

    ablation = sub.add_parser("ablation", help="train + score the protocol's variants at one iteration budget")
    add_ablation_arguments(ablation)
    ablation.set_defaults(func=cmd_ablation)
    return analyze
