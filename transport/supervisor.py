"""``runner.py --worker --processes N``: N worker processes, each registered with LiveKit on its own.

One Python process holds one GIL, so one worker process uses at most one core. The supervisor starts N copies
of the runner in worker mode (``--supervised-fd``: the child reports to us on a pipe), restarts a child that
dies, drains them all on SIGTERM, serves liveness, readiness and every child's metrics on one HTTP port, and
ends with an exit code that says why (:class:`ExitCode`).

Child → supervisor: one JSON object per line on an inherited pipe, at least once a second and on every
change: ``{"pid", "metrics_port", "registered", "worker_id", "draining", "running", "max_jobs", "jobs":
[{"job", "room", "identity"}]}``. A child whose pipe breaks (the supervisor is gone) drains itself.

A child that dies (any exit the supervisor did not ask for) is restarted after a delay from
:func:`transport.backoff.full_jitter` (reset once a child has registered again). Its calls cannot be ended by
the dead process, so the supervisor does it: it removes each of the child's agent participants from its room
through the server API, which tells the caller at once that the agent left (rather than after the server's
ICE timeout), and creates a fresh dispatch for every room someone is still in: livekit-server 1.13.5 does
not dispatch a room again when its worker disappears (tests/test_cluster.py shows both halves).

HTTP (``--metrics-port``, loopback):

- ``GET /healthz`` (liveness): 200 while the supervisor runs and is not giving up; 503 otherwise.
- ``GET /readyz`` (readiness): 200 when at least one child is registered with LiveKit, not draining and below
  ``max_jobs``; 503 otherwise, and always 503 once draining. Body: JSON with every child's status.
- ``GET /metrics``: every child's exposition, scraped on demand and merged, each sample labelled
  ``process="<index>"``, plus the supervisor's own ``lk_bridge_supervisor_*`` families.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING, Any

from aiohttp import ClientSession, ClientTimeout, web

from core.errors import ConfigError
from transport.backoff import DelayFactory, full_jitter

if TYPE_CHECKING:
    from transport.worker import Worker

__all__ = ["ChildReporter", "ExitCode", "Supervisor", "SupervisorConfig", "describe_exit", "strip_options"]

log = logging.getLogger(__name__)


class ExitCode(IntEnum):
    """Why a runner process (a supervisor or one of its children) ended. See docs/DEPLOY.md for the table."""

    OK = 0  # stopped on request; every call finished within the grace (or there were none)
    ERROR = 1  # an unexpected error (the last log line says which)
    USAGE = 2  # bad command line (argparse's own code)
    CONFIG = 3  # configuration refused (ConfigError): restarting cannot help; a supervisor does not retry it
    FORCED = 4  # stopped on request, but calls were cut short: grace over, or a second SIGTERM
    CRASH_LOOP = 5  # supervisor only: a child kept dying before it ever registered; gave up

    @classmethod
    def describe(cls, code: int) -> str:
        return describe_exit(code)


def describe_exit(code: int | None) -> str:
    """A log-friendly reason for a child's exit status (``Popen.returncode`` convention: -N = signal N)."""
    if code is None:
        return "still running"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    if code > 128:
        with contextlib.suppress(ValueError):
            return f"exit {code} (signal {signal.Signals(code - 128).name})"
    with contextlib.suppress(ValueError):
        return f"exit {code} ({ExitCode(code).name})"
    return f"exit {code}"


