"""An explicit-dispatch LiveKit agent worker without the Agents framework: the asyncio shell.

``Worker`` holds a WebSocket to the server's ``/agent`` endpoint (``Authorization: Bearer`` a token with the
``agent`` grant, minted here from the API key and secret), registers under an agent name, and runs an
injected :data:`JobRunner` for every job LiveKit assigns to it, many at once up to ``max_jobs``. The protocol
decisions live in :mod:`transport.worker_protocol`; this module owns the socket, the clock and the tasks.

Lifecycle:

- Socket lost or server restarted → reconnect with backoff (:mod:`transport.backoff`) and register again.
  Running jobs are not touched: their rooms may well be alive, and a job ends when its runner returns.
- ``JobTermination`` → the job's :attr:`JobContext.termination` event is set; a runner that has not returned
  ``stop_timeout_s`` later is cancelled.
- :meth:`Worker.drain` (the runner's SIGTERM handler calls it) → WS_FULL at once, running jobs get
  ``grace_s`` to finish, then are asked to stop and finally cancelled; then the socket closes and
  :meth:`Worker.run` returns.

Secrets: the API secret and every token stay out of logs, errors and ``repr`` (:mod:`core.redact`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable

import websockets
from websockets.asyncio.client import ClientConnection, connect

from core.errors import LiveKitError, ProtocolError
from core.redact import Redactor, redact_url
from transport.backoff import DelayFactory, RetryPolicy, full_jitter
from transport.livekit_token import mint_token, mint_worker_token
from transport.worker_config import JobContext, JobRunner, WorkerConfig, WorkerStats, agent_endpoint
from transport.worker_jobs import JobTable
from transport.worker_protocol import (
    GoAway,
    JobAssigned,
    JobOffer,
    JobTerminationRequested,
    LagWindow,
    Pong,
    Registered,
    ServerEvent,
    WorkerProtocol,
)

__all__ = [  # the data types live in transport.worker_config; re-exported here
    "JobContext",
    "JobRunner",
    "Worker",
    "WorkerConfig",
    "WorkerStats",
    "agent_endpoint",
    "drain_on_signals",
    "run_worker",
]

log = logging.getLogger(__name__)
# websockets logs every handshake header at DEBUG, the Authorization bearer token included: its records go
# through a logger of ours whose filter masks tokens before any handler sees them.
_socket_log = logging.getLogger(f"{__name__}.socket")
_socket_log.addFilter(Redactor())


class Worker:
    """One registered worker process. ``await worker.run()``; ``await worker.drain(grace_s)`` to stop."""

    def __init__(self, config: WorkerConfig, runner: JobRunner, *,
                 backoff: DelayFactory = full_jitter) -> None:
        self.config = config
        self._backoff = backoff
        self._proto = WorkerProtocol(
            agent_name=config.agent_name, version=config.version, max_jobs=config.max_jobs,
            ping_interval_s=config.ping_interval_s, identity_prefix=config.identity_prefix,
            full_load=config.full_load)
        self._redact = Redactor([config.api_secret])
        self._jobs = JobTable(runner, stop_timeout_s=config.stop_timeout_s, redact=self._redact,
                              on_ended=self._job_ended)
        self._ws: ClientConnection | None = None
        self._wake = asyncio.Event()
        self._flushed = asyncio.Event()
        self._registered = asyncio.Event()
        self._stop = asyncio.Event()
        self._drain_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._offered = self._declined = 0
        self._registrations = self._connection_failures = 0
        self._rtt_ms: float | None = None
        self._registered_here = False
        self._serving: asyncio.Task[int | None] | None = None  # the current connection's life

    # -- public state --------------------------------------------------------------------------------
    @property
    def registered(self) -> bool:
        return self._proto.registered

    @property
    def worker_id(self) -> str:
        return self._proto.worker_id

    @property
    def jobs(self) -> dict[str, JobContext]:
        return self._jobs.contexts()

    def stats(self) -> WorkerStats:
        slots = self._proto.slots()
        return WorkerStats(
            registered=self._proto.registered, worker_id=self._proto.worker_id, draining=slots.draining,
            max_jobs=slots.max_jobs, jobs_running=len(self._jobs), jobs_reserved=slots.reserved,
            load=slots.load, jobs_offered=self._offered, jobs_declined=self._declined,
            jobs_completed=self._jobs.completed, jobs_failed=self._jobs.failed, registrations=self._registrations,
            connection_failures=self._connection_failures, last_rtt_ms=self._rtt_ms)

    async def wait_registered(self) -> str:
        """Until the worker is registered (again); returns its worker id."""
        await self._registered.wait()
        return self._proto.worker_id

    # -- main loop -----------------------------------------------------------------------------------
    async def run(self) -> None:
        """Connect, register and serve until drained or closed; reconnects after every loss.

        Raises :class:`LiveKitError` when the server refuses the credentials (retrying cannot help) or
        ``max_reconnects`` attempts in a row failed.
        """
        endpoint = agent_endpoint(self.config.url)
        limit = self.config.max_reconnects
        # The lost connection counts as the first failure; max_reconnects attempts may follow it.
        retry = RetryPolicy(self._backoff, None if limit is None else limit + 1)
        lag_watch = (asyncio.get_running_loop().create_task(self._watch_lag(self.config.overload_lag_s),
                                                            name="worker:lag")
                     if self.config.overload_lag_s is not None else None)
        try:
            while not self._stop.is_set():
                self._registered_here = False
                try:
                    self._serving = asyncio.get_running_loop().create_task(self._connect_and_serve(endpoint),
                                                                            name="worker:connection")
                    try:
                        await asyncio.wait({self._serving})
                    finally:
                        if not self._serving.done():  # run() itself was cancelled
                            self._serving.cancel()
                    if self._serving.cancelled():  # a drain while connecting or registering: nothing to flush
                        break
                    code = self._serving.result()
                    if not self._stop.is_set():
                        log.warning("agent endpoint closed the connection (code %s)", code)
                except websockets.exceptions.InvalidStatus as exc:
                    status = exc.response.status_code
                    if status in (401, 403):
                        raise LiveKitError(f"{redact_url(endpoint)} refused the worker's credentials "
                                           f"(HTTP {status}): check the API key and secret") from None
                    self._connection_failures += 1
                    log.warning("agent endpoint %s answered HTTP %d", redact_url(endpoint), status)
                except (OSError, TimeoutError, websockets.exceptions.WebSocketException, ProtocolError) as exc:
                    if self._stop.is_set():
                        break
                    self._connection_failures += 1
                    log.warning("agent worker connection to %s failed: %s: %s", redact_url(endpoint),
                                type(exc).__name__, self._redact(str(exc)))
                if self._stop.is_set():
                    break
                if self._registered_here:  # that connection worked: this is a fresh outage
                    retry.connected()
                    retry.lost()
                retry.failed()
                delay = retry.next_delay()
                if delay is None:
                    raise LiveKitError(f"gave up reconnecting to {redact_url(endpoint)} after "
                                       f"{retry.failures - 1} attempts")
                log.info("reconnecting to the agent endpoint in %.2f s (attempt %d)", delay, retry.failures)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
        finally:
            self._serving = None
            if lag_watch is not None:
                lag_watch.cancel()
            await self._jobs.end_all("closed")

    async def _watch_lag(self, full_at_s: float, probe_s: float = 0.1) -> None:
        window = LagWindow(full_at_s)
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(probe_s)
            now = loop.time()
            was = window.overloaded
            if window.add(now - before - probe_s, now) != was:
                if window.overloaded:
                    log.warning("event-loop lag p95 >= %.0f ms: reporting full until it recovers", full_at_s * 1e3)
                else:
                    log.info("event-loop lag recovered: taking jobs again")
                self._proto.set_overloaded(window.overloaded)
                self._kick()

    async def _connect_and_serve(self, endpoint: str) -> int | None:
        """One connection's life; returns the close code when the server ended it."""
        headers = {"Authorization": f"Bearer {mint_worker_token(self.config.api_key, self.config.api_secret)}"}
        # proxy=None: never route the worker socket through an environment proxy.
        async with connect(endpoint, additional_headers=headers, open_timeout=self.config.open_timeout_s,
                           proxy=None, compression=None, max_size=4 * 1024 * 1024,
                           logger=_socket_log) as ws:
            self._ws = ws
            self._proto.connection_made()
            sender = asyncio.create_task(self._send_loop(ws), name="worker:send")
            ticker = asyncio.create_task(self._tick_loop(), name="worker:tick")
            self._kick()
            try:
                # The server drops a worker that has not registered within 10 s; we give up as soon.
                async with asyncio.timeout(self.config.open_timeout_s) as deadline:
                    async for frame in ws:
                        if isinstance(frame, str):
                            log.debug("ignoring a text frame from the agent endpoint")
                            continue
                        for event in self._proto.receive(frame, time.monotonic()):
                            self._handle(event, ws)
                        if self._proto.registered:
                            deadline.reschedule(None)
                        self._kick()
            finally:
                self._ws = None
                self._registered.clear()
                self._proto.connection_lost()
                for task in (sender, ticker):
                    task.cancel()
                for task in (sender, ticker):
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            return ws.close_code

    async def _send_loop(self, ws: ClientConnection) -> None:
        # The only writer of the socket, so frames leave in the order the protocol queued them.
        while True:
            frames = self._proto.data_to_send()
            if not frames:
                self._flushed.set()
                await self._wake.wait()
                self._wake.clear()
                continue
            for frame in frames:
                await ws.send(frame)

    async def _tick_loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_ping = next_status = loop.time()
        while True:
            now = loop.time()
            if now >= next_status:
                for job_id in self._proto.tick(time.monotonic()):
                    log.warning("job %s was accepted but never assigned; slot freed", job_id)
                next_status = now + self.config.status_interval_s
            if now >= next_ping:
                self._proto.ping(time.monotonic())
                next_ping = now + self.config.ping_interval_s
            self._kick()
            await asyncio.sleep(max(0.05, min(next_ping, next_status) - loop.time()))

    def _kick(self) -> None:
        self._flushed.clear()
        self._wake.set()

    # -- events --------------------------------------------------------------------------------------
    def _handle(self, event: ServerEvent, ws: ClientConnection) -> None:
        if isinstance(event, Registered):
            self._registrations += 1
            self._registered_here = True
            self._registered.set()
            log.info("agent worker %s registered as %r with livekit-server %s (%d jobs still running)",
                     event.worker_id, self.config.agent_name, event.server_version or "?", len(self._jobs))
        elif isinstance(event, JobOffer):
            self._offered += 1
            if event.accepted:
                log.info("accepted job %s for room %r", event.job_id, event.room_name)
            else:
                self._declined += 1
                log.info("declined job %s for room %r: %s", event.job_id, event.room_name, event.reason)
        elif isinstance(event, JobAssigned):
            if event.expected:
                self._start_job(event)
            else:
                log.warning("ignoring the assignment of job %s: not accepted here, or already running",
                            event.job.id)
        elif isinstance(event, JobTerminationRequested):
            log.info("server asked to end job %s", event.job_id)
            self._jobs.stop(event.job_id, "terminated")
        elif isinstance(event, Pong):
            self._rtt_ms = event.rtt_ms
        elif isinstance(event, GoAway):
            log.info("agent endpoint is going away (%s); reconnecting", event.reason or "no reason given")
            closing = asyncio.get_running_loop().create_task(ws.close())
            self._background.add(closing)
            closing.add_done_callback(self._background.discard)

    # -- jobs ----------------------------------------------------------------------------------------
    def _start_job(self, event: JobAssigned) -> None:
        job = event.job
        token = event.token or mint_token(self.config.api_key, self.config.api_secret, room=job.room.name,
                                          identity=event.identity, name=self.config.agent_name, agent=True)
        ctx = JobContext(job_id=job.id, dispatch_id=job.dispatch_id, room_name=job.room.name,
                         url=event.url or self.config.url, token=token, identity=event.identity,
                         agent_name=job.agent_name or self.config.agent_name, metadata=job.metadata,
                         worker_id=self._proto.worker_id)
        self._jobs.start(ctx)
        log.info("job %s started in room %r as %r (%d/%d running)", job.id, ctx.room_name, ctx.identity,
                 len(self._jobs), self.config.max_jobs)

    def _job_ended(self, ctx: JobContext, failed: bool, error: str) -> None:
        self._proto.job_ended(ctx.job_id, failed=failed, error=error)
        self._kick()

    # -- shutdown ------------------------------------------------------------------------------------
    async def drain(self, grace_s: float) -> None:
        """Stop taking jobs, give running ones ``grace_s`` to finish, end the rest, then disconnect.

        Safe to call more than once; a later call with a shorter grace does not extend an earlier one.
        """
        if self._drain_task is None:
            self._drain_task = asyncio.get_running_loop().create_task(self._drain(grace_s), name="worker:drain")
        elif grace_s <= 0:
            await self._jobs.end_all("drained")
        await asyncio.shield(self._drain_task)

    async def _drain(self, grace_s: float) -> None:
        self._proto.drain()
        self._kick()
        tasks = self._jobs.tasks()
        log.info("draining agent worker: %d job(s) running, grace %.1f s", len(tasks), grace_s)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace_s)
            if pending:
                log.warning("grace period over: ending %d job(s)", len(pending))
                for job_id in self._jobs:
                    self._jobs.stop(job_id, "drained")
                await asyncio.gather(*pending, return_exceptions=True)
        await asyncio.sleep(0)  # let the last done-callbacks queue their UpdateJobStatus
        await self._close_socket()

    async def aclose(self) -> None:
        """End every job now and disconnect (no grace)."""
        await self.drain(0.0)

    async def _close_socket(self) -> None:
        ws = self._ws
        if not self._proto.registered:
            # Still connecting or waiting for registration: nothing to tell the server, so do not wait for
            # the open timeout (10 s) or a close handshake with a server that may not be answering.
            self._stop.set()
            if self._serving is not None:
                self._serving.cancel()
            return
        if ws is not None and self._proto.registered:
            self._kick()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._flushed.wait(), 5.0)  # final job updates reach the server
        self._stop.set()
        if ws is not None:
            await ws.close()


def drain_on_signals(worker: Worker, grace_s: float,
                     signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)) -> Callable[[], None]:
    """First signal: drain with ``grace_s``; a second one: end the jobs at once. Returns an uninstaller."""
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[None]] = set()

    def on_signal(sig: signal.Signals) -> None:
        grace = 0.0 if worker.stats().draining else grace_s
        log.info("%s: draining the worker (grace %.1f s)", sig.name, grace)
        task = loop.create_task(worker.drain(grace))
        pending.add(task)
        task.add_done_callback(pending.discard)

    for sig in signals:
        loop.add_signal_handler(sig, on_signal, sig)

    def uninstall() -> None:
        for sig in signals:
            loop.remove_signal_handler(sig)

    return uninstall


async def run_worker(config: WorkerConfig, runner: JobRunner, *, grace_s: float = 30.0) -> WorkerStats:
    """The command line's whole worker mode: run until SIGTERM/SIGINT has drained it; return final stats."""
    worker = Worker(config, runner)
    uninstall = drain_on_signals(worker, grace_s)
    try:
        await worker.run()
    finally:
        uninstall()
    return worker.stats()
