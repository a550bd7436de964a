"""The process being measured in the scaling benchmark: N bridge sessions, nothing else but probes.

``python -m benchmarks.bridge_host``, driven over JSON lines (as :mod:`benchmarks.caller_host`):

- ``start``: ``{"livekit_url", "api_key", "api_secret", "engine": {"api_base", "api_key", "agent_id"},
  "rooms": [...], "concurrency": 8}`` starts one :class:`~transport.session.BridgeSession` per room (the
  same configuration ``runner.py`` uses, engine started at once) → ``{"started", "failed", "rss_idle_mb"}``.
- ``measure_start`` / ``measure_stop``: a measurement window. Over it: CPU time of this process (all its
  threads: Python's loop and the LiveKit SDK's native ones, split by thread name), RSS at the end, event-loop
  lag (a task sleeping 20 ms and recording the overshoot), playout underruns and pacer re-anchors (deltas,
  summed over sessions), the interruptions the sessions handled (receive and flush times, for the parent to
  join with the emulator's send times), and how many FFI events the SDK dispatched and how many
  subscriptions it scanned for each (``livekit.rtc``'s ``FfiQueue.put`` loops over every subscriber).
- ``stop``.

``BRIDGE_HOST_PROFILE=DIR`` profiles the loop thread over each measurement window (cProfile on that thread's
CPU clock; one ``<host>-<pid>-window-<n>.prof`` per window, for ``python -m pstats``). The profiler's own cost inflates
small, frequent calls: read shares, not absolute times.

``--what-if NAME`` measures a change to the bridge before it is made (see :func:`apply_what_if`).

Before any session exists, ``rss_idle_mb`` is taken with the SDK's native library loaded, so the per-session
figure is (RSS − idle) / N.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import faulthandler
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from benchmarks.common import run_loop
from benchmarks.procs import serve_json_lines
from transport.config import RoomLinkConfig
from transport.livekit_token import mint_token
from transport.loop_lag import LoopLagProbe
from transport.sdk_events import router
from transport.session import BridgeSession, EngineSettings, SessionConfig

log = logging.getLogger("benchmarks.bridge_host")
AGENT = "bridge-agent"
_TICKS = os.sysconf("SC_CLK_TCK")


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def thread_cpu() -> dict[str, float]:
    """CPU seconds per thread name ("main" for the thread running the event loop), this process."""
    out: dict[str, float] = {}
    pid = os.getpid()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        name = "main" if task.name == str(pid) else stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        seconds = (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime
        # Group numbered worker threads ("tokio-runtime-w", "worker-12") by their stem.
        stem = name.rstrip("0123456789-_ ") or name
        out[stem] = out.get(stem, 0.0) + seconds
    return out


def main_thread_sched() -> tuple[int, int]:
    """(ns on a CPU, ns runnable but waiting for one) of the thread running the event loop (schedstat)."""
    try:
        run_ns, wait_ns, _ = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/schedstat").read_text().split()
    except (OSError, ValueError):
        return 0, 0
    return int(run_ns), int(wait_ns)


class FfiCounter:
    """Counts ``FfiQueue.put`` calls and the subscriptions each one scans (a wrapper, ~0.3 µs a call); once
    the sessions install :mod:`transport.sdk_events`' router (which replaces ``put``), the router's own counts:
    events, and the subscriptions it offered each one to (filters asked, queues fed)."""

    def __init__(self) -> None:
        self._events = 0
        self._scanned = 0
        from livekit.rtc._ffi_client import FfiClient
        queue = FfiClient.instance.queue
        original = queue.put

        def put(item: Any) -> None:
            self._events += 1
            self._scanned += len(queue._subscribers)
            original(item)

        queue.put = put  # type: ignore[method-assign]

    @property
    def events(self) -> int:
        routed = router()
        return self._events + (routed.events if routed is not None else 0)

    @property
    def scanned(self) -> int:
        routed = router()
        return self._scanned + (routed.offered if routed is not None else 0)


WHAT_IF = ("frame10", "frame40", "switch-1ms", "sdk-filter", "sdk-queue", "caller-48k", "no-duck")


# The voice's frames ahead for each frame length: 10 ms × 3 (before 20 ms became the default), 20 × 2 (the
# default, DownlinkConfig), 40 × 1. Ours with --what-if frame10/frame40, and the floor at the same length.
VOICE_LEAD_FRAMES = {10: 3, 20: 2, 40: 1}


def apply_what_if(names: list[str]) -> dict[str, Any]:
    """Changes measured on request only (``python -m benchmarks --only scaling --what-if NAME``), to put a number
    on a fix before anyone makes it. Delete an entry once the change is in the code (or rejected).

    - ``frame10``: ``DownlinkConfig(frame_ms=10, lead_frames=3)``, the voice frames before 20 ms became the
      default: twice the captures (FFI calls) per second.
    - ``frame40``: ``DownlinkConfig(frame_ms=40, lead_frames=1)``: a quarter of the captures. The native
      queue then holds one to two frames (40-80 ms) right after a capture instead of 30-40 ms.
    - ``switch-1ms``: ``sys.setswitchinterval(0.001)``. livekit.rtc runs Python (event parsing, the fan-out to
      every subscription) on the SDK's callback thread; the loop thread gives up the GIL on every FFI call and
      socket operation and may then wait up to the switch interval (5 ms) to get it back.
    - ``sdk-filter``: every room keeps the SDK's own event filter (``transport.sdk_events`` not applied), the
      before of that change: each room's listener woken for every event of the process.
    - ``sdk-queue``: the SDK's own event queue (``transport.sdk_events.install_router`` not applied), the
      before of routing events by handle: every stream's and capture's filter asked about every event.
    - ``no-duck``: no local ducking (``SessionConfig(duck_db=0)``): what the onset detectors, the voice
      reference and the duck envelope cost.
    - ``caller-48k``: callers read at 48 kHz and resampled by the bridge's FIR (``SessionConfig(caller_rate=48000)``),
      the before of reading them at the engine's rate.
    """
    session_kwargs: dict[str, Any] = {}
    if "switch-1ms" in names:
        sys.setswitchinterval(0.001)
    if "sdk-filter" in names:
        import transport.livekit_room
        transport.livekit_room.narrow_room_events = lambda _room: False  # type: ignore[assignment]
    if "sdk-queue" in names:
        import transport.livekit_room
        transport.livekit_room.install_router = lambda: False  # type: ignore[assignment]
    if "caller-48k" in names:
        session_kwargs["caller_rate"] = 48_000
    if "no-duck" in names:
        session_kwargs["duck_db"] = 0.0
    for ms in (10, 40):
        if f"frame{ms}" in names:
            from core.downlink import DownlinkConfig
            session_kwargs["downlink"] = DownlinkConfig(frame_ms=ms, lead_frames=VOICE_LEAD_FRAMES[ms])
    return session_kwargs


COUNTERS = ("underruns", "underrun_samples", "reanchors", "lag_frames", "lag_ms", "frames_out", "chunks_sent",
            "chunks_dropped", "audio_events", "interruptions", "refused_samples")


def zero_counters(*extra: str) -> dict[str, int]:
    """Every host's counters (and ``extra`` ones of its own) at zero, for ``_counters`` to add to."""
    return dict.fromkeys((*COUNTERS, *extra), 0)


