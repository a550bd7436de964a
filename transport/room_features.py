"""The room-side features of a :class:`~transport.session.BridgeSession`, wired in one place.

The session owns one :class:`RoomFeatures` and forwards it what each feature reacts to; the features themselves
live in their own modules:

- client tools (:mod:`transport.tools`): a handler here, else LiveKit RPC to a caller; results back to the engine;
- chat (:mod:`transport.chat`): ``lk.chat`` from a caller → ``user_message``;
- agent state (:mod:`transport.agent_state_link`): ``lk.agent.state``, turn figures, the agent's captions;
- transcripts (:mod:`transport.transcripts`): the callers' captions (``publish_transcripts``).

What the session forwards: the room joined (:meth:`joined`), each engine event (:meth:`engine_event`), each
public event (:meth:`publish`), each caller frame (:meth:`caller_frame`); the player reports its playout to
``agent_state`` directly. Teardown is in two steps around leaving the room, as the session did before.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
from livekit import rtc

from core.clock import Clock
from transport.agent_state_link import AgentStateLink
from transport.chat import ChatConfig, ChatRelay
from transport.engine_protocol import ClientToolCall, ConversationMetadata, Event
from transport.events import SessionEvent, UserTranscript
from transport.livekit_room import RoomLink
from transport.session_plumbing import TRANSCRIPTS_CLOSE_S, within
from transport.tools import ClientTools, ToolCalls, room_rpc
from transport.transcripts import TranscriptPublisher

__all__ = ["RoomFeatures"]


class RoomFeatures:
    """Tools, chat, agent state and transcripts for one session's room."""

    def __init__(self, room: RoomLink, clock: Clock, *, tools: ClientTools | None, chat: ChatConfig | None,
                 tool_result: Callable[[str, str, bool], bool], chat_message: Callable[[str], bool]) -> None:
        self.tools = tools or ClientTools()
        self.tool_calls = ToolCalls(self.tools, reply=tool_result, perform_rpc=room_rpc(room.room),
                                    callers=lambda: room.callers)
        self.chat = ChatRelay(room.room, send=chat_message, is_caller=lambda who: who in room.callers, config=chat)
        self.agent_state = AgentStateLink(room.room, clock)  # lk.agent.state, turn figures, captions
        self.transcripts: TranscriptPublisher | None = None
        self._room = room

    def joined(self, *, publish_transcripts: bool) -> None:
        """The room is connected: start the transcript streams (if wanted) and the agent state."""
        if publish_transcripts:
            self.transcripts = TranscriptPublisher(self._room.room)
        self.agent_state.start(self.transcripts)

    def engine_event(self, event: Event, recv_ns: int) -> None:
        self.agent_state.engine_event(event, recv_ns)
        if isinstance(event, ConversationMetadata):
            self.tool_calls.new_conversation()  # the new conversation cannot take the old one's results
        elif isinstance(event, ClientToolCall):
            self.tool_calls.call(event)

    def publish(self, event: SessionEvent, speaker: Callable[[], str]) -> None:
        """A public event on its way out: the caller's captions, and the agent's (agent_state decides them)."""
        transcripts = self.transcripts
        if transcripts is not None and isinstance(event, UserTranscript):
            who = speaker()
            transcripts.user(who, event.text, event_id=event.event_id, final=event.final,
                             track_id=self._caller_track(who))
        self.agent_state.event(event)

    def _caller_track(self, identity: str) -> str | None:
        """The sid of the caller's audio track (its microphone first), for ``lk.transcribed_track_id``."""
        participant = self._room.room.remote_participants.get(identity) if identity else None
        if participant is None:
            return None
        audio = [p for p in participant.track_publications.values() if p.kind == rtc.TrackKind.KIND_AUDIO]
        audio.sort(key=lambda p: p.source != rtc.TrackSource.SOURCE_MICROPHONE)
        return audio[0].sid if audio else None

    def caller_frame(self, samples: npt.NDArray[np.int16], recv_ns: int) -> None:
        self.agent_state.caller_frame(samples, recv_ns)

    async def stop(self) -> None:
        """Before leaving the room: no more tool calls, chat or agent-state writes (the last one applied)."""
        await self.tool_calls.close()
        await self.chat.close()
        await self.agent_state.quiesce()

    async def close(self) -> None:
        """After leaving the room: the transcript streams and the agent state, each on its budget."""
        if self.transcripts is not None:
            await within(self.transcripts.close(), TRANSCRIPTS_CLOSE_S, "closing the transcript streams")
        await within(self.agent_state.close(), TRANSCRIPTS_CLOSE_S, "stopping the agent state")
