"""What the processes of a run use: memory of a process tree, and CPU seconds of a process tree.

zoomrl is many processes (the driver, Ray's own, a rollout actor and its vLLM engine core, the
learner ranks, task workers), a TRL job one; to compare their memory the bench reads each side's
whole process tree at the end of its run. Two figures: the sum of every process's peak RSS (the
kernel keeps each one's high-water mark, so nothing samples during the run: sampling PSS of ~30
processes, vLLM's among them, took a visible share of 2 cores and slowed the steps it measured),
and the PSS sum at that moment (proportional set size: a page shared by k processes counts 1/k
in each, so the object store's shared memory and the libraries count once).
"""

from __future__ import annotations

import psutil


def tree(pid: int) -> list[psutil.Process]:
    """The process and its live descendants."""
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds spent so far by the process and its live descendants."""
    total = 0.0
    for process in tree(pid):
        try:
            times = process.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        total += times.user + times.system
    return total


def _peak_rss_bytes(process: psutil.Process) -> int:
    """The kernel's high-water mark of the process's resident set (VmHWM): its peak RSS, free to read."""
    with open(f"/proc/{process.pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def tree_memory(pid: int) -> dict:
    """Memory of a process tree, read once (no sampling while it runs): the sum over its processes
    of each one's peak RSS (an upper bound of the tree's peak: shared pages count once per process
    that maps them, and the processes' peaks need not coincide), the sum of their PSS now, and the
    five largest peaks, GiB."""
    peaks, pss = {}, 0
    for process in tree(pid):
        try:
            peaks[f"{process.name()} {process.pid}"] = _peak_rss_bytes(process)
            pss += process.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied, FileNotFoundError):
            continue
    largest = sorted(peaks.items(), key=lambda kv: -kv[1])[:5]
    return {"peak_rss_sum_gib": sum(peaks.values()) / 2**30, "pss_now_gib": pss / 2**30,
            "processes": len(peaks), "largest_peak_rss_gib": {name: size / 2**30 for name, size in largest}}
