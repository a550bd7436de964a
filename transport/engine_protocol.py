"""Sans-I/O core of the Speech Engine conversation socket (client side).

The engine behind a Speech Engine is the ElevenLabs Agents conversation WebSocket; every frame is one UTF-8
JSON text message. This module turns one server message into typed events and typed commands into message
text. It owns no socket, reads no clock and logs nothing: the asyncio shell (:mod:`transport.engine_client`)
feeds it, drains :meth:`EngineProtocol.data_to_send`, and decides what to log.

Rules this module enforces (sources in ``/work/shared/PROTOCOL.md``; AAPI = the AsyncAPI contract in
``elevenlabs/packages`` ``packages/types/schemas/agent.asyncapi.yaml`` @2a9057e):

1. Server messages are ``{"type": T, "<payload key>": {...}}``. Required fields follow AAPI; a missing or
   mistyped required field is a :class:`~core.errors.ProtocolError`.
2. ``receive()`` either returns a list of events (empty when a message is deliberately swallowed, such as a
   stale or empty audio chunk) or raises :class:`~core.errors.ProtocolError` whose ``kind`` names the fault.
   It never raises anything else (property-tested with hypothesis). Every error is counted by kind before it
   is raised, and the protocol does *not* enter a failed state: the shell logs, drops the message and goes
   on, as media stacks do with a bad packet. Ending the connection is the shell's call.
3. Audio needs the output format from ``conversation_initiation_metadata`` (PCM must have an even byte count,
   μ-law may not). Audio that arrives before metadata is a protocol error (kind ``audio_before_metadata``):
   the metadata is the required first server message (JS SDK warns otherwise), and guessing a format would
   hide a real fault.
4. The stale-audio gate: after ``interruption`` with id N, audio whose ``event_id`` is *below* N is dropped
   and counted. Not "at or below": a reply that follows an interruption may carry the interruption's own id
   (elevenlabs-python issue #829; the Python SDK's ``<=`` gate loses that reply, PR #839 moves it to ``<``,
   matching the JS SDK's ``event_id >= lastInterruptTimestamp``). The gate only rises (``max``), so an
   interruption that arrives out of order cannot reopen it.
5. A new connection is a new conversation whose event ids start again, so the shell calls :meth:`reset`
   after every reconnect; otherwise the previous conversation's gate would swallow the new one's audio.
   Counters survive :meth:`reset`; they describe the client's whole life.
6. Pings are answered from inside :meth:`receive`: a ``pong`` with the same ``event_id`` is queued for the
   shell to send at once. ``ping_ms`` is the server's RTT estimate from earlier pings (null at first, AAPI
   ``PingData``).
8. Everything the client sends leaves through one place, in priority order: pongs, then control messages
   (text, tool results), then audio (:meth:`EngineProtocol.next_to_send`), so a pong never waits behind a backlog
   of audio and the engine's ping timeout does not end a conversation whose uplink is congested. Each queue has
   a limit and a policy: at most 32 pongs (the newest are kept: an older pong answers a ping the server has
   already given up on; ``pongs_dropped``), at most ``audio_queue_limit`` audio messages (default 50 × 20 ms =
   1 s; a new chunk is refused and the shell counts it: live audio older than that is worthless); control
   messages are few and all kept.
7. How a connection ended decides what comes next (:func:`classify_close`, pure): the client closing it, or
   the server closing with 1000 (the agent ended the call, ``max_duration_exceeded``), ends the conversation
   (``DONE``); 1008 (our input or overrides broke the contract) and a fatal condition the shell found (an
   audio format nothing here can decode) are final errors (``FAIL``): sending the same again cannot help.
   Anything else (1002 operational errors, 1011 server crash, 1006 dropped socket, 1009 too big) is
   ``RETRY``: a new conversation, after a backoff delay.

Verified from the public SDK sources while writing this (2026-08 snapshots):

- ``interruption_event`` has only ``event_id`` in AAPI; ``reason`` is not in AAPI nor in elevenlabs-python
  @54e5899, and appears only in the docs' Next.js sample and open PR #843. We read it when present.
- ``ping_ms`` is ``integer | null`` (AAPI ``PingData``); we also accept a finite float and truncate it.
- The payload key of ``internal_tentative_agent_response`` is ``tentative_agent_response_internal_event``
  (AAPI); of ``tentative_user_transcript`` it is ``tentative_user_transcription_event``.
- ``agent_response_complete``, ``client_error`` and ``dtmf_request`` have no schema in AAPI (only in the
  Python ``ClientEvent`` enum); they surface as :class:`UnknownEvent` with ``documented=True``.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import math
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from core.errors import ConfigError, ProtocolError
from core.formats import AudioFormat, parse_format

__all__ = [
    "CLOSE_NORMAL",
    "CLOSE_POLICY",
    "DEFAULT_MAX_AUDIO_MS_PER_MESSAGE",
    "DEFAULT_MAX_MESSAGE_CHARS",
    "UNKNOWN_TYPE_KEY",
    "AgentAudio",
    "AgentChatResponsePart",
    "AgentResponse",
    "AgentResponseCorrection",
    "AgentToolRequest",
    "AgentToolResponse",
    "Alignment",
    "ClientToolCall",
    "CloseAction",
    "ConnectionState",
    "ConversationMetadata",
    "EngineCounters",
    "EngineErrorEvent",
    "EngineProtocol",
    "Event",
    "EventCallback",
    "InitiationData",
    "InternalTentativeAgentResponse",
    "Interruption",
    "Ping",
    "StateCallback",
    "StateChange",
    "TentativeUserTranscript",
    "UnknownEvent",
    "UserTranscript",
    "VadScore",
    "classify_close",
]

# The Python SDK opens its socket with max_size=16 MiB (elevenlabs-python conversation.py ``_run``). We
# measure characters, which never exceed the UTF-8 byte count, so this check is never stricter than the
# socket's own limit for the same number.
DEFAULT_MAX_MESSAGE_CHARS: Final = 16 * 1024 * 1024
# The longest audio one ``audio`` message may carry, checked from the base64 length before anything is
# decoded. The engine streams a reply in chunks of tens to hundreds of milliseconds (the emulator: 100 ms;
# the Python SDK plays 62.5 ms buffers); 10 s leaves room for any real chunking while one message can cost at
# most ~10 s of decode + resample (a few ms), not the ~600 ms a 15 MiB message took on the shared loop.
DEFAULT_MAX_AUDIO_MS_PER_MESSAGE: Final = 10_000

# counters.received key for every type no source documents (their count is also counters.unknown_events).
UNKNOWN_TYPE_KEY: Final = "<unknown>"

# Fallback for a metadata event without user_input_audio_format, as the JS SDK does (WebSocketConnection.ts).
_DEFAULT_INPUT_FORMAT: Final = "pcm_16000"


# ---------------------------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class ConversationMetadata:
    """``conversation_initiation_metadata``: the conversation exists; audio formats both ways are fixed."""

    conversation_id: str
    input_format: AudioFormat
    output_format: AudioFormat


@dataclass(frozen=True, slots=True)
class Alignment:
    """Character timing of an audio chunk (``alignment`` of ``audio_event``)."""

    chars: tuple[str, ...]
    char_start_times_ms: tuple[int, ...]
    char_durations_ms: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class AgentAudio:
    """One ``audio`` chunk, already base64-decoded and checked against the output format."""

    audio: bytes
    event_id: int
    alignment: Alignment | None = None


@dataclass(frozen=True, slots=True)
class Interruption:
    event_id: int
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Ping:
    event_id: int
    ping_ms: int | None = None


@dataclass(frozen=True, slots=True)
class UserTranscript:
    text: str
    event_id: int


@dataclass(frozen=True, slots=True)
class TentativeUserTranscript:
    text: str
    event_id: int


@dataclass(frozen=True, slots=True)
class AgentResponse:
    text: str
    event_id: int


@dataclass(frozen=True, slots=True)
class AgentResponseCorrection:
    original: str
    corrected: str
    event_id: int


@dataclass(frozen=True, slots=True)
class AgentChatResponsePart:
    text: str
    part: Literal["start", "delta", "stop"]  # AAPI AgentChatResponsePartType
    event_id: int


@dataclass(frozen=True, slots=True)
class VadScore:
    score: float


@dataclass(frozen=True, slots=True)
class ClientToolCall:
    """The agent asks the client to run a tool; answer with :meth:`EngineProtocol.client_tool_result`."""

    tool_name: str
    tool_call_id: str
    parameters: Mapping[str, Any] = field(hash=False)
    event_id: int
    expects_response: bool | None = None


@dataclass(frozen=True, slots=True)
class AgentToolRequest:
    tool_name: str
    tool_call_id: str
    tool_type: str | None
    event_id: int


@dataclass(frozen=True, slots=True)
class AgentToolResponse:
    tool_name: str
    tool_call_id: str
    tool_type: str | None
    is_error: bool
    is_called: bool | None
    event_id: int


@dataclass(frozen=True, slots=True)
class InternalTentativeAgentResponse:
    text: str


@dataclass(frozen=True, slots=True)
class EngineErrorEvent:
    """``error``: the server is about to close; ``code`` is the close code it will use (AAPI ErrorData)."""

    code: int
    error_type: str | None
    message: str | None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class UnknownEvent:
    """A well-formed message we do not model. ``documented`` tells a known-but-unmodelled type (AAPI or the
    Python ``ClientEvent`` enum list it) from one no source mentions; only the latter counts as unknown."""

    type: str
    raw: Mapping[str, Any] = field(hash=False)
    documented: bool = False


Event = (
    ConversationMetadata
    | AgentAudio
    | Interruption
    | Ping
    | UserTranscript
    | TentativeUserTranscript
    | AgentResponse
    | AgentResponseCorrection
    | AgentChatResponsePart
    | VadScore
    | ClientToolCall
    | AgentToolRequest
    | AgentToolResponse
    | InternalTentativeAgentResponse
    | EngineErrorEvent
    | UnknownEvent
)

# Server event types named by AAPI or the Python ClientEvent enum that we pass through as UnknownEvent.
_DOCUMENTED_UNMODELLED: Final = frozenset({
    "agent_reasoning_response_part", "agent_tool_response_full_payload", "mcp_tool_call",
    "mcp_connection_status", "context_usage", "asr_initiation_metadata", "guardrail_triggered",
    "internal_turn_probability", "rich_content", "agent_typing", "external_agent_connected",
    "external_agent_disconnected", "agent_response_metadata", "agent_response_complete", "client_error",
    "dtmf_request", "internal_vad_score",
})


class ConnectionState(enum.Enum):
    """The client's connection as the session sees it (the shell moves it; rule 7 decides after a close)."""

    CONNECTING = "connecting"  # first connection, not yet established
    CONNECTED = "connected"  # metadata received; audio flows
    RECONNECTING = "reconnecting"  # an established conversation was lost; trying again
    CLOSED = "closed"  # final; see StateChange.reason / EngineClient.wait()


