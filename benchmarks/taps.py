"""Instrumentation of a :class:`~transport.session.BridgeSession` from the outside, without changing it.

- The voice out: the session's ``RoomLink`` instance gets wrappers around ``send_voice`` and ``clear_voice``
  (instance attributes shadow the methods; ``BridgeSession._play`` and ``_on_interruption`` call them through
  ``self.room``). Each capture is recorded with the time it was handed over and its peak, each clear with the
  time it returned (the native queue is empty from then on).
- Caller frames in: ``RoomLink._on_audio`` (the callback the room calls per caller frame) is wrapped the
  same way, recording arrival time and peak. A private name: if it is renamed this fails loudly, which is
  what a benchmark should do.
- Engine events in: ``BridgeSession`` takes a ``client_factory``; ours wraps ``on_event`` to record when each
  ``audio`` event reached the session.

The wrappers cost a ``monotonic_ns`` call, a peak (``max``/``min`` over a 10–30 ms frame) and an append.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from transport.engine_client import EngineClient
from transport.engine_protocol import AgentAudio, Event
from transport.session import BridgeSession

__all__ = ["SessionTap"]


def _peak(samples: npt.NDArray[np.int16]) -> int:
    return max(int(samples.max()), -int(samples.min())) if samples.size else 0


class SessionTap:
    def __init__(self, session: BridgeSession | None = None) -> None:
        self.captures: list[tuple[int, int, int]] = []  # (ns handed over, peak, samples)
        self.clears: list[int] = []
        self.caller_frames: list[tuple[int, int]] = []  # (arrival ns, peak)
        self.audio_events: list[tuple[int, int]] = []  # (recv ns, event_id)
        if session is not None:
            self.attach(session)

    def client_factory(self) -> Callable[..., EngineClient]:
        """Pass as ``BridgeSession(..., client_factory=tap.client_factory())``."""
        events = self.audio_events

        def factory(url_provider: Any, on_event: Callable[[Event, int], None], **kwargs: Any) -> EngineClient:
            def wrapped(event: Event, recv_ns: int) -> None:
                if isinstance(event, AgentAudio):
                    events.append((recv_ns, event.event_id))
                on_event(event, recv_ns)
            return EngineClient(url_provider, wrapped, **kwargs)

        return factory

    def attach(self, session: BridgeSession) -> None:
        room = session.room
        send, clear, on_audio = room.send_voice, room.clear_voice, room._on_audio
        captures, clears, frames = self.captures, self.clears, self.caller_frames

        async def send_voice(samples: npt.NDArray[np.int16]) -> None:
            captures.append((time.monotonic_ns(), _peak(samples), int(samples.size)))
            await send(samples)

        def clear_voice() -> None:
            clear()
            clears.append(time.monotonic_ns())

        def caller_audio(identity: str, samples: npt.NDArray[np.int16], recv_ns: int) -> None:
            frames.append((recv_ns, _peak(samples)))
            on_audio(identity, samples, recv_ns)

        room.send_voice = send_voice  # type: ignore[method-assign]
        room.clear_voice = clear_voice  # type: ignore[method-assign]
        room._on_audio = caller_audio
