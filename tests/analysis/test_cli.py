"""``monai-r2gen analyze`` argument parsing and handlers."""

from __future__ import annotations

import argparse

from monai_r2gen.analysis.cli import add_analyze_parser, cmd_ablation, cmd_attention, cmd_prompts


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="monai-r2gen")
    add_analyze_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def test_parse_the_three_analyses():
    p = _parser()
    args = p.parse_args(
        [
            "analyze",
            "prompts",
            "--model",
            "runs/model",
            "--manifest",
            "a.json",
            "--out",
            "o",
            "--run-dir",
            "runs/training",
            "--stages",
            "stage1",
            "stage2",
        ]
    )
    assert args.func is cmd_prompts and args.stages == ["stage1", "stage2"] and args.max_studies == 32
    args = p.parse_args(
        [
            "analyze",
            "attention",
            "--manifest",
            "a.json",
            "--out",
            "o",
            "--words",
            "effusion,heart",
            "--layers",
            "0,2",
            "--reports",
            "reference",
        ]
    )
    assert args.func is cmd_attention and args.model == "embedded"
    assert args.words == ["effusion", "heart"] and args.layers == [0, 2]
    args = p.parse_args(
        ["analyze", "ablation", "--data", "d", "--out", "o", "--seeds", "0,1,2", "--variants", "full,deep"]
    )
    assert args.func is cmd_ablation and args.seeds == [0, 1, 2] and args.variants == ["full", "deep"]
    assert args.iterations == 340 and args.warmup_iterations is None  # None: the bundle's warm-up


def test_prompts_handler_prints_the_table(saved_model_dir, phantom_dir, tmp_path, capsys):
    args = _parser().parse_args(
        [
            "analyze",
            "prompts",
            "--model",
            str(saved_model_dir),
            "--manifest",
            str(phantom_dir / "annotation.json"),
            "--out",
            str(tmp_path),
            "--max-studies",
            "2",
        ]
    )
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("| model |") and "prompt_norms.png" in out


def test_attention_handler_prints_shares(saved_model_dir, phantom_dir, tmp_path, capsys):
    args = _parser().parse_args(
        [
            "analyze",
            "attention",
            "--model",
            str(saved_model_dir),
            "--manifest",
            str(phantom_dir / "annotation.json"),
            "--out",
            str(tmp_path),
            "--max-studies",
            "2",
            "--reports",
            "reference",
            "--no-overlays",
        ]
    )
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "visual share of attention (given reports, 2 studies" in out and "layer 0" in out
    assert not (tmp_path / "overlays").exists()
