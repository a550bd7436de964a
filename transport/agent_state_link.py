"""The asyncio side of :mod:`transport.agent_state`: feed it the session's events, publish what it decides.

- ``lk.agent.state`` and ``lk.bridge.turn`` are participant attributes of the agent, set with
  ``local_participant.set_attributes`` by one background task. Setting them awaits the server, so callers
  never wait: a new value replaces a pending one (only the latest value of an attribute matters), at most
  one call is in flight, and a failing or timed-out call is logged and counted (``failed``), never raised.
- A call is over when the server has applied it: when the SDK's call returns **or** an update of our own
  participant from the server carries the values, whichever comes first. The SDK (livekit-rtc 1.2.1, its
  Rust ``set_attributes``) sends the request and only then registers for the server's ``RequestResponse``;
  a response that wins that race is dropped, and the call returns 5 s later without an error (the Python
  SDK does not read the callback's error either) although the server applied the update at once. Measured
  here under CPU load: 1 call in 2000 took 5.0 s. Waiting on the call alone held every later value behind
  it for those 5 s, and the states in between were replaced unsent: a page saw ``thinking`` then
  ``listening``, never ``speaking``. A call left running this way is cancelled at close.
- ``lk.bridge.turn`` is JSON, the latest turn's figures in ms: ``{"turn": 3, "reply_ms": 812.4}``, and after a
  barge-in also ``interruption_ms``, ``onset_to_silence_ms`` (with ducking on) and ``played_ms``.
- Agent captions go to the :class:`~transport.transcripts.TranscriptPublisher` (when the session publishes
  transcripts) with ``lk.transcribed_track_id`` = the sid of the agent's published voice track.
- The machine's one deadline (thinking gives up) is one loop timer, armed after every input.

The session makes one before it joins, calls :meth:`start` once in the room, then :meth:`engine_event`,
:meth:`event`, :meth:`caller_frame` and, once per turn of its player loop, :meth:`voice`; each returns at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from livekit import rtc

from core.clock import SECOND, Clock
from core.downlink import Downlink
from core.formats import ROOM_RATE, AudioFormat
from core.playout import PlayoutState
from transport import engine_protocol as ep
from transport.agent_state import ATTR_AGENT_STATE, AgentStateMachine, Caption, Output, StateChanged, TurnFigures
from transport.engine_client import ConnectionState
from transport.events import AgentResponse, Ducked, EngineStateChanged, Interrupted, SessionEvent, UserTranscript
from transport.transcripts import TranscriptPublisher

__all__ = ["ATTR_TURN", "AgentStateLink", "AgentStateStats"]

log = logging.getLogger(__name__)

ATTR_TURN = "lk.bridge.turn"
_CALL_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class AgentStateStats:
    state: str  # the latest lk.agent.state decided (published or about to be)
    turns: int  # user turns ended
    attribute_calls: int  # set_attributes calls made
    attribute_failures: int  # of those, failed or timed out (logged)
    attributes_coalesced: int  # values replaced by a newer one before they were sent


class AgentStateLink:
    def __init__(self, room: rtc.Room, clock: Clock, *, machine: AgentStateMachine | None = None) -> None:
        self.machine = machine or AgentStateMachine()
        self._room = room
        self._clock = clock
        self._transcripts: TranscriptPublisher | None = None
        self._format: AudioFormat | None = None
        self._down: Downlink | None = None
        self._played = 0  # the watched downlink's playout.samples_out at the last look
        self._pending: dict[str, str] = {}
        self._ready = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        # The write in flight and the future its echo resolves (the server's update of our participant).
        self._writing: tuple[dict[str, str], asyncio.Future[None]] | None = None
        self._calls: set[asyncio.Task[None]] = set()  # calls whose echo came first, still awaiting their response
        self._idle = asyncio.Event()  # no write in flight
        self._idle.set()
        self._quiet = False  # leaving: nothing more is sent
        self.calls = 0
        self.failed = 0
        self.coalesced = 0  # values replaced before they were sent
        self._set(ATTR_AGENT_STATE, self.machine.state.value)

    def start(self, transcripts: TranscriptPublisher | None) -> None:
        """In the room: publish what is pending (``initializing``) and from now on every change."""
        self._transcripts = transcripts
        if self._task is None:
            self._room.on("participant_attributes_changed", self._on_attributes_changed)
            self._task = asyncio.get_running_loop().create_task(self._run(), name="bridge:agent-state")

    def stats(self) -> AgentStateStats:
        return AgentStateStats(self.machine.state.value, self.machine.turns, self.calls, self.failed,
                               self.coalesced)

    # ------------------------------------------------------------------ inputs
    def engine_event(self, event: ep.Event, recv_ns: int) -> None:
        if isinstance(event, ep.AgentAudio):
            fmt = self._format
            if fmt is not None:
                n = len(event.audio) // fmt.bytes_per_sample
                self.machine.agent_audio(event.event_id, n * ROOM_RATE // fmt.rate)
        elif isinstance(event, ep.ConversationMetadata):
            self._format = event.output_format
            if self._transcripts is not None:
                self._transcripts.conversation = event.conversation_id
            self._apply(self.machine.conversation_opened(event.conversation_id, recv_ns))

    def event(self, event: SessionEvent) -> None:
        m, now = self.machine, self._clock.now_ns()
        if isinstance(event, UserTranscript) and event.final:
            self._apply(m.user_turn_ended(now))
        elif isinstance(event, AgentResponse) and event.corrected_from is None:
            self._apply(m.agent_text(event.event_id, event.text, now))
        elif isinstance(event, Interrupted):
            self._apply(m.interrupted(event.event_id, event.at_ns, now))  # the voice was cleared just before
        elif isinstance(event, Ducked):
            m.talk_over(event.at_ns - int(event.onset_to_duck_ms * 1e6))
        elif isinstance(event, EngineStateChanged) and event.state in (ConnectionState.RECONNECTING,
                                                                       ConnectionState.CLOSED):
            self._apply(m.conversation_lost(now))

    def caller_frame(self, samples: npt.NDArray[np.int16], recv_ns: int) -> None:
        self.machine.caller_frame(samples, recv_ns)

    def voice(self, down: Downlink, now_ns: int) -> None:
        """The player loop's look at the playout right after ``Downlink.due``: real voice samples handed out
        since the last look (the loop captures them into the AudioSource before it next awaits; padding and
        the silence after an interruption are not voice), and whether the reply has ended (idle)."""
        playout = down.playout
        if down is not self._down:  # a new conversation's downlink: everything it handed out so far counts
            self._down, self._played = down, 0
        played = playout.samples_out - self._played
        if played:
            self._played = playout.samples_out
            self._apply(self.machine.voice_played(played, now_ns))
        if playout.state is PlayoutState.IDLE:
            self._apply(self.machine.voice_ended(now_ns))

    # ------------------------------------------------------------------ outputs
    def _apply(self, outputs: list[Output]) -> None:
        for out in outputs:
            if isinstance(out, StateChanged):
                log.debug("agent state: %s", out.state.value)
                self._set(ATTR_AGENT_STATE, out.state.value)
            elif isinstance(out, TurnFigures):
                self._set(ATTR_TURN, json.dumps(out.as_dict(), separators=(",", ":")))
            elif isinstance(out, Caption) and self._transcripts is not None:
                self._transcripts.agent(self._room.local_participant.identity, out.text,
                                        segment_id=out.segment_id, final=out.final, track_id=self._voice_sid())
        if outputs:
            self._arm()

    def _voice_sid(self) -> str | None:
        for sid, publication in self._room.local_participant.track_publications.items():
            if publication.kind == rtc.TrackKind.KIND_AUDIO:
                return sid
        return None

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        wake = self.machine.next_wakeup_ns()
        if wake is not None:
            delay = max(0.0, (wake - self._clock.now_ns()) / SECOND)
            self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._apply(self.machine.timer(self._clock.now_ns()))

    def _set(self, key: str, value: str) -> None:
        if self._quiet:
            return
        if key in self._pending:
            self.coalesced += 1
        self._pending[key] = value
        self._ready.set()

    def _on_attributes_changed(self, _changed: dict[str, str], participant: rtc.Participant) -> None:
        writing = self._writing
        if writing is None or participant is not self._room.local_participant or writing[1].done():
            return
        attributes = participant.attributes
        if all(attributes.get(key) == value for key, value in writing[0].items()):
            writing[1].set_result(None)

    async def _send(self, batch: dict[str, str]) -> None:
        """One ``set_attributes`` call, over when it returns or when an update of our participant that the
        server sent after the call began carries ``batch``."""
        echo: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._writing = (batch, echo)
        call = asyncio.get_running_loop().create_task(self._room.local_participant.set_attributes(batch),
                                                      name="bridge:agent-attributes")
        try:
            async with asyncio.timeout(_CALL_TIMEOUT_S):
                await asyncio.wait((call, echo), return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # timed out, or the link is closing
            call.cancel()
            raise
        finally:
            self._writing = None
            echo.cancel()
        if call.done():
            call.result()  # its error, if any, is this call's
        else:  # applied: its own response comes later (or is lost) and is not waited for
            self._calls.add(call)
            call.add_done_callback(self._calls.discard)

    async def _run(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            batch, self._pending = self._pending, {}
            if not batch:  # emptied by quiesce
                continue
            self.calls += 1
            self._idle.clear()
            try:
                await self._send(batch)
            except Exception as exc:  # a closed room, a slow server: the next value goes out anyway
                self.failed += 1
                log.warning("could not set the agent's attributes %s: %s", sorted(batch), exc)
            finally:
                self._idle.set()

    async def quiesce(self, timeout_s: float = 1.0, settle_s: float = 0.05) -> None:
        """Before the agent leaves the room: send nothing more, and let the write in flight be applied.

        Each write makes the server answer with a burst (our participant's update, the request's response, a
        refreshed token). Leaving into that burst can lose the leave itself (see
        :meth:`transport.livekit_room.RoomLink.close`), so the last write's answers arrive first (``settle_s``
        after it is applied)."""
        self._quiet = True
        self._pending.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._idle.is_set():
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
                await asyncio.sleep(settle_s)

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._task is not None:
            self._room.off("participant_attributes_changed", self._on_attributes_changed)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for call in list(self._calls):
            call.cancel()
        if self._calls:
            await asyncio.gather(*self._calls, return_exceptions=True)
