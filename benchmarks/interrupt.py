"""Interruption to silence: ours against the naive bridge, same emulator, same run.

Each trial: the emulator starts a 6 s reply (a continuous voice, so "silent" can only mean "stopped") and
sends it 4× faster than real time in 100 ms chunks; after a random 0.5–2 s of playback (counted from the
reply's first chunk on the wire) it interrupts, either through the ``Conversation.interrupt()`` hook (clean
timing) or because the room's caller really talks over the agent (the emulator's VAD detects it and barges
in). Trials alternate which bridge goes first.

What is measured, from ``t_int``: when the emulator wrote the ``interruption`` message to its socket
(``time.monotonic_ns()``, loopback, the same clock as everything else):

- **Bridge output** (``bridge_ms``): until the ``AudioSource`` neither holds nor is handed any more of the
  interrupted reply: the first ``clear_queue()`` after ``t_int``, or the last non-silent capture after that
  clear if one came (none ever should). For ours that is the flush inside the reader callback; for the naive
  bridge it is when its loop gets to the message, behind the audio queued in its socket.
  ``bridge_from_read_ms`` is the same end point from when the bridge's code read the message off the socket
  (ours: the engine client's receive time, the figure the issue names); ``last_voice_ms`` is the last
  non-silent capture before that clear (≤ 0: none after the interruption).
- **Remote subscriber** (``remote_ms``): until the caller's received audio stays silent: the arrival of the
  first quiet 10 ms frame (peak ≤ LOUD_REMOTE) after the last loud one; the window runs at least 0.6 s past
  the bridge's silence and stops before any next reply. That adds the native queue tick, Opus packetisation,
  the SFU, the caller's jitter buffer and its 10 ms playout pull to the bridge figure.
"""

from __future__ import annotations

import asyncio
import bisect
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    LOUD_BRIDGE,
    LOUD_REMOTE,
    RATE,
    Progress,
    ms,
    per_bridge_total,
    summarize,
    versus,
    voice,
)
from benchmarks.rig import Rig, Side, loud_after
from emulator import EmulatorConfig, Reply
from emulator.signals import resample
from scripts.livekit_server import LiveKitServer

__all__ = ["InterruptConfig", "bridge_silence", "remote_silence", "run"]

FRAME_NS = 10_000_000


@dataclass(frozen=True)
class InterruptConfig:
    trials: int = 50  # hook-triggered, per bridge
    speech_trials: int = 5  # barge-in by the caller's real speech, per bridge
    reply_ms: int = 6000
    min_delay_s: float = 0.5
    max_delay_s: float = 2.0
    burst_factor: float = 4.0
    chunk_ms: float = 100.0
    think_time_ms: float = 4500.0  # the echo after a spoken barge-in starts well after the window
    settle_s: float = 0.6
    seed: int = 6


