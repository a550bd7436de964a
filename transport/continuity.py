"""Continuity across engine reconnects: the call's transcript carried into the next conversation.

A dropped engine socket is reopened as a *new* conversation (new ``conversation_id``, fresh context): the agent
would forget the call and, with a first message configured, greet the caller a second time. Sans-I/O, no
clock; the session feeds it the engine's events and asks it three things:

- :meth:`Continuity.init_for` — the init of the n-th conversation (the EngineClient's ``init_factory`` hook).
  The first is the configured init. Later ones, **when the first-message override is in use** (the configured
  init sets ``agent.first_message``, so the agent must allow that override or the first conversation would
  have been refused with 1008), carry ``first_message: ""``: the engine itself waits for the caller and no
  greeting is ever produced.
- :meth:`Continuity.handover` — once a later conversation is established, the text to send it as one
  ``contextual_update`` (``context_id`` :data:`CONTEXT_ID`): the transcript so far, user and agent final
  texts, oldest first, bounded to ``max_chars``.
- :meth:`Continuity.drop` — **without** the override (we may not send it: an agent that does not allow it
  would refuse every conversation with 1008), a reconnected conversation's unsolicited greeting is dropped
  at the bridge: the first agent response it sends before any sign of a user turn (a user transcript, or a
  ``user_message`` we sent) — its audio, text and corrections, all under that response's ``event_id`` —
  never reaches the playout or the room. A later response with another id (say the agent re-engaging a
  silent caller after its turn timeout) passes. The engine did generate the greeting and counts it as said
  in its own history; the caller does not hear it.

Transcript entries: ``user_transcript`` finals, ``agent_response`` texts, and a correction replaces the agent
text it corrects (what the caller actually heard of an interrupted reply), plus typed ``user_message`` texts.
Limit and overflow: at most ``max_chars`` characters of entries are kept; when a new entry passes the limit
the oldest entries are dropped whole (counted in ``dropped_entries``), and a single entry longer than the
limit keeps its last ``max_chars`` characters. 0 turns continuity off: nothing kept, nothing handed over,
nothing dropped, inits unchanged.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace
from typing import Any, Final

from core.errors import ConfigError
from transport import engine_protocol as ep
from transport.engine_protocol import InitiationData

__all__ = ["CONTEXT_ID", "Continuity", "ContinuityStats"]

CONTEXT_ID: Final = "lk-bridge-continuity"  # one id: a second handover replaces the first in the agent's context
_HEADER: Final = ("The connection to the voice agent was re-established mid-call; this is the conversation "
                  "so far, oldest first (User = the caller, Agent = you). Continue it; do not greet again.")
_GREETING: Final = (ep.AgentAudio, ep.AgentResponse, ep.AgentResponseCorrection, ep.AgentChatResponsePart)
_USER_TURN: Final = (ep.UserTranscript, ep.TentativeUserTranscript)


@dataclass(frozen=True, slots=True)
class ContinuityStats:
    handovers: int  # transcripts handed to a re-established conversation
    dropped_entries: int  # transcript entries dropped to keep within max_chars
    greeting_events_dropped: int  # a re-established conversation's unsolicited greeting, event by event
    transcript_chars: int  # held now


class Continuity:
    def __init__(self, init: InitiationData, *, max_chars: int = 4000) -> None:
        if max_chars < 0:
            raise ConfigError(f"max_chars must be ≥ 0, got {max_chars}")
        self.max_chars = max_chars
        self._init = init
        agent = (init.overrides or {}).get("agent")
        self.uses_override = isinstance(agent, dict) and "first_message" in agent
        self._entries: deque[tuple[str, str, int | None]] = deque()  # (who, text, event_id)
        self._chars = 0
        self.dropped_entries = 0
        self.greeting_events_dropped = 0
        self.handovers = 0
        self._gate_open = True  # False: a reconnected conversation has not seen a user turn yet
        self._greeting_id: int | None = None  # the event id of the response being dropped

    def stats(self) -> ContinuityStats:
        return ContinuityStats(self.handovers, self.dropped_entries, self.greeting_events_dropped, self._chars)

    # ------------------------------------------------------------------ the EngineClient hook
    def init_for(self, conversations: int) -> InitiationData:
        """The init for a conversation after ``conversations`` established ones (0: the first)."""
        if conversations == 0 or not self.max_chars:
            return self._init
        if self.uses_override:
            overrides: dict[str, Any] = dict(self._init.overrides or {})
            overrides["agent"] = {**overrides["agent"], "first_message": ""}
            return replace(self._init, overrides=overrides)
        return self._init

    # ------------------------------------------------------------------ conversation lifecycle
    def handover(self, conversations: int) -> str | None:
        """Called when the ``conversations``-th conversation is established: the contextual update to send
        it, or None (the first conversation, continuity off, or nothing said yet)."""
        if conversations <= 1 or not self.max_chars:
            return None
        self._gate_open = self.uses_override  # with the override the engine does not greet: nothing to drop
        self._greeting_id = None
        if not self._entries:
            return None
        self.handovers += 1
        return self.text()

    def text(self) -> str:
        lines = [f"{'User' if who == 'user' else 'Agent'}: {text}" for who, text, _ in self._entries]
        return "\n".join([_HEADER, *lines])

    @property
    def entries(self) -> list[tuple[str, str]]:
        return [(who, text) for who, text, _ in self._entries]

    # ------------------------------------------------------------------ what was said
    def drop(self, event: ep.Event) -> bool:
        """Record ``event``'s text; True when the session must not pass it on (an unsolicited greeting)."""
        if not self.max_chars:
            return False
        if isinstance(event, _USER_TURN):
            self._gate_open = True
        elif not self._gate_open and isinstance(event, _GREETING):
            if self._greeting_id is None:
                self._greeting_id = event.event_id
            if event.event_id == self._greeting_id:
                self.greeting_events_dropped += 1
                return True
            self._gate_open = True  # another response: not the greeting
        if isinstance(event, ep.UserTranscript):
            self._add("user", event.text, None)
        elif isinstance(event, ep.AgentResponse):
            self._add("agent", event.text, event.event_id)
        elif isinstance(event, ep.AgentResponseCorrection):
            self._correct(event)
        return False

    def user_message(self, text: str) -> None:
        """A typed message was sent to the engine: part of the transcript, and a user turn."""
        if self.max_chars:
            self._gate_open = True
            self._add("user", text, None)

    def _add(self, who: str, text: str, event_id: int | None) -> None:
        text = " ".join(text.split())
        if not text:
            return
        last = self._entries[-1] if self._entries else None
        if who == "agent" and last is not None and last[0] == "agent" and last[2] == event_id:
            # A streamed reply arrives phrase by phrase under one event id: one entry.
            self._entries.pop()
            self._chars -= len(last[1])
            text = f"{last[1]} {text}"
        text = text[-self.max_chars:]
        self._entries.append((who, text, event_id))
        self._chars += len(text)
        while self._chars > self.max_chars and len(self._entries) > 1:
            _, old, _ = self._entries.popleft()
            self._chars -= len(old)
            self.dropped_entries += 1

    def _correct(self, event: ep.AgentResponseCorrection) -> None:
        for index in range(len(self._entries) - 1, -1, -1):
            who, text, event_id = self._entries[index]
            if who == "agent" and (event_id == event.event_id or text.endswith(" ".join(event.original.split()))):
                corrected = " ".join(event.corrected.split())
                self._chars += len(corrected) - len(text)
                if corrected:
                    self._entries[index] = (who, corrected, event_id)
                else:  # cut off before a word was heard
                    del self._entries[index]
                return
