"""The whole Speech Engine architecture through the real livekit-server: caller → bridge → emulator → the
official SDK's brain server → espeak-ng speech → bridge → caller.

Asserted on audio and on what the brain received: the caller's spoken sentence reaches the brain as a turn
(a placeholder transcript whose duration is the sentence's), and the caller hears the brain's answer as
speech (a broad, syllabic spectrum, not a tone) lasting as long as espeak-ng's rendering of that text.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import numpy as np
import pytest

from emulator import Emulator
from emulator.tts import synthesize
from scripts.caller import RATE, Caller
from scripts.livekit_server import LiveKitServer
from tests.brain_fixtures import is_speech_like, require_espeak, sdk_brain, speech_stats, voiced_seconds
from tests.conftest import TEST_API_KEY, TEST_API_SECRET
from tests.engine_fixtures import fast
from tests.test_brain import Recorder
from tests.test_bridge_e2e import LOUD, agent_heard, bridge_session, played_out, until
from transport.livekit_token import mint_token
from transport.session import BridgeSession

pytestmark = pytest.mark.livekit

KEY = "sk_brain_e2e_0123456789abcdef"
ANSWER = "The quick brown fox jumps over the lazy dog. Then it takes a well earned rest."


@pytest.fixture
async def brain_bridge(livekit_server: LiveKitServer) -> AsyncIterator[tuple[BridgeSession, Emulator, Recorder]]:
    require_espeak()
    recorder = Recorder(lambda n: ANSWER, delay_s=0.01)
    async with sdk_brain(KEY, **recorder.handlers()) as url:
        emu = Emulator(fast(api_key=KEY, brain_url=url, vad_hangover_ms=400.0, think_time_ms=100.0,
                            chunk_ms=100.0, ping_interval_s=3.0))
        await emu.start()
        session = bridge_session(livekit_server, emu, "brain", start_when="immediately", end_when_empty=False)
        await session.start()
        try:
            yield session, emu, recorder
        finally:
            await session.stop()
            await emu.stop()


async def test_caller_speech_reaches_the_brain_and_its_answer_is_heard_as_speech(
        livekit_server: LiveKitServer, brain_bridge: tuple[BridgeSession, Emulator, Recorder]) -> None:
    session, emu, recorder = brain_bridge
    conversation = await emu.next_conversation()
    sentence = await synthesize("Hello, could you tell me a story please?", RATE)
    async with Caller(livekit_server.url, mint_token(TEST_API_KEY, TEST_API_SECRET, room="brain", identity="ann"),
                      identity="ann") as ann:
        heard = await agent_heard(ann)
        ann.say(sentence)
        await ann.wait_said()
        stopped_ns = time.monotonic_ns()
        reply = await conversation.next_reply(timeout=15)
        await until(lambda: reply.done, 30)
        await played_out(heard, stopped_ns, quiet_ms=600, timeout=30)

    # The brain got one turn: a placeholder as long as the sentence the caller spoke.
    assert len(recorder.transcripts) == 1
    [(role, text)] = recorder.transcripts[0]
    said_s = voiced_seconds(sentence, RATE)
    assert role == "user" and text.startswith("[speech ") and abs(float(text.split()[1]) - said_s) < 0.5

    # The caller heard speech, as long as espeak-ng's rendering of the answer (two phrases, so allow the gap).
    reference = await synthesize(ANSWER, RATE)
    got = heard.since(stopped_ns)
    loud = np.flatnonzero(np.abs(got.astype(np.int32)) > LOUD)
    assert loud.size > 0
    body = got[loud[0]: loud[-1] + 1]
    stats = speech_stats(body, RATE)
    assert is_speech_like(body, RATE), stats
    # What the emulator sent: each phrase rendered on its own, back to back.
    sent = np.concatenate([await synthesize(p, RATE) for p in reply.phrases])
    expected_s = voiced_seconds(sent, RATE)
    assert reply.phrases == ["The quick brown fox jumps over the lazy dog.", "Then it takes a well earned rest."]
    # A playout underrun would stretch what was heard; say so rather than report a wrong duration.
    assert session.metrics()["downlink"]["underruns"] == 0
    # Never shorter (nothing cut off, both phrases played); longer only by what the caller's WebRTC receiver
    # stretches when the machine is busy: with no bridge underrun, 4.59 s was heard as 4.6 s on a quiet
    # machine and as up to 5.75 s at load average 7.7 on 2 cores (NetEq time-stretching and concealment).
    heard_s = voiced_seconds(got, RATE)
    assert expected_s - 0.25 < heard_s < expected_s * 1.3 + 0.1, (heard_s, expected_s, stats)
    assert abs(expected_s - voiced_seconds(reference, RATE)) < 0.5  # phrase by phrase ≈ the whole text at once
