"""FSDP (``fully_shard``) for a stage, on 2 CPU processes with gloo: the sharded copy trains as data parallelism
does, its weights come back into the plain model, and its optimizer state survives a checkpoint round trip."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from monai_r2gen.data.tokenizer import train_report_tokenizer
from monai_r2gen.engines.sharding import ShardedStage
from tests.networks.conftest import collate_reports, make_reports, tiny_config

WORLD = 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _batch(model, rank: int, step: int) -> dict:
    """This rank's batch of a step: 3 studies of 1-2 views."""
    reports = make_reports(3, seed=10 * rank + step)
    return collate_reports(model, reports, views=[1, 2, 1], max_length=64, seed=100 * rank + step)[0]


def _loss(model, batch) -> torch.Tensor:
    return model(batch["image"], batch["input_ids"], batch["attention_mask"], batch["labels"],
                 view_mask=batch["view_mask"]).loss  # fmt: skip


def _step(model, optimizer, batch, average: bool) -> None:
    optimizer.zero_grad()
    _loss(model, batch).backward()
    params = [p for p in model.parameters() if p.grad is not None]  # the finding head is unused here
    if average:  # what DDP does: the mean of the ranks' gradients
        for p in params:
            torch.distributed.all_reduce(p.grad)
            p.grad /= WORLD
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()


def _adamw(module) -> torch.optim.Optimizer:
    # eps well above rounding noise: a gradient that is zero in exact arithmetic (the attention's key bias, which
    # the softmax ignores) is float noise that the two reductions round differently, and Adam with a tiny eps would
    # turn either noise into a full lr-sized step of opposite signs
    return torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=0.01, eps=1e-4)


def _assert_same(a, b, what: str) -> None:
    for (name, x), (_, y) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4, msg=f"{what}: {name}")


def _worker(rank: int, port: int, tokenizer_dir: str, out: str) -> None:
    import copy

    from monai_r2gen.networks.generator import RadiologyReportGenerator

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        torch.manual_seed(0)
        model = RadiologyReportGenerator.from_config(tiny_config(tokenizer_path=tokenizer_dir, finding_head=True))
        model.encoder.requires_grad_(False)  # frozen parameters beside trained ones in the units
        model.eval()  # no dropout, frozen BatchNorm: both sides compute the same function
        reference = copy.deepcopy(model)
        ref_opt = _adamw(reference)

        sharded = ShardedStage(model)
        opt = _adamw(sharded.module)
        for step in range(2):
            _step(sharded.module, opt, _batch(model, rank, step), average=False)
            _step(reference, ref_opt, _batch(model, rank, step), average=True)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        sharded.gather()
        _assert_same(model, reference, "gathered weights against the data-parallel reference")
        assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())

        # checkpoint round trip of the optimizer state (full, keyed by name), into a new sharded copy
        state = sharded.optimizer_state(opt).state_dict()
        if rank == 0:
            torch.save({"optimizer": state}, Path(out) / "ckpt.pt")
        torch.distributed.barrier()
        loaded = torch.load(Path(out) / "ckpt.pt", weights_only=True)["optimizer"]
        again = ShardedStage(model)
        opt2 = _adamw(again.module)
        again.optimizer_state(opt2).load_state_dict(loaded)
        _step(again.module, opt2, _batch(model, rank, 2), average=False)
        _step(reference, ref_opt, _batch(model, rank, 2), average=True)
        again.gather()
        _assert_same(model, reference, "third step after the optimizer state round trip")

        # scatter: the plain model's weights (a resumed checkpoint) reach the sharded copy
        with torch.no_grad():
            next(p for p in model.projector.parameters()).add_(1.0)
        again.scatter()
        full = next(p for p in again.module.projector.parameters()).full_tensor()
        torch.testing.assert_close(full, next(p for p in model.projector.parameters()))
        (Path(out) / f"ok{rank}").write_text("ok")  # every check of this rank passed
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_fully_sharded_stage_on_two_cpu_processes(tmp_path: Path) -> None:
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    train_report_tokenizer(make_reports(40), vocab_size=320, save_dir=tmp_path / "tokenizer")
    done = [tmp_path / f"ok{rank}" for rank in range(WORLD)]
    try:
        mp.spawn(_worker, args=(_free_port(), str(tmp_path / "tokenizer"), str(tmp_path)), nprocs=WORLD, join=True)
    except mp.ProcessExitedException as exc:
        # gloo's process-group teardown aborted once in CI ("terminate called without an active exception") after
        # a run whose cause was not found; accepted only when every rank had passed every check before it
        if exc.signal_name != "SIGABRT" or not all(path.exists() for path in done):
            raise
    assert all(path.read_text() == "ok" for path in done)


def test_unknown_parallel_mode_is_refused() -> None:
    from monai_r2gen.engines.workflows import StageSettings

    with pytest.raises(ValueError, match="parallel must be one of"):
        StageSettings({"name": "stage2", "parallel": "zero3"})


def test_sharding_needs_a_process_group() -> None:
    with pytest.raises(RuntimeError, match="torchrun"):
        ShardedStage(torch.nn.Linear(2, 2))
