"""Whole turns, ours against the naive bridge, with the engine's burst rate swept: 1×, 2×, 4×, 10× real time.

The hosted engine's pacing is not documented, and it decides how much of a reply sits in a bridge when a
caller barges in, so every figure here is measured at each rate. One rig (emulator, both bridges, a caller
per bridge in another process) per rate; trials alternate which bridge goes first.

The emulator runs its real turn-taking: energy VAD (``vad_min_speech_ms`` 60, hangover 400 ms), no think
time, barge-in on, ``pcm_16000`` in and ``pcm_24000`` out in 100 ms chunks sent ``burst_factor`` × real time,
and after an interruption two more chunks of the interrupted reply (``stale_chunks_after_interrupt``: a
server's in-flight audio, which the naive bridge has no id gate for). A trial, per bridge:

1. The caller says a 0.5 s voice (300 Hz harmonics, sharp onset).
2. The engine hears it end (hangover) and replies with a 3 s tone; the caller hears it.
3. 0.8 s into the reply the caller talks over it (0.6 s, 250 Hz); the engine's VAD barges in and sends
   ``interruption``; the follow-up reply to the talk-over is cut by the emulator's hook before the next trial.

Onset phase: each bridge has its own caller (its own AudioSource tick and Opus packetiser) and its own
subscription, and LiveKit moves audio in 10 ms frames and 20 ms packets, so where a voice's onset falls in
that framing decides whether it waits 0 or up to 20 ms, and that phase stays put for a rig's lifetime. A
same-track probe (``benchmarks.subscribe_phase``) shows the two bridges' ways of reading a track deliver the
onset at the same moment; the rig's two callers do not. So trial ``i`` of *both* bridges starts its voice
``lead_in_grid()[i]`` ms into the utterance (an even grid over 20 ms, seeded order): each bridge's trials
cover every phase once, and a p50 compares bridges, not the two callers' phases.

Figures (``time.monotonic_ns`` on one machine for every process):

- ``turn_ms``: end of the caller's speech (first frame handed to its track + 0.5 s) → the caller receives the
  first loud frame of the reply (plus the loud sample's offset in it). ``turn_minus_hangover_ms`` subtracts
  the emulator's 400 ms hangover (think time is 0): what is left is transport, the bridge both ways and the
  VAD's frame granularity.
- ``turn_net_ms``: ``turn_ms`` minus the room's two hops measured in the same trial (``onset_room_ms`` up,
  ``room_start_ms`` down): the bridges' own share plus the engine's, free of where each caller's and each
  bridge's 10 ms ticks happen to fall.
- ``downlink_ms``: the engine writes the reply's first chunk → the caller hears it; split into
  ``bridge_downlink_ms`` (first audio event read → first loud samples handed to the AudioSource) and
  ``room_start_ms`` (that capture → the caller hears it: the native queue, Opus, SFU, jitter buffer).
- ``onset_ms``: the caller's first frame → the engine receives the ``user_audio_chunk`` holding the first
  loud sample (speech onset → engine receives speech).
- ``onset_room_ms`` / ``onset_bridge_ms``: the onset split at the bridge's receipt of the first loud caller
  frame (ours at 48 kHz through the session tap, the naive bridge's 16 kHz frame in its forwarder).
- ``talkover_ms``: the talk-over's first frame → the engine writes ``interruption`` (its VAD needs 60 ms of
  speech, so this is the uplink plus 60 ms plus a VAD frame).
- ``bridge_silent_ms`` / ``remote_silent_ms``: ``interruption`` written → the bridge's output stays silent
  (clear, or its last loud capture after the clear) / the caller's audio stays quiet (as in
  :mod:`benchmarks.interrupt`), including stale chunks played after the interruption; ``stale_captures``
  counts loud captures after the clear.
- Bridge-only uplink hold, over every chunk of the run: ours ``uplink.hold`` (caller frame received →
  chunk queued for the engine socket, plus what the FIR still holds and any wait for another caller); the
  naive bridge's frame received → ``ws.send`` returned (its 48k→16k resampling happens in the SDK before the
  frame reaches Python, so it is not in this figure; it is in ``onset_ms``).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import LOUD_REMOTE, Progress, first_loud, ms, per_bridge_total, summarize, versus
from benchmarks.interrupt import bridge_silence, remote_silence
from benchmarks.rig import Rig, Side
from emulator import EmulatorConfig, Reply
from scripts.livekit_server import LiveKitServer

__all__ = ["TurnsConfig", "run"]

SPEECH_S = 0.5
TALKOVER_S = 0.6
TALKOVER_AT_S = 0.8
HANGOVER_MS = 400.0
# A caller's 10 ms frames leave on its AudioSource's tick and Opus packs two of them per packet, so where an
# onset falls in that 20 ms framing shifts its arrival by up to 20 ms; with one fixed phase per caller that is a
# fixed offset per rig, not a property of either bridge. Trials sweep it (see lead_in_grid).
PHASE_PERIOD_MS = 20.0


@dataclass(frozen=True)
class TurnsConfig:
    trials: int = 10  # per bridge per burst rate
    bursts: tuple[float, ...] = (1.0, 2.0, 4.0, 10.0)
    reply_ms: float = 3000.0
    stale_chunks: int = 2
    settle_s: float = 0.6
    seed: int = 12


def _first_loud_chunk(side: Side, mark: int, threshold: int = LOUD_REMOTE) -> int | None:
    import base64
    import json
    for record in side.conversation.records[mark:]:
        if record.direction != "in" or record.type != "user_audio_chunk" or record.text is None:
            continue
        pcm = np.frombuffer(base64.b64decode(json.loads(record.text)["user_audio_chunk"]), dtype="<i2")
        if pcm.size and int(np.abs(pcm.astype(np.int32)).max()) > threshold:
            return record.ns
    return None


def lead_in_grid(n: int, seed: int, period_ms: float = PHASE_PERIOD_MS) -> list[float]:
    """``n`` lead-ins spread evenly over one phase period, in a seeded order: trial i of both bridges starts its
    voice ``lead_in[i]`` into the utterance, so each bridge's trials cover every onset phase once."""
    grid = [(k + 0.5) * period_ms / n for k in range(n)]
    np.random.default_rng(seed).shuffle(grid)
    return [round(x, 3) for x in grid]


