"""Read the Prometheus text that Ray's metrics agent serves for this node (where ray.util.metrics go)."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable

import ray


def scrape_ray_metrics(wait_for: str | Callable[[str], bool], timeout_s: float = 60.0) -> str:
    """The node's metrics page, polled until it mentions `wait_for` (or the predicate holds):
    Ray exports every few seconds, and earlier tests' actors may have written the same names."""
    done = wait_for if callable(wait_for) else (lambda text: wait_for in text)
    port = ray._private.worker.global_worker.node.metrics_export_port
    deadline, text = time.time() + timeout_s, ""
    while not done(text) and time.time() < deadline:
        time.sleep(2)
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return text


def samples(text: str, name: str) -> list[float]:
    """Values of every sample of metric `name` (Ray may prefix it, e.g. ray_zoomrl_...)."""
    return [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if not line.startswith("#") and line.split("{")[0].split(" ")[0].endswith(name)]
