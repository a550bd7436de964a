"""The embedding API: many sessions in one loop, events, metrics, and nothing left behind after stop."""

from __future__ import annotations

import asyncio
import logging
import signal

import pytest

from emulator import Emulator, EmulatorConfig
from scripts.caller import Caller, tone
from scripts.livekit_server import LiveKitServer
from tests.conftest import TEST_API_KEY, TEST_API_SECRET
from transport import (
    BridgeSession,
    CallerJoined,
    EngineSettings,
    RoomLinkConfig,
    SessionConfig,
    SessionEvent,
    SessionState,
    SessionStateChanged,
    UserTranscript,
    mint_token,
)

pytestmark = pytest.mark.livekit


async def test_two_sessions_in_one_loop_with_events_and_a_clean_stop(livekit_server: LiveKitServer) -> None:
    handlers_before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    root_handlers_before = list(logging.getLogger().handlers)
    tasks_before = asyncio.all_tasks()
    async with Emulator(EmulatorConfig(reply_mode="echo")) as emu:
        engine = EngineSettings(api_key=emu.api_key, agent_id=emu.config.agent_id, api_base=emu.rest_base_url)
        sessions = [BridgeSession(SessionConfig(
            room=RoomLinkConfig(livekit_server.url, mint_token(TEST_API_KEY, TEST_API_SECRET, room=f"embed-{i}",
                                                               identity="embedded-agent", agent=True),
                                identity="embedded-agent"),
            engine=engine)) for i in range(2)]
        seen: list[list[SessionEvent]] = [[], []]

        async def collect(i: int) -> None:
            async for event in sessions[i].events():
                seen[i].append(event)

        collectors = [asyncio.ensure_future(collect(i)) for i in range(2)]
        await asyncio.gather(*(s.start() for s in sessions))
        assert all(s.state is SessionState.WAITING for s in sessions)  # engine opens with the first caller
        token = mint_token(TEST_API_KEY, TEST_API_SECRET, room="embed-1", identity="carl")
        async with Caller(livekit_server.url, token, identity="carl") as carl:
            async with asyncio.timeout(15):
                while sessions[1].state is not SessionState.RUNNING:
                    await asyncio.sleep(0.05)
            carl.say(tone(400.0, 0.8))
            await carl.wait_said()
            async with asyncio.timeout(15):
                while not any(isinstance(e, UserTranscript) for e in seen[1]):
                    await asyncio.sleep(0.05)
        assert sessions[0].state is SessionState.WAITING  # the other room is untouched
        metrics = sessions[1].metrics()
        assert metrics["session"]["chunks_sent"] > 20 and metrics["conversation_id"]
        await asyncio.gather(*(s.stop() for s in sessions))
        await asyncio.wait_for(asyncio.gather(*collectors), 5)  # event streams end with the session
    kinds = [type(e) for e in seen[1]]
    assert CallerJoined in kinds and UserTranscript in kinds
    assert seen[1][-1] == SessionStateChanged(seen[1][-1].at_ns, SessionState.STOPPED)
    await asyncio.sleep(0.1)
    leftover = {t for t in asyncio.all_tasks() - tasks_before if not t.done()} - {asyncio.current_task()}
    assert not [t.get_name() for t in leftover if t.get_name().startswith("bridge")], leftover
    assert {sig: signal.getsignal(sig) for sig in handlers_before} == handlers_before
    assert logging.getLogger().handlers == root_handlers_before
