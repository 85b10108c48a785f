"""Training speed of the embedded default, measured against a bare PyTorch loop, transformers' LLaVA and the
machine's own matmul peak, all in one run.

What it measures (every A/B pair interleaved, medians printed):

1. per stage of the embedded default (stage 0 LM warm-up, stage 1 projector, stage 2 LoRA + projector; settings
   read from ``bundle/configs/train.yaml``): samples/s and tokens/s through the project's trainer (the MONAI
   ``SupervisedTrainer`` of :func:`~monai_r2gen.engines.workflows.create_stage_trainer`, with the workflow's
   gradient clipping and LR schedule handlers) against a bare loop (forward, backward, clip, step, schedule) over
   the same model, pre-collated batches and optimizer;
2. stage 2 against ``transformers.LlavaForConditionalGeneration`` built around the same parts: the embedded
   default *without* its finding head / finding prompts (LLaVA has no such head; ``K`` = 16 visual prompts), the
   small CNN as LLaVA's vision tower, view fusion + resampler as its multi-modal projector, the same Llama
   (weights copied) and LoRA on the same layers (all linear layers of the LLM, r 16, alpha 32). Loss parity is
   checked on one batch; then the step on identical batches, and a whole epoch of the training split, each side
   with its own batching (ours: the workflow's loader, also with ``group_by_length`` and with ``pack_sequences``, the
   same batches packed into fewer rows; LLaVA: a plain shuffled
   loader with pad-to-longest collation); and the host synchronisations of one training forward on the paths a GPU
   takes (:class:`~monai_r2gen.networks.host_syncs.HostSyncCounter`), the language model's own ones included;
3. FLOPs of the stage-2 step (``torch.utils.flop_counter.FlopCounterMode``) over its median time, as a share of
   the fp32 matmul peak (2048 x 2048 ``torch.matmul``) measured in the same run;
4. peak RSS per stage (one subprocess per stage: build, apply the stage, train a few steps).

    python benchmarks/bench_training.py            # ~5 min on 2 cores
    python benchmarks/bench_training.py --quick    # a handful of iterations at batch 4 (< 60 s), for the tests

Headline figures are printed as ``ratio <name> = <value>`` lines.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from monai_r2gen.networks.host_syncs import HostSyncCounter

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    ensure_synthetic,
    interleave,
    make_workflow,
    matmul_peak_flops,
    median,
    network_settings,
    peak_rss_mb,
    print_ratio,
    stage_settings,
)

STAGES = ("stage0", "stage1", "stage2")


# ---------------------------------------------------------------------------------------------------------------
# one stage: batches, optimizer, trainer and bare loop
# ---------------------------------------------------------------------------------------------------------------


def _plain_update(loss: torch.Tensor, optimizer: Any, scheduler: Any, grad_clip: float) -> None:
    """Backward, gradient clipping (when ``grad_clip`` > 0), optimizer and schedule step: the bare loops' update."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    scheduler.step()


