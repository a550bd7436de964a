"""The engine's side of the brain socket, without I/O: the signed upgrade header, messages, and text segmenting.

A Speech Engine has two sockets. The conversation socket is the one the bridge speaks; the *brain* socket is
the one the engine itself opens to the user's server (``speech_engine.ws_url``), where the user's own logic
turns transcripts into text. Facts below are from the official SDK, elevenlabs-python 2.78.0 (PyPI
``elevenlabs``), module ``elevenlabs.speech_engine``; whatever the SDK does not show is marked INFERRED.

Upgrade (``server.py``, ``resource.py``):

- Header ``X-Elevenlabs-Speech-Engine-Authorization``: an HS256 JWT. The SDK strips an optional ``Bearer ``
  prefix, so both forms pass; we send the bare token (INFERRED: which form the service sends is not shown).
- Key: SHA-256 digest of the API key, trimmed, with a data-residency suffix ``_residency_<region>`` removed.
- Claims checked: ``iss`` = ``https://api.elevenlabs.io/convai/speech-engine``, ``sub`` =
  ``convai_speech_engine_upstream``, numeric ``exp`` and ``iat``, 60 s leeway each way. No ``aud``.
  Token lifetime: INFERRED (we give 5 minutes; only the upgrade is checked).
- Plus the engine's configured ``speech_engine.request_headers`` (``types/speech_engine_config.py``).

Messages (``types.py`` comments, ``session.py`` handlers):

- engine → brain: ``{"type":"init","conversation_id"}``; ``{"type":"user_transcript","user_transcript":
  [{"role":"user"|"agent","content"}…],"event_id":N}`` (the whole history, roles as in
  ``ConversationMessage``); ``{"type":"ping"}``; ``{"type":"close"}``; ``{"type":"error","message"}``.
- brain → engine: ``{"type":"agent_response","content","event_id","is_final"}``, streamed, the last one
  ``is_final: true`` with empty content (``_stream_response``; also after a failed stream), and
  ``{"type":"pong"}`` (no id: the SDK's pong carries none).
- A new ``user_transcript`` cancels the brain's running handler (``_cancel_current_and_wait``), and its
  responses carry the event id of the transcript they answer, so the engine tells stale text by id.
  That the engine drops text for older ids, and that ids only increase, is INFERRED from that design.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import jwt

from core.errors import ProtocolError

__all__ = [
    "AUTH_HEADER",
    "JWT_ISSUER",
    "JWT_SUBJECT",
    "AgentResponse",
    "BrainPong",
    "OtherBrainMessage",
    "Segmenter",
    "close",
    "error",
    "init",
    "parse_brain_message",
    "ping",
    "signing_key",
    "speech_engine_jwt",
    "user_transcript",
]

AUTH_HEADER = "X-Elevenlabs-Speech-Engine-Authorization"
JWT_ISSUER = "https://api.elevenlabs.io/convai/speech-engine"
JWT_SUBJECT = "convai_speech_engine_upstream"
JWT_TTL_S = 300  # INFERRED
_RESIDENCY_SUFFIX = re.compile(r"_residency_[a-z0-9]+$")

Role = Literal["user", "agent"]


def signing_key(api_key: str) -> bytes:
    """SHA-256 of the base API key, as ``verify_speech_engine_jwt`` derives it."""
    return hashlib.sha256(_RESIDENCY_SUFFIX.sub("", api_key.strip()).encode("utf-8")).digest()


def speech_engine_jwt(api_key: str, now_s: int, ttl_s: int = JWT_TTL_S) -> str:
    claims = {"iss": JWT_ISSUER, "sub": JWT_SUBJECT, "iat": now_s, "exp": now_s + ttl_s}
    return jwt.encode(claims, signing_key(api_key), algorithm="HS256")


def _dump(message: Mapping[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))


def init(conversation_id: str) -> str:
    return _dump({"type": "init", "conversation_id": conversation_id})


def user_transcript(history: Sequence[tuple[Role, str]], event_id: int) -> str:
    return _dump({"type": "user_transcript", "event_id": event_id,
                  "user_transcript": [{"role": role, "content": content} for role, content in history]})


def ping() -> str:
    return _dump({"type": "ping"})


def close() -> str:
    return _dump({"type": "close"})


def error(message: str) -> str:
    return _dump({"type": "error", "message": message})


@dataclass(frozen=True, slots=True)
class AgentResponse:
    content: str
    event_id: int
    is_final: bool


@dataclass(frozen=True, slots=True)
class BrainPong:
    pass


@dataclass(frozen=True, slots=True)
class OtherBrainMessage:
    """A JSON object with a type we do not act on (kept for the records)."""

    type: str


BrainMessage = AgentResponse | BrainPong | OtherBrainMessage


def _invalid(why: str) -> ProtocolError:
    return ProtocolError(why, kind="invalid_message")


def parse_brain_message(text: str) -> BrainMessage:
    """One brain text frame → a typed value; anything malformed raises ``ProtocolError``."""
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):
        raise _invalid("brain message is not JSON") from None
    if not isinstance(message, dict):
        raise _invalid("brain message is not a JSON object")
    kind = message.get("type")
    if kind == "pong":
        return BrainPong()
    if kind == "agent_response":
        content, event_id, is_final = message.get("content"), message.get("event_id"), message.get("is_final")
        if not isinstance(content, str):
            raise _invalid("agent_response.content must be a string")
        if isinstance(event_id, bool) or not isinstance(event_id, int):
            raise _invalid("agent_response.event_id must be an integer")
        if not isinstance(is_final, bool):
            raise _invalid("agent_response.is_final must be a boolean")
        return AgentResponse(content, event_id, is_final)
    if isinstance(kind, str):
        return OtherBrainMessage(kind)
    raise _invalid("brain message has no type")


_BOUNDARY = re.compile(r"[.!?;:]+[\"')\]]*(?=\s)|\n+")


class Segmenter:
    """Streamed text → phrases worth synthesizing on their own.

    A language model streams a few characters at a time; synthesizing each piece would cut words in half.
    Text is held until a sentence or clause boundary followed by white space (``. ! ? ; :`` or a newline),
    or until ``max_chars`` have piled up without one (then cut at the last space). ``flush()`` hands out the
    rest at the end of a response. Limit: at most ``max_chars`` + one piece are ever held.
    """

    def __init__(self, max_chars: int = 240) -> None:
        self._held = ""
        self._max = max_chars

    def push(self, text: str) -> list[str]:
        self._held += text
        out: list[str] = []
        while True:
            match = _BOUNDARY.search(self._held)
            if match is not None:
                cut = match.end()
            elif len(self._held) > self._max:
                space = self._held.rfind(" ", 0, self._max)
                cut = space if space > 0 else self._max
            else:
                break
            phrase, self._held = self._held[:cut].strip(), self._held[cut:].lstrip()
            if phrase:
                out.append(phrase)
        return out

    def flush(self) -> list[str]:
        phrase, self._held = self._held.strip(), ""
        return [phrase] if phrase else []
