"""The server's side of the conversation socket, without I/O: message builders and a strict client parser.

Shapes follow the AsyncAPI contract (``elevenlabs/packages`` ``packages/types/schemas/agent.asyncapi.yaml``)
as summarised in ``/work/shared/PROTOCOL.md``. The parser is deliberately stricter than the real server is
known to be: anything it cannot place raises :class:`~core.errors.ProtocolError`, and the conversation
answers with an ``error`` event of type ``invalid_message`` and close code 1008, the pairing AAPI's
``ErrorType`` table gives for malformed input.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from core.errors import ProtocolError

__all__ = [
    "ClientInit",
    "ClientMessage",
    "ClientToolResult",
    "ContextualUpdate",
    "Feedback",
    "OtherClientMessage",
    "Pong",
    "UserActivity",
    "UserAudioChunk",
    "UserMessage",
    "agent_chat_response_part",
    "agent_response",
    "agent_response_correction",
    "agent_tool_request",
    "agent_tool_response",
    "audio",
    "client_tool_call",
    "error",
    "internal_tentative_agent_response",
    "interruption",
    "malformed",
    "metadata",
    "parse_client_message",
    "ping",
    "tentative_user_transcript",
    "user_transcript",
    "vad_score",
]


def _dump(message: Mapping[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))


# ------------------------------------------------------------------------------------ server → client


def metadata(conversation_id: str, input_format: str, output_format: str) -> str:
    return _dump({"type": "conversation_initiation_metadata", "conversation_initiation_metadata_event": {
        "conversation_id": conversation_id, "agent_output_audio_format": output_format,
        "user_input_audio_format": input_format}})


def audio(data: bytes, event_id: int, alignment: Mapping[str, Any] | None = None) -> str:
    payload: dict[str, Any] = {"audio_base_64": base64.b64encode(data).decode("ascii"), "event_id": event_id}
    if alignment is not None:
        payload["alignment"] = dict(alignment)
    return _dump({"type": "audio", "audio_event": payload})


def interruption(event_id: int, reason: str | None = None) -> str:
    payload: dict[str, Any] = {"event_id": event_id}
    if reason is not None:
        payload["reason"] = reason
    return _dump({"type": "interruption", "interruption_event": payload})


def ping(event_id: int, ping_ms: int | None) -> str:
    return _dump({"type": "ping", "ping_event": {"event_id": event_id, "ping_ms": ping_ms}})


def user_transcript(text: str, event_id: int) -> str:
    return _dump({"type": "user_transcript",
                  "user_transcription_event": {"user_transcript": text, "event_id": event_id}})


def tentative_user_transcript(text: str, event_id: int) -> str:
    return _dump({"type": "tentative_user_transcript",
                  "tentative_user_transcription_event": {"user_transcript": text, "event_id": event_id}})


def agent_response(text: str, event_id: int) -> str:
    return _dump({"type": "agent_response",
                  "agent_response_event": {"agent_response": text, "event_id": event_id}})


def agent_response_correction(original: str, corrected: str, event_id: int) -> str:
    return _dump({"type": "agent_response_correction", "agent_response_correction_event": {
        "original_agent_response": original, "corrected_agent_response": corrected, "event_id": event_id}})


def agent_chat_response_part(text: str, part: Literal["start", "delta", "stop"], event_id: int) -> str:
    return _dump({"type": "agent_chat_response_part",
                  "text_response_part": {"text": text, "type": part, "event_id": event_id}})


def vad_score(score: float) -> str:
    return _dump({"type": "vad_score", "vad_score_event": {"vad_score": score}})


def client_tool_call(tool_name: str, tool_call_id: str, parameters: Mapping[str, Any], event_id: int,
                     expects_response: bool | None = None) -> str:
    payload: dict[str, Any] = {"tool_name": tool_name, "tool_call_id": tool_call_id,
                               "parameters": dict(parameters), "event_id": event_id}
    if expects_response is not None:
        payload["expects_response"] = expects_response
    return _dump({"type": "client_tool_call", "client_tool_call": payload})


def agent_tool_request(tool_name: str, tool_call_id: str, tool_type: str, event_id: int) -> str:
    return _dump({"type": "agent_tool_request", "agent_tool_request": {
        "tool_name": tool_name, "tool_call_id": tool_call_id, "tool_type": tool_type, "event_id": event_id}})


def agent_tool_response(tool_name: str, tool_call_id: str, tool_type: str, event_id: int, *,
                        is_error: bool = False, is_called: bool = True) -> str:
    return _dump({"type": "agent_tool_response", "agent_tool_response": {
        "tool_name": tool_name, "tool_call_id": tool_call_id, "tool_type": tool_type, "is_error": is_error,
        "is_called": is_called, "event_id": event_id}})


def internal_tentative_agent_response(text: str) -> str:
    return _dump({"type": "internal_tentative_agent_response",
                  "tentative_agent_response_internal_event": {"tentative_agent_response": text}})


def malformed(kind: str, event_id: int, *, oversize_bytes: int) -> str | bytes:
    """One malformed or unexpected server message for fault injection (:data:`emulator.config.InjectKind`)."""
    if kind == "oversize":
        return agent_response("x" * oversize_bytes, event_id)
    texts: dict[str, str | bytes] = {
        "garbage": "this is not json {",
        "unknown_type": json.dumps({"type": "emulator_unknown_event", "emulator_unknown_event": {"x": 1}}),
        "bad_base64": json.dumps({"type": "audio", "audio_event": {"audio_base_64": "@@not*base64@@",
                                                                   "event_id": event_id}}),
        "odd_pcm": json.dumps({"type": "audio", "audio_event": {
            "audio_base_64": base64.b64encode(b"\x01\x02\x03").decode(), "event_id": event_id}}),
        "binary": b"\x00\x01binary",
    }
    return texts[kind]


def error(code: int, error_type: str, message: str, reason: str | None = None) -> str:
    return _dump({"type": "error", "error_event": {"code": code, "error_type": error_type, "message": message,
                                                   "reason": reason}})


# ------------------------------------------------------------------------------------ client → server


@dataclass(frozen=True, slots=True)
class UserAudioChunk:
    data: bytes  # still encoded in the input format


@dataclass(frozen=True, slots=True)
class ClientInit:
    overrides: Mapping[str, Any] = field(hash=False)
    dynamic_variables: Mapping[str, Any] = field(hash=False)
    custom_llm_extra_body: Mapping[str, Any] = field(hash=False)
    user_id: str | None = None
    source_info: Mapping[str, Any] | None = field(default=None, hash=False)


@dataclass(frozen=True, slots=True)
class Pong:
    event_id: int


@dataclass(frozen=True, slots=True)
class UserMessage:
    text: str | None
    rich_content_id: str | None = None


@dataclass(frozen=True, slots=True)
class ContextualUpdate:
    text: str
    context_id: str | None = None


@dataclass(frozen=True, slots=True)
class UserActivity:
    pass


@dataclass(frozen=True, slots=True)
class ClientToolResult:
    tool_call_id: str
    result: Any
    is_error: bool


@dataclass(frozen=True, slots=True)
class Feedback:
    event_id: int
    score: str | None


@dataclass(frozen=True, slots=True)
class OtherClientMessage:
    """A documented client type the emulator accepts and records but does not act on."""

    type: str
    raw: Mapping[str, Any] = field(hash=False)


ClientMessage = (
    UserAudioChunk | ClientInit | Pong | UserMessage | ContextualUpdate | UserActivity | ClientToolResult
    | Feedback | OtherClientMessage
)

_OTHER_CLIENT_TYPES = frozenset({"mcp_tool_approval_result", "multimodal_message", "enclave_setup_config"})


def _invalid(why: str) -> ProtocolError:
    return ProtocolError(why, kind="invalid_message")


def _obj(message: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = message.get(key, {})
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _invalid(f"{key} must be an object")
    return value


def _int(message: Mapping[str, Any], key: str) -> int:
    value = message.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid(f"{key} must be an integer")
    return value


def _str(message: Mapping[str, Any], key: str, *, nullable: bool = False) -> str | None:
    value = message.get(key)
    if value is None and nullable:
        return None
    if not isinstance(value, str):
        raise _invalid(f"{key} must be a string")
    return value


def parse_client_message(text: str) -> ClientMessage:
    """One client text message → a typed value; anything malformed raises ``ProtocolError`` (kind
    ``invalid_message``) whose text says why, for the emulator's log."""
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):
        raise _invalid("message is not JSON") from None
    if not isinstance(message, dict):
        raise _invalid("message is not a JSON object")
    if "user_audio_chunk" in message:
        chunk = message["user_audio_chunk"]
        if not isinstance(chunk, str):
            raise _invalid("user_audio_chunk must be a base64 string")
        try:
            return UserAudioChunk(base64.b64decode(chunk, validate=True))
        except (binascii.Error, ValueError):
            raise _invalid("user_audio_chunk is not valid base64") from None
    kind = message.get("type")
    if kind == "conversation_initiation_client_data":
        source_info = message.get("source_info")
        return ClientInit(_obj(message, "conversation_config_override"), _obj(message, "dynamic_variables"),
                          _obj(message, "custom_llm_extra_body"), _str(message, "user_id", nullable=True),
                          source_info if isinstance(source_info, dict) else None)
    if kind == "pong":
        return Pong(_int(message, "event_id"))
    if kind == "user_message":
        return UserMessage(_str(message, "text", nullable=True),
                           _str(message, "rich_content_id", nullable=True))
    if kind == "contextual_update":
        return ContextualUpdate(_str(message, "text") or "", _str(message, "context_id", nullable=True))
    if kind == "user_activity":
        return UserActivity()
    if kind == "client_tool_result":
        is_error = message.get("is_error", False)
        if not isinstance(is_error, bool):
            raise _invalid("is_error must be a boolean")
        return ClientToolResult(_str(message, "tool_call_id") or "", message.get("result"), is_error)
    if kind == "feedback":
        score = message.get("score")
        if score not in ("like", "dislike", None):
            raise _invalid("feedback score must be like, dislike or null")
        return Feedback(_int(message, "event_id"), score)
    if isinstance(kind, str) and kind in _OTHER_CLIENT_TYPES:
        return OtherClientMessage(kind, message)
    raise _invalid(f"unknown client message type {kind!r}" if kind is not None else "message has no type")
