"""Monotonic clocks in integer nanoseconds.

Every stage that measures or schedules takes a :class:`Clock` (or a literal ``now_ns``) instead of reading
time itself, so tests drive it with :class:`FakeClock` and the benchmarks read the very clock the code used.
"""

from __future__ import annotations

import time
from typing import Protocol

from core.errors import ConfigError

__all__ = ["MS", "SECOND", "Clock", "FakeClock", "MonotonicClock"]

MS = 1_000_000
SECOND = 1_000_000_000


class Clock(Protocol):
    def now_ns(self) -> int: ...


class MonotonicClock:
    """``time.monotonic_ns``: the same timeline as ``asyncio``'s loop clock on Linux (CLOCK_MONOTONIC)."""

    __slots__ = ()

    def now_ns(self) -> int:
        return time.monotonic_ns()


class FakeClock:
    """A clock that moves only when told to."""

    __slots__ = ("_now",)

    def __init__(self, start_ns: int = 0) -> None:
        self._now = start_ns

    def now_ns(self) -> int:
        return self._now

    def advance(self, ns: int) -> int:
        if ns < 0:
            raise ConfigError("a monotonic clock cannot go back")
        self._now += ns
        return self._now

    def set(self, now_ns: int) -> None:
        if now_ns < self._now:
            raise ConfigError("a monotonic clock cannot go back")
        self._now = now_ns