@dataclass(frozen=True, slots=True)
class StateChange:
    state: ConnectionState
    at_ns: int  # from the client's clock
    attempt: int  # consecutive failed attempts so far (0 once connected)
    conversation_id: str | None = None
    close_code: int | None = None
    reason: str | None = None  # already redacted


# The shell's callbacks: (event, receive time in ns from the client's clock) and connection state changes.
EventCallback = Callable[["Event", int], None]
StateCallback = Callable[["StateChange"], None]


@dataclass(frozen=True, slots=True)
class InitiationData:
    """What goes into ``conversation_initiation_client_data`` on every (re)connect."""

    overrides: Mapping[str, Any] | None = None
    dynamic_variables: Mapping[str, str | int | float | bool] | None = None
    custom_llm_extra_body: Mapping[str, Any] | None = None
    user_id: str | None = None
    source_info: Mapping[str, str] | None = None


CLOSE_NORMAL: Final = 1000
CLOSE_POLICY: Final = 1008


class CloseAction(enum.Enum):
    RETRY = "retry"  # open a new conversation after a backoff delay
    DONE = "done"  # the conversation is over, and that is not an error
    FAIL = "fail"  # final, and an error: the same input would be refused again


def classify_close(code: int, *, by_client: bool, fatal: bool = False) -> CloseAction:
    """Rule 7: what a connection's end means. ``by_client``: we were closing it; ``fatal``: the shell found a
    condition no retry can fix (it keeps the cause)."""
    if fatal:
        return CloseAction.FAIL
    if by_client or code == CLOSE_NORMAL:
        return CloseAction.DONE
    if code == CLOSE_POLICY:
        return CloseAction.FAIL
    return CloseAction.RETRY


