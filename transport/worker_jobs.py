"""The worker's running jobs: one task per job, how each is asked to end, and how its outcome is judged.

A job ends when its runner returns (success), raises (failed, the error redacted), or is cancelled: after a
``JobTermination`` (the server asked: success) or by us, at a drain's end of grace or when the worker closes
(cut short: failed). A job asked to end gets :attr:`JobContext.termination` set and ``stop_timeout_s`` to
return before its task is cancelled. :meth:`JobTable.end_all` is bounded, so a job that swallows its
cancellation cannot keep the worker, and with it the process, from stopping.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator

from transport.worker_config import JobContext, JobRunner

__all__ = ["JobEnded", "JobTable"]

log = logging.getLogger(__name__)

JobEnded = Callable[[JobContext, bool, str], None]  # (context, failed, error) once a job's task is done


class JobTable:
    """``start(ctx)`` runs ``runner(ctx)`` as a task; ``on_ended`` hears of every outcome."""

    def __init__(self, runner: JobRunner, *, stop_timeout_s: float, redact: Callable[[str], str],
                 on_ended: JobEnded) -> None:
        self._runner = runner
        self._stop_timeout_s = stop_timeout_s
        self._redact = redact
        self._on_ended = on_ended
        self._jobs: dict[str, tuple[JobContext, asyncio.Task[None]]] = {}
        # Why a job is being ended by us, so its outcome can be reported right: "terminated" (the server
        # asked: success), "drained" / "closed" (we cut it short: failed).
        self._end_reason: dict[str, str] = {}
        self._timers: set[asyncio.TimerHandle] = set()
        self.completed = self.failed = 0

    def __len__(self) -> int:
        return len(self._jobs)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._jobs))

    def contexts(self) -> dict[str, JobContext]:
        return {job_id: ctx for job_id, (ctx, _) in self._jobs.items()}

    def tasks(self) -> list[asyncio.Task[None]]:
        return [task for _, task in self._jobs.values()]

    def start(self, ctx: JobContext) -> None:
        task = asyncio.get_running_loop().create_task(self._run(ctx), name=f"job:{ctx.job_id}")
        self._jobs[ctx.job_id] = (ctx, task)
        task.add_done_callback(lambda t: self._done(ctx, t))

    async def _run(self, ctx: JobContext) -> None:
        await self._runner(ctx)

    def stop(self, job_id: str, reason: str) -> None:
        """Ask a job to end (its termination event), and cancel it if it has not within the stop timeout."""
        entry = self._jobs.get(job_id)
        if entry is None:
            return
        ctx, task = entry
        self._end_reason.setdefault(job_id, reason)
        ctx.termination.set()
        timer = asyncio.get_running_loop().call_later(self._stop_timeout_s, task.cancel)
        self._timers.add(timer)

        def disarm(_: asyncio.Task[None]) -> None:
            timer.cancel()
            self._timers.discard(timer)

        task.add_done_callback(disarm)

    def _done(self, ctx: JobContext, task: asyncio.Task[None]) -> None:
        self._jobs.pop(ctx.job_id, None)
        reason = self._end_reason.pop(ctx.job_id, "")
        error = ""
        if task.cancelled():
            failed = reason != "terminated"
            error = "" if not failed else f"job cut short: worker {reason or 'cancelled it'}"
        elif (exc := task.exception()) is not None:
            failed = True
            error = self._redact(f"{type(exc).__name__}: {exc}")
            log.error("job %s failed: %s", ctx.job_id, error, exc_info=exc if log.isEnabledFor(logging.DEBUG)
                      else None)
        else:
            failed = False
        if failed:
            self.failed += 1
        else:
            self.completed += 1
        self._on_ended(ctx, failed, error)
        log.info("job %s ended (%s)%s; %d running", ctx.job_id, "failed" if failed else "success",
                 f": {error}" if error else "", len(self._jobs))

    async def end_all(self, reason: str) -> None:
        """Ask every job to end and cancel it at once; wait at most the stop timeout for them."""
        for job_id in list(self._jobs):
            self.stop(job_id, reason)
        tasks = self.tasks()
        for task in tasks:
            task.cancel()
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=self._stop_timeout_s)
            if stuck:
                log.error("%d job(s) did not stop within %.1f s of being cancelled; leaving them",
                          len(stuck), self._stop_timeout_s)
