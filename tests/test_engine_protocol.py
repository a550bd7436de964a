"""The sans-I/O engine protocol: parsing, building, the stale-audio gate, ping bookkeeping, fuzzing."""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.errors import ConfigError, ProtocolError
from core.formats import ENGINE_FORMATS, AudioFormat
from emulator import wire
from transport.engine_protocol import (
    AgentAudio,
    AgentChatResponsePart,
    AgentResponse,
    AgentResponseCorrection,
    AgentToolRequest,
    AgentToolResponse,
    Alignment,
    ClientToolCall,
    ConversationMetadata,
    EngineErrorEvent,
    EngineProtocol,
    InternalTentativeAgentResponse,
    Interruption,
    Ping,
    TentativeUserTranscript,
    UnknownEvent,
    UserTranscript,
    VadScore,
)


def ready(output: str = "pcm_16000", input_: str = "pcm_16000") -> EngineProtocol:
    p = EngineProtocol()
    p.receive(wire.metadata("conv_1", input_, output))
    return p


def pcm(*samples: int) -> bytes:
    return np.array(samples, dtype="<i2").tobytes()


# ------------------------------------------------------------------------------------------ server → client


def test_metadata_parses_formats() -> None:
    p = EngineProtocol()
    assert p.receive(wire.metadata("conv_9", "ulaw_8000", "pcm_44100")) == [
        ConversationMetadata("conv_9", AudioFormat("ulaw", 8000), AudioFormat("pcm", 44100))]
    assert p.conversation_id == "conv_9"
    assert p.input_format == AudioFormat("ulaw", 8000)
    assert p.output_format == AudioFormat("pcm", 44100)


@pytest.mark.parametrize("name", ENGINE_FORMATS)
def test_every_format_string_both_ways(name: str) -> None:
    p = EngineProtocol()
    [event] = p.receive(wire.metadata("c", name, name))
    assert isinstance(event, ConversationMetadata)
    assert event.input_format.name == name and event.output_format.name == name
    # One sample's worth of bytes decodes to audio in that format.
    chunk = bytes(event.output_format.bytes_per_sample * 4)
    [audio] = p.receive(wire.audio(chunk, 1))
    assert isinstance(audio, AgentAudio) and audio.audio == chunk


def test_unknown_format_is_a_clear_error() -> None:
    p = EngineProtocol()
    with pytest.raises(ProtocolError, match="mp3_44100") as info:
        p.receive(wire.metadata("c", "pcm_16000", "mp3_44100"))
    assert info.value.kind == "unknown_format"
    assert p.metadata is None


def test_missing_input_format_falls_back_like_the_js_sdk() -> None:
    text = json.dumps({"type": "conversation_initiation_metadata", "conversation_initiation_metadata_event": {
        "conversation_id": "c", "agent_output_audio_format": "pcm_24000"}})
    [event] = EngineProtocol().receive(text)
    assert isinstance(event, ConversationMetadata) and event.input_format == AudioFormat("pcm", 16000)


def test_audio_round_trip_with_alignment() -> None:
    p = ready()
    alignment = {"chars": ["h", "i"], "char_start_times_ms": [0, 40], "char_durations_ms": [40, 60]}
    [event] = p.receive(wire.audio(pcm(1, -2, 32767, -32768), 7, alignment))
    assert event == AgentAudio(pcm(1, -2, 32767, -32768), 7, Alignment(("h", "i"), (0, 40), (40, 60)))
    assert np.array_equal(AudioFormat("pcm", 16000).decode(event.audio), [1, -2, 32767, -32768])
    assert p.counters.audio_chunks == 1 and p.counters.audio_bytes == 8
    assert p.last_audio_event_id == 7


def test_bad_alignment_keeps_the_audio() -> None:
    p = ready()
    [event] = p.receive(wire.audio(pcm(5), 1, {"chars": "nope"}))
    assert isinstance(event, AgentAudio) and event.alignment is None and event.audio == pcm(5)
    assert p.counters.bad_alignment == 1


def test_ulaw_audio_may_have_odd_length() -> None:
    p = ready(output="ulaw_8000")
    [event] = p.receive(wire.audio(b"\xff\x7f\x00", 1))
    assert isinstance(event, AgentAudio) and event.audio == b"\xff\x7f\x00"