def bridge_silence(t_ref: int, captures: list[tuple[int, int, int]], clears: list[int], window_end: int,
                   loud: int = LOUD_BRIDGE) -> dict[str, Any]:
    """When the bridge output went silent after ``t_ref``: see the module docstring."""
    c_idx = bisect.bisect_left(clears, t_ref)
    clear = clears[c_idx] if c_idx < len(clears) and clears[c_idx] < window_end else None
    times = [c[0] for c in captures]
    lo = bisect.bisect_left(times, t_ref - 10**9)
    hi = bisect.bisect_left(times, window_end)
    loud_caps = [c for c in captures[lo:hi] if c[1] > loud]
    if clear is None:
        after = [c for c in loud_caps if c[0] >= t_ref]
        silent = (after[-1][0] + after[-1][2] * 1_000_000_000 // RATE) if after else t_ref
        return {"silent_ns": silent, "clear_ns": None, "last_voice_ns": after[-1][0] if after else None,
                "late_voice_captures": len(after)}
    before = [c for c in loud_caps if c[0] < clear]
    late = [c for c in loud_caps if c[0] >= clear]
    silent = late[-1][0] if late else clear
    return {"silent_ns": silent, "clear_ns": clear, "last_voice_ns": before[-1][0] if before else None,
            "late_voice_captures": len(late)}


def remote_silence(t_ref: int, times: np.ndarray, peaks: np.ndarray, window_end: int,
                   loud: int = LOUD_REMOTE) -> dict[str, Any]:
    """When the remote caller's audio went quiet for good (within the window) after ``t_ref``."""
    inside = (times >= t_ref) & (times < window_end)
    idx = np.flatnonzero(inside & (peaks > loud))
    if idx.size == 0:
        return {"silent_ns": t_ref, "loud_after_ref": 0, "window_ns": int(window_end - t_ref)}
    j = int(idx[-1])
    silent = int(times[j + 1]) if j + 1 < times.size and times[j + 1] < window_end else int(times[j]) + FRAME_NS
    return {"silent_ns": silent, "loud_after_ref": int(idx.size), "window_ns": int(window_end - silent)}


def _reply_voice(ms_: int, rate: int) -> np.ndarray:
    # 220 Hz harmonic voice with a 3 Hz envelope that never drops below 0.2: loud in every 10 ms frame.
    return resample(voice(ms_ / 1000, 220.0, level=0.35), RATE, rate)


async def _wait(predicate: Any, timeout: float, interval: float = 0.005) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(interval)


async def _trial(rig: Rig, side: Side, cfg: InterruptConfig, rng: random.Random, mode: str,
                 samples: np.ndarray) -> dict[str, Any]:
    conv = side.conversation
    reply: Reply = conv.trigger_reply(samples=samples)
    await conv.wait_for(lambda: reply.start_ns is not None, 5)
    assert reply.start_ns is not None
    delay = rng.uniform(cfg.min_delay_s, cfg.max_delay_s)
    await asyncio.sleep(max(0.0, (reply.start_ns + int(delay * 1e9) - time.monotonic_ns()) / 1e9))
    spoke_ns = None
    if mode == "hook":
        if not conv.interrupt():
            raise RuntimeError("the emulator had no reply playing to interrupt")
    else:
        await rig.say(side, 0.6, 250.0)
        await conv.wait_for(lambda: reply.interrupted_ns is not None, 5)
        spoke_ns = (await rig.spoken(side))[-1]
    await conv.wait_for(lambda: any(r.ns >= reply.start_ns for r in conv.sent("interruption")), 5)
    t_int = next(r.ns for r in conv.sent("interruption") if r.ns >= reply.start_ns)
    # The bridge has gone silent once it cleared its source after t_int.
    await _wait(lambda: any(c >= t_int for c in side.clears), 15)
    await asyncio.sleep(cfg.settle_s)
    now = time.monotonic_ns()
    later = [r for r in conv.replies if r.trigger_ns > reply.trigger_ns]
    window_end = min([now] + [r.trigger_ns for r in later])
    bridge = bridge_silence(t_int, side.captures, side.clears, window_end)
    times, peaks, _ = await rig.heard(side, reply.start_ns - 200_000_000, window_end)
    remote = remote_silence(t_int, times, peaks, window_end)
    heard_reply = loud_after(times, peaks, reply.start_ns) is not None
    read_ns = side.interruption_read_ns(t_int)
    # The room's own delay at the start of this reply: first loud sample handed to the AudioSource → first loud
    # frame at the caller (Opus, SFU, the caller's jitter buffer). The remote figure is roughly the bridge's
    # silence plus this delay as it stands at the interruption (the jitter buffer may have grown meanwhile).
    first_cap = next((c[0] for c in side.captures if c[0] >= reply.start_ns and c[1] > LOUD_BRIDGE), None)
    first_heard = loud_after(times, peaks, reply.start_ns)
    pipeline_start = (int(times[first_heard]) - first_cap) if first_cap is not None and first_heard is not None \
        else None
    backlog = sum(1 for t, _ in side.audio_events if t >= t_int)
    trial = {
        "bridge": side.name, "mode": mode, "delay_s": delay, "t_int_ns": t_int, "reply_start_ns": reply.start_ns,
        "interruption_read_ns": read_ns, "spoke_ns": spoke_ns,
        "bridge_ms": ms(bridge["silent_ns"] - t_int),
        "bridge_from_read_ms": ms(bridge["silent_ns"] - read_ns) if read_ns is not None else None,
        "read_delay_ms": ms(read_ns - t_int) if read_ns is not None else None,
        "last_voice_ms": ms(bridge["last_voice_ns"] - t_int) if bridge["last_voice_ns"] is not None else None,
        "late_voice_captures": bridge["late_voice_captures"],
        "remote_ms": ms(remote["silent_ns"] - t_int),
        "room_delay_at_start_ms": ms(pipeline_start) if pipeline_start is not None else None,
        "room_delay_at_end_ms": ms(remote["silent_ns"] - bridge["silent_ns"]),
        "remote_window_after_ms": ms(remote["window_ns"]),
        "remote_heard_reply": heard_reply,
        "audio_events_read_after_interruption": backlog,
        "reply_sent_ms": ms(reply.samples_sent * 1e9 / reply.rate),
        "speech_to_interruption_ms": ms(t_int - spoke_ns) if spoke_ns is not None else None,
    }
    if side.session is not None:
        rec = next((i for i in side.session.interruptions if i["recv_ns"] >= t_int), None)
        if rec is not None:
            trial["dropped_ms"] = rec["dropped_samples"] / 48.0
            trial["session_flush_ms"] = ms(rec["silenced_ns"] - rec["recv_ns"])
    # Let the rest of a spoken turn (its echo, after the think time) play out before the next trial.
    if later or mode == "speech":
        async with asyncio.timeout(cfg.think_time_ms / 1000 + 10):
            while True:
                nxt = [r for r in conv.replies if r.trigger_ns > reply.trigger_ns]
                if nxt and nxt[-1].start_ns is not None:
                    end = nxt[-1].start_ns + nxt[-1].duration_ns
                    await asyncio.sleep(max(0.0, (end - time.monotonic_ns()) / 1e9) + 0.4)
                    break
                await asyncio.sleep(0.05)
    return trial


async def run(server: LiveKitServer, cfg: InterruptConfig, progress: Progress, *,
              log_dir: Path | None = None) -> dict[str, Any]:
    rng = random.Random(cfg.seed)
    emu_cfg = EmulatorConfig(reply_mode="echo", input_format="pcm_16000", output_format="pcm_24000",
                             chunk_ms=cfg.chunk_ms, burst_factor=cfg.burst_factor, think_time_ms=cfg.think_time_ms,
                             record_text=False, seed=cfg.seed)
    trials: list[dict[str, Any]] = []
    async with Rig(server, emu_cfg, progress, log_dir=log_dir, tag="int") as rig:
        samples = _reply_voice(cfg.reply_ms, 24_000)
        progress("warm-up trial per bridge (not counted)")
        for side in rig.sides:
            await _trial(rig, side, cfg, rng, "hook", samples)
        plan = ["hook"] * cfg.trials + ["speech"] * cfg.speech_trials
        for i, mode in enumerate(plan):
            order = rig.sides if i % 2 == 0 else rig.sides[::-1]
            for side in order:
                trial = await _trial(rig, side, cfg, rng, mode, samples)
                trial["index"] = i
                trials.append(trial)
            last = trials[-2:]
            by = {t["bridge"]: t for t in last}
            progress(f"trial {i + 1}/{len(plan)} ({mode}): bridge output ours {by['ours']['bridge_ms']:.2f} ms, "
                     f"baseline {by['baseline']['bridge_ms']:.0f} ms; remote ours {by['ours']['remote_ms']:.0f} ms,"
                     f" baseline {by['baseline']['remote_ms']:.0f} ms")
        stages = rig.ours.session.timer if rig.ours and rig.ours.session else None
        flush = stages.recent("interrupt.flush").tolist() if stages is not None else []
        metrics = rig.ours.session.metrics() if rig.ours and rig.ours.session else {}
    return {"config": asdict(cfg), "emulator": {"chunk_ms": cfg.chunk_ms, "burst_factor": cfg.burst_factor,
                                                 "output_format": "pcm_24000", "input_format": "pcm_16000"},
            "trials": trials, "interrupt_flush_ns": flush, "interrupt_flush_ms": summarize(v / 1e6 for v in flush),
            "ours_metrics": metrics, "summary": summarize_trials(trials)}


def summarize_trials(trials: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode in ("hook", "speech", "all"):
        picked = [t for t in trials if mode == "all" or t["mode"] == mode]
        if not picked:
            continue
        row: dict[str, Any] = {}
        for metric in ("bridge_ms", "bridge_from_read_ms", "remote_ms", "read_delay_ms", "room_delay_at_start_ms",
                       "room_delay_at_end_ms", "speech_to_interruption_ms"):
            row[metric] = versus(picked, metric)
        row["late_voice_captures"] = per_bridge_total(picked, "late_voice_captures")
        row["remote_reply_not_heard"] = sum(1 for t in picked if not t["remote_heard_reply"])
        out[mode] = row
    return out
