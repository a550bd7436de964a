"""How late the event loop wakes up: the one probe the metrics, the benchmarks and their helper processes share.

A task sleeps ``interval_s`` over and over and reports how much later than asked each wakeup came
(``on_lag(seconds)``, never negative). A loop that runs a blocking call, or that is starved of CPU, shows it here
first: the agent voice has a 30 ms lead, so a lag near that is an audible gap.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

__all__ = ["LoopLagProbe"]


class LoopLagProbe:
    """``probe = LoopLagProbe(0.02, lags.append); probe.start(); …; await probe.stop()``."""

    def __init__(self, interval_s: float, on_lag: Callable[[float], None]) -> None:
        self.interval_s = interval_s
        self._on_lag = on_lag
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start on the running loop; a second call does nothing."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-lag")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        loop, interval, on_lag = asyncio.get_running_loop(), self.interval_s, self._on_lag
        while True:
            t0 = loop.time()
            await asyncio.sleep(interval)
            on_lag(max(0.0, loop.time() - t0 - interval))