SERVER_ROUND_TRIPS: list[tuple[str, Any]] = [
    (wire.interruption(4), Interruption(4)),
    (wire.interruption(4, reason="user_speech"), Interruption(4, "user_speech")),
    (wire.ping(2, None), Ping(2, None)),
    (wire.ping(3, 41), Ping(3, 41)),
    (wire.user_transcript("hello", 5), UserTranscript("hello", 5)),
    (wire.tentative_user_transcript("hel", 5), TentativeUserTranscript("hel", 5)),
    (wire.agent_response("hi there", 5), AgentResponse("hi there", 5)),
    (wire.agent_response_correction("hi there", "hi", 5), AgentResponseCorrection("hi there", "hi", 5)),
    (wire.agent_chat_response_part("", "start", 6), AgentChatResponsePart("", "start", 6)),
    (wire.agent_chat_response_part("tok", "delta", 6), AgentChatResponsePart("tok", "delta", 6)),
    (wire.vad_score(0.75), VadScore(0.75)),
    (wire.client_tool_call("lookup", "tc_1", {"q": 1}, 8, True),
     ClientToolCall("lookup", "tc_1", {"q": 1}, 8, True)),
    (wire.agent_tool_request("lookup", "tc_1", "client", 8), AgentToolRequest("lookup", "tc_1", "client", 8)),
    (wire.agent_tool_response("end_call", "tc_2", "system", 9),
     AgentToolResponse("end_call", "tc_2", "system", False, True, 9)),
    (wire.internal_tentative_agent_response("maybe"), InternalTentativeAgentResponse("maybe")),
    (wire.error(1008, "invalid_message", "bad"), EngineErrorEvent(1008, "invalid_message", "bad", None)),
]


@pytest.mark.parametrize(("text", "expected"), SERVER_ROUND_TRIPS)
def test_server_message_round_trip(text: str, expected: Any) -> None:
    p = ready()
    assert p.receive(text) == [expected]
    assert p.counters.received[json.loads(text)["type"]] == 1


def test_unknown_and_documented_unmodelled_types() -> None:
    p = ready()
    [doc] = p.receive('{"type":"context_usage","context_usage_event":{"event_id":1}}')
    [new] = p.receive('{"type":"brand_new_event","x":1}')
    raw = {"type": "context_usage", "context_usage_event": {"event_id": 1}}
    assert doc == UnknownEvent("context_usage", raw, True)
    assert isinstance(new, UnknownEvent) and new.type == "brand_new_event" and not new.documented
    assert p.counters.unknown_events == 1


# ------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(("text", "kind"), [
    ("not json", "not_json"),
    ("[1, 2]", "not_object"),
    ('{"no_type": 1}', "missing_type"),
    ('{"type": 3}', "missing_type"),
    ('{"type": "audio"}', "missing_field"),
    ('{"type": "audio", "audio_event": {"audio_base_64": "AAAA"}}', "missing_field"),
    ('{"type": "audio", "audio_event": {"audio_base_64": "AAAA", "event_id": "1"}}', "bad_field"),
    ('{"type": "audio", "audio_event": {"audio_base_64": "AAAA", "event_id": true}}', "bad_field"),
    ('{"type": "audio", "audio_event": {"audio_base_64": "!!!!", "event_id": 1}}', "bad_base64"),
    ('{"type": "audio", "audio_event": {"audio_base_64": "AAA", "event_id": 1}}', "bad_base64"),
    ('{"type": "audio", "audio_event": {"audio_base_64": "AAAA", "event_id": 1}}', "odd_length_pcm"),
    ('{"type": "ping", "ping_event": {"event_id": 1, "ping_ms": "fast"}}', "bad_field"),
    ('{"type": "ping", "ping_event": {"event_id": 1, "ping_ms": Infinity}}', "bad_field"),
    ('{"type": "agent_chat_response_part", "text_response_part": {"text": "", "type": "x", "event_id": 1}}',
     "bad_field"),
    ('{"type": "client_tool_call", "client_tool_call": {"tool_name": "a", "tool_call_id": "b", '
     '"parameters": [], "event_id": 1}}', "bad_field"),
    ("[" * 100_000, "not_json"),
    ('{"type": "ping", "ping_event": {"event_id": ' + "9" * 5000 + "}}", "not_json"),
])
def test_malformed_messages_raise_protocol_error_with_kind(text: str, kind: str) -> None:
    p = ready()
    with pytest.raises(ProtocolError) as info:
        p.receive(text)
    assert info.value.kind == kind
    assert p.counters.errors[kind] == 1


