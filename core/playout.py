"""The agent's voice between the engine (bursty, faster than real time) and the pacer (one frame per period).

Rules of this module:

- ``push`` takes whatever arrives, however fast, up to ``capacity_ms`` (30 s by default: the engine sends a
  reply several times faster than it plays, so a long reply is mostly queued here; 30 s of 48 kHz int16 is
  2.9 MB per session). The overflow policy is **refuse the newest**, not drop the oldest. The oldest samples
  are the ones about to reach the listener's ear: dropping them cuts a hole in what is being heard now and
  keeps a later part of the reply that is then played out of context. Refusing keeps everything heard a
  coherent prefix of the reply, which is cut short. Once a push overflows, every push is refused until the
  stream goes idle or is flushed, so a later chunk is never spliced on after a hole (``refused_samples``,
  ``overflow_events``).
- ``pop_frame`` hands out exactly ``frame_ms`` of audio (a whole number of LiveKit's 10 ms frames) or
  nothing. It returns nothing (an empty array: "not yet") while idle and until ``start_ms`` of audio is
  buffered (20 ms default; the engine's first chunk is normally larger, so this costs no latency, and it
  keeps a tiny first chunk from playing as a stutter). ``mark_end_of_stream`` starts playback of a shorter tail at once.
- While playing, a pop that finds the buffer short pads the frame with silence and the stream is
  ``STARVED``: the pacer keeps getting silence frames, so the sink never sees a hole. What the silence was
  is decided afterwards, because at the moment the buffer runs dry a late engine and a finished reply look
  the same:

  * audio arrives again within ``idle_after_ms`` of playout (200 ms): it was an **underrun** mid-reply;
    ``underruns`` += 1 and ``underrun_samples`` += the silence played;
  * ``idle_after_ms`` of silence has been played and nothing came: it was the **end of the reply**; the
    stream goes ``IDLE`` (``ends`` += 1) and that silence is not counted as an underrun;
  * ``mark_end_of_stream()`` was called: the reply is known to be complete; when the buffer runs dry the
    stream goes ``IDLE`` immediately, without waiting.

  200 ms is longer than the pauses inside a fluent sentence and well under the gap before the next turn.
  The rule counts playout time in frames popped, not wall time, so it needs no clock and tests need none.
- ``flush`` (interruption) drops everything, returns how many samples that was, and goes ``IDLE``.
- Audio is queued in **segments**, one per engine ``event_id`` (``push(samples, event_id)``; consecutive
  pushes with one id share a segment). ``flush_before(event_id)`` drops only the segments whose id is below
  the interruption's and keeps newer ones: the service sends an ``interruption`` with an *older* id than the
  reply now playing to stop, for instance, a tool-call sound, and that must not cut the new reply. Audio
  pushed without an id counts as older than any interruption. The segment list is bounded by the ring: a
  segment holds at least one sample, so there are never more segments than ``capacity_samples``.
"""

from __future__ import annotations

import enum
from collections import deque

import numpy as np
import numpy.typing as npt

from core.errors import ConfigError
from core.ring import OverflowPolicy, RingBuffer

__all__ = ["PlayoutBuffer", "PlayoutState"]

Int16Array = npt.NDArray[np.int16]
_EMPTY = np.zeros(0, dtype=np.int16)
_EMPTY.flags.writeable = False


class PlayoutState(enum.Enum):
    IDLE = "idle"  # not playing; pop_frame returns an empty array
    PLAYING = "playing"  # handing out audio frames
    STARVED = "starved"  # playing, buffer ran dry: silence frames until audio returns or idle_after_ms


