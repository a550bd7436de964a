"""StageTimings: nearest-rank percentiles, a bounded window, measuring on an injected clock."""

from __future__ import annotations

import pytest

from core.clock import MS, FakeClock
from core.stats import StageTimings


def test_percentiles_are_nearest_rank() -> None:
    timings = StageTimings()
    for d in range(1, 101):
        timings.record("mix", d)
    s = timings.summary("mix")
    assert s is not None
    assert (s.count, s.window, s.p50_ns, s.p95_ns, s.p99_ns, s.max_ns) == (100, 100, 50, 95, 99, 100)
    assert s.mean_ns == 50.5
    assert timings.summary("nothing") is None


def test_window_is_bounded_and_evictions_counted() -> None:
    timings = StageTimings(window=10)
    for d in range(25):
        timings.record("x", d)
    s = timings.summary("x")
    assert s is not None and (s.count, s.window, s.max_ns, s.p50_ns) == (25, 10, 24, 19)
    assert timings.evicted == 15


def test_measure_uses_the_given_clock_even_on_error() -> None:
    clock = FakeClock()
    timings = StageTimings()
    with timings.measure("encode", clock):
        clock.advance(3 * MS)
    with pytest.raises(RuntimeError), timings.measure("encode", clock):
        clock.advance(5 * MS)
        raise RuntimeError
    timings.span("decode", 10, 25)
    summaries = timings.summaries()
    assert summaries["encode"].max_ns == 5 * MS and summaries["encode"].count == 2
    assert summaries["decode"].p50_ns == 15
    assert timings.stages == ("encode", "decode")