def test_audio_before_metadata_is_refused() -> None:
    p = EngineProtocol()
    with pytest.raises(ProtocolError) as info:
        p.receive(wire.audio(pcm(1), 1))
    assert info.value.kind == "audio_before_metadata"


def test_oversize_message() -> None:
    p = EngineProtocol(max_message_chars=100)
    with pytest.raises(ProtocolError) as info:
        p.receive(wire.agent_response("x" * 200, 1))
    assert info.value.kind == "too_large"
    assert p.counters.errors == {"too_large": 1}


def test_binary_frame_is_counted() -> None:
    p = EngineProtocol()
    assert p.binary_frame(10).kind == "binary_frame"
    assert p.counters.errors["binary_frame"] == 1


def _json_values() -> st.SearchStrategy[Any]:
    scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


_TYPES = ["conversation_initiation_metadata", "audio", "interruption", "ping", "user_transcript",
          "tentative_user_transcript", "agent_response", "agent_response_correction",
          "agent_chat_response_part", "vad_score", "client_tool_call", "agent_tool_request",
          "agent_tool_response",
          "internal_tentative_agent_response", "error", "context_usage", "nonsense"]
_KEYS = ["conversation_initiation_metadata_event", "audio_event", "interruption_event", "ping_event",
         "user_transcription_event", "tentative_user_transcription_event", "agent_response_event",
         "agent_response_correction_event", "text_response_part", "vad_score_event", "client_tool_call",
         "agent_tool_request", "agent_tool_response", "tentative_agent_response_internal_event",
         "error_event"]
_FIELDS = ["event_id", "audio_base_64", "ping_ms", "conversation_id", "agent_output_audio_format",
           "user_input_audio_format", "alignment", "user_transcript", "agent_response", "type", "text",
           "parameters", "tool_name", "tool_call_id", "code", "vad_score", "original_agent_response",
           "corrected_agent_response", "tentative_agent_response", "reason"]
_FIELD_VALUES = (st.integers(-3, 2**70)
                 | st.sampled_from(["", "AAAA", "AAA", "////", "pcm_16000", "ulaw_8000", "pcm_1", "é"])
                 | _json_values())


@st.composite
def _plausible_messages(draw: st.DrawFn) -> str:
    payload = draw(st.dictionaries(st.sampled_from(_FIELDS), _FIELD_VALUES, max_size=6))
    message: dict[str, Any] = {"type": draw(st.sampled_from(_TYPES) | st.text(max_size=5))}
    message[draw(st.sampled_from(_KEYS))] = payload if draw(st.booleans()) else draw(_json_values())
    text = json.dumps(message)
    cut = draw(st.integers(0, len(text)))
    return text if draw(st.booleans()) else text[:cut]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text(max_size=200) | _plausible_messages() | _json_values().map(json.dumps),
       with_metadata=st.booleans())
def test_garbage_never_escapes_as_anything_but_protocol_error(text: str, with_metadata: bool) -> None:
    p = ready() if with_metadata else EngineProtocol(max_message_chars=150)
    errors_before = sum(p.counters.errors.values())
    try:
        events = p.receive(text)
    except ProtocolError as exc:
        assert exc.kind and sum(p.counters.errors.values()) == errors_before + 1
    else:
        assert isinstance(events, list)


# ------------------------------------------------------------------------------------------ gate