class PlayoutBuffer:
    """Bursty int16 audio in, fixed frames out, with underrun and overflow accounting."""

    __slots__ = (
        "_end_of_stream",
        "_frame",
        "_gap",
        "_idle_after",
        "_rate",
        "_refusing",
        "_ring",
        "_segments",
        "_start",
        "_state",
        "ends",
        "flushed_samples",
        "flushes",
        "frames_out",
        "max_depth_samples",
        "overflow_events",
        "padding_samples",
        "refused_samples",
        "samples_in",
        "samples_out",
        "starts",
        "underrun_samples",
        "underruns",
    )

    def __init__(
        self,
        *,
        rate: int = 48000,
        frame_ms: int = 10,
        capacity_ms: int = 30_000,
        start_ms: int = 20,
        idle_after_ms: int = 200,
    ) -> None:
        if frame_ms <= 0 or rate * frame_ms % 1000:
            raise ConfigError(f"a {frame_ms} ms frame is not a whole number of samples at {rate} Hz")
        if not 0 <= start_ms <= capacity_ms or idle_after_ms < 0:
            raise ConfigError("need 0 <= start_ms <= capacity_ms and idle_after_ms >= 0")
        self._rate = rate
        self._frame = rate * frame_ms // 1000
        self._start = max(1, rate * start_ms // 1000)
        self._idle_after = rate * idle_after_ms // 1000
        self._ring = RingBuffer(rate * capacity_ms // 1000, dtype=np.int16, policy=OverflowPolicy.REFUSE)
        self._state = PlayoutState.IDLE
        self._end_of_stream = False
        self._refusing = False
        self._gap = 0  # silence samples played since the buffer last ran dry
        self._segments: deque[list[int | None]] = deque()  # [event_id, samples still queued], oldest first
        self.samples_in = 0
        self.samples_out = 0  # real audio handed out (padding excluded)
        self.frames_out = 0
        self.padding_samples = 0  # every silent sample handed out: underruns, tails, end-of-reply waits
        self.underruns = 0
        self.underrun_samples = 0
        self.refused_samples = 0
        self.overflow_events = 0
        self.flushes = 0
        self.flushed_samples = 0
        self.starts = 0
        self.ends = 0
        self.max_depth_samples = 0

    @property
    def rate(self) -> int:
        return self._rate

    @property
    def frame_samples(self) -> int:
        return self._frame

    @property
    def capacity_samples(self) -> int:
        return self._ring.capacity

    @property
    def state(self) -> PlayoutState:
        return self._state

    @property
    def is_playing(self) -> bool:
        """True while pop_frame hands out frames (audio or filling silence)."""
        return self._state is not PlayoutState.IDLE

    @property
    def ready(self) -> bool:
        """True if the next pop_frame will return a frame: the pacer should be running."""
        if self._state is not PlayoutState.IDLE:
            return True
        available = self._ring.available
        return available >= self._start or (self._end_of_stream and available > 0)

    @property
    def depth_samples(self) -> int:
        return self._ring.available

    @property
    def depth_ms(self) -> float:
        return self._ring.available * 1000.0 / self._rate

    @property
    def queued_event_ids(self) -> list[int | None]:
        """The event id of each queued segment, oldest first."""
        return [segment[0] for segment in self._segments]

    def push(self, samples: Int16Array, event_id: int | None = None) -> int:
        """Queue audio of engine event ``event_id``; returns how many samples were refused (0 when all fit).
        Never raises on overflow."""
        n: int = samples.shape[0]
        if n == 0:
            return 0
        self._end_of_stream = False  # audio after the mark belongs to a new reply
        self.samples_in += n
        if self._refusing:
            self.refused_samples += n
            return n
        free = self._ring.free
        refused = 0
        if n > free:
            self.overflow_events += 1
            self._refusing = True
            refused = n - free
            self.refused_samples += refused
            samples = samples[:free]
        self._ring.write(samples)
        written = samples.shape[0]
        if written:
            last = self._segments[-1] if self._segments else None
            if last is not None and last[0] == event_id:
                last[1] = int(last[1] or 0) + written
            else:
                self._segments.append([event_id, written])
        self.max_depth_samples = max(self.max_depth_samples, self._ring.available)
        return refused

    def mark_end_of_stream(self) -> None:
        """The current reply is complete: play out what is queued, then go idle without counting an underrun."""
        self._end_of_stream = True
        if self._state is PlayoutState.STARVED and self._ring.available == 0:
            self._go_idle()

    def pop_frame(self) -> Int16Array:
        """The next frame (``frame_samples`` long), or an empty array when there is nothing to play."""
        if self._state is PlayoutState.IDLE:
            if not self.ready:
                return _EMPTY
            self._state = PlayoutState.PLAYING
            self.starts += 1
        frame_len = self._frame
        frame = np.empty(frame_len, dtype=np.int16)
        got = self._ring.read_into(frame)
        self._consume(got)
        if got:
            if self._gap:
                # Audio came back before idle_after: the silence we played was an underrun.
                self.underruns += 1
                self.underrun_samples += self._gap
                self._gap = 0
            self._state = PlayoutState.PLAYING
            self.samples_out += got
        if got < frame_len:
            if self._end_of_stream:
                self._go_idle()
                if not got:
                    return _EMPTY
            elif not got and self._gap >= self._idle_after:
                self._go_idle()
                return _EMPTY
            else:
                self._state = PlayoutState.STARVED
                self._gap += frame_len - got
            frame[got:] = 0
            self.padding_samples += frame_len - got
        self.frames_out += 1
        return frame

    def _consume(self, n: int) -> None:
        segments = self._segments
        while n and segments:
            head = segments[0]
            left = int(head[1] or 0)
            if left > n:
                head[1] = left - n
                return
            n -= left
            segments.popleft()

    def flush_before(self, event_id: int) -> int:
        """Interruption ``event_id``: drop the queued audio of older events (id below it, or none), keep the
        rest in order; returns how many samples were dropped. Goes idle only when nothing is left."""
        if all(seg[0] is not None and seg[0] >= event_id for seg in self._segments):
            return 0
        if all(seg[0] is None or seg[0] < event_id for seg in self._segments):
            return self.flush()
        queued = np.empty(self._ring.available, dtype=np.int16)
        self._ring.read_into(queued)
        kept: deque[list[int | None]] = deque()
        offset = dropped = 0
        for seg_id, count in self._segments:
            n = int(count or 0)
            if seg_id is not None and seg_id >= event_id:
                self._ring.write(queued[offset:offset + n])
                kept.append([seg_id, n])
            else:
                dropped += n
            offset += n
        self._segments = kept
        self.flushes += 1
        self.flushed_samples += dropped
        return dropped

    def flush(self) -> int:
        """Interruption: drop everything queued, go idle; returns how many samples were dropped."""
        self._segments.clear()
        dropped = self._ring.clear()
        self.flushes += 1
        self.flushed_samples += dropped
        self._state = PlayoutState.IDLE  # an interruption, not an end of reply: ``ends`` stays
        self._gap = 0
        self._end_of_stream = False
        self._refusing = False
        return dropped

    def _go_idle(self) -> None:
        self._state = PlayoutState.IDLE
        self._gap = 0
        self._refusing = False
        self.ends += 1
