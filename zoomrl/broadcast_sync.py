"""The broadcast weight sync (`weight_sync.method: nccl | gloo`): learner rank 0 sends each policy
version to every rollout engine's workers in one group (core/weight_group.py), the field's
standard route on GPU clusters (NCCL); gloo is its CPU twin, which CI runs.

`BroadcastSync.sync(version, actors)` is the whole sequence. If the actors are not the members of
the current generation of the group (the first sync, a resize, an actor restarted: `reform()`),
a new generation is formed first: learner rank 0 and every actor's engine join it together, each
actor's workers at its rank offset. Then every learner rank and every actor take part in the
broadcast: the learner ranks each join `full_tensor()` per tensor and rank 0 sends the buckets;
each actor lets its groups in flight finish on the old weights and its engine receives the new
ones. Every call is issued before any is waited on, since each side blocks until all members
have arrived; a member that never comes ends the sync with WeightGroupTimeout naming it (after
`weight_sync.timeout_s`), on every learner rank at once.

Unlike the object-store route, where each actor loads a version when it is idle, a broadcast
holds the learner until every engine has drained its groups: the engines are updated together.
The rollout pool drives it (zoomrl/rollout_pool.py: after each update, and for an actor that
comes up or back).
"""

from __future__ import annotations

import ray

from core.config import Config
from core.weight_group import GroupSpec, member_names, rank_offsets
from learner.ranks import LearnerGroup


def broadcast_sync(cfg: Config, learner: LearnerGroup) -> BroadcastSync | None:
    """The run's broadcast group, or None when weights go through the object store."""
    return None if cfg.weight_sync.method == "object_store" else BroadcastSync(cfg, learner)


class BroadcastSync:
    """The weight-sync group between a learner group and a changing set of rollout actors."""

    def __init__(self, cfg: Config, learner: LearnerGroup) -> None:
        self.cfg, self.learner = cfg, learner
        self.generation = 0
        """Of the group last formed (0: none yet)."""
        self.members: list = []
        """The actor handles of the current generation, in rank order."""
        self._store: tuple[str, int] | None = None
        """(host, port) of the group's store, served by learner rank 0 for every generation."""
        self._specs: list | None = None
        """What the engines are told to receive (the policy's names, shapes, engine dtype): fixed
        for a run, asked of learner rank 0 once."""

    def sync(self, version: int, actors: list) -> None:
        """Send the learner's current weights, as policy `version`, to every actor; returns when
        every engine holds them."""
        if list(actors) != self.members:  # handles compare by actor id
            self._form(actors)
        rank0 = self.learner.workers[0]
        if self._specs is None:
            self._specs = ray.get(rank0.weight_specs.remote())
        specs = self._specs
        sending = [worker.broadcast_weights.remote(version) for worker in self.learner.workers]
        receiving = [actor.receive_weights.remote(version, self.generation, specs) for actor in actors]
        ray.get(sending)  # first: a missing member is named in the learner's error
        ray.get(receiving)

    def reform(self) -> None:
        """Form the group anew at the next sync (an actor was restarted: its new engine is not a
        member, though its handle is the same)."""
        self.members = []

    def _form(self, actors: list) -> None:
        if self._store is None:
            self._store = ray.get(self.learner.workers[0].serve_weight_store.remote())
        workers = [self.cfg.rollout.engine.tensor_parallel_size] * len(actors)  # an engine's workers
        self.generation += 1
        sync = self.cfg.weight_sync
        spec = GroupSpec(*self._store, self.generation,
                         member_names([f"rollout actor {i}" for i in range(len(actors))], workers),
                         "nccl" if sync.method == "nccl" else "gloo", sync.timeout_s)
        joining = [self.learner.workers[0].join_weight_group.remote(spec)]
        joining += [actor.join_weight_group.remote(spec, offset)
                    for actor, offset in zip(actors, rank_offsets(workers), strict=True)]
        ray.get(joining)
        self.members = list(actors)
