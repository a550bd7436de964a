"""Client tools and room chat end to end: real livekit-server, real rtc callers, the emulator as the engine.

The emulator plays the agent calling a tool (``emulator.client_tools.call_tool``); what is asserted is the
``client_tool_result`` the engine received, and, for chat, the ``user_message`` it received.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import numpy as np
import pytest
from livekit import rtc

from emulator import Conversation, Emulator, EmulatorConfig, wire
from emulator.client_tools import call_tool, tool_result, tool_results
from scripts.caller import Caller
from scripts.livekit_server import LiveKitServer
from tests.bridge_fixtures import unique, wait_for
from tests.conftest import TEST_API_KEY, TEST_API_SECRET
from transport.config import RoomLinkConfig
from transport.livekit_token import mint_token
from transport.metrics import BridgeMetrics
from transport.session import BridgeSession, EngineSettings, SessionConfig
from transport.tools import ClientTools, ToolConfig

pytestmark = pytest.mark.livekit

AGENT = "tools-agent"
Bridge = Callable[..., Awaitable[tuple[BridgeSession, Conversation, str, Emulator]]]


@pytest.fixture
async def bridge(livekit_server: LiveKitServer) -> AsyncIterator[Bridge]:
    """An emulator (no greeting, no replies to speech) and a bridge in a fresh room with a conversation open."""
    started: list[tuple[BridgeSession, Emulator]] = []

    async def start(tools: ClientTools | None = None) -> tuple[BridgeSession, Conversation, str, Emulator]:
        emu = Emulator(EmulatorConfig(greeting_ms=0))
        await emu.start()
        room = unique("tools")
        token = mint_token(TEST_API_KEY, TEST_API_SECRET, room=room, identity=AGENT, agent=True)
        engine = EngineSettings(api_key=emu.api_key, agent_id=emu.config.agent_id, api_base=emu.rest_base_url)
        session = BridgeSession(SessionConfig(room=RoomLinkConfig(livekit_server.url, token, identity=AGENT),
                                              engine=engine, start_when="immediately", end_when_empty=False),
                                tools=tools)
        await session.start()
        started.append((session, emu))
        return session, await emu.next_conversation(), room, emu

    yield start
    for session, emu in started:
        await session.stop()
        await emu.stop()


async def joined(server: LiveKitServer, session: BridgeSession, room: str, identity: str) -> Caller:
    c = Caller(server.url, mint_token(TEST_API_KEY, TEST_API_SECRET, room=room, identity=identity),
               identity=identity)
    await c.start()
    await wait_for(lambda: identity in session.room.callers, timeout=15)
    return c


async def test_a_registered_handler_answers_the_engine(bridge: Bridge) -> None:
    seen: list[dict[str, Any]] = []

    async def add(params: dict[str, Any]) -> dict[str, int]:
        seen.append(params)
        return {"sum": params["a"] + params["b"]}

    session, conversation, _room, _emu = await bridge(ClientTools({"add": add}))
    call_id = call_tool(conversation, "add", {"a": 2, "b": 40})
    result = await tool_result(conversation, call_id)
    assert (result.result, result.is_error) == ('{"sum":42}', False)
    assert seen == [{"a": 2, "b": 40}]
    stats = session.stats().tools
    assert stats is not None and (stats.calls, stats.local, stats.errors) == (1, 1, 0)
    metrics = BridgeMetrics()
    metrics.track(session)
    text = metrics.render().decode()
    assert 'bridge_tool_calls_total{outcome="local"} 1.0' in text, text
    assert 'bridge_chat_messages_total{outcome="sent"} 0.0' in text


async def test_an_unregistered_tool_is_forwarded_to_the_caller_that_offers_it(
        livekit_server: LiveKitServer, bridge: Bridge) -> None:
    session, conversation, room, _emu = await bridge()

    async def local_time(params: dict[str, Any]) -> str:
        return f"12:00 in {params['zone']}"

    # bob joins first and has no such method: he answers UNSUPPORTED_METHOD and alice is asked next.
    bob = await joined(livekit_server, session, room, "bob")
    alice = await joined(livekit_server, session, room, "alice")
    try:
        alice.answer_rpc("get_local_time", local_time)
        started = time.monotonic()
        call_id = call_tool(conversation, "get_local_time", {"zone": "UTC"})
        result = await tool_result(conversation, call_id, timeout=15)
        took = time.monotonic() - started
        assert (result.result, result.is_error) == ("12:00 in UTC", False)
        assert alice.rpc_calls == [("get_local_time", AGENT, {"zone": "UTC"})]
        stats = session.stats().tools
        assert stats is not None and stats.forwarded == 1 and stats.rpc_attempts == 2, stats

        # Alice answered last time, so she is asked first now: one RPC.
        call_id = call_tool(conversation, "get_local_time", {"zone": "CET"})
        assert (await tool_result(conversation, call_id, timeout=15)).result == "12:00 in CET"
        stats = session.stats().tools
        assert stats is not None and stats.rpc_attempts == 3, stats

        # The round trip the agent waits for: engine → bridge → RPC to alice → bridge → engine, 20 times.
        waits = []
        for i in range(20):
            sent = time.monotonic()
            call_id = call_tool(conversation, "get_local_time", {"zone": f"Z{i}"})
            assert (await tool_result(conversation, call_id, timeout=15)).result == f"12:00 in Z{i}"
            waits.append((time.monotonic() - sent) * 1000)
        p50, p95 = np.percentile(waits, [50, 95])
        print(f"forwarded tool call: first {took * 1000:.0f} ms (two participants asked); then p50 {p50:.1f} / "
              f"p95 {p95:.1f} / max {max(waits):.1f} ms over 20 calls (engine → result at the engine)")
        assert p50 < 1000, waits
    finally:
        await alice.stop()
        await bob.stop()


async def test_unknown_tools_and_timeouts_are_error_results(livekit_server: LiveKitServer, bridge: Bridge) -> None:
    session, conversation, room, _emu = await bridge(ClientTools(config=ToolConfig(timeout_s=1.5)))

    async def never(_params: dict[str, Any]) -> str:
        await asyncio.sleep(30)
        return "too late"

    async def refuse(_params: dict[str, Any]) -> str:
        raise rtc.RpcError(1500, "the theme 'pink' does not exist")

    carol = await joined(livekit_server, session, room, "carol")
    try:
        carol.answer_rpc("slow_tool", never)
        carol.answer_rpc("set_theme", refuse)
        unknown = call_tool(conversation, "no_such_tool", {})
        slow = call_tool(conversation, "slow_tool", {})
        refused = call_tool(conversation, "set_theme", {"theme": "pink"})
        started = time.monotonic()
        results = {i: await tool_result(conversation, i, timeout=10) for i in (unknown, slow, refused)}
        assert results[unknown].is_error
        assert results[unknown].result == "Client tool with name no_such_tool is not defined on client"
        assert results[slow].is_error and results[slow].result == "Client tool slow_tool did not answer within 1.5 s"
        assert results[refused].is_error
        assert results[refused].result == \
            "Client tool set_theme failed: the theme 'pink' does not exist (RPC error 1500)"
        assert time.monotonic() - started < 5.0
        stats = session.stats().tools
        assert stats is not None and (stats.unknown, stats.timeouts, stats.errors) == (1, 1, 3), stats
    finally:
        await carol.stop()


async def test_chat_messages_reach_the_engine_as_user_messages(livekit_server: LiveKitServer, bridge: Bridge) -> None:
    session, conversation, room, _emu = await bridge()
    dave = await joined(livekit_server, session, room, "dave")

    def user_messages() -> list[str | None]:
        return [m.text for m in conversation.client_messages if isinstance(m, wire.UserMessage)]

    # Another agent in the room (participant kind agent) is not a caller: its chat is not the user's.
    bot = Caller(livekit_server.url, mint_token(TEST_API_KEY, TEST_API_SECRET, room=room, identity="other-bot",
                                                agent=True), identity="other-bot")
    await bot.start()
    try:
        await bot.room.local_participant.send_text("I am a bot", topic="lk.chat")
        await dave.room.local_participant.send_text("What time is it?", topic="lk.chat")
        await conversation.wait_for(lambda: len(user_messages()) >= 1, timeout=10)
        assert user_messages() == ["What time is it?"]

        # Too long: the first 2000 characters are sent. Other topics and blank messages are not chat.
        await dave.room.local_participant.send_text("x" * 2500, topic="lk.chat")
        await dave.room.local_participant.send_text("not chat", topic="something-else")
        await dave.room.local_participant.send_text("   ", topic="lk.chat")
        await dave.room.local_participant.send_text("last one", topic="lk.chat")
        await conversation.wait_for(lambda: len(user_messages()) >= 3, timeout=10)
        await asyncio.sleep(0.3)
        assert user_messages() == ["What time is it?", "x" * 2000, "last one"]
        stats = session.stats().chat
        assert stats is not None and (stats.received, stats.sent, stats.truncated, stats.ignored) == (5, 3, 1, 2)
    finally:
        await bot.stop()
        await dave.stop()


async def test_calls_of_a_lost_conversation_are_dropped_and_the_next_one_works(
        livekit_server: LiveKitServer, bridge: Bridge) -> None:
    release = asyncio.Event()

    async def wait(_params: dict[str, Any]) -> str:
        await release.wait()
        return "released"

    session, conversation, room, emu = await bridge(ClientTools({"wait": wait}))
    erin = await joined(livekit_server, session, room, "erin")  # a caller keeps the conversation wanted
    try:
        call_tool(conversation, "wait", {})
        await wait_for(lambda: session.tool_calls.stats().in_flight == 1, timeout=10)
        conversation.drop()  # the engine socket dies: the bridge opens a new conversation
        second = await emu.next_conversation(timeout=20)
        await second.wait_for(lambda: second.init is not None, timeout=10)
        await wait_for(lambda: session.tool_calls.stats().abandoned == 1, timeout=10)
        release.set()
        # The new conversation never hears of the old call, and its own calls are answered.
        call_id = call_tool(second, "wait", {})
        assert (await tool_result(second, call_id)).result == "released"
        assert [r.tool_call_id for r in tool_results(second)] == [call_id]
        assert tool_results(conversation) == []
        stats = session.tool_calls.stats()
        assert (stats.calls, stats.local, stats.abandoned, stats.in_flight) == (2, 1, 1, 0), stats
    finally:
        await erin.stop()
