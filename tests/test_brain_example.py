"""examples/brain_server.py: its rule-based answers, and the whole example served by the SDK to the emulator."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest

from scripts.ports import free_tcp_port
from tests.brain_fixtures import require_espeak, require_sdk
from tests.engine_fixtures import fast, raw, running

KEY = "sk_example_brain_0123456789"


def messages(*pairs: tuple[str, str]) -> list[object]:
    speech_engine = require_sdk()
    return [speech_engine.ConversationMessage(role=r, content=c) for r, c in pairs]


@pytest.mark.parametrize(("said", "start"), [
    ("Hello there", "Hello!"), ("what's the weather like", "I cannot see the sky"),
    ("what time is it", "It is 00:00"), ("ok bye", "Goodbye"), ("", "Sorry"), ("purple monkeys", "You said: purple"),
])
def test_rules(said: str, start: str) -> None:
    from examples.brain_server import answer

    assert answer(messages(("user", said)), now_s=0).startswith(start)


def test_a_placeholder_transcript_is_answered_honestly() -> None:
    from examples.brain_server import answer

    history = messages(("user", "hi"), ("agent", "Hello!"), ("user", "[speech 1.4 s]"))
    reply = answer(history)
    assert "1.4 seconds" in reply and "no speech recognition" in reply and "turn 2" in reply


async def test_the_example_streams_its_answer_in_pieces_to_the_emulator() -> None:
    require_espeak()
    from examples.brain_server import build_server
    from tests.brain_fixtures import _until_listening

    port = free_tcp_port()
    server = build_server(port=port, api_key=KEY, piece_delay_s=0.01)
    task = asyncio.create_task(server.serve())
    try:
        await _until_listening(port)
        config = fast(api_key=KEY, require_auth=False, brain_url=f"ws://127.0.0.1:{port}/", brain_ping_interval_s=None)
        async with running(config) as emu, raw(emu.public_url()) as client:
            await client.init()
            conversation = await emu.next_conversation()
            await client.send({"type": "user_message", "text": "hello"})
            await conversation.wait_for(lambda: bool(conversation.replies) and conversation.replies[0].done, 15)
            assert conversation.voice is not None
            pieces = [json.loads(r.text) for r in conversation.voice.link.received("agent_response")]
    finally:
        await server.stop()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(task, 5)
    reply = conversation.replies[0]
    assert " ".join(reply.phrases) == "Hello! This is the example brain speaking through the emulator. How can I help?"
    assert len(pieces) > 10 and pieces[-1]["is_final"] and pieces[-1]["content"] == ""
    assert reply.samples.size > conversation.output_format.rate  # over a second of speech
