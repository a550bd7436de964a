"""The emulator enforces the agent's override permissions and dynamic variables like the service, speaks the first
message, and records contextual updates (emulator/overrides.py)."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from websockets.exceptions import ConnectionClosed

from core.formats import parse_format
from emulator import Emulator
from tests.engine_fixtures import audio_of, chunks, fast, raw, running, utterance

PCM16 = parse_format("pcm_16000")


def init(overrides: dict[str, Any] | None = None, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"type": "conversation_initiation_client_data", "conversation_config_override": overrides or {},
            "dynamic_variables": variables or {}}


async def patch(emu: Emulator, path: str, body: dict[str, Any]) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.patch(
            f"{emu.rest_base_url}{path}", headers={"xi-api-key": emu.api_key}, json=body) as response:
        assert response.status == 200, await response.text()
        result: dict[str, Any] = await response.json()
        return result


async def refused(emu: Emulator, message: dict[str, Any]) -> dict[str, Any]:
    """Send ``message`` as the init; return the error event after asserting no metadata and close 1008."""
    async with raw(emu.public_url()) as client:
        await client.send(message)
        first = await client.recv()
        assert first["type"] == "error", f"expected a refusal, got {first['type']}"
        with pytest.raises(ConnectionClosed):
            await client.recv()
        assert client.ws.close_code == 1008
    event: dict[str, Any] = first["error_event"]
    assert event["code"] == 1008
    return event


async def test_an_override_the_agent_does_not_allow_is_refused_with_1008() -> None:
    async with running(fast(require_auth=False)) as emu:
        event = await refused(emu, init({"agent": {"first_message": "Hi"}}))
        assert event["error_type"] == "override_error" and "agent.first_message" in event["message"]
        conversation = await emu.next_conversation()
        await conversation.wait_closed()
        assert conversation.sent("conversation_initiation_metadata") == []

        # Allowing the first message (Speech Engine view) does not allow the language.
        engine = await patch(emu, "/v1/speech-engine/agent_emulator", {"overrides": {"first_message": True}})
        assert engine["overrides"] == {"first_message": True}
        event = await refused(emu, init({"agent": {"first_message": "Hi", "language": "de"}}))
        assert event["error_type"] == "override_error" and "agent.language" in event["message"]


async def test_the_first_message_override_is_spoken_with_its_variables() -> None:
    async with running(fast(require_auth=False)) as emu:
        agent = await patch(emu, "/v1/convai/agents/agent_emulator", {"platform_settings": {"overrides": {
            "conversation_config_override": {"agent": {"first_message": True}}}}})
        assert agent["platform_settings"]["overrides"]["conversation_config_override"]["agent"] == {
            "first_message": True}
        async with raw(emu.public_url()) as client:
            await client.send(init({"agent": {"first_message": "Hello {{name}}, welcome back."}}, {"name": "Ada"}))
            await client.next("conversation_initiation_metadata")
            response = await client.next("agent_response")
            assert response["agent_response_event"]["agent_response"] == "Hello Ada, welcome back."
            event_id = response["agent_response_event"]["event_id"]
            conversation = await emu.next_conversation()
            reply = await conversation.next_reply()
            await conversation.wait_for(lambda: reply.end_ns is not None)
            assert conversation.first_message == "Hello Ada, welcome back." and reply.event_id == event_id
            for _ in range(reply.chunks_sent):
                await client.next("audio")
            heard = audio_of(client.received, PCM16, event_id)
            assert heard.size == reply.samples.size > PCM16.rate // 2  # at least half a second of speech


async def test_an_empty_first_message_makes_the_agent_wait() -> None:
    async with running(fast(require_auth=False, greeting_ms=800)) as emu:
        # Without an override the agent greets (here the emulator's speech-like greeting)...
        async with raw(emu.public_url()) as client:
            await client.send(init())
            await client.next("agent_response")
        await emu.next_conversation()
        # ...with first_message "" (allowed) it waits for the user.
        await patch(emu, "/v1/speech-engine/agent_emulator", {"overrides": {"first_message": True}})
        async with raw(emu.public_url()) as client:
            await client.send(init({"agent": {"first_message": ""}}))
            await client.next("conversation_initiation_metadata")
            conversation = await emu.next_conversation()
            for chunk in chunks(utterance(), PCM16):
                await client.audio(chunk)
            reply = await conversation.next_reply()
            assert reply.utterance is not None  # the first reply answers the user: nothing came before it
            assert len(conversation.replies) == 1


async def test_a_missing_dynamic_variable_is_refused() -> None:
    async with running(fast(require_auth=False)) as emu:
        await patch(emu, "/v1/convai/agents/agent_emulator", {"conversation_config": {"agent": {
            "first_message": "Hi {{customer}}", "prompt": {"prompt": "Help {{customer}} with {{ product }}."}}}})
        event = await refused(emu, init(variables={"customer": "Ada"}))
        assert event["error_type"] == "missing_dynamic_variable" and "product" in event["message"]
        async with raw(emu.public_url()) as client:  # given both: the agent's own first message, filled in
            await client.send(init(variables={"customer": "Ada", "product": "the router"}))
            response = await client.next("agent_response")
            assert response["agent_response_event"]["agent_response"] == "Hi Ada"


async def test_contextual_updates_are_recorded_and_the_next_reply_knows_the_latest() -> None:
    async with running(fast(require_auth=False, reply_mode="tone")) as emu, raw(emu.public_url()) as client:
        await client.init()
        await client.send({"type": "contextual_update", "text": "The caller is on the pricing page."})
        await client.send({"type": "contextual_update", "text": "Their order 4711 shipped today.",
                           "context_id": "order"})
        conversation = await emu.next_conversation()
        await conversation.wait_for(lambda: len(conversation.contextual_updates) == 2)
        assert [(u.text, u.context_id) for u in conversation.contextual_updates] == [
            ("The caller is on the pricing page.", None), ("Their order 4711 shipped today.", "order")]
        await client.send({"type": "user_message", "text": "Where is my order?"})
        response = await client.next("agent_response")
        assert "order 4711 shipped today" in response["agent_response_event"]["agent_response"]
        assert conversation.user_messages == ["Where is my order?"]