class StageBench:
    """The model, pre-collated batches and optimizer of one stage, and the two ways to train on them.

    Args:
        workflow: a workflow whose network is built.
        name: the stage name (one of ``workflow.stages``).
        n_batches: distinct batches collated once, up front (cycled through by both sides).
        batch_size: overrides the stage's batch size.
    """

    def __init__(self, workflow: Any, name: str, n_batches: int, batch_size: int | None = None) -> None:
        from monai.optimizers import WarmupCosineSchedule

        from monai_r2gen.engines.workflows import ReportBatchPreparer

        self.workflow = workflow
        self.stage = next(s for s in workflow.stages if s.name == name)
        if batch_size:
            self.stage["batch_size"] = int(batch_size)
        self.network = workflow.network
        workflow._apply_stage(self.stage)
        self.preset = workflow._preset(self.stage)
        dataset = workflow._dataset(workflow.train_split, self.stage, None, train=True)
        self.dataset = dataset
        loader, _ = workflow._loader(dataset, self.stage.batch_size, train=True)
        self.batches = list(itertools.islice(itertools.cycle(loader), n_batches))
        self.optimizer = workflow._optimizer(self.stage)
        self.scheduler = WarmupCosineSchedule(
            self.optimizer, warmup_steps=int(self.stage.warmup_steps), t_total=10**6, end_lr=float(self.stage.end_lr)
        )
        self.preparer = ReportBatchPreparer(
            mode="findings" if self.preset.findings_only else "text" if self.stage.text_only else "train",
            teacher_forcing=float(self.stage.teacher_forcing),
        )
        self.inputs = [self.preparer(b, torch.device("cpu")) for b in self.batches]
        self.grad_clip = float(self.stage.grad_clip or 0.0)

    def tokens(self, batches: list[dict] | None = None) -> tuple[int, int]:
        """(real, padded) token positions of ``batches`` (default: the pre-collated ones)."""
        batches = self.batches if batches is None else batches
        real = sum(int(b["attention_mask"].sum()) for b in batches)
        padded = sum(int(b["attention_mask"].numel()) for b in batches)
        return real, padded

    def samples(self, batches: list[dict] | None = None) -> int:
        """Studies in ``batches``."""
        batches = self.batches if batches is None else batches
        return sum(int(b["input_ids"].shape[0]) for b in batches)

    def trainer_run(self, batches: list[dict] | None = None, loader: Any = None, pack: bool = False) -> float:
        """Seconds of ``trainer.run()`` over the batches (or a loader) with the workflow's clip and LR handlers
        (``pack``: with ``pack_sequences``); building the trainer is not timed."""
        from monai.handlers import LrScheduleHandler

        from monai_r2gen.engines.handlers import GradientClipHandler
        from monai_r2gen.engines.workflows import create_stage_trainer

        data = loader if loader is not None else (self.batches if batches is None else batches)
        trainer = create_stage_trainer(
            network=self.network,
            optimizer=self.optimizer,
            data_loader=data,
            max_epochs=1,
            device="cpu",
            text_only=bool(self.stage.text_only),
            findings_only=self.preset.findings_only,
            teacher_forcing=float(self.stage.teacher_forcing),
            pack_sequences=pack,
        )
        LrScheduleHandler(self.scheduler, print_lr=False, epoch_level=False).attach(trainer)
        GradientClipHandler(self.grad_clip).attach(trainer)
        start = time.perf_counter()
        trainer.run()
        return time.perf_counter() - start

    def bare_step(self, images: Any, kwargs: dict[str, Any]) -> None:
        """One plain PyTorch step: forward, backward, clip, optimizer and schedule."""
        self.network.train()
        _plain_update(self.network(images, **kwargs).loss, self.optimizer, self.scheduler, self.grad_clip)

    def bare_run(self) -> float:
        """Seconds of the bare loop over the pre-collated batches (kwargs prepared once, outside the timing)."""
        start = time.perf_counter()
        for images, _, _, kwargs in self.inputs:
            self.bare_step(images, kwargs)
        return time.perf_counter() - start

    def step_flops(self) -> int:
        """FLOPs of one training step's forward and backward on the first batch (FlopCounterMode)."""
        from torch.utils.flop_counter import FlopCounterMode

        images, _, _, kwargs = self.inputs[0]
        self.network.train()
        with FlopCounterMode(display=False) as counter:
            loss = self.network(images, **kwargs).loss
            loss.backward()
        self.optimizer.zero_grad(set_to_none=True)
        return int(counter.get_total_flops())


# ---------------------------------------------------------------------------------------------------------------
# transformers' LLaVA around the same parts
# ---------------------------------------------------------------------------------------------------------------


class _CNNTower(torch.nn.Module):
    """LLaVA vision tower around the project's encoder: ``pixel_values`` ``(B, V, C, H, W)`` -> hidden states
    ``(B, V, N, D)`` (one "layer", so ``vision_feature_layer=-1`` selects it)."""

    def __init__(self, encoder: torch.nn.Module, fusion_projector: _FusionProjector) -> None:
        super().__init__()
        self.encoder = encoder
        self._head = [fusion_projector]  # a list: not a submodule, only to hand the view mask on

    def forward(self, pixel_values: torch.Tensor, **_: Any) -> Any:
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        tokens = self.encoder(pixel_values, self._head[0].view_mask)
        return BaseModelOutputWithPooling(last_hidden_state=tokens, hidden_states=(tokens,))