class _Agent(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> Any: ...


A = TypeVar("A", bound=_Agent)


class Host:
    def __init__(self, session_kwargs: dict[str, Any] | None = None) -> None:
        self.session_kwargs = session_kwargs or {}
        self.sessions: list[BridgeSession] = []
        self.failed: dict[str, str] = {}
        self.lags: list[float] = []
        self.measuring = False
        self._probe = LoopLagProbe(0.02, self._on_lag)
        self._mark: dict[str, Any] = {}
        self.ffi = FfiCounter()  # touching FfiClient.instance loads the native library
        self.rss_idle = rss_mb()
        self._profile_dir = os.environ.get("BRIDGE_HOST_PROFILE")
        self._profiler: cProfile.Profile | None = None
        self._windows = 0

    async def start(self, cmd: dict[str, Any]) -> dict[str, Any]:
        engine = EngineSettings(api_key=cmd["engine"]["api_key"], agent_id=cmd["engine"]["agent_id"],
                                api_base=cmd["engine"]["api_base"])

        async def make(_room: str, token: str) -> BridgeSession:
            return BridgeSession(SessionConfig(room=RoomLinkConfig(cmd["livekit_url"], token, identity=AGENT),
                                               engine=engine, start_when="immediately", end_when_empty=False,
                                               **self.session_kwargs))

        self.sessions = await self.start_rooms(cmd, make)
        return {"started": len(self.sessions), "failed": self.failed, "rss_idle_mb": self.rss_idle,
                "rss_mb": rss_mb()}

    async def start_rooms(self, cmd: dict[str, Any], make: Callable[[str, str], Awaitable[A]]) -> list[A]:
        """One agent per room of ``cmd``: ``make(room, token)`` builds it, then it is started (at most
        ``cmd["concurrency"]`` at once, 60 s each); one that fails is stopped and its error kept in ``failed``.
        Then the loop-lag probe starts. Returns the agents that started."""
        gate = asyncio.Semaphore(int(cmd.get("concurrency", 8)))
        started: list[A] = []

        async def one(room: str) -> None:
            token = mint_token(cmd["api_key"], cmd["api_secret"], room=room, identity=AGENT, agent=True)
            agent: A | None = None
            async with gate:
                try:
                    async with asyncio.timeout(60):
                        agent = await make(room, token)
                        await agent.start()
                except Exception as exc:
                    self.failed[room] = f"{type(exc).__name__}: {exc}"
                    if agent is not None:
                        with contextlib.suppress(Exception):
                            await agent.stop()
                    return
            started.append(agent)

        await asyncio.gather(*(one(room) for room in cmd["rooms"]))
        self._probe.start()
        return started

    def _on_lag(self, lag_s: float) -> None:
        if self.measuring:
            self.lags.append(lag_s * 1000)

    def _counters(self) -> dict[str, int]:
        c = zero_counters()
        for s in self.sessions:
            stats = s.stats(stages=False)
            down = stats.downlink
            if down is not None:
                c["underruns"] += down.underruns
                c["underrun_samples"] += down.underrun_samples
                c["refused_samples"] += down.refused_samples
                c["reanchors"] += down.reanchors
                c["lag_frames"] += down.lag_frames
                c["lag_ms"] += down.lag_frames * s.config.downlink.frame_ms
            c["frames_out"] += stats.room.frames_out
            c["chunks_sent"] += stats.session.chunks_sent
            c["chunks_dropped"] += stats.session.chunks_dropped
            c["audio_events"] += stats.session.audio_events
            c["interruptions"] += len(s.interruptions)
        return c

    def measure_start(self) -> dict[str, Any]:
        self.lags.clear()
        self._mark = {"wall": time.monotonic_ns(), "cpu": time.process_time(), "threads": thread_cpu(),
                      "sched": main_thread_sched(),
                      "counters": self._counters(), "ffi_events": self.ffi.events, "ffi_scanned": self.ffi.scanned}
        self.measuring = True
        if self._profile_dir:  # called on the loop thread: the profiler hooks that thread only
            self._profiler = cProfile.Profile(time.thread_time)
            self._profiler.enable()
        return {}

    def measure_stop(self) -> dict[str, Any]:
        self.measuring = False
        if self._profiler is not None and self._profile_dir:
            self._profiler.disable()
            self._windows += 1
            Path(self._profile_dir).mkdir(parents=True, exist_ok=True)
            name = f"{Path(sys.argv[0]).stem}-{os.getpid()}-window-{self._windows}.prof"
            self._profiler.dump_stats(str(Path(self._profile_dir) / name))
            self._profiler = None
        mark = self._mark
        now = time.monotonic_ns()
        wall = (now - mark["wall"]) / 1e9
        threads = thread_cpu()
        run_ns, wait_ns = main_thread_sched()
        on_cpu, runnable = (run_ns - mark["sched"][0]) / 1e9 / wall, (wait_ns - mark["sched"][1]) / 1e9 / wall
        # What the loop thread did with the window: ran, waited for a CPU, or was blocked (GIL, locks, I/O wait).
        loop_thread = {"on_cpu": on_cpu, "runnable_waiting": runnable,
                       "blocked_or_idle": max(0.0, 1 - on_cpu - runnable)}
        by_thread = {k: v - mark["threads"].get(k, 0.0) for k, v in threads.items()}
        counters = self._counters()
        delta = {k: counters[k] - mark["counters"][k] for k in counters}
        interruptions = []
        for s in self.sessions:
            cid = s.engine.conversation_id if s.engine is not None else None
            for rec in s.interruptions:
                if mark["wall"] <= rec["recv_ns"] <= now:
                    interruptions.append([cid, rec["event_id"], rec["recv_ns"], rec["silenced_ns"]])
        states: dict[str, int] = {}
        for s in self.sessions:
            states[s.state.value] = states.get(s.state.value, 0) + 1
        return {"wall_s": wall, "cpu_s": time.process_time() - mark["cpu"],
                "thread_cpu_s": {k: round(v, 3) for k, v in sorted(by_thread.items(), key=lambda kv: -kv[1]) if v > 0},
                "loop_thread": loop_thread, "rss_mb": rss_mb(), "rss_idle_mb": self.rss_idle,
                "sessions": len(self.sessions),
                "session_states": states, "counters": delta, "lags_ms": self.lags[:],
                "interruptions": interruptions, "ffi_events": self.ffi.events - mark["ffi_events"],
                "ffi_subscriptions_scanned": self.ffi.scanned - mark["ffi_scanned"]}

    async def stop(self) -> dict[str, Any]:
        await self._probe.stop()
        await asyncio.gather(*(s.stop() for s in self.sessions), return_exceptions=True)
        return {}


async def serve_host(host: Host) -> None:
    """Answer the driver's JSON-line commands for ``host`` (this module's, or a reference's) until ``stop``."""

    async def handle(cmd: dict[str, Any]) -> dict[str, Any]:
        op = cmd.get("op")
        if op == "start":
            return await host.start(cmd)
        if op == "measure_start":
            return host.measure_start()
        if op == "measure_stop":
            return host.measure_stop()
        if op == "stop":
            return await host.stop()
        raise ValueError(f"unknown op {op!r}")

    await serve_json_lines(handle, ready={"event": "ready", "rss_idle_mb": host.rss_idle})


async def serve(what_if: list[str]) -> None:
    await serve_host(Host(apply_what_if(what_if)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--what-if", action="append", choices=WHAT_IF, default=[])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="bridge_host %(levelname)s %(message)s")
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 <pid>`: every thread's stack to the log
    run_loop(serve(args.what_if))


if __name__ == "__main__":
    main()
