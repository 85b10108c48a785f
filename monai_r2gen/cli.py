"""The ``monai-r2gen`` command.

Subcommands:
    synth        write the synthetic chest-radiograph dataset (the embedded default data)
    check-data   load every study of an annotation file / manifest through the data pipeline and count problems
    evaluate     score predicted reports against references (NLG + clinical efficacy)

Library code logs; this module is the one place that prints tables for people.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence

__all__ = ["main", "build_parser"]


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
    )
    print(format_score_table(scores))
    if args.output:
        print(f"scores and settings written to {args.output}")
    return 0


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
    evaluate.set_defaults(func=_cmd_evaluate)
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
