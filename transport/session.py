"""One bridge session: one LiveKit room ⇄ one Speech Engine conversation — the asyncio shell.

Every decision lives in :class:`~transport.session_core.SessionCore` (sans-I/O: lifecycle, callers, deadlines,
the audio between the edges). This shell feeds it the edges' callbacks with their arrival times and carries out
the actions it returns; it owns the :class:`~transport.livekit_room.RoomLink`, the
:class:`~transport.engine_client.EngineClient`, the tasks, and one loop timer armed for the core's next deadline
(linger, keepalive): aioquic's ``get_timer``/``handle_timer`` pattern, no polling. Its parts: the player task
(:mod:`transport.session_playout`), tools/chat/agent state/transcripts (:mod:`transport.room_features`), tasks,
event fan-out and teardown budgets (:mod:`transport.session_plumbing`).

Data flow (see ``docs/ARCHITECTURE.md``)::

    callers' AudioStreams (at the engine's rate) ─► core.caller_audio ─► Uplink (mixer → encode) ─► EngineClient
    EngineClient reader ─► core.engine_event ─► Downlink (gate → decode → soxr → playout) ─► Player ─► AudioSource

Rules the code here keeps:

- Callbacks from both edges are synchronous and short; an ``interruption`` flushes the playout buffer, clears
  the AudioSource queue and wakes the player inside the reader's callback, before the next message is read.
- Only :meth:`transport.session_playout.Player.run` awaits the AudioSource. It sleeps until the pacer's next
  deadline or until audio arrives, and never holds more than the pacer's lead in the native queue.
- Nothing here installs signal handlers or configures logging.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import numpy as np
import numpy.typing as npt

from core.clock import SECOND, Clock, MonotonicClock
from core.downlink import Downlink
from core.duck import DuckConfig
from core.ducker import Ducker, DuckerConfig
from core.errors import BridgeError, ConfigError, EngineError
from core.formats import AudioFormat
from core.timing import StageTimer
from core.uplink import Uplink
from transport.agent_state_link import AgentStateLink
from transport.chat import ChatConfig, ChatRelay
from transport.config import EngineSettings, SessionConfig
from transport.continuity import Continuity
from transport.control import ConversationControls, NoConversation
from transport.engine_client import EngineClient, StateChange
from transport.engine_protocol import AgentAudio, ConversationMetadata, Event, Interruption
from transport.events import RoomStateChanged, SessionEvent, SessionState
from transport.livekit_room import RoomLink, RoomState
from transport.log_context import LogContext, bound, new_session_id
from transport.observe import SessionHooks, SessionStats, metrics_dict, session_stats
from transport.room_features import RoomFeatures
from transport.session_core import (
    Action,
    ClearVoice,
    End,
    ReadCallersAt,
    SendAudio,
    SessionCore,
    StartEngine,
    WakePlayout,
)
from transport.session_playout import Player
from transport.session_plumbing import ENGINE_CLOSE_S, ROOM_CLOSE_S, EventFanout, TaskSet, within
from transport.tools import ClientTools, ToolCalls
from transport.transcripts import TranscriptPublisher

__all__ = ["BridgeSession", "EngineSettings", "SessionConfig", "SessionState", "serve"]  # config re-exported

log = logging.getLogger(__name__)

_KEEP_INTERRUPTIONS = 1000


class BridgeSession(ConversationControls):  # contextual_update, user_message, user_activity: transport.control
    """``await session.start()``, then ``await session.wait()``; ``await session.stop()`` from anywhere."""

    def __init__(self, config: SessionConfig, *, clock: Clock | None = None, hooks: SessionHooks | None = None,
                 client_factory: Callable[..., EngineClient] = EngineClient, tools: ClientTools | None = None,
                 chat: ChatConfig | None = None) -> None:
        self.config = config
        self.clock = clock or MonotonicClock()
        self.timer = StageTimer()
        self.hooks = hooks or SessionHooks()
        self.log_context = LogContext(session=new_session_id())  # ids on every log record of this session
        self._client_factory = client_factory
        self.core = SessionCore(
            start_immediately=config.start_when == "immediately", end_when_empty=config.end_when_empty,
            linger_ns=int(config.linger_s * SECOND), make_uplink=self._make_uplink,
            make_downlink=self._make_downlink, backlog_ms=config.backlog_ms,
            ducker=Ducker(DuckerConfig(duck=DuckConfig(depth_db=config.duck_db, hold_ms=config.duck_hold_ms)),
                          timer=self.timer) if config.duck_db > 0 else None,
            caller_rate=config.initial_caller_rate, follow_engine_rate=config.caller_rate is None)
        self.room = RoomLink(
            config.room, on_caller_audio=self._on_caller_audio, on_caller_joined=self._on_caller_joined,
            on_caller_left=self._on_caller_left, on_state=self._on_room_state, clock=self.clock,
            caller_rate=config.initial_caller_rate)
        self.engine: EngineClient | None = None
        # Client tools, lk.chat → user_message, lk.agent.state and captions: transport/room_features.py
        self.features = RoomFeatures(self.room, self.clock, tools=tools, chat=chat, tool_result=self._tool_result,
                                     chat_message=self._chat_message)
        self.continuity = Continuity(config.engine.init, max_chars=config.continuity_chars)
        self.player = Player(self.core, self.room, clock=self.clock, timer=self.timer, hooks=self.hooks,
                             agent_state=self.features.agent_state)
        self._fanout = EventFanout(config.events_queue)
        self._tasks = TaskSet(on_crash=self._finish)
        self._done = asyncio.Event()
        self._error: BaseException | None = None
        self._teardown_task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: int | None = None
        # The most recent interruptions with their timings (an engine can send any number; the count is in stats).
        self.interruptions: deque[dict[str, int]] = deque(maxlen=_KEEP_INTERRUPTIONS)

    # ------------------------------------------------------------------ public API
    @property
    def state(self) -> SessionState:
        return self.core.state

    @property
    def uplink(self) -> Uplink | None:
        return self.core.uplink

    @property
    def downlink(self) -> Downlink | None:
        return self.core.downlink

    @property
    def tools(self) -> ClientTools:
        return self.features.tools

    @property
    def tool_calls(self) -> ToolCalls:
        return self.features.tool_calls

    @property
    def chat(self) -> ChatRelay:
        return self.features.chat

    @property
    def agent_state(self) -> AgentStateLink:
        return self.features.agent_state

    @property
    def transcripts(self) -> TranscriptPublisher | None:
        return self.features.transcripts

    async def start(self) -> None:
        """Join the room and (per ``start_when``) open the conversation; raise if either edge fails."""
        with bound(self.log_context):  # every task started from here on logs with this session's ids
            await self._start()

    async def _start(self) -> None:
        if self.state is not SessionState.CREATED:
            raise ConfigError("a session starts once")
        self._apply(self.core.begin(self._now()))
        try:
            await self.room.connect()
            self.log_context.room = self.room.room.name
            self.features.joined(publish_transcripts=self.config.publish_transcripts)
            actions = self.core.room_joined(self._now())
            if any(isinstance(a, StartEngine) for a in actions):
                await self._start_engine()  # the first conversation opens inside start(): its errors raise here
            self._apply([a for a in actions if not isinstance(a, StartEngine)])
            self._tasks.spawn(self.player.run(), "playout")
            self._tasks.spawn(self._watch_room(), "room-watch")
        except BaseException:
            await self._teardown()
            raise

    async def wait(self) -> None:
        """Until the session ends; re-raises the error that ended it, if any."""
        await self._done.wait()
        if self._error is not None:
            raise self._error

    async def stop(self) -> None:
        """Close both sides and every task. Safe to call more than once and from any task."""
        if self.core.ending:
            await self._done.wait()
            return
        with bound(self.log_context):
            await self._teardown()

    async def events(self) -> AsyncIterator[SessionEvent]:
        """Every event from now until the session stops (:mod:`transport.events`). Slow consumers lose the
        oldest events."""
        async for event in self._fanout.subscribe():
            yield event

    def event_backlogs(self) -> list[int]:
        """Events waiting in each subscriber's queue (each at most ``config.events_queue``)."""
        return self._fanout.backlogs()

    def stats(self, *, stages: bool = True) -> SessionStats:
        """One snapshot of every component's counters (``stages``: also per-stage timing percentiles)."""
        return session_stats(self, stages=stages)

    def metrics(self) -> dict[str, Any]:
        """:meth:`stats` as plain JSON-ready data."""
        return metrics_dict(self.stats())

    # ------------------------------------------------------------------ actions
    def _now(self) -> int:
        return self.clock.now_ns()

    def _apply(self, actions: Iterable[Action]) -> None:
        for action in actions:
            if isinstance(action, SendAudio):
                self._send_audio(action)
            elif isinstance(action, WakePlayout):
                self.player.play_now()  # an idle player's first frame is captured from this callback
            elif isinstance(action, ClearVoice):
                self.room.clear_voice()
                self.player.wake()
                if self.hooks.voice_cleared is not None:
                    self.hooks.voice_cleared(self._now())
            elif isinstance(action, ReadCallersAt):
                self.room.set_caller_rate(action.rate)
            elif isinstance(action, StartEngine):
                self._tasks.spawn(self._start_engine_safely(), "engine-start")
            elif isinstance(action, End):
                if action.error is None:
                    log.info("ending the session: %s", action.reason)
                self._finish(action.error)
            else:
                self._publish(action)
        self._arm_timer()

    def _send_audio(self, action: SendAudio) -> None:
        engine = self.engine
        self.core.audio_sent(engine is not None and engine.send_audio(action.payload))
        if action.recv_ns is not None:
            now = self._now()
            self.timer.add("uplink.total", now - action.recv_ns)
            up = self.core.uplink
            if up is not None:  # the caller frame's wait in our code plus the resampler's group delay
                self.timer.add("uplink.hold", now - action.recv_ns + up.last_held_ns)

    def _arm_timer(self) -> None:
        """One loop timer for the core's deadlines. Re-armed only when a deadline comes *earlier*: a later one
        (the keepalive moving with every chunk sent) is picked up when the armed timer fires."""
        if self.core.ending:
            return
        now = self._now()
        wake = self.core.next_wakeup_ns(now)
        if wake is None or (self._timer_at is not None and self._timer_at <= wake):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = wake
        self._timer = asyncio.get_running_loop().call_later(max(0.0, (wake - now) / SECOND), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        with bound(self.log_context):
            self._apply(self.core.timer(self._now()))

    def _publish(self, event: SessionEvent) -> None:
        self.features.publish(event, self.core.speaker)  # captions (the agent's follow its playout)
        self._fanout.publish(event)

    # ------------------------------------------------------------------ engine side
    def _make_uplink(self, fmt: AudioFormat, caller_rate: int) -> Uplink:
        return Uplink(fmt, in_rate=caller_rate, chunk_ms=self.config.chunk_ms, timer=self.timer)

    def _make_downlink(self, fmt: AudioFormat) -> Downlink:
        return Downlink(fmt, self.config.downlink)

    async def _start_engine(self) -> None:
        settings = self.config.engine
        self.engine = self._client_factory(
            settings.url_provider(), self._on_engine_event, on_state=self._on_engine_state,
            init=settings.init, clock=self.clock, max_attempts=settings.max_attempts,
            secrets=settings.secrets(), default_input_format=settings.fallback_input_format,
            reconnect_wanted=self.core.wants_conversation, init_factory=self.continuity.init_for)
        await self.engine.start()
        self._apply(self.core.engine_started(self._now()))
        self._tasks.spawn(self._watch_engine(self.engine), "engine-watch")

    async def _start_engine_safely(self) -> None:
        try:
            await self._start_engine()
        except BridgeError as exc:
            log.error("could not start the engine conversation: %s", exc)
            self._apply(self.core.engine_failed(exc, str(exc), self._now()))

    def _on_engine_event(self, event: Event, recv_ns: int) -> None:
        if self.hooks.engine_event is not None:
            self.hooks.engine_event(event, recv_ns)
        if self.continuity.drop(event):
            return  # a reconnected conversation's unsolicited greeting (transport/continuity.py)
        if isinstance(event, ConversationMetadata):
            self.log_context.conversation_id = event.conversation_id
            log.info("conversation %s: user audio %s, agent audio %s", event.conversation_id, event.input_format,
                     event.output_format)
        self.features.engine_event(event, recv_ns)  # agent state, tool calls
        self._apply(self.core.engine_event(event, recv_ns))
        if isinstance(event, AgentAudio):  # received → in the playout buffer (the core reads no clock)
            self.timer.add("downlink.total", self._now() - recv_ns)
        elif isinstance(event, Interruption):
            done_ns = self._now()
            self.timer.add("interrupt.flush", done_ns - recv_ns)
            self.interruptions.append({"event_id": event.event_id, "recv_ns": recv_ns, "silenced_ns": done_ns,
                                       "dropped_samples": self.core.last_interrupt_dropped})

    def _tool_result(self, tool_call_id: str, result: str, is_error: bool) -> bool:
        return self.engine is not None and self.engine.send_client_tool_result(tool_call_id, result, is_error=is_error)

    def _chat_message(self, text: str) -> bool:
        try:
            return self.user_message(text)  # also kept in the continuity transcript
        except NoConversation:
            return False

    def _on_engine_state(self, change: StateChange) -> None:
        self._conversation_state(change)  # continuity: the transcript handed to a new conversation
        self._apply(self.core.engine_state(change, change.at_ns))

    async def _watch_engine(self, engine: EngineClient) -> None:
        try:
            await engine.wait()
            self._apply(self.core.engine_ended(self._now()))
        except EngineError as exc:
            log.error("engine connection failed: %s", exc)
            self._apply(self.core.engine_failed(exc, str(exc), self._now()))

    # ------------------------------------------------------------------ room side
    def _on_caller_joined(self, identity: str) -> None:
        self._apply(self.core.caller_joined(identity, self._now()))

    def _on_caller_left(self, identity: str) -> None:
        self._apply(self.core.caller_left(identity, self._now()))

    def _on_caller_audio(self, identity: str, samples: npt.NDArray[np.int16], recv_ns: int) -> None:
        if self.hooks.caller_frame is not None:
            self.hooks.caller_frame(identity, samples, recv_ns)
        self.features.caller_frame(samples, recv_ns)
        actions = self.core.caller_audio(identity, samples, recv_ns)
        if actions:
            self._apply(actions)

    def _on_room_state(self, state: RoomState) -> None:
        self._publish(RoomStateChanged(self._now(), state))

    async def _watch_room(self) -> None:
        await self.room.disconnected.wait()
        self._apply(self.core.room_left(self.room.disconnect_reason, self._now()))

    # ------------------------------------------------------------------ plumbing
    def _finish(self, error: BaseException | None) -> None:
        """End the session from a callback: record why and let a task do the teardown."""
        if self.core.ending:
            return
        if error is not None and self._error is None:
            self._error = error
        if self._teardown_task is None:
            self._teardown_task = asyncio.ensure_future(self._teardown())

    async def _teardown(self) -> None:
        if self.core.ending:
            return
        self._apply(self.core.stop(self._now()))
        if self._timer is not None:
            self._timer.cancel()
            self._timer = self._timer_at = None
        await self._tasks.cancel_all()
        await self.features.stop()  # no more tool calls or chat
        # The room first, each side on its own budget and shielded from a cancel of this task: the agent must
        # leave the room even when the engine is blackholed (its close alone may take the close timeout).
        await within(self.room.close(), ROOM_CLOSE_S, "leaving the room")
        if self.engine is not None:
            await within(self.engine.close(), ENGINE_CLOSE_S, "closing the engine conversation")
        await self.features.close()  # transcript streams, agent state
        self._apply(self.core.stopped(self._now()))
        self._fanout.close()
        self._done.set()


async def serve(session: BridgeSession, stop: asyncio.Event) -> None:
    """Start ``session`` and run it until it ends by itself or ``stop`` is set; then stop it cleanly.

    Re-raises the error that ended it, if any. A worker's job and a one-room runner are both this.
    """
    await session.start()
    ended = asyncio.ensure_future(session.wait())
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({ended, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        await session.stop()
    if ended.done():
        ended.result()
    else:
        ended.cancel()

