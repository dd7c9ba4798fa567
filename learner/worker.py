"""One learner rank: a FSDP2 shard of the policy, its optimizer, and the GRPO update.

A plain class: `learner.ranks` runs one per Ray actor, and tests run it in-process (world size 1)
without Ray. Every public method except `num_parameters` is collective: all ranks call it
together, in the same order, with their own shard of the data.
"""

from __future__ import annotations

import ipaddress
import os
import resource
import socket
import time
from pathlib import Path

import psutil
import ray
import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.constants import default_pg_timeout
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor
from transformers import AutoConfig, AutoImageProcessor

from core.config import Config
from core.metrics import RayMetrics
from core.spans import Span, SpanLog
from core.tensors import RankShards
from core.types import Group
from core.weight_group import GroupSpec, TensorSpec, WeightGroup, serve_store
from learner.batching import BatchError, MicroBatch, StepShard, check_trajectory, collate, resolve
from learner.broadcast import policy_tensors, send_weights, wire_specs
from learner.checkpoint import TrainerState, load_checkpoint, save_checkpoint
from learner.grpo import grpo_loss
from learner.model import load_policy, parallelize, token_logprobs
from learner.weights import rank_shards

# Loss statistics summed over micro-batches and ranks. Each is normalized by the step's global
# counts, so the sums are batch means; "tokens" is the exception (tokens through forward and
# backward, for tokens/s).
LOSS_STATS = ("loss", "clip_fraction", "dual_clip_fraction", "approx_kl", "tokens")
# What rank 0 reports per update through ray.util.metrics (the dashboard, Ray's Prometheus).
RANK0_METRICS = ("loss", "clip_fraction", "approx_kl", "grad_norm", "learner_tokens_per_s",
                 "learner_peak_memory_bytes")


def rendezvous_store(host: str, port: int, rank: int, world_size: int) -> dist.TCPStore:
    """The process group's rendezvous: rank 0 serves a TCPStore at host:port, the others join it.

    Given host:port (`init_method="tcp://..."`), torch's store server listens on EVERY interface
    ("::", else 0.0.0.0: c10d's TCPStoreLibUvBackend.cpp, `UvTcpServer::makeWithPort`), and it
    accepts any client. So rank 0 binds the listening socket itself, to host only, and hands it
    to the store (`master_listen_fd`, which torch takes over): on a local cluster (Ray on
    127.0.0.1, host 127.0.0.1) nothing outside the machine can reach it; on a real cluster host
    is rank 0's node address, the one the other nodes connect to.
    """
    if rank != 0:
        return dist.TCPStore(host, port, world_size, is_master=False, timeout=default_pg_timeout)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.create_server((host, port), family=family)
    return dist.TCPStore(host, port, world_size, is_master=True, timeout=default_pg_timeout,
                         master_listen_fd=listener.detach())


def keep_gloo_on_loopback(host: str) -> None:
    """When the rendezvous is on loopback (a local cluster), make gloo listen there too.

    Gloo's connections between ranks listen on the address the machine's hostname resolves to,
    often a network interface; GLOO_SOCKET_IFNAME names the interface instead. Set to the
    loopback one when host is a loopback address and the variable is not set already (it is
    this process's environment: each rank is its own process). NCCL (GPU) picks its bootstrap
    interface itself (NCCL_SOCKET_IFNAME), untouched here.
    """
    if not _is_loopback(host):  # a host name is left to gloo's default too
        return
    for name, addresses in psutil.net_if_addrs().items():
        if any(_is_loopback(a.address) for a in addresses):
            os.environ.setdefault("GLOO_SOCKET_IFNAME", name)
            return


def _is_loopback(address: str) -> bool:
    """True for a loopback IP address; False for any other, a host name or a MAC address."""
    try:
        return ipaddress.ip_address(address.split("%")[0]).is_loopback  # "%": an IPv6 zone
    except ValueError:
        return False