async def _trial(rig: Rig, side: Side, cfg: TurnsConfig, lead_in_ms: float = 0.0) -> dict[str, Any]:
    conv = side.conversation
    mark = len(conv.records)
    n_replies = len(conv.replies)
    spoken_before = len(await rig.spoken(side))
    await rig.say(side, SPEECH_S, 300.0, lead_in_ms=lead_in_ms)
    await conv.wait_for(lambda: len(conv.replies) > n_replies and conv.replies[n_replies].start_ns is not None, 10)
    reply: Reply = conv.replies[n_replies]
    assert reply.start_ns is not None
    starts = await rig.spoken(side)
    if len(starts) <= spoken_before:
        raise RuntimeError("the caller did not report speaking")
    lead_in_ns = round(lead_in_ms * 1e6)
    speak_ns = starts[-1] + lead_in_ns  # the voice's first sample, as the caller hands it over
    speech_end_ns = speak_ns + int(SPEECH_S * 1e9)
    onset_ns = _first_loud_chunk(side, mark)
    caller_onset = next((t for t, p in side.caller_frames if t >= speak_ns and p > LOUD_REMOTE), None)
    # Talk over the reply.
    await asyncio.sleep(max(0.0, (reply.start_ns + int(TALKOVER_AT_S * 1e9) - time.monotonic_ns()) / 1e9))
    await rig.say(side, TALKOVER_S, 250.0, lead_in_ms=lead_in_ms)
    await conv.wait_for(lambda: reply.interrupted_ns is not None, 5)
    talk_ns = (await rig.spoken(side))[-1] + lead_in_ns
    await conv.wait_for(lambda: any(r.ns >= reply.start_ns for r in conv.sent("interruption")), 5)
    t_int = next(r.ns for r in conv.sent("interruption") if r.ns >= reply.start_ns)
    await asyncio.sleep(cfg.settle_s)
    # The follow-up reply (to the talk-over) starts after the hangover; the window ends there.
    window_end = time.monotonic_ns()
    later = [r for r in conv.replies[n_replies + 1:]]
    window_end = min([window_end] + [r.start_ns or r.trigger_ns for r in later])
    bridge = bridge_silence(t_int, side.captures, side.clears, window_end)
    times, peaks, audio = await rig.heard(side, reply.start_ns - 100_000_000, window_end, audio=True)
    remote = remote_silence(t_int, times, peaks, window_end)
    idx = np.flatnonzero((times >= reply.start_ns) & (peaks > LOUD_REMOTE))
    hear_ns = None
    if idx.size and audio is not None:
        j = int(idx[0])
        offset = first_loud(audio[j * 480:(j + 1) * 480], LOUD_REMOTE) or 0
        hear_ns = int(times[j]) + offset * 1_000_000_000 // 48_000
    first_event = next((t for t, _ in side.audio_events if t >= reply.start_ns), None)
    first_capture = next((c[0] for c in side.captures if first_event is not None and c[0] >= first_event
                          and c[1] > 32), None)
    trial = {
        "bridge": side.name, "lead_in_ms": lead_in_ms, "speak_ns": speak_ns, "reply_start_ns": reply.start_ns,
        "t_int_ns": t_int,
        "turn_ms": ms(hear_ns - speech_end_ns) if hear_ns is not None else None,
        "turn_minus_hangover_ms": ms(hear_ns - speech_end_ns) - HANGOVER_MS if hear_ns is not None else None,
        "onset_ms": ms(onset_ns - speak_ns) if onset_ns is not None else None,
        "onset_room_ms": ms(caller_onset - speak_ns) if caller_onset is not None else None,
        "onset_bridge_ms": ms(onset_ns - caller_onset) if onset_ns is not None and caller_onset is not None
        else None,
        "engine_reply_after_speech_end_ms": ms(reply.start_ns - speech_end_ns),
        "downlink_ms": ms(hear_ns - reply.start_ns) if hear_ns is not None else None,
        "bridge_downlink_ms": ms(first_capture - first_event)
        if first_capture is not None and first_event is not None else None,
        "room_start_ms": ms(hear_ns - first_capture) if hear_ns is not None and first_capture is not None else None,
        "turn_net_ms": ms(hear_ns - speech_end_ns - (caller_onset - speak_ns) - (hear_ns - first_capture))
        if hear_ns is not None and caller_onset is not None and first_capture is not None else None,
        "talkover_ms": ms(t_int - talk_ns),
        "bridge_silent_ms": ms(bridge["silent_ns"] - t_int),
        "remote_silent_ms": ms(remote["silent_ns"] - t_int),
        "stale_captures": bridge["late_voice_captures"],
    }
    # Cut the follow-up reply as soon as it plays, so the next trial starts from silence.
    async with asyncio.timeout(10):
        while True:
            nxt = conv.replies[n_replies + 1:]
            if nxt and nxt[-1].start_ns is not None:
                conv.interrupt()
                break
            await asyncio.sleep(0.02)
    await asyncio.sleep(cfg.settle_s)
    return trial


