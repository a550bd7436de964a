"""The engine client against the emulator: minting, auth, ping/pong, audio both ways, reconnects, closing,
and secrets kept out of logs and errors."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import traceback
from collections.abc import Awaitable, Callable, Iterator

import numpy as np
import pytest
from aiohttp import web
from websockets.asyncio.server import ServerConnection, serve

from core.errors import EngineAuthError, EngineError, EngineRefusedError
from core.formats import parse_format
from emulator import Emulator, wire
from tests.engine_fixtures import Collector, chunks, fast, peak_hz, running, utterance
from transport.backoff import constant, full_jitter
from transport.engine_client import ConnectionState, EngineClient, InitiationData, StateChange
from transport.engine_protocol import (
    AgentAudio,
    ClientToolCall,
    ConversationMetadata,
    EngineErrorEvent,
    Interruption,
    Ping,
    UnknownEvent,
    UserTranscript,
)
from transport.signed_url import fetch_signed_url, signed_url_provider, static_url

PCM16 = parse_format("pcm_16000")
FAKE_KEY = "sk_FAKE_key_must_never_be_logged_0123456789"


def fast_retries() -> Iterator[float]:
    return constant(0.01)


class TickClock:
    """A clock that counts calls: proves recv_ns comes from the injected clock, not a hidden time read."""

    def __init__(self) -> None:
        self.ticks = itertools.count(1_000_000)

    def now_ns(self) -> int:
        return next(self.ticks)


def client_for(emu: Emulator, events: Collector, states: list[StateChange] | None = None,
               **kwargs: object) -> EngineClient:
    provider = signed_url_provider(emu.api_key, emu.config.agent_id, base_url=emu.rest_base_url)
    return EngineClient(provider, events, on_state=states.append if states is not None else None,
                        backoff=fast_retries, **kwargs)  # type: ignore[arg-type]


async def speak(client: EngineClient, ms: float = 300.0, hz: float = 440.0) -> None:
    for data in chunks(utterance(ms, 250, 16000, hz), PCM16):
        assert client.send_audio(data)
        await asyncio.sleep(0)


def agent_audio(events: Collector, event_id: int | None = None) -> np.ndarray:
    parts = [PCM16.decode(e.audio) for e in events.of(AgentAudio) if event_id is None or e.event_id == event_id]
    return np.concatenate(parts) if parts else np.zeros(0, np.int16)


# ------------------------------------------------------------------------------------------ backoff


def test_full_jitter_windows_double_up_to_the_cap() -> None:
    assert list(itertools.islice(full_jitter(0.25, 2.0, rand=lambda: 1.0), 6)) == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
    assert list(itertools.islice(full_jitter(rand=lambda: 0.0), 3)) == [0.0, 0.0, 0.0]
    draws = list(itertools.islice(full_jitter(0.1, 0.4), 200))
    assert all(0 <= d <= 0.4 for d in draws) and max(draws[5:]) > 0.2


# ------------------------------------------------------------------------------------------ signed URLs


async def test_fetch_signed_url_and_refusals() -> None:
    async with running() as emu:
        url = await fetch_signed_url(emu.api_key, "agent_emulator", base_url=emu.rest_base_url)
        assert url.startswith(emu.ws_url) and "conversation_signature=" in url
        with pytest.raises(EngineAuthError, match="HTTP 401"):
            await fetch_signed_url(FAKE_KEY, "agent_emulator", base_url=emu.rest_base_url)
        port = emu.port
    with pytest.raises(EngineError, match="failed: Client"):
        await fetch_signed_url(emu.api_key, "agent_emulator", base_url=f"http://127.0.0.1:{port}", timeout=2)


# ------------------------------------------------------------------------------------------ conversation


async def test_connects_and_echo_round_trip_with_clock_stamps() -> None:
    events, states, clock = Collector(), list[StateChange](), TickClock()
    async with running(fast(output_format="pcm_16000")) as emu:
        client = client_for(emu, events, states, clock=clock)
        assert not client.send_audio(b"\x00\x00")  # before the conversation: dropped, counted
        async with client:
            conversation = await emu.next_conversation()
            assert client.conversation_id == conversation.conversation_id
            assert client.input_format == client.output_format == PCM16
            assert isinstance(events.items[0][0], ConversationMetadata)
            await speak(client)
            reply = await conversation.next_reply()
            await events.until(lambda: agent_audio(events).size >= reply.samples.size)
        heard = agent_audio(events, reply.event_id)
        sent = utterance(300, 250)
        assert np.array_equal(heard, sent[:heard.size]) and heard.size == 4800  # the 300 ms tone, exactly
        assert np.array_equal(conversation.received_audio(), sent)  # what the emulator decoded
        stamps = [ns for _, ns in events.items]
        assert stamps == sorted(stamps) and all(ns >= 1_000_000 for ns in stamps)
        assert [s.state for s in states] == [ConnectionState.CONNECTING, ConnectionState.CONNECTED,
                                             ConnectionState.CLOSED]
        assert client.counters.audio_dropped_not_ready == 1 and client.counters.connects == 1
        assert conversation.close_code == 1000  # a clean close
        assert conversation.init is not None and conversation.init.overrides == {}


async def test_ping_pong() -> None:
    events = Collector()
    async with running(fast(ping_interval_s=0.05)) as emu, client_for(emu, events) as client:
        conversation = await emu.next_conversation()
        await conversation.wait_for(lambda: sum(p.pong_ns is not None for p in conversation.pings) >= 3)
        pings = events.of(Ping)
        assert [p.event_id for p in pings[:3]] == [1, 2, 3] and pings[0].ping_ms is None
        assert client.protocol.last_ping_id == pings[-1].event_id
        assert all(p.rtt_ms is not None and p.rtt_ms < 100 for p in conversation.pings[:3])
        await events.until(lambda: any(p.ping_ms is not None for p in events.of(Ping)))
        measured = {max(1, math.ceil(p.rtt_ms)) for p in conversation.pings if p.rtt_ms is not None}
        assert {p.ping_ms for p in events.of(Ping) if p.ping_ms is not None} <= measured


async def test_control_messages_reach_the_engine() -> None:
    events = Collector()
    init = InitiationData(overrides={"agent": {"first_message": ""}}, dynamic_variables={"caller": "Ada"},
                          user_id="user-7")
    async with running(fast(reply_mode="tone", tone_ms=200)) as emu:
        # As on the real service, the agent must allow the first-message override (emulator/overrides.py).
        agent = emu.agents.get(emu.config.agent_id)
        assert agent is not None
        agent.patch_agent({"platform_settings": {"overrides": {"conversation_config_override": {
            "agent": {"first_message": True}}}}})
        async with client_for(emu, events, init=init) as client:
            await _control_messages(emu, client, events)


async def _control_messages(emu: Emulator, client: EngineClient, events: Collector) -> None:
    conversation = await emu.next_conversation()
    assert conversation.init == wire.ClientInit({"agent": {"first_message": ""}}, {"caller": "Ada"}, {},
                                                "user-7")
    assert client.send_contextual_update("on the pricing page", context_id="page")
    assert client.send_user_activity()
    assert client.send_client_tool_result("tc_1", {"ok": True})
    assert client.send_feedback(1, "like")
    assert client.send_user_message("hello there")
    reply = await conversation.next_reply()  # a typed message is a user turn too
    await conversation.wait_for(lambda: len(conversation.client_messages) == 6)
    assert conversation.client_messages[1:] == [
        wire.ContextualUpdate("on the pricing page", "page"), wire.UserActivity(),
        wire.ClientToolResult("tc_1", '{"ok":true}', False), wire.Feedback(1, "like"),
        wire.UserMessage("hello there")]
    await events.until(lambda: bool(events.of(AgentAudio)))
    assert events.of(UserTranscript) == [UserTranscript("hello there", reply.event_id)]
    conversation.send(wire.client_tool_call("lookup", "tc_9", {"q": "x"}, 5), "client_tool_call", 5)
    await events.until(lambda: bool(events.of(ClientToolCall)))
    assert events.of(ClientToolCall) == [ClientToolCall("lookup", "tc_9", {"q": "x"}, 5)]


async def test_wrong_api_key_is_an_auth_error_and_not_retried() -> None:
    async with running() as emu:
        client = EngineClient(signed_url_provider(FAKE_KEY, "agent_emulator", base_url=emu.rest_base_url),
                              Collector(), backoff=fast_retries)
        with pytest.raises(EngineAuthError):
            await client.start()
        assert client.counters.failed_attempts == 0 and emu.signed_urls_issued == 0


async def test_reused_signed_url_is_refused_at_the_upgrade() -> None:
    async with running() as emu:
        url = emu.signed_url()
        async with EngineClient(static_url(url), Collector(), backoff=fast_retries):
            pass
        second = EngineClient(static_url(url), Collector(), backoff=fast_retries)
        with pytest.raises(EngineAuthError, match="HTTP 403"):
            await second.start()
        assert [r.reason for r in emu.rejections] == ["signature already used"]


async def test_protocol_garbage_is_dropped_and_counted_without_ending_the_conversation() -> None:
    events = Collector()
    async with running(fast(oversize_bytes=1000)) as emu, client_for(emu, events) as client:
        conversation = await emu.next_conversation()
        for kind in ("garbage", "bad_base64", "odd_pcm", "unknown_type", "binary"):
            conversation.inject(kind)
        conversation.trigger_reply("tone", ms=200)
        await events.until(lambda: agent_audio(events).size >= 3200)
        assert client.counters.by_kind == {"not_json": 1, "bad_base64": 1, "odd_length_pcm": 1,
                                           "binary_frame": 1}
        assert [e.type for e in events.of(UnknownEvent)] == ["emulator_unknown_event"]
        assert client.protocol.counters.unknown_events == 1
        assert client.state is ConnectionState.CONNECTED and abs(peak_hz(agent_audio(events), 16000) - 440) < 5


async def test_stale_audio_after_interruption_is_gated_and_a_shared_id_reply_plays() -> None:
    events = Collector()
    config = fast(reply_mode="speech", speech_ms=2000, chunk_ms=100, burst_factor=2,
                  stale_chunks_after_interrupt=3, reply_shares_interrupt_id=True)
    async with running(config) as emu, client_for(emu, events) as client:
        conversation = await emu.next_conversation()
        first = conversation.trigger_reply()
        await conversation.wait_for(lambda: first.chunks_sent >= 3)
        assert conversation.interrupt()
        await conversation.wait_for(lambda: first.stale_chunks_sent == 3)
        await events.until(lambda: client.protocol.counters.stale_audio_chunks == 3)
        [interruption] = events.of(Interruption)
        assert interruption.event_id == first.event_id + 1
        assert len(events.of(AgentAudio)) == first.chunks_sent  # the stale chunks never reached the callback
        second = conversation.trigger_reply("tone", ms=200)
        assert second.event_id == interruption.event_id  # shares the interruption's id ...
        await events.until(lambda: agent_audio(events, second.event_id).size == 3200)  # ... and still plays
        after = [e for e in events.of(AgentAudio)][first.chunks_sent:]
        assert {e.event_id for e in after} == {second.event_id}


async def test_reconnect_after_a_drop_mid_reply_starts_a_fresh_conversation_and_gate() -> None:
    events, states = Collector(), list[StateChange]()
    async with running(fast(reply_mode="speech", speech_ms=2000)) as emu, \
            client_for(emu, events, states) as client:
        first = await emu.next_conversation()
        reply = first.trigger_reply()
        await first.wait_for(lambda: reply.chunks_sent >= 2)
        assert first.interrupt()  # raise the client's gate in the first conversation (to id 2)
        await events.until(lambda: bool(events.of(Interruption)))
        emu.faults.drop_after_chunks = 3
        dropped = first.trigger_reply()  # id 3
        second = await emu.next_conversation()
        emu.faults.drop_after_chunks = None
        await events.until(lambda: client.state is ConnectionState.CONNECTED and
                           client.conversation_id == second.conversation_id)
        assert dropped.chunks_sent == 3 and first.close_code == 1006  # aborted, no close frame
        assert client.protocol.interrupt_floor == 0  # gate reset for the new conversation
        fresh = second.trigger_reply("tone", ms=200)
        assert fresh.event_id == 1  # ids start again ...
        await events.until(lambda: agent_audio(events, 1).size >= 3200 + reply.samples_sent)
        assert client.counters.connects == 2 and emu.signed_urls_issued == 2  # a fresh signed URL
        kinds = [s.state for s in states]
        assert kinds[:2] == [ConnectionState.CONNECTING, ConnectionState.CONNECTED]
        assert kinds[2:] == [ConnectionState.RECONNECTING, ConnectionState.CONNECTED]
        assert "1006" in (states[2].reason or "")
        ids = [m.conversation_id for m in events.of(ConversationMetadata)]
        assert ids == [first.conversation_id, second.conversation_id]


async def test_the_init_factory_gives_each_conversation_its_init() -> None:
    asked: list[int] = []

    def init_for(conversations: int) -> InitiationData:
        asked.append(conversations)
        return InitiationData(dynamic_variables={"conversation": conversations})

    events = Collector()
    async with running(fast()) as emu, client_for(emu, events, init_factory=init_for) as client:
        first = await emu.next_conversation()
        first.drop()
        second = await emu.next_conversation()
        await second.wait_for(lambda: second.init is not None)
        assert first.init is not None and first.init.dynamic_variables == {"conversation": 0}
        assert second.init is not None and second.init.dynamic_variables == {"conversation": 1}
        await events.until(lambda: client.counters.connects == 2)
        assert asked == [0, 1]


async def test_refused_reconnects_end_with_a_clear_error_after_the_cap() -> None:
    states: list[StateChange] = []
    async with running() as emu:
        client = client_for(emu, Collector(), states, max_attempts=3)
        await client.start()
        conversation = await emu.next_conversation()
        emu.faults.refuse_connections = -1
        conversation.drop()
        with pytest.raises(EngineError, match=r"gave up after 3 failed attempts; last: HTTP 503") as info:
            await asyncio.wait_for(client.wait(), 5)
        assert not isinstance(info.value, EngineAuthError)
        assert len(emu.rejections) == 3 and emu.signed_urls_issued == 4
        assert states[-1].state is ConnectionState.CLOSED and client.state is ConnectionState.CLOSED
        assert [s.attempt for s in states if s.state is ConnectionState.RECONNECTING] == [0, 1, 2]
        assert not client.send_audio(b"\x00\x00")


async def test_initial_refusals_are_retried_until_accepted() -> None:
    async with running() as emu:
        emu.faults.refuse_connections = 2
        async with client_for(emu, Collector(), max_attempts=3) as client:
            assert client.counters.failed_attempts == 2 and client.ready


@pytest.mark.parametrize(("code", "error_type", "final"), [
    (1000, "max_duration_exceeded", "clean"),
    (1008, "invalid_message", "error"),
    (1011, "unknown_websocket_crash", "retry"),
    (1002, "llm_error", "retry"),
    # Types after which a new conversation ends the same way, whatever the close code.
    (1002, "safety_violation", "error"),
    (1002, "override_error", "error"),
    (1011, "quota_exceeded", "error"),
    (1002, "concurrency_limit_exceeded", "error"),
])
async def test_server_close_codes_decide_the_ending(code: int, error_type: str, final: str) -> None:
    events = Collector()
    async with running() as emu, client_for(emu, events) as client:
        conversation = await emu.next_conversation()
        conversation.end(code, error_type, "test ending")
        if final == "retry":
            await emu.next_conversation()
            await events.until(lambda: client.counters.connects == 2)
            assert events.of(EngineErrorEvent)[0].code == code
            return
        if final == "clean":
            await asyncio.wait_for(client.wait(), 5)
        else:
            with pytest.raises(EngineError, match=error_type) as info:
                await asyncio.wait_for(client.wait(), 5)
            assert info.value.close_code == code
        assert client.state is ConnectionState.CLOSED and client.counters.connects == 1
        assert client.last_error_event is not None and client.last_error_event.error_type == error_type


async def test_oversize_message_is_refused_by_the_socket_and_the_client_reconnects() -> None:
    events = Collector()
    async with running(fast(oversize_bytes=200_000)) as emu, \
            client_for(emu, events, max_message_bytes=100_000) as client:
        conversation = await emu.next_conversation()
        conversation.inject("oversize")
        await emu.next_conversation()
        await events.until(lambda: client.counters.connects == 2)
        assert client.close_code == 1009


async def accept_then_drop(close_code: int | None = 1011) -> tuple[list[float], object]:
    """A bare engine that answers every conversation's init with metadata, then drops it at once."""
    times: list[float] = []
    loop = asyncio.get_running_loop()

    async def engine(ws: ServerConnection) -> None:
        times.append(loop.time())
        await ws.recv()
        await ws.send(wire.metadata(f"conv_{len(times)}", "pcm_16000", "pcm_16000"))
        await asyncio.sleep(0.02)
        if close_code is None:
            ws.transport.abort()
        else:
            await ws.close(close_code, "dropping")

    return times, serve(engine, "127.0.0.1", 0)


