"""bench/processes.py on real child processes: memory of a tree, CPU seconds of a tree."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from bench.processes import cpu_seconds, tree_memory

HOLD_256_MIB = "import sys; block = bytearray(256 << 20); print('held', flush=True); sys.stdin.readline()"


def test_tree_memory_sees_what_a_grandchild_holds():
    code = (f"import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', {HOLD_256_MIB!r}], "
            "stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True); p.stdout.readline(); "
            "print('ready', flush=True); sys.stdin.readline(); p.communicate('\\n')")
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        memory = tree_memory(child.pid)
    finally:
        child.communicate("\n", timeout=30)
    assert memory["processes"] == 2
    assert 0.25 <= memory["peak_rss_sum_gib"] < 0.5  # the 256 MiB block plus two small interpreters
    assert max(memory["largest_peak_rss_gib"].values()) >= 0.25
    assert 0 < memory["pss_now_gib"] <= memory["peak_rss_sum_gib"]


def test_cpu_seconds_counts_a_busy_child_in_the_tree():
    spin = "import sys, time\nend = time.time() + 0.6\nwhile time.time() < end: pass\nsys.stdin.readline()"
    before = cpu_seconds(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", spin], stdin=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)  # it spins 0.6 s, then waits
        assert 0.4 <= cpu_seconds(child.pid) < 1.0
        assert cpu_seconds(os.getpid()) - before >= 0.4  # a descendant's time is in the tree's
    finally:
        child.communicate("\n", timeout=30)
