"""The training protocol's ablation on the embedded default: every variant at the same iteration budget, 2 seeds.

    python benchmarks/ablation.py --data data/ablation --out runs/ablation             # the full table (~40+ CPU-min)
    python benchmarks/ablation.py --data data/ablation --out runs/ablation --variants full,no_stage1 --seeds 0

Variants: full (stage 0 + 1 + 2), no_stage1, no_stage0, frozen_encoder_stage1, shallow, delta, deep (see
``monai_r2gen.analysis.ablation``). Each run trains the embedded default from scratch for ``--iterations`` iterations
in total (the bundle's 780 by default) and is scored on the synthetic test split: CE-14 micro / macro F1, BLEU-4,
CIDEr. The table is printed and written to ``<out>/ablation.md``; runs already scored are reused, so an interrupted
ablation continues where it stopped. ``monai-r2gen analyze ablation`` runs the same code.
"""

from __future__ import annotations

import argparse
import os
import time

from monai_r2gen.analysis.ablation import ABLATION_VARIANTS, run_ablation


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def build_parser() -> argparse.ArgumentParser:
    """The script's argument parser."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="synthetic data set folder (generated when empty)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--variants", type=_names, default=list(ABLATION_VARIANTS),
                        help=f"comma-separated subset of {','.join(ABLATION_VARIANTS)}")
    parser.add_argument("--seeds", type=_ints, default=[0, 1], help="comma-separated training seeds")
    parser.add_argument("--iterations", type=int, default=780, help="total training iterations per run")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--n-studies", type=int, default=2000, help="studies of the generated data set")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--eval-max-studies", type=int, default=None, help="score only the first N test studies")
    parser.add_argument("--device", default=None)
    return parser


def main() -> None:
    args = build_parser().parse_args()
    print(f"protocol ablation: {len(args.variants)} variants x {len(args.seeds)} seeds, {args.iterations} iterations "
          f"of batch {args.batch_size} each; {os.cpu_count()} CPU cores visible, load {os.getloadavg()[0]:.1f}")
    start = time.perf_counter()
    result = run_ablation(
        args.data, args.out, variants=args.variants, seeds=args.seeds, total_iterations=args.iterations,
        batch_size=args.batch_size, n_studies=args.n_studies, image_size=args.image_size,
        eval_max_studies=args.eval_max_studies, device=args.device,
    )  # fmt: skip
    print(result["table"])
    print(f"{len(result['runs'])} runs in {time.perf_counter() - start:.0f} s; table in {args.out}/ablation.md")


if __name__ == "__main__":
    main()
