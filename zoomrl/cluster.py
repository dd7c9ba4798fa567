"""Joining Ray: the cluster a Ray job runs in, or a local one on this machine, reachable from it only.

A local cluster (no RAY_ADDRESS) takes 127.0.0.1 as its node address, and Ray 2.60 then binds
every one of its servers there: GCS, raylet, object manager, workers, dashboard, the dashboard,
runtime-env and metrics agents, the autoscaler's metrics (`tests/integration/test_shared_machine.py` lists the
listening sockets of the whole process tree). Ray's token authentication stays as Ray sets it
for a new local cluster (on, token in ~/.ray/auth_token) unless RAY_AUTH_MODE says otherwise,
since loopback is still reachable by every user of a shared machine.

Several local clusters can run side by side (a learning-rate sweep): the GCS and worker ports
are free ports, and Ray moves the dashboard to the next free port after 8265 (printed).

What the actors print (vLLM's engine logs, learner warnings, tracebacks) reaches this process's
output when run.forward_actor_logs is on, so a Ray job's `ray job logs` holds them; it is always
in Ray's log folder (`/tmp/ray/session_latest/logs/worker-*.out|err` on each node).
"""

from __future__ import annotations

import os

import ray
from ray._private import ray_constants

from core.config import Config
from core.progress import Say, quiet

LOOPBACK = "127.0.0.1"


def start_ray(cfg: Config, say: Say = quiet) -> dict:
    """Connect to RAY_ADDRESS when set (a Ray job, `ray start` cluster), else start Ray locally,
    bound to 127.0.0.1; `say` gets a line once Ray is up.

    Ray's CPU count covers every actor the config asks for, since on a laptop they share the
    cores anyway. Returns what to print (the dashboard URL).
    """
    if ray.is_initialized():
        say("Ray already connected")
        return {}
    forward = cfg.run.forward_actor_logs
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=forward)
        say(f"Ray up: joined the cluster at {os.environ['RAY_ADDRESS']}")
        return {"address": os.environ["RAY_ADDRESS"]}
    _use_loopback_as_node_address()
    needed = (cfg.rollout.num_workers * cfg.rollout.num_cpus_per_worker
              + cfg.learner.num_ranks * cfg.learner.num_cpus_per_rank)
    context = ray.init(num_cpus=max(os.cpu_count() or 1, int(needed) + 2), include_dashboard=True,
                       dashboard_host=LOOPBACK, log_to_driver=forward)
    say(f"Ray up: local cluster, dashboard http://{context.dashboard_url}")
    return {"dashboard_url": context.dashboard_url}


def _use_loopback_as_node_address() -> None:
    """Make Ray take 127.0.0.1 as this node's address, so the local cluster listens there only.

    `ray.init(_node_ip_address="127.0.0.1")` cannot do it: Ray replaces a loopback address with the
    machine's routable one. What Ray 2.60 offers instead is the single-machine mode it uses on
    macOS and Windows (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: node address = loopback). Ray reads the
    variable when it is imported: the cluster's processes inherit it, and this process, which has
    imported Ray already, gets the constant set too.
    """
    os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
