"""Engine to room: decode, resample to 48 kHz, buffer, and hand out paced frames (20 ms by default).

The engine sends a reply in bursts far faster than real time; the :class:`~core.playout.PlayoutBuffer` holds
it and the :class:`~core.pacer.Pacer` decides when the next frames are due, keeping only ``lead_frames`` in
the AudioSource's own queue. So almost all of a reply waits *here*, where :meth:`Downlink.interrupt` can drop
it in one call, and at most the lead is already out of reach when a caller barges in.

The soxr stream holds its filter history between chunks (about 21 ms at MQ, see :mod:`core.resample`).
When a reply's audio stops arriving (``tail_after_ms`` without a chunk while the buffer runs low), the tail is
flushed into the playout buffer and the reply is marked complete, so its last syllable is not left in the
filter. Everything is driven by ``now_ns`` passed in; nothing here reads a clock or sleeps. How long a push
takes is the caller's to measure (the session records ``downlink.total``: event received → in the playout
buffer); the per-stage CPU split (decode, resample, buffer) is :mod:`benchmarks.core_cpu`'s.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from core.clock import MS
from core.formats import ROOM_RATE, AudioFormat
from core.pacer import Pacer
from core.playout import PlayoutBuffer
from core.resample import Resampler

__all__ = ["OUTPUT_RATE", "Downlink", "DownlinkConfig", "DownlinkStats"]

OUTPUT_RATE = ROOM_RATE
Int16Array = npt.NDArray[np.int16]


@dataclass(frozen=True, slots=True)
class DownlinkConfig:
    # The voice's capture frame. Every frame that crosses the SDK boundary costs the process far more than its
    # samples do (an FFI request, its callback, a loop wake-up: ~0.1 ms of CPU; benchmarks/README.md): 20 ms
    # frames make half the captures of 10 ms ones, measured 8-9 % of a process's CPU at 5 rooms.
    frame_ms: int = 20
    # Frames kept in the AudioSource queue ahead of playout: 2 × 20 ms rides out an event-loop wakeup up to
    # 20 ms late without a gap (as 3 × 10 ms did). It costs nothing on an interruption (the session clears
    # that queue too) nor on a duck (the ducker re-sends what the queue holds, ducked: core/ducker.py).
    lead_frames: int = 2
    start_ms: int = 20
    capacity_ms: int = 30_000
    idle_after_ms: int = 200
    tail_after_ms: int = 60
    # After an interruption, send this much digital silence instead of simply stopping. A receiver whose
    # packets stop conceals the gap by stretching the last audio it decoded (WebRTC's NetEq "expand"), which
    # keeps the interrupted voice audible, fading, for a hundred milliseconds and more; real silent packets
    # end it as soon as the receiver's jitter buffer has played out.
    silence_after_interrupt_ms: int = 120


@dataclass(frozen=True, slots=True)
class DownlinkStats:
    state: str  # the playout buffer's state
    depth_ms: float
    chunks_in: int
    bytes_in: int
    underruns: int
    underrun_samples: int
    refused_samples: int
    flushed_samples: int
    samples_out: int
    interruptions: int
    reanchors: int  # the pacer's schedule restarted after the loop fell behind
    lag_frames: int  # frames the pacer found overdue: the AudioSource may have run dry


class Downlink:
    def __init__(self, fmt: AudioFormat, config: DownlinkConfig | None = None) -> None:
        self.format = fmt
        self.config = config = config or DownlinkConfig()
        self._resampler = Resampler(fmt.rate, OUTPUT_RATE)
        self.playout = PlayoutBuffer(rate=OUTPUT_RATE, frame_ms=config.frame_ms, capacity_ms=config.capacity_ms,
                                     start_ms=config.start_ms, idle_after_ms=config.idle_after_ms)
        self.pacer = Pacer(frame_ns=config.frame_ms * MS, lead_frames=config.lead_frames)
        self._last_push_ns: int | None = None
        self._tail_pending = False
        self._silence_frames = 0  # silence still owed after an interruption
        self._frame = OUTPUT_RATE * config.frame_ms // 1000
        self.chunks_in = 0
        self.bytes_in = 0
        self.interruptions = 0
        self.first_audio_ns: int | None = None  # first chunk of the current reply, for latency figures
        self._last_event_id: int | None = None  # of the newest chunk pushed (the resampler holds its tail)

    def push(self, payload: bytes, recv_ns: int, event_id: int | None = None) -> None:
        """One ``audio`` event's bytes, received at ``recv_ns``. Raises :class:`~core.errors.ProtocolError` on an
        undecodable payload. ``event_id`` lets a later interruption that targets an older event keep this audio."""
        resampled = self._resampler.push(self.format.decode(payload))
        if not self.playout.is_playing and self.first_audio_ns is None:
            self.first_audio_ns = recv_ns
        self.playout.push(resampled, event_id)
        self._last_event_id = event_id
        self.chunks_in += 1
        self.bytes_in += len(payload)
        self._last_push_ns = recv_ns
        self._tail_pending = True

    def interrupt(self, event_id: int | None = None) -> int:
        """An ``interruption``: drop buffered audio of events older than ``event_id`` (all of it when None or
        when nothing newer is queued); returns how many 48 kHz samples were dropped.

        Audio of ``event_id`` and above is a reply the interruption does not target (the service interrupts
        an older event, e.g. a tool-call sound, while a newer reply plays): it keeps playing, with its pacing,
        resampler history and no silence inserted. The caller clears the sink's queue only when
        ``dropped`` > 0 (those lead frames may be older audio).
        """
        newest, dropped = self._last_event_id, 0
        if event_id is not None and newest is not None and newest >= event_id:
            dropped = self.playout.flush_before(event_id)
            if self.playout.depth_samples or not dropped:
                self.interruptions += 1
                return dropped
            # Everything queued was older after all: fall through to a full reset.
        dropped += self.playout.flush()
        self._resampler.reset()
        self.pacer.reset()
        self._tail_pending = False
        self.first_audio_ns = None
        self.interruptions += 1
        self._silence_frames = self.config.silence_after_interrupt_ms // self.config.frame_ms
        return dropped

    def due(self, now_ns: int) -> Int16Array | None:
        """Samples to hand to the AudioSource now (whole frames), or None when nothing is due."""
        self._maybe_flush_tail(now_ns)
        playout = self.playout
        if not playout.ready and self._silence_frames:
            return self._silence_due(now_ns)
        if not playout.ready:
            # The sink still drains what it holds: keep the schedule, so a reply that resumes continues it.
            self.pacer.stop()
            self.first_audio_ns = None
            return None
        n = self.pacer.frames_due(now_ns)
        if n <= 0:
            return None
        frames = []
        for _ in range(n):
            frame = playout.pop_frame()
            if frame.size == 0:
                break
            frames.append(frame)
        if not frames:
            self.pacer.stop()
            return None
        self._silence_frames = 0  # a new reply plays: it replaces the silence
        self.pacer.on_frames_sent(len(frames), now_ns)
        return frames[0] if len(frames) == 1 else np.concatenate(frames)

    def _silence_due(self, now_ns: int) -> Int16Array | None:
        n = min(self.pacer.frames_due(now_ns), self._silence_frames)
        if n <= 0:
            return None
        self._silence_frames -= n
        self.pacer.on_frames_sent(n, now_ns)
        return np.zeros(n * self._frame, dtype=np.int16)

    def next_wakeup_ns(self, now_ns: int) -> int | None:
        """When :meth:`due` may next have something: a pacer deadline, the tail check, or None when idle."""
        wake: int | None = None
        if self.playout.ready or self._silence_frames:
            wake = self.pacer.next_wakeup_ns(now_ns)
        if self._tail_pending and self._last_push_ns is not None:
            tail_at = self._last_push_ns + self.config.tail_after_ms * MS
            # A passed tail deadline that did not fire is waiting for the buffer to run low; the pacer's own
            # deadlines re-check it every frame. Returning it would wake the driver at once, again and again,
            # for the rest of the reply (measured: one core spinning per playing session).
            if tail_at > now_ns or wake is None:
                wake = tail_at if wake is None else min(wake, tail_at)
        return wake

    def _maybe_flush_tail(self, now_ns: int) -> None:
        if not self._tail_pending or self._last_push_ns is None:
            return
        if now_ns - self._last_push_ns < self.config.tail_after_ms * MS:
            return
        if self.playout.depth_ms > self.config.tail_after_ms:
            return  # more may still come; flushing soxr mid-reply would restart its filter audibly
        self._tail_pending = False
        tail = self._resampler.flush()
        if tail.size:
            self.playout.push(tail)
        self.playout.mark_end_of_stream()

    def stats(self) -> DownlinkStats:
        p = self.playout
        return DownlinkStats(state=p.state.value, depth_ms=p.depth_ms, chunks_in=self.chunks_in,
                             bytes_in=self.bytes_in, underruns=p.underruns, underrun_samples=p.underrun_samples,
                             refused_samples=p.refused_samples, flushed_samples=p.flushed_samples,
                             samples_out=p.samples_out, interruptions=self.interruptions,
                             reanchors=self.pacer.reanchors, lag_frames=self.pacer.lag_frames)
