"""The driver's view of the rollout actors: who is busy with what, and surviving failures.

Every group request is tracked until its scored group is handed to the replay queue. When an
actor dies, Ray restarts it (max_restarts); the pool gives the new process the current weights
and re-issues the dead actor's groups under the SAME group ids, so the queue (which refuses a
group id it has seen) never counts one twice.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

from actors import GroupInfo, RolloutActor
from zoomrl.config import Config
from zoomrl.types import Sample

ACTOR_FAILURES = (RayActorError, ActorDiedError, ActorUnavailableError)
RESTART_TIMEOUT_S = 600.0  # a restarted actor loads its engine (minutes for a 7B model)


@dataclass
class GroupRequest:
    sample: Sample
    group_id: str
    actor: object
    """The actor handle working on it."""
    group_ref: ray.ObjectRef
    """Where the scored Group will be (owned by the driver, so it outlives the actor)."""


@dataclass
class FinishedGroup:
    info: GroupInfo
    ref: ray.ObjectRef
    """ray.ObjectRef of the zoomrl.types.Group."""


class RolloutPool:
    """N rollout actors, kept busy by `submit`, drained by `poll`."""

    def __init__(self, cfg: Config, model_path: str, num_workers: int) -> None:
        self._actor_class = RolloutActor.options(
            num_cpus=cfg.rollout.num_cpus_per_worker, num_gpus=cfg.rollout.num_gpus_per_worker,
            max_restarts=-1, max_task_retries=0)
        self._cfg, self._model_path = cfg, model_path
        self.actors: list = []
        self.in_flight: dict[ray.ObjectRef, GroupRequest] = {}  # GroupInfo ref -> request
        self.weights: tuple[int, ray.ObjectRef] | None = None
        """(version, ObjectRef of the state dict) last published; None = the model path's."""
        self.reissued = 0
        self.resize(num_workers)

    def resize(self, num_workers: int) -> None:
        """Start actors (they load the current weights) or stop the newest ones once idle."""
        started = []
        while len(self.actors) < num_workers:
            actor = self._actor_class.remote(self._cfg, self._model_path)
            if self.weights is not None:
                actor.update_weights.remote(*self.weights)
            self.actors.append(actor)
            started.append(actor)
        ray.get([actor.ready.remote() for actor in started])
        del self.actors[num_workers:]  # in-flight requests of removed actors still finish

    def submit(self, sample: Sample, group_id: str) -> None:
        """Send one group request to the least busy actor."""
        def load(actor) -> int:
            return sum(1 for request in self.in_flight.values() if request.actor is actor)

        actor = min(self.actors, key=load)
        info_ref, group_ref = actor.generate_group.remote(sample, group_id)
        self.in_flight[info_ref] = GroupRequest(sample, group_id, actor, group_ref)

    def poll(self, timeout_s: float) -> list[FinishedGroup]:
        """Groups finished within timeout_s; a failed actor's groups are re-issued."""
        if not self.in_flight:
            return []
        ready, _ = ray.wait(list(self.in_flight), num_returns=len(self.in_flight), timeout=timeout_s,
                            fetch_local=True)
        finished = []
        for info_ref in ready:
            request = self.in_flight.pop(info_ref)
            try:
                finished.append(FinishedGroup(ray.get(info_ref), request.group_ref))
            except ACTOR_FAILURES:
                self._recover(request)
        return finished

    def _recover(self, request: GroupRequest) -> None:
        """Wait for Ray to restart the actor, give it the current weights, re-issue the group.

        Blocking is deliberate: calls sent while an actor restarts can fail too, so the pool only
        re-issues once the new process answers and holds the current version.
        """
        if request.actor in self.actors:
            deadline = time.monotonic() + RESTART_TIMEOUT_S
            while True:
                try:
                    ray.get(request.actor.ready.remote())
                    if self.weights is not None:
                        ray.get(request.actor.update_weights.remote(*self.weights))
                    break
                except ACTOR_FAILURES:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(1.0)
        self.reissued += 1
        self.submit(request.sample, request.group_id)

    def update_weights(self, version: int, weights_ref: ray.ObjectRef) -> None:
        """Load a new policy version into every actor; returns once all hold it (see actors/)."""
        self.weights = (version, weights_ref)
        for ref in [actor.update_weights.remote(version, weights_ref) for actor in self.actors]:
            try:
                ray.get(ref)
            except ACTOR_FAILURES:
                pass  # restarting: its failed groups come back through poll(), which reloads it

    def unconsumed(self) -> list[tuple[str, str]]:
        """(sample id, group id) of every request still in flight (saved in checkpoints)."""
        return [(r.sample.id, r.group_id) for r in self.in_flight.values()]

    def shutdown(self) -> None:
        for actor in self.actors:
            try:
                ray.get(actor.shutdown.remote())
            except ACTOR_FAILURES:
                pass
            ray.kill(actor)
