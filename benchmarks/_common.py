"""Helpers shared by the benchmark scripts: timing, interleaved A/B repeats, ratio lines, the embedded default's
settings and a small synthetic data set.

Every benchmark prints its headline figures as ``ratio <name> = <value>`` lines (one per ratio), which
``tests/test_benchmarks.py`` parses.
"""

from __future__ import annotations

import copy
import functools
import gc
import math
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TRAIN_YAML = REPO / "bundle" / "configs" / "train.yaml"


def median(values: list[float]) -> float:
    """The median of ``values`` (nan for an empty list)."""
    return statistics.median(values) if values else math.nan


def interleave(runs: Mapping[str, Callable[[], float | None]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Run each callable ``repeats`` times in turn (A B A B ...), after ``warmup`` untimed rounds.

    A callable may return its own measured seconds (e.g. excluding set-up); when it returns None its wall time is
    used. The order alternates each round (A B, then B A) so that a slow phase of a shared machine hits both sides.

    Returns:
        ``{name: [seconds per repeat]}``.
    """
    names = list(runs)
    for _ in range(warmup):
        for name in names:
            runs[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(repeats):
        order = names if i % 2 == 0 else names[::-1]
        for name in order:
            gc.collect()
            start = time.perf_counter()
            measured = runs[name]()
            elapsed = time.perf_counter() - start
            times[name].append(float(measured) if measured is not None else elapsed)
    return times


def print_ratio(name: str, value: float, goal: str = "") -> None:
    """Print one machine-readable ratio line: ``ratio <name> = <value>`` (and the goal, if any, after ``#``)."""
    suffix = f"   # goal {goal}" if goal else ""
    print(f"ratio {name} = {value:.6g}{suffix}", flush=True)


def matmul_peak_flops(n: int = 2048, repeats: int = 10, dtype: Any = None) -> float:
    """This machine's fp32 (or ``dtype``) matmul throughput in FLOP/s: median of ``repeats`` ``n x n`` products."""
    import torch

    dtype = dtype or torch.float32
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    torch.matmul(a, b)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        times.append(time.perf_counter() - start)
    return 2.0 * n**3 / median(times)


@functools.lru_cache(maxsize=1)
def _embedded_default() -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """``network_config`` and the stage settings of ``bundle/configs/train.yaml``, parsed once (expressions
    resolved by MONAI's ``ConfigParser``, which takes a few seconds)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(TRAIN_YAML))
    network = dict(parser.get_parsed_content("network_config"))
    stages = {name: dict(parser.get_parsed_content(name)) for name in ("encoder_warmup", "stage0", "stage1", "stage2")}
    return network, stages


def stage_settings(names: tuple[str, ...] = ("encoder_warmup", "stage0", "stage1", "stage2")) -> dict[str, dict]:
    """The embedded default's stage settings, parsed from ``bundle/configs/train.yaml`` (expressions resolved)."""
    stages = _embedded_default()[1]
    return {name: copy.deepcopy(stages[name]) for name in names}


def network_settings() -> dict[str, Any]:
    """The embedded default's ``network_config`` mapping from ``bundle/configs/train.yaml``."""
    return copy.deepcopy(_embedded_default()[0])


def ensure_synthetic(data_dir: Path, n_studies: int, image_size: int = 128) -> float:
    """Generate the phantom data set (PNG) in ``data_dir`` unless it is there; returns the seconds it took."""
    if (data_dir / "annotation.json").exists():
        return 0.0
    from monai_r2gen.data.synthetic import generate_dataset

    start = time.perf_counter()
    generate_dataset(data_dir, n_studies=n_studies, seed=0, image_size=image_size, formats=("png",), workers=1)
    return time.perf_counter() - start


def make_workflow(data_dir: Path, out_dir: Path, network: Mapping[str, Any], stages: list[dict]) -> Any:
    """A :class:`~monai_r2gen.engines.workflows.ReportTrainingWorkflow` over ``data_dir`` with its network built
    (in-memory dataset cache, no TensorBoard, no progress output, no resume)."""
    from monai_r2gen.engines.workflows import ReportTrainingWorkflow

    workflow = ReportTrainingWorkflow(
        dict(network),
        dataset_dir=data_dir,
        output_dir=out_dir,
        stages=stages,
        dataset_cache="cache",
        device="cpu",
        tensorboard=False,
        progress="off",
        seed=0,
        resume=False,
    )
    workflow.build_network()
    return workflow


def peak_rss_mb() -> float:
    """This process's peak resident set size in MB (``ru_maxrss``, KiB on Linux)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
