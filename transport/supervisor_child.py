"""The child's side of ``--processes N``: a supervised worker process reports its status on a pipe.

Child → supervisor: one JSON object per line on an inherited pipe (``--supervised-fd``), at least once a second
and on every change: ``{"pid", "metrics_port", "registered", "worker_id", "draining", "running", "max_jobs",
"failed", "jobs": [{"job", "room", "identity", "dispatch", "agent"}]}``. A child whose pipe breaks (the
supervisor is gone) drains itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transport.worker import Worker

__all__ = ["ChildReporter"]

log = logging.getLogger(__name__)


class ChildReporter:
    """Runs in a supervised child: writes the worker's status to the supervisor's pipe.

    ``on_orphaned`` is called once when the pipe breaks: the supervisor is gone, and the child should drain.
    """

    def __init__(self, fd: int, worker: Worker, *, metrics_port: int | None,
                 on_orphaned: Callable[[], None], interval_s: float = 1.0) -> None:
        self._fd = fd
        self._worker = worker
        self._metrics_port = metrics_port
        self._on_orphaned = on_orphaned
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self._last = ""

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="supervised:report")

    async def stop(self) -> None:
        if self._task is not None:
            self._send(force=True)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(OSError):
            os.close(self._fd)

    def status(self) -> dict[str, Any]:
        stats = self._worker.stats()
        return {"pid": os.getpid(), "metrics_port": self._metrics_port, "registered": stats.registered,
                "worker_id": stats.worker_id, "draining": stats.draining, "running": stats.jobs_running,
                "max_jobs": stats.max_jobs, "failed": stats.jobs_failed,
                "jobs": [{"job": ctx.job_id, "room": ctx.room_name, "identity": ctx.identity,
                          "dispatch": ctx.dispatch_id, "agent": ctx.agent_name}
                         for ctx in self._worker.jobs.values()]}

    def _send(self, *, force: bool = False) -> bool:
        line = json.dumps(self.status(), separators=(",", ":"))
        if line == self._last and not force:
            return True
        self._last = line
        data = (line + "\n").encode()
        try:
            while data:
                data = data[os.write(self._fd, data):]
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.EBADF):
                raise
            return False
        return True

    async def _run(self) -> None:
        beat = 0.0
        while True:
            now = time.monotonic()
            # On change every 100 ms, unchanged once per interval (a heartbeat that also detects the orphaning).
            if not self._send(force=now - beat >= self._interval_s):
                log.warning("the supervisor is gone: draining this worker process")
                self._on_orphaned()
                return
            if now - beat >= self._interval_s:
                beat = now
            await asyncio.sleep(0.1)
