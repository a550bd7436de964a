"""Reconnect delays as a plain generator, so the policy is tested without sockets or sleeps.

"Full jitter" (AWS architecture blog, *Exponential Backoff And Jitter*, 2015): each delay is drawn uniformly
from ``[0, min(cap, base * factor**n)]``. Spreading retries over the whole window keeps many bridges that lost
the engine at the same moment from reconnecting in lockstep. The first delay is drawn from ``[0, base]``, so a
one-off drop reconnects almost at once.

A fresh generator is used for every outage (:data:`DelayFactory`), and :class:`RetryPolicy` caps the number of
failed attempts in a row, so these generators may be infinite. A finite one also ends the retries when exhausted.

:class:`RetryPolicy` is the one reconnect policy of the project's long-lived connections (the engine client
and the agent worker): plain bookkeeping, no sleeping, so it is tested without I/O. The shell reports each
``failed()`` attempt, each ``connected()`` success and each ``lost()`` connection, and asks ``next_delay()``
how long to wait before the next attempt: ``None`` means give up.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

from core.errors import ConfigError

__all__ = ["DelayFactory", "RetryPolicy", "constant", "full_jitter"]

DelayFactory = Callable[[], Iterator[float]]


def full_jitter(base: float = 0.25, cap: float = 8.0, factor: float = 2.0, *,
                rand: Callable[[], float] = random.random) -> Iterator[float]:
    """Seconds to wait before attempt 1, 2, …; ``rand`` returns floats in [0, 1) (inject one in tests)."""
    if base <= 0 or cap < base or factor < 1:
        raise ConfigError(f"bad backoff parameters base={base} cap={cap} factor={factor}")
    window = base
    while True:
        yield rand() * window
        window = min(cap, window * factor)


def constant(delay: float) -> Iterator[float]:
    """The same delay forever: for tests and for callers that want no jitter."""
    while True:
        yield delay


class RetryPolicy:
    """Consecutive failures and the delay sequence of the current outage. ``max_failures`` None: retry for ever."""

    def __init__(self, backoff: DelayFactory = full_jitter, max_failures: int | None = None) -> None:
        if max_failures is not None and max_failures < 1:
            raise ConfigError(f"max_failures must be at least 1, got {max_failures}")
        self._backoff = backoff
        self.max_failures = max_failures
        self.failures = 0  # failed attempts since the last success
        self._delays: Iterator[float] | None = None

    def connected(self) -> None:
        """An attempt succeeded: the failure count starts again."""
        self.failures = 0

    def lost(self) -> None:
        """An established connection ended: a new outage, with a fresh delay sequence."""
        self._delays = None

    def failed(self) -> None:
        self.failures += 1

    @property
    def exhausted(self) -> bool:
        return self.max_failures is not None and self.failures >= self.max_failures

    def next_delay(self) -> float | None:
        """Seconds to wait before the next attempt, or None: give up (too many failures, delays exhausted)."""
        if self.exhausted:
            return None
        if self._delays is None:
            self._delays = self._backoff()
        return next(self._delays, None)