def test_gate_drops_older_audio_even_when_it_arrives_late() -> None:
    p = ready()
    assert len(p.receive(wire.audio(pcm(1), 3))) == 1
    p.receive(wire.interruption(4))
    # Late chunks of the interrupted reply (id 3) arrive after the interruption: dropped and counted.
    assert p.receive(wire.audio(pcm(1, 2), 3)) == []
    assert p.receive(wire.audio(pcm(3), 3)) == []
    assert p.counters.stale_audio_chunks == 2 and p.counters.stale_audio_bytes == 6
    # The next reply shares the interruption's id (elevenlabs-python #829): it must play.
    [shared] = p.receive(wire.audio(pcm(9), 4))
    assert isinstance(shared, AgentAudio) and shared.event_id == 4 and shared.audio == pcm(9)
    [later] = p.receive(wire.audio(pcm(10), 5))
    assert isinstance(later, AgentAudio) and later.event_id == 5


def test_gate_never_lowers() -> None:
    p = ready()
    p.receive(wire.interruption(10))
    p.receive(wire.interruption(6))  # out of order
    assert p.interrupt_floor == 10
    assert p.receive(wire.audio(pcm(1), 8)) == []
    assert len(p.receive(wire.audio(pcm(1), 10))) == 1


def test_reset_opens_the_gate_for_a_new_conversation_and_keeps_counters() -> None:
    p = ready()
    p.receive(wire.interruption(40))
    p.receive(wire.audio(pcm(1), 39))
    p.receive(wire.ping(7, 12))
    p.reset()
    assert p.metadata is None and p.interrupt_floor == 0 and p.last_ping_id is None
    assert p.data_to_send() == []  # a pong for the old conversation must not reach the new one
    p.receive(wire.metadata("conv_2", "pcm_16000", "pcm_16000"))
    [event] = p.receive(wire.audio(pcm(2), 1))
    assert isinstance(event, AgentAudio) and event.event_id == 1
    assert p.counters.stale_audio_chunks == 1 and p.counters.conversations == 2


def test_empty_audio_is_swallowed_and_counted() -> None:
    p = ready()
    assert p.receive(wire.audio(b"", 1)) == []
    assert p.counters.empty_audio_chunks == 1


# ------------------------------------------------------------------------------------------ ping


def test_ping_queues_pong_and_keeps_bookkeeping() -> None:
    p = EngineProtocol()
    p.receive(wire.ping(1, None))
    p.receive(wire.ping(2, 35))
    p.receive(wire.ping(3, None))
    assert [json.loads(t) for t in p.data_to_send()] == [
        {"type": "pong", "event_id": 1}, {"type": "pong", "event_id": 2}, {"type": "pong", "event_id": 3}]
    assert p.data_to_send() == []
    assert p.last_ping_id == 3 and p.last_ping_ms == 35  # a later null does not erase the last estimate
    assert p.counters.sent["pong"] == 3


def test_float_ping_ms_is_truncated() -> None:
    [event] = EngineProtocol().receive('{"type":"ping","ping_event":{"event_id":1,"ping_ms":12.7}}')
    assert event == Ping(1, 12)


# ------------------------------------------------------------------------------------------ client → server


def test_user_audio_round_trip() -> None:
    p = ready()
    data = pcm(0, 1, -1, 1000)
    parsed = wire.parse_client_message(p.user_audio(data))
    assert parsed == wire.UserAudioChunk(data)
    assert json.loads(p.user_audio(data)) == {"user_audio_chunk": base64.b64encode(data).decode()}
    assert p.counters.sent["user_audio_chunk"] == 2
    # Built without json.dumps: byte for byte what it writes, for every base64 character (+, / and = too).
    every = bytes(range(256)) * 3
    assert p.user_audio(every) == json.dumps({"user_audio_chunk": base64.b64encode(every).decode()},
                                              separators=(",", ":"))


def test_user_audio_rejects_half_samples_for_pcm_only() -> None:
    with pytest.raises(ConfigError):
        ready().user_audio(b"\x00\x01\x02")
    assert wire.parse_client_message(ready(input_="ulaw_8000").user_audio(b"\x01\x02\x03")) == \
        wire.UserAudioChunk(b"\x01\x02\x03")


