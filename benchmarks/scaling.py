"""Scaling: N sessions (rooms) in one bridge process, each with one synthetic caller, N stepped up until it
breaks or the time budget is spent.

Four kinds of process per step, so that the one measured holds the bridge only:

- :mod:`benchmarks.bridge_host` (measured): N :class:`~transport.session.BridgeSession`, as ``runner.py``
  would run them, plus an event-loop lag probe.
- :mod:`benchmarks.emulator_host`: the emulator, scripting every conversation: 3 s replies sent 4× faster
  than real time, 70 % of them interrupted 0.5–2 s into playback, with 0.3–1.5 s pauses between.
- :mod:`benchmarks.caller_host` (one per ``callers_per_host`` callers): the callers publish quiet noise
  (-60 dBFS, under the emulator's VAD threshold, so only the script decides turns) and do not subscribe to
  the agent (no decode in the load generator; the bridge still encodes and sends). They hand their source
  100 ms at a time: the bridge still gets 20 ms frames from its AudioStream, and the load generator makes
  fewer FFI calls, whose cost in ``livekit.rtc`` grows with the rooms in the process (see the report).
- the shared livekit-server.

Per step, over a ``window_s`` measurement window after ``warmup_s``: the bridge process's CPU (all threads,
as cores), RSS per session ((RSS − RSS before any session) / N), playout underruns and pacer re-anchors,
event-loop lag, interruption-to-silence at the bridge output (the emulator's send time of each
``interruption`` → the session's flush, joined on conversation id and event id), and, to show where the
machine is the limit, the CPU of the other processes and of the whole machine over the same window.

Three references at each N, right after ours, each with fresh callers and the same probes, each with the
ratios ours ÷ it:

- ``step["floor"]``, :mod:`benchmarks.null_host`: join, read every caller frame at the rate and frame
  length ours reads, publish a paced tone; no engine, none of our logic. What no agent goes below.
- ``step["conversation_floor"]``, ``null_host --conversation``: the same, plus an engine conversation per
  room (every caller frame sent as a ``user_audio_chunk``, every message read and its audio decoded). What
  no *bridge* goes below; ours minus it is our own logic, it minus the floor is the conversation's cost.
- ``step["naive"]``, :mod:`benchmarks.naive_host`: the naive bridge (each caller frame sent, each engine
  chunk captured whole as it arrives): cheaper in captures, a second late on barge-in.
All three run with ours' voice frame (``DownlinkConfig().frame_ms``, 20 ms). Then, at ``frame_study_n``, ours
with 10/40 ms voice frames (what-ifs ``frame10``/``frame40``) and the floor with the same capture lengths
(``frame_study``).

A step is *broken* when sessions fail to start, a session ends, or the bridge's event-loop lag p99
exceeds ``break_lag_p99_ms`` (audio can no longer be paced: the 40 ms lead rides out 20 ms); the next N is
not tried after a broken step. "Underruns" are counted twice over: ``underruns`` is the playout buffer
running dry mid-reply (the engine's audio came too late), ``pacer_lag_ms`` the AudioSource running dry
while the buffer had audio (the loop came too late); both are gaps the listener hears.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import Progress, summarize
from benchmarks.procs import JsonLinesProcess
from core.downlink import DownlinkConfig
from scripts.livekit_server import LiveKitServer
from transport.livekit_token import mint_token

__all__ = ["ScalingConfig", "run"]

_TICKS = os.sysconf("SC_CLK_TCK")
VOICE_FRAME_MS = DownlinkConfig().frame_ms  # ours' voice frame by default, and so the references'


@dataclass(frozen=True)
class ScalingConfig:
    # The 1, 10, 50, 100, 200, with steps between 10 and 50 where this 2-core machine gives out.
    steps: tuple[int, ...] = (1, 10, 15, 20, 25, 50, 100, 200)
    warmup_s: float = 5.0
    window_s: float = 20.0
    callers_per_host: int = 25
    caller_frame_ms: int = 100
    break_lag_p99_ms: float = 100.0
    time_budget_s: float = 540.0
    seed: int = 8
    what_if: tuple[str, ...] = ()  # see benchmarks.bridge_host.apply_what_if
    # The null-bridge floor (benchmarks.null_host) at every N, right after ours, with fresh callers. It reads
    # the callers as a session on a pcm_16000 conversation does (16 kHz, 10 ms frames: RoomLinkConfig).
    floor: bool = True
    floor_caller_rate: int = 16_000
    floor_caller_frame_ms: int = 10
    # The floor again with an engine conversation per room (null_host --conversation).
    conversation_floor: bool = True
    # The naive bridge (benchmarks.naive_host) at every N too: the engine conversation done simply.
    naive: bool = True
    # At this N, ours and the floor again with other voice capture frames (ours: what-if frame10 / frame40).
    frame_study_n: int | None = 5
    frame_study_ms: tuple[int, ...] = (10, 40)
    # Bridge processes per step (ours and the floor alike): the N rooms are dealt over them round-robin, as
    # LiveKit's dispatcher spreads rooms over ``runner.py --worker --processes P``. CPU, RSS, sessions and
    # counters are summed over the processes; the loop lag is every process's samples together, with each
    # process's p99 beside it.
    processes: int = 1


def _proc_cpu_s(pid: int) -> float | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / _TICKS  # incl. children


def _machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies over all CPUs since boot."""
    parts = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in parts[:8]]
    idle = values[3] + values[4]
    return float(sum(values) - idle), float(sum(values))


