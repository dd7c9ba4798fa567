"""The learner group: M `LearnerWorker` ranks as Ray actors forming one torch.distributed group.

Ranks are gang-scheduled with a placement group (all or none start); rank 0's node picks a free
port on its Ray node address, and every rank joins the process group there (gloo on CPU, NCCL
on GPU). The rendezvous store listens on that address only (`worker.rendezvous_store`): with Ray
started on 127.0.0.1 (the local default) nothing outside the machine can reach it. The driver
holds a `LearnerGroup` and calls its methods; each fans out to every rank and waits.
"""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import ray
from ray.exceptions import ActorDiedError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from core.config import Config
from core.progress import Say, quiet
from core.tensors import WeightsRef
from core.types import GroupSummary
from learner.batching import StepShard, make_shards, score_groups
from learner.checkpoint import TrainerState, latest_checkpoint
from learner.worker import LearnerWorker

LearnerActor = ray.remote(LearnerWorker)  # the actor is the plain class, nothing added
RENDEZVOUS_ATTEMPTS = 3
"""Ports tried for rank 0's store: one found free can be taken by another process (another run on
the machine, a Ray worker) before rank 0 binds it, which fails only that start."""


def free_port(host: str = "") -> int:
    """A TCP port free on host (default: every interface of this machine) now; the OS picks it."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@ray.remote(num_cpus=0)
def _rendezvous_address() -> tuple[str, int]:
    """Rank 0's node address as Ray knows it (127.0.0.1 when Ray was started there, the node's
    IP on a real cluster, which the other nodes reach it by), and a port free on it."""
    address = ray.util.get_node_ip_address()
    return address, free_port(address)


class LearnerGroup:
    """The driver's handle on the learner ranks, which load the policy from model_path."""

    def __init__(self, cfg: Config, model_path: str, say: Say = quiet) -> None:
        """Start the ranks and return once each has loaded the policy (`say` gets a line when
        their resources are reserved and when they are ready)."""
        self.cfg = cfg
        learner = cfg.learner
        bundle = {"CPU": learner.num_cpus_per_rank} | (
            {"GPU": learner.num_gpus_per_rank} if learner.num_gpus_per_rank > 0 else {})
        self.placement = placement_group([bundle] * learner.num_ranks, strategy="PACK")
        ray.get(self.placement.ready())
        say(f"learner resources reserved: {learner.num_ranks} x {bundle}")
        on_rank = [PlacementGroupSchedulingStrategy(self.placement, placement_group_bundle_index=rank)
                   for rank in range(learner.num_ranks)]
        for attempt in range(1, RENDEZVOUS_ATTEMPTS + 1):
            address, port = ray.get(_rendezvous_address.options(scheduling_strategy=on_rank[0]).remote())
            self.rendezvous = (address, port)
            """Where rank 0's store listens (that address only) and every rank joins the process group."""
            self.workers = [
                LearnerActor.options(num_cpus=learner.num_cpus_per_rank, num_gpus=learner.num_gpus_per_rank,
                                     scheduling_strategy=on_rank[rank])
                .remote(cfg, model_path, rank, learner.num_ranks, address, port)
                for rank in range(learner.num_ranks)
            ]
            try:
                self.num_parameters = ray.get([w.num_parameters.remote() for w in self.workers])[0]
                break
            except ActorDiedError as err:
                if "Address already in use" not in str(err) or attempt == RENDEZVOUS_ATTEMPTS:
                    raise
                for worker in self.workers:  # the other ranks wait on the store that never came up
                    ray.kill(worker)
                say(f"learner rendezvous port {port} was taken before rank 0 bound it: another port "
                    f"({attempt}/{RENDEZVOUS_ATTEMPTS})")
        say(f"learner ranks ready {learner.num_ranks}/{learner.num_ranks} "
            f"({self.num_parameters / 1e6:.1f}M parameters)")
        self.step = 0

    def plan(self, groups: list[GroupSummary]) -> tuple[list[list[StepShard]], int]:
        """Advantages and the split into per-rank shards of one policy update, from the groups'
        summaries (the items hold TrajectorySummary until a rank resolves them).

        Returns (shards[rank][optimizer_step], number of groups filtered out).
        """
        learner = self.cfg.learner
        scored = score_groups(groups, learner.norm_adv_by_std, learner.filter_zero_adv_groups)
        shards: list[list[StepShard]] = [[] for _ in self.workers]
        if not scored:
            return shards, len(groups)
        for chunk in np.array_split(np.arange(len(scored)), min(learner.updates_per_step, len(scored))):
            items = [item for g in chunk for item in scored[g]]
            for rank, shard in enumerate(make_shards(items, len(self.workers), learner.micro_batch_tokens)):
                shards[rank].append(shard)
        return shards, len(groups) - len(scored)

    def train_step(self, refs: list[ray.ObjectRef], summaries: list[GroupSummary]) -> dict[str, float]:
        """One policy update on the groups stored at `refs` (summaries in the same order); returns
        its metrics (see learner/README.md). The driver plans from the summaries; each rank fetches
        only the groups of its own shards, straight from the object store. A trajectory a rank
        refuses raises BatchError naming it, before any rank updates.

        If every group was filtered out (all-equal rewards), nothing is trained and the policy
        version stays; the metrics then say optimizer_steps 0.
        """
        shards, filtered = self.plan(summaries)
        if not shards[0]:
            return {"optimizer_steps": 0, "groups_filtered": filtered, "step": self.step}
        ref_of = {summary.group_id: ref for summary, ref in zip(summaries, refs, strict=True)}
        calls = []
        for worker, rank_shards in zip(self.workers, shards, strict=True):
            needed = sorted({item.trajectory.group_id for shard in rank_shards
                             for items in shard.micro_batches for item in items})
            # top-level ObjectRef arguments: Ray fetches them to the rank before the call runs
            calls.append(worker.train_step_on_groups.remote(rank_shards, *[ref_of[g] for g in needed]))
        metrics = ray.get(calls)[0]
        self.step = int(metrics["step"])
        return metrics | {"groups_filtered": filtered}

    def publish_weights(self, version: int) -> WeightsRef:
        """Every rank's part of the weights (engine dtype, HF names) into the object store, in
        parallel, without a gather (see learner.weights)."""
        sizes, parts = zip(*[w.state_dict_for_engine.remote() for w in self.workers], strict=True)
        ray.get(list(sizes))  # every part is stored; a rank's error surfaces here
        return WeightsRef(version, ray.put(list(parts)))

    def save_checkpoint(self, root: str | Path, step: int, extra: dict) -> str:
        """Checkpoint step `step` (the current one) under root, with the driver's JSON-able
        data position `extra`; returns the checkpoint folder."""
        return ray.get([w.save_checkpoint.remote(str(root), step, extra) for w in self.workers])[0]

    def load_checkpoint(self, path: str | Path) -> TrainerState:
        """Resume model, optimizer, step and RNG from one checkpoint folder."""
        state = ray.get([w.load_checkpoint.remote(str(path)) for w in self.workers])[0]
        self.step = state.step
        return state

    def load_latest_checkpoint(self, root: str | Path) -> TrainerState:
        """Resume from the newest complete checkpoint under root; FileNotFoundError if none."""
        path = latest_checkpoint(root)
        if path is None:
            raise FileNotFoundError(f"no complete checkpoint under {root}")
        return self.load_checkpoint(path)

    def shutdown(self) -> None:
        """Leave the process group, stop the actors and free their resources."""
        ray.get([w.close.remote() for w in self.workers])
        for worker in self.workers:
            ray.kill(worker)
        remove_placement_group(self.placement)
