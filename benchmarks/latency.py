"""Latency, both directions and the round trip, ours and the naive bridge against the same emulator.

Each trial: the room's caller says a 0.4 s voice (300 Hz harmonics, sharp onset); the emulator replies the
moment the chunk holding the voice's onset arrives, with that same voice as the reply (an echo; the
``Conversation.trigger_reply`` hook, so no VAD hangover and no think time). The emulator's VAD is off
(threshold 0 dBFS) and barge-in with it, so only the hook replies.

Figures per trial (all ``time.monotonic_ns``, one clock for the three processes):

- ``uplink_ms``: caller hands the first frame of the utterance to its track's AudioSource → the emulator
  receives the ``user_audio_chunk`` that holds the first loud sample. Includes the caller's own source queue
  (≤ 2 frames, its pacer's lead), Opus packetisation (20 ms), the SFU, the bridge's jitter buffer and its
  AudioStream frame (ours 20 ms, the naive 10 ms), the bridge (mixing, resampling, the chunk, base64/JSON),
  and the websocket.
- ``downlink_ms``: the emulator writes the reply's first audio chunk → the caller receives the frame with
  the first loud sample, plus that sample's offset in the frame (the frame is played from its arrival). Adds
  the bridge's playout start (ours: 20 ms prebuffer, then 3 paced frames), the native queue tick, Opus, the
  SFU, the caller's jitter buffer and playout pull.
- ``round_trip_ms``: first sample handed to the caller's track → the caller hears the echo's first sample;
  uplink + the emulator's turnaround (``turnaround_ms``, the hook reacting, < 1 ms) + downlink.
- ``to_bridge_ms``: first frame handed to the caller's track → the bridge's AudioStream delivers the frame
  holding the onset (the room's share of the uplink: caller queue, Opus, SFU, jitter buffer, the AudioStream
  frame, which is 20 ms for ours and 10 ms for the naive bridge).
- ``bridge_uplink_ms``: the bridge got the caller's first loud frame from its AudioStream → the emulator
  received it: the bridge's own share of the uplink (mix/resample/encode, the websocket writer, loopback
  TCP, the emulator's parsing). The resampler's filter delay (~1 ms at MQ) can push the onset into the next
  chunk, so this is up to one chunk (20 ms ours, 10 ms naive) plus processing.
- ``bridge_downlink_ms``: the bridge got the reply's first audio event → it handed the first loud samples to
  the AudioSource: decode, resample, playout buffer, pacer wake-up.
"""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import LOUD_BRIDGE, LOUD_REMOTE, RATE, Progress, first_loud, ms, summarize, voice
from benchmarks.rig import Rig, Side
from core.signals import dominant_hz
from emulator import EmulatorConfig, Reply
from emulator.signals import resample
from scripts.livekit_server import LiveKitServer

__all__ = ["LatencyConfig", "run"]

UTTERANCE_S = 0.4
FREQ = 300.0


@dataclass(frozen=True)
class LatencyConfig:
    trials: int = 30  # per bridge
    gap_s: float = 0.4
    seed: int = 7


async def _echo_on_onset(side: Side, mark: int, echo: np.ndarray) -> tuple[int, Reply]:
    """Reply with ``echo`` the moment a loud ``user_audio_chunk`` arrives (records from index ``mark``)."""
    conv = side.conversation
    seen = mark
    while True:
        await conv.wait_for(lambda n=seen: len(conv.records) > n, 10)
        records = conv.records
        for record in records[seen:]:
            if record.direction != "in" or record.type != "user_audio_chunk" or record.text is None:
                continue
            pcm = np.frombuffer(base64.b64decode(json.loads(record.text)["user_audio_chunk"]), dtype="<i2")
            if pcm.size and int(np.abs(pcm.astype(np.int32)).max()) > LOUD_REMOTE:
                return record.ns, conv.trigger_reply(samples=echo)
        seen = len(records)


def _first_loud_capture(captures: list[tuple[int, int, int]], after: int) -> int | None:
    return next((c[0] for c in captures if c[0] >= after and c[1] > LOUD_BRIDGE), None)