async def _step(server: LiveKitServer, n: int, cfg: ScalingConfig, progress: Progress,
                log_dir: Path | None, *, kind: str = "ours", capture_ms: int = VOICE_FRAME_MS,
                what_if: tuple[str, ...] | None = None) -> dict[str, Any]:
    """One N: ``kind`` "ours" (benchmarks.bridge_host), "null" (benchmarks.null_host, the floor),
    "conversation" (null_host --conversation) or "naive" (benchmarks.naive_host)."""
    tag = uuid.uuid4().hex[:6]
    t_setup = time.monotonic()
    what_if = cfg.what_if if what_if is None else what_if
    result: dict[str, Any] = {"n": n, "kind": kind, "capture_ms": capture_ms, "what_if": list(what_if),
                              "broken": False, "why": []}
    emu = JsonLinesProcess("benchmarks.emulator_host", "--seed", str(cfg.seed + n),
                           log_path=log_dir / "emulator_host.log" if log_dir else None)
    processes = max(1, min(cfg.processes, n))
    if kind in ("null", "conversation"):
        bridges = [JsonLinesProcess("benchmarks.null_host", "--capture-ms", str(capture_ms),
                                    "--caller-rate", str(cfg.floor_caller_rate),
                                    "--caller-frame-ms", str(cfg.floor_caller_frame_ms),
                                    *(("--conversation",) if kind == "conversation" else ()),
                                    log_path=log_dir / "null_host.log" if log_dir else None)
                   for _ in range(processes)]
    elif kind == "naive":
        bridges = [JsonLinesProcess("benchmarks.naive_host", log_path=log_dir / "naive_host.log" if log_dir else None)
                   for _ in range(processes)]
    else:
        bridges = [JsonLinesProcess("benchmarks.bridge_host", *(a for w in what_if for a in ("--what-if", w)),
                                    log_path=log_dir / "bridge_host.log" if log_dir else None)
                   for _ in range(processes)]
    hosts = [JsonLinesProcess("benchmarks.caller_host", log_path=log_dir / "caller_host.log" if log_dir else None)
             for _ in range(math.ceil(n / cfg.callers_per_host))]
    result["processes"] = processes
    try:
        await asyncio.gather(emu.start(), *(b.start() for b in bridges), *(h.start() for h in hosts))
        ready = await emu.next_event(30)
        bridge_ready = [await b.next_event(60) for b in bridges]
        result["rss_idle_mb"] = sum(r["rss_idle_mb"] for r in bridge_ready)
        rooms = [f"scale-{tag}-{i}" for i in range(n)]
        what = {"null": "null-bridge rooms", "conversation": "null-bridge rooms with a conversation",
                "naive": "naive bridges"}.get(kind, "bridge sessions")
        progress(f"N={n}: starting {n} {what}"
                 f" ({'+'.join(what_if) if what_if else capture_ms} ms capture)"
                 + (f" in {processes} processes" if processes > 1 else ""))
        engine = {"api_base": ready["rest"], "api_key": ready["api_key"], "agent_id": ready["agent_id"]}
        starts = await asyncio.gather(*(
            b.call("start", timeout=120 + 2 * n, livekit_url=server.url, api_key=server.api_key,
                   api_secret=server.api_secret, rooms=rooms[k::processes], concurrency=8, engine=engine)
            for k, b in enumerate(bridges)))
        started = {"started": sum(s["started"] for s in starts),
                   "failed": {k: v for s in starts for k, v in s["failed"].items()}}
        result["started"] = started["started"]
        result["start_failures"] = started["failed"]
        if started["failed"]:
            result["broken"] = True
            result["why"].append(f"{len(started['failed'])} sessions failed to start")
        await emu.call("activity", on=True)
        progress(f"N={n}: {started['started']} sessions up; joining {n} callers in {len(hosts)} process(es)")
        joins = []
        for k, host in enumerate(hosts):
            mine = rooms[k * cfg.callers_per_host:(k + 1) * cfg.callers_per_host]
            specs = [{"name": f"caller-{room}", "url": server.url, "listen": False, "keep_audio": False,
                      "token": mint_token(server.api_key, server.api_secret, room=room, identity=f"caller-{room}"),
                      "frame_ms": cfg.caller_frame_ms, "lead": 2, "idle_dbfs": -60.0} for room in mine]
            joins.append(host.call("join", timeout=120 + 2 * len(mine), callers=specs, concurrency=4))
        joined = await asyncio.gather(*joins)
        failed_callers = {k: v for j in joined for k, v in j["failed"].items()}
        result["callers_joined"] = sum(len(j["joined"]) for j in joined)
        if failed_callers:
            result["broken"] = True
            result["why"].append(f"{len(failed_callers)} callers failed to join")
            result["caller_failures"] = dict(list(failed_callers.items())[:5])
        result["setup_s"] = time.monotonic() - t_setup
        progress(f"N={n}: {result['callers_joined']} callers in ({result['setup_s']:.0f} s); "
                 f"warm-up {cfg.warmup_s:.0f} s, then measuring {cfg.window_s:.0f} s")
        await asyncio.sleep(cfg.warmup_s)

        server_pid = getattr(getattr(server, "_proc", None), "pid", None)
        pids = {"server": server_pid, "emulator": emu.pid, **{f"callers{k}": h.pid for k, h in enumerate(hosts)}}
        cpu0 = {k: _proc_cpu_s(p) for k, p in pids.items() if p is not None}
        busy0, total0 = _machine_busy()
        await asyncio.gather(*(b.call("measure_start") for b in bridges))
        for host in hosts:
            await host.call("stats", reset=True)
        await asyncio.sleep(cfg.window_s)
        measured = _merge(await asyncio.gather(*(b.call("measure_stop", timeout=60) for b in bridges)))
        busy1, total1 = _machine_busy()
        cpu1 = {k: _proc_cpu_s(p) for k, p in pids.items() if p is not None}
        report = await emu.call("report", timeout=60)
        caller_stats = [await h.call("stats") for h in hosts]
        wall = measured["wall_s"]
        result.update(_digest(measured, report, n))
        result["other_processes_cores"] = {k: (cpu1[k] - v) / wall for k, v in cpu0.items()
                                           if v is not None and cpu1.get(k) is not None}
        cores = os.cpu_count() or 1
        result["machine_busy"] = (busy1 - busy0) / max(1.0, total1 - total0)  # 1.0 = every core busy
        result["machine_cores"] = cores
        result["caller_hosts"] = [{k: c[k] for k in ("cpu_s", "lag_p50_ms", "lag_p99_ms", "callers",
                                                     "pacer_reanchors")} for c in caller_stats]
        lag_p99 = result["loop_lag_ms"]["p99"]
        if lag_p99 is not None and lag_p99 > cfg.break_lag_p99_ms:
            result["broken"] = True
            result["why"].append(f"event-loop lag p99 {lag_p99:.0f} ms > {cfg.break_lag_p99_ms:.0f} ms")
        states = measured["session_states"]
        if set(states) - {"running"}:
            result["broken"] = True
            result["why"].append(f"sessions not running: {states}")
        return result
    except Exception as exc:
        result["broken"] = True
        result["why"].append(f"{type(exc).__name__}: {exc}")
        return result
    finally:
        with contextlib.suppress(Exception):
            await emu.call("activity", on=False, timeout=10)
        await asyncio.gather(*(h.close(timeout=60) for h in hosts), return_exceptions=True)
        await asyncio.gather(*(b.close(timeout=60) for b in bridges), return_exceptions=True)
        await asyncio.gather(emu.close(timeout=30), return_exceptions=True)
        result["step_s"] = time.monotonic() - t_setup


