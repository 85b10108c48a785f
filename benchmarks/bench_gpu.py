"""Stage-2 training step of a GPU-sized report generator: step time, tokens/s, peak memory and MFU.

The model is built by the package's own builder (:func:`monai_r2gen.networks.factory.build_generator`) from configs,
random weights: a ViT-B/16-shaped encoder at 224 px (``encoder="hf"`` with a ``vit`` config), mean view fusion, an
attention resampler with 32 visual prompts, and a Llama-3.2-1B-shaped LLM (2048 x 16 layers, GQA 32/8 heads, MLP
8192, vocabulary 128,256 from a synthetic word-level tokenizer). Stage 2 as in ``bundle/configs/train.yaml``:
projector + LoRA r 16 / alpha 32 on every linear layer of the LLM; the encoder frozen (``--train-encoder`` trains
it). Each setting (gradient checkpointing off / on) runs warm-up steps, then timed steps with bf16 autocast and SDPA
attention (the weights in the package's default dtype: bf16 on CUDA).

Prints per setting the median step time, tokens/s, peak GPU memory and MFU: the step's FLOPs (counted once with
``torch.utils.flop_counter.FlopCounterMode``, without recomputation, so checkpointing's extra forward lowers MFU)
over the time, against the bf16 dense peak: ``--peak-tflops``, or looked up from the device name (H100 SXM / H200
989, H100 PCIe 756, A100 312).

    python benchmarks/bench_gpu.py                         # on a GPU: both settings, < 5 min
    python benchmarks/bench_gpu.py --tiny                  # tiny shapes on the CPU (the test suite)
    python benchmarks/bench_gpu.py --dry-run               # memory arithmetic per setting, nothing is built

``--dry-run`` prints, per LLM size and setting, the parameters, the optimizer state and an activation estimate
(docs/performance.md has the table). Headline figures are printed as ``ratio <name> = <value>`` lines.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from typing import Any, NamedTuple

# bf16 dense tensor-core peaks (TFLOP/s, no sparsity), matched against torch.cuda.get_device_name()
PEAK_TFLOPS = (("H200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("A100", 312.0))


class Shapes(NamedTuple):
    """The sizes of one model: a Llama-family LLM and a ViT encoder."""

    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tie: bool
    vit_hidden: int = 768
    vit_layers: int = 12
    vit_heads: int = 12
    vit_intermediate: int = 3072
    image_size: int = 224
    patch: int = 16

    def llm_options(self, max_positions: int) -> dict[str, Any]:
        """``llm_options`` of :class:`~monai_r2gen.networks.GeneratorConfig` (the vocabulary comes from the
        tokenizer)."""
        return {"model_type": "llama", "hidden_size": self.hidden, "num_hidden_layers": self.layers,
                "num_attention_heads": self.heads, "num_key_value_heads": self.kv_heads,
                "intermediate_size": self.intermediate, "max_position_embeddings": max_positions,
                "rope_theta": 500000.0, "tie_word_embeddings": self.tie}  # fmt: skip

    def encoder_options(self) -> dict[str, Any]:
        """``encoder_options`` of a ViT built from a config."""
        return {"model_type": "vit", "image_size": self.image_size, "patch_size": self.patch,
                "hidden_size": self.vit_hidden, "num_hidden_layers": self.vit_layers,
                "num_attention_heads": self.vit_heads, "intermediate_size": self.vit_intermediate}  # fmt: skip


LLAMA_1B = Shapes("llama-1b (Llama-3.2-1B shape)", 2048, 16, 32, 8, 8192, 128256, True)
LLAMA_3B = Shapes("llama-3b (Llama-3.2-3B shape)", 3072, 28, 24, 8, 8192, 128256, True)
LLAMA_7B = Shapes("llama-7b (Llama-2-7B shape)", 4096, 32, 32, 32, 11008, 32000, False)
TINY = Shapes("tiny (CPU)", 64, 2, 4, 2, 128, 512, True, vit_hidden=32, vit_layers=1, vit_heads=2,
              vit_intermediate=64, image_size=32, patch=8)  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# arithmetic (dry run)
# ---------------------------------------------------------------------------------------------------------------


def llm_linear_params(s: Shapes) -> tuple[int, int]:
    """(weights of the LLM's linear layers but the head, LoRA r=1 parameters on all of them) per model."""
    head_dim = s.hidden // s.heads
    kv = s.kv_heads * head_dim
    shapes = [(s.hidden, s.hidden), (s.hidden, kv), (s.hidden, kv), (s.hidden, s.hidden),
              (s.hidden, s.intermediate), (s.hidden, s.intermediate), (s.intermediate, s.hidden)]  # fmt: skip
    weights = sum(i * o for i, o in shapes) * s.layers
    lora_r1 = sum(i + o for i, o in shapes) * s.layers
    return weights, lora_r1


def llm_params(s: Shapes) -> int:
    """Parameters of the Llama (embeddings, layers, norms, head unless tied)."""
    weights, _ = llm_linear_params(s)
    embed = s.vocab * s.hidden
    norms = (2 * s.layers + 1) * s.hidden
    return weights + embed + norms + (0 if s.tie else embed)


def vit_params(s: Shapes) -> int:
    """Parameters of the ViT (patch embedding, CLS, positions, layers, final norm, pooler)."""
    h, i = s.vit_hidden, s.vit_intermediate
    tokens = (s.image_size // s.patch) ** 2 + 1
    patch = 3 * s.patch * s.patch * h + h
    layer = 4 * (h * h + h) + (h * i + i) + (i * h + h) + 4 * h
    return patch + h + tokens * h + s.vit_layers * layer + 2 * h + (h * h + h)


def activation_bytes(s: Shapes, batch: int, seq: int, checkpointing: bool, bytes_per: int = 2) -> int:
    """Estimated activation memory of one training step of the LLM (LoRA on all linear layers, SDPA attention).

    Per layer and token, the tensors kept for backward without checkpointing: 14 x hidden (two RMSNorm inputs
    with their fp32 upcasts, q / k / v after RoPE, the attention output and the residual stream) and 3 x
    intermediate (gate, up and their product) at ``bytes_per`` bytes; with checkpointing, the layer input only,
    plus one layer recomputed at a time. On top: the logits (bf16, and their fp32 copy and gradient in the loss),
    tokens x vocabulary x (2 + 4 + 4) bytes.
    """
    tokens = batch * seq
    per_layer = tokens * (14 * s.hidden + 3 * s.intermediate) * bytes_per
    layers = tokens * s.hidden * bytes_per * s.layers + per_layer if checkpointing else per_layer * s.layers
    logits = tokens * s.vocab * (2 + 4 + 4)
    return layers + logits


def dry_run(args: argparse.Namespace) -> None:
    """Print the memory arithmetic per LLM size and setting (nothing is built)."""
    gib = 2**30
    seq, batch = args.seq_len, args.batch_size
    print(f"memory arithmetic: batch {batch} x {seq} tokens, ViT-B/16 encoder frozen, bf16 weights, LoRA r 16 on "
          f"every linear layer of the LLM, AdamW (2 states per trainable parameter, in fp32)\n")  # fmt: skip
    print("| LLM | setting | parameters | weights | trainable | grads + AdamW | activations (est.) | total (est.) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for s in (LLAMA_1B, LLAMA_3B, LLAMA_7B):
        total = llm_params(s) + vit_params(s)
        _, lora_r1 = llm_linear_params(s)
        dim = min(s.hidden, 512)
        projector = resampler_params(s.vit_hidden, dim, s.hidden, 32)
        for setting in ("LoRA, no checkpointing", "LoRA, checkpointing", "full fine-tuning, checkpointing"):
            full = setting.startswith("full")
            trainable = (llm_params(s) if full else 16 * lora_r1) + projector
            weights = 2 * (total + projector) + (4 * llm_params(s) if full else 0)  # full: fp32 master copy
            states = trainable * (4 + 8)  # fp32 gradient + two fp32 AdamW states
            acts = activation_bytes(s, batch, seq, checkpointing="no check" not in setting)
            print(f"| {s.name} | {setting} | {(total + projector) / 1e9:.2f} B | {weights / gib:.1f} GiB | "
                  f"{trainable / 1e6:,.1f} M | {states / gib:.2f} GiB | {acts / gib:.1f} GiB | "
                  f"{(weights + states + acts) / gib:.1f} GiB |")  # fmt: skip
    full_7b = (2 * (llm_params(LLAMA_7B) + vit_params(LLAMA_7B)) + 16 * llm_params(LLAMA_7B)) / gib
    print(f"\nfull fine-tuning keeps fp32 master weights beside the bf16 copy (2 + 4 bytes per parameter) and fp32 "
          f"gradients and AdamW states (12 bytes): 7B needs {full_7b:.0f} GiB before activations, more than one 80 GB "
          "GPU holds under DDP (every rank keeps all of it); FSDP shards those 16 bytes per parameter.")  # fmt: skip
    print_ratio("dry_run_7b_full_finetuning_state_gib", full_7b)


def resampler_params(vision: int, dim: int, llm: int, queries: int) -> int:
    """Approximate parameters of the package's resampler projector (input / output projections, one attention
    block, queries); used by the dry run only (the real build counts exactly)."""
    return vision * dim + dim + 4 * (dim * dim + dim) + 2 * (dim * 4 * dim) + queries * dim + dim * llm + llm + 6 * dim


# ---------------------------------------------------------------------------------------------------------------
# building and running
# ---------------------------------------------------------------------------------------------------------------


def word_tokenizer(vocab: int) -> Any:
    """A word-level fast tokenizer of ``vocab`` tokens (``<pad>``, ``<s>``, ``</s>``, ``<unk>``, ``w4`` ...), so the
    LLM gets the vocabulary of the shape it imitates."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    words.update({f"w{i}": i for i in range(4, vocab - 1)})  # the image token is added by the generator
    core = Tokenizer(models.WordLevel(vocab=words, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")  # fmt: skip


def build(s: Shapes, seq: int, dtype: str, train_encoder: bool) -> Any:
    """The stage-2 generator of shapes ``s`` built by the package (LoRA attached, freeze policy applied)."""
    from monai_r2gen.engines.stages import apply_stage
    from monai_r2gen.networks.factory import build_generator
    from monai_r2gen.networks.generator_config import GeneratorConfig

    config = GeneratorConfig(
        encoder="hf",
        encoder_options=s.encoder_options(),
        image_size=s.image_size,
        max_views=2,
        projector="resampler",
        num_queries=32,
        llm_options=s.llm_options(max_positions=max(512, seq)),
        prompt_template="<Img><ImageHere></Img> w4 w5 w6",
        max_length=seq,
        llm_lora_r=16,
        llm_lora_alpha=32,
        llm_lora_dropout=0.0,
        llm_lora_target_modules="all-linear",
        dtype=dtype,
    )
    model = build_generator(config, tokenizer=word_tokenizer(s.vocab))
    apply_stage(model, "stage2", train_encoder=train_encoder)
    return model


def make_batch(model: Any, batch: int, seq: int, device: Any) -> dict[str, Any]:
    """A stage-2 batch: prompt with K image tokens, random report tokens up to ``seq``, two views per study."""
    import torch

    generator = torch.Generator().manual_seed(0)
    prompt, _ = model.encode_prompts([model.config.prompt_template])
    n_report = seq - prompt.shape[1]
    if n_report < 1:
        raise SystemExit(f"--seq-len {seq} is shorter than the prompt ({prompt.shape[1]} tokens)")
    vocab = len(model.tokenizer) - 1
    report = torch.randint(4, vocab, (batch, n_report), generator=generator)
    input_ids = torch.cat([prompt.expand(batch, -1), report], dim=1)
    labels = input_ids.clone()
    labels[:, : prompt.shape[1]] = -100
    size = model.config.image_size
    images = torch.rand(batch, 2, 3, size, size, generator=generator)
    return {"images": images.to(device), "input_ids": input_ids.to(device), "labels": labels.to(device),
            "attention_mask": torch.ones_like(input_ids).to(device),
            "view_mask": torch.ones(batch, 2, dtype=torch.bool, device=device)}  # fmt: skip


def run_setting(model: Any, batch: dict[str, Any], checkpointing: bool, steps: int, warmup: int,
                device: Any, amp_dtype: Any) -> dict[str, float]:  # fmt: skip
    """Median step time and peak memory of one setting (bf16 autocast, AdamW over the trainable parameters)."""
    import torch

    base = model.base_llm
    if checkpointing:
        model.enable_gradient_checkpointing()
    elif getattr(base, "is_gradient_checkpointing", False):
        base.gradient_checkpointing_disable()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=device.type == "cuda")
    model.train()

    def step() -> None:
        with torch.autocast(device.type, dtype=amp_dtype):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"step": statistics.median(times), "peak_gib": peak}


def count_flops(model: Any, batch: dict[str, Any], device: Any, amp_dtype: Any) -> int:
    """FLOPs of one forward + backward (no checkpointing recomputation counted)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    base = model.base_llm
    if getattr(base, "is_gradient_checkpointing", False):
        base.gradient_checkpointing_disable()
    model.train()
    with FlopCounterMode(display=False) as counter:
        with torch.autocast(device.type, dtype=amp_dtype):
            loss = model(**batch).loss
        loss.backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def device_peak(args: argparse.Namespace, device: Any) -> tuple[float, str]:
    """bf16 peak FLOP/s and where it came from."""
    import torch

    if args.peak_tflops:
        return args.peak_tflops * 1e12, "--peak-tflops"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, tflops in PEAK_TFLOPS:
            if key in name:
                return tflops * 1e12, f"{name} (table)"
        raise SystemExit(f"unknown GPU {name!r}: give its bf16 dense peak with --peak-tflops")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _common import matmul_peak_flops

    return matmul_peak_flops(n=1024, repeats=5), "this CPU's fp32 matmul (1024 x 1024; --tiny stand-in)"


def print_ratio(name: str, value: float, goal: str = "") -> None:
    """``ratio <name> = <value>`` (as benchmarks/_common.py prints it; this script runs alone on a GPU machine)."""
    print(f"ratio {name} = {value:.6g}" + (f"   # goal {goal}" if goal else ""), flush=True)


def build_parser() -> argparse.ArgumentParser:
    """The command-line options (also parsed by the docs tests)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on the CPU (the test suite)")
    parser.add_argument("--dry-run", action="store_true", help="print the memory arithmetic, build nothing")
    parser.add_argument("--batch-size", type=int, default=None, help="studies per step (default 8, tiny 2)")
    parser.add_argument("--seq-len", type=int, default=None, help="tokens per study (default 256, tiny 64)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per setting (default 10, tiny 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per setting (default 3, tiny 1)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="bf16 dense peak of the device")
    parser.add_argument("--train-encoder", action="store_true", help="train the ViT too (default frozen)")
    parser.add_argument("--checkpointing", choices=("off", "on", "both"), default="both")
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    tiny = args.tiny
    args.batch_size = args.batch_size or (2 if tiny else 8)
    args.seq_len = args.seq_len or (64 if tiny else 256)
    if args.dry_run:
        dry_run(args)
        return

    import torch

    device = torch.device("cuda" if torch.cuda.is_available() and not tiny else "cpu")
    if device.type == "cpu" and not tiny:
        raise SystemExit("no GPU: run with --tiny (CPU, tiny shapes) or --dry-run")
    if tiny:
        torch.set_num_threads(1)
    steps, warmup = args.steps or (2 if tiny else 10), args.warmup or (1 if tiny else 3)
    shapes = TINY if tiny else LLAMA_1B
    amp_dtype = torch.bfloat16
    peak, source = device_peak(args, device)
    started = time.perf_counter()
    model = build(shapes, args.seq_len, "float32" if tiny else "auto", args.train_encoder).to(device)
    built = time.perf_counter() - started
    counted = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    expected = llm_params(shapes) + vit_params(shapes)
    llm_counted = sum(p.numel() for n, p in model.llm.named_parameters() if "lora_" not in n)
    print(f"bench_gpu: {time.strftime('%Y-%m-%d %H:%M')}, torch {torch.__version__}, device {device} "
          f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else ''}")  # fmt: skip
    print(f"{shapes.name}: built in {built:.0f} s; {counted:,} parameters ({trainable:,} trainable), LLM "
          f"{llm_counted:,} (dry-run formula {llm_params(shapes):,}), LLM + ViT formula {expected:,};"
          f" attention {model.base_llm.config._attn_implementation}; weights "
          f"{next(model.llm.parameters()).dtype}; peak {peak / 1e12:.3g} TFLOP/s from {source}")  # fmt: skip
    vit_counted = sum(p.numel() for n, p in model.encoder.named_parameters() if "lora_" not in n)
    print(f"  ViT {vit_counted:,} (dry-run formula {vit_params(shapes):,})")
    print_ratio("gpu_llm_param_formula_over_counted", llm_params(shapes) / llm_counted)
    print_ratio("gpu_vit_param_formula_over_counted", vit_params(shapes) / vit_counted)
    batch = make_batch(model, args.batch_size, args.seq_len, device)
    flops = count_flops(model, batch, device, amp_dtype)
    tokens = args.batch_size * args.seq_len
    print(f"step: batch {args.batch_size} x {args.seq_len} tokens (+ 2 views of {shapes.image_size} px), "
          f"{flops / 1e9:.3f} GFLOP forward + backward (FlopCounterMode)")  # fmt: skip
    settings = {"off": [False], "on": [True], "both": [False, True]}[args.checkpointing]
    results = {}
    for checkpointing in settings:
        r = run_setting(model, batch, checkpointing, steps, warmup, device, amp_dtype)
        mfu = flops / r["step"] / peak
        label = "checkpointing on " if checkpointing else "checkpointing off"
        memory = "peak GPU memory" if device.type == "cuda" else "peak RSS"
        print(f"  {label}: step {r['step'] * 1e3:8.1f} ms  {tokens / r['step']:9.0f} tokens/s  {memory} "
              f"{r['peak_gib']:.2f} GiB  MFU {mfu:.1%}")  # fmt: skip
        print_ratio(f"gpu_mfu_checkpointing_{'on' if checkpointing else 'off'}", mfu)
        results[checkpointing] = r
    if len(results) == 2:
        print_ratio("gpu_step_checkpointing_on_over_off", results[True]["step"] / results[False]["step"])
    print(f"total {time.perf_counter() - started:.0f} s")
    if not all(math.isfinite(r["step"]) for r in results.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