class _FusionProjector(torch.nn.Module):
    """LLaVA multi-modal projector around the project's view fusion and resampler: ``(B, V, N, D)`` -> ``(B, K, H)``.

    ``view_mask`` is set per batch by the caller (LLaVA's forward has no argument for it)."""

    def __init__(self, fusion: torch.nn.Module, projector: torch.nn.Module) -> None:
        super().__init__()
        self.fusion = fusion
        self.projector = projector
        self.view_mask: torch.Tensor | None = None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        fused, mask = self.fusion(features.float(), self.view_mask)
        prompts, _ = self.projector(fused, mask)
        return prompts


def build_llava(ours: Any) -> Any:
    """``LlavaForConditionalGeneration`` with copies of ``ours``'s encoder (vision tower), fusion + projector
    (multi-modal projector) and LLM weights (before LoRA); the image token is ours."""
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration

    text_config = copy.deepcopy(ours.base_llm.config)
    vision_config = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8
    )  # fmt: skip  (replaced)
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_id=int(ours.image_token_id),
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        tie_word_embeddings=bool(getattr(text_config, "tie_word_embeddings", False)),
    )
    config._attn_implementation = ours.base_llm.config._attn_implementation
    llava = LlavaForConditionalGeneration(config)
    head = _FusionProjector(copy.deepcopy(ours.fusion), copy.deepcopy(ours.projector))
    llava.model.multi_modal_projector = head
    llava.model.vision_tower = _CNNTower(copy.deepcopy(ours.encoder), head)
    llava.model.language_model.load_state_dict(ours.base_llm.model.state_dict())
    llava.lm_head.load_state_dict(ours.base_llm.lm_head.state_dict())
    llava.model.language_model.config._attn_implementation = config._attn_implementation
    return llava


def llava_lora(llava: Any, lora: dict[str, Any], targets: list[str]) -> Any:
    """LoRA (peft) on the LLaVA language model's ``targets``; vision tower and projector train in full (stage 2)."""
    from peft import LoraConfig, get_peft_model

    pattern = r".*language_model.*\.(" + "|".join(targets) + r")$"
    config = LoraConfig(r=int(lora["r"]), lora_alpha=int(lora["alpha"]), lora_dropout=float(lora.get("dropout", 0.0)),
                        target_modules=pattern, bias="none")  # fmt: skip
    model = get_peft_model(llava, config)
    base = model.get_base_model()
    for module in (base.model.vision_tower, base.model.multi_modal_projector):
        module.requires_grad_(True)
    return model


