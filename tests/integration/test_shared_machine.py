"""Two `zoomrl train` runs at once on one machine (a sweep): both run to the end, each with its own
run directory, metrics port, Ray cluster and dashboard, and no process of either listens anywhere
but on loopback."""

from __future__ import annotations

import ipaddress
import subprocess
import sys

import psutil

from tests.helpers.cli import read_until

TINY = ["run.total_steps=1", "rollout.n=2", "rollout.max_tokens_per_turn=16",
        "rollout.max_response_tokens=32", "data.synth.n_train=4", "data.synth.n_test=2",
        "data.synth.image_size=512", "learner.prompts_per_step=2"]


def listening(pid: int) -> list[tuple[str, int, str]]:
    """(address, port, process name) of every listening socket in the process tree of pid."""
    root = psutil.Process(pid)
    found = []
    for process in [root, *root.children(recursive=True)]:
        try:
            found += [(c.laddr.ip, c.laddr.port, process.name())
                      for c in process.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
        except psutil.NoSuchProcess:
            pass
    return found


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1, how a dual-stack socket shows an IPv4 loopback bind
    return ip.is_loopback


def test_two_runs_at_once_both_finish_on_loopback_only(tmp_path):
    runs = tmp_path / "runs"
    command = [sys.executable, "-m", "zoomrl.cli", "train", f"run.runs_dir={runs}", *TINY]
    processes = [subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True) for _ in range(2)]
    logs: list[list[str]] = [[], []]
    try:
        urls, dashboards, sockets = [], [], []
        for process, lines in zip(processes, logs, strict=True):
            urls.append(read_until(process, "metrics: ", lines).split()[1])
            dashboards.append(read_until(process, "Ray dashboard: ", lines).split()[2])
            read_until(process, "training from step 0", lines)
        for process in processes:  # both clusters up, engines and learner ranks started
            sockets.append(listening(process.pid))
        for process, lines in zip(processes, logs, strict=True):
            lines += process.stdout.readlines()
            assert process.wait(timeout=900) == 0, "".join(lines[-60:])
    finally:
        for process in processes:
            process.kill()
    assert len(set(urls)) == 2 and len(set(dashboards)) == 2
    assert all(url.startswith("http://127.0.0.1:") for url in urls + dashboards)
    run_dirs = sorted(runs.iterdir())
    assert len(run_dirs) == 2 and all((d / "checkpoints" / "step-00000001").is_dir() for d in run_dirs)
    for tree in sockets:
        names = {name for _, _, name in tree}
        assert {"gcs_server", "raylet"} <= names, names  # the whole cluster was looked at
        exposed = [s for s in tree if not is_loopback(s[0])]
        assert not exposed, f"listening beyond loopback: {exposed}"
