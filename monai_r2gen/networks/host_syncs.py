"""Host synchronisations of model code: the operations that make the host wait for the device.

On a GPU, an operation whose result the host must read (``bool(tensor)``, ``.item()``, boolean-mask indexing, whose
output size depends on the data) stalls the host until every kernel queued before it has finished, so the host
cannot queue the next kernels ahead. On the CPU such an operation costs nothing, which is why the count is taken by
intercepting the operators rather than by timing: :class:`HostSyncCounter` records each of them at the ATen level,
on any device, so a CPU test can assert what a GPU run would wait for.

The model's own rule (:func:`host_reads_are_free`): a value check of a batch, or a shortcut that skips work known
to be unneeded (no padded view, no padded token), runs where reading a value is free, on CPU tensors. On an
accelerator the forward reads no value before the language model runs: it trusts the invariants that the data
pipeline already checks on the CPU (``TokenizeReportd`` writes ``K`` image tokens, a study has a view) and does the
masking work instead of testing whether it is needed.

Example (what a GPU forward would wait for, counted on CPU tensors)::

    with HostSyncCounter(accelerator_paths=True) as syncs:
        model.prepare_inputs_embeds(input_ids, attention_mask, images=images, view_mask=view_mask)
    assert syncs.count == 0, syncs.events
"""

from __future__ import annotations

import os
import traceback
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["HostSyncCounter", "host_reads_are_free"]

_aten = torch.ops.aten

# operators whose output the host reads, or whose output size depends on the values of an input
_SYNC_OPS = {
    _aten._local_scalar_dense.default,  # bool(t), t.item(), int(t), float(t)
    _aten.nonzero.default,
    _aten.masked_select.default,
    _aten.repeat_interleave.Tensor,
    _aten._unique2.default,
    _aten.unique_consecutive.default,
    _aten.unique_dim.default,
}
# operators that synchronise when one of their indices is a boolean mask
_MASK_INDEXED_OPS = {_aten.index.Tensor, _aten.index_put.default, _aten.index_put_.default}


_accelerator_paths = False  # set by HostSyncCounter(accelerator_paths=True)


def host_reads_are_free(tensor: torch.Tensor) -> bool:
    """Whether reading a value of ``tensor`` on the host costs no synchronisation: it lives in CPU memory (and no
    :class:`HostSyncCounter` asks for the accelerator paths)."""
    return tensor.device.type == "cpu" and not _accelerator_paths


def _has_mask_index(args: tuple[Any, ...]) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ())


def _caller() -> str:
    """``file:line`` of the innermost stack frame outside torch."""
    torch_dir = os.path.dirname(torch.__file__)
    for frame in reversed(traceback.extract_stack()[:-3]):
        if not frame.filename.startswith(torch_dir):
            return f"{frame.filename}:{frame.lineno}"
    return "?"


class HostSyncCounter(TorchDispatchMode):
    """Context manager that records the host-synchronising operators run inside it.

    Args:
        where: also record the ``file:line`` outside torch that ran each operator (slower; for finding them).
        accelerator_paths: make :func:`host_reads_are_free` say False inside, so CPU tensors take the code paths of
            an accelerator and the count is that of a GPU run.

    Attributes:
        events: the operator names (``name @ file:line`` with ``where``), in the order they ran.
    """

    def __init__(self, where: bool = False, accelerator_paths: bool = False) -> None:
        super().__init__()
        self.where = where
        self.accelerator_paths = accelerator_paths
        self.events: list[str] = []
        self._previous = False

    def __enter__(self) -> HostSyncCounter:
        global _accelerator_paths
        self._previous, _accelerator_paths = _accelerator_paths, _accelerator_paths or self.accelerator_paths
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        global _accelerator_paths
        _accelerator_paths = self._previous
        super().__exit__(*exc)

    @property
    def count(self) -> int:
        """Number of host-synchronising operators recorded."""
        return len(self.events)

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        if func in _SYNC_OPS or (func in _MASK_INDEXED_OPS and _has_mask_index(args)):
            name = str(func.overloadpacket.__name__)
            self.events.append(f"{name} @ {_caller()}" if self.where else name)
        return func(*args, **(kwargs or {}))
