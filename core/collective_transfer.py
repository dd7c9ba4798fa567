"""The vLLM worker's side of the broadcast weight sync: a weight-transfer backend that joins the
weight-sync group of `core.weight_group` and loads every version broadcast by learner rank 0.

vLLM 0.32 updates weights in place through its weight-transfer API: the engine is started with
`weight_transfer_config=WeightTransferConfig(backend=BACKEND)`, and `AsyncLLM`'s
`init_weight_transfer_engine`, `start_weight_update`, `update_weights` and
`finish_weight_update` reach every worker (`collective_rpc`), where this backend joins the group
(once per generation), and receives the buckets of one version into `model.load_weights` inside
vLLM's layerwise reload. vLLM's own NCCL backend does not fit: its trainer side gives every
engine the same rank offset (one engine only), picks a port racily and never times out.

The same backend serves gloo (CPU: the twin CI runs) and NCCL (GPU): the init info says which.
It is registered as BACKEND by `core.vllm_plugin.register_weight_transfer` in every vLLM
process. The init and update infos are plain dicts on the wire (`init_info` / `update_info`
below build them).

Imports vLLM: loaded only in processes that run an engine.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from vllm.distributed.weight_transfer.base import WeightTransferInitInfo, WeightTransferUpdateInfo

from core.weight_group import GroupSpec, TensorSpec, WeightGroup, receive_buckets
from core.weight_transfer import LayerwiseReloadEngine

BACKEND = "zoomrl_broadcast"


@dataclass
class BroadcastInitInfo(WeightTransferInitInfo):
    """One generation of the group (`GroupSpec`'s fields) and this engine's place in it."""

    host: str
    port: int
    generation: int
    members: list[str]
    communicator: str
    timeout_s: float
    rank_offset: int
    """Group rank of this engine's worker 0 (`core.weight_group.rank_offsets`)."""
    bucket_bytes: int


@dataclass
class BroadcastUpdateInfo(WeightTransferUpdateInfo):
    """One version: what the sender sends, in its order (`learner.broadcast.wire_specs`)."""

    generation: int
    version: int
    names: list[str]
    dtype_names: list[str]
    shapes: list[list[int]]


def init_info(spec: GroupSpec, rank_offset: int, bucket_bytes: int) -> dict[str, Any]:
    """The `init_weight_transfer_engine` payload for one engine."""
    fields = asdict(spec) | {"members": list(spec.members)}
    return asdict(BroadcastInitInfo(**fields, rank_offset=rank_offset, bucket_bytes=bucket_bytes))


def update_info(generation: int, version: int, specs: list[TensorSpec]) -> dict[str, Any]:
    """The `update_weights` payload for one version."""
    return asdict(BroadcastUpdateInfo(generation, version, [spec.name for spec in specs],
                                      [spec.dtype for spec in specs], [list(spec.shape) for spec in specs]))


class BroadcastWeightTransferEngine(LayerwiseReloadEngine):
    """Worker side: a member of the weight-sync group, loading checkpoint-format tensors."""

    init_info_cls = BroadcastInitInfo
    update_info_cls = BroadcastUpdateInfo

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.group: WeightGroup | None = None
        self.bucket_bytes = 0

    def init_transfer_engine(self, init_info: BroadcastInitInfo) -> None:
        """Leave the current generation (if any) and join this one; raises WeightGroupTimeout
        naming the members that did not join."""
        self.shutdown()
        parallel = self.parallel_config
        rank = init_info.rank_offset + parallel.data_parallel_index * parallel.world_size + parallel.rank
        spec = GroupSpec(init_info.host, init_info.port, init_info.generation, tuple(init_info.members),
                         init_info.communicator, init_info.timeout_s)
        self.group = WeightGroup(spec, rank, device=self.device)
        self.bucket_bytes = init_info.bucket_bytes

    def receive_weights(self, update_info: BroadcastUpdateInfo) -> None:
        from vllm.model_executor.model_loader.mtp_validation import disable_mtp_completeness_check

        if self.group is None or self.group.spec.generation != update_info.generation:
            joined = "none" if self.group is None else self.group.spec.generation
            raise RuntimeError(f"weights of generation {update_info.generation} sent to a worker of "
                               f"generation {joined}: the engine must join the group first")
        specs = [TensorSpec(name, dtype, tuple(shape)) for name, dtype, shape
                 in zip(update_info.names, update_info.dtype_names, update_info.shapes, strict=True)]
        with disable_mtp_completeness_check():  # as vLLM's NCCL backend loads
            receive_buckets(self.group, update_info.version, specs, self.bucket_bytes,
                            self.model.load_weights)

    def shutdown(self) -> None:
        if self.group is not None:
            self.group.close()
            self.group = None
