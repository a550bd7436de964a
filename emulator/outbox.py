"""Everything an emulated conversation sends, through one queue and one sender task.

One sender keeps the order of messages whatever the faults do: a stall holds every send (queued or new) until
it ends, jitter delays each message by up to ``jitter_ms`` from when it was *queued* (so delays do not pile
up), and the chunks of an interrupted reply still queued are discarded (stale chunks asked for on purpose are
not). After each write the conversation's ``after_send`` records it with ``time.monotonic_ns()``, the clock
of :class:`core.clock.MonotonicClock`, so tests subtract the bridge's timestamps directly.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable

from aiohttp import web

from emulator.config import Faults
from emulator.records import Out, PingRecord, Reply

__all__ = ["Outbox"]

log = logging.getLogger(__name__)


class Outbox:
    """``put`` from anywhere on the loop; ``await run()`` in one task; ``await join()`` to drain it."""

    def __init__(self, ws: web.WebSocketResponse, *, rng: random.Random, faults: Callable[[], Faults],
                 after_send: Callable[[Out, int], None], name: str) -> None:
        self._ws = ws
        self._rng = rng
        self._faults = faults
        self._after_send = after_send
        self._name = name
        self._queue: asyncio.Queue[Out] = asyncio.Queue()
        self._stall_until = 0.0

    def put(self, text: str | bytes, type_: str, event_id: int | None = None, *, reply: Reply | None = None,
            samples: int = 0, stale: bool = False, ping: PingRecord | None = None) -> None:
        self._queue.put_nowait(Out(text, type_, event_id, reply, samples, stale, ping,
                                   asyncio.get_running_loop().time()))

    def stall(self, seconds: float) -> None:
        """Hold every send (queued or new) for ``seconds`` from now; order is kept."""
        self._stall_until = max(self._stall_until, asyncio.get_running_loop().time() + seconds)

    async def join(self) -> None:
        await self._queue.join()

    @staticmethod
    def _discarded(item: Out) -> bool:
        reply = item.reply
        return reply is not None and reply.interrupted_ns is not None and not item.stale

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            item = await self._queue.get()
            try:
                if self._discarded(item):
                    continue
                jitter = self._faults().jitter_ms
                # Jitter is measured from when the message was queued, so it delays without piling up.
                target = max(self._stall_until, item.enqueued + (self._rng.uniform(0, jitter) / 1000 if jitter else 0))
                while (delay := max(target, self._stall_until) - loop.time()) > 0:
                    await asyncio.sleep(delay)
                if self._discarded(item) or self._ws.closed:
                    continue
                if isinstance(item.text, bytes):
                    await self._ws.send_bytes(item.text)
                else:
                    await self._ws.send_str(item.text)
                self._after_send(item, time.monotonic_ns())
            except (ConnectionError, RuntimeError) as exc:
                # aiohttp raises these once the transport is gone; the receive loop sees the close.
                log.debug("conversation %s: send failed: %s", self._name, exc)
            finally:
                self._queue.task_done()