async def test_an_engine_that_accepts_and_drops_gets_a_bounded_number_of_conversations() -> None:
    # Default backoff and caps. Before: the failure count and the backoff were reset by every metadata, so
    # each drop got a fresh ~0.1 s retry: 37 conversations (37 signed URLs, 37 billed) in 5 s.
    times, server_cm = await accept_then_drop(None)
    async with server_cm as server:  # type: ignore[attr-defined]
        port = server.sockets[0].getsockname()[1]
        client = EngineClient(static_url(f"ws://127.0.0.1:{port}/"), Collector())
        await client.start()
        with contextlib.suppress(TimeoutError, EngineError):
            await asyncio.wait_for(client.wait(), 5.0)
        in_5s = len([t for t in times if t - times[0] <= 5.0])
        await client.close()
    print(f"conversations opened in 5 s by an accept-then-drop engine: {in_5s}")
    assert 2 <= in_5s <= 6  # the first + at most max_reconnects=5; the backoff spreads them (~4 expected)


async def test_reconnects_are_capped_per_window_with_a_clear_final_error() -> None:
    times, server_cm = await accept_then_drop(1011)
    async with server_cm as server:  # type: ignore[attr-defined]
        port = server.sockets[0].getsockname()[1]
        client = EngineClient(static_url(f"ws://127.0.0.1:{port}/"), Collector(), backoff=fast_retries,
                              max_reconnects=3, reconnect_window_s=60.0)
        await client.start()
        with pytest.raises(EngineError, match=r"keeps dropping conversations: 3 re-established within 60 s"):
            await asyncio.wait_for(client.wait(), 5.0)
    assert len(times) == 4 and client.counters.connects == 4 and client.state is ConnectionState.CLOSED


