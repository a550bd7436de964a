"""What :class:`~transport.session_core.SessionCore` asks its shell to do, and its counters.

Every input of the core returns a list of these, in order; the shell (:mod:`transport.session`) carries them
out: :class:`StartEngine`, :class:`SendAudio`, :class:`ClearVoice`, :class:`WakePlayout`, :class:`ReadCallersAt`,
:class:`End`, and the public :mod:`~transport.events` themselves, which it publishes. Plain frozen data, no
behaviour.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.backlog import BacklogStats
from transport.events import SessionEvent

__all__ = ["Action", "ClearVoice", "CoreCounters", "CoreStats", "End", "ReadCallersAt", "SendAudio", "StartEngine",
           "WakePlayout"]


@dataclass(frozen=True, slots=True)
class StartEngine:
    """Open the conversation; report :meth:`SessionCore.engine_started` or the failure."""


@dataclass(frozen=True, slots=True)
class SendAudio:
    """Hand ``payload`` (engine format) to the engine client."""

    payload: bytes
    recv_ns: int | None  # arrival of the caller frame that completed it; None for keepalive and replay
    keepalive: bool = False


@dataclass(frozen=True, slots=True)
class ClearVoice:
    """The playout buffer was flushed: clear the AudioSource queue and wake the player (silence follows)."""


@dataclass(frozen=True, slots=True)
class WakePlayout:
    """Agent audio was buffered: the player has something due."""


@dataclass(frozen=True, slots=True)
class ReadCallersAt:
    """Read every caller's track at ``rate`` from now on (the conversation takes that rate): before the next
    caller frame, since every frame after this one is taken to be at that rate."""

    rate: int


@dataclass(frozen=True, slots=True)
class End:
    """End the session: ``error`` None is a normal end."""

    reason: str
    error: BaseException | None = None


Action = StartEngine | SendAudio | ClearVoice | WakePlayout | ReadCallersAt | End | SessionEvent
START, CLEAR, WAKE = StartEngine(), ClearVoice(), WakePlayout()
NOTHING: tuple[Action, ...] = ()
WAKE_ONLY: tuple[Action, ...] = (WAKE,)


@dataclass(frozen=True, slots=True)
class CoreStats:
    chunks_sent: int
    chunks_dropped: int
    keepalive_chunks: int
    replayed_chunks: int
    audio_events: int
    bad_audio: int
    interruptions: int
    backlog: BacklogStats


@dataclass(slots=True)
class CoreCounters:
    chunks_sent: int = 0  # accepted by the engine client (the shell counts)
    chunks_dropped: int = 0  # refused by it: not ready or its queue full
    keepalive_chunks: int = 0
    replayed_chunks: int = 0
    audio_events: int = 0
    bad_audio: int = 0
    interruptions: int = 0

    def snapshot(self, backlog: BacklogStats) -> CoreStats:
        return CoreStats(chunks_sent=self.chunks_sent, chunks_dropped=self.chunks_dropped,
                         keepalive_chunks=self.keepalive_chunks, replayed_chunks=self.replayed_chunks,
                         audio_events=self.audio_events, bad_audio=self.bad_audio,
                         interruptions=self.interruptions, backlog=backlog)
