"""``python -m benchmarks.soak [--sessions 20] [--minutes 10]``: many sessions for minutes, memory flat.

N bridge sessions run in this process, each in its own room. The outside world runs in a *peer* process
(``python -m benchmarks.soak --peer``, started here): the Speech Engine emulator, answering with speech-like
replies, and one caller per room. So this process's RSS is the bridge's alone; the emulator's recordings and
the callers' buffers grow in the peer, as they may.

Every caller talks in a loop: an utterance, the agent's reply starts, the caller barges in 0.3–0.8 s later
(an interruption), a pause. Every second this process's RSS, open descriptors, OS threads and asyncio tasks
are sampled; a Prometheus scrape of all sessions is timed at the end.

Pass/fail: RSS may grow while the allocators warm up; from the end of the first third of the run to the end
it must stay within ``--rss-bound-mib`` (the least-squares slope is reported too); every session must still be
running and have been interrupted; and after everything stops no task or Python thread is left over.

``--chaos-every S`` (``make soak SOAK_ARGS="--sessions 10 --minutes 20 --chaos-every 5"``) adds faults from the
fault matrix, one every ~S seconds (uniform 0.5–1.5 S) on a random room's conversation: socket dropped, engine
stalled 1–3 s, garbage / bad base64 / oversize (above the 2 MiB limit) messages, close 1011, close 1002 with
an error event; a room rests 15 s after each (the client's own cap ends a session after 5 lost conversations
in 60 s, as it should for a broken engine). They stop 20 s before the end; then every room must get at
least one reply to its caller (both directions heard after the last fault), besides everything above. The
peer reports each fault.

Run inside the private network namespace (``scripts/netns.sh exec .venv/bin/python -m benchmarks.soak``):
WebRTC needs an interface that is not ``lo``. Results go to ``benchmarks/results/soak.json``. The test suite
runs a short version (5 sessions for 30 s) through :func:`run_soak`.

The peer speaks JSON lines: it prints ``{"emulator": {...}}`` once its emulator listens; it reads one
``{"url", "rooms": [{"room", "identity", "token"}], "seconds", "seed"}`` line, talks for that long, prints
``{"stats": [...], "rss_mib": x}``, and exits when its stdin closes. Conversations are matched to rooms by
the ``user_id`` each session sends in its initiation data.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import random
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import RESULTS, ROOT, Progress, machine, run_loop, voice, write_json
from scripts.livekit_server import LiveKitServer, LiveKitServerError
from transport.config import RoomLinkConfig
from transport.engine_client import InitiationData
from transport.livekit_token import mint_token
from transport.metrics import BridgeMetrics
from transport.session import BridgeSession, EngineSettings, SessionConfig, SessionState

__all__ = ["SoakConfig", "SoakResult", "run_soak"]

AGENT = "soak-agent"
LOUD = 500


@dataclass(frozen=True)
class SoakConfig:
    sessions: int = 5
    seconds: float = 30.0
    rss_bound_mib: float = 10.0  # growth allowed after the first third of the run
    sample_every_s: float = 1.0
    seed: int = 7
    chaos_every_s: float | None = None  # random engine faults every ~this many seconds


@dataclass
class SoakResult:
    config: dict[str, Any]
    samples: list[dict[str, float]] = field(default_factory=list)  # t_s, rss_mib, fds, os_threads, tasks
    per_session: list[dict[str, Any]] = field(default_factory=list)
    rss_growth_mib: float = 0.0  # end minus the end of the first third
    rss_slope_mib_per_min: float = 0.0  # least squares over the last two thirds
    peer_rss_mib: float = 0.0
    faults: list[dict[str, Any]] = field(default_factory=list)  # chaos: what was injected, when, where
    scrape_ms: float = 0.0
    leftovers: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    passed: bool = False


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _usage() -> dict[str, float]:
    return {"rss_mib": round(_rss_mib(), 2), "fds": len(os.listdir("/proc/self/fd")),
            "os_threads": len(os.listdir("/proc/self/task")), "tasks": len(asyncio.all_tasks())}


def _python_threads() -> set[str]:
    return {t.name for t in threading.enumerate() if not isinstance(t, threading._DummyThread)}


# ------------------------------------------------------------------------------------------ the bridge side


async def run_soak(server: LiveKitServer, config: SoakConfig | None = None,
                   progress: Callable[[str], None] = lambda _m: None) -> SoakResult:
    config = config or SoakConfig()
    result = SoakResult(config=asdict(config))
    tasks_before = set(asyncio.all_tasks())
    threads_before = _python_threads()
    metrics = BridgeMetrics()
    sessions: list[BridgeSession] = []
    peer = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.soak", "--peer", cwd=ROOT, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, limit=2**24)
    assert peer.stdin is not None and peer.stdout is not None
    try:
        hello = json.loads(await asyncio.wait_for(peer.stdout.readline(), 30))["emulator"]
        rooms = []
        for i in range(config.sessions):
            room = f"soak-{os.getpid()}-{i}"
            engine = EngineSettings(api_key=hello["api_key"], agent_id=hello["agent_id"], api_base=hello["api_base"],
                                    init=InitiationData(user_id=room))
            token = mint_token(server.api_key, server.api_secret, room=room, identity=AGENT, agent=True)
            session = BridgeSession(SessionConfig(room=RoomLinkConfig(server.url, token, identity=AGENT),
                                                  engine=engine, start_when="immediately", end_when_empty=False))
            metrics.track(session)
            await session.start()
            sessions.append(session)
            identity = f"soak-caller-{i}"
            rooms.append({"room": room, "identity": identity,
                          "token": mint_token(server.api_key, server.api_secret, room=room, identity=identity)})
        progress(f"{config.sessions} sessions up; talking for {config.seconds:.0f} s")
        peer.stdin.write(json.dumps({"url": server.url, "rooms": rooms, "seconds": config.seconds,
                                     "seed": config.seed, "chaos_every_s": config.chaos_every_s}).encode() + b"\n")
        await peer.stdin.drain()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        answer = asyncio.ensure_future(peer.stdout.readline())
        while not answer.done():
            result.samples.append({"t_s": round(loop.time() - t0, 2), **_usage()})
            await asyncio.wait({answer}, timeout=config.sample_every_s)
        report = json.loads(answer.result() or b"{}")
        result.peer_rss_mib = report.get("rss_mib", 0.0)
        result.faults = report.get("faults", [])
        t = time.perf_counter()
        metrics.render()
        result.scrape_ms = round((time.perf_counter() - t) * 1000, 2)
        for i, (s, talk) in enumerate(zip(sessions, report.get("stats", []), strict=False)):
            m = s.metrics()
            result.per_session.append({
                "state": s.state.value, **talk, "interruptions": m["session"]["interruptions"],
                "reconnects": max(0, m["engine"].get("connects", 1) - 1),
                "underruns": m["downlink"].get("underruns", 0),
                "stale_chunks": m["protocol"].get("stale_audio_chunks", 0),
                "chunks_sent": m["session"]["chunks_sent"], "audio_events": m["session"]["audio_events"]})
            if s.state is not SessionState.RUNNING:
                result.errors.append(f"session {i} is {s.state.value}")
            if config.chaos_every_s and not talk.get("answered_after_faults"):
                result.errors.append(f"session {i}: no reply heard after the last fault (wedged)")
        if len(result.per_session) != config.sessions:
            result.errors.append(f"the peer reported {len(result.per_session)} of {config.sessions} rooms")
    finally:
        for s in sessions:
            await s.stop()
            metrics.untrack(s)
        peer.stdin.close()
        try:
            await asyncio.wait_for(peer.wait(), 30)
        except TimeoutError:
            peer.kill()
            await peer.wait()

    # Teardown finishes on its own schedule: the peer's "asyncio-waitpid-N" thread (asyncio's child watcher)
    # hands the exit status to the loop and only then ends, so it can still be alive when peer.wait() returns.
    # A leftover is what is still there after 10 s, not what is still finishing.
    for _ in range(50):
        left = [t for t in asyncio.all_tasks() - tasks_before if t is not asyncio.current_task() and not t.done()]
        new_threads = _python_threads() - threads_before
        if not left and not new_threads:
            break
        await asyncio.sleep(0.2)
    if left:
        result.leftovers.append(f"tasks: {sorted(t.get_name() for t in left)}")
    if new_threads:
        result.leftovers.append(f"python threads: {sorted(new_threads)}")
    gc.collect()
    later = [s for s in result.samples if s["t_s"] >= config.seconds / 3]
    if len(later) >= 2:
        result.rss_growth_mib = round(later[-1]["rss_mib"] - later[0]["rss_mib"], 2)
        slope = np.polyfit([s["t_s"] for s in later], [s["rss_mib"] for s in later], 1)[0]
        result.rss_slope_mib_per_min = round(float(slope) * 60, 3)
    for i, p in enumerate(result.per_session):
        if p["barge_ins"] and p["interruptions"] == 0:
            result.errors.append(f"session {i}: {p['barge_ins']} barge-ins, no interruption")
    result.passed = not result.errors and not result.leftovers and result.rss_growth_mib <= config.rss_bound_mib
    rss = [s["rss_mib"] for s in result.samples] or [0.0]
    progress(f"bridge RSS {rss[0]:.0f} → {rss[-1]:.0f} MiB (after the first third {result.rss_growth_mib:+.1f} MiB, "
             f"slope {result.rss_slope_mib_per_min:+.2f} MiB/min); peer {result.peer_rss_mib:.0f} MiB; "
             f"{sum(p['interruptions'] for p in result.per_session)} interruptions; "
             f"{'PASS' if result.passed else 'FAIL'}")
    return result


# ------------------------------------------------------------------------------------------ the peer


async def _peer() -> None:
    from emulator import Conversation, Emulator, EmulatorConfig
    from scripts.caller import Caller

    faults: list[dict[str, Any]] = []
    chaos_over = asyncio.Event()

    def current(emu: Emulator, room: str) -> Conversation | None:
        """The room's live conversation: a fault may have replaced the one it started with."""
        live = [c for c in emu.conversations if c.init is not None and c.init.user_id == room and not c.ended]
        return live[-1] if live else None

    async def chaos(emu: Emulator, rooms: list[str], every: float, until: float, rng: random.Random) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        kinds = ["drop", "stall", "garbage", "bad_base64", "oversize", "close_1011", "error_1002"]
        last: dict[str, float] = {}
        try:
            while True:
                await asyncio.sleep(rng.uniform(0.5 * every, 1.5 * every))
                if loop.time() >= until:
                    return
                # A room rests 15 s after a fault: the engine client gives up after 5 conversations lost
                # within 60 s (a broken engine, by design), and the soak is about recovering, not that cap.
                now = loop.time()
                ready = [r for r in rooms if now - last.get(r, -1e9) >= 15.0]
                if not ready:
                    continue
                room, kind = rng.choice(ready), rng.choice(kinds)
                last[room] = now
                conv = current(emu, room)
                if conv is None:
                    continue
                if kind == "drop":
                    conv.drop()
                elif kind == "stall":
                    conv.stall(rng.uniform(1.0, 3.0))
                elif kind == "close_1011":
                    conv.end(1011, "unknown_websocket_crash", "chaos")
                elif kind == "error_1002":
                    conv.end(1002, "llm_error", "chaos")
                else:
                    conv.inject(kind)  # type: ignore[arg-type]
                faults.append({"t_s": round(loop.time() - t0, 2), "room": room, "kind": kind})
        finally:
            chaos_over.set()

    async def talk(caller: Caller, room: str, emu: Emulator, deadline: float, rng: random.Random,
                   stats: dict[str, int]) -> None:
        loop = asyncio.get_running_loop()
        while loop.time() < deadline - 4.0:
            conversation = current(emu, room)
            if conversation is None:  # reconnecting after a fault
                await asyncio.sleep(0.2)
                continue
            after_faults = chaos_over.is_set()
            started = sum(1 for r in conversation.replies if r.start_ns is not None)

            def answered(n: int = started, conv: Conversation = conversation) -> bool:
                return sum(1 for r in conv.replies if r.start_ns is not None) > n

            caller.say(voice(0.6, rng.uniform(220.0, 480.0)))
            await caller.wait_said()
            stats["utterances"] += 1
            try:
                await conversation.wait_for(answered, 8.0)
            except TimeoutError:
                stats["unanswered"] += 1
                continue
            if after_faults:
                stats["answered_after_faults"] += 1
            await asyncio.sleep(rng.uniform(0.3, 0.8))  # the agent is talking
            caller.say(voice(0.5, rng.uniform(220.0, 480.0)))  # barge in
            await caller.wait_said()
            stats["barge_ins"] += 1
            await asyncio.sleep(rng.uniform(0.8, 1.5))

    reader = asyncio.StreamReader(limit=2**24)
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    config = EmulatorConfig(reply_mode="speech", speech_ms=3000.0, think_time_ms=150.0, vad_hangover_ms=300.0,
                            ping_interval_s=3.0, idle_timeout_s=None, record_text=False, seed=7)
    async with Emulator(config) as emu:
        print(json.dumps({"emulator": {"api_base": emu.rest_base_url, "api_key": emu.api_key,
                                       "agent_id": config.agent_id}}), flush=True)
        order = json.loads(await reader.readline())
        rng = random.Random(order["seed"])
        # Counts what they hear instead of keeping it (a 10 minute soak would keep gigabytes).
        callers = [Caller(order["url"], r["token"], identity=r["identity"], keep_audio=False) for r in order["rooms"]]
        stats = [{"utterances": 0, "barge_ins": 0, "unanswered": 0, "answered_after_faults": 0} for _ in callers]
        try:
            for c in callers:
                await c.start()
            rooms = [r["room"] for r in order["rooms"]]
            async with asyncio.timeout(30):
                while len({c.init.user_id for c in emu.conversations if c.init}) < len(rooms):
                    await asyncio.sleep(0.05)
            deadline = loop.time() + order["seconds"]
            every = order.get("chaos_every_s")
            chaos_task = (asyncio.ensure_future(chaos(emu, rooms, every, deadline - 20.0, random.Random(rng.random())))
                          if every else None)
            if chaos_task is None:
                chaos_over.set()
            await asyncio.gather(*(talk(c, room, emu, deadline, random.Random(rng.random()), s)
                                   for c, room, s in zip(callers, rooms, stats, strict=True)))
            if chaos_task is not None:
                await chaos_task
            await asyncio.sleep(max(0.0, deadline - loop.time()))
            for c, s in zip(callers, stats, strict=True):
                s["frames_heard"] = c.frames_heard
                s["loud_frames_heard"] = sum(p > LOUD for h in c.heard.values() for p in h.peaks)
            print(json.dumps({"stats": stats, "rss_mib": round(_rss_mib(), 1), "faults": faults}), flush=True)
            await reader.read()  # until the bridge side closes our stdin
        finally:
            for c in callers:
                with contextlib.suppress(Exception):
                    await c.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rss-bound-mib", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "soak.json")
    parser.add_argument("--chaos-every", type=float, default=None, metavar="S",
                        help="inject a random engine fault every ~S seconds (stops 20 s before the end)")
    parser.add_argument("--peer", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.peer:
        run_loop(_peer())
        return 0
    config = SoakConfig(sessions=args.sessions, seconds=args.minutes * 60, rss_bound_mib=args.rss_bound_mib,
                        chaos_every_s=args.chaos_every)
    progress = Progress("soak")

    async def go() -> SoakResult:
        with LiveKitServer(log_dir=Path(tempfile.mkdtemp(prefix="soak-lk-"))) as server:
            return await run_soak(server, config, progress)

    try:
        result = run_loop(go())
    except LiveKitServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    write_json(args.out, {"machine": machine(), **asdict(result)})
    print(f"soak: {config.sessions} sessions × {args.minutes:g} min: bridge RSS growth {result.rss_growth_mib:+.1f} "
          f"MiB after the first third (bound {config.rss_bound_mib:g}), slope {result.rss_slope_mib_per_min:+.2f} "
          f"MiB/min, scrape {result.scrape_ms:.1f} ms, {len(result.faults)} faults injected, "
          f"leftovers {result.leftovers or 'none'}, errors {result.errors or 'none'}, "
          f"{'PASS' if result.passed else 'FAIL'} → {args.out}")
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
