"""Throughput of the phantom dataset generator: studies per second with N workers against 1 worker, same run.

    python benchmarks/bench_synthetic.py                   # 2000 studies at 256 px, 2 workers vs 1 worker
    python benchmarks/bench_synthetic.py --n 200 --size 128

Both runs write PNG + DICOM to temporary folders (deleted afterwards) and the script checks that they produced
identical files, so the figure is for the real, deterministic output.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import resource
import tempfile
import time
from pathlib import Path

from monai_r2gen.data.synthetic import generate_dataset


def _run(out: Path, n: int, size: int, workers: int, formats: tuple[str, ...], seed: int) -> tuple[float, float]:
    """Wall time and CPU time (this process and its finished children) of one generation."""
    before = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    generate_dataset(out, n, seed=seed, image_size=size, workers=workers, formats=formats)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = sum(a.ru_utime + a.ru_stime - b.ru_utime - b.ru_stime for a, b in zip(after, before))
    return wall, cpu


def _same_tree(a: Path, b: Path) -> bool:
    files = sorted(str(p.relative_to(a)) for p in a.rglob("*") if p.is_file())
    other = sorted(str(p.relative_to(b)) for p in b.rglob("*") if p.is_file())
    if files != other:
        return False
    _, mismatch, errors = filecmp.cmpfiles(a, b, files, shallow=False)
    return not mismatch and not errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="studies per run")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--workers", type=int, default=2, help="workers of the measured run")
    parser.add_argument("--baseline-workers", type=int, default=1, help="workers of the baseline run")
    parser.add_argument("--formats", default="png,dcm", help="comma-separated formats")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    formats = tuple(f for f in args.formats.split(",") if f)

    print(
        f"phantom generator: {args.n} studies at {args.size} px, formats {','.join(formats)}, "
        f"{os.cpu_count()} CPU cores visible, load average {os.getloadavg()[0]:.1f}"
    )
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, workers in (("baseline", args.baseline_workers), ("measured", args.workers)):
            out = Path(tmp) / label
            wall, cpu = _run(out, args.n, args.size, workers, formats, args.seed)
            results[label] = (workers, wall, cpu)
        identical = _same_tree(Path(tmp) / "baseline", Path(tmp) / "measured")
    print(f"{'run':<10}{'workers':>8}{'total s':>10}{'studies/s':>11}{'CPU ms/study':>14}")
    for label, (workers, wall, cpu) in results.items():
        print(f"{label:<10}{workers:>8}{wall:>10.1f}{args.n / wall:>11.1f}{1000 * cpu / args.n:>14.1f}")
    speedup = results["baseline"][1] / results["measured"][1]
    print(
        f"speed-up {args.workers} vs {args.baseline_workers} worker(s): {speedup:.2f}x; outputs identical: {identical}"
    )


if __name__ == "__main__":
    main()
