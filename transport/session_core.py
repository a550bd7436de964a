"""The session's decisions without I/O: lifecycle, callers, deadlines, and the audio path between the edges.

:class:`SessionCore` is to :class:`~transport.session.BridgeSession` what a sans-I/O protocol object is to its
socket shell (aioquic's ``QuicConnection`` and its ``get_timer``/``handle_timer``). Every input is a method
that takes the time (``now_ns``) and returns the **actions** the shell must carry out, in order; the shell
owns the room, the engine client, the tasks and exactly one loop timer, armed for :meth:`next_wakeup_ns`.
Tests drive the core with literal times and need no server.

Lifecycle (:data:`TRANSITIONS`; any other move is a bug and raises ``AssertionError``)::

    created ─begin─► starting ─room_joined─► waiting ─caller_joined/StartEngine─┐
                        │ (start immediately, or callers already there)          ▼
                        └──────────────── StartEngine … engine_started ──────► running
    any state but stopped ─stop─► stopping ─stopped─► stopped

Inputs: :meth:`begin`, :meth:`room_joined`, :meth:`caller_joined`, :meth:`caller_left`, :meth:`caller_audio`,
:meth:`engine_started`, :meth:`engine_event`, :meth:`engine_state`, :meth:`timer`, :meth:`stop`,
:meth:`stopped`. Actions: :class:`StartEngine`, :class:`SendAudio`, :class:`ClearVoice`, :class:`WakePlayout`,
:class:`ReadCallersAt`, :class:`End`, and the public :mod:`~transport.events` themselves (the shell publishes
those).

The callers' rate: frames come at :attr:`SessionCore.caller_rate`. With ``follow_engine_rate`` it is the rate
of the engine's input format whenever the room's SDK can deliver it (:func:`core.formats.caller_rate_for`), so
the SDK resamples each caller in native code and the uplink only mixes and encodes; it starts at the rate of
the format the engine is expected to take and, when a conversation announces another, the core asks the shell
to read at the new rate (:class:`ReadCallersAt`, before any audio of that conversation), converts what the
backlog holds and restarts the onset detectors at that rate.

Deadlines (all in :meth:`next_wakeup_ns`):

- **linger**: the room emptied while running and ``end_when_empty``; a caller joining cancels it.
- **keepalive**: with a conversation open, callers in the room (or staying without them) and no caller audio
  for 250 ms, one chunk of silence (:mod:`transport.session_uplink`).
- **ducking** (``core/ducker.py``, owned here when ``duck_db`` > 0): every caller frame reaches the ducker
  before the uplink; a talk-over onset returns a ``WakePlayout`` (the shell re-sends the AudioSource's queue
  ducked and applies the gain to each paced frame) and a :class:`~transport.events.Ducked` event; an
  ``interruption`` confirms the duck, and the release after the hold happens on the voice's own frames, so it
  needs no deadline here.

The parts: the action types and counters are :mod:`transport.session_actions`; the caller → engine half
(hold while no conversation is open, replay, chunk, keepalive) is :class:`~transport.session_uplink.UplinkPath`;
the engine → room half is :class:`~core.downlink.Downlink` and :class:`~core.ducker.Ducker`, driven from here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from core.backlog import CallerBacklog
from core.downlink import Downlink
from core.ducker import Ducker
from core.errors import BridgeError, LiveKitError
from core.formats import ROOM_RATE, AudioFormat, caller_rate_for
from core.uplink import Uplink
from transport import engine_protocol as ep
from transport.engine_client import ConnectionState, StateChange
from transport.events import (
    AgentResponse,
    CallerJoined,
    CallerLeft,
    Ducked,
    DuckEnded,
    EngineErrorOccurred,
    EngineStateChanged,
    Interrupted,
    SessionError,
    SessionState,
    SessionStateChanged,
    UserTranscript,
)
from transport.session_actions import (
    CLEAR,
    NOTHING,
    START,
    WAKE,
    WAKE_ONLY,
    Action,
    ClearVoice,
    CoreCounters,
    CoreStats,
    End,
    ReadCallersAt,
    SendAudio,
    StartEngine,
    WakePlayout,
)
from transport.session_uplink import KEEPALIVE_NS, UplinkPath

__all__ = [  # the action types live in transport.session_actions; re-exported here
    "KEEPALIVE_NS",
    "TRANSITIONS",
    "Action",
    "ClearVoice",
    "CoreStats",
    "End",
    "ReadCallersAt",
    "SendAudio",
    "SessionCore",
    "StartEngine",
    "WakePlayout",
]

Int16Array = npt.NDArray[np.int16]

S = SessionState
TRANSITIONS: dict[SessionState, frozenset[SessionState]] = {
    S.CREATED: frozenset({S.STARTING, S.STOPPING}),
    S.STARTING: frozenset({S.WAITING, S.RUNNING, S.STOPPING}),
    S.WAITING: frozenset({S.RUNNING, S.STOPPING}),
    S.RUNNING: frozenset({S.STOPPING}),
    S.STOPPING: frozenset({S.STOPPED}),
    S.STOPPED: frozenset(),
}


class SessionCore:
    """One room ⇄ one conversation, as decisions. ``make_uplink(format, caller_rate)``/``make_downlink``
    build the pipelines for the formats a conversation announces (the shell binds chunk size, clock and stage
    timer). Callers' frames come at ``caller_rate``; with ``follow_engine_rate`` it follows the engine's input
    format (see the module notes)."""

    def __init__(self, *, start_immediately: bool, end_when_empty: bool, linger_ns: int,
                 make_uplink: Callable[[AudioFormat, int], Uplink], make_downlink: Callable[[AudioFormat], Downlink],
                 backlog_ms: int = 2000, keepalive_ns: int = KEEPALIVE_NS, ducker: Ducker | None = None,
                 caller_rate: int = ROOM_RATE, follow_engine_rate: bool = False) -> None:
        self.state = SessionState.CREATED
        self.callers: list[str] = []
        self.downlink: Downlink | None = None
        self.counters = CoreCounters()
        self.caller_rate = caller_rate
        self._follow_engine_rate = follow_engine_rate
        self.audio = UplinkPath(self.counters, backlog_ms=backlog_ms, keepalive_ns=keepalive_ns, rate=caller_rate)
        self.ducker = ducker  # local ducking (core/ducker.py); the shell applies its gain to the voice
        if ducker is not None:
            ducker.set_caller_rate(caller_rate)
        self._start_immediately = start_immediately
        self._end_when_empty = end_when_empty
        self._linger_ns = linger_ns
        self._make_uplink, self._make_downlink = make_uplink, make_downlink
        self._engine_requested = False
        self._linger_at: int | None = None
        self._seen_caller = False
        self.last_interrupt_dropped = 0  # 48 kHz samples the latest interruption discarded

    @property
    def uplink(self) -> Uplink | None:
        return self.audio.uplink

    @property
    def backlog(self) -> CallerBacklog:
        return self.audio.backlog

    # ------------------------------------------------------------------ lifecycle
    def begin(self, now_ns: int) -> list[Action]:
        return [self._move(S.STARTING, now_ns)]

    def room_joined(self, now_ns: int) -> list[Action]:
        """In the room; callers already there were reported through :meth:`caller_joined`."""
        if self.state is not S.STARTING:
            return []
        if self._start_immediately or self.callers:
            return self._request_engine()
        return [self._move(S.WAITING, now_ns)]

    def engine_started(self, now_ns: int) -> list[Action]:
        if self.state not in (S.STARTING, S.WAITING):
            return []
        actions: list[Action] = [self._move(S.RUNNING, now_ns)]
        # Everyone may have left while the conversation was being opened: no caller_left will come then, and
        # an empty room would keep a billed conversation open until the engine's own idle timeout.
        self._linger_if_empty(now_ns)
        return actions

    def engine_failed(self, error: BaseException, message: str, now_ns: int) -> list[Action]:
        """The conversation could not be opened, or a running one failed for good."""
        return [SessionError(now_ns, message), End(message, error)]

    def engine_ended(self, now_ns: int) -> list[Action]:
        return [End("the engine ended the conversation")]

    def room_left(self, reason: str | None, now_ns: int) -> list[Action]:
        if self.state in (S.STOPPING, S.STOPPED):
            return []
        if reason == "CLIENT_INITIATED":
            return [End("left the room")]
        return [End(f"removed from the room ({reason})", LiveKitError(f"removed from the room ({reason})"))]

    def stop(self, now_ns: int) -> list[Action]:
        if self.state in (S.STOPPING, S.STOPPED):
            return []
        self._linger_at = None
        return [self._move(S.STOPPING, now_ns)]

    def stopped(self, now_ns: int) -> list[Action]:
        return [self._move(S.STOPPED, now_ns)]

    @property
    def ending(self) -> bool:
        return self.state in (S.STOPPING, S.STOPPED)

    # ------------------------------------------------------------------ callers
    def caller_joined(self, identity: str, now_ns: int) -> list[Action]:
        if identity not in self.callers:
            self.callers.append(identity)
        self._linger_at = None
        self.audio.join(identity)
        actions: list[Action] = [CallerJoined(now_ns, identity)]
        if self.state is S.WAITING:
            actions += self._request_engine()
        return actions

    def caller_left(self, identity: str, now_ns: int) -> list[Action]:
        if identity in self.callers:
            self.callers.remove(identity)
        self.audio.leave(identity)
        if self.ducker is not None:
            self.ducker.caller_left(identity)
        self._seen_caller = True
        self._linger_if_empty(now_ns)
        return [CallerLeft(now_ns, identity)]

    def _linger_if_empty(self, now_ns: int) -> None:
        # "Empty" means everyone left: a room nobody has joined yet (start immediately) is waited in.
        if (self._end_when_empty and not self.callers and self._seen_caller and self.state is S.RUNNING
                and self._linger_at is None):
            self._linger_at = now_ns + self._linger_ns

    def wants_conversation(self) -> bool:
        """Is a conversation worth keeping open (and reopening when lost)? While callers are in the room, or
        when the session stays without them (``end_when_empty`` False): an empty room's conversation is billed
        for nothing."""
        return bool(self.callers) or not self._end_when_empty

    def speaker(self) -> str:
        """Whom a user transcript belongs to: the one caller, or nobody in particular."""
        return self.callers[0] if len(self.callers) == 1 else ""

    def caller_audio(self, identity: str, samples: Int16Array, recv_ns: int) -> Sequence[Action]:
        """One caller frame (at :attr:`caller_rate`). Chunks the uplink completes go out; held while no
        conversation is open.

        A talk-over onset ducks the voice first: the duck must not wait for the engine."""
        if self.ducker is not None:
            ducked = self.ducker.caller_frame(identity, samples, recv_ns)
            duck_events = self._duck_events()
            if ducked or duck_events:
                return [*duck_events, *([WAKE] if ducked else []),
                        *self.audio.frame(identity, samples, recv_ns, hold=not self.ending)]
        return self.audio.frame(identity, samples, recv_ns, hold=not self.ending)

    def _duck_events(self) -> list[Action]:
        assert self.ducker is not None
        events: list[Action] = []
        for kind, at_ns, data in self.ducker.drain_events():
            if kind == "duck_started":
                events.append(Ducked(at_ns, str(data.get("caller", "")), float(data.get("onset_to_duck_ms", 0.0))))
            else:
                events.append(DuckEnded(at_ns, kind.removeprefix("duck_")))
        return events

    # ------------------------------------------------------------------ engine
    def engine_event(self, event: ep.Event, recv_ns: int) -> Sequence[Action]:
        if isinstance(event, ep.AgentAudio):
            return self._agent_audio(event, recv_ns)
        if isinstance(event, ep.Interruption):
            return self._interrupt(event, recv_ns)
        if isinstance(event, ep.ConversationMetadata):
            return self._conversation(event, recv_ns)
        if isinstance(event, ep.UserTranscript | ep.TentativeUserTranscript):
            return [UserTranscript(recv_ns, event.text, event.event_id, isinstance(event, ep.UserTranscript))]
        if isinstance(event, ep.AgentResponse):
            return [AgentResponse(recv_ns, event.text, event.event_id)]
        if isinstance(event, ep.AgentResponseCorrection):
            return [AgentResponse(recv_ns, event.corrected, event.event_id, corrected_from=event.original)]
        if isinstance(event, ep.EngineErrorEvent):
            return [EngineErrorOccurred(recv_ns, event.code, event.error_type, event.message)]
        return NOTHING

    def _agent_audio(self, event: ep.AgentAudio, recv_ns: int) -> Sequence[Action]:
        down = self.downlink
        if down is None:
            return NOTHING
        self.counters.audio_events += 1
        try:
            down.push(event.audio, recv_ns, event_id=event.event_id)
        except BridgeError:
            self.counters.bad_audio += 1  # the protocol layer already validated it; a codec refusal is rare
            return NOTHING
        return WAKE_ONLY

    def _interrupt(self, event: ep.Interruption, recv_ns: int) -> list[Action]:
        """Silence first (the flush and the ClearVoice), bookkeeping after."""
        down = self.downlink
        dropped = self.last_interrupt_dropped = down.interrupt(event.event_id) if down is not None else 0
        self.counters.interruptions += 1
        actions: list[Action] = [Interrupted(recv_ns, event.event_id, dropped * 1000 // ROOM_RATE)]
        # An interruption of an older event (a tool-call sound) while a newer reply plays leaves that reply in
        # the buffer: the sink's queue is cleared only if something was dropped (its lead may be older audio)
        # or nothing is left to play (the usual barge-in).
        if dropped or down is None or not down.playout.depth_samples:
            actions.insert(0, CLEAR)
        if self.ducker is not None:
            self.ducker.interruption(recv_ns)  # a duck in progress is confirmed
            actions += self._duck_events()
        return actions

    def _conversation(self, metadata: ep.ConversationMetadata, now_ns: int) -> list[Action]:
        """(Re)build both directions for the formats this conversation announced; replay held audio."""
        actions: list[Action] = []
        fmt = metadata.input_format
        rate = caller_rate_for(fmt) if self._follow_engine_rate else self.caller_rate
        if rate != self.caller_rate:
            self.caller_rate = rate
            actions.append(ReadCallersAt(rate))
            self.audio.backlog.resample(rate)
            if self.ducker is not None:
                self.ducker.set_caller_rate(rate)
        up, down = self.uplink, self.downlink
        if up is None or up.format != fmt or up.in_rate != self.caller_rate:
            up = self._make_uplink(fmt, self.caller_rate)
        if down is None or down.format != metadata.output_format:
            self.downlink = self._make_downlink(metadata.output_format)
        return [*actions, *self.audio.opened(up, self.callers, now_ns)]

    def engine_state(self, change: StateChange, now_ns: int) -> list[Action]:
        actions: list[Action] = []
        if change.state is not ConnectionState.CONNECTED:
            self.audio.open = False  # audio waits in the backlog until the next conversation's metadata
        if change.state is ConnectionState.RECONNECTING:
            # The next conversation's audio has nothing to continue; what is buffered belongs to the old one.
            if self.downlink is not None:
                self.downlink.interrupt()
            if self.ducker is not None:
                self.ducker.voice_cleared(now_ns)
            actions.append(CLEAR)
        actions.append(EngineStateChanged(now_ns, change.state, change.attempt, change.conversation_id,
                                          change.close_code, change.reason))
        return actions

    def audio_sent(self, accepted: bool) -> None:
        """The shell's report on a :class:`SendAudio`: did the engine client take it?"""
        if accepted:
            self.counters.chunks_sent += 1
        else:
            self.counters.chunks_dropped += 1

    # ------------------------------------------------------------------ deadlines
    def next_wakeup_ns(self, now_ns: int) -> int | None:
        """The earliest deadline (linger, keepalive), or None: call :meth:`timer` then."""
        wake = self._linger_at
        keepalive = self._keepalive_at()
        if keepalive is not None:
            wake = keepalive if wake is None else min(wake, keepalive)
        return wake

    def _keepalive_at(self) -> int | None:
        if self.state is not S.RUNNING or not self.wants_conversation():
            return None  # an empty room: the engine's own idle timeout may end a conversation nobody uses
        return self.audio.keepalive_at()

    def timer(self, now_ns: int) -> list[Action]:
        actions: list[Action] = []
        if self._linger_at is not None and now_ns >= self._linger_at:
            self._linger_at = None
            if not self.callers:
                actions.append(End(f"room empty for {self._linger_ns / 1e9:.1f} s"))
        keepalive = self._keepalive_at()
        if keepalive is not None and now_ns >= keepalive:
            actions.append(self.audio.keepalive(now_ns))
        return actions

    # ------------------------------------------------------------------ plumbing
    def _request_engine(self) -> list[Action]:
        if self._engine_requested:
            return []
        self._engine_requested = True
        return [START]

    def _move(self, state: SessionState, now_ns: int) -> SessionStateChanged:
        if state not in TRANSITIONS[self.state]:
            raise AssertionError(f"session cannot go from {self.state.value} to {state.value}")
        self.state = state
        return SessionStateChanged(now_ns, state)

    def stats(self) -> CoreStats:
        return self.counters.snapshot(self.backlog.stats())
