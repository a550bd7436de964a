"""The asyncio plumbing of a :class:`~transport.session.BridgeSession`: its tasks, the fan-out of its public
events to subscribers, and the teardown budgets.

- :class:`TaskSet`: named tasks; one that crashes is logged and reported once through ``on_crash``.
- :class:`EventFanout`: one bounded queue per subscriber; a slow subscriber loses its *oldest* events, so a
  consumer that falls behind still sees how things ended.
- :func:`within`: one teardown step on its own budget, shielded from a cancel of the caller, never raising.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from transport.events import SessionEvent

__all__ = ["ENGINE_CLOSE_S", "ROOM_CLOSE_S", "TRANSCRIPTS_CLOSE_S", "EventFanout", "TaskSet", "within"]

log = logging.getLogger(__name__)

# Teardown budgets: together under the worker's stop timeout (12 s), the engine's the close timeout (5 s) plus
# slack for the close handshake.
ROOM_CLOSE_S = 3.0
ENGINE_CLOSE_S = 6.0
TRANSCRIPTS_CLOSE_S = 1.0


class TaskSet:
    """The session's tasks. A task that raises is logged and handed to ``on_crash``; cancelled ones are not."""

    def __init__(self, on_crash: Callable[[BaseException], None]) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._on_crash = on_crash

    def spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        task.set_name(f"bridge:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        exc = None if task.cancelled() else task.exception()
        if exc is None:
            return
        log.error("session task %s crashed", task.get_name(), exc_info=exc)
        self._on_crash(exc)

    async def cancel_all(self) -> None:
        """Cancel every task but the calling one and wait for each to finish; never raises."""
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        for task in list(self._tasks):
            if task is not current:
                with contextlib.suppress(BaseException):
                    await task


class EventFanout:
    """Every published event to every subscriber, each through a queue of at most ``maxsize`` events."""

    def __init__(self, maxsize: int) -> None:
        self._maxsize = maxsize
        self._queues: list[asyncio.Queue[SessionEvent | None]] = []

    async def subscribe(self) -> AsyncIterator[SessionEvent]:
        queue: asyncio.Queue[SessionEvent | None] = asyncio.Queue(self._maxsize)
        self._queues.append(queue)
        try:
            while (event := await queue.get()) is not None:
                yield event
        finally:
            self._queues.remove(queue)

    def publish(self, event: SessionEvent) -> None:
        for queue in self._queues:
            _put_latest(queue, event)

    def close(self) -> None:
        """End every subscription (after the events already queued)."""
        for queue in self._queues:
            _put_latest(queue, None)

    def backlogs(self) -> list[int]:
        return [queue.qsize() for queue in self._queues]


def _put_latest(queue: asyncio.Queue[SessionEvent | None], item: SessionEvent | None) -> None:
    if queue.full():
        with contextlib.suppress(asyncio.QueueEmpty):
            queue.get_nowait()
    queue.put_nowait(item)


async def within(step: Awaitable[None], budget_s: float, what: str) -> None:
    """Run one teardown step to its end or its budget, whichever first; never raise."""
    task = asyncio.ensure_future(step)
    try:
        await asyncio.wait_for(asyncio.shield(task), budget_s)
    except TimeoutError:
        log.warning("%s took over %.0f s; going on without it", what, budget_s)
        task.cancel()
    except asyncio.CancelledError:
        # Our caller is being cancelled: let the step finish in the background within its budget.
        task.add_done_callback(_swallow)
        raise
    except Exception as exc:
        log.warning("%s failed: %s", what, exc)


def _swallow(task: asyncio.Future[None]) -> None:
    if not task.cancelled():
        task.exception()