async def _trial(rig: Rig, side: Side, echo: np.ndarray) -> dict[str, Any]:
    conv = side.conversation
    spoken_before = len(await rig.spoken(side))
    mark = len(conv.records)
    watcher = asyncio.ensure_future(_echo_on_onset(side, mark, echo))
    await rig.say(side, UTTERANCE_S, FREQ)
    onset_ns, reply = await asyncio.wait_for(watcher, 10)
    await conv.wait_for(lambda: reply.start_ns is not None, 5)
    assert reply.start_ns is not None
    # The echo plays for UTTERANCE_S; give the far end time to hear all of it.
    await asyncio.sleep(UTTERANCE_S + 0.5)
    starts = await rig.spoken(side)
    if len(starts) <= spoken_before:
        raise RuntimeError("the caller did not report speaking")
    speak_ns = starts[-1]
    times, peaks, audio = await rig.heard(side, reply.start_ns, None, audio=True)
    idx = np.flatnonzero(peaks > LOUD_REMOTE)
    hear_ns = None
    echo_hz = 0.0
    if idx.size and audio is not None:
        j = int(idx[0])
        frame = audio[j * 480:(j + 1) * 480]
        offset = first_loud(frame, LOUD_REMOTE) or 0
        hear_ns = int(times[j]) + offset * 1_000_000_000 // RATE
        body = audio[j * 480: j * 480 + int(UTTERANCE_S * RATE * 0.8)]
        echo_hz = dominant_hz(body)
    caller_onset = next((t for t, p in side.caller_frames if t >= speak_ns and p > LOUD_REMOTE), None)
    first_event = next((t for t, _ in side.audio_events if t >= reply.start_ns), None)
    first_capture = _first_loud_capture(side.captures, first_event) if first_event is not None else None
    return {
        "bridge": side.name, "speak_ns": speak_ns, "onset_recv_ns": onset_ns, "reply_start_ns": reply.start_ns,
        "hear_ns": hear_ns,
        "uplink_ms": ms(onset_ns - speak_ns),
        "turnaround_ms": ms(reply.start_ns - onset_ns),
        "downlink_ms": ms(hear_ns - reply.start_ns) if hear_ns is not None else None,
        "round_trip_ms": ms(hear_ns - speak_ns) if hear_ns is not None else None,
        "to_bridge_ms": ms(caller_onset - speak_ns) if caller_onset is not None else None,
        "bridge_uplink_ms": ms(onset_ns - caller_onset) if caller_onset is not None else None,
        "bridge_downlink_ms": ms(first_capture - first_event)
        if first_capture is not None and first_event is not None else None,
        "echo_hz": echo_hz,
        "echo_heard": bool(hear_ns is not None and abs(echo_hz - FREQ) < 15),
    }


STAGES = ("uplink.hold", "uplink.align_wait", "uplink.resampler_hold", "uplink.total", "downlink.decode",
          "downlink.resample", "downlink.buffer", "downlink.total", "downlink.capture", "interrupt.flush")


async def run(server: LiveKitServer, cfg: LatencyConfig, progress: Progress, *,
              log_dir: Path | None = None) -> dict[str, Any]:
    emu_cfg = EmulatorConfig(reply_mode="echo", input_format="pcm_16000", output_format="pcm_24000",
                             vad_threshold_dbfs=0.0, barge_in=False, think_time_ms=0.0, record_text=True,
                             seed=cfg.seed)
    echo = resample(voice(UTTERANCE_S, FREQ), RATE, 24_000)
    trials: list[dict[str, Any]] = []
    async with Rig(server, emu_cfg, progress, log_dir=log_dir, tag="lat") as rig:
        for side in rig.sides:  # warm-up, not counted
            await _trial(rig, side, echo)
        for i in range(cfg.trials):
            order = rig.sides if i % 2 == 0 else rig.sides[::-1]
            for side in order:
                trial = await _trial(rig, side, echo)
                trial["index"] = i
                trials.append(trial)
                await asyncio.sleep(cfg.gap_s)
            by = {t["bridge"]: t for t in trials[-2:]}
            progress(f"trial {i + 1}/{cfg.trials}: round trip ours {_fmt(by['ours']['round_trip_ms'])} ms "
                     f"(up {_fmt(by['ours']['uplink_ms'])}, down {_fmt(by['ours']['downlink_ms'])}), baseline "
                     f"{_fmt(by['baseline']['round_trip_ms'])} ms (up {_fmt(by['baseline']['uplink_ms'])}, "
                     f"down {_fmt(by['baseline']['downlink_ms'])})")
        assert rig.ours is not None and rig.ours.session is not None
        timer = rig.ours.session.timer
        stages = {name: timer.recent(name).tolist() for name in STAGES if timer.recent(name).size}
        metrics = rig.ours.session.metrics()
    summary = {}
    for metric in ("uplink_ms", "downlink_ms", "round_trip_ms", "turnaround_ms", "to_bridge_ms", "bridge_uplink_ms",
                   "bridge_downlink_ms"):
        summary[metric] = {b: summarize(t[metric] for t in trials if t["bridge"] == b) for b in ("ours", "baseline")}
    summary["echo_heard"] = {b: sum(1 for t in trials if t["bridge"] == b and t["echo_heard"])
                             for b in ("ours", "baseline")}
    summary["stages_ms"] = {name: summarize(v / 1e6 for v in values) for name, values in stages.items()}
    return {"config": asdict(cfg), "trials": trials, "stages_ns": stages, "ours_metrics": metrics,
            "summary": summary}


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"
