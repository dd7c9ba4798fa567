"""The driver's view of the rollout actors: who is busy with what, scaling, and surviving failures.

Every group request is tracked until its scored group is handed to the replay queue. Each request
carries the policy last sent (`PolicyWeights`), and an actor starts the group on that version or
a newer one, so no group requested after an update runs on the weights before it (see actors/).

When an actor dies, Ray restarts it (max_restarts); the pool gives the new process the current
weights and re-issues the dead actor's groups under the SAME group ids, so the queue (which
refuses a group id it has seen) never counts one twice. An actor whose vLLM engine died ends its
own process to be restarted the same way.

Scaling while a run goes (`resize`) never blocks the driver and loses no group: a new actor is
`starting` until its engine answers, then loads the current weights and takes requests; a removed
actor is `retiring`: it gets no new requests, finishes the ones it holds, and is shut down once
they are delivered.

Under the broadcast weight sync (`weight_sync.method: nccl | gloo`, zoomrl/broadcast_sync.py) a
version reaches every actor at once (`broadcast_weights`), and requests carry only its number. A
broadcast needs all the engines, so an actor that comes up (a resize) or back (a restart) is sent
the current version by a broadcast to all, in a new generation of the group, before it takes a
request.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

from actors import RolloutActor
from actors.rollout import PolicyWeights, Sampling
from core.config import Config
from core.progress import Say, quiet
from core.types import FinishedGroup, Sample
from rewards import JudgeError

if TYPE_CHECKING:
    from zoomrl.broadcast_sync import BroadcastSync

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
    sampling: Sampling | None = None
    """The request's own n and temperature (validation); None = the config's."""


class RolloutPool:
    """N rollout actors, kept busy by `submit`, drained by `poll`."""

    def __init__(self, cfg: Config, model_path: str, num_workers: int, say: Say = quiet,
                 broadcast: BroadcastSync | None = None) -> None:
        """Start num_workers actors and return once every engine is up (`say` gets a line each).
        broadcast: the weight-sync group when weights go by broadcast, None for the object store."""
        self._actor_class = RolloutActor.options(
            num_cpus=cfg.rollout.num_cpus_per_worker, num_gpus=cfg.rollout.num_gpus_per_worker,
            max_restarts=-1, max_task_retries=0)
        self._cfg, self._model_path = cfg, model_path
        self.actors: list = []
        """Actors taking requests."""
        self.starting: dict[ray.ObjectRef, object] = {}
        """ready() ref -> actor whose engine is still loading."""
        self.retiring: list = []
        """Actors removed by a resize, finishing the groups they hold."""
        self.in_flight: dict[ray.ObjectRef, GroupRequest] = {}  # GroupSummary ref -> request
        self.weights: PolicyWeights | None = None
        """The version last published and its weights; None = the model path's (version 0)."""
        self.broadcast = broadcast
        self.loading: list[ray.ObjectRef] = []
        """update_weights calls not yet finished (the driver does not wait for them)."""
        self.cores: dict[object, str] = {}
        """Actor -> the rollout.engine.cpu_cores entry its engine computes on."""
        self.reissued = 0
        self.judge_failures: list[tuple[GroupRequest, JudgeError]] = []
        """Requests whose reward task failed on the judge after all its retries: the driver takes
        them and decides when to request them again (zoomrl/driver.py)."""
        self.resize(num_workers)
        self.wait_started(say)

    @property
    def size(self) -> int:
        """Actors taking requests or about to (the number the pool is resizing to)."""
        return len(self.actors) + len(self.starting)

    def resize(self, num_workers: int) -> None:
        """Start actors, or retire the newest ones; returns at once (see the module docstring)."""
        if num_workers < 1:
            raise ValueError(f"a run needs at least one rollout actor, got {num_workers}")
        while self.size < num_workers:
            cores = self._free_cores()
            actor = self._actor_class.remote(self._cfg, self._model_path, cpu_cores=cores)
            self.cores[actor] = cores
            self.starting[actor.ready.remote()] = actor
        for ready_ref in list(self.starting)[max(0, num_workers - len(self.actors)):]:
            actor = self.starting.pop(ready_ref)
            self.cores.pop(actor, None)
            ray.kill(actor)  # still loading: holds no group
        while len(self.actors) > num_workers:
            self.retiring.append(self.actors.pop())
        self._retire_idle()

    def _free_cores(self) -> str:
        """The rollout.engine.cpu_cores entry fewest live actors compute on ('' when none are set)."""
        entries = self._cfg.rollout.engine.cpu_cores
        if not entries:
            return ""
        live = [*self.actors, *self.starting.values(), *self.retiring]
        used = [self.cores.get(actor) for actor in live]
        return min(entries, key=used.count)

    def wait_started(self, say: Say = quiet) -> None:
        """Block until every starting actor takes requests (the first engines of a run); `say`
        gets `rollout engine k/N ready` as each one comes up."""
        total, up = len(self.starting), 0
        while self.starting:
            ray.wait(list(self.starting), num_returns=1)  # the next engine up
            for _ in range(self._admit_started(timeout_s=0)):
                up += 1
                say(f"rollout engine {up}/{total} ready")

    def _admit_started(self, timeout_s: float | None) -> int:
        """Actors whose engine is up take requests, after loading the current weights (without the
        driver waiting: an actor starts no group while it loads, see update_weights). Returns how
        many were admitted."""
        ready, _ = ray.wait(list(self.starting), num_returns=len(self.starting), timeout=timeout_s)
        for ready_ref in ready:
            actor = self.starting.pop(ready_ref)
            ray.get(ready_ref)  # an engine that failed to start raises here, naming its error
            if self.weights is not None and self.broadcast is None:
                self.loading.append(actor.update_weights.remote(self.weights.version, self.weights.ref))
            self.actors.append(actor)
        if ready and self.weights is not None and self.broadcast is not None:
            self.broadcast.sync(self.weights.version, self.actors)  # the newcomers join the group
        return len(ready)

    def _retire_idle(self) -> None:
        busy = {id(request.actor) for request in self.in_flight.values()}
        for actor in [a for a in self.retiring if id(a) not in busy]:
            self.retiring.remove(actor)
            self.cores.pop(actor, None)
            self._stop(actor)

    def submit(self, sample: Sample, group_id: str, sampling: Sampling | None = None) -> None:
        """Send one group request to the least busy actor; `sampling` replaces the config's n and
        temperature for this group only (validation requests among training ones)."""
        def load(actor) -> int:
            return sum(1 for request in self.in_flight.values() if request.actor is actor)

        actor = min(self.actors, key=load)
        summary_ref, group_ref = actor.generate_group.remote(sample, group_id, self.weights, sampling)
        self.in_flight[summary_ref] = GroupRequest(sample, group_id, actor, group_ref, sampling)

    def discard(self, group_ids: set[str]) -> None:
        """Forget the requests of these groups (and their judge failures): `poll` never hands them
        out, and a failed actor's are not re-issued. The actors finish them all the same."""
        self.in_flight = {ref: r for ref, r in self.in_flight.items() if r.group_id not in group_ids}
        self.judge_failures = [(r, err) for r, err in self.judge_failures if r.group_id not in group_ids]

    def poll(self, timeout_s: float) -> list[FinishedGroup]:
        """Every group finished, waiting up to timeout_s for the first; a failed actor's groups are
        re-issued."""
        if self.starting:
            self._admit_started(timeout_s=0)
        if self.loading:
            self._settle_loading(timeout_s=0)
        if not self.in_flight:
            return []
        if not ray.wait(list(self.in_flight), num_returns=1, timeout=timeout_s, fetch_local=True)[0]:
            return []
        ready, _ = ray.wait(list(self.in_flight), num_returns=len(self.in_flight), timeout=0,
                            fetch_local=True)
        finished = []
        for summary_ref in ready:
            request = self.in_flight.pop(summary_ref)
            try:
                finished.append(FinishedGroup(request.group_ref, ray.get(summary_ref)))
            except ACTOR_FAILURES:
                self._recover(request)
            except JudgeError as err:
                self.judge_failures.append((request, err))
        if self.retiring:
            self._retire_idle()
        return finished

    def _recover(self, request: GroupRequest) -> None:
        """Wait for Ray to restart the actor, give it the current weights, re-issue the group.

        Blocking is deliberate: calls sent while an actor restarts can fail too, so the pool only
        re-issues once the new process answers and holds the current version.
        """
        if request.actor in self.actors:  # a retiring one is not waited for: its groups move
            deadline = time.monotonic() + RESTART_TIMEOUT_S
            while True:
                try:
                    held = ray.get(request.actor.ready.remote())
                    if self.weights is None or held >= self.weights.version:
                        break  # another of its groups' recovery got there first
                    if self.broadcast is not None:
                        self.broadcast.reform()  # a new process: its engine is in no group yet
                        self.broadcast.sync(self.weights.version, self.actors)
                    else:
                        ray.get(request.actor.update_weights.remote(self.weights.version, self.weights.ref))
                    break
                except ACTOR_FAILURES:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(1.0)
        self.reissued += 1
        self.submit(request.sample, request.group_id, request.sampling)

    def update_weights(self, version: int, weights_ref: ray.ObjectRef, wait: bool = True) -> None:
        """Send a new policy version to every actor; with `wait`, return once all hold it.

        An actor finishes the groups it holds on the old weights, loads the new ones and carries
        on (see actors/). Groups submitted after this call run on `version` whether or not the
        caller waits: their requests carry it, and an actor whose update has not arrived yet (Ray
        may start calls sent after it first) loads it for them.
        """
        self.weights = PolicyWeights(version, weights_ref)
        self.loading += [actor.update_weights.remote(version, weights_ref) for actor in self.actors]
        if wait:
            self._settle_loading(timeout_s=None)

    def broadcast_weights(self, version: int) -> None:
        """Send the learner's current weights, as `version`, to every actor through the broadcast
        group; returns once every engine holds them (each finishes its groups in flight first)."""
        self.weights = PolicyWeights(version, None)
        self.broadcast.sync(version, self.actors)

    def _settle_loading(self, timeout_s: float | None) -> None:
        """Collect finished weight loads, raising an engine's error."""
        done, self.loading = ray.wait(self.loading, num_returns=len(self.loading), timeout=timeout_s)
        for ref in done:
            try:
                ray.get(ref)
            except ACTOR_FAILURES:
                pass  # restarting: poll() reloads it for its failed groups; requests carry the weights

    def shutdown(self) -> None:
        for actor in [*self.actors, *self.retiring, *self.starting.values()]:
            self._stop(actor)
        self.actors, self.retiring, self.starting = [], [], {}

    @staticmethod
    def _stop(actor) -> None:
        try:
            ray.get(actor.shutdown.remote(), timeout=60)
        except (*ACTOR_FAILURES, ray.exceptions.GetTimeoutError):
            pass  # still loading, or gone: the kill below ends it either way
        ray.kill(actor)
