"""Stage-1 speed with and without the frozen-encoder feature cache, measured in the same run.

Builds the embedded default model (small CNN at 128 px, tiny Llama 4 x 256, K = 16) on a synthetic data set, then
trains stage 1 (LLM frozen, encoder frozen, projector trained) for the same number of iterations twice: once decoding
images and running the encoder every iteration (uncached), once reading the encoder's tokens from the on-disk cache
(cached; the one-off cache fill is timed separately). Prints both times and the ratio.

    python benchmarks/bench_feature_cache.py --studies 300 --iterations 40
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=300, help="synthetic studies to generate")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--iterations", type=int, default=40, help="stage-1 iterations per run")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workdir", type=str, default=None, help="keep data and runs here (default: a temp dir)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from monai_r2gen.data.synthetic import generate_dataset
    from monai_r2gen.engines.workflows import ReportTrainingWorkflow

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        data = work / "data"
        if not (data / "annotation.json").exists():
            start = time.perf_counter()
            generate_dataset(data, n_studies=args.studies, seed=0, image_size=args.image_size, formats=("png",))
            elapsed = time.perf_counter() - start
            print(f"synthetic data: {args.studies} studies at {args.image_size} px in {elapsed:.1f} s")
        network = {"image_size": args.image_size}
        stage = {"name": "stage1", "train_encoder": False, "validate": False, "batch_size": args.batch_size,
                 "max_iterations": args.iterations, "lr": 1e-3, "checkpoint_interval": 10**9}  # fmt: skip
        results = {}
        for label, use_cache in (("uncached", False), ("cached", True)):
            workflow = ReportTrainingWorkflow(
                network,
                dataset_dir=data,
                output_dir=work / f"run_{label}",
                stages=[{**stage, "feature_cache": use_cache}],
                tensorboard=False,
                seed=0,
                resume=False,
            )
            results[label] = workflow.run()["stages"]["stage1"]
        uncached, cached = results["uncached"]["seconds"], results["cached"]["seconds"]
        fill = results["cached"]["feature_cache"]["fill_seconds"]
        samples = args.iterations * args.batch_size
        print(f"stage 1, {args.iterations} iterations of batch {args.batch_size} (encoder frozen):")
        print(f"  uncached (decode + encoder every step): {uncached:8.2f} s  {samples / uncached:7.1f} samples/s")
        print(f"  cached   (tokens read from disk):       {cached:8.2f} s  {samples / cached:7.1f} samples/s")
        print(f"  one-off cache fill:                      {fill:8.2f} s")
        print(f"  speed-up (uncached / cached): {uncached / cached:.2f}x")


if __name__ == "__main__":
    main()