def test_initiation_round_trip() -> None:
    p = EngineProtocol()
    text = p.initiation(overrides={"agent": {"first_message": ""}}, dynamic_variables={"name": "Ada", "n": 3},
                        custom_llm_extra_body={"temperature": 0.1}, user_id="u-1",
                        source_info={"source": "lk_bridge", "version": "0.1.0"})
    assert wire.parse_client_message(text) == wire.ClientInit(
        {"agent": {"first_message": ""}}, {"name": "Ada", "n": 3}, {"temperature": 0.1}, "u-1",
        {"source": "lk_bridge", "version": "0.1.0"})
    minimal = json.loads(p.initiation())
    assert minimal == {"type": "conversation_initiation_client_data", "conversation_config_override": {},
                       "custom_llm_extra_body": {}, "dynamic_variables": {}}


@pytest.mark.parametrize(("build", "expected"), [
    (lambda p: p.pong(12), wire.Pong(12)),
    (lambda p: p.user_message("hi"), wire.UserMessage("hi")),
    (lambda p: p.user_message("hi", rich_content_id="rc"), wire.UserMessage("hi", "rc")),
    (lambda p: p.contextual_update("ctx"), wire.ContextualUpdate("ctx")),
    (lambda p: p.contextual_update("ctx", context_id="page"), wire.ContextualUpdate("ctx", "page")),
    (lambda p: p.user_activity(), wire.UserActivity()),
    (lambda p: p.client_tool_result("tc", "done"), wire.ClientToolResult("tc", "done", False)),
    (lambda p: p.client_tool_result("tc", {"a": 1}, is_error=True),
     wire.ClientToolResult("tc", '{"a":1}', True)),
    (lambda p: p.feedback(5, "like"), wire.Feedback(5, "like")),
    (lambda p: p.feedback(5, None), wire.Feedback(5, None)),
])
def test_client_message_round_trip(build: Any, expected: Any) -> None:
    p = EngineProtocol()
    assert wire.parse_client_message(build(p)) == expected
    assert sum(p.counters.sent.values()) == 1


def test_outgoing_messages_leave_pong_first_then_control_then_audio_each_bounded() -> None:
    p = EngineProtocol(audio_queue_limit=2)
    p.receive(wire.metadata("conv_1", "pcm_16000", "pcm_16000"))
    assert p.send_audio(b"\x00\x00") and p.send_audio(b"\x01\x00")
    assert not p.send_audio(b"\x02\x00")  # the third chunk is refused: live audio does not wait
    p.send_control(p.user_activity())
    for i in range(40):  # a ping flood while nothing is sent: only the newest 32 pongs are kept
        p.receive(wire.ping(i, None))
    sent = []
    while (text := p.next_to_send()) is not None:
        sent.append(json.loads(text))
    kinds = [m.get("type") or "user_audio_chunk" for m in sent]
    assert kinds == ["pong"] * 32 + ["user_activity"] + ["user_audio_chunk"] * 2
    assert [m["event_id"] for m in sent[:32]] == list(range(8, 40))  # the newest pongs
    assert p.counters.pongs_dropped == 8
    assert p.queued == (0, 0, 0)


@pytest.mark.parametrize(("fmt", "bytes_per_second"), [("pcm_16000", 32_000), ("pcm_48000", 96_000),
                                                       ("ulaw_8000", 8_000)])
def test_an_audio_message_longer_than_the_bound_is_refused_before_decoding(fmt: str, bytes_per_second: int) -> None:
    # Before, any audio message that fit the socket was decoded (and then resampled): 15 MiB of pcm_16000 is
    # six minutes of audio and held the shared loop ~600 ms.
    p = ready(output=fmt)
    p.max_audio_ms_per_message = 1000
    ok = wire.audio(b"\x00" * bytes_per_second, 1)  # exactly 1 s: accepted
    assert [type(e).__name__ for e in p.receive(ok)] == ["AgentAudio"]
    with pytest.raises(ProtocolError) as info:
        p.receive(wire.audio(b"\x00" * (bytes_per_second * 11 // 10), 1))
    assert info.value.kind == "audio_too_long"
    assert p.counters.errors == {"audio_too_long": 1} and p.counters.audio_chunks == 1


def test_the_default_bound_is_ten_seconds_per_message() -> None:
    p = ready()
    assert p.receive(wire.audio(b"\x00" * 320_000, 1))  # 10 s of pcm_16000
    with pytest.raises(ProtocolError, match="exceeds 10000 ms"):
        p.receive(wire.audio(b"\x00" * 330_000, 2))
