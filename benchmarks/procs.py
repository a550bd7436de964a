"""Helper processes of the benchmarks, driven over JSON lines (see :mod:`benchmarks.caller_host`).

Both ends live here: :class:`JsonLinesProcess` drives a helper from the benchmark, :func:`serve_json_lines` is the
helper's side (one command per line on stdin, one answer per line on stdout with the command's ``id``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, Any

from benchmarks.common import ROOT

__all__ = ["HostError", "JsonLinesProcess", "serve_json_lines"]

log = logging.getLogger(__name__)
Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


async def serve_json_lines(handle: Handler, *, ready: dict[str, Any] | None = None, concurrent: bool = False,
                           stop_op: str = "stop") -> None:
    """Answer commands until ``stop_op`` (answered, then return) or the end of stdin.

    ``handle(cmd)`` returns the answer's fields (``ok: true`` is added) or raises (``ok: false`` and the error).
    ``ready`` is written first, for a driver that waits for the helper to be up. With ``concurrent`` every
    command runs in a task of its own, so a slow one (``join``) does not hold up the others.
    """
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = sys.stdout

    def answer(msg: dict[str, Any]) -> None:
        out.write(json.dumps(msg) + "\n")
        out.flush()

    async def run(cmd: dict[str, Any]) -> None:
        try:
            result = await handle(cmd)
            answer({"id": cmd.get("id"), "ok": True, **result})
        except Exception as exc:
            log.exception("command %s failed", cmd.get("op"))
            answer({"id": cmd.get("id"), "ok": False, "error": f"{type(exc).__name__}: {exc}"})

    if ready is not None:
        answer(ready)
    tasks: set[asyncio.Task[None]] = set()
    while line := await reader.readline():
        cmd = json.loads(line)
        if cmd.get("op") == stop_op or not concurrent:
            await run(cmd)
            if cmd.get("op") == stop_op:
                return
            continue
        task = asyncio.create_task(run(cmd))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await handle({"op": stop_op})


class HostError(RuntimeError):
    """A helper process answered a command with an error, or died."""


class JsonLinesProcess:
    """``python -m <module> <args>``: commands out on stdin, answers (matched by id) and events in on stdout."""

    def __init__(self, module: str, *args: str, log_path: Path | None = None) -> None:
        self.module, self.args, self.log_path = module, args, log_path
        self.proc: asyncio.subprocess.Process | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self) -> None:
        self._log = open(self.log_path, "ab") if self.log_path else None  # noqa: SIM115 - closed in close()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", self.module, *self.args, cwd=ROOT, env=env, limit=1 << 26,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=self._log if self._log is not None else asyncio.subprocess.DEVNULL)
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            fut = self._waiting.pop(msg.get("id"), None) if msg.get("id") is not None else None
            if fut is not None and not fut.done():
                fut.set_result(msg)
            elif fut is None:
                self.events.put_nowait(msg)
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(HostError(f"{self.module} exited (code {self.proc.returncode})"))
        self._waiting.clear()

    async def call(self, op: str, timeout: float = 60.0, **kwargs: Any) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None
        if self.proc.returncode is not None:
            raise HostError(f"{self.module} is not running (code {self.proc.returncode})")
        ident = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[ident] = fut
        self.proc.stdin.write((json.dumps({"id": ident, "op": op, **kwargs}) + "\n").encode())
        await self.proc.stdin.drain()
        async with asyncio.timeout(timeout):
            msg = await fut
        if not msg.get("ok"):
            raise HostError(f"{self.module} {op}: {msg.get('error')}")
        return msg

    async def next_event(self, timeout: float) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            return await self.events.get()

    async def close(self, timeout: float = 30.0) -> dict[str, Any]:
        """``stop`` (its answer is returned), then wait for the exit; kill only this process if it hangs."""
        result: dict[str, Any] = {}
        proc = self.proc
        if proc is None:
            return result
        if proc.returncode is None:
            with contextlib.suppress(HostError, TimeoutError, ConnectionError, BrokenPipeError):
                result = await self.call("stop", timeout=timeout)
            try:
                async with asyncio.timeout(10):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._log is not None:
            self._log.close()
        return result
