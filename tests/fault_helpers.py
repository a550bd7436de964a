"""Scaffolding for the fault matrix, the security tests and the soak: a bridge in a fresh room with the
emulator as its engine, callers that speak and listen, a resource-hygiene check, and the matrix recorder.

A scenario is written as::

    async with Scenario("engine", "socket dropped mid-reply") as sc:
        rig = await sc.rig(livekit_server, reply_mode="echo")
        alice = await rig.caller("alice")
        ...
        sc.happened("reconnected in 0.4 s; the next utterance reached the new conversation; echo heard")

On exit the scenario stops everything it started (callers, sessions, emulators, extra servers), then checks
that no asyncio task, file descriptor or thread is left over, and writes one row (scenario, what happened,
pass/fail/blocked) to ``artifacts/fault_matrix.json``; ``python -m scripts.fault_matrix`` renders that
into ``docs/FAULTS.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import json
import os
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from core.formats import parse_format
from core.signals import dominant_hz, rms_dbfs
from emulator import Conversation, Emulator, EmulatorConfig, Reply
from scripts.caller import RATE, Caller, Heard
from scripts.livekit_server import LiveKitServer
from transport import BridgeSession, EngineSettings, RoomLinkConfig, SessionConfig, SessionEvent, SessionState
from transport.backoff import constant
from transport.engine_client import EngineClient, InitiationData
from transport.livekit_token import mint_token

__all__ = [
    "AGENT",
    "FAST_ENGINE",
    "LOUD",
    "MATRIX_PATH",
    "Rig",
    "Scenario",
    "TurnResult",
    "Usage",
    "dominant_hz",
    "loud_seconds",
    "loud_span",
    "record",
    "rms_dbfs",
    "rss_kib",
    "session_ended",
    "turn",
    "until",
    "voice",
    "warm_up",
]

ROOT = Path(__file__).resolve().parents[1]
MATRIX_PATH = Path(os.environ.get("FAULT_MATRIX_PATH") or ROOT / "artifacts" / "fault_matrix.json")
AGENT = "bridge-agent"
LOUD = 1000
Int16Array = npt.NDArray[np.int16]

# Quick turn-taking (a turn is ~2 s), pings and idle timeout off unless a scenario wants them.
FAST_ENGINE: dict[str, Any] = {
    "reply_mode": "echo", "think_time_ms": 150.0, "vad_hangover_ms": 300.0, "vad_min_speech_ms": 60.0,
    "chunk_ms": 100.0, "burst_factor": 4.0, "ping_interval_s": None, "idle_timeout_s": None, "seed": 11,
}


# ------------------------------------------------------------------------------------------------ audio


def voice(seconds: float, freq: float = 300.0, rate: int = RATE, level: float = 0.3) -> Int16Array:
    """A harmonic test voice with a slow envelope, easy to recognise after Opus and any resampling."""
    t = np.arange(int(seconds * rate)) / rate
    wave = np.sin(2 * np.pi * freq * t) + 0.5 * np.sin(2 * np.pi * 2 * freq * t + 1.0)
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 3 * t)
    return (wave / 1.5 * envelope * level * 32767).astype(np.int16)


def loud_span(samples: Int16Array, rate: int, *, trim_s: float = 0.15) -> Int16Array:
    """The part between the first and last loud sample, minus ``trim_s`` at both ends (onsets, codecs)."""
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > LOUD)
    if loud.size == 0:
        return np.zeros(0, np.int16)
    trim = int(trim_s * rate)
    return samples[loud[0] + trim: max(loud[0] + trim, loud[-1] - trim)]


def loud_seconds(samples: Int16Array, rate: int) -> float:
    return float(np.count_nonzero(np.abs(samples.astype(np.int32)) > LOUD)) / rate


async def until(predicate: Callable[[], bool], timeout: float = 15.0, what: str = "") -> None:
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what or predicate}") from None


# ------------------------------------------------------------------------------------------------ hygiene


@dataclass(frozen=True, slots=True)
class Usage:
    tasks: frozenset[asyncio.Task[Any]]
    fds: int
    py_threads: frozenset[str]
    os_threads: int
    rss_kib: int

    @staticmethod
    def now() -> Usage:
        current = asyncio.current_task()
        return Usage(frozenset(t for t in asyncio.all_tasks() if t is not current and not t.done()),
                     len(os.listdir("/proc/self/fd")), python_threads(),
                     len(os.listdir("/proc/self/task")), rss_kib())


def python_threads() -> frozenset[str]:
    """Threads Python started. Native threads that merely called into Python (the SDK's FFI callbacks,
    its log forwarding) show up as ``_DummyThread`` and stay listed forever; the OS count covers them."""
    return frozenset(t.name for t in threading.enumerate() if not isinstance(t, threading._DummyThread))


def rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


# The native SDK (tokio's blocking pool, libwebrtc) parks worker threads and lets them go after an idle
# keep-alive (10 s for tokio), so the OS thread count may stay a few above the baseline for a while; a leak
# is growth beyond that, scenario after scenario. Python threads and descriptors must come back exactly.
OS_THREAD_SLACK = 12
FD_SLACK = 0


async def leftovers(before: Usage, timeout: float = 12.0) -> list[str]:
    """What is still left after ``timeout`` s of letting native teardown finish; empty when clean."""
    deadline = time.monotonic() + timeout
    while True:
        now = Usage.now()
        problems = []
        tasks = [t for t in now.tasks - before.tasks if not t.done()]
        if tasks:
            problems.append(f"tasks left: {sorted(_describe_task(t) for t in tasks)}")
        if now.fds > before.fds + FD_SLACK:
            problems.append(f"file descriptors: {before.fds} -> {now.fds}")
        new_threads = now.py_threads - before.py_threads
        if new_threads:
            problems.append(f"python threads left: {sorted(new_threads)}")
        if now.os_threads > before.os_threads + OS_THREAD_SLACK:
            problems.append(f"OS threads: {before.os_threads} -> {now.os_threads}")
        if not problems or time.monotonic() > deadline:
            return problems
        await asyncio.sleep(0.2)


def _describe_task(task: asyncio.Task[Any]) -> str:
    """Name, coroutine and where it is suspended: enough to tell whose task was left behind."""
    coro = task.get_coro()
    where = ""
    frame = getattr(coro, "cr_frame", None)
    if frame is not None:
        where = f" at {frame.f_code.co_filename.rsplit('/', 1)[-1]}:{frame.f_lineno}"
    return f"{task.get_name()} {getattr(coro, '__qualname__', coro)!s}{where}"


_warm = False


async def warm_up(server: LiveKitServer) -> None:
    """Let the SDK start its runtime (threads, descriptors) before the first baseline is taken."""
    global _warm
    if _warm:
        return
    room = f"warmup-{uuid.uuid4().hex[:6]}"
    async with Caller(server.url, _token(server, room, "warmup"), identity="warmup") as c:
        await asyncio.sleep(0.3)
        del c
    _warm = True
    await asyncio.sleep(0.5)


def _token(server: LiveKitServer, room: str, identity: str, *, agent: bool = False) -> str:
    return mint_token(server.api_key, server.api_secret, room=room, identity=identity, agent=agent)


_E = TypeVar("_E")

# ------------------------------------------------------------------------------------------------ rig


@dataclass
class Rig:
    """One bridge session in its own room, its emulator, and the callers a test added."""

    server: LiveKitServer
    room: str
    session: BridgeSession
    emu: Emulator
    events: list[SessionEvent] = field(default_factory=list)
    callers: dict[str, Caller] = field(default_factory=dict)
    _collector: asyncio.Task[None] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        # Subscribed from the start: every event of the session lands in ``events``.
        self._collector = asyncio.ensure_future(_collect(self.session, self.events))

    @property
    def input_rate(self) -> int:
        return parse_format(self.emu.config.input_format).rate

    async def caller(self, identity: str, *, settle: bool = True) -> Caller:
        """Join, and (``settle``) return once the caller hears the agent's track and the bridge counts it as a
        caller. Without ``settle`` it returns as soon as it is in the room: for sessions that may end at once."""
        c = Caller(self.server.url, _token(self.server, self.room, identity), identity=identity)
        await c.start()
        self.callers[identity] = c
        if settle:
            await until(lambda: AGENT in c.heard and identity in self.session.room.callers, 15,
                        f"{identity} to join and hear the agent")
        return c

    async def drop_caller(self, identity: str) -> None:
        c = self.callers.pop(identity)
        await c.stop()

    def heard(self, identity: str) -> Heard:
        return self.callers[identity].heard[AGENT]

    def of(self, kind: type[_E]) -> list[_E]:
        """The events of one kind, in order."""
        return [e for e in self.events if isinstance(e, kind)]

    async def stop(self) -> None:
        for c in list(self.callers.values()):
            with contextlib.suppress(Exception):
                await c.stop()
        self.callers.clear()
        await self.session.stop()
        if self._collector is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(self._collector, 5)
        await self.emu.stop()


@dataclass
class TurnResult:
    reply: Reply
    said_hz: float  # dominant frequency of what the engine received for this utterance
    heard: Int16Array  # what the caller heard from the reply's start on, for ``listen_s``
    heard_hz: float
    heard_loud_s: float


async def turn(rig: Rig, who: str, conversation: Conversation, freq: float, *, seconds: float = 0.7,
               listen_s: float = 1.0, timeout: float = 15.0) -> TurnResult:
    """``who`` says a ``freq`` Hz voice; the engine must hear it and reply (echo), and ``who`` must hear
    the reply. Returns what the engine got and what the caller heard, for the test to assert on."""
    c = rig.callers[who]
    heard = rig.heard(who)
    mark = len(conversation.replies)

    def answer() -> Reply | None:
        return next((r for r in conversation.replies[mark:] if r.utterance is not None and r.start_ns), None)

    c.say(voice(seconds, freq))
    await c.wait_said()
    await conversation.wait_for(lambda: answer() is not None, timeout)
    reply = answer()
    assert reply is not None and reply.utterance is not None
    got = conversation.utterance_audio(reply.utterance)
    said_hz = dominant_hz(loud_span(got, rig.input_rate, trim_s=0.1), rig.input_rate) if got.size else 0.0
    start = reply.start_ns or reply.trigger_ns
    await until(lambda: heard.first_loud_after(start, LOUD) is not None, timeout, f"{who} to hear the reply")
    await asyncio.sleep(listen_s)
    audio = heard.since(start)
    span = loud_span(audio, RATE)
    return TurnResult(reply, said_hz, audio, dominant_hz(span, RATE) if span.size > RATE // 10 else 0.0,
                      loud_seconds(audio, RATE))


# ------------------------------------------------------------------------------------------------ scenario


class Scenario:
    """One row of the fault matrix: the resources it started, its hygiene check and its result."""

    def __init__(self, side: str, name: str, *, check_hygiene: bool = True, record_row: bool = True) -> None:
        self.side, self.name = side, name
        self.check_hygiene = check_hygiene
        self.record_row = record_row
        self.notes: list[str] = []
        self.rigs: list[Rig] = []
        self.cleanups: list[Callable[[], Any]] = []
        self.blocked: str | None = None
        self.started = 0.0
        self._before: Usage | None = None

    def happened(self, text: str) -> None:
        self.notes.append(text)

    def block(self, reason: str) -> None:
        """Record the row as blocked (an environment limit, not a bridge failure)."""
        self.blocked = reason

    def on_exit(self, cleanup: Callable[[], Any]) -> None:
        """Run at exit before the hygiene check (sync or async), in reverse order of registration."""
        self.cleanups.append(cleanup)

    async def rig(self, server: LiveKitServer, *, session: dict[str, Any] | None = None,
                  client: dict[str, Any] | None = None, emulator_api_key: str | None = None,
                  start: bool = True, init: InitiationData | None = None, **emulator: Any) -> Rig:
        await warm_up(server)
        if self._before is None:
            self._before = Usage.now()
        config = EmulatorConfig(**{**FAST_ENGINE, **emulator})
        if emulator_api_key is not None:
            config.api_key = emulator_api_key
        emu = Emulator(config)
        await emu.start()
        room = f"{self.side}-{uuid.uuid4().hex[:8]}"
        engine = EngineSettings(api_key=emu.api_key, agent_id=config.agent_id, api_base=emu.rest_base_url,
                                max_attempts=(client or {}).pop("max_attempts", 6), init=init or InitiationData())
        options: dict[str, Any] = {"start_when": "immediately", "end_when_empty": False}
        options.update(session or {})
        room_options = {k: options.pop(k) for k in ("queue_ms", "caller_frame_ms") if k in options}
        # Reconnect quickly in tests: the policy itself is tested in test_engine_client.
        factory = functools.partial(EngineClient, backoff=lambda: constant(0.1), **(client or {}))
        # With the server API's credentials, as the runner and the worker pass them: the link confirms its leave.
        link = RoomLinkConfig(server.url, _token(server, room, AGENT, agent=True), identity=AGENT,
                              api_key=server.api_key, api_secret=server.api_secret, **room_options)
        s = BridgeSession(SessionConfig(room=link, engine=engine, **options),
                          client_factory=factory)
        rig = Rig(server, room, s, emu)
        self.rigs.append(rig)
        if start:
            await asyncio.sleep(0)  # let the collector subscribe before the first event
            await s.start()
        return rig

    async def __aenter__(self) -> Scenario:
        self.started = time.monotonic()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        failure = None
        if exc is not None and not isinstance(exc, _Skip):
            failure = "".join(traceback.format_exception_only(exc)).strip()
        for cleanup in reversed(self.cleanups):
            with contextlib.suppress(Exception):
                result = cleanup()
                if asyncio.iscoroutine(result):
                    await result
        for rig in self.rigs:
            await rig.stop()
        problems: list[str] = []
        if self.check_hygiene and self._before is not None and self.blocked is None:
            problems = await leftovers(self._before)
            after = Usage.now()
            self.happened(f"after stop: fds {self._before.fds}→{after.fds}, OS threads "
                          f"{self._before.os_threads}→{after.os_threads}, no task left" if not problems
                          else "; ".join(problems))
        if self.blocked is not None:
            outcome = "blocked"
        elif failure is not None or problems:
            outcome = "fail"
        else:
            outcome = "pass"
        if self.record_row:
            record(self.side, self.name, outcome, self.notes, failure or self.blocked,
                   time.monotonic() - self.started)
        if exc is None and problems:
            raise AssertionError("resource hygiene: " + "; ".join(problems))


class _Skip(Exception):
    pass


async def _collect(session: BridgeSession, into: list[SessionEvent]) -> None:
    async for event in session.events():
        into.append(event)


def stop_engine_reading(conversation: Conversation, engine: EngineClient) -> Callable[[], None]:
    """The emulator stops reading the bridge's socket, and the bridge's send buffer shrinks to 4 KiB so the pipe
    fills in seconds (else the client's websockets keepalive, 20 s + 20 s, would end the connection first).
    Returns the undo: the buffer as it was, reading again.

    Only our send buffer is made small, never the emulator's receive buffer: shrinking it on an established
    socket leaves the window it already advertised larger than the memory behind it, and Linux then drops our
    segments as beyond its window, ACKs for the emulator's data included (see the ping-flood test in
    test_security).
    """
    client_sock = engine.socket
    assert client_sock is not None
    sndbuf = client_sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    client_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    conversation.pause_reading()

    def resume() -> None:
        client_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        conversation.pause_reading(False)

    return resume


def session_ended(rig: Rig) -> bool:
    return rig.session.state is SessionState.STOPPED


# ------------------------------------------------------------------------------------------------ recorder


def record(side: str, name: str, outcome: str, notes: list[str], detail: str | None, seconds: float) -> None:
    """Upsert one row of ``artifacts/fault_matrix.json`` (keyed by side and scenario)."""
    MATRIX_PATH.parent.mkdir(parents=True, exist_ok=True)
    rows: dict[str, Any] = {}
    if MATRIX_PATH.exists():
        with contextlib.suppress(ValueError):
            rows = json.loads(MATRIX_PATH.read_text())
    key = f"{side}: {name}"
    rows[key] = {"side": side, "scenario": name, "outcome": outcome, "happened": notes, "detail": detail,
                 "seconds": round(seconds, 1),
                 "at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
    tmp = MATRIX_PATH.with_suffix(".tmp")
    tmp.write_text(json.dumps(rows, indent=1, sort_keys=True))
    os.replace(tmp, MATRIX_PATH)
