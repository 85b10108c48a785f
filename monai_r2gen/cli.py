"""The ``monai-r2gen`` command.

Subcommands:
    synth        write the synthetic chest-radiograph dataset (the embedded default data)
    check-data   load every study of an annotation file / manifest through the data pipeline and count problems
    train        run the bundle's ``training`` (or another run id) with ``key=value`` overrides
    generate     write one report per study (JSON lines) for DICOM / PNG / JPEG files, study folders and manifests
    evaluate     score predicted reports against references (NLG + clinical efficacy)
    analyze      soft-prompt, attention and ablation analyses (:mod:`monai_r2gen.analysis.cli`)

Library code logs; this module (with ``analysis.cli``) is the one place that prints for people. Heavy modules
(torch, MONAI, transformers) are imported by the handlers only, so ``monai-r2gen --help`` stays fast.
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main", "build_parser"]

DEFAULT_TRAIN_CONFIG = os.path.join("bundle", "configs", "train.yaml")
_QUIET_LOGGERS = ("monai_r2gen.data.studies", "monai_r2gen.inference")  # `generate` prints their warnings itself


def _cmd_synth(args: argparse.Namespace) -> int:
    from monai_r2gen.data.synthetic import generate_dataset

    start = time.perf_counter()
    summary = generate_dataset(
        args.out,
        n_studies=args.n,
        seed=args.seed,
        image_size=args.image_size,
        lateral_fraction=args.lateral_fraction,
        workers=args.workers,
        formats=tuple(args.formats.split(",")),
        progress=True,
    )
    elapsed = time.perf_counter() - start
    print(f"wrote {args.n} synthetic studies to {args.out} in {elapsed:.1f} s")
    if isinstance(summary, dict):
        for key, value in summary.items():
            if isinstance(value, (str, int, float)):
                print(f"  {key:<24} {value}")
    return 0


def _cmd_check_data(args: argparse.Namespace) -> int:
    from monai_r2gen.data.datasets import ReportDataset
    from monai_r2gen.data.transforms import LoadStudyViewsd

    splits = [args.split] if args.split else ["train", "val", "test"]
    transform = LoadStudyViewsd(keys="image", spatial_size=args.spatial_size, max_views=args.max_views)
    print(f"{'split':<8} {'studies':>8} {'loaded':>8} {'skipped':>8} {'views':>6}")
    problems = 0
    for split in splits:
        dataset = ReportDataset(
            args.manifest, split=split, image_root=args.image_root, transform=transform, on_error="skip"
        )
        loaded = views = 0
        for index in range(len(dataset)):
            item = dataset[index]
            if item is None:
                continue
            loaded += 1
            views += int(item["view_mask"].sum())
        skipped = len(dataset.skipped)
        problems += skipped
        print(f"{split:<8} {loaded + skipped:>8} {loaded:>8} {skipped:>8} {views:>6}")
        for study_id, path, reason in dataset.skipped[: args.show]:
            print(f"    skipped {study_id}: {path}: {reason}")
    return 1 if problems and args.strict else 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from monai_r2gen.evaluation import evaluate_files, format_score_table

    scores = evaluate_files(
        args.predictions,
        args.references,
        split=args.split,
        output=args.output,
        uncertain=args.uncertain,
        tokenize=args.tokenize,
        clean_style=args.clean_style,
        chexbert_checkpoint=args.chexbert_checkpoint,
        chexbert_tokenizer=args.chexbert_tokenizer,
        radgraph_dir=args.radgraph_dir,
        findings=args.findings,
        ceiling=args.ceiling,
        nlg_metrics=args.nlg_metrics.split(",") if args.nlg_metrics else None,
    )
    print(format_score_table(scores))
    if args.output:
        print(f"scores and settings written to {args.output}")
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _override(text: str) -> tuple[str, Any]:
    """``key=value`` -> (key, value): a Python literal when it parses as one (as ``python -m monai.bundle run``
    reads its options), else the text itself (``$`` expressions, ``@`` references and ``%`` macros included)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"overrides are key=value (e.g. stage0#max_iterations=10), got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def _cmd_train(args: argparse.Namespace) -> int:
    """``train``: ``monai.bundle.run(run_id, config_file=..., meta_file=..., logging_file=..., **overrides)``."""
    from monai.bundle import run

    configs = [os.path.abspath(c) for c in (args.config or [DEFAULT_TRAIN_CONFIG])]
    missing = [c for c in configs if not os.path.isfile(c)]
    if missing:
        print(f"error: config file not found: {', '.join(missing)} (give --config)", file=sys.stderr)
        return 2
    config_dir = Path(configs[0]).parent
    bundle_root = args.bundle_root or str(config_dir.parent if config_dir.name == "configs" else Path.cwd())
    beside = {"meta_file": config_dir / "metadata.json", "logging_file": config_dir / "logging.conf"}
    files = {key: getattr(args, key) or (str(path) if path.is_file() else None) for key, path in beside.items()}
    overrides = {"bundle_root": os.path.abspath(bundle_root), **dict(args.overrides)}
    print(
        f"monai.bundle run {args.run_id}: {', '.join(configs)} (bundle root {overrides['bundle_root']})",
        file=sys.stderr,
    )
    start = time.perf_counter()
    run(args.run_id, config_file=configs if len(configs) > 1 else configs[0], **files, **overrides)
    print(f"{args.run_id} finished in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    """``generate``: JSON lines of :class:`~monai_r2gen.inference.ReportInference` results, a summary on stderr."""
    from monai_r2gen.errors import ModelConfigError
    from monai_r2gen.inference import ReportInference

    if not (Path(args.model_dir) / "generator.json").is_file():
        raise ModelConfigError(f"{args.model_dir}: not a report generator directory (no generator.json)")
    overrides = {"num_beams": args.beam, "max_new_tokens": args.max_new_tokens}
    generation = {key: value for key, value in overrides.items() if value is not None}
    engine = ReportInference(
        args.model_dir,
        encoder_path=args.encoder_path,
        llm_path=args.llm_path,
        device=args.device,
        batch_size=args.batch_size,
        on_error="skip",
    )
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        out = open(args.output, "w", encoding="utf-8")  # noqa: SIM115 - closed below (stdout is not)
    else:
        out = sys.stdout
    studies = reports = files_skipped = 0
    start = time.perf_counter()
    quiet = [] if args.verbose else [logging.getLogger(n) for n in _QUIET_LOGGERS]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.ERROR)
    try:
        for result in engine.iter_results(args.inputs, generation=generation):
            out.write(json.dumps(result, ensure_ascii=False) + "\n")
            out.flush()
            studies += 1
            if "report" in result:
                reports += 1
                for problem in result["skipped"]:
                    files_skipped += 1
                    print(f"skipped {problem['file']}: {problem['reason']}", file=sys.stderr)
            else:
                files_skipped += len(result["skipped"])
                print(f"failed  {result['id']}: {result['error']}", file=sys.stderr)
    finally:
        for logger, level in zip(quiet, levels):
            logger.setLevel(level)
        if out is not sys.stdout:
            out.close()
    elapsed = time.perf_counter() - start
    load = f"model load {engine.load_seconds:.1f} s" if engine.load_seconds is not None else "model not loaded"
    rows = [
        ("studies", studies),
        ("reports", reports),
        ("failed", studies - reports),
        ("files skipped", files_skipped),
        ("seconds", f"{elapsed:.1f} ({load})"),
    ]
    if args.output:
        rows.append(("output", args.output))
    print("\n".join(f"{name:<14}{value}" for name, value in rows), file=sys.stderr)
    return 0 if reports else 1


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of the ``monai-r2gen`` command."""
    parser = argparse.ArgumentParser(prog="monai-r2gen", description="Chest X-ray report generation for MONAI.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    synth = sub.add_parser("synth", help="write the synthetic chest-radiograph dataset")
    synth.add_argument("--out", required=True, help="output folder")
    synth.add_argument("--n", type=int, default=2000, help="number of studies")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--image-size", type=int, default=256)
    synth.add_argument("--lateral-fraction", type=float, default=0.4, help="share of studies with a lateral view")
    synth.add_argument("--formats", default="png,dcm", help="comma-separated image formats: png, dcm")
    synth.add_argument("--workers", type=int, default=0, help="processes (0: all cores)")
    synth.set_defaults(func=_cmd_synth)

    check = sub.add_parser("check-data", help="load every study of a manifest and report unreadable items")
    check.add_argument("manifest", help="annotation.json, JSONL or CSV manifest")
    check.add_argument("--split", default=None, help="one split (default: train, val and test)")
    check.add_argument("--image-root", default=None)
    check.add_argument("--spatial-size", type=int, default=224)
    check.add_argument("--max-views", type=int, default=2)
    check.add_argument("--show", type=int, default=10, help="how many skipped items to list per split")
    check.add_argument("--strict", action="store_true", help="exit with status 1 when any item was skipped")
    check.set_defaults(func=_cmd_check_data)

    train = sub.add_parser(
        "train",
        help="train with the bundle (monai.bundle run training)",
        description="Run a bundle run id (default: training) with monai.bundle.run.",
    )
    train.add_argument(
        "--config",
        action="append",
        default=None,
        help=f"bundle config file; repeat to merge several (default: {DEFAULT_TRAIN_CONFIG})",
    )
    train.add_argument(
        "--bundle-root", default=None, help="folder for data/, runs/ and models/ (default: the folder holding configs/)"
    )
    train.add_argument("--run-id", default="training", help="run id (e.g. train_stage1)")
    train.add_argument("--meta-file", default=None, help="default: metadata.json beside the config")
    train.add_argument("--logging-file", default=None, help="default: logging.conf beside the config")
    train.add_argument(
        "overrides",
        nargs="*",
        type=_override,
        metavar="key=value",
        help="config overrides, e.g. device=cpu stage0#max_iterations=10",
    )
    train.set_defaults(func=_cmd_train)

    generate = sub.add_parser(
        "generate",
        help="write reports (JSON lines) for images, study folders and manifests",
        description="One JSON line per study: id, Study Instance UID, views used (frontal "
        "first), report or error, skipped files, generation settings, model name and "
        "fingerprint, seconds. Exit status 0 when at least one report was written, else 1.",
    )
    generate.add_argument("model_dir", metavar="MODEL_DIR", help="folder written by save_pretrained / training")
    generate.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="DICOM files or study folders, PNG / JPEG / TIFF files, annotation.json / JSONL / CSV",
    )
    generate.add_argument("--output", default=None, help="JSONL file (default: standard output)")
    generate.add_argument("--batch-size", type=_positive_int, default=8, help="studies generated together")
    generate.add_argument("--beam", type=_positive_int, default=None, help="beam size (default: the model's)")
    generate.add_argument(
        "--max-new-tokens", type=_positive_int, default=None, help="longest report in tokens (default: the model's)"
    )
    generate.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    generate.add_argument("--encoder-path", default=None, help="base encoder, when the model refers to one")
    generate.add_argument("--llm-path", default=None, help="base LLM, when the model refers to one")
    generate.set_defaults(func=_cmd_generate)

    evaluate = sub.add_parser("evaluate", help="score predicted reports (NLG + clinical efficacy)")
    evaluate.add_argument("--predictions", required=True, help="JSONL with 'id' and 'report' per line")
    evaluate.add_argument("--references", required=True, help="annotation.json or manifest")
    evaluate.add_argument("--split", default="test")
    evaluate.add_argument("--output", default=None, help="write every score and the settings as JSON here")
    evaluate.add_argument(
        "--uncertain", default="negative", choices=["positive", "negative", "ignore"], help="CE uncertain-label mapping"
    )
    evaluate.add_argument("--tokenize", default="simple", choices=["simple", "ptb", "none"], help="NLG tokenization")
    evaluate.add_argument("--clean-style", default="mimic_cxr", choices=["iu_xray", "mimic_cxr", "none"])
    evaluate.add_argument("--chexbert-checkpoint", default=None, help="local chexbert.pth (optional CheXbert F1)")
    evaluate.add_argument("--chexbert-tokenizer", default=None, help="local BERT tokenizer folder for CheXbert")
    evaluate.add_argument("--radgraph-dir", default=None, help="local RadGraph model folder (optional RadGraph F1)")
    evaluate.add_argument(
        "--nlg-metrics", default=None, help="comma-separated subset of BLEU,METEOR,ROUGE-L,CIDEr (default: all)"
    )
    evaluate.add_argument(
        "--findings",
        default=None,
        help="findings.json (or {study_id: [{kind, side, severity}]}): adds finding side / severity accuracy",
    )
    evaluate.add_argument(
        "--ceiling",
        action="store_true",
        help="with --findings (a phantom findings.json): add the paraphrase ceiling and BLEU-4 / ceiling",
    )
    evaluate.set_defaults(func=_cmd_evaluate)

    from monai_r2gen.analysis.cli import add_analyze_parser  # argparse only: no heavy import

    add_analyze_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``monai-r2gen`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    from monai_r2gen.errors import R2GenError

    try:
        return int(args.func(args) or 0)
    except R2GenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