def llava_collate(pad_token_id: int) -> Any:
    """The usual LLaVA training collation: pad ``input_ids`` / ``labels`` / ``attention_mask`` to the longest in the
    batch (right), stack the views (zero views appended, a view mask for the fusion)."""

    def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
        width = max(len(item["input_ids"]) for item in items)
        ids = torch.full((len(items), width), pad_token_id, dtype=torch.long)
        labels = torch.full((len(items), width), -100, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        v_max = max(torch.as_tensor(item["image"]).shape[0] for item in items)
        first = torch.as_tensor(items[0]["image"])
        images = torch.zeros((len(items), v_max, *first.shape[1:]), dtype=first.dtype)
        view_mask = torch.zeros((len(items), v_max), dtype=torch.bool)
        for row, item in enumerate(items):
            n = len(item["input_ids"])
            ids[row, :n] = torch.as_tensor(item["input_ids"])
            labels[row, :n] = torch.as_tensor(item["labels"])
            mask[row, :n] = 1
            image = torch.as_tensor(item["image"])
            images[row, : image.shape[0]] = image
            view_mask[row, : image.shape[0]] = True
        return {"input_ids": ids, "labels": labels, "attention_mask": mask, "pixel_values": images,
                "view_mask": view_mask}  # fmt: skip

    return collate


class LlavaBench:
    """Stage-2 training of the LLaVA build: the step on our batches and an epoch with its own loader."""

    def __init__(self, model: Any, lr: float, grad_clip: float, scheduler_settings: dict[str, Any]) -> None:
        from monai.optimizers import WarmupCosineSchedule

        self.model = model
        params = [p for p in model.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": 0.0}, {"params": no_decay, "weight_decay": 0.0}], lr=lr
        )
        self.scheduler = WarmupCosineSchedule(self.optimizer, t_total=10**6, **scheduler_settings)
        self.grad_clip = grad_clip
        self.head = model.get_base_model().model.multi_modal_projector

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """LLaVA's loss on one batch (``pixel_values`` or ``image`` key)."""
        self.head.view_mask = batch["view_mask"]
        pixels = batch.get("pixel_values", batch.get("image"))
        return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          labels=batch["labels"], pixel_values=pixels).loss  # fmt: skip

    def step(self, batch: dict[str, Any]) -> None:
        """One plain step."""
        self.model.train()
        _plain_update(self.loss(batch), self.optimizer, self.scheduler, self.grad_clip)

    def run(self, batches: Any) -> float:
        """Seconds of plain steps over ``batches`` (a list or a loader; loading included)."""
        start = time.perf_counter()
        for batch in batches:
            self.step(batch)
        return time.perf_counter() - start


# ---------------------------------------------------------------------------------------------------------------
# peak RSS: one subprocess per stage
# ---------------------------------------------------------------------------------------------------------------