class LearnerWorker:
    """Rank `rank` of `world_size`; joins the process group at master_addr:master_port."""

    def __init__(self, cfg: Config, model_path: str, rank: int, world_size: int, master_addr: str,
                 master_port: int) -> None:
        self.cfg = cfg
        self.learner = cfg.learner
        self.model_path = model_path
        self.rank = rank
        self.master_addr = master_addr
        self._ray_metrics = RayMetrics(list(RANK0_METRICS)) if rank == 0 and ray.is_initialized() else None
        self.world_size = world_size
        use_gpu = self.learner.num_gpus_per_rank > 0
        if use_gpu:  # Ray gives each GPU rank one visible device
            torch.cuda.set_device(0)
        self.device = torch.device("cuda", 0) if use_gpu else torch.device("cpu")
        keep_gloo_on_loopback(master_addr)
        store = rendezvous_store(master_addr, master_port, rank, world_size)
        # offloaded (CPU) shards meet in CPU collectives too (the grad-norm all-reduce): gloo for those
        backend = ("cuda:nccl,cpu:gloo" if self.learner.offload else "nccl") if use_gpu else "gloo"
        dist.init_process_group(backend, store=store, rank=rank, world_size=world_size,
                                device_id=self.device if use_gpu else None)
        torch.manual_seed(cfg.run.seed + rank)
        mesh = init_device_mesh(self.device.type, (world_size,))
        bf16, offload = use_gpu and self.learner.mixed_precision, self.learner.offload
        self.model = parallelize(load_policy(model_path), mesh, bf16=bf16, offload=offload,
                                 activation_checkpointing=self.learner.activation_checkpointing)
        self.reference = None  # KL 0 (the recipe): no reference model is built or loaded
        if self.learner.kl_coef > 0:
            self.reference = parallelize(load_policy(model_path).eval().requires_grad_(False), mesh,
                                         bf16=bf16, offload=offload, activation_checkpointing=False)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.learner.lr,
                                           weight_decay=self.learner.weight_decay)
        size = {"shortest_edge": cfg.model.min_pixels, "longest_edge": cfg.model.max_pixels}
        self.image_processor = AutoImageProcessor.from_pretrained(model_path, size=size)
        self.image_token_id = AutoConfig.from_pretrained(model_path).image_token_id
        self.step = 0
        self.spans = SpanLog()
        """check / collate / forward_backward / optimizer per update, publish, checkpoint (bench anatomy)."""
        self._weight_store: dist.TCPStore | None = None
        self._weight_group: WeightGroup | None = None
        """Rank 0's membership of the broadcast weight-sync group (zoomrl/broadcast_sync.py)."""
        self.stat_keys = list(LOSS_STATS) + ["entropy"] * self.learner.compute_entropy
        self.stat_keys += ["kl_ref"] * (self.reference is not None)

    def num_parameters(self) -> int:
        """Parameters of the whole (unsharded) policy; also tells the caller the rank is up."""
        return sum(p.numel() for p in self.model.parameters())

    def train_step(self, shards: list[StepShard]) -> dict[str, float]:
        """One policy update: one optimizer step per shard (one by default); returns its metrics
        (defined in learner/README.md), identical on every rank."""
        start = time.perf_counter()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        with self.spans.span("collate"):
            batches = [self._prepare(shard) for shard in shards]  # all old logprobs before any step
        prepared = time.perf_counter()
        steps = []
        for batch, shard in zip(batches, shards, strict=True):
            with self.spans.span("forward_backward"):
                stats = self._accumulate(batch, shard)
            with self.spans.span("optimizer"):
                steps.append(stats | self.optimizer_step())
        self.step += 1
        metrics = {key: sum(s[key] for s in steps) / len(steps) for key in steps[0] if key != "tokens"}
        # whole update, collation, and parameter + optimizer bytes: each the largest over ranks
        largest = torch.tensor([time.perf_counter() - start, prepared - start, self._state_bytes()],
                               device=self.device)
        dist.all_reduce(largest, op=dist.ReduceOp.MAX)
        update_s, prepare_s, state_bytes = largest.tolist()
        metrics["learner_tokens_per_s"] = sum(s["tokens"] for s in steps) / update_s
        metrics["learner_seconds"], metrics["learner_prepare_seconds"] = update_s, prepare_s
        metrics["learner_peak_memory_bytes"] = self._peak_memory_bytes()
        metrics["learner_state_bytes"] = state_bytes
        metrics["step"] = self.step
        metrics["optimizer_steps"] = len(shards)
        metrics["micro_batches"] = sum(len(shard.micro_batches) for shard in shards)
        if self._ray_metrics is not None:
            self._ray_metrics.record({name: float(metrics[name]) for name in RANK0_METRICS})
        return metrics

    def train_step_on_groups(self, shards: list[StepShard], *groups: Group) -> dict[str, float]:
        """`train_step` on shards planned from group summaries; `groups` are the ones they use
        (Ray fetched them to this rank). Every rank checks its trajectories and learns of every
        other rank's refusal before any collective of the update, so all raise or none."""
        by_id = {group.group_id: group for group in groups}
        shards = [resolve(shard, by_id) for shard in shards]
        refusal, model = "", self.cfg.model
        with self.spans.span("check"):
            try:
                for item in (item for shard in shards for items in shard.micro_batches for item in items):
                    check_trajectory(item, self.image_token_id, model.min_pixels, model.max_pixels)
            except BatchError as err:
                refusal = str(err)
            refusals = [""] * self.world_size
            dist.all_gather_object(refusals, refusal)
        if any(refusals):
            raise BatchError(next(r for r in refusals if r))
        return self.train_step(shards)

    def optimizer_step(self) -> dict[str, float]:
        """Clip the global gradient norm, then step AdamW (skipped when the norm is not finite)."""
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.learner.grad_clip)
        norm = norm.full_tensor() if isinstance(norm, DTensor) else norm
        finite = bool(torch.isfinite(norm))
        if finite:
            self.optimizer.step()
        return {"grad_norm": float(norm), "nonfinite_grad": float(not finite)}

    # Two results: the part's size, which the driver waits on (an error surfaces there), and the
    # part itself, which stays in the object store until rollout actors read it.
    @ray.method(num_returns=2)
    def state_dict_for_engine(self) -> tuple[int, RankShards]:
        """This rank's rows of the HF state dict in the engine dtype, for the object store, and
        their size in bytes; no gather (see learner.weights)."""
        with self.spans.span("publish"):
            part = rank_shards(self.model, getattr(torch, self.cfg.model.dtype), self.rank, self.world_size)
        return part.nbytes, part

    # The broadcast weight sync (`weight_sync.method: nccl | gloo`, zoomrl/broadcast_sync.py):
    # rank 0 is the sender of the weight-sync group; every rank joins each full_tensor().
    def serve_weight_store(self) -> tuple[str, int]:
        """Rank 0: serve the weight-sync group's store on this node's address, for every
        generation of the group; returns (host, port)."""
        if self._weight_store is None:
            self._weight_store = serve_store(self.master_addr, self.cfg.weight_sync.timeout_s)
        return self.master_addr, self._weight_store.port

    def join_weight_group(self, spec: GroupSpec) -> None:
        """Rank 0: leave the current generation (if any) and join `spec`'s; returns once every
        member has joined (WeightGroupTimeout names the ones that did not)."""
        if self._weight_group is not None:
            self._weight_group.close()
            self._weight_group = None
        device = self.device if spec.communicator == "nccl" else torch.device("cpu")
        self._weight_group = WeightGroup(spec, 0, self._weight_store, device)

    def weight_specs(self) -> list[TensorSpec]:
        """What the engines are told to receive: every tensor of the policy, in the engine dtype."""
        return wire_specs(policy_tensors(self.model), getattr(torch, self.cfg.model.dtype))

    def broadcast_weights(self, version: int) -> None:
        """Send policy `version` to the weight-sync group; every rank calls it together."""
        send_weights(policy_tensors(self.model), getattr(torch, self.cfg.model.dtype), version,
                     self.cfg.weight_sync.bucket_mib << 20, self._weight_group, self.device)

    def save_checkpoint(self, root: str, step: int, extra: dict) -> str:
        """Checkpoint this step under root (atomically); returns the checkpoint folder.

        step must be the learner's own count of updates (a guard against a driver that lost track).
        Before the first optimizer step (step 0, e.g. after a first batch filtered out entirely)
        it saves the model without optimizer state (see `TrainerState.optimizer_state`).
        """
        if step != self.step:
            raise ValueError(f"asked to checkpoint step {step}, but the learner is at step {self.step}")
        state = TrainerState(self.step, self.model_path, self.cfg.model.dtype, self.world_size, extra)
        with self.spans.span("checkpoint"):
            return str(save_checkpoint(root, self.model, self.optimizer, state))

    def take_spans(self) -> list[Span]:
        """The spans recorded since the last call (`core.spans`)."""
        return self.spans.take()

    def load_checkpoint(self, path: str) -> TrainerState:
        """Resume model, optimizer, step and RNG from a checkpoint folder."""
        state = load_checkpoint(Path(path), self.model, self.optimizer)
        self.step = state.step
        return state

    def close(self) -> None:
        """Leave the process group (lets a process host another worker later)."""
        dist.destroy_process_group()

    def _prepare(self, shard: StepShard) -> list[MicroBatch]:
        """Collate the shard's micro-batches; with ratio_against=recompute, replace the behaviour
        logprobs by the current policy's (call before any optimizer step of this update)."""
        batches = [collate(items, self.image_processor, self.model) for items in shard.micro_batches]
        if self.learner.ratio_against == "recompute":
            with torch.no_grad():
                for batch in batches:
                    batch.old_logprobs = token_logprobs(self.model, batch.to(self.device), self._temperature,
                                                        False)[0].cpu()
        return batches

    @property
    def _temperature(self) -> float:
        return self.cfg.rollout.temperature

    def _accumulate(self, batches: list[MicroBatch], shard: StepShard) -> dict[str, float]:
        """Forward/backward every micro-batch; returns the step's loss statistics (all ranks)."""
        self.optimizer.zero_grad(set_to_none=True)
        totals = dict.fromkeys(self.stat_keys, 0.0)
        for batch in batches:
            batch = batch.to(self.device)
            logprobs, entropy = token_logprobs(self.model, batch, self._temperature,
                                               self.learner.compute_entropy)
            ref = None
            if self.reference is not None:
                with torch.no_grad():
                    ref = token_logprobs(self.reference, batch, self._temperature, False)[0]
            loss, stats = grpo_loss(
                logprobs, batch.old_logprobs, batch.advantages, batch.loss_mask, batch.seq_index,
                clip_low=self.learner.clip_ratio_low, clip_high=self.learner.clip_ratio_high,
                dual_clip=self.learner.dual_clip, loss_agg=self.learner.loss_agg,
                num_tokens=shard.num_tokens, num_seqs=shard.num_seqs, ref_logprobs=ref,
                kl_coef=self.learner.kl_coef)
            loss.backward()
            stats["loss"] = loss.detach()
            if entropy is not None:
                stats["entropy"] = (entropy * batch.loss_mask).sum() / shard.num_tokens
            stats["tokens"] = batch.num_tokens * float(batch.loss_mask.any())  # fillers train nothing
            for key, value in stats.items():
                totals[key] += float(value)
        summed = torch.tensor([totals[key] for key in self.stat_keys], dtype=torch.float64,
                              device=self.device)
        dist.all_reduce(summed)
        return dict(zip(self.stat_keys, summed.tolist(), strict=True))

    def _state_bytes(self) -> float:
        """Bytes of this rank's parameter shards and optimizer state (what FSDP divides among the
        ranks; activations and the runtime are not counted)."""
        state = [t for per_param in self.optimizer.state.values() for t in per_param.values()
                 if isinstance(t, Tensor)]
        local = [t.to_local() if isinstance(t, DTensor) else t for t in [*self.model.parameters(), *state]]
        return float(sum(t.numel() * t.element_size() for t in local))

    def _peak_memory_bytes(self) -> float:
        """Largest peak over ranks: CUDA memory allocated during this update, or on CPU the
        process's peak resident set size so far (Linux reports it in KiB)."""
        if self.device.type == "cuda":
            peak = torch.tensor(float(torch.cuda.max_memory_allocated(self.device)), device=self.device)
        else:
            peak = torch.tensor(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0)  # CPU: gloo
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
        return float(peak)
