"""The benchmark scripts run end to end in their short modes and print their ratio lines.

Each script runs in a subprocess (``--quick``, ``--tiny`` or ``--dry-run``); the test checks the exit status and
that every expected ``ratio <name> = <value>`` line is there with a positive finite value. Whether the goals are
met is what the benchmarks measure, not what these tests assert.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
RATIO = re.compile(r"^ratio (\w+) = (\S+)", re.MULTILINE)


def _run(script: str, *args: str, timeout: int = 240) -> dict[str, float]:
    """Run ``benchmarks/<script> <args>``; returns its ratios after checking the exit status."""
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=BENCHMARKS.parent,
        check=False,
    )
    assert result.returncode == 0, f"{script} {args} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return {name: float(value) for name, value in RATIO.findall(result.stdout)}


def _check(ratios: dict[str, float], expected: set[str]) -> None:
    missing = expected - set(ratios)
    assert not missing, f"ratio lines missing: {sorted(missing)} (got {sorted(ratios)})"
    for name in expected:
        assert math.isfinite(ratios[name]) and ratios[name] > 0, f"{name} = {ratios[name]}"


@pytest.mark.slow
def test_bench_training_quick() -> None:
    ratios = _run("bench_training.py", "--quick")
    _check(
        ratios,
        {
            "trainer_over_bare_stage0",
            "trainer_over_bare_stage1",
            "trainer_over_bare_stage2",
            "stage2_flops_share_of_matmul_peak",
            "llava_loss_abs_diff",
            "llava_over_ours_bare_step",
            "llava_over_ours_trainer_step",
            "epoch_throughput_ours_over_llava",
            "epoch_throughput_ours_grouped_over_llava",
            "epoch_throughput_ours_packed_over_llava",
            "generation_throughput_ours_over_llava",
            "generation_fixed_length_ours_over_llava",
            "train_peak_rss_stage2_over_stage0",
        },
    )
    assert ratios["host_syncs_ours_minus_llava"] < 0  # LLaVA's image-token check reads on the GPU; ours does not
    assert ratios["llava_loss_abs_diff"] < 1e-4  # the LLaVA build computes the same loss with copied weights


@pytest.mark.slow
def test_bench_generation_quick() -> None:
    ratios = _run("bench_generation.py", "--quick", timeout=180)
    _check(
        ratios,
        {
            "generation_batch8_over_batch1_greedy",
            "generation_batch8_over_batch1_beam3",
            "generation_400_studies_seconds_greedy",
            "generation_beam3_ceiling",
            "generation_beam3_share_of_ceiling",
        },
    )


@pytest.mark.slow
def test_bench_loading_quick(pydicom_data_dir: Path) -> None:
    ratios = _run("bench_loading.py", "--quick", "--repeats", "2", timeout=180)
    _check(
        ratios,
        {
            "loading_decode_over_pixel_array_uncompressed",
            "loading_model_input_over_pixel_array_uncompressed",
            "loading_decode_over_pixel_array_j2k_lossless",
            "loading_model_input_over_pixel_array_j2k_lossless",
            "loading_floor_over_pixel_array_uncompressed",
            "loading_floor_over_pixel_array_j2k_lossless",
        },
    )


def test_bench_gpu_dry_run() -> None:
    ratios = _run("bench_gpu.py", "--dry-run", timeout=60)
    _check(ratios, {"dry_run_7b_full_finetuning_state_gib"})


@pytest.mark.slow
def test_bench_gpu_tiny() -> None:
    ratios = _run("bench_gpu.py", "--tiny", timeout=180)
    _check(
        ratios,
        {
            "gpu_llm_param_formula_over_counted",
            "gpu_vit_param_formula_over_counted",
            "gpu_mfu_checkpointing_off",
            "gpu_mfu_checkpointing_on",
            "gpu_step_checkpointing_on_over_off",
        },
    )
    # the dry run's parameter arithmetic is exact for the shapes the package builds
    assert ratios["gpu_llm_param_formula_over_counted"] == pytest.approx(1.0)
    assert ratios["gpu_vit_param_formula_over_counted"] == pytest.approx(1.0)