def rss_child(args: argparse.Namespace) -> None:
    """Subprocess body: build, apply one stage, train ``args.steps`` steps through the trainer, print RSS as JSON.

    ``peak_mb`` is the process's ``ru_maxrss``; ``train_peak_mb`` the largest RSS sampled (psutil, every 5 ms)
    while the trainer ran, and ``before_train_mb`` the RSS just before it (building the model and tokenizer and
    importing the libraries can peak higher than training the tiny model does)."""
    import threading

    import psutil

    work = Path(args.workdir)
    settings = json.loads((work / "settings.json").read_text())
    workflow = make_workflow(work / "data", work / f"rss_{args.rss_stage}", settings["network"], settings["stages"])
    bench = StageBench(workflow, args.rss_stage, n_batches=args.steps, batch_size=args.batch_size)
    process = psutil.Process()
    before = process.memory_info().rss / 2**20
    sampled = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            sampled.append(process.memory_info().rss / 2**20)
            done.wait(0.005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    bench.trainer_run()
    done.set()
    thread.join()
    record = {"stage": args.rss_stage, "before_train_mb": before, "train_peak_mb": max(sampled),
              "peak_mb": peak_rss_mb()}  # fmt: skip
    print("RSS " + json.dumps(record), flush=True)


def measure_rss(args: argparse.Namespace, work: Path) -> dict[str, dict[str, float]]:
    """Peak RSS of each stage, one subprocess each."""
    out: dict[str, dict[str, float]] = {}
    (work / "settings.json").write_text(json.dumps({"network": network_settings(), "stages": _stages(args)}))
    for stage in STAGES:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--rss-stage", stage, "--workdir", str(work),
               "--steps", str(args.steps)]  # fmt: skip
        if args.batch_size:
            cmd += ["--batch-size", str(args.batch_size)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        line = next((ln for ln in result.stdout.splitlines() if ln.startswith("RSS ")), None)
        if result.returncode != 0 or line is None:
            raise RuntimeError(f"RSS subprocess for {stage} failed:\n{result.stdout}\n{result.stderr[-3000:]}")
        out[stage] = json.loads(line[4:])
    return out


# ---------------------------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------------------------


def _stages(args: argparse.Namespace) -> list[dict[str, Any]]:
    settings = stage_settings(STAGES)
    return [{**settings[name], "validate": False} for name in STAGES]


def _report_pair(label: str, times: dict[str, list[float]], a: str, b: str, samples: int, tokens: tuple[int, int],
                 ratio_name: str, goal: str = "") -> float:  # fmt: skip
    """Print medians, samples/s and tokens/s of two sides and the ratio of their medians (a / b)."""
    real, padded = tokens
    for side in (a, b):
        t = median(times[side])
        print(f"  {label} {side:<14} median {t:8.3f} s  ({len(times[side])} repeats)  {samples / t:8.1f} samples/s  "
              f"{real / t:9.0f} tokens/s  ({padded / t:9.0f} incl. padding)")  # fmt: skip
    ratio = median(times[a]) / median(times[b])
    print_ratio(ratio_name, ratio, goal)
    return ratio


def trainer_section(args: argparse.Namespace, work: Path, peak: float) -> None:
    """Sections 1 and 3: trainer vs bare loop per stage, and the stage-2 step's FLOP/s against the matmul peak."""
    workflow = make_workflow(work / "data", work / "run", network_settings(), _stages(args))
    print(f"\n1. trainer vs bare loop ({args.repeats} interleaved repeats of {args.steps} steps, batch "
          f"{args.batch_size or 'of the stage'})")  # fmt: skip
    bench: StageBench | None = None
    times: dict[str, list[float]] = {}
    for name in STAGES:
        bench = StageBench(workflow, name, n_batches=args.steps, batch_size=args.batch_size)
        times = interleave({"trainer": bench.trainer_run, "bare": bench.bare_run}, args.repeats)
        print(f" {name}: batch {bench.stage.batch_size}, {len(bench.dataset)} training studies, "
              f"text_only={bool(bench.stage.text_only)}")  # fmt: skip
        _report_pair(name, times, "trainer", "bare", bench.samples(), bench.tokens(),
                     f"trainer_over_bare_{name}", "<= 1.10")  # fmt: skip
    assert bench is not None
    flops = bench.step_flops()
    step_time = median(times["bare"]) / args.steps
    achieved = flops / step_time
    print(f"\n3. stage-2 step: {flops / 1e9:.2f} GFLOP (forward + backward, FlopCounterMode), median bare step "
          f"{step_time * 1e3:.0f} ms -> {achieved / 1e9:.2f} GFLOP/s; trainer step "
          f"{median(times['trainer']) / args.steps * 1e3:.0f} ms")  # fmt: skip
    print_ratio("stage2_flops_share_of_matmul_peak", achieved / peak, ">= 0.40")


def generation_race(
    ours: Any, llava: Any, head: Any, batches: list[dict], tokens: int, repeats: int, natural: bool
) -> None:
    """Greedy reports for the same studies with copied weights: ours (``generate``) against LLaVA's ``generate``,
    the same settings on both sides; prints the share of identical reports.

    ``natural``: each report stops at its EOS (at most ``tokens``); ours drops a finished report from the batch
    (:mod:`monai_r2gen.networks.greedy`), LLaVA's ``generate`` runs it to the batch's longest. Otherwise exactly
    ``tokens`` new tokens per report on both sides (the same work: parity expected).
    """
    settings = ours.generation_settings(num_beams=1, do_sample=False, repetition_penalty=1.0, max_new_tokens=tokens,
                                        min_new_tokens=1 if natural else tokens)  # fmt: skip
    reports: dict[str, list[str]] = {"ours": [], "llava": []}
    positions = {"ran": 0, "needed": 0}  # LLaVA's token positions, and those up to each report's EOS
    eos = torch.tensor(settings["eos_token_id"]).reshape(-1)

    def run_ours() -> float:
        start = time.perf_counter()
        reports["ours"] = [text for b in batches for text in ours.generate(
            b["image"], b["view_mask"], prompt_ids=b["prompt_ids"], prompt_attention_mask=b["prompt_attention_mask"],
            **settings)]  # fmt: skip
        return time.perf_counter() - start

    def run_llava() -> float:
        llava.eval()
        start = time.perf_counter()
        texts, ran, needed = [], 0, 0
        with torch.no_grad():
            for b in batches:
                head.view_mask = b["view_mask"]
                out = llava.generate(input_ids=b["prompt_ids"], attention_mask=b["prompt_attention_mask"],
                                     pixel_values=b["image"], **settings)  # fmt: skip
                new = out[:, b["prompt_ids"].shape[1] :]
                ended = torch.isin(new, eos)
                lengths = torch.where(ended.any(1), ended.int().argmax(1) + 1, new.shape[1])
                ran, needed = ran + new.numel(), needed + int(lengths.sum())
                texts += [t.strip() for t in ours.tokenizer.batch_decode(new, skip_special_tokens=True)]
        reports["llava"] = texts
        positions.update(ran=ran, needed=needed)
        return time.perf_counter() - start

    times = interleave({"ours": run_ours, "llava": run_llava}, repeats)
    same = sum(a == b for a, b in zip(reports["ours"], reports["llava"])) / max(1, len(reports["ours"]))
    n = len(reports["ours"])
    kind = "stopping at EOS" if natural else f"x {tokens} tokens"
    print(f"  greedy generation of {n} studies {kind}: ours median {median(times['ours']):.2f} s, LLaVA "
          f"{median(times['llava']):.2f} s; identical reports {same:.0%}")  # fmt: skip
    if natural:
        print(f"    token positions up to each report's EOS {positions['needed']}; LLaVA's batches ran "
              f"{positions['ran']} ({positions['ran'] / max(1, positions['needed']):.2f}x)")  # fmt: skip
    name = "generation_throughput_ours_over_llava" if natural else "generation_fixed_length_ours_over_llava"
    print_ratio(name, median(times["llava"]) / median(times["ours"]), ">= 1.2" if natural else "parity")


#: the embedded default without its auxiliary head and prompts: the architecture LLaVA has (K = 16 visual prompts)
_NO_HEADS = {"finding_head": False, "finding_prompts": False, "hard_finding_prompts": False, "attribute_head": False,
             "attribute_source": "prompts", "attribute_box_weight": 0.0, "attribute_slots": False,
             "attribute_word_weight": 0.0}  # fmt: skip


def natural_generation_race(args: argparse.Namespace, work: Path, batches: list[dict]) -> None:
    """Generation race on reports of their own lengths: a fresh copy of section 2's model whose LLM first learns
    the training reports (``--race-steps`` text-only steps of stage 0, so that it writes EOS where a report ends),
    then copied into LLaVA."""
    plain = {**network_settings(), **_NO_HEADS}
    workflow = make_workflow(work / "data", work / "run_race", plain, _stages(args))
    teach = StageBench(workflow, "stage0", n_batches=args.race_steps, batch_size=args.batch_size)
    seconds = teach.bare_run()
    ours = workflow.network.eval()
    llava = build_llava(ours)
    print(f"  the LLM learnt the reports for {args.race_steps} text-only steps ({seconds:.0f} s)")
    generation_race(ours, llava, llava.model.multi_modal_projector, batches, tokens=8 if args.quick else 96,
                    repeats=args.epoch_repeats, natural=True)  # fmt: skip


def llava_section(args: argparse.Namespace, work: Path) -> None:
    """Section 2: stage 2 against LLaVA (loss parity, step on identical batches, an epoch with own batching)."""
    print("\n2. stage 2 against transformers' LlavaForConditionalGeneration (no finding head / prompts, K=16)")
    plain = {**network_settings(), **_NO_HEADS}
    workflow = make_workflow(work / "data", work / "run_llava", plain, _stages(args))
    ours = workflow.network
    llava = build_llava(ours)
    bench = StageBench(workflow, "stage2", n_batches=args.steps, batch_size=args.batch_size)
    targets = sorted({n.rsplit(".", 1)[-1] for n, m in ours.llm.named_modules() if hasattr(m, "lora_A")})
    llava = llava_lora(llava, dict(bench.stage.lora), targets)
    lb = LlavaBench(llava, lr=float(bench.stage.lr), grad_clip=bench.grad_clip,
                    scheduler_settings={"warmup_steps": int(bench.stage.warmup_steps),
                                        "end_lr": float(bench.stage.end_lr)})  # fmt: skip
    n_ours = sum(p.numel() for p in ours.parameters() if p.requires_grad)
    n_llava = sum(p.numel() for p in llava.parameters() if p.requires_grad)
    print(f"  LoRA targets {targets}; trainable parameters ours {n_ours:,}, LLaVA {n_llava:,}; attention "
          f"{ours.base_llm.config._attn_implementation}")  # fmt: skip
    with torch.no_grad():
        ours.eval()
        llava.eval()
        images, _, _, kwargs = bench.inputs[0]
        loss_ours = float(ours(images, **kwargs).loss)
        loss_llava = float(lb.loss(bench.batches[0]))
    print(f"  loss on the same batch, copied weights: ours {loss_ours:.6f}, LLaVA {loss_llava:.6f}, "
          f"|diff| {abs(loss_ours - loss_llava):.2e}")  # fmt: skip
    print_ratio("llava_loss_abs_diff", abs(loss_ours - loss_llava) + 1e-12, "<= 1e-6")
    ours.train()
    llava.train()
    with HostSyncCounter(accelerator_paths=True) as ours_syncs:
        ours(images, **kwargs)
    with HostSyncCounter(accelerator_paths=True) as llava_syncs:
        lb.loss(bench.batches[0])
    print(f"  host synchronisations of one training forward on a GPU's paths: ours {ours_syncs.count} "
          f"{ours_syncs.events}, LLaVA {llava_syncs.count} {llava_syncs.events}")  # fmt: skip
    print_ratio("host_syncs_ours_minus_llava", ours_syncs.count - llava_syncs.count, "< 0")
    generation_race(ours, lb.model, lb.head, bench.batches, tokens=8 if args.quick else 96,
                    repeats=args.epoch_repeats, natural=False)  # fmt: skip
    natural_generation_race(args, work, bench.batches)

    def llava_steps() -> float:
        return lb.run(bench.batches)

    times = interleave({"ours-bare": bench.bare_run, "ours-trainer": bench.trainer_run, "llava": llava_steps},
                       args.repeats)  # fmt: skip
    _report_pair("step", times, "llava", "ours-bare", bench.samples(), bench.tokens(), "llava_over_ours_bare_step")
    print(f"  step ours-trainer   median {median(times['ours-trainer']):8.3f} s")
    print_ratio("llava_over_ours_trainer_step", median(times["llava"]) / median(times["ours-trainer"]))

    # a whole epoch of the training split, each side with its own batching
    samples = [bench.dataset[i] for i in range(len(bench.dataset))]
    batch_size = int(bench.stage.batch_size)
    generator = torch.Generator().manual_seed(0)
    loaders = {
        "ours": workflow._loader(bench.dataset, batch_size, train=True)[0],
        "ours-grouped": workflow._loader(bench.dataset, batch_size, train=True, group_by_length=True)[0],
        "ours-packed": workflow._loader(bench.dataset, batch_size, train=True)[0],
        "llava": torch.utils.data.DataLoader(samples, batch_size=batch_size, shuffle=True, generator=generator,
                                             collate_fn=llava_collate(int(ours.tokenizer.pad_token_id))),
    }  # fmt: skip
    runs = {
        "ours": lambda: bench.trainer_run(loader=loaders["ours"]),
        "ours-grouped": lambda: bench.trainer_run(loader=loaders["ours-grouped"]),
        "ours-packed": lambda: bench.trainer_run(loader=loaders["ours-packed"], pack=True),
        "llava": lambda: lb.run(loaders["llava"]),
    }
    times = interleave(runs, args.epoch_repeats)
    n = len(samples)
    print(f"  epoch of {n} studies, batch {batch_size} ({args.epoch_repeats} interleaved repeats):")
    for side, loader in loaders.items():
        batches = list(loader)
        t = median(times[side])
        real = sum(int(b["attention_mask"].sum()) for b in batches)
        padded = sum(int(b["attention_mask"].numel()) for b in batches)
        print(f"    {side:<13} median {t:7.2f} s  {n / t:7.1f} studies/s  {real / t:8.0f} tokens/s  padded "
              f"positions {padded} ({padded / real - 1:.1%} over real)")  # fmt: skip
    print_ratio("epoch_throughput_ours_over_llava", median(times["llava"]) / median(times["ours"]), ">= 1.2")
    print_ratio("epoch_throughput_ours_grouped_over_llava",
                median(times["llava"]) / median(times["ours-grouped"]), ">= 1.2")  # fmt: skip
    print_ratio("epoch_throughput_ours_packed_over_llava",
                median(times["llava"]) / median(times["ours-packed"]), ">= 1.2")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The command-line options (also parsed by the docs tests)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a handful of iterations at batch 4 (< 60 s)")
    parser.add_argument("--studies", type=int, default=None, help="synthetic studies (default 200, quick 16)")
    parser.add_argument("--steps", type=int, default=None, help="steps per timed repeat (default 4, quick 1)")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved repeats (default 5, quick 1)")
    parser.add_argument("--epoch-repeats", type=int, default=None, help="repeats of the epoch race (default 3)")
    parser.add_argument("--batch-size", type=int, default=None, help="override the stages' batch size (quick: 4)")
    parser.add_argument(
        "--race-steps",
        type=int,
        default=None,
        help="text-only steps before the generation race on natural lengths (default 80, quick 2)",
    )
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: torch's, all cores; --quick: 1)")  # fmt: skip
    parser.add_argument("--workdir", type=str, default=None, help="data and runs here (default: a temp dir)")
    parser.add_argument("--no-rss", action="store_true", help="skip the per-stage RSS subprocesses")
    parser.add_argument("--rss-stage", type=str, default=None, help=argparse.SUPPRESS)
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    quick = args.quick
    args.studies = args.studies or (16 if quick else 200)
    args.steps = args.steps or (1 if quick else 4)
    args.repeats = args.repeats or (1 if quick else 5)
    args.epoch_repeats = args.epoch_repeats or (1 if quick else 3)
    args.batch_size = args.batch_size or (4 if quick else None)
    args.race_steps = args.race_steps or (2 if quick else 80)
    args.threads = args.threads or (1 if quick else None)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("monai_r2gen").setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.rss_stage:
        torch.manual_seed(0)
        rss_child(args)
        return

    started = time.perf_counter()
    print(f"bench_training: {time.strftime('%Y-%m-%d %H:%M')}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        seconds = ensure_synthetic(work / "data", args.studies)
        print(f"synthetic data: {args.studies} studies ({seconds:.1f} s)")
        torch.manual_seed(0)
        peak = matmul_peak_flops(repeats=5 if quick else 10)
        print(f"fp32 matmul peak (2048 x 2048, median): {peak / 1e9:.1f} GFLOP/s")
        trainer_section(args, work, peak)
        llava_section(args, work)
        if not args.no_rss:
            print(f"\n4. peak RSS per stage (subprocess each: build, apply the stage, {args.steps} trainer steps)")
            rss = measure_rss(args, work)
            for stage, record in rss.items():
                peak_mb, train_mb, before_mb = record["peak_mb"], record["train_peak_mb"], record["before_train_mb"]
                print(f"  {stage}: ru_maxrss {peak_mb:7.0f} MB; while training {train_mb:7.0f} MB peak "
                      f"({before_mb:.0f} MB before)")  # fmt: skip
            print_ratio("train_peak_rss_stage2_over_stage0",
                        rss["stage2"]["train_peak_mb"] / rss["stage0"]["train_peak_mb"])  # fmt: skip
    print(f"\ntotal {time.perf_counter() - started:.0f} s, load average {os.getloadavg()[0]:.2f}")
    if not math.isfinite(peak):
        sys.exit(1)


if __name__ == "__main__":
    main()
