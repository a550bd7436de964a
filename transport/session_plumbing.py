"""The asyncio plumbing of a :class:`~transport.session.BridgeSession`: its tasks, the fan-out of its public
events to subscribers, and the teardown budgets.

- :class:`TaskSet`: named tasks; one that crashes is logged and reported once through ``on_crash``.
- :class:`EventFanout`: one bounded queue per subscriber; a slow subscriber loses its *oldest* events, so a
  consumer that falls behind still sees how things ended.
- :func:`within`: one teardown step on its own budget, shielded from a cancel of the caller, never raising.
- :func:`eager_task`: a coroutine's first step run now, in the caller's callback, and the rest in a task
  (Python 3.12's ``eager_start``, for 3.11 too): what the first step does (an FFI request) is not left waiting
  for a loop turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Generator
from typing import Any, TypeVar

from transport.events import SessionEvent

__all__ = ["ENGINE_CLOSE_S", "ROOM_CLOSE_S", "TRANSCRIPTS_CLOSE_S", "EventFanout", "TaskSet", "eager_task", "within"]

T = TypeVar("T")

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


def eager_task(coro: Coroutine[Any, Any, T], *, name: str | None = None) -> asyncio.Future[T]:
    """Run ``coro`` up to its first suspension now, inside the caller's step; a task finishes it.

    ``loop.create_task`` only schedules a coroutine: its first line runs on a later loop turn, after the loop
    has polled for I/O (and, with the SDK's callback thread waiting for the GIL, after that thread's Python
    too: 0.3–0.7 ms measured here). Python 3.12 starts a task eagerly on request; on 3.11 the first step is
    taken here and the coroutine is handed, suspended, to a task that drives the rest: its await, result,
    exception and cancellation behave as in any task. A coroutine that finishes in its first step gives a
    future that is already done."""
    loop = asyncio.get_running_loop()
    if sys.version_info >= (3, 12):
        return asyncio.Task(coro, loop=loop, name=name, eager_start=True)  # type: ignore[call-arg,unused-ignore]
    try:
        first = coro.send(None)
    except StopIteration as stop:
        done: asyncio.Future[T] = loop.create_future()
        done.set_result(stop.value)
        return done
    except BaseException as exc:
        failed: asyncio.Future[T] = loop.create_future()
        failed.set_exception(exc)
        return failed
    return loop.create_task(_finish(_Started(coro, first)), name=name)


class _Started(Awaitable[T]):
    """A coroutine suspended after its first step, with what that step yielded; awaiting it drives the rest."""

    def __init__(self, coro: Coroutine[Any, Any, T], yielded: Any) -> None:
        self._coro, self._yielded = coro, yielded

    def __await__(self) -> Generator[Any, None, T]:
        coro, yielded = self._coro, self._yielded
        while True:
            try:
                yield yielded  # the task waits on it (a future, or None for a bare yield) as it would for coro
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # cancellation and anything thrown in reach the coroutine
                try:
                    yielded = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value  # type: ignore[no-any-return]
            else:
                try:
                    yielded = coro.send(None)
                except StopIteration as stop:
                    return stop.value  # type: ignore[no-any-return]


async def _finish(started: _Started[T]) -> T:
    return await started