@dataclass(slots=True)
class EngineCounters:
    """What the protocol saw; plain ints and Counters so a metrics exporter can read them directly."""

    received: Counter[str] = field(default_factory=Counter)  # well-formed messages by type (see UNKNOWN_TYPE_KEY)
    sent: Counter[str] = field(default_factory=Counter)  # messages built, by type (audio: user_audio_chunk)
    errors: Counter[str] = field(default_factory=Counter)  # ProtocolError by kind
    audio_chunks: int = 0  # audio events handed out
    audio_bytes: int = 0
    stale_audio_chunks: int = 0  # dropped by the interruption gate
    stale_audio_bytes: int = 0
    empty_audio_chunks: int = 0  # audio_base_64 == "" (allowed by AAPI; JS skips them too)
    bad_alignment: int = 0  # alignment dropped, audio kept
    unknown_events: int = 0  # types no source documents
    conversations: int = 0  # metadata events seen (one per conversation)
    pongs_dropped: int = 0  # oldest unsent pongs given up (rule 8)


# ---------------------------------------------------------------------------------------------- parsing

_JsonObject = dict[str, Any]


def _fail(message: str, kind: str) -> ProtocolError:
    return ProtocolError(message, kind=kind)


def _payload(message: _JsonObject, key: str, kind_of: str) -> _JsonObject:
    value = message.get(key)
    if not isinstance(value, dict):
        raise _fail(f"{kind_of} message lacks object {key!r}", "missing_field")
    return value


