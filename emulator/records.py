"""What a conversation records: wire messages, user turns, replies, pings; and the sender's queue item."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

__all__ = ["Out", "PingRecord", "Reply", "Utterance", "WireRecord"]

Int16Array = npt.NDArray[np.int16]


@dataclass(frozen=True, slots=True)
class WireRecord:
    ns: int  # time.monotonic_ns() when received / written
    direction: Literal["in", "out"]
    type: str  # message type, "user_audio_chunk", or an injected fault ("garbage", "binary", …)
    event_id: int | None
    size: int  # characters (or bytes for binary frames)
    text: str | None  # the message itself when EmulatorConfig.record_text


@dataclass(frozen=True, slots=True)
class Utterance:
    """One user turn as the VAD saw it: sample positions in :meth:`Conversation.received_audio`."""

    start_sample: int
    end_sample: int
    start_ns: int  # when the audio that started it arrived
    end_ns: int  # when the end was detected (after the hangover)


@dataclass(slots=True)
class Reply:
    event_id: int
    mode: str
    samples: Int16Array = field(repr=False)  # the whole reply at the output rate (grows while a brain speaks)
    rate: int
    text: str
    trigger_ns: int  # when the reply was started (think time over, or a hook)
    utterance: Utterance | None = None
    start_ns: int | None = None  # first audio chunk written
    end_ns: int | None = None  # last audio chunk written (None if interrupted first)
    chunks_sent: int = 0
    samples_sent: int = 0
    interrupted_ns: int | None = None
    interruption_id: int | None = None
    stale_chunks_sent: int = 0
    final: bool = True  # False while a brain's text is still arriving or being synthesized
    phrases: list[str] = field(default_factory=list)  # brain replies: the phrases spoken, in order

    @property
    def duration_ns(self) -> int:
        return self.samples.size * 1_000_000_000 // self.rate

    @property
    def done(self) -> bool:
        return self.end_ns is not None or self.interrupted_ns is not None

    def playing_at(self, now_ns: int, extra_ns: int = 0) -> bool:
        """Would the client still be playing this reply at ``now_ns`` (real time since its first chunk)?"""
        if self.interrupted_ns is not None:
            return False
        if self.start_ns is None:
            return self.end_ns is None  # started but nothing written yet: about to play
        return now_ns < self.start_ns + self.duration_ns + extra_ns


@dataclass(slots=True)
class PingRecord:
    event_id: int
    sent_ns: int
    pong_ns: int | None = None

    @property
    def rtt_ms(self) -> float | None:
        return None if self.pong_ns is None else (self.pong_ns - self.sent_ns) / 1e6


@dataclass(slots=True)
class Out:
    text: str | bytes
    type: str
    event_id: int | None = None
    reply: Reply | None = None
    samples: int = 0
    stale: bool = False
    ping: PingRecord | None = None
    enqueued: float = 0.0  # loop time
