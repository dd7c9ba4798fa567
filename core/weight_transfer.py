"""A vLLM weight-transfer backend that loads new weights from a shared-memory buffer: no file
on disk, no copy between the rollout actor and vLLM's worker.

vLLM 0.32 updates weights in place through its weight-transfer API: the engine is started with
`weight_transfer_config=WeightTransferConfig(backend=...)`, and `AsyncLLM.start_weight_update()`,
`update_weights(WeightTransferUpdateRequest(...))` and `finish_weight_update()` reach every
worker (`collective_rpc`), where the backend's `WeightTransferEngine` receives the tensors and
hands them to `model.load_weights` inside vLLM's layerwise reload (which re-runs the CPU
linear layers' repacking). vLLM ships NCCL, CUDA IPC and RDMA backends; none runs on a CPU.
This one, registered as `BACKEND` by `core.vllm_plugin.register_weight_transfer` in every
vLLM process, reads a buffer the engine's owner (actors/engine.py) wrote: a file in /dev/shm,
mapped by both processes. Each update names the file and where each tensor lies in it; the
worker keeps its mapping between updates, so the owner can unlink the file after the first
load and write every later version into the same pages (nothing left on disk or in /dev/shm,
no page faults after the first load).

Imports vLLM: loaded only in processes that run an engine.
"""

from __future__ import annotations

import math
import mmap
import os
from dataclasses import dataclass
from typing import Any

import torch
from vllm.distributed.weight_transfer.base import (
    WeightTransferEngine,
    WeightTransferInitInfo,
    WeightTransferUpdateInfo,
)

from core.weight_group import ALIGN  # the broadcast's buckets are laid out alike

BACKEND = "zoomrl_shm"


@dataclass(frozen=True)
class Layout:
    """Where each tensor of a state dict lies in one flat buffer."""

    names: list[str]
    dtype_names: list[str]
    """torch dtype names, e.g. 'bfloat16'."""
    shapes: list[list[int]]
    offsets: list[int]
    """Byte offset of each tensor; each is a multiple of ALIGN."""
    nbytes: int
    """Size of the whole buffer."""
    aliases: dict[str, str]
    """name -> an earlier name whose bytes it shares (a tied lm_head: its embeddings). The bytes
    lie in the buffer once, but the worker loads them under BOTH names: vLLM's CPU build gives
    the lm_head its own packed copy of the weight (oneDNN or sgl, `dispatch_cpu_unquantized_gemm`)
    when the lm_head layer is processed, and a layerwise reload processes only layers it loads
    weights into. A tied lm_head left out kept computing logits with the weights the engine
    started with while the shared embeddings moved on (tests/integration/test_rollout_vllm.py)."""

    @classmethod
    def of(cls, specs: list[tuple[str, torch.dtype, tuple[int, ...]]],
           aliases: dict[str, str] | None = None) -> Layout:
        """Tensors back to back in `specs` order (name, dtype, shape), each aligned."""
        offsets, end = [], 0
        for _, dtype, shape in specs:
            offsets.append(end)
            end += -(-math.prod(shape) * dtype.itemsize // ALIGN) * ALIGN
        dtype_names = [str(dtype).removeprefix("torch.") for _, dtype, _ in specs]
        return cls([name for name, _, _ in specs], dtype_names, [list(shape) for _, _, shape in specs],
                   offsets, max(end, ALIGN), dict(aliases or {}))

    def views(self, buffer: torch.Tensor) -> dict[str, torch.Tensor]:
        """name -> the tensor's view of `buffer` (flat uint8, `nbytes` long), aliases included."""
        out = {}
        for name, dtype_name, shape, offset in zip(self.names, self.dtype_names, self.shapes, self.offsets,
                                                   strict=True):
            dtype = getattr(torch, dtype_name)
            out[name] = buffer[offset:offset + math.prod(shape) * dtype.itemsize].view(dtype).view(shape)
        return out | {alias: out[original] for alias, original in self.aliases.items()}


def map_file(path: str, nbytes: int) -> mmap.mmap:
    """`path` mapped shared, read-write, its pages mapped at once (one call, not a fault per page)."""
    fd = os.open(path, os.O_RDWR)
    try:
        return mmap.mmap(fd, nbytes, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE)
    finally:
        os.close(fd)  # the mapping keeps the file's pages


@dataclass
class SharedMemoryInitInfo(WeightTransferInitInfo):
    """Nothing to set up: each update names its buffer."""


@dataclass
class SharedMemoryUpdateInfo(WeightTransferUpdateInfo):
    """One update: the buffer (a file, possibly unlinked since the worker first mapped it) and the
    `Layout` of the tensors in it, as a dict (names as the checkpoint has them)."""

    path: str
    layout: dict[str, Any]


class LayerwiseReloadEngine(WeightTransferEngine):
    """What zoomrl's backends share: tensors are loaded into `model.load_weights` inside vLLM's
    layerwise reload (as vLLM's own NCCL backend does), and no accelerator is required."""

    supports_draft_weight_update = False

    def start_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        initialize_layerwise_reload(self.model)

    def finish_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        finalize_layerwise_reload(self.model, self.model_config)

    def update_weights(self, update_info: dict[str, Any]) -> None:
        # The base class synchronizes the accelerator after receiving, which raises on a CPU
        # without one; the tensors are in place when receive_weights returns.
        self.receive_weights(self.parse_update_info(update_info))
        if torch.accelerator.is_available():
            torch.accelerator.synchronize()


class SharedMemoryWeightTransferEngine(LayerwiseReloadEngine):
    """Worker side: load checkpoint-format tensors from a shared buffer."""

    init_info_cls = SharedMemoryInitInfo
    update_info_cls = SharedMemoryUpdateInfo

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._mapped: tuple[str, mmap.mmap] | None = None
        """The buffer mapped by an earlier update (path, mapping): the owner writes every
        version into the same one."""

    def init_transfer_engine(self, init_info: SharedMemoryInitInfo) -> None:
        pass

    def receive_weights(self, update_info: SharedMemoryUpdateInfo) -> None:
        layout = Layout(**update_info.layout)
        if self._mapped is None or self._mapped[0] != update_info.path:
            self._mapped = (update_info.path, map_file(update_info.path, layout.nbytes))
        buffer = torch.frombuffer(self._mapped[1], dtype=torch.uint8, count=layout.nbytes)
        self.model.load_weights(layout.views(buffer).items())

    def shutdown(self) -> None:
        self._mapped = None
