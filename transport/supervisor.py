"""``runner.py --worker --processes N``: N worker processes, each registered with LiveKit on its own — the shell.

One Python process holds one GIL, so one worker process uses at most one core. The supervisor starts N copies
of the runner in worker mode (``--supervised-fd``: the child reports to us on a pipe, see
:mod:`transport.supervisor_child`), restarts a child that dies, drains them all on SIGTERM, serves liveness,
readiness and every child's metrics on one HTTP port (:mod:`transport.supervisor_http`), and ends with an exit
code that says why (:class:`ExitCode`).

The parts:

- :mod:`transport.supervisor_policy` (sans-I/O): exit codes, what each child reported, and the restart
  policy: a child that dies (any exit the supervisor did not ask for) is restarted after a delay from
  :func:`transport.backoff.full_jitter` (reset once a child has registered again); one that keeps dying before
  it registers, or refuses its configuration, stops the supervisor.
- :mod:`transport.redispatch`: a dead child's calls, ended through the server API and dispatched again.
- this module: the processes, their pipes, the waiting and the signals.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from core.errors import ConfigError
from transport.backoff import DelayFactory, full_jitter
from transport.redispatch import ServerApi, end_calls
from transport.supervisor_child import ChildReporter
from transport.supervisor_http import SupervisorHttp, merge_expositions
from transport.supervisor_policy import ChildState, ExitCode, GiveUp, RestartPolicy, describe_exit, strip_options

__all__ = ["ChildReporter", "ExitCode", "Supervisor", "SupervisorConfig", "describe_exit", "merge_expositions",
           "strip_options"]

log = logging.getLogger(__name__)


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
class _Child(ChildState):
    """A child slot with its current process and the task reading its status pipe."""

    proc: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    reader: asyncio.Task[None] | None = None

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
        self._policy = RestartPolicy(backoff or (lambda: full_jitter(base=0.5, cap=30.0)), config.crash_loop_limit)
        self._server = ServerApi(config.livekit_http_url, config.api_key, config.api_secret, config.redispatch)
        self.children = [_Child(i) for i in range(config.processes)]
        self._stop_requests = 0
        self._stopping = asyncio.Event()
        self._forced = asyncio.Event()
        self._gave_up = False
        self._config_error = False
        self._restarts = 0
        self._calls_lost = 0
        self._redispatched = 0
        self._http: SupervisorHttp | None = None
        self.port: int | None = None

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

    @property
    def healthy(self) -> bool:
        """Liveness: running and not giving up."""
        return not self._gave_up and not self._config_error

    def ready(self) -> bool:
        if self.draining:
            return False
        return any(c.alive and c.available for c in self.children)

    def snapshot(self) -> dict[str, Any]:
        return {"ready": self.ready(), "draining": self.draining, "restarts": self._restarts,
                "calls_lost": self._calls_lost,
                "redispatched": self._redispatched,
                "children": [{"index": c.index, "pid": c.pid, "alive": c.alive, "starts": c.starts,
                              **{k: v for k, v in c.status.items() if k != "pid"}} for c in self.children]}

    # -- main ----------------------------------------------------------------------------------------------
    async def run(self) -> ExitCode:
        if self.config.metrics_port is not None:
            self._http = SupervisorHttp(self)
            await self._http.start(self.config.host, self.config.metrics_port)
            self.port = self._http.port
        try:
            for child in self.children:
                await self._start(child)
            watchers = [asyncio.create_task(self._watch(c), name=f"supervisor:child{c.index}")
                        for c in self.children]
            await asyncio.gather(*watchers)
        finally:
            if self._http is not None:
                await self._http.close()
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
        child.started()
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
                    if isinstance(status, dict) and child.report(status):
                        log.info("worker process %d registered with LiveKit as %s", child.index,
                                 status.get("worker_id"))
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
            lost = child.jobs
            log.error("worker process %d (pid %s) died: %s; %d call(s) on it", child.index, child.pid,
                      describe_exit(code), len(lost))
            self._calls_lost += len(lost)
            self._redispatched += await end_calls(self._server, child.index, lost)
            decision = self._policy.died(child, code)
            if isinstance(decision, GiveUp):
                if decision.code is ExitCode.CONFIG:
                    log.error("worker process %d refused its configuration: not restarting; stopping", child.index)
                    self._config_error = True
                else:
                    log.error("worker process %d died %d times without registering: giving up", child.index,
                              child.deaths_unregistered)
                    self._gave_up = True
                self.request_stop()
                return
            delay = decision.delay_s
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
