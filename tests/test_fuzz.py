"""Hostile input, generated: the engine protocol parser, the token endpoint and the redactor.

- ``EngineProtocol.receive`` gets arbitrary text, arbitrary JSON, and messages built from the real types and
  field names with every value swapped for something else (wrong types, huge and non-finite numbers, deep
  nesting, empty and invalid base64), before and after metadata in every format. It may only ever return a
  list of events or raise :class:`~core.errors.ProtocolError`; pongs are its only output.
- The token endpoint gets arbitrary methods, paths, query strings, content types and bodies (JSON of any
  shape, forms, bytes). It may never answer 500, never include the API secret, and only a 200 may carry a
  token.
- The redactor: whatever text surrounds a registered secret, the secret does not survive.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from core.errors import ProtocolError
from core.formats import ENGINE_FORMATS
from core.redact import MASK, Redactor, redact_url
from emulator import wire
from tests.test_token_server import Running
from transport.engine_protocol import EngineProtocol, Event
from transport.token_server import TokenServerConfig, dev_open

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ------------------------------------------------------------------------------------------ the parser

TYPES = ["conversation_initiation_metadata", "audio", "interruption", "ping", "user_transcript",
         "tentative_user_transcript", "agent_response", "agent_response_correction", "agent_chat_response_part",
         "vad_score", "client_tool_call", "agent_tool_request", "agent_tool_response",
         "internal_tentative_agent_response", "error", "context_usage", "brand_new_type", ""]
PAYLOAD_KEYS = ["conversation_initiation_metadata_event", "audio_event", "interruption_event", "ping_event",
                "user_transcription_event", "tentative_user_transcription_event", "agent_response_event",
                "agent_response_correction_event", "text_response_part", "vad_score_event", "client_tool_call",
                "agent_tool_request", "agent_tool_response", "tentative_agent_response_internal_event",
                "error_event"]
FIELDS = ["event_id", "audio_base_64", "alignment", "chars", "char_start_times_ms", "char_durations_ms",
          "ping_ms", "reason", "conversation_id", "agent_output_audio_format", "user_input_audio_format",
          "user_transcript", "agent_response", "original_agent_response", "corrected_agent_response", "type",
          "text", "vad_score", "tool_name", "tool_call_id", "parameters", "expects_response", "tool_type",
          "is_error", "is_called", "tentative_agent_response", "code", "error_type", "message"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40),
    st.sampled_from([*ENGINE_FORMATS, "pcm_11025", "opus_48000", "ulaw_16000", "AAAA", "AAA", "@@", "",
                     base64.b64encode(b"\x00\x01\x02").decode()]),
)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), inner, max_size=5),
                           max_leaves=20)
payloads = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=8)
messages = st.fixed_dictionaries(
    {"type": st.sampled_from(TYPES) | st.text(max_size=12) | json_values},
    optional={key: payloads | json_values for key in PAYLOAD_KEYS},
)


def well_formed() -> list[str]:
    return [wire.audio(b"\x00\x01" * 80, 3), wire.audio(b"\x7f" * 33, 4), wire.interruption(2),
            wire.ping(1, None), wire.ping(2, 15), wire.user_transcript("hi", 1), wire.agent_response("yo", 1),
            wire.agent_response_correction("a", "b", 1), wire.vad_score(0.5), wire.error(1002, "x", "y")]


def dumps(message: Any) -> str:
    # allow_nan: json.loads accepts NaN and Infinity, so a peer can send them.
    return json.dumps(message, allow_nan=True)


def check(protocol: EngineProtocol, text: str) -> None:
    try:
        events = protocol.receive(text)
    except ProtocolError as exc:
        assert exc.kind and isinstance(exc.kind, str)
        return
    assert isinstance(events, list)
    assert all(isinstance(e, Event.__args__) for e in events)  # type: ignore[attr-defined]
    for pong in protocol.data_to_send():
        assert json.loads(pong)["type"] == "pong"


def protocols(metadata: str | None) -> EngineProtocol:
    p = EngineProtocol(max_message_chars=4096)
    if metadata is not None:
        p.receive(wire.metadata("conv_fuzz", metadata, metadata))
    return p


formats = st.none() | st.sampled_from(ENGINE_FORMATS)


@FUZZ
@given(metadata=formats, text=st.text(max_size=300))
def test_any_text_is_events_or_a_protocol_error(metadata: str | None, text: str) -> None:
    check(protocols(metadata), text)


@FUZZ
@given(metadata=formats, message=messages)
def test_any_message_shape_is_events_or_a_protocol_error(metadata: str | None, message: dict[str, Any]) -> None:
    check(protocols(metadata), dumps(message))


@FUZZ
@given(metadata=formats, template=st.sampled_from(well_formed()), data=st.data())
def test_real_messages_with_any_field_replaced(metadata: str | None, template: str, data: st.DataObject) -> None:
    message = json.loads(template)
    payload_key = next(k for k in message if k != "type")
    payload = message[payload_key]
    for key in data.draw(st.lists(st.sampled_from(sorted(payload)), max_size=3, unique=True)):
        if data.draw(st.booleans()):
            del payload[key]
        else:
            payload[key] = data.draw(json_values)
    if data.draw(st.booleans()):
        message[payload_key] = data.draw(json_values)
    check(protocols(metadata), dumps(message))


@FUZZ
@given(texts=st.lists(st.sampled_from(well_formed()) | st.text(max_size=50), max_size=30))
def test_any_sequence_keeps_the_protocol_usable(texts: list[str]) -> None:
    p = protocols("pcm_16000")
    for text in texts:
        check(p, text)
    # Whatever came before, a valid audio chunk at or above the gate is still delivered.
    floor = p.interrupt_floor
    [event] = p.receive(wire.audio(b"\x00\x01" * 10, floor))
    assert event.event_id == floor  # type: ignore[union-attr]


@pytest.mark.parametrize("depth", [10, 1000, 100_000])
def test_deep_nesting_is_a_protocol_error_not_a_crash(depth: int) -> None:
    p = EngineProtocol()
    for text in ("[" * depth + "]" * depth, '{"a":' * depth + "1" + "}" * depth):
        with contextlib.suppress(ProtocolError):
            p.receive(text)


def test_oversize_is_refused_before_parsing() -> None:
    p = EngineProtocol(max_message_chars=1000)
    with pytest.raises(ProtocolError) as info:
        p.receive(wire.agent_response("x" * 2000, 1))
    assert info.value.kind == "too_large"


# ------------------------------------------------------------------------------------------ token endpoint

API_SECRET = "FUZZCANARY-token-secret-0123456789abcdefghij"


class Served(Running):
    """The token server on a loop in its own thread, so hypothesis can drive it with blocking requests."""

    def __init__(self) -> None:
        super().__init__(TokenServerConfig(livekit_url="ws://127.0.0.1:7880", api_key="APIfuzzKey",
                                           api_secret=API_SECRET, agent_name="elevenlabs-bridge",
                                           authorize=dev_open(), rate_per_minute=1e6, rate_burst=10**6))

    def raw_request(self, method: str, target: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=5)
        try:
            conn.putrequest(method, target, skip_accept_encoding=True)
            for name, value in headers.items():
                conn.putheader(name, value)
            if body is not None and "Content-Length" not in headers:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            response = conn.getresponse()
            return response.status, response.read() + str(response.getheaders()).encode()
        except (http.client.HTTPException, ConnectionError, TimeoutError):
            return 0, b""  # the server closed a malformed request: not a 500
        finally:
            conn.close()


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    with Served() as s:
        yield s


names = st.text(max_size=70) | st.sampled_from(["alice", "room-1", "a" * 64, "a" * 65, "ünï", "a b", "../x"])
json_bodies = st.dictionaries(st.sampled_from(["room", "identity", "x", ""]), json_values | names, max_size=4)
bodies = st.one_of(
    st.none(), st.binary(max_size=300),
    json_bodies.map(lambda d: dumps(d).encode()),
    json_values.map(lambda v: dumps(v).encode()),
    st.dictionaries(st.sampled_from(["room", "identity", "z"]), names, max_size=3).map(
        lambda d: "&".join(f"{k}={v}" for k, v in d.items()).encode("utf-8", "surrogatepass")),
)
content_types = st.sampled_from(["application/json", "application/x-www-form-urlencoded", "text/plain",
                                 "multipart/form-data; boundary=x", "application/json; charset=latin-1", ""])
paths = st.sampled_from(["/token", "/token/", "/TOKEN", "/", "/healthz", "/app.js", "/nope", "//token",
                         "/token?room=a&identity=b", "/token?room=a&room=b&identity=c", "/%2e%2e/etc/passwd"])
queries = st.dictionaries(st.sampled_from(["room", "identity", "q"]), names, max_size=3)


@settings(FUZZ, max_examples=150)
@given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"]), path=paths,
       query=queries, body=bodies, content_type=content_types, lie=st.booleans())
def test_token_endpoint_never_500_and_never_a_secret(served: Served, method: str, path: str,
                                                      query: dict[str, str], body: bytes | None,
                                                      content_type: str, lie: bool) -> None:
    from urllib.parse import quote

    sep = "&" if "?" in path else "?"
    target = path + (sep + "&".join(f"{quote(k)}={quote(v, safe='', errors='replace')}"
                                    for k, v in query.items()) if query else "")
    headers = {"Content-Type": content_type} if content_type else {}
    if lie and body:
        # A body longer than announced: the rest reads as a second, garbled request. (Announcing *more* than
        # is sent makes the server wait for it, as any HTTP server does, until the client gives up.)
        headers["Content-Length"] = str(len(body) // 2)
    status, answer = served.raw_request(method, target, body, headers)
    assert status != 500 and not 500 <= status < 600, (status, answer[:200])
    assert API_SECRET.encode() not in answer
    if status != 200 or not path.startswith("/token"):
        assert b"eyJ" not in answer, (status, answer[:200])


# ------------------------------------------------------------------------------------------ redaction

secrets_ = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=8, max_size=40)


@FUZZ
@given(secret=secrets_, before=st.text(max_size=60), after=st.text(max_size=60))
def test_a_registered_secret_never_survives_redaction(secret: str, before: str, after: str) -> None:
    assume(MASK not in secret)
    text = Redactor([secret])(before + secret + after)
    assert secret not in text


@FUZZ
@given(secret=secrets_, before=st.text(max_size=60), after=st.text(max_size=60), plus=st.booleans(),
       lower=st.booleans())
def test_a_secret_never_survives_in_its_url_encoded_forms(secret: str, before: str, after: str, plus: bool,
                                                          lower: bool) -> None:
    # Before: a signature with "+ / =" registered decoded (from parse_qsl) leaked through the websockets
    # DEBUG request line, which carries it percent-encoded.
    from urllib.parse import quote, quote_plus

    assume(MASK not in secret)
    encoded = quote_plus(secret, safe="") if plus else quote(secret, safe="")
    if lower:
        encoded = "".join(c.lower() if (i > 0 and encoded[i - 1] == "%") or (i > 1 and encoded[i - 2] == "%")
                          else c for i, c in enumerate(encoded))
    text = Redactor([secret])(f"{before}GET /v1/convai/conversation?conversation_signature={encoded} {after}")
    assert encoded not in text


@FUZZ
@given(url=st.text(max_size=120), value=secrets_)
def test_redact_url_never_raises_and_drops_query_values(url: str, value: str) -> None:
    redact_url(url)
    assume("&" not in value and "#" not in value and "=" not in value)
    assert value not in redact_url(f"wss://h.example/p?token={value}&agent_id=a")
