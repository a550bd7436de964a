"""The caller's first words reach the engine even when they are spoken before the conversation is open.

With ``start_when="first_caller"`` the conversation opens only when a caller arrives, and a caller usually speaks
at once. Here the engine refuses the first three connection attempts (about 0.75 s of backoff), so the first
half second of speech arrives while no conversation exists: the session holds it and replays it when the
conversation's metadata arrives. The oracle is the pitch: the caller says 300 Hz first, then 600 Hz, and the
engine must hear the 300 Hz part.
"""

from __future__ import annotations

import asyncio
import functools

import numpy as np
import pytest

from core.formats import parse_format
from core.signals import dominant_hz, tone
from emulator import Emulator, EmulatorConfig
from scripts.caller import Caller
from scripts.livekit_server import LiveKitServer
from tests.conftest import TEST_API_KEY, TEST_API_SECRET
from tests.test_bridge_e2e import bridge_session
from transport import mint_token
from transport.backoff import constant
from transport.engine_client import EngineClient

pytestmark = pytest.mark.livekit

LOUD = 1000


async def test_speech_before_the_conversation_opens_is_replayed(livekit_server: LiveKitServer) -> None:
    async with Emulator(EmulatorConfig(reply_mode="echo")) as emu:
        emu.faults.refuse_connections = 3
        session = bridge_session(livekit_server, emu, "first-words", start_when="first_caller", end_when_empty=False,
                                 client_factory=functools.partial(EngineClient, backoff=lambda: constant(0.25)))
        await session.start()
        try:
            caller_token = mint_token(TEST_API_KEY, TEST_API_SECRET, room="first-words", identity="fred")
            async with Caller(livekit_server.url, caller_token, identity="fred") as fred:
                fred.say(np.concatenate([tone(300.0, 0.5), tone(600.0, 1.0)]))
                await fred.wait_said()
                conversation = await emu.next_conversation(timeout=15)
                await asyncio.sleep(0.5)  # the last chunks reach the engine
            stats = session.stats(stages=False).session
        finally:
            await session.stop()
    rate = parse_format(emu.config.input_format).rate
    got = conversation.received_audio()
    loud = np.flatnonzero(np.abs(got.astype(np.int32)) > LOUD)
    assert loud.size > 0, "the engine heard nothing"
    first = got[loud[0]: loud[0] + rate // 4]
    assert abs(dominant_hz(first, rate) - 300.0) < 10, "the caller's first words were lost"
    assert loud.size > 1.2 * rate, f"the engine heard only {loud.size / rate:.2f} s of 1.5 s"
    assert stats.replayed_chunks > 0 and stats.backlog.replayed_frames > 0
