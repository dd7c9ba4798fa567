"""Joining Ray: the cluster a Ray job runs in, or a local one on this machine."""

from __future__ import annotations

import os

import ray

from zoomrl.config import Config


def start_ray(cfg: Config) -> dict:
    """Connect to RAY_ADDRESS when set (a Ray job, `ray start` cluster), else start Ray locally.

    Locally, token authentication is off (RAY_AUTH_MODE=disabled unless set) because the
    dashboard listens on 127.0.0.1 only; Ray's CPU count covers every actor the config asks for,
    since on a laptop they share the cores anyway. Returns what to print (the dashboard URL).
    """
    if ray.is_initialized():
        return {}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
        return {"address": os.environ["RAY_ADDRESS"]}
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    needed = (cfg.rollout.num_workers * cfg.rollout.num_cpus_per_worker
              + cfg.learner.num_ranks * cfg.learner.num_cpus_per_rank)
    context = ray.init(num_cpus=max(os.cpu_count() or 1, int(needed) + 2), include_dashboard=True,
                       dashboard_host="127.0.0.1", log_to_driver=False)
    return {"dashboard_url": context.dashboard_url}
