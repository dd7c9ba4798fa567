"""Running the `zoomrl` console script as a user runs it, and reading its output as it comes."""

from __future__ import annotations

import subprocess
import sys
import time


def zoomrl(*args: str, cwd=None) -> subprocess.CompletedProcess:
    """`zoomrl ARGS` in a new process, to its end (10 min at most); output captured as text."""
    return subprocess.run([sys.executable, "-m", "zoomrl.cli", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=600)


def read_until(process, prefix: str, lines: list[str], timeout_s: float = 600) -> str:
    """The first line of the running process's output that starts with prefix; every line read
    is appended to `lines` (what a failure shows)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        line = process.stdout.readline()
        if not line:
            raise AssertionError(f"process ended before '{prefix}':\n" + "".join(lines[-60:]))
        lines.append(line)
        if line.startswith(prefix):
            return line
    raise AssertionError(f"no '{prefix}' within {timeout_s}s")
