"""The test bed itself: real rtc participants through the real livekit-server carry a tone intact."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from core.signals import dominant_hz, rms_dbfs
from scripts.caller import RATE, Caller, tone
from scripts.livekit_server import LiveKitServer
from tests.conftest import TEST_API_KEY, TEST_API_SECRET
from transport.livekit_token import mint_token

pytestmark = pytest.mark.livekit


def token(room: str, identity: str) -> str:
    return mint_token(TEST_API_KEY, TEST_API_SECRET, room=room, identity=identity)


async def wait_for(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


async def test_tone_crosses_the_server_intact(livekit_server: LiveKitServer) -> None:
    sent = tone(440.0, 3.0, amplitude=0.3)
    async with Caller(livekit_server.url, token("smoke", "listener"), identity="listener") as listener, \
            Caller(livekit_server.url, token("smoke", "speaker"), identity="speaker") as speaker:
        await wait_for(lambda: "speaker" in listener.heard)
        speaker.say(sent)
        await speaker.wait_said()
        await asyncio.sleep(0.5)  # let the tail of the tone arrive
        received = listener.heard["speaker"].audio()

    loud = np.flatnonzero(np.abs(received.astype(np.int32)) > 1000)
    assert loud.size > RATE, f"expected over a second of tone, heard {loud.size} loud samples"
    # The steady middle of the tone: skip Opus' first and last 300 ms.
    middle = received[loud[0] + RATE * 3 // 10: loud[-1] - RATE * 3 // 10]
    assert middle.size > RATE
    assert abs(dominant_hz(middle, RATE) - 440.0) <= 5.0
    assert abs(rms_dbfs(middle) - rms_dbfs(sent)) <= 3.0, (rms_dbfs(middle), rms_dbfs(sent))


async def test_a_participant_that_leaves_is_seen_gone(livekit_server: LiveKitServer) -> None:
    async with Caller(livekit_server.url, token("leave", "stayer"), identity="stayer") as stayer:
        leaver = Caller(livekit_server.url, token("leave", "leaver"), identity="leaver")
        await leaver.start()
        await wait_for(lambda: "leaver" in stayer.room.remote_participants)
        await leaver.stop()
        await asyncio.wait_for(stayer.gone.wait(), 10)
        assert stayer.departed == ["leaver"]
        assert "leaver" not in stayer.room.remote_participants
