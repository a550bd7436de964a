"""Local ducking end to end: real livekit-server, a real rtc caller, the emulator as a slow-deciding engine.

The agent plays a 440 Hz tone (the oracle: its FFT band level at the listener); the caller talks over it with a
250 Hz harmonic voice. Levels are measured in what the caller *received* from the agent's track.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from scripts.caller import RATE, Heard
from scripts.livekit_server import LiveKitServer
from tests.test_bridge_e2e import LOUD, Bridge, agent_heard, band_level, bridge, caller, played_out, until, voice

pytestmark = pytest.mark.livekit
__all__ = ["bridge"]  # the fixture, shared with test_bridge_e2e

MS = 1_000_000
TONE = 440.0


def window(heard: Heard, t0: int, t1: int) -> np.ndarray:
    picked = [f for t, f in zip(heard.times_ns, heard.frames, strict=True) if t0 <= t < t1]
    return np.concatenate(picked) if picked else np.zeros(0, np.int16)


def stretches_db(heard: Heard, t0: int, t1: int, span_ms: int = 200) -> list[float]:
    """The tone level of every ``span_ms`` stretch (every 50 ms) of what arrived between ``t0`` and ``t1``;
    stretches holding less than half their length (frames of a loaded machine arrive in bursts) are skipped."""
    parts = [window(heard, t, t + span_ms * MS) for t in range(t0, t1 - span_ms * MS + 1, 50 * MS)]
    levels = [level_db(p) for p in parts if p.size >= RATE * span_ms // 2000]
    assert levels, "no stretch with enough audio"
    return levels


def lowest_db(heard: Heard, t0: int, t1: int) -> float:
    """Where the duck is, whenever the media hops of a loaded machine put it."""
    return min(stretches_db(heard, t0, t1))


def level_db(samples: np.ndarray) -> float:
    assert samples.size >= RATE // 10, f"only {samples.size} samples in the window"
    return 20 * float(np.log10(band_level(samples, RATE, TONE) + 1e-9))


async def test_a_talk_over_ducks_the_voice_before_the_engine_interrupts(
        livekit_server: LiveKitServer, bridge: Bridge) -> None:
    # The engine takes 600 ms (after its VAD) to decide it is a barge-in; the caller must not wait for it.
    session, emu = await bridge("duck-talk", reply_mode="tone", tone_hz=TONE, barge_in_delay_ms=600)
    conversation = await emu.next_conversation()
    async with caller(livekit_server, "duck-talk", "bob") as bob:
        heard = await agent_heard(bob)
        reply = conversation.trigger_reply("tone", ms=8000)
        await until(lambda: heard.first_loud_after(reply.trigger_ns, LOUD) is not None, 10)
        await asyncio.sleep(1.0)
        bob.say(voice(1.0, 250.0))
        await until(lambda: len(session.interruptions) > 0, 10)
        interrupted_ns = session.interruptions[0]["recv_ns"]
        await asyncio.sleep(0.3)
    talk_ns = bob.speech_started_ns[-1]
    assert interrupted_ns - talk_ns > 600 * MS  # the slow engine's decision, as configured

    before = level_db(window(heard, talk_ns - 1000 * MS, talk_ns - 100 * MS))
    # Before the interruption even reached the bridge (so before anything of it could reach the listener), the
    # listener heard the voice at least 12 dB down for 200 ms.
    ducked = lowest_db(heard, talk_ns, interrupted_ns)
    assert ducked <= before - 12, (before, ducked)
    stats = session.metrics()["duck"]
    assert stats["started"] == 1 and stats["confirmed"] == 1 and stats["released"] == 0
    assert stats["onset_to_duck_p50_ms"] is not None and stats["onset_to_duck_p50_ms"] < 100


async def test_a_backchannel_dips_the_voice_and_it_recovers_with_the_reply_intact(
        livekit_server: LiveKitServer, bridge: Bridge) -> None:
    # The engine ignores the backchannel (its VAD needs 2 s of speech), so no interruption ever comes.
    session, emu = await bridge("duck-back", reply_mode="tone", tone_hz=TONE, vad_min_speech_ms=2000)
    conversation = await emu.next_conversation()
    async with caller(livekit_server, "duck-back", "carol") as carol:
        heard = await agent_heard(carol)
        reply = conversation.trigger_reply("tone", ms=4000)
        await until(lambda: heard.first_loud_after(reply.trigger_ns, LOUD) is not None, 10)
        await asyncio.sleep(1.0)
        carol.say(voice(0.3, 250.0))  # "mm-hmm"
        await played_out(heard, reply.trigger_ns, quiet_ms=400)
    talk_ns = carol.speech_started_ns[-1]
    assert session.stats().session.interruptions == 0

    first = heard.first_loud_after(reply.trigger_ns, LOUD)
    last = heard.last_loud_time(LOUD)
    assert first is not None and last is not None
    # The voice's level before the backchannel: its loudest stretch, as for the level after (below). A plain
    # average over the 900 ms failed once in a fresh-clone run (63.6 dB against the usual 66.3, the level after
    # 66.3): a loaded machine's receiver concealing lost packets, or a stall that the duration check below
    # would catch, lowers an average; 12 repeats under load then showed single 200 ms stretches 8 dB down.
    before = max(stretches_db(heard, talk_ns - 1000 * MS, talk_ns - 100 * MS))
    # The caller spoke for 300 ms; the hold (500 ms after) and the release ramp (60 ms) end 0.9 s after the
    # onset at the bridge: the dip lies within the 1.5 s after it, whatever the media hops.
    dip = lowest_db(heard, talk_ns, talk_ns + 1500 * MS)
    # From then to the reply's end (2 s or more after the onset): back at the level it had before. The loudest
    # stretch, since a loaded machine's receiver may conceal a lost packet (a dip), never add level.
    after = max(stretches_db(heard, talk_ns + 1500 * MS, last - 100 * MS))
    assert dip <= before - 12, (before, dip)
    assert abs(after - before) <= 1.5, (before, after)

    # Intact: the whole 4 s reply reached the listener, nothing skipped or repeated.
    assert abs((last - first) / MS - 4000) < 150, (last - first) / MS
    assert session.metrics()["downlink"]["samples_out"] >= 4 * RATE - 480
    stats = session.metrics()["duck"]
    assert stats["started"] == 1 and stats["released"] == 1 and stats["confirmed"] == 0
