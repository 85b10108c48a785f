"""The training protocol's ablation on the embedded default: every variant at the same iteration budget, 2 seeds.

    python benchmarks/ablation.py --data data/ablation --out runs/ablation             # the full table (~1 h)
    python benchmarks/ablation.py --data data/ablation --out runs/ablation --variants full,no_stage1 --seeds 0

Variants: full (stage 0 + 1 + 2), no_stage1, no_stage0, trained_encoder, shallow, delta, deep (see
``monai_r2gen.analysis.ablation``). Each run trains the embedded default: the same encoder warm-up
(``--warmup-iterations``, default the bundle's), then ``--iterations`` iterations shared by the variant's stages
(the bundle's 200 + 40 + 100 = 340 by default), and is scored on the synthetic test split: CE-14 micro / macro
F1, BLEU-4, CIDEr. Leading stages identical between variants of a seed (the warm-up, stage 0) are trained once
and copied. The table is printed and written to ``<out>/ablation.md``; runs already scored are reused, so an interrupted
ablation continues where it stopped. ``monai-r2gen analyze ablation`` runs the same code.
"""

from __future__ import annotations

import argparse
import os
import time

from monai_r2gen.analysis.cli import add_ablation_arguments, cmd_ablation


def build_parser() -> argparse.ArgumentParser:
    """The script's argument parser: the options of ``monai-r2gen analyze ablation``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    return add_ablation_arguments(parser)


def main() -> None:
    args = build_parser().parse_args()
    seeds, variants = args.seeds, args.variants or "all"
    warmup = args.warmup_iterations if args.warmup_iterations is not None else "the bundle's"
    print(
        f"protocol ablation: variants {variants}, seeds {seeds}, {warmup} warm-up + "
        f"{args.iterations} iterations of batch {args.batch_size} each; {os.cpu_count()} CPU cores visible, "
        f"load {os.getloadavg()[0]:.1f}"
    )
    start = time.perf_counter()
    cmd_ablation(args)
    print(f"done in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
