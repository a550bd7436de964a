"""Reconnect delays as a plain generator, so the policy is tested without sockets or sleeps.

"Full jitter" (AWS architecture blog, *Exponential Backoff And Jitter*, 2015): each delay is drawn uniformly
from ``[0, min(cap, base * factor**n)]``. Spreading retries over the whole window keeps many bridges that lost
the engine at the same moment from reconnecting in lockstep. The first delay is drawn from ``[0, base]``, so a
one-off drop reconnects almost at once.

The client asks for a fresh generator for every outage (:data:`DelayFactory`); it caps the number of
attempts itself, so these generators may be infinite. A finite one also ends the retries when exhausted.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

from core.errors import ConfigError

__all__ = ["DelayFactory", "constant", "full_jitter"]

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