METRICS = ("turn_ms", "turn_minus_hangover_ms", "turn_net_ms", "onset_ms", "onset_room_ms", "onset_bridge_ms",
           "engine_reply_after_speech_end_ms", "downlink_ms", "bridge_downlink_ms", "room_start_ms", "talkover_ms",
           "bridge_silent_ms", "remote_silent_ms")


async def _one_rate(server: LiveKitServer, cfg: TurnsConfig, burst: float, progress: Progress,
                    log_dir: Path | None) -> dict[str, Any]:
    emu_cfg = EmulatorConfig(reply_mode="tone", tone_ms=cfg.reply_ms, tone_hz=440.0, input_format="pcm_16000",
                             output_format="pcm_24000", chunk_ms=100.0, burst_factor=burst, think_time_ms=0.0,
                             vad_hangover_ms=HANGOVER_MS, vad_min_speech_ms=60.0, barge_in=True,
                             stale_chunks_after_interrupt=cfg.stale_chunks, ping_interval_s=None,
                             idle_timeout_s=None, record_text=True, seed=cfg.seed)
    trials: list[dict[str, Any]] = []
    async with Rig(server, emu_cfg, progress, log_dir=log_dir, tag=f"turn{burst:g}") as rig:
        for side in rig.sides:  # warm-up, not counted
            try:
                await _trial(rig, side, cfg)
            except TimeoutError:
                side.conversation.interrupt()
                await asyncio.sleep(1.5)
        assert rig.ours is not None and rig.ours.session is not None and rig.baseline is not None
        ours_timer = rig.ours.session.timer
        naive = rig.baseline.naive
        assert naive is not None
        hold_from = ours_timer.summary().get("uplink.hold")
        skip_ours = hold_from.count if hold_from is not None else 0
        skip_naive = len(naive.holds_ns)
        failed: list[dict[str, Any]] = []
        lead_ins = lead_in_grid(cfg.trials, cfg.seed)
        for i in range(cfg.trials):
            order = rig.sides if i % 2 == 0 else rig.sides[::-1]
            pair = []
            for side in order:
                try:
                    trial = await _trial(rig, side, cfg, lead_ins[i])
                except TimeoutError:
                    # The engine never answered or never barged in (a lost onset on a loaded machine): recorded,
                    # not counted; the pair is dropped so both bridges keep the same trials.
                    failed.append({"bridge": side.name, "index": i})
                    progress(f"{burst:g}x trial {i + 1}: {side.name} timed out; pair dropped")
                    side.conversation.interrupt()
                    await asyncio.sleep(1.5)
                    break
                trial["index"] = i
                trial["burst"] = burst
                pair.append(trial)
            if len(pair) < 2:
                continue
            trials.extend(pair)
            by = {t["bridge"]: t for t in trials[-2:]}
            progress(f"{burst:g}x trial {i + 1}/{cfg.trials}: turn ours {_f(by['ours']['turn_ms'])} naive "
                     f"{_f(by['baseline']['turn_ms'])} ms; onset {_f(by['ours']['onset_ms'])} / "
                     f"{_f(by['baseline']['onset_ms'])}; silent at caller {_f(by['ours']['remote_silent_ms'])} / "
                     f"{_f(by['baseline']['remote_silent_ms'])} ms")
        hold_ours = ours_timer.recent("uplink.hold")
        count = ours_timer.summary()["uplink.hold"].count
        hold_ours = hold_ours[-min(hold_ours.size, count - skip_ours):] if count > skip_ours else hold_ours[:0]
        hold_naive = np.asarray(naive.holds_ns[skip_naive:], dtype=np.int64)
        align = ours_timer.recent("uplink.align_wait")
        fir = ours_timer.recent("uplink.resampler_hold")
        capture = ours_timer.recent("downlink.capture")
        metrics = rig.ours.session.metrics()
    summary: dict[str, Any] = {}
    for metric in METRICS:
        summary[metric] = versus(trials, metric)
    summary["stale_captures"] = per_bridge_total(trials, "stale_captures")
    summary["uplink_hold_ms"] = {"ours": summarize(v / 1e6 for v in hold_ours.tolist()),
                                 "baseline": summarize(v / 1e6 for v in hold_naive.tolist())}
    summary["ours_align_wait_ms"] = summarize(v / 1e6 for v in align.tolist())
    summary["ours_fir_hold_ms"] = summarize(v / 1e6 for v in fir.tolist())
    summary["ours_capture_ms"] = summarize(v / 1e6 for v in capture.tolist())
    summary["failed_pairs"] = len(failed)
    return {"burst": burst, "trials": trials, "failed": failed, "summary": summary, "ours_metrics": metrics,
            "hold_ns": {"ours": hold_ours.tolist(), "baseline": hold_naive.tolist()}}


async def run(server: LiveKitServer, cfg: TurnsConfig, progress: Progress, *,
              log_dir: Path | None = None) -> dict[str, Any]:
    rates = []
    for burst in cfg.bursts:
        progress(f"burst {burst:g}x real time: {cfg.trials} trials per bridge")
        rates.append(await _one_rate(server, cfg, burst, progress, log_dir))
    return {"config": asdict(cfg), "hangover_ms": HANGOVER_MS, "rates": rates,
            "summary": {f"{r['burst']:g}x": r["summary"] for r in rates}}


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"
