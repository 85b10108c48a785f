"""Report generation speed of the embedded default: studies/s at batch 1, 8 and 32, greedy and beam 3.

The model is the embedded default (small CNN, resampler + finding prompts, tiny Llama 4 x 256) built from its
config with a tokenizer trained on a small phantom data set, **untrained** (random weights). An untrained model
never writes EOS, and ``min_new_tokens`` is set to ``max_new_tokens`` as well, so every report is exactly
``--max-new-tokens`` tokens (default 96, the embedded default's limit): the figures are for the longest reports
the embedded default writes, an upper bound on the time per study of a trained model, whose reports stop at EOS.

Each setting generates the same ``--studies`` studies (random 2-view images) in batches of its size; settings are
interleaved per repeat and medians printed, with the batch-32 / batch-1 throughput ratio (goal >= 5x) and the
projected time for the 400 studies of a test evaluation.

The beam-3 ratio has a ceiling of its own: beam search at batch ``b`` runs ``3 b`` sequences, so it cannot scale
better than greedy search from 3 to ``3 x 32`` sequences does. That greedy ratio (the same per-step work without
the beam bookkeeping) is measured too and printed as ``generation_beam3_ceiling``.

    python benchmarks/bench_generation.py              # ~3 min on 2 cores
    python benchmarks/bench_generation.py --quick      # batch 1, 4, 8; 16 tokens (< 30 s)
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ensure_synthetic, interleave, make_workflow, median, network_settings, print_ratio


def generate_all(model: Any, images: torch.Tensor, view_mask: torch.Tensor, batch: int, settings: dict) -> float:
    """Seconds to write reports for all ``images`` in batches of ``batch``."""
    start = time.perf_counter()
    for i in range(0, images.shape[0], batch):
        model.generate(images[i : i + batch], view_mask[i : i + batch], **settings)
    return time.perf_counter() - start


def build_parser() -> argparse.ArgumentParser:
    """The command-line options (also parsed by the docs tests)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 1, 4, 8, 16 new tokens, 1 repeat (< 30 s)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="default 1 8 32 (quick 1 4 8)")
    parser.add_argument("--studies", type=int, default=None, help="studies per setting (default: largest batch)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="tokens per report (default 96, quick 16)")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved repeats (default 3, quick 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--workdir", type=str, default=None)
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    quick = args.quick
    sizes = args.batch_sizes or ([1, 4, 8] if quick else [1, 8, 32])
    studies = args.studies or max(sizes)
    tokens = args.max_new_tokens or (16 if quick else 96)
    repeats = args.repeats or (1 if quick else 3)
    threads = args.threads or (1 if quick else None)
    if threads:
        torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING)
    started = time.perf_counter()
    print(f"bench_generation: {time.strftime('%Y-%m-%d %H:%M')}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        ensure_synthetic(work / "data", 40)
        workflow = make_workflow(work / "data", work / "run", network_settings(), [])
        model = workflow.network.eval()
    config = model.config
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(studies, config.max_views, 1, config.image_size, config.image_size, generator=generator)
    view_mask = torch.ones(studies, config.max_views, dtype=torch.bool)
    view_mask[::2, 1] = False  # every second study has one view, as in the phantoms
    print(f"untrained embedded default, K={model.num_image_tokens} prompts, {studies} studies per setting, "
          f"{tokens} new tokens per report, batch sizes {sizes}, {repeats} interleaved repeats")  # fmt: skip
    results: dict[str, dict[int, float]] = {}
    for label, beams in (("greedy", 1), ("beam3", 3)):
        settings = {"num_beams": beams, "max_new_tokens": tokens, "min_new_tokens": tokens}
        runs = {
            str(b): (lambda b=b, s=settings: generate_all(model, images, view_mask, b, s))  # type: ignore[misc]
            for b in sizes
        }
        times = interleave(runs, repeats, warmup=1)
        results[label] = {b: studies / median(times[str(b)]) for b in sizes}
        for b in sizes:
            t = median(times[str(b)])
            print(f"  {label:<6} batch {b:>3}: {studies / t:7.2f} studies/s  {studies * tokens / t:8.0f} tokens/s  "
                  f"(median {t:.2f} s for {studies} studies)")  # fmt: skip
    big, one = max(sizes), min(sizes)
    beams = 3
    many = images.repeat(beams, 1, 1, 1, 1)[: beams * big]
    many_mask = view_mask.repeat(beams, 1)[: beams * big]
    settings = {"num_beams": 1, "max_new_tokens": tokens, "min_new_tokens": tokens}
    runs = {str(b): (lambda b=b: generate_all(model, many, many_mask, b, settings)) for b in (beams * one, beams * big)}
    times = interleave(runs, repeats, warmup=1)
    ceiling = median(times[str(beams * one)]) / median(times[str(beams * big)])
    print(f"  greedy over {many.shape[0]} studies: batch {beams * one} {median(times[str(beams * one)]):.2f} s, "
          f"batch {beams * big} {median(times[str(beams * big)]):.2f} s")  # fmt: skip
    for label, rates in results.items():
        print_ratio(f"generation_batch{big}_over_batch{one}_{label}", rates[big] / rates[one], ">= 5")
    for label, rates in results.items():
        print(f"projected 400 studies at batch {big}, {label}: {400 / rates[big]:.1f} s (goal <= 15 s greedy)")
    print_ratio("generation_400_studies_seconds_greedy", 400 / results["greedy"][big], "<= 15")
    print_ratio("generation_beam3_ceiling", ceiling)
    print_ratio("generation_beam3_share_of_ceiling", (results["beam3"][big] / results["beam3"][one]) / ceiling)
    print(f"total {time.perf_counter() - started:.0f} s, load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
