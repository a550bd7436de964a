"""Per-stage timing: "every stage can report its timing", read from the same clock the code runs on.

A :class:`StageTimings` keeps the last ``window`` durations of each named stage (4096 by default: about 40 s
of 10 ms ticks, enough for a stable p99, and 32 KiB per stage) and summarises them as percentiles. Older
samples fall out of the window and are counted (``evicted``); ``count`` keeps the lifetime total. It never
reads time itself: durations are handed in, or measured with a :class:`~core.clock.Clock` passed in.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from core.clock import Clock

__all__ = ["StageTimings", "TimingSummary"]


@dataclass(frozen=True, slots=True)
class TimingSummary:
    """Percentiles (nearest rank) over the stage's window, in nanoseconds; ``count`` is the lifetime total."""

    count: int
    window: int
    mean_ns: float
    p50_ns: int
    p95_ns: int
    p99_ns: int
    max_ns: int


class _Stage:
    __slots__ = ("count", "durations")

    def __init__(self, window: int) -> None:
        self.durations: deque[int] = deque(maxlen=window)
        self.count = 0


class StageTimings:
    """Stage name → recent durations in ns, with p50/p95/p99 on demand."""

    def __init__(self, *, window: int = 4096) -> None:
        if window <= 0:
            raise ValueError(f"window must be positive, got {window}")
        self._window = window
        self._stages: dict[str, _Stage] = {}
        self.evicted = 0

    @property
    def stages(self) -> tuple[str, ...]:
        return tuple(self._stages)

    def record(self, stage: str, duration_ns: int) -> None:
        entry = self._stages.get(stage)
        if entry is None:
            entry = self._stages[stage] = _Stage(self._window)
        if len(entry.durations) == self._window:
            self.evicted += 1
        entry.durations.append(duration_ns)
        entry.count += 1

    def span(self, stage: str, start_ns: int, end_ns: int) -> None:
        self.record(stage, end_ns - start_ns)

    @contextmanager
    def measure(self, stage: str, clock: Clock) -> Iterator[None]:
        """Time the body of a ``with`` block on ``clock`` (recorded even if the body raises)."""
        start = clock.now_ns()
        try:
            yield
        finally:
            self.record(stage, clock.now_ns() - start)

    def summary(self, stage: str) -> TimingSummary | None:
        entry = self._stages.get(stage)
        if entry is None or not entry.durations:
            return None
        values = np.fromiter(entry.durations, dtype=np.int64, count=len(entry.durations))
        p50, p95, p99 = np.percentile(values, [50, 95, 99], method="inverted_cdf").tolist()
        return TimingSummary(
            count=entry.count,
            window=values.shape[0],
            mean_ns=float(values.mean()),
            p50_ns=int(p50),
            p95_ns=int(p95),
            p99_ns=int(p99),
            max_ns=int(values.max()),
        )

    def summaries(self) -> dict[str, TimingSummary]:
        return {stage: s for stage in self._stages if (s := self.summary(stage)) is not None}

    def clear(self) -> None:
        self._stages.clear()
