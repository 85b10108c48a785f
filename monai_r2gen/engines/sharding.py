"""Fully sharded data parallelism (torch's ``fully_shard``, FSDP2) for one training stage.

Under DDP every rank holds the whole model, its gradients and its optimizer state: 16 bytes per trained parameter
with AdamW, which is why a full fine-tuning of a 7B LLM does not fit one GPU (docs/training.md). A stage with
``parallel: fsdp`` (and ``distributed``) trains a sharded copy instead: each decoder layer of the LLM, each part of
the generator (encoder, view fusion, projector, heads) and the rest of the model are ``fully_shard`` units, so every
rank keeps ``1 / world_size`` of the trained parameters, gradients and optimizer state, and gathers a unit's
parameters only while it runs.

The workflow keeps its plain model: the copy is made after the stage's freeze policy (and LoRA) is applied, and its
trained parameters are gathered back into the plain model (:meth:`ShardedStage.gather`, a collective every rank
runs) whenever something outside the step reads them: before a checkpoint, a validation and the end of the stage.
Checkpoints, the best-weights hand-over, stage completion, validation and saving then work on the plain model as
they do under DDP; the optimizer state goes into checkpoints as a full (unsharded) state dict keyed by parameter
name (:meth:`ShardedStage.optimizer_state`), so a resumed run may use another number of ranks.

Memory: the plain model's weights stay on each device beside the shards (no gradients, no optimizer state there), so
a stage needs about ``weights + 16 bytes x trained parameters / world_size`` per device instead of DDP's
``weights + 16 bytes x trained parameters``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["ShardedStage", "PARALLEL_MODES"]

logger = logging.getLogger(__name__)

#: values of the ``parallel`` stage setting
PARALLEL_MODES = ("ddp", "fsdp")


def _decoder_layers(llm: nn.Module) -> Iterator[nn.Module]:
    """The LLM's repeated blocks: the modules whose class the model names in ``_no_split_modules``."""
    base = llm.get_base_model() if hasattr(llm, "get_base_model") else llm
    names = set(getattr(base, "_no_split_modules", None) or [])
    for module in base.modules():
        if type(module).__name__ in names:
            yield module


def _has_parameters(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


class ShardedStage:
    """A ``fully_shard`` copy of the generator for one stage, and the way back to the plain model.

    Args:
        network: the plain generator, its freeze policy (and LoRA) applied for the stage; never modified except by
            :meth:`gather`.
        mesh: the device mesh (default: all ranks of the process group, on ``network``'s device type).

    Raises:
        RuntimeError: without an initialised process group.
    """

    def __init__(self, network: nn.Module, mesh: Any = None) -> None:
        from torch.distributed.fsdp import fully_shard

        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            raise RuntimeError("parallel: fsdp needs torch.distributed (run the training with torchrun)")
        self.network = network
        self.module = copy.deepcopy(network)
        for param in self.module.parameters():  # FSDP2 shards contiguous tensors only (a channels-last CNN's are not)
            if not param.is_contiguous():
                param.data = param.data.contiguous()
        kwargs = {} if mesh is None else {"mesh": mesh}
        units = list(_decoder_layers(self.module.llm))
        # one unit per part: FSDP needs one dtype among a unit's trained parameters (a bf16 LLM, float32 projector)
        units += [child for name, child in self.module.named_children() if name != "llm" and _has_parameters(child)]
        for unit in units:
            fully_shard(unit, **kwargs)
        head = getattr(self.module, "attribute_head", None)
        if head is not None:  # its token pooling runs through ``features``: gather the head's parameters there too
            from torch.distributed.fsdp import register_fsdp_forward_method

            register_fsdp_forward_method(head, "features")
        fully_shard(self.module, **kwargs)
        self.trained = [name for name, p in self.module.named_parameters() if p.requires_grad]
        logger.info("fully_shard: %d units over %d ranks, %d trained tensors", len(units) + 1,
                    torch.distributed.get_world_size(), len(self.trained))  # fmt: skip

    def gather(self, _engine: Any = None) -> None:
        """Copy the trained parameters and the buffers of the sharded copy into the plain model (every rank)."""
        plain = dict(self.network.named_parameters())
        sharded = dict(self.module.named_parameters())
        with torch.no_grad():
            for name in self.trained:
                value = sharded[name]
                full = value.full_tensor() if hasattr(value, "full_tensor") else value
                plain[name].copy_(full)
            buffers = dict(self.network.named_buffers())
            for name, value in self.module.named_buffers():  # replicated (batch-norm statistics): this rank's
                buffers[name].copy_(value)

    def scatter(self, _engine: Any = None) -> None:
        """Copy the plain model's trained parameters and buffers into the sharded copy (after a resume)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        plain = dict(self.network.named_parameters())
        state = {name: plain[name].detach().contiguous() for name in self.trained}
        set_model_state_dict(self.module, state, options=StateDictOptions(full_state_dict=True, strict=False))
        buffers = dict(self.module.named_buffers())
        with torch.no_grad():
            for name, value in self.network.named_buffers():
                buffers[name].copy_(value)

    def attach(self, trainer: Any, every: int) -> None:
        """Gather before the handlers that read the plain model: call before attaching them.

        Args:
            trainer: the stage's trainer (its network is :attr:`module`).
            every: iterations between gathers (the gcd of the checkpoint and validation intervals).
        """
        from ignite.engine import Events

        trainer.add_event_handler(Events.ITERATION_COMPLETED(every=max(1, int(every))), self.gather)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self.gather)
        trainer.add_event_handler(Events.COMPLETED, self.gather)

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> _FullOptimizerState:
        """A checkpoint entry for ``optimizer`` (built over :attr:`module`'s parameters) holding its full state."""
        return _FullOptimizerState(self.module, optimizer)


class _FullOptimizerState:
    """``state_dict`` / ``load_state_dict`` of an optimizer over sharded parameters, as a full state dict keyed by
    parameter name (``torch.distributed.checkpoint``); both are collectives, which ignite's savers and loaders run
    on every rank."""

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.module = module
        self.optimizer = optimizer

    def state_dict(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(self.module, self.optimizer, options=StateDictOptions(full_state_dict=True))

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        # a trained parameter that has had no gradient yet (an unused head) has no state: it starts afresh
        set_optimizer_state_dict(self.module, self.optimizer, dict(state_dict),
                                 options=StateDictOptions(full_state_dict=True, strict=False))  # fmt: skip