async def test_a_conversation_that_lasted_resets_the_count_and_the_budget_window_slides() -> None:
    # Conversations of ~0.3 s with stable_after_s=0.2: each is "a while", so max_attempts never bites, and a
    # 0.5 s window never holds more than one or two re-established conversations.
    times: list[float] = []

    async def engine(ws: ServerConnection) -> None:
        times.append(asyncio.get_running_loop().time())
        await ws.recv()
        await ws.send(wire.metadata(f"conv_{len(times)}", "pcm_16000", "pcm_16000"))
        await asyncio.sleep(0.3)
        await ws.close(1011, "dropping")

    async with serve(engine, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        client = EngineClient(static_url(f"ws://127.0.0.1:{port}/"), Collector(), backoff=fast_retries,
                              stable_after_s=0.2, max_reconnects=3, reconnect_window_s=0.5)
        await client.start()
        await asyncio.sleep(2.5)
        assert client.state is not ConnectionState.CLOSED
        await client.close()
    assert len(times) >= 6


async def rest_answering(status: int, body: bytes) -> web.AppRunner:
    async def handler(_: web.Request) -> web.Response:
        return web.Response(status=status, body=body, content_type="application/json")
    app = web.Application()
    app.router.add_get("/v1/convai/conversation/get-signed-url", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


@pytest.mark.parametrize(("status", "outcome"), [(200, "url"), (201, "url"), (203, "url"), (404, "refused"),
                                                 (422, "refused"), (500, "retry"), (302, "retry")])
async def test_signed_url_status_decides(status: int, outcome: str) -> None:
    runner = await rest_answering(status, b'{"signed_url": "wss://engine.example/v1/convai/conversation?x=1"}')
    try:
        base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        if outcome == "url":
            assert (await fetch_signed_url(FAKE_KEY, "a", base_url=base)).startswith("wss://engine.example/")
        elif outcome == "refused":
            with pytest.raises(EngineRefusedError, match=str(status)):
                await fetch_signed_url(FAKE_KEY, "a", base_url=base)
        else:
            with pytest.raises(EngineError) as info:
                await fetch_signed_url(FAKE_KEY, "a", base_url=base)
            assert not isinstance(info.value, EngineRefusedError)
    finally:
        await runner.cleanup()


async def test_a_refused_signed_url_request_is_not_retried() -> None:
    runner = await rest_answering(404, b'{"detail": "agent not found"}')
    try:
        provider = signed_url_provider(FAKE_KEY, "agent_nobody", base_url=f"http://127.0.0.1:{runner.addresses[0][1]}")
        client = EngineClient(provider, Collector(), backoff=fast_retries, max_attempts=5)
        with pytest.raises(EngineRefusedError, match="404"):
            await client.start()
        assert client.counters.failed_attempts == 0  # not retried: before, 5 attempts
    finally:
        await runner.cleanup()


async def test_close_during_backoff_is_prompt_and_clean() -> None:
    states: list[StateChange] = []
    async with running() as emu:
        client = EngineClient(signed_url_provider(emu.api_key, "agent_emulator", base_url=emu.rest_base_url),
                              Collector(), on_state=states.append, backoff=lambda: constant(30.0))
        await client.start()
        (await emu.next_conversation()).drop()
        async with asyncio.timeout(2):
            while states[-1].state is not ConnectionState.RECONNECTING:
                await asyncio.sleep(0.01)
        await asyncio.wait_for(client.close(), 2)  # the client is in a 30 s backoff wait
        await asyncio.wait_for(client.wait(), 1)  # closing on purpose is not an error
        assert [s.state for s in states][-2:] == [ConnectionState.RECONNECTING, ConnectionState.CLOSED]


async def test_unsupported_format_in_metadata_is_final() -> None:
    attempts = 0

    async def engine(ws: ServerConnection) -> None:
        nonlocal attempts
        attempts += 1
        await ws.recv()
        await ws.send(wire.metadata("conv_mp3", "pcm_16000", "mp3_44100"))
        await ws.wait_closed()

    async with serve(engine, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        client = EngineClient(static_url(f"ws://127.0.0.1:{port}/"), Collector(), backoff=fast_retries)
        with pytest.raises(EngineError, match=r"unsupported format.*mp3_44100"):
            await client.start()
    assert attempts == 1 and client.counters.by_kind == {"unknown_format": 1}


async def test_audio_backpressure_drops_new_chunks() -> None:
    async with running() as emu, client_for(emu, Collector(), audio_queue_limit=3) as client:
        results = [client.send_audio(b"\x00\x00" * 160) for _ in range(5)]  # no await: the writer cannot run
        assert results == [True, True, True, False, False]
        assert client.counters.audio_dropped_backpressure == 2


async def test_control_backpressure_drops_new_messages_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    async with running() as emu, client_for(emu, Collector(), control_queue_limit=2) as client:
        with caplog.at_level(logging.WARNING, logger="transport.engine_client"):
            results = [client.send_user_message(f"message {i}") for i in range(4)]  # the writer cannot run
        assert results == [True, True, False, False]
        assert client.counters.control_dropped_backpressure == 2
        assert "control messages waiting" in caplog.text
        conversation = await emu.next_conversation()
        await conversation.wait_for(lambda: len(conversation.user_messages) == 2)
        assert conversation.user_messages == ["message 0", "message 1"]
        assert client.send_user_message("later")  # the queue drained: accepted again


# ------------------------------------------------------------------------------------------ secrets


async def test_key_and_signature_never_reach_logs_or_errors(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    async with running() as emu:
        signature = emu.signed_url().split("conversation_signature=")[1]  # an unused, recognisable signature
        # 1: a refused API key.
        bad = EngineClient(signed_url_provider(FAKE_KEY, "agent_emulator", base_url=emu.rest_base_url),
                           Collector(), backoff=fast_retries)
        with pytest.raises(EngineAuthError) as info:
            await bad.start()
        texts += [str(info.value), "".join(traceback.format_exception(info.value))]
        # 2: a good signed URL, then a drop, reconnect refusals and the final error.
        url = f"{emu.ws_url}?agent_id=agent_emulator&conversation_signature={signature}"
        urls = iter([url])

        async def provider() -> str:
            return next(urls, url)  # the second attempt reuses it: refused with 403, and quoted nowhere

        client = EngineClient(provider, Collector(), backoff=fast_retries, secrets=[FAKE_KEY])
        await client.start()
        (await emu.next_conversation()).drop()
        with pytest.raises(EngineError) as final:
            await asyncio.wait_for(client.wait(), 5)
        texts += [str(final.value), "".join(traceback.format_exception(final.value))]
        # 3: a signed-URL request to a dead port.
        with pytest.raises(EngineError) as dead:
            await fetch_signed_url(FAKE_KEY, "a", base_url="http://127.0.0.1:9", timeout=1)
        texts.append(str(dead.value))
    logged = caplog.text + "\n".join(r.getMessage() for r in caplog.records)
    assert "conversation_signature=…" in logged  # the URLs were logged, redacted
    for text in [logged, *texts]:
        assert FAKE_KEY not in text
        assert signature not in text
        assert emu.api_key not in text


# ------------------------------------------------------------------------------------------ older interruptions


async def test_an_engine_interruption_of_an_older_event_leaves_the_reply_playing() -> None:
    """Through the emulator: a reply (tone, event N) is streaming when the engine sends an ``interruption``
    with event id N-1 (an older event, as the service does to stop a tool-call sound). The downlink, fed in
    arrival order, keeps the whole reply; an interruption of N or above would have dropped it."""
    from core.clock import MS
    from core.downlink import Downlink

    events = Collector()
    down: Downlink | None = None

    def feed(event: object, recv_ns: int) -> None:
        events(event, recv_ns)  # type: ignore[arg-type]
        if isinstance(event, ConversationMetadata):
            nonlocal down
            down = Downlink(event.output_format)
        elif isinstance(event, AgentAudio) and down is not None:
            down.push(event.audio, 0, event_id=event.event_id)
        elif isinstance(event, Interruption) and down is not None:
            down.interrupt(event.event_id)

    async with running(fast(reply_mode="tone", tone_hz=660.0, chunk_ms=50, burst_factor=1.0)) as emu, \
            client_for(emu, feed) as client:  # type: ignore[arg-type]
        conversation = await emu.next_conversation()
        reply = conversation.trigger_reply("tone", ms=1000)
        await conversation.wait_for(lambda: reply.chunks_sent >= 4)
        conversation.send(wire.interruption(reply.event_id - 1), "interruption", reply.event_id - 1)
        await conversation.wait_for(lambda: reply.done)
        await events.until(lambda: sum(len(e.audio) for e in events.of(AgentAudio)) >= 2 * reply.samples_sent)
        assert [e.event_id for e in events.of(Interruption)] == [reply.event_id - 1]
        assert client.protocol.counters.stale_audio_chunks == 0
    assert down is not None
    out = [s for now in range(0, 2_000 * MS, 10 * MS) if (s := down.due(now)) is not None]
    played = np.concatenate(out)
    frames = played[:played.size // 480 * 480].reshape(-1, 480).astype(np.float64)
    loud_frames = int((np.sqrt((frames ** 2).mean(axis=1)) > 300).sum())
    assert loud_frames >= 97  # the whole second of the reply (before: flushed at the interruption, ~0)
    assert abs(peak_hz(played, 48_000) - 660.0) < 10


# ------------------------------------------------------------------------------------------ huge messages


async def test_by_default_a_message_over_2_mib_is_refused_by_the_socket() -> None:
    # Before: the default max_size was 16 MiB, so a 3 MiB message was read, decoded and parsed on the loop.
    events = Collector()
    async with running(fast(oversize_bytes=3 * 1024 * 1024)) as emu, client_for(emu, events) as client:
        conversation = await emu.next_conversation()
        conversation.inject("oversize")
        await emu.next_conversation()
        await events.until(lambda: client.counters.connects == 2)
        assert client.close_code == 1009


async def test_a_flood_of_huge_audio_messages_does_not_stall_the_other_sessions() -> None:
    """Ten sessions on this loop, one flooded by an engine process with 4 audio messages of 15 MiB: the loop
    lag the others suffer stays bounded. Before: ~1.6 s stalls here (about 600 ms per message)."""
    from benchmarks.flood import measure

    result = await measure("guarded", {}, 15.0, 4)
    lag = result["lag_ms_flood"]
    print(f"loop lag during the flood: p50 {lag['p50']:.1f} p99 {lag['p99']:.1f} max {lag['max']:.1f} ms "
          f"(baseline p99 {result['lag_ms_baseline']['p99']:.1f} ms)")
    assert result["flooded_close_code"] == 1009  # refused by the socket, before any decode
    assert lag["max"] < 500.0  # generous for a loaded 2-core machine; unguarded it is > 1500 ms
    assert result["others_frames_during_flood_min"] > 150  # of ~300: the others kept playing


async def test_a_lost_conversation_is_not_reopened_when_the_owner_does_not_want_it() -> None:
    # For an empty room: the session stops its silence keepalive, the engine's idle timeout (1002,
    # transport_receive_timeout) ends the conversation, and no new billed conversation is opened for nobody.
    wanted = [True]
    async with running(fast(idle_timeout_s=0.5)) as emu:
        client = client_for(emu, Collector(), reconnect_wanted=lambda: wanted[0])
        await client.start()
        first = await emu.next_conversation()
        wanted[0] = False
        await asyncio.wait_for(client.wait(), 5)  # a clean end, no error
        assert first.close_code == 1002 and client.counters.connects == 1
        assert len(emu.conversations) == 1 and client.state is ConnectionState.CLOSED


async def test_close_against_an_engine_that_stopped_reading_keeps_to_one_budget() -> None:
    # The polite close and the wait for the client's task share close_timeout. Before: one close_timeout
    # each (2 x), which pushed a session's room close past the worker's stop timeout.
    async def engine(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.send(wire.metadata("conv_deaf", "pcm_16000", "pcm_16000"))
        ws.transport.pause_reading()  # our close frame is never read, never answered
        await asyncio.sleep(3)
        ws.transport.abort()

    async with serve(engine, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        client = EngineClient(static_url(f"ws://127.0.0.1:{port}/"), Collector(), close_timeout=1.0)
        await client.start()
        started = asyncio.get_running_loop().time()
        await client.close()
        took = asyncio.get_running_loop().time() - started
    assert took < 1.6, f"{took:.2f} s"


async def test_a_percent_encoded_signature_never_reaches_the_debug_log(caplog: pytest.LogCaptureFixture) -> None:
    # websockets logs "> GET /path?query HTTP/1.1" at DEBUG with the query percent-encoded; the client had
    # registered the decoded value only, so a signature with "+ / =" went out in the clear.
    caplog.set_level(logging.DEBUG)
    signature = "sig+With/Slash=Plus+0123456789=="
    from urllib.parse import quote

    async def engine(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.send(wire.metadata("conv_sig", "pcm_16000", "pcm_16000"))
        await ws.wait_closed()

    async with serve(engine, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        url = (f"ws://127.0.0.1:{port}/v1/convai/conversation?agent_id=a"
               f"&conversation_signature={quote(signature, safe='')}")
        async with EngineClient(static_url(url), Collector()):
            pass
    # Ours only: the test's own websockets server logs the request line it received, unredacted.
    logged = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("websockets.server"))
    assert "GET /v1/convai/conversation" in logged  # the request line was logged ...
    for form in (signature, quote(signature, safe=""), quote(signature, safe="").lower()):
        assert form not in logged  # ... without the signature in any form


# ------------------------------------------------------------------------------------------ xi-api-key transport


async def serve_every_path(handler: Callable[[web.Request], Awaitable[web.Response]]) -> tuple[web.AppRunner, str]:
    """A loopback HTTP server answering every method and path with ``handler``; its runner and base URL."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def test_the_api_key_never_follows_a_redirect() -> None:
    # Before: aiohttp followed a 302 and sent xi-api-key along to wherever it pointed.
    from transport.engine_admin import EngineAdmin, EngineRef

    seen_keys: list[str] = []

    async def elsewhere(request: web.Request) -> web.Response:
        seen_keys.append(request.headers.get("xi-api-key", ""))
        return web.json_response({"signed_url": "wss://evil.example/x", "agent_id": "a"})

    target_runner, target_base = await serve_every_path(elsewhere)
    target_url = f"{target_base}/steal"

    async def redirect(_: web.Request) -> web.Response:
        raise web.HTTPFound(target_url)

    runner, base = await serve_every_path(redirect)
    try:
        with pytest.raises(EngineError, match="redirected"):
            await fetch_signed_url(FAKE_KEY, "a", base_url=base)
        with pytest.raises(EngineError, match="redirected"):
            await EngineAdmin(FAKE_KEY, base_url=base).get(EngineRef.of("agent_x", "auto"))
        assert seen_keys == []
    finally:
        await runner.cleanup()
        await target_runner.cleanup()


@pytest.mark.parametrize(("base", "ok"), [("https://api.elevenlabs.io", True), ("http://127.0.0.1:8080", True),
                                          ("http://localhost:1", True), ("http://api.elevenlabs.io", False),
                                          ("http://10.0.0.5", False), ("ftp://api.elevenlabs.io", False)])
def test_the_api_key_only_travels_over_https_except_to_loopback(base: str, ok: bool) -> None:
    from core.errors import ConfigError
    from transport.engine_admin import EngineAdmin

    if ok:
        signed_url_provider(FAKE_KEY, "a", base_url=base)
        EngineAdmin(FAKE_KEY, base_url=base)
    else:
        with pytest.raises(ConfigError, match="https"):
            signed_url_provider(FAKE_KEY, "a", base_url=base)
        with pytest.raises(ConfigError, match="https"):
            EngineAdmin(FAKE_KEY, base_url=base)
