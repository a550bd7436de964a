"""The emulator's brain side against the official SDK's ``SpeechEngineServer`` and against misbehaving brains.

Turns are typed (``user_message``) where the words matter and spoken where the placeholder transcript does;
every test asserts on what the brain received and on what the conversation socket carried (texts, audio).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.server import ServerConnection

from core.formats import parse_format
from emulator import Conversation, Emulator
from emulator import brain_protocol as bp
from emulator.records import Reply
from emulator.tts import synthesize
from tests.brain_fixtures import (
    is_speech_like,
    raw_brain,
    require_espeak,
    require_sdk,
    sdk_brain,
    until_brain_pongs,
    voiced_seconds,
)
from tests.engine_fixtures import RawClient, audio_of, chunks, fast, raw, running
from transport.engine_admin import EngineAdmin, EngineRef, brain_secret_patch

KEY = "sk_emulator_brain_test_0123456789"


def brain_config(url: str, **changes: Any) -> Any:
    return fast(**{"api_key": KEY, "require_auth": False, "brain_url": url, "brain_ping_interval_s": None,
                   **changes})


async def say(client: RawClient, text: str) -> None:
    await client.send({"type": "user_message", "text": text})


async def finished(conversation: Conversation, count: int, timeout: float = 15.0) -> Reply:
    """The ``count``-th reply once it has been spoken to the end (all its audio sent)."""
    await conversation.wait_for(lambda: len(conversation.replies) >= count and conversation.replies[count - 1].done,
                                timeout)
    return conversation.replies[count - 1]


async def played(reply: Reply) -> None:
    """Until the client has played ``reply`` at real time (audio goes out faster than that)."""
    if reply.start_ns is not None:
        await asyncio.sleep(max(0.0, (reply.start_ns + reply.duration_ns - time.monotonic_ns()) / 1e9) + 0.05)


def sent_audio(conversation: Conversation, fmt: Any, event_id: int) -> np.ndarray:
    messages = [json.loads(r.text) for r in conversation.sent("audio") if r.text is not None]
    return audio_of(messages, fmt, event_id)


def client_texts(conversation: Conversation, event_id: int | None = None) -> list[str]:
    out = []
    for record in conversation.sent("agent_response"):
        assert record.text is not None
        event = json.loads(record.text)["agent_response_event"]
        if event_id is None or event["event_id"] == event_id:
            out.append(event["agent_response"])
    return out


class Recorder:
    """SDK handlers that keep every transcript and answer each with a fixed streamed text."""

    def __init__(self, reply: Any = None, delay_s: float = 0.0) -> None:
        self.transcripts: list[list[tuple[str, str]]] = []
        self.inits: list[str] = []
        self.closed = 0
        self.cancelled = 0
        self._reply = reply or (lambda n: f"Answer number {n}. It has two sentences.")
        self._delay = delay_s

    def handlers(self) -> dict[str, Any]:
        return {"on_init": self.on_init, "on_transcript": self.on_transcript, "on_close": self.on_close}

    async def on_init(self, conversation_id: str, session: Any) -> None:
        self.inits.append(conversation_id)

    async def on_close(self, session: Any) -> None:
        self.closed += 1

    async def on_transcript(self, transcript: list[Any], session: Any) -> None:
        self.transcripts.append([(m.role, m.content) for m in transcript])
        text = self._reply(len(self.transcripts))

        async def stream() -> Any:
            try:
                for word in text.split(" "):
                    yield word + " "
                    await asyncio.sleep(self._delay)
            except asyncio.CancelledError:
                self.cancelled += 1
                raise

        await session.send_response(stream())


# ------------------------------------------------------------------ the signed upgrade


def test_the_sdk_verifies_the_emulators_jwt_and_refuses_another_key() -> None:
    speech_engine = require_sdk()
    now = int(time.time())
    token = bp.speech_engine_jwt(KEY, now)
    claims = speech_engine.verify_speech_engine_jwt(token, KEY)
    assert claims["iss"] == bp.JWT_ISSUER and claims["sub"] == bp.JWT_SUBJECT
    assert claims["exp"] > claims["iat"] == now
    assert speech_engine.verify_speech_engine_jwt(f"Bearer {token}", KEY)["sub"] == bp.JWT_SUBJECT
    # A data-residency key signs with its base key, as the SDK expects.
    assert speech_engine.verify_speech_engine_jwt(bp.speech_engine_jwt(KEY + "_residency_eu", now), KEY)
    with pytest.raises(ValueError, match="signature"):
        speech_engine.verify_speech_engine_jwt(bp.speech_engine_jwt("sk_someone_else_000", now), KEY)
    with pytest.raises(ValueError, match="expired"):
        speech_engine.verify_speech_engine_jwt(bp.speech_engine_jwt(KEY, now - 1000, ttl_s=60), KEY)


async def test_an_sdk_brain_accepts_the_emulator_and_hears_init_and_close() -> None:
    recorder = Recorder()
    async with sdk_brain(KEY, **recorder.handlers()) as url, running(brain_config(url)) as emu, \
            raw(emu.public_url()) as client:
        await client.init()
        conversation = await emu.next_conversation()
        assert conversation.voice is not None
        await conversation.wait_for(lambda: conversation.voice is not None and conversation.voice.link.opened)
        await say(client, "hello")
        await finished(conversation, 1)
        await client.ws.close()
        await conversation.wait_closed()
        async with asyncio.timeout(5):
            while recorder.closed == 0:
                await asyncio.sleep(0.02)
    assert recorder.inits == [conversation.conversation_id]
    assert [r.type for r in conversation.voice.link.sent()] == ["init", "user_transcript", "close"]


async def test_an_sdk_brain_with_another_key_refuses_and_the_conversation_ends_1002() -> None:
    async with sdk_brain("sk_a_different_key_0000", **Recorder().handlers()) as url, \
            running(brain_config(url)) as emu, raw(emu.public_url()) as client:
        await client.init()
        error = await client.next("error")
        conversation = await emu.next_conversation()
        await conversation.wait_closed()
    assert error["error_event"]["error_type"] == "cascade_brain_error"
    assert "401" in error["error_event"]["message"]
    assert conversation.close_code == 1002


async def test_a_brain_that_is_not_there_ends_the_conversation() -> None:
    async with running(brain_config("ws://127.0.0.1:9/", brain_connect_timeout_s=2.0)) as emu, \
            raw(emu.public_url()) as client:
        await client.init()
        error = await client.next("error")
        conversation = await emu.next_conversation()
        await conversation.wait_closed()
    assert error["error_event"]["error_type"] == "cascade_brain_error"
    assert conversation.close_code == 1002


async def test_the_configured_request_headers_reach_the_brain() -> None:
    seen: list[dict[str, str]] = []

    async def brain(ws: ServerConnection) -> None:
        assert ws.request is not None
        seen.append(dict(ws.request.headers))
        async for _ in ws:
            pass

    async with raw_brain(brain) as url, running(brain_config("")) as emu, raw(emu.public_url()) as client:
        # Set through the REST resource with the project's own admin client, as against the real service.
        admin = EngineAdmin(emu.api_key, base_url=emu.rest_base_url)
        ref = EngineRef.of(emu.config.agent_id, "speech-engine")
        current = await admin.get(ref)
        await admin.patch(ref, brain_secret_patch(ref, current, "X-Brain-Secret", "s3cret", url=url))
        current = await admin.get(ref)
        await admin.patch(ref, brain_secret_patch(ref, current, "X-Vault", {"secret_id": "sec_1"}))
        await client.init()
        conversation = await emu.next_conversation()
        await conversation.wait_for(lambda: bool(seen))
    headers = {k.lower(): v for k, v in seen[0].items()}
    assert headers["x-brain-secret"] == "s3cret"
    assert "x-vault" not in headers  # a workspace secret cannot be resolved locally
    assert require_sdk().verify_speech_engine_jwt(headers[bp.AUTH_HEADER.lower()], KEY)["sub"] == bp.JWT_SUBJECT


# ------------------------------------------------------------------ turns and history


async def test_the_brain_gets_the_whole_history_in_order_with_increasing_ids() -> None:
    require_espeak()
    recorder = Recorder(lambda n: f"Reply {n}.")
    async with sdk_brain(KEY, **recorder.handlers()) as url, running(brain_config(url)) as emu, \
            raw(emu.public_url()) as client:
        await client.init()
        conversation = await emu.next_conversation()
        for k, text in enumerate(("first question", "second question", "third question"), start=1):
            await say(client, text)
            await played(await finished(conversation, k))
        assert conversation.voice is not None
        sent = [json.loads(r.text) for r in conversation.voice.link.sent("user_transcript")]
    assert recorder.transcripts == [
        [("user", "first question")],
        [("user", "first question"), ("agent", "Reply 1."), ("user", "second question")],
        [("user", "first question"), ("agent", "Reply 1."), ("user", "second question"), ("agent", "Reply 2."),
         ("user", "third question")],
    ]
    ids = [m["event_id"] for m in sent]
    assert ids == sorted(set(ids)) and len(ids) == 3
    # The spoken replies carry the same ids on the conversation socket, and say the brain's words.
    assert [r.event_id for r in conversation.replies] == ids
    assert [client_texts(conversation, i) for i in ids] == [["Reply 1."], ["Reply 2."], ["Reply 3."]]


async def test_a_spoken_turn_gives_the_brain_a_placeholder_and_the_caller_hears_speech() -> None:
    require_espeak()
    recorder = Recorder(lambda n: "Hello there. This is the brain speaking through espeak.")
    fmt = parse_format("pcm_16000")
    async with sdk_brain(KEY, **recorder.handlers()) as url, running(brain_config(url)) as emu, \
            raw(emu.public_url()) as client:
        await client.init()
        conversation = await emu.next_conversation()
        spoken = await synthesize("Can you hear me?", fmt.rate)
        silence = np.zeros(fmt.rate // 2, np.int16)
        for data in chunks(np.concatenate([spoken, silence]), fmt):
            await client.audio(data)
        reply = await finished(conversation, 1)
        await asyncio.sleep(0.2)
    utterance = conversation.utterances[0]
    heard_s = (utterance.end_sample - utterance.start_sample) / fmt.rate
    assert recorder.transcripts[0] == [("user", f"[speech {heard_s:.1f} s]")]
    assert abs(heard_s - voiced_seconds(spoken, fmt.rate)) < 0.25
    audio = sent_audio(conversation, fmt, reply.event_id)
    expected = await synthesize("Hello there.", fmt.rate), await synthesize("This is the brain speaking through "
                                                                             "espeak.", fmt.rate)
    assert reply.phrases == ["Hello there.", "This is the brain speaking through espeak."]
    assert audio.size == sum(e.size for e in expected)
    assert is_speech_like(audio, fmt.rate)
    assert client_texts(conversation) == reply.phrases


# ------------------------------------------------------------------ interruption


async def test_an_interrupting_turn_cancels_the_running_response() -> None:
    require_espeak()
    long = " ".join(f"Old sentence {k}." for k in range(1, 30))
    recorder = Recorder(lambda n: long if n == 1 else "New answer.", delay_s=0.05)
    async with sdk_brain(KEY, **recorder.handlers()) as url, running(brain_config(url)) as emu, \
            raw(emu.public_url()) as client:
        await client.init()
        conversation = await emu.next_conversation()
        await say(client, "tell me a long story")
        first = await conversation.next_reply()
        await asyncio.sleep(1.0)  # the caller hears a second or so of it
        await say(client, "stop, something else")
        second = await finished(conversation, 2)
        await asyncio.sleep(1.0)  # room for any late text of the old turn to arrive (and be dropped)
    assert first.interrupted_ns is not None and first.end_ns is None
    assert recorder.cancelled == 1  # the SDK cancelled the old handler when the new transcript came
    old_words = [p for p in first.phrases if p.startswith("Old")]
    assert 0 < len(old_words) < 29
    assert second.phrases == ["New answer."]
    after = [r for r in conversation.sent() if r.ns > first.interrupted_ns]
    assert not any(r.event_id == first.event_id and r.type in ("audio", "agent_response") for r in after)
    assert all("Old" not in text for text in client_texts(conversation, second.event_id))
    # The history the brain got holds only what was heard of the old answer.
    roles = [role for role, _ in recorder.transcripts[1]]
    assert roles == ["user", "agent", "user"]
    agent_said = recorder.transcripts[1][1][1]
    assert agent_said.startswith("Old") and long.startswith(agent_said) and len(agent_said) < len(long) / 4


async def test_late_text_for_an_older_turn_is_never_spoken() -> None:
    """A brain that ignores cancellation and keeps streaming the old answer after the new transcript."""
    require_espeak()
    transcripts: list[int] = []

    async def brain(ws: ServerConnection) -> None:
        async for raw_message in ws:
            message = json.loads(raw_message)
            if message["type"] != "user_transcript":
                continue
            event_id = message["event_id"]
            transcripts.append(event_id)
            if len(transcripts) == 1:
                await ws.send(json.dumps({"type": "agent_response", "content": "Old one. ", "event_id": event_id,
                                          "is_final": False}))
            else:
                old = transcripts[0]
                for k in range(3):
                    await ws.send(json.dumps({"type": "agent_response", "content": f"Stale {k}. ",
                                              "event_id": old, "is_final": False}))
                await ws.send(json.dumps({"type": "agent_response", "content": "Fresh.", "event_id": event_id,
                                          "is_final": False}))
                await ws.send(json.dumps({"type": "agent_response", "content": "", "event_id": event_id,
                                          "is_final": True}))

    async with raw_brain(brain) as url, running(brain_config(url)) as emu, raw(emu.public_url()) as client:
        await client.init()
        conversation = await emu.next_conversation()
        await say(client, "one")
        await conversation.next_reply()
        await say(client, "two")
        second = await finished(conversation, 2)
    assert conversation.voice is not None and conversation.voice.stale_responses == 3
    assert second.phrases == ["Fresh."]
    assert not any("Stale" in text for text in client_texts(conversation))


# ------------------------------------------------------------------ misbehaving brains


async def test_a_brain_closing_mid_turn_ends_the_conversation_1002() -> None:
    async def brain(ws: ServerConnection) -> None:
        async for raw_message in ws:
            if json.loads(raw_message)["type"] == "user_transcript":
                await ws.send(json.dumps({"type": "agent_response", "content": "I was about to", "event_id": 1,
                                          "is_final": False}))
                await ws.close(1011, "brain crashed")
                return

    async with raw_brain(brain) as url, running(brain_config(url)) as emu, raw(emu.public_url()) as client:
        await client.init()
        conversation = await emu.next_conversation()
        await say(client, "hello")
        error = await client.next("error")
        await conversation.wait_closed()
    assert error["error_event"]["error_type"] == "cascade_brain_error"
    assert "1011" in error["error_event"]["message"]
    assert conversation.close_code == 1002


async def test_a_silent_brain_loses_the_turn_but_not_the_conversation() -> None:
    require_espeak()
    turns: list[int] = []

    async def brain(ws: ServerConnection) -> None:
        async for raw_message in ws:
            message = json.loads(raw_message)
            if message["type"] == "user_transcript":
                turns.append(message["event_id"])
                if len(turns) == 2:  # the first turn gets no answer at all
                    await ws.send(json.dumps({"type": "agent_response", "content": "Back again.",
                                              "event_id": message["event_id"], "is_final": True}))

    async with raw_brain(brain) as url, running(brain_config(url, brain_response_timeout_s=0.5)) as emu, \
            raw(emu.public_url()) as client:
        await client.init()
        conversation = await emu.next_conversation()
        await say(client, "anyone there?")
        first = await finished(conversation, 1)
        await say(client, "hello?")
        second = await finished(conversation, 2)
        assert not conversation.ended
    assert conversation.voice is not None and conversation.voice.given_up == [first.event_id]
    assert first.phrases == [] and first.samples.size == 0
    assert second.phrases == ["Back again."]


async def test_a_brain_sending_garbage_gets_an_error_and_the_conversation_goes_on() -> None:
    require_espeak()
    errors: list[str] = []

    async def brain(ws: ServerConnection) -> None:
        async for raw_message in ws:
            message = json.loads(raw_message)
            if message["type"] == "error":
                errors.append(message["message"])
            if message["type"] == "user_transcript":
                await ws.send("not json {")
                await ws.send(json.dumps({"type": "agent_response", "content": 5, "event_id": 1, "is_final": 1}))
                await ws.send(json.dumps({"type": "agent_response", "content": "Fine.",
                                          "event_id": message["event_id"], "is_final": True}))

    async with raw_brain(brain) as url, running(brain_config(url)) as emu, raw(emu.public_url()) as client:
        await client.init()
        conversation = await emu.next_conversation()
        await say(client, "hello")
        reply = await finished(conversation, 1)
        await conversation.wait_for(lambda: len(errors) == 2)
    assert reply.phrases == ["Fine."]
    assert conversation.voice is not None and conversation.voice.link.invalid == 2


async def test_pings_are_answered_by_the_sdk_and_an_unanswering_brain_ends_the_conversation() -> None:
    async with sdk_brain(KEY, **Recorder().handlers()) as url, \
            running(brain_config(url, brain_ping_interval_s=0.1)) as emu, raw(emu.public_url()) as client:
        await client.init()
        conversation = await emu.next_conversation()
        await until_brain_pongs(conversation, 3)
        assert not conversation.ended

    async def deaf(ws: ServerConnection) -> None:
        async for _ in ws:
            pass

    async with raw_brain(deaf) as url, \
            running(brain_config(url, brain_ping_interval_s=0.1, brain_pong_timeout_s=0.4)) as emu, \
            raw(emu.public_url()) as client:
        await client.init()
        error = await client.next("error")
        conversation = await emu.next_conversation()
        await conversation.wait_closed()
    assert "ping" in error["error_event"]["message"] and conversation.close_code == 1002


def test_the_segmenter_cuts_at_phrase_ends_whatever_the_pieces() -> None:
    text = "Hello there! How are you? I am fine: thanks. And a tail"
    whole = bp.Segmenter()
    one_by_one = bp.Segmenter()
    expected = ["Hello there!", "How are you?", "I am fine:", "thanks.", "And a tail"]
    assert whole.push(text) + whole.flush() == expected
    assert [p for ch in text for p in one_by_one.push(ch)] + one_by_one.flush() == expected
    long = bp.Segmenter(max_chars=20)
    assert long.push("word " * 10) == ["word word word word", "word word word word"]


async def test_emulator_without_brain_is_unchanged() -> None:
    async with running(fast(require_auth=False)) as emu, raw(emu.public_url()) as client:
        await client.init()
        conversation: Conversation = await emu.next_conversation()
        await say(client, "hi")
        await finished(conversation, 1)
    assert conversation.voice is None and conversation.replies[0].mode == "tone"
    assert isinstance(emu, Emulator)


async def test_the_speech_oracle_tells_espeak_from_a_tone_and_from_noise() -> None:
    require_espeak()
    from emulator.signals import tone

    speech = await synthesize("This is a sentence spoken by the synthesizer.", 16000)
    assert is_speech_like(speech, 16000)
    assert not is_speech_like(tone(16000, 3000, 440.0), 16000)
    noise = np.random.default_rng(1).normal(0, 3000, 48000).astype(np.int16)
    assert not is_speech_like(noise, 16000)
    assert abs(voiced_seconds(np.concatenate([np.zeros(8000, np.int16), speech]), 16000)
               - voiced_seconds(speech, 16000)) < 0.011


def test_the_wave_parser_takes_espeaks_pipe_header_and_refuses_other_formats() -> None:
    import struct

    from emulator.tts import TtsUnavailable, parse_wav_stream

    def wav(fmt: int = 1, channels: int = 1, bits: int = 16, rate: int = 22050, body: bytes = b"\x01\x00\xff\xff\x07"
            ) -> bytes:
        fmt_chunk = b"fmt " + struct.pack("<IHHIIHH", 16, fmt, channels, rate, rate * 2, 2, bits)
        # Written to a pipe, espeak-ng leaves the size fields at 0x7fffffff: they must not be trusted.
        return b"RIFF" + struct.pack("<I", 0x7FFFFFFF) + b"WAVE" + fmt_chunk + b"data" + struct.pack("<I", 0x7FFFFFFF) \
            + body

    samples, rate = parse_wav_stream(wav())
    assert rate == 22050 and samples.tolist() == [1, -1]  # the odd trailing byte is dropped
    for bad in (wav(fmt=3), wav(channels=2), wav(bits=8), b"RIFX", b"RIFF\x00\x00\x00\x00WAVE"):
        with pytest.raises(TtsUnavailable):
            parse_wav_stream(bad)
