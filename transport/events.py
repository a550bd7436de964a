"""What a session tells whoever embeds it: one frozen dataclass per kind of event, one union type.

``async for event in session.events()`` yields these; match on the class::

    match event:
        case CallerJoined(identity=who): ...
        case Interrupted(event_id=eid, dropped_ms=ms): ...
        case SessionError(message=text): ...

Every event carries ``at_ns``: when the session saw it, on the session's clock (``time.monotonic_ns`` unless
one was injected). The list, with what triggers each:

=========================  ===========================================================================
``SessionStateChanged``    the session moved in its lifecycle (see :class:`SessionState`)
``RoomStateChanged``       the LiveKit connection: connecting, connected, reconnecting, disconnected
``CallerJoined/Left``      a caller (a participant that is not an agent or ignored) came or went
``EngineStateChanged``     the Speech Engine connection: connecting, connected, reconnecting, closed
``UserTranscript``         the engine's transcript of the callers (``final`` False: tentative)
``AgentResponse``          the text of the agent's reply (``corrected_from`` set: a correction of it)
``Interrupted``            the engine's ``interruption``: the voice was stopped, ``dropped_ms`` discarded
``Ducked``                 a caller started talking over the voice: it was lowered at once (local ducking)
``DuckEnded``              the duck ended: ``confirmed`` by an interruption, or ``released`` (none came)
``EngineErrorOccurred``    the engine sent an ``error`` event (the conversation may go on)
``SessionError``           the session failed and is ending; :meth:`BridgeSession.wait` raises it
=========================  ===========================================================================

Slow consumers lose the oldest events (``SessionConfig.events_queue``); nothing here blocks the session.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from transport.engine_client import ConnectionState
from transport.livekit_room import RoomState

__all__ = [
    "AgentResponse",
    "CallerJoined",
    "CallerLeft",
    "DuckEnded",
    "Ducked",
    "EngineErrorOccurred",
    "EngineStateChanged",
    "Interrupted",
    "RoomState",
    "RoomStateChanged",
    "SessionError",
    "SessionEvent",
    "SessionState",
    "SessionStateChanged",
    "UserTranscript",
]


class SessionState(enum.Enum):
    CREATED = "created"
    STARTING = "starting"  # joining the room (and, with start_when="immediately", opening the conversation)
    WAITING = "waiting"  # in the room, conversation not opened yet (start_when="first_caller")
    RUNNING = "running"  # a conversation was opened; it may be reconnecting (see EngineStateChanged)
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class SessionStateChanged:
    at_ns: int
    state: SessionState


@dataclass(frozen=True, slots=True)
class RoomStateChanged:
    at_ns: int
    state: RoomState


@dataclass(frozen=True, slots=True)
class CallerJoined:
    at_ns: int
    identity: str


@dataclass(frozen=True, slots=True)
class CallerLeft:
    at_ns: int
    identity: str


@dataclass(frozen=True, slots=True)
class EngineStateChanged:
    at_ns: int
    state: ConnectionState
    attempt: int  # consecutive failed attempts so far (0 once connected)
    conversation_id: str | None = None
    close_code: int | None = None
    reason: str | None = None  # already redacted


@dataclass(frozen=True, slots=True)
class UserTranscript:
    at_ns: int
    text: str
    event_id: int
    final: bool  # False: ``tentative_user_transcript``, the engine may still change it


@dataclass(frozen=True, slots=True)
class AgentResponse:
    at_ns: int
    text: str
    event_id: int
    corrected_from: str | None = None  # set for ``agent_response_correction``: the text it replaces


@dataclass(frozen=True, slots=True)
class Interrupted:
    at_ns: int  # when the ``interruption`` message was received
    event_id: int
    dropped_ms: int  # agent audio discarded from the playout buffer


@dataclass(frozen=True, slots=True)
class Ducked:
    at_ns: int
    caller: str
    onset_to_duck_ms: float  # from the first frame of the caller's speech to the duck decision


@dataclass(frozen=True, slots=True)
class DuckEnded:
    at_ns: int
    outcome: str  # "confirmed" (the engine interrupted) or "released" (it did not: the voice came back)


@dataclass(frozen=True, slots=True)
class EngineErrorOccurred:
    at_ns: int
    code: int  # the close code the engine says it will use
    error_type: str | None
    message: str | None


@dataclass(frozen=True, slots=True)
class SessionError:
    at_ns: int
    message: str  # already redacted


SessionEvent = (SessionStateChanged | RoomStateChanged | CallerJoined | CallerLeft | EngineStateChanged
                | UserTranscript | AgentResponse | Interrupted | Ducked | DuckEnded | EngineErrorOccurred
                | SessionError)
