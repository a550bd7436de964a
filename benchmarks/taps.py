"""Instrumentation of a :class:`~transport.session.BridgeSession` through its public hooks.

:class:`~transport.observe.SessionHooks` are called by the session itself: ``voice_out`` just before a frame
is handed to the AudioSource (its time and peak are recorded), ``voice_cleared`` right after the AudioSource
queue was cleared (the native queue is empty from then on), ``caller_frame`` for every caller frame as it
arrives (time and peak), and ``engine_event`` for every engine event before the session acts on it (the
``audio`` events' receive time and id). Times are the session's clock, ``time.monotonic_ns`` by default.

Each hook costs a peak (``max``/``min`` over a 10–30 ms frame) and an append.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from transport.engine_protocol import AgentAudio, Event
from transport.observe import SessionHooks

__all__ = ["SessionTap"]


def _peak(samples: npt.NDArray[np.int16]) -> int:
    return max(int(samples.max()), -int(samples.min())) if samples.size else 0


class SessionTap:
    """``BridgeSession(config, hooks=tap.hooks())``; read the lists afterwards."""

    def __init__(self) -> None:
        self.captures: list[tuple[int, int, int]] = []  # (ns handed over, peak, samples)
        self.clears: list[int] = []
        self.caller_frames: list[tuple[int, int]] = []  # (arrival ns, peak)
        self.audio_events: list[tuple[int, int]] = []  # (recv ns, event_id)

    def hooks(self) -> SessionHooks:
        captures, clears, frames, events = self.captures, self.clears, self.caller_frames, self.audio_events

        def voice_out(samples: npt.NDArray[np.int16], at_ns: int) -> None:
            captures.append((at_ns, _peak(samples), int(samples.size)))

        def caller_frame(_identity: str, samples: npt.NDArray[np.int16], recv_ns: int) -> None:
            frames.append((recv_ns, _peak(samples)))

        def engine_event(event: Event, recv_ns: int) -> None:
            if isinstance(event, AgentAudio):
                events.append((recv_ns, event.event_id))

        return SessionHooks(voice_out=voice_out, voice_cleared=clears.append, caller_frame=caller_frame,
                            engine_event=engine_event)
