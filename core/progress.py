"""What a command prints while it works: a line per start-up stage, and the progress of batch jobs.

Start-up (`zoomrl train`) takes minutes on a cluster (Ray, the engines, the learner ranks); each
stage prints one `[start 12.3s] rollout engine 2/2 ready` line when it is done, timed from when
the command began, so a start that hangs shows where. The code of each stage takes a `Say`
callback (default `quiet`) and never formats the prefix itself.

Batch jobs (`zoomrl eval`, `zoomrl curate`) show a tqdm bar when stdout is a terminal; in a log
(a Ray job, CI, `| tee`) a bar's carriage returns are noise, so they print a plain line each
time about another 5% is done instead.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

Say = Callable[[str], None]
"""Where a start-up stage reports that it is done (one line, no prefix)."""


def quiet(line: str) -> None:
    """A `Say` that prints nothing (library callers, tests)."""


class StartupLog:
    """A `Say` that prints `[start <seconds>s] <line>`, timed from its creation."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.began = time.perf_counter()
        self.stream = stream

    def __call__(self, line: str) -> None:
        print(f"[start {time.perf_counter() - self.began:.1f}s] {line}", file=self.stream or sys.stdout,
              flush=True)


PLAIN_LINES = 20
"""Plain progress lines over a whole job (one each 5%), besides the first."""


class ProgressBar:
    """`progress(done, total)` for a batch job named `what`: a tqdm bar when `stream` (default
    stdout) is a terminal, else a plain line `what 37/740 (5%), 1.2/s, 9m50s left` each time done
    crosses another 1/PLAIN_LINES of the total (and at the first call).

    `done` counts from wherever the job starts (a resumed job's first call may be past 1); the
    rate is measured from that first call on.
    """

    def __init__(self, what: str, stream: TextIO | None = None) -> None:
        self.what = what
        self.stream = stream or sys.stdout
        self._bar = None
        self._first: tuple[int, float] | None = None  # (done, time) at the first call
        self._shown_slot = -1

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        if self._first is None:
            self._first = (done, now)
            if self.stream.isatty():
                from tqdm import tqdm  # imported here: only a terminal needs it

                self._bar = tqdm(desc=self.what, total=total, initial=done, file=self.stream,
                                 dynamic_ncols=True)
        if self._bar is not None:
            self._bar.update(done - self._bar.n)
            if done >= total:
                self._bar.close()
            return
        slot = done * PLAIN_LINES // total
        if slot > self._shown_slot:
            self._shown_slot = slot
            print(self._line(done, total, now), file=self.stream, flush=True)

    def _line(self, done: int, total: int, now: float) -> str:
        line = f"{self.what} {done}/{total} ({100 * done // total}%)"
        first_done, first_time = self._first
        rate = (done - first_done) / (now - first_time) if now > first_time else 0.0
        if rate > 0:
            line += f", {rate:.2f}/s"
            if done < total:
                line += f", {_duration((total - done) / rate)} left"
        return line


def _duration(seconds: float) -> str:
    """'42s', '9m50s', '2h05m'."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