def strip_options(argv: Sequence[str], names: set[str], flags: frozenset[str] = frozenset()) -> list[str]:
    """``argv`` without the options in ``names`` (``--x V`` and ``--x=V`` forms) and their values, and
    without the value-less ``flags``."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if arg in flags:
            continue
        if name in names:
            skip = "=" not in arg
            continue
        out.append(arg)
    return out


# -- child side ----------------------------------------------------------------------------------------------
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


# -- supervisor side -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SupervisorConfig:
    processes: int
    child_argv: tuple[str, ...]  # the runner's own arguments for a child (without --processes/--metrics-port)
    drain_grace_s: float = 30.0
    # After the grace a child's Worker cancels jobs that ignore termination (its stop_timeout, 5 s) and
    # flushes its final job updates (up to 5 s): the supervisor waits that much more before SIGKILL.
    stop_margin_s: float = 12.0
    metrics_port: int | None = None
    host: str = "127.0.0.1"
    livekit_http_url: str = ""
    api_key: str = ""
    api_secret: str = field(default="", repr=False)
    crash_loop_limit: int = 5  # consecutive deaths of one child before it ever registered
    # Ask LiveKit for a fresh job in each room a dead child was serving (livekit-server 1.13 does not
    # re-dispatch a room whose worker vanished: the caller would be left alone).
    redispatch: bool = True
    python: str = sys.executable
    runner_path: str = ""
    env: dict[str, str] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.processes < 1:
            raise ConfigError(f"--processes must be at least 1, got {self.processes}")


@dataclass
class _Child:
    index: int
    proc: asyncio.subprocess.Process | None = None
    status: dict[str, Any] = field(default_factory=dict)
    started_at: float = 0.0
    starts: int = 0
    deaths_unregistered: int = 0
    delays: Iterator[float] | None = None
    reader: asyncio.Task[None] | None = None
    ever_registered: bool = False

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None


class Supervisor:
    """``await Supervisor(config).run(stop)``: returns the process's :class:`ExitCode`.

    ``stop`` is an asyncio.Event the caller's signal handler sets; set it again after :meth:`force` …
    in practice the runner calls :meth:`request_stop` on every SIGTERM/SIGINT: the first drains, the second
    forces.
    """

    def __init__(self, config: SupervisorConfig, *, backoff: DelayFactory | None = None) -> None:
        self.config = config
        self._backoff = backoff or (lambda: full_jitter(base=0.5, cap=30.0))
        self.children = [_Child(i) for i in range(config.processes)]
        self._stop_requests = 0
        self._stopping = asyncio.Event()
        self._forced = asyncio.Event()
        self._gave_up = False
        self._config_error = False
        self._restarts = 0
        self._calls_lost = 0
        self._redispatched = 0
        self._http: web.AppRunner | None = None
        self._client: ClientSession | None = None
        self.port: int | None = None
        self._background: set[asyncio.Task[Any]] = set()

    # -- control -------------------------------------------------------------------------------------------
    def request_stop(self) -> None:
        """First call: drain every child (SIGTERM each). Second: force (SIGTERM again, then SIGKILL)."""
        self._stop_requests += 1
        if self._stop_requests == 1:
            log.info("draining %d worker process(es) (grace %.0f s)", len(self.children), self.config.drain_grace_s)
            self._stopping.set()
        else:
            log.warning("second stop request: ending every call now")
            self._forced.set()
        for child in self.children:
            self._signal(child, signal.SIGTERM)

    @property
    def draining(self) -> bool:
        return self._stopping.is_set()

    def ready(self) -> bool:
        if self.draining:
            return False
        return any(c.alive and c.status.get("registered") and not c.status.get("draining")
                   and int(c.status.get("running", 0)) < int(c.status.get("max_jobs", 0)) for c in self.children)

    def snapshot(self) -> dict[str, Any]:
        return {"ready": self.ready(), "draining": self.draining, "restarts": self._restarts,
                "calls_lost": self._calls_lost,
                "redispatched": self._redispatched,
                "children": [{"index": c.index, "pid": c.pid, "alive": c.alive, "starts": c.starts,
                              **{k: v for k, v in c.status.items() if k != "pid"}} for c in self.children]}

    # -- main ----------------------------------------------------------------------------------------------
    async def run(self) -> ExitCode:
        if self.config.metrics_port is not None:
            await self._serve_http(self.config.metrics_port)
        self._client = ClientSession(timeout=ClientTimeout(total=3.0))
        try:
            for child in self.children:
                await self._start(child)
            watchers = [asyncio.create_task(self._watch(c), name=f"supervisor:child{c.index}")
                        for c in self.children]
            await asyncio.gather(*watchers)
        finally:
            await self._client.close()
            if self._http is not None:
                await self._http.cleanup()
        if self._config_error:
            return ExitCode.CONFIG
        if self._gave_up:
            return ExitCode.CRASH_LOOP
        codes = [c.proc.returncode for c in self.children if c.proc is not None]
        if self._forced.is_set() or any(code != ExitCode.OK for code in codes):
            return ExitCode.FORCED
        return ExitCode.OK

    async def _start(self, child: _Child) -> None:
        read_fd, write_fd = os.pipe()
        argv = [self.config.python, self.config.runner_path, *self.config.child_argv,
                "--supervised-fd", str(write_fd)]
        if self.config.metrics_port is not None:
            argv += ["--metrics-port", "0"]
        env = dict(os.environ if self.config.env is None else self.config.env)
        env["LK_BRIDGE_PROCESS_INDEX"] = str(child.index)
        try:
            child.proc = await asyncio.create_subprocess_exec(*argv, pass_fds=(write_fd,), env=env,
                                                              stdin=asyncio.subprocess.DEVNULL,
                                                              start_new_session=True)
        finally:
            os.close(write_fd)
        child.status = {}
        child.starts += 1
        child.started_at = time.monotonic()
        child.reader = asyncio.create_task(self._read_status(child, read_fd), name=f"supervisor:status{child.index}")
        log.info("worker process %d started (pid %d)", child.index, child.proc.pid)

    async def _read_status(self, child: _Child, fd: int) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 20)
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                                    os.fdopen(fd, "rb", buffering=0))
        try:
            while line := await reader.readline():
                with contextlib.suppress(ValueError):
                    status = json.loads(line)
                    if isinstance(status, dict):
                        if status.get("registered") and not child.ever_registered:
                            log.info("worker process %d registered with LiveKit as %s", child.index,
                                     status.get("worker_id"))
                        if status.get("registered"):
                            child.ever_registered = True
                            child.deaths_unregistered = 0
                            child.delays = None
                        child.status = status
        finally:
            transport.close()

    async def _watch(self, child: _Child) -> None:
        while True:
            assert child.proc is not None
            code = await self._wait_exit(child)
            if child.reader is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await child.reader
            if self.draining:
                log.info("worker process %d ended: %s", child.index, describe_exit(code))
                return
            lost = list(child.status.get("jobs", ()))
            log.error("worker process %d (pid %s) died: %s; %d call(s) on it", child.index, child.pid,
                      describe_exit(code), len(lost))
            await self._end_calls(child.index, lost)
            if code == ExitCode.CONFIG:
                log.error("worker process %d refused its configuration: not restarting; stopping", child.index)
                self._config_error = True
                self.request_stop()
                return
            if not child.ever_registered or not child.status.get("registered"):
                child.deaths_unregistered += 1
            if child.deaths_unregistered >= self.config.crash_loop_limit:
                log.error("worker process %d died %d times without registering: giving up", child.index,
                          child.deaths_unregistered)
                self._gave_up = True
                self.request_stop()
                return
            child.ever_registered = False
            child.delays = child.delays or self._backoff()
            delay = next(child.delays, 30.0)
            log.info("restarting worker process %d in %.2f s", child.index, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            if self.draining:
                return
            self._restarts += 1
            await self._start(child)

    async def _wait_exit(self, child: _Child) -> int:
        assert child.proc is not None
        proc = child.proc
        waiting = asyncio.ensure_future(proc.wait())
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if waiting.done():
                return waiting.result()
            # Draining: the grace, then the child's own stop margin; a second request cuts it to the margin.
            forced = asyncio.ensure_future(self._forced.wait())
            await asyncio.wait({waiting, forced}, timeout=self.config.drain_grace_s + self.config.stop_margin_s,
                               return_when=asyncio.FIRST_COMPLETED)
            if not waiting.done() and forced.done():
                await asyncio.wait({waiting}, timeout=self.config.stop_margin_s)
            forced.cancel()
            if not waiting.done():
                log.error("worker process %d did not stop in time: SIGKILL", child.index)
                self._signal(child, signal.SIGKILL)
                self._forced.set()
            return await waiting
        finally:
            stopping.cancel()

    def _signal(self, child: _Child, sig: signal.Signals) -> None:
        if child.alive and child.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                child.proc.send_signal(sig)

    async def _end_calls(self, index: int, jobs: list[dict[str, str]]) -> None:
        """End a dead child's calls cleanly, and have LiveKit start them again on a live worker.

        For each job: remove its agent participant (the caller learns at once that the agent left, instead
        of after the server's connection timeout); then, if someone is still in the room, create a new
        dispatch of the same agent with the same metadata — LiveKit assigns it to any worker with room for
        it, on any node — and delete the dead one.
        """
        if not jobs:
            return
        self._calls_lost += len(jobs)
        if not (self.config.livekit_http_url and self.config.api_key and self.config.api_secret):
            return
        from livekit import api

        lkapi = api.LiveKitAPI(self.config.livekit_http_url, self.config.api_key, self.config.api_secret)
        try:
            await asyncio.gather(*(self._end_call(lkapi, index, job) for job in jobs))
        finally:
            await lkapi.aclose()

    async def _end_call(self, lkapi: Any, index: int, job: dict[str, str]) -> None:
        from livekit import api

        room, job_id = job.get("room", ""), job.get("job", "")
        try:
            await lkapi.room.remove_participant(api.RoomParticipantIdentity(room=room, identity=job["identity"]))
            log.info("job %s (room %r) of dead worker process %d: agent removed from the room", job_id, room, index)
        except Exception as exc:  # already gone is the usual reason
            log.info("job %s (room %r): agent not removed (%s)", job_id, room, type(exc).__name__)
        if not self.config.redispatch or not job.get("agent"):
            return
        try:
            people = await lkapi.room.list_participants(api.ListParticipantsRequest(room=room))
            if not any(p.kind != api.ParticipantInfo.Kind.AGENT for p in people.participants):
                log.info("job %s: room %r is empty, not dispatched again", job_id, room)
                return
            old = [d for d in await lkapi.agent_dispatch.list_dispatch(room) if d.id == job.get("dispatch")]
            metadata = old[0].metadata if old else ""
            fresh = await lkapi.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(
                room=room, agent_name=job["agent"], metadata=metadata))
            self._redispatched += 1
            log.info("job %s (room %r): dispatched again as %s", job_id, room, fresh.id)
            if old:
                await lkapi.agent_dispatch.delete_dispatch(old[0].id, room)
        except Exception as exc:  # the room may have closed meanwhile
            log.warning("job %s (room %r): could not dispatch the agent again: %s", job_id, room,
                        type(exc).__name__)

    # -- HTTP ----------------------------------------------------------------------------------------------
    async def _serve_http(self, port: int) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        await web.TCPSite(runner, self.config.host, port).start()
        self._http = runner
        self.port = int(runner.addresses[0][1])
        log.info("supervisor: /healthz /readyz /metrics on http://%s:%d", self.config.host, self.port)

    async def _healthz(self, _request: web.Request) -> web.Response:
        alive = sum(c.alive for c in self.children)
        ok = not self._gave_up and not self._config_error
        return web.json_response({"ok": ok, "alive": alive, "processes": len(self.children)},
                                 status=200 if ok else 503)

    async def _readyz(self, _request: web.Request) -> web.Response:
        snap = self.snapshot()
        return web.json_response(snap, status=200 if snap["ready"] else 503)

    async def _metrics(self, _request: web.Request) -> web.Response:
        texts = await asyncio.gather(*(self._scrape(c) for c in self.children))
        body = merge_expositions([(str(c.index), t) for c, t in zip(self.children, texts, strict=True)
                                  if t is not None], self._own_metrics())
        response = web.Response(body=body)
        response.content_type = "text/plain"
        response.charset = "utf-8"
        response.headers["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8"
        return response

    async def _scrape(self, child: _Child) -> str | None:
        port = child.status.get("metrics_port")
        if not child.alive or not port or self._client is None:
            return None
        try:
            async with self._client.get(f"http://127.0.0.1:{int(port)}/metrics") as response:
                return await response.text() if response.status == 200 else None
        except (OSError, TimeoutError) as exc:
            log.debug("scraping worker process %d failed: %s", child.index, exc)
            return None

    def _own_metrics(self) -> list[tuple[str, str, str, float]]:
        return [
            ("lk_bridge_supervisor_processes", "gauge", "worker processes configured", len(self.children)),
            ("lk_bridge_supervisor_processes_alive", "gauge", "worker processes running",
             sum(c.alive for c in self.children)),
            ("lk_bridge_supervisor_processes_registered", "gauge", "worker processes registered with LiveKit",
             sum(bool(c.alive and c.status.get("registered")) for c in self.children)),
            ("lk_bridge_supervisor_restarts", "counter", "worker processes restarted after dying", self._restarts),
            ("lk_bridge_supervisor_calls_lost", "counter", "calls that were on a worker process when it died",
             self._calls_lost),
            ("lk_bridge_supervisor_calls_redispatched", "counter",
             "rooms of a dead worker process LiveKit was asked to dispatch again", self._redispatched),
            ("lk_bridge_supervisor_ready", "gauge", "1 when /readyz answers 200", float(self.ready())),
        ]


def merge_expositions(children: list[tuple[str, str]], own: list[tuple[str, str, str, float]]) -> bytes:
    """Children's Prometheus text expositions as one, every sample labelled ``process``; then ``own``."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.metrics_core import Metric
    from prometheus_client.parser import text_string_to_metric_families
    from prometheus_client.samples import Sample

    families: dict[str, Metric] = {}
    for index, text in children:
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(family.name, family.documentation, family.type,
                                                        family.unit)
            merged.samples.extend(Sample(s.name, {**s.labels, "process": index}, s.value, s.timestamp,
                                         s.exemplar) for s in family.samples)
    for name, kind, doc, value in own:
        metric = Metric(name, doc, kind)
        metric.samples.append(Sample(name + ("_total" if kind == "counter" else ""), {}, float(value)))
        families[name] = metric

    class _Families:
        def collect(self) -> list[Metric]:
            return list(families.values())

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families())
    return generate_latest(registry)
