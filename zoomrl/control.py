"""Changing a running job from outside: `zoomrl scale` talks to the driver through a named actor.

Each run's driver starts one `RunControl` actor, named after the run directory's absolute path
(unique: two runs never share a directory), in the `zoomrl` namespace. `zoomrl scale` and
`zoomrl stop` (any process joined to the same Ray cluster, e.g. another `ray job submit`) find it
by the directory's name or path and record a request: the number of rollout actors wanted, or to
stop after the current step. The driver reads the requests about once a second, acts on them and
reports back what it holds. The control actor dies with the driver.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import ray

NAMESPACE = "zoomrl"
NAME_PREFIX = "zoomrl-run:"


@dataclass
class PoolStatus:
    """What the driver holds, as it last reported it."""

    active: int
    """Rollout actors taking requests."""
    starting: int
    """Actors whose engine is still loading."""
    retiring: int
    """Actors finishing their last groups before they stop."""
    step: int


@ray.remote(num_cpus=0)
class RunControl:
    def __init__(self, rollout_workers: int) -> None:
        self.wanted_rollout_workers = rollout_workers
        self.stop_requested = False
        self.status: PoolStatus | None = None

    def request_rollout_workers(self, count: int) -> None:
        if count < 1:
            raise ValueError(f"--rollout-workers must be >= 1, got {count}")
        self.wanted_rollout_workers = count

    def request_stop(self) -> None:
        """End the run after the step in progress, with a checkpoint (`zoomrl train --resume`)."""
        self.stop_requested = True

    def requests(self) -> tuple[int, bool]:
        """(rollout actors wanted, stop requested): what the driver polls."""
        return self.wanted_rollout_workers, self.stop_requested

    def report(self, status: PoolStatus) -> None:
        self.status = status

    def last_status(self) -> PoolStatus | None:
        return self.status


def start_control(run_dir: Path, rollout_workers: int):
    """The control actor of this run (an ActorHandle), registered under its directory's path."""
    name = NAME_PREFIX + str(Path(run_dir).resolve())
    return RunControl.options(name=name, namespace=NAMESPACE).remote(rollout_workers)


def running_runs() -> list[str]:
    """Run directories (absolute paths) of the runs with a live driver on the connected cluster."""
    return sorted(actor["name"].removeprefix(NAME_PREFIX)
                  for actor in ray.util.list_named_actors(all_namespaces=True)
                  if actor["namespace"] == NAMESPACE and actor["name"].startswith(NAME_PREFIX))


def find_control(run: str | None):
    """The control actor of the run whose directory is `run` (its name, or its path when two runs
    share a name), or of the only run on the cluster when None; returns (actor, run directory)."""
    runs = running_runs()
    if run is None:
        matches = runs
    else:
        matches = ([r for r in runs if Path(r).name == run]
                   or [r for r in runs if r == str(Path(run).resolve())])
    if len(matches) != 1:
        found = ", ".join(runs) if runs else "none"
        if run is None:
            raise LookupError(f"name the run with --run: {len(runs)} running zoomrl runs found ({found})")
        if not matches:
            raise LookupError(f"no running zoomrl run named '{run}' (running: {found})")
        raise LookupError(f"{len(matches)} running zoomrl runs are named '{run}': give its path "
                          f"with --run ({', '.join(matches)})")
    return ray.get_actor(NAME_PREFIX + matches[0], namespace=NAMESPACE), matches[0]


def wait_for_rollout_workers(control, count: int, timeout_s: float, on_status=lambda status: None
                             ) -> PoolStatus:
    """Poll the driver's reports until exactly `count` actors take requests and none is starting
    or retiring; TimeoutError after timeout_s (new engines load their weights first: minutes)."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = ray.get(control.last_status.remote())
        if status is not None:
            on_status(status)
            if (status.active, status.starting, status.retiring) == (count, 0, 0):
                return status
        if time.monotonic() > deadline:
            raise TimeoutError(f"the run did not reach {count} rollout actors in {timeout_s:.0f}s "
                               f"(last report: {status})")
        time.sleep(2.0)
