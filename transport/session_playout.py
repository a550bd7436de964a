"""The player task of a :class:`~transport.session.BridgeSession`: the only code that awaits the AudioSource.

It sleeps until the pacer's next deadline or until it is woken (audio arrived, an interruption cleared the
voice, a duck began), hands ``Downlink.due(now_ns)`` the time, and writes frames (``DownlinkConfig.frame_ms``)
to the room. It never holds more than the pacer's lead in the native queue.

The first frames of a reply do not wait for the player to wake: when audio arrives while it is idle,
:meth:`Player.play_now` takes what is due in the socket reader's callback and starts the capture there
(:func:`~transport.session_plumbing.eager_task`: the SDK's capture request is issued before the callback
returns; the player awaits its completion when it next runs). Waking the player costs a loop turn, in which
the loop polls for I/O and the SDK's callback thread may take the GIL: 0.3–0.7 ms measured on the reply's
first sample. The reader still never awaits audio output. The decisions stay in the sans-I/O parts it drives:
:class:`~core.downlink.Downlink` (what is due), :class:`~core.ducker.Ducker` (the duck and its rewind) and
:class:`~transport.agent_state.AgentState` via its link (captions follow what was played).
"""

from __future__ import annotations

import asyncio

import numpy as np
import numpy.typing as npt

from core.clock import SECOND, Clock
from core.timing import StageTimer
from transport.agent_state_link import AgentStateLink
from transport.livekit_room import RoomLink
from transport.observe import SessionHooks
from transport.session_core import SessionCore
from transport.session_plumbing import eager_task

__all__ = ["Player"]


class Player:
    """``await player.run()`` in one task; ``player.wake()`` from any callback on the loop."""

    def __init__(self, core: SessionCore, room: RoomLink, *, clock: Clock, timer: StageTimer,
                 hooks: SessionHooks, agent_state: AgentStateLink) -> None:
        self._core = core
        self._room = room
        self._clock = clock
        self._timer = timer
        self._hooks = hooks
        self._agent_state = agent_state
        self._wake = asyncio.Event()
        self._idle = False  # waiting for a wake with nothing due and nothing in flight
        self._started: tuple[asyncio.Future[None], int] | None = None  # a capture play_now began, its start

    def wake(self) -> None:
        """Look at the downlink now (new audio, an interruption, a duck)."""
        self._wake.set()

    def play_now(self) -> None:
        """Audio arrived: if the player is idle, hand what is due to the AudioSource from this callback (the
        capture is started here and awaited by the player); otherwise, or if a duck must re-send the queue
        first, just wake it."""
        ducker, down = self._core.ducker, self._core.downlink
        if not self._idle or self._started is not None or down is None or (
                ducker is not None and ducker.rewind_pending):
            self._wake.set()
            return
        now = self._clock.now_ns()
        samples = down.due(now)
        # The agent state hears of these samples when the player next looks (after this capture): a state the
        # room has not been sent yet (``thinking``, set by this same burst of messages) is written first.
        if samples is not None:
            frame, t0 = self._outgoing(samples, now)
            self._started = (eager_task(self._room.send_voice(frame), name="voice-first-frame"), t0)
        self._wake.set()

    def _outgoing(self, samples: npt.NDArray[np.int16], now: int) -> tuple[npt.NDArray[np.int16], int]:
        """The frame with the duck's gain applied, shown to the hook, and the time its capture starts."""
        if self._core.ducker is not None:
            samples = self._core.ducker.voice_frame(samples, now)
        t0 = self._clock.now_ns()
        if self._hooks.voice_out is not None:
            self._hooks.voice_out(samples, t0)
        return samples, t0

    async def run(self) -> None:
        """The only writer of the agent's voice: pacer deadlines in, paced frames out."""
        try:
            await self._run()
        finally:
            if self._started is not None:  # a first frame started as the session ends: its capture is moot
                self._started[0].cancel()
                self._started = None

    async def _run(self) -> None:
        clock, room, wake, core = self._clock, self._room, self._wake, self._core
        ducker = core.ducker
        loop = asyncio.get_running_loop()
        while True:
            if self._started is not None:
                capture, t0 = self._started
                await capture  # send_voice counts and logs its own failures
                self._started = None
                self._timer.add("downlink.capture", clock.now_ns() - t0)
                continue
            down = core.downlink
            now = clock.now_ns()
            if ducker is not None and ducker.rewind_pending:
                # A duck started: what the AudioSource already holds (the pacer's lead) is replaced by the same
                # audio, ducked, so the caller hears the duck now rather than after the lead has played.
                redo = ducker.rewind(now)
                if redo.size:
                    room.clear_voice()
                    await room.send_voice(redo)
            if down is not None:
                samples = down.due(now)
                self._agent_state.voice(down, now)  # these samples reach the AudioSource before the next await
                if samples is not None:
                    frame, t0 = self._outgoing(samples, now)
                    await room.send_voice(frame)
                    self._timer.add("downlink.capture", clock.now_ns() - t0)
                    continue
                wake_ns = down.next_wakeup_ns(now)
            else:
                wake_ns = None
            wake.clear()
            if wake_ns is None:
                self._idle = True  # play_now may start the next reply's first frame from its callback
                try:
                    await wake.wait()  # idle: the next audio event or interruption sets it
                finally:
                    self._idle = False
                continue
            # A timer that sets the same event: no task or cancellation per frame (wait_for would make both,
            # 100 times a second per playing session).
            timer = loop.call_later(max(0.0, (wake_ns - clock.now_ns()) / SECOND), wake.set)
            try:
                await wake.wait()
            finally:
                timer.cancel()
