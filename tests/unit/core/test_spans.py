"""SpanLog: spans in the order they end, kept until taken, the newest `capacity` of them."""

import time

import pytest

from core.spans import Span, SpanLog


def test_spans_are_recorded_in_order_and_taken_once():
    log = SpanLog()
    before = time.time()
    with log.span("outer"):
        with log.span("inner"):
            time.sleep(0.01)
    inner, outer = log.take()
    assert (inner.name, outer.name) == ("inner", "outer")  # the order they end in
    assert before <= outer.start <= inner.start < inner.end <= outer.end <= time.time()
    assert inner.seconds >= 0.01
    assert log.take() == []


def test_a_span_that_raises_is_recorded():
    log = SpanLog()
    with pytest.raises(ValueError), log.span("fails"):
        raise ValueError("boom")
    assert [s.name for s in log.take()] == ["fails"]


def test_only_the_newest_capacity_spans_are_kept():
    log = SpanLog(capacity=3)
    for i in range(5):
        with log.span(f"s{i}"):
            pass
    assert [s.name for s in log.take()] == ["s2", "s3", "s4"]
    assert Span("x", 1.0, 3.5).seconds == 2.5