def _merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The bridge processes' ``measure_stop`` figures as one: sums, the loop lags together, and each
    process's lag p99 in ``lag_p99_by_process_ms``."""
    if len(parts) == 1:
        return parts[0]
    merged: dict[str, Any] = {"wall_s": max(p["wall_s"] for p in parts)}
    for key in ("cpu_s", "rss_mb", "rss_idle_mb", "sessions", "ffi_events", "ffi_subscriptions_scanned"):
        merged[key] = sum(p[key] for p in parts)
    for key in ("thread_cpu_s", "session_states", "counters"):
        total: dict[str, float] = {}
        for p in parts:
            for name, value in p[key].items():
                total[name] = total.get(name, 0) + value
        merged[key] = total
    merged["loop_thread"] = {k: sum(p["loop_thread"][k] for p in parts) / len(parts) for k in parts[0]["loop_thread"]}
    merged["lags_ms"] = [lag for p in parts for lag in p["lags_ms"]]
    merged["lag_p99_by_process_ms"] = [summarize(p["lags_ms"])["p99"] for p in parts]
    merged["interruptions"] = [i for p in parts for i in p["interruptions"]]
    return merged


def _digest(measured: dict[str, Any], report: dict[str, Any], n: int) -> dict[str, Any]:
    wall = measured["wall_s"]
    sent = {(cid, int(eid)): ns for cid, pairs in report["interruptions"].items() for eid, ns in pairs}
    bridge_ms, flush_ms, unmatched = [], [], 0
    for cid, eid, recv_ns, silenced_ns in measured["interruptions"]:
        flush_ms.append((silenced_ns - recv_ns) / 1e6)
        t_sent = sent.get((cid, int(eid)))
        if t_sent is None:
            unmatched += 1
            continue
        bridge_ms.append((silenced_ns - t_sent) / 1e6)
    counters = measured["counters"]
    sessions = max(1, measured["sessions"])
    minutes = wall / 60
    return {
        "window_s": wall,
        "sessions": measured["sessions"],
        "session_states": measured["session_states"],
        "cpu_cores": measured["cpu_s"] / wall,
        "cpu_ms_per_session_second": measured["cpu_s"] * 1000 / wall / sessions,
        "thread_cores": {k: v / wall for k, v in measured["thread_cpu_s"].items()},
        "loop_thread": measured["loop_thread"],
        "rss_mb": measured["rss_mb"],
        "rss_per_session_mb": (measured["rss_mb"] - measured["rss_idle_mb"]) / sessions,
        "loop_lag_ms": summarize(measured["lags_ms"]),
        "lags_ms": measured["lags_ms"],
        "underruns": counters["underruns"],
        "underruns_per_session_minute": counters["underruns"] / sessions / minutes,
        "underrun_ms": counters["underrun_samples"] / 48.0,
        # The pacer re-anchors when the AudioSource ran dry while we had audio for it (the loop was late by
        # more than the lead): the listener heard a gap of lag_frames × the frame length that PlayoutBuffer's
        # underrun counter (its own buffer empty mid-reply) does not see.
        "pacer_reanchors": counters["reanchors"],
        "pacer_lag_ms": counters["lag_ms"],
        "source_starved_ms_per_session_minute": counters["lag_ms"] / sessions / minutes,
        "counters": counters,
        "interruption_bridge_ms": summarize(bridge_ms),
        "interruption_flush_ms": summarize(flush_ms),
        "interruption_samples_ms": bridge_ms,
        "interruptions_unmatched": unmatched,
        "ffi_events_per_s": measured["ffi_events"] / wall,
        "ffi_subscriptions_scanned_per_event": measured["ffi_subscriptions_scanned"] / max(1, measured["ffi_events"]),
        "emulator_replies": sum(report["replies"].values()),
        "lag_p99_by_process_ms": measured.get("lag_p99_by_process_ms"),  # None with one process
    }