def _int(payload: _JsonObject, key: str) -> int:
    value = payload.get(key)
    # bool is an int subclass; true/false is never a valid id.
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(f"field {key!r} must be an integer, got {type(value).__name__}",
                    "missing_field" if value is None else "bad_field")
    return value


def _str(payload: _JsonObject, key: str) -> str:
    value = payload.get(key)
    if not isinstance(value, str):
        raise _fail(f"field {key!r} must be a string, got {type(value).__name__}",
                    "missing_field" if value is None else "bad_field")
    return value


def _opt_str(payload: _JsonObject, key: str) -> str | None:
    value = payload.get(key)
    return value if isinstance(value, str) else None


def _opt_bool(payload: _JsonObject, key: str) -> bool | None:
    value = payload.get(key)
    return value if isinstance(value, bool) else None


def _number(payload: _JsonObject, key: str) -> float:
    value = payload.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(f"field {key!r} must be a number", "missing_field" if value is None else "bad_field")
    return float(value)


def _opt_ms(payload: _JsonObject, key: str) -> int | None:
    value = payload.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(f"field {key!r} must be a number or null", "bad_field")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _fail(f"field {key!r} is not finite", "bad_field")
        return int(value)
    return value


def _alignment(value: object) -> Alignment | None:
    """Strictly typed or nothing; the caller counts a malformed one and keeps the audio."""
    if not isinstance(value, dict):
        raise ValueError("alignment is not an object")
    chars, starts, durations = (value.get(k) for k in ("chars", "char_start_times_ms", "char_durations_ms"))
    if not (isinstance(chars, list) and isinstance(starts, list) and isinstance(durations, list)):
        raise ValueError("alignment lists missing")
    if not all(isinstance(c, str) for c in chars):
        raise ValueError("alignment chars must be strings")
    if not all(isinstance(n, int) and not isinstance(n, bool) for n in (*starts, *durations)):
        raise ValueError("alignment times must be integers")
    return Alignment(tuple(chars), tuple(starts), tuple(durations))


def _audio_format(payload: _JsonObject, key: str, default: str | None = None) -> AudioFormat:
    name = payload.get(key, default)
    if not isinstance(name, str):
        raise _fail(f"metadata field {key!r} must be a format string", "missing_field")
    try:
        return parse_format(name)
    except ConfigError as exc:
        raise _fail(str(exc), "unknown_format") from None


