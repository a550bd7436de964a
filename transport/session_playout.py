"""The player task of a :class:`~transport.session.BridgeSession`: the only code that awaits the AudioSource.

It sleeps until the pacer's next deadline or until it is woken (audio arrived, an interruption cleared the
voice, a duck began), hands ``Downlink.due(now_ns)`` the time, and writes 10 ms frames to the room. It never
holds more than the pacer's lead in the native queue. The decisions stay in the sans-I/O parts it drives:
:class:`~core.downlink.Downlink` (what is due), :class:`~core.ducker.Ducker` (the duck and its rewind) and
:class:`~transport.agent_state.AgentState` via its link (captions follow what was played).
"""

from __future__ import annotations

import asyncio

from core.clock import SECOND, Clock
from core.timing import StageTimer
from transport.agent_state_link import AgentStateLink
from transport.livekit_room import RoomLink
from transport.observe import SessionHooks
from transport.session_core import SessionCore

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

    def wake(self) -> None:
        """Look at the downlink now (new audio, an interruption, a duck)."""
        self._wake.set()

    async def run(self) -> None:
        """The only writer of the agent's voice: pacer deadlines in, 10 ms frames out."""
        clock, room, wake, core, hooks = self._clock, self._room, self._wake, self._core, self._hooks
        ducker = core.ducker
        loop = asyncio.get_running_loop()
        while True:
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
                    if ducker is not None:
                        samples = ducker.voice_frame(samples, now)
                    t0 = clock.now_ns()
                    if hooks.voice_out is not None:
                        hooks.voice_out(samples, t0)
                    await room.send_voice(samples)
                    self._timer.add("downlink.capture", clock.now_ns() - t0)
                    continue
                wake_ns = down.next_wakeup_ns(now)
            else:
                wake_ns = None
            wake.clear()
            if wake_ns is None:
                await wake.wait()  # idle: the next audio event or interruption sets it
                continue
            # A timer that sets the same event: no task or cancellation per frame (wait_for would make both,
            # 100 times a second per playing session).
            timer = loop.call_later(max(0.0, (wake_ns - clock.now_ns()) / SECOND), wake.set)
            try:
                await wake.wait()
            finally:
                timer.cancel()