def _brief(step: dict[str, Any]) -> str:
    lag = step.get("loop_lag_ms", {})
    intr = step.get("interruption_bridge_ms", {})
    return (f"CPU {step.get('cpu_cores', float('nan')):.2f} cores, "
            f"RSS/session {step.get('rss_per_session_mb', float('nan')):.2f} MB, "
            f"lag p99 {lag.get('p99') or float('nan'):.1f} ms, underruns {step.get('underruns', '-')}, "
            f"interruption p99 {intr.get('p99') or float('nan'):.2f} ms (n={intr.get('n', 0)}), "
            f"machine busy {step.get('machine_busy', float('nan')):.0%}"
            + (f" — BROKEN: {'; '.join(step['why'])}" if step["broken"] else ""))


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _versus(ours: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    """Ours beside a reference (a floor, the naive bridge) at the same N: CPU, RSS, loop lag, the ratios."""
    return {
        "cpu_cores": ref.get("cpu_cores"),
        "cpu_ms_per_session_second": ref.get("cpu_ms_per_session_second"),
        "rss_mb": ref.get("rss_mb"),
        "rss_per_session_mb": ref.get("rss_per_session_mb"),
        "loop_lag_ms": ref.get("loop_lag_ms"),
        "machine_busy": ref.get("machine_busy"),
        "thread_cores": ref.get("thread_cores"),
        "ffi_events_per_s": ref.get("ffi_events_per_s"),
        "broken": ref.get("broken"), "why": ref.get("why"),
        "interruption_bridge_ms": ref.get("interruption_bridge_ms"),
        "cpu_ratio": _ratio(ours.get("cpu_cores"), ref.get("cpu_cores")),
        "rss_ratio": _ratio(ours.get("rss_mb"), ref.get("rss_mb")),
        "lag_p99_ratio": _ratio(ours.get("loop_lag_ms", {}).get("p99"), ref.get("loop_lag_ms", {}).get("p99")),
    }


async def run(server: LiveKitServer, cfg: ScalingConfig, progress: Progress, *,
              log_dir: Path | None = None) -> dict[str, Any]:
    t0 = time.monotonic()
    steps: list[dict[str, Any]] = []
    skipped: list[int] = []
    for n in cfg.steps:
        if steps and steps[-1]["broken"]:
            skipped.append(n)
            continue
        if time.monotonic() - t0 > cfg.time_budget_s:
            progress(f"time budget of {cfg.time_budget_s:.0f} s spent: N={n} not tried")
            skipped.append(n)
            continue
        step = await _step(server, n, cfg, progress, log_dir)
        steps.append(step)
        progress(f"N={n} ours: {_brief(step)}")
        await asyncio.sleep(2.0)  # let the server close the step's rooms
        for enabled, kind, key, label in ((cfg.floor, "null", "floor", "null floor"),
                                          (cfg.conversation_floor, "conversation", "conversation_floor",
                                           "floor with a conversation"),
                                          (cfg.naive, "naive", "naive", "naive bridge")):
            if enabled:
                ref = await _step(server, n, cfg, progress, log_dir, kind=kind)
                step[key] = _versus(step, ref)
                progress(f"N={n} {label}: {_brief(ref)}; ours/it CPU {step[key]['cpu_ratio'] or 0:.2f}x")
                await asyncio.sleep(2.0)
    frame_study: list[dict[str, Any]] = []
    if cfg.frame_study_n:
        n = cfg.frame_study_n
        for ms in cfg.frame_study_ms:
            for kind in ("ours", "null"):
                what_if = (f"frame{ms}",) if kind == "ours" else ()
                step = await _step(server, n, cfg, progress, log_dir, kind=kind, capture_ms=ms, what_if=what_if)
                progress(f"N={n} {kind} {ms} ms capture: {_brief(step)}")
                frame_study.append({k: v for k, v in step.items() if k not in ("lags_ms", "interruption_samples_ms")})
                await asyncio.sleep(2.0)
    # Broken steps pile up backlogs (queued events, audio) in memory: fit the healthy ones only.
    usable = [s for s in steps if not s["broken"] and s.get("sessions") and s.get("rss_mb") is not None]
    slope = None
    if len({s["sessions"] for s in usable}) >= 2:
        # Least squares of RSS against sessions: the memory an extra session costs, first-session costs aside.
        slope = float(np.polyfit([s["sessions"] for s in usable], [s["rss_mb"] for s in usable], 1)[0])
    return {"config": asdict(cfg), "steps": steps, "skipped": skipped, "rss_per_extra_session_mb": slope,
            "max_unbroken_n": max((s["n"] for s in steps if not s["broken"]), default=0),
            "frame_study": frame_study}