_ChatPart = Literal["start", "delta", "stop"]
_CHAT_PARTS: Final[dict[str, _ChatPart]] = {"start": "start", "delta": "delta", "stop": "stop"}

# ---------------------------------------------------------------------------------------------- protocol

_MAX_QUEUED_PONGS: Final = 32


class EngineProtocol:
    """One client's view of the conversation socket. Not thread-safe; one per client, reused across
    reconnects via :meth:`reset`.

    >>> p = EngineProtocol()
    >>> p.receive('{"type":"ping","ping_event":{"event_id":3,"ping_ms":null}}')
    [Ping(event_id=3, ping_ms=None)]
    >>> p.data_to_send()
    ['{"type":"pong","event_id":3}']
    """

    def __init__(self, *, max_message_chars: int = DEFAULT_MAX_MESSAGE_CHARS,
                 default_input_format: str = _DEFAULT_INPUT_FORMAT, audio_queue_limit: int = 50,
                 max_audio_ms_per_message: int = DEFAULT_MAX_AUDIO_MS_PER_MESSAGE) -> None:
        if max_message_chars <= 0 or audio_queue_limit <= 0 or max_audio_ms_per_message <= 0:
            raise ConfigError("max_message_chars, audio_queue_limit and max_audio_ms_per_message must be positive")
        parse_format(default_input_format)  # a ConfigError now, not a ProtocolError on the first metadata
        self.max_message_chars = max_message_chars
        self.default_input_format = default_input_format
        self.max_audio_ms_per_message = max_audio_ms_per_message
        self.counters = EngineCounters()
        self.audio_queue_limit = audio_queue_limit
        self._pongs: deque[str] = deque()
        self._control: deque[str] = deque()
        self._audio: deque[str] = deque()
        self._reset_conversation()

    def _reset_conversation(self) -> None:
        self.metadata: ConversationMetadata | None = None
        # Highest interruption id seen; audio strictly below it is stale. 0 admits every id (JS starts at 0).
        self.interrupt_floor = 0
        self.last_ping_id: int | None = None
        self.last_ping_ms: int | None = None
        self.last_audio_event_id: int | None = None

    def reset(self) -> None:
        """Forget the conversation (metadata, gate, ping state, everything queued) but keep the counters."""
        self._reset_conversation()
        self._pongs.clear()
        self._control.clear()
        self._audio.clear()

    # -- state read by the shell

    @property
    def conversation_id(self) -> str | None:
        return self.metadata.conversation_id if self.metadata else None

    @property
    def input_format(self) -> AudioFormat | None:
        return self.metadata.input_format if self.metadata else None

    @property
    def output_format(self) -> AudioFormat | None:
        return self.metadata.output_format if self.metadata else None

    @property
    def queued(self) -> tuple[int, int, int]:
        """Messages waiting: (pongs, control, audio)."""
        return len(self._pongs), len(self._control), len(self._audio)

    def next_to_send(self) -> str | None:
        """The next message for the socket (rule 8: pong, then control, then audio), or None when idle."""
        for queue in (self._pongs, self._control, self._audio):
            if queue:
                return queue.popleft()
        return None

    def data_to_send(self) -> list[str]:
        """Every queued message in the order :meth:`next_to_send` would hand them out; the queues are emptied."""
        out = [*self._pongs, *self._control, *self._audio]
        self._pongs.clear()
        self._control.clear()
        self._audio.clear()
        return out

    def send_audio(self, data: bytes) -> bool:
        """Queue one ``user_audio_chunk``; False (nothing queued) when ``audio_queue_limit`` messages wait."""
        if len(self._audio) >= self.audio_queue_limit:
            return False
        self._audio.append(self.user_audio(data))
        return True

    def send_control(self, text: str) -> None:
        """Queue a control message built by one of the command methods below."""
        self._control.append(text)

    # -- receiving

    def receive(self, text: str) -> list[Event]:
        """Parse one server text message. Raises only :class:`ProtocolError` (counted by ``kind``)."""
        try:
            return self._receive(text)
        except ProtocolError as exc:
            self.counters.errors[exc.kind] += 1
            raise

    def binary_frame(self, size: int) -> ProtocolError:
        """Count a binary frame (the protocol is text-only) and return the error for the shell to report."""
        self.counters.errors["binary_frame"] += 1
        return _fail(f"unexpected binary frame of {size} bytes", "binary_frame")

    def _receive(self, text: str) -> list[Event]:
        if len(text) > self.max_message_chars:
            raise _fail(f"message of {len(text)} chars exceeds limit {self.max_message_chars}", "too_large")
        try:
            message = json.loads(text)
        except (ValueError, RecursionError) as exc:
            # ValueError covers JSONDecodeError and over-long integer literals; RecursionError deep nesting.
            raise _fail(f"message is not JSON: {type(exc).__name__}", "not_json") from None
        if not isinstance(message, dict):
            raise _fail(f"message is a JSON {type(message).__name__}, not an object", "not_object")
        kind = message.get("type")
        if not isinstance(kind, str):
            raise _fail("message has no string 'type'", "missing_type")
        handler = _HANDLERS.get(kind)
        if handler is None:
            documented = kind in _DOCUMENTED_UNMODELLED
            # Undocumented names share one key: a peer inventing a name per message must not grow this table.
            self.counters.received[kind if documented else UNKNOWN_TYPE_KEY] += 1
            if not documented:
                self.counters.unknown_events += 1
            return [UnknownEvent(kind, message, documented)]
        events = handler(self, message)
        self.counters.received[kind] += 1
        return events

    def _on_metadata(self, message: _JsonObject) -> list[Event]:
        payload = _payload(message, "conversation_initiation_metadata_event", "metadata")
        event = ConversationMetadata(
            conversation_id=_str(payload, "conversation_id"),
            input_format=_audio_format(payload, "user_input_audio_format", self.default_input_format),
            output_format=_audio_format(payload, "agent_output_audio_format"),
        )
        self.metadata = event
        self.counters.conversations += 1
        return [event]

    def _on_audio(self, message: _JsonObject) -> list[Event]:
        payload = _payload(message, "audio_event", "audio")
        event_id = _int(payload, "event_id")
        encoded = _str(payload, "audio_base_64")
        if self.metadata is None:
            raise _fail("audio before conversation_initiation_metadata", "audio_before_metadata")
        fmt = self.metadata.output_format
        audio_ms = len(encoded) * 3 // 4 * 1000 // (fmt.rate * fmt.bytes_per_sample)
        if audio_ms > self.max_audio_ms_per_message:
            # Refused before decoding: the cost of an audio message is bounded by this, not by its size.
            raise _fail(f"audio message of ~{audio_ms} ms exceeds {self.max_audio_ms_per_message} ms",
                        "audio_too_long")
        try:
            audio = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise _fail(f"audio_base_64 is not valid base64 ({len(encoded)} chars)", "bad_base64") from None
        if self.metadata.output_format.encoding == "pcm" and len(audio) % 2:
            raise _fail(f"PCM audio chunk has odd length {len(audio)}", "odd_length_pcm")
        if event_id < self.interrupt_floor:
            self.counters.stale_audio_chunks += 1
            self.counters.stale_audio_bytes += len(audio)
            return []
        if not audio:
            self.counters.empty_audio_chunks += 1
            return []
        alignment = None
        if payload.get("alignment") is not None:
            try:
                alignment = _alignment(payload["alignment"])
            except ValueError:
                self.counters.bad_alignment += 1
        self.last_audio_event_id = event_id
        self.counters.audio_chunks += 1
        self.counters.audio_bytes += len(audio)
        return [AgentAudio(audio, event_id, alignment)]

    def _on_interruption(self, message: _JsonObject) -> list[Event]:
        payload = _payload(message, "interruption_event", "interruption")
        event = Interruption(_int(payload, "event_id"), _opt_str(payload, "reason"))
        self.interrupt_floor = max(self.interrupt_floor, event.event_id)
        return [event]

    def _on_ping(self, message: _JsonObject) -> list[Event]:
        payload = _payload(message, "ping_event", "ping")
        event = Ping(_int(payload, "event_id"), _opt_ms(payload, "ping_ms"))
        self.last_ping_id = event.event_id
        if event.ping_ms is not None:
            self.last_ping_ms = event.ping_ms
        if len(self._pongs) >= _MAX_QUEUED_PONGS:
            self._pongs.popleft()
            self.counters.pongs_dropped += 1
        self._pongs.append(self.pong(event.event_id))
        return [event]

    def _on_user_transcript(self, message: _JsonObject) -> list[Event]:
        payload = _payload(message, "user_transcription_event", "user_transcript")
        return [UserTranscript(_str(payload, "user_transcript"), _int(payload, "event_id"))]

    def _on_tentative_transcript(self, message: _JsonObject) -> list[Event]:
        payload = _payload(message, "tentative_user_transcription_event", "tentative_user_transcript")
        return [TentativeUserTranscript(_str(payload, "user_transcript"), _int(payload, "event_id"))]

    def _on_agent_response(self, message: _JsonObject) -> list[Event]:
        payload = _payload(message, "agent_response_event", "agent_response")
        return [AgentResponse(_str(payload, "agent_response"), _int(payload, "event_id"))]

    def _on_correction(self, message: _JsonObject) -> list[Event]:
        payload = _payload(message, "agent_response_correction_event", "agent_response_correction")
        return [AgentResponseCorrection(_str(payload, "original_agent_response"),
                                        _str(payload, "corrected_agent_response"), _int(payload, "event_id"))]

    def _on_chat_part(self, message: _JsonObject) -> list[Event]:
        payload = _payload(message, "text_response_part", "agent_chat_response_part")
        part = _CHAT_PARTS.get(_str(payload, "type"))
        if part is None:
            raise _fail(f"unknown chat response part type {payload['type']!r}", "bad_field")
        return [AgentChatResponsePart(_str(payload, "text"), part, _int(payload, "event_id"))]

    def _on_vad(self, message: _JsonObject) -> list[Event]:
        payload = _payload(message, "vad_score_event", "vad_score")
        return [VadScore(_number(payload, "vad_score"))]

    def _on_client_tool_call(self, message: _JsonObject) -> list[Event]:
        payload = _payload(message, "client_tool_call", "client_tool_call")
        parameters = payload.get("parameters")
        if not isinstance(parameters, dict):
            raise _fail("client_tool_call.parameters must be an object", "bad_field")
        return [ClientToolCall(_str(payload, "tool_name"), _str(payload, "tool_call_id"), parameters,
                               _int(payload, "event_id"), _opt_bool(payload, "expects_response"))]

    def _on_tool_request(self, message: _JsonObject) -> list[Event]:
        payload = _payload(message, "agent_tool_request", "agent_tool_request")
        return [AgentToolRequest(_str(payload, "tool_name"), _str(payload, "tool_call_id"),
                                 _opt_str(payload, "tool_type"), _int(payload, "event_id"))]

    def _on_tool_response(self, message: _JsonObject) -> list[Event]:
        payload = _payload(message, "agent_tool_response", "agent_tool_response")
        return [AgentToolResponse(_str(payload, "tool_name"), _str(payload, "tool_call_id"),
                                  _opt_str(payload, "tool_type"), _opt_bool(payload, "is_error") or False,
                                  _opt_bool(payload, "is_called"), _int(payload, "event_id"))]

    def _on_tentative_agent(self, message: _JsonObject) -> list[Event]:
        payload = _payload(message, "tentative_agent_response_internal_event",
                           "internal_tentative_agent_response")
        return [InternalTentativeAgentResponse(_str(payload, "tentative_agent_response"))]

    def _on_error(self, message: _JsonObject) -> list[Event]:
        payload = _payload(message, "error_event", "error")
        return [EngineErrorEvent(_int(payload, "code"), _opt_str(payload, "error_type"),
                                 _opt_str(payload, "message"), _opt_str(payload, "reason"))]

    # -- building client messages (each returns the JSON text to send)

    def _dump(self, kind: str, message: Mapping[str, Any]) -> str:
        self.counters.sent[kind] += 1
        # Compact separators: audio dominates traffic and every byte is base64 overhead already.
        return json.dumps(message, separators=(",", ":"))

    def user_audio(self, data: bytes) -> str:
        """``{"user_audio_chunk": b64}``: raw s16le PCM or μ-law bytes in the *input* format, no ``type``
        key (AAPI: the server routes audio by this key, for speed). PCM must be whole samples."""
        fmt = self.input_format
        if fmt is not None and fmt.encoding == "pcm" and len(data) % 2:
            raise ConfigError(f"{fmt.name} user audio must be whole 16-bit samples, got {len(data)} bytes")
        self.counters.sent["user_audio_chunk"] += 1
        # What json.dumps would write, built directly: base64's alphabet needs no JSON escaping, and this is
        # 100 messages a second per session (0.7 µs a chunk against 4.1 µs through json.dumps).
        return '{"user_audio_chunk":"' + base64.b64encode(data).decode("ascii") + '"}'

    def initiation(
        self,
        *,
        overrides: Mapping[str, Any] | None = None,
        dynamic_variables: Mapping[str, str | int | float | bool] | None = None,
        custom_llm_extra_body: Mapping[str, Any] | None = None,
        user_id: str | None = None,
        source_info: Mapping[str, str] | None = None,
    ) -> str:
        """``conversation_initiation_client_data``, the first client message. Like the Python SDK we always
        send the three objects (``{}`` when empty) and add ``user_id``/``source_info`` only when given."""
        message: dict[str, Any] = {
            "type": "conversation_initiation_client_data",
            "conversation_config_override": dict(overrides or {}),
            "custom_llm_extra_body": dict(custom_llm_extra_body or {}),
            "dynamic_variables": dict(dynamic_variables or {}),
        }
        if user_id is not None:
            message["user_id"] = user_id
        if source_info is not None:
            message["source_info"] = dict(source_info)
        return self._dump("conversation_initiation_client_data", message)

    def pong(self, event_id: int) -> str:
        return self._dump("pong", {"type": "pong", "event_id": event_id})

    def user_message(self, text: str, *, rich_content_id: str | None = None) -> str:
        message: dict[str, Any] = {"type": "user_message", "text": text}
        if rich_content_id is not None:
            message["rich_content_id"] = rich_content_id
        return self._dump("user_message", message)

    def contextual_update(self, text: str, *, context_id: str | None = None) -> str:
        message: dict[str, Any] = {"type": "contextual_update", "text": text}
        if context_id is not None:
            message["context_id"] = context_id
        return self._dump("contextual_update", message)

    def user_activity(self) -> str:
        return self._dump("user_activity", {"type": "user_activity"})

    def client_tool_result(self, tool_call_id: str, result: str | Mapping[str, Any] | list[Any], *,
                           is_error: bool = False) -> str:
        """AAPI types ``result`` as a string; structured results are JSON-encoded, as the JS SDK does."""
        text = result if isinstance(result, str) else json.dumps(result, separators=(",", ":"))
        return self._dump("client_tool_result", {"type": "client_tool_result", "tool_call_id": tool_call_id,
                                                 "result": text, "is_error": is_error})

    def feedback(self, event_id: int, score: Literal["like", "dislike"] | None) -> str:
        return self._dump("feedback", {"type": "feedback", "event_id": event_id, "score": score})


_HANDLERS: Final[dict[str, Callable[[EngineProtocol, _JsonObject], list[Event]]]] = {
    "conversation_initiation_metadata": EngineProtocol._on_metadata,
    "audio": EngineProtocol._on_audio,
    "interruption": EngineProtocol._on_interruption,
    "ping": EngineProtocol._on_ping,
    "user_transcript": EngineProtocol._on_user_transcript,
    "tentative_user_transcript": EngineProtocol._on_tentative_transcript,
    "agent_response": EngineProtocol._on_agent_response,
    "agent_response_correction": EngineProtocol._on_correction,
    "agent_chat_response_part": EngineProtocol._on_chat_part,
    "vad_score": EngineProtocol._on_vad,
    "client_tool_call": EngineProtocol._on_client_tool_call,
    "agent_tool_request": EngineProtocol._on_tool_request,
    "agent_tool_response": EngineProtocol._on_tool_response,
    "internal_tentative_agent_response": EngineProtocol._on_tentative_agent,
    "error": EngineProtocol._on_error,
}
