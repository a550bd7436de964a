"""Per-stage timings on the injected clock: the figures the metrics and the benchmarks read.

Each stage keeps a count, a total and the most recent ``window`` durations (a fixed numpy array, so a session
that runs for days holds the same memory as one that runs for seconds). Percentiles are over that window.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from core.errors import ConfigError

__all__ = ["StageSummary", "StageTimer"]


@dataclass(frozen=True, slots=True)
class StageSummary:
    count: int
    total_ns: int
    p50_ns: float
    p95_ns: float
    p99_ns: float
    max_ns: int


class _Stage:
    __slots__ = ("count", "recent", "total")

    def __init__(self, window: int) -> None:
        self.count = 0
        self.total = 0
        self.recent: npt.NDArray[np.int64] = np.zeros(window, dtype=np.int64)


class StageTimer:
    """``add(stage, ns)`` on the hot path (a few hundred ns); ``summary()`` when someone asks."""

    def __init__(self, window: int = 2048) -> None:
        if window <= 0:
            raise ConfigError("window must be positive")
        self._window = window
        self._stages: dict[str, _Stage] = {}

    def add(self, stage: str, duration_ns: int) -> None:
        s = self._stages.get(stage)
        if s is None:
            s = self._stages[stage] = _Stage(self._window)
        s.recent[s.count % self._window] = duration_ns
        s.count += 1
        s.total += duration_ns

    def recent(self, stage: str) -> npt.NDArray[np.int64]:
        """The stage's retained durations, oldest first."""
        s = self._stages.get(stage)
        if s is None:
            return np.zeros(0, dtype=np.int64)
        if s.count <= self._window:
            return s.recent[: s.count].copy()
        split = s.count % self._window
        return np.concatenate([s.recent[split:], s.recent[:split]])

    def summary(self) -> dict[str, StageSummary]:
        out: dict[str, StageSummary] = {}
        for name, s in self._stages.items():
            values = self.recent(name)
            p50, p95, p99 = (float(v) for v in np.percentile(values, [50, 95, 99]))
            out[name] = StageSummary(s.count, s.total, p50, p95, p99, int(values.max()))
        return out
