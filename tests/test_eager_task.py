"""``eager_task``: the first step runs inside the caller's step; the rest behaves as any task."""

from __future__ import annotations

import asyncio

import pytest

from transport.session_plumbing import eager_task


async def test_the_first_step_runs_before_the_caller_returns_and_the_rest_in_a_task() -> None:
    steps: list[str] = []
    gate = asyncio.get_running_loop().create_future()

    async def work() -> int:
        steps.append("first")
        value = await gate
        steps.append("rest")
        return value * 2

    task = eager_task(work())
    assert steps == ["first"]  # no loop turn happened in between
    lazy = asyncio.get_running_loop().create_task(work())
    assert steps == ["first"]  # a plain task has not started yet
    gate.set_result(21)
    assert await task == 42 and await lazy == 42
    assert steps == ["first", "first", "rest", "rest"]


async def test_a_coroutine_done_in_its_first_step_gives_a_done_future() -> None:
    async def quick() -> str:
        return "now"

    async def broken() -> None:
        raise ValueError("at once")

    done = eager_task(quick())
    assert done.done() and done.result() == "now"
    failed = eager_task(broken())
    assert failed.done()
    with pytest.raises(ValueError, match="at once"):
        await failed


async def test_errors_after_the_first_await_and_bare_yields_are_carried_through() -> None:
    async def late_error() -> None:
        await asyncio.sleep(0)  # a bare yield
        await asyncio.sleep(0.001)  # a future
        raise RuntimeError("later")

    with pytest.raises(RuntimeError, match="later"):
        await eager_task(late_error())


async def test_cancelling_it_reaches_the_coroutine_and_its_cleanup() -> None:
    cleaned = asyncio.Event()

    async def waits() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            cleaned.set()

    task = eager_task(waits())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned.is_set() and task.cancelled()
