"""The weight-sync group: learner rank 0 broadcasts the policy to every rollout engine's workers.

One group holds learner rank 0 (group rank 0, the sender) and each engine worker of each rollout
actor: actor i's workers take ranks `rank_offsets(...)[i] + worker rank` (an engine runs TP x PP
workers). Gloo on CPU (the twin CI runs), NCCL on GPU; the code around the communicator is the
same for both. Membership changes (`zoomrl scale`, an actor restarted) form the group again under
a new `generation`: each generation keeps its keys under its own prefix of the one store learner
rank 0 serves, so a late member of an old generation can never meet a new one.

Nothing waits forever on a member that is not there. Before forming the communicator, and again
before every version is sent, each member marks its arrival in the store and waits for the
others at most `timeout_s`; on timeout the error names the members that did not come (an actor
that died, one still busy). Gloo's broadcasts time out too; NCCL's cannot, so the arrival check
before each version is what keeps a sync from starting without a member.

The wire format is the same on both sides: `plan_buckets` cuts the list of tensors (name, dtype,
full shape, in the sender's order) into consecutive buckets of at most `bucket_bytes` (a tensor
larger than that travels alone), each tensor starting on an `ALIGN`-byte boundary, so that
sender and receivers split the stream identically from the same list. `receive_buckets` is the
receiving loop; the sender is learner/broadcast.py, the vLLM worker's side
core/collective_transfer.py.

Imports torch only (vLLM's NCCL communicator inside the function that builds it): the learner
and vLLM's workers both load it.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch.distributed.distributed_c10d import ProcessGroupGloo

Communicator = Literal["gloo", "nccl"]
ALIGN = 64  # bytes; every tensor of a bucket starts on a multiple, so any dtype's view is aligned
KEY_PREFIX = "zoomrl-weights"


class WeightGroupTimeout(RuntimeError):
    """Members of the weight-sync group did not arrive in time; the message names them."""


@dataclass(frozen=True)
class GroupSpec:
    """One generation of the group, as every member gets it (plain values: it crosses Ray and
    vLLM's RPC as a dict)."""

    host: str
    """Address of the store learner rank 0 serves (its node address)."""
    port: int
    generation: int
    """Increases with every membership change; keys of each generation are apart."""
    members: tuple[str, ...]
    """Group rank -> who it is, for errors ('learner rank 0', 'rollout actor 1 worker 0')."""
    communicator: Communicator
    timeout_s: float
    """Longest wait for a member (arrival, and each gloo broadcast)."""

    @property
    def world_size(self) -> int:
        return len(self.members)


def rank_offsets(workers_per_actor: list[int]) -> list[int]:
    """Group rank of each rollout actor's first worker: rank 0 is learner rank 0, then each
    actor's workers (its engine's TP x PP) follow the ones before it."""
    offsets, next_rank = [], 1
    for workers in workers_per_actor:
        offsets.append(next_rank)
        next_rank += workers
    return offsets


def member_names(actor_names: list[str], workers_per_actor: list[int]) -> tuple[str, ...]:
    """`GroupSpec.members` for actors in rank order."""
    return ("learner rank 0",) + tuple(f"{actor} worker {worker}"
                                       for actor, workers in zip(actor_names, workers_per_actor, strict=True)
                                       for worker in range(workers))


def serve_store(host: str, timeout_s: float) -> dist.TCPStore:
    """The group's store, served by learner rank 0 on `host` only (the socket is bound here and
    handed to torch, which would otherwise listen on every interface) at a port the OS picks:
    no race between choosing a port and binding it. Its port is `store.port`; it serves every
    generation."""
    listener = socket.create_server((host, 0), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    port = listener.getsockname()[1]
    return dist.TCPStore(host, port, is_master=True, timeout=timedelta(seconds=timeout_s),
                         wait_for_workers=False, master_listen_fd=listener.detach())


class WeightGroup:
    """This process's membership of one generation of the group. Rank 0 passes the store it
    serves; the others connect to spec.host:spec.port. Returns once every member has joined;
    WeightGroupTimeout names the ones that did not within spec.timeout_s."""

    def __init__(self, spec: GroupSpec, rank: int, store: dist.Store | None = None,
                 device: torch.device | None = None) -> None:
        self.spec, self.rank = spec, rank
        self.device = device or torch.device("cpu")
        timeout = timedelta(seconds=spec.timeout_s)
        if store is None:
            store = dist.TCPStore(spec.host, spec.port, is_master=False, timeout=timeout)
        self.store = dist.PrefixStore(f"{KEY_PREFIX}/{spec.generation}/", store)
        self.store.set_timeout(timeout)
        self._arrive("joined")
        self._last_version: int | None = None
        if spec.communicator == "gloo":
            options = ProcessGroupGloo._Options()
            options._timeout = timeout
            # listen on the interface that reaches the store (loopback on one machine): gloo's
            # default is whatever this host's name resolves to
            options._devices = [ProcessGroupGloo.create_device(hostname=_address_towards(spec.host))]
            self._gloo = ProcessGroupGloo(dist.PrefixStore("gloo/", self.store), rank, spec.world_size,
                                          options)
        else:
            self._nccl = _nccl_communicator(dist.PrefixStore("nccl/", self.store), rank, spec.world_size,
                                            self.device)

    def begin(self, version: int) -> None:
        """Every member calls this before `version` is sent: returns when all have, or raises
        WeightGroupTimeout naming the missing ones (the sender then sends nothing)."""
        self._arrive(f"version/{version}")
        if self.rank == 0 and self._last_version is not None:  # everyone is past that one
            for rank in range(self.spec.world_size):
                self.store.delete_key(f"version/{self._last_version}/{rank}")
        self._last_version = version

    def broadcast(self, tensor: torch.Tensor) -> None:
        """Rank 0's `tensor` into every member's `tensor` (same size); returns when it is there."""
        if self.spec.communicator == "gloo":
            self._gloo.broadcast(tensor, 0, timedelta(seconds=self.spec.timeout_s)).wait()
        else:
            stream = torch.cuda.current_stream(self.device)
            self._nccl.broadcast(tensor, 0, stream=stream)
            stream.synchronize()

    def close(self) -> None:
        if self.spec.communicator == "gloo":
            self._gloo.shutdown()
        else:
            self._nccl.destroy()

    def _arrive(self, phase: str) -> None:
        self.store.set(f"{phase}/{self.rank}", self.spec.members[self.rank])
        keys = [f"{phase}/{rank}" for rank in range(self.spec.world_size)]
        try:
            self.store.wait(keys)
        except (dist.DistStoreError, RuntimeError) as error:
            missing = [name for name, key in zip(self.spec.members, keys, strict=True)
                       if not self.store.check([key])]
            raise WeightGroupTimeout(
                f"weight-sync group generation {self.spec.generation} ({phase}): {', '.join(missing)} "
                f"did not arrive within {self.spec.timeout_s:g} s") from error


def _address_towards(host: str) -> str:
    """This machine's address on the route to host (no packet is sent: a UDP 'connect' only
    picks the route)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((host, 9))
        return probe.getsockname()[0]


def _nccl_communicator(store: dist.Store, rank: int, world_size: int, device: torch.device) -> Any:
    """vLLM's NCCL communicator over the group's store (GPU only)."""
    from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
    from vllm.distributed.utils import StatelessProcessGroup

    communicator = PyNcclCommunicator(StatelessProcessGroup(rank, world_size, store), device=device)
    if communicator.disabled:  # vLLM falls back silently when NCCL cannot load
        raise RuntimeError(f"NCCL is not available on {device} for the weight-sync group")
    return communicator


@dataclass(frozen=True)
class TensorSpec:
    """One tensor on the wire: its name (as the checkpoint has it), dtype and full shape."""

    name: str
    dtype: str
    """torch dtype name, e.g. 'bfloat16'."""
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * getattr(torch, self.dtype).itemsize


@dataclass(frozen=True)
class Bucket:
    """Consecutive tensors sent in one broadcast."""

    specs: tuple[TensorSpec, ...]
    offsets: tuple[int, ...]
    """Byte offset of each tensor in the bucket, a multiple of ALIGN."""
    nbytes: int

    def views(self, packed: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        """(name, the tensor's view of `packed`, a flat uint8 tensor of `nbytes`) for each tensor."""
        return [(spec.name, packed[at:at + spec.nbytes].view(getattr(torch, spec.dtype)).view(spec.shape))
                for spec, at in zip(self.specs, self.offsets, strict=True)]


def plan_buckets(specs: list[TensorSpec], bucket_bytes: int) -> list[Bucket]:
    """`specs` in order, cut into buckets of at most bucket_bytes (a larger tensor alone)."""
    buckets: list[Bucket] = []
    members: list[TensorSpec] = []
    offsets: list[int] = []
    end = 0
    for spec in specs:
        start = -(-end // ALIGN) * ALIGN
        if members and start + spec.nbytes > bucket_bytes:
            buckets.append(Bucket(tuple(members), tuple(offsets), end))
            members, offsets, start = [], [], 0
        members.append(spec)
        offsets.append(start)
        end = start + spec.nbytes
    if members:
        buckets.append(Bucket(tuple(members), tuple(offsets), end))
    return buckets


def receive_buckets(group: WeightGroup, version: int, specs: list[TensorSpec], bucket_bytes: int,
                    load: Callable[[list[tuple[str, torch.Tensor]]], Any]) -> None:
    """A receiver's side of one version: each bucket into a new tensor, handed to `load` as
    (name, tensor) views of it. New, not reused: vLLM's layerwise reload keeps the views of a
    layer until all its tensors have come, so the memory of a bucket is freed once its layers
    are complete (the sender's order keeps a layer's tensors together)."""
    group.begin(version)
    for bucket in plan_buckets(specs, bucket_bytes):
        packed = torch.empty(bucket.nbytes, dtype=torch.uint8, device=group.device)
        group.broadcast(packed)
        load(bucket.views(packed))
