"""Spans: named intervals of wall time that a process records about its own work.

The driver, every rollout actor and every learner rank keep a `SpanLog`; `python -m bench anatomy`
takes them after each step and lays them side by side, one lane per process, to say where a
step's time goes. Times are `time.time()`: on one machine the processes share that clock, so their
spans line up (across machines they are as good as the machines' clock sync).

Recording is always on and cheap (one small record per span, a few per group and per step); the
log keeps the newest `capacity` spans, so a run nobody reads grows no further than that.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Span:
    name: str
    """What the process was doing: "generate", "forward_backward", "wait for groups"..."""
    start: float
    """time.time() when it began."""
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start


class SpanLog:
    """The spans of one process, kept until `take` (the newest `capacity` of them)."""

    def __init__(self, capacity: int = 20_000) -> None:
        self._spans: deque[Span] = deque(maxlen=capacity)

    @contextlib.contextmanager
    def span(self, name: str) -> Iterator[None]:
        """Record the time the body takes as a span named `name` (also when it raises)."""
        start = time.time()
        try:
            yield
        finally:
            self._spans.append(Span(name, start, time.time()))

    def take(self) -> list[Span]:
        """Every span recorded since the last take, oldest first; the log starts empty again."""
        spans = list(self._spans)
        self._spans.clear()
        return spans
