"""Mix every caller of the room into one 48 kHz stream, one tick at a time.

Rules of this module:

- Each caller has its own :class:`~core.ring.RingBuffer` of ``capacity_ms`` (default 500 ms) with
  ``DROP_OLDEST``: live speech is worth more fresh than complete, and the cap is only reached if nobody mixes.
- ``mix(n)`` takes up to ``n`` samples from every caller. A caller with fewer contributes what it has followed
  by silence, counted as starvation (``starved_samples``; ``starved_ticks`` counts ticks with any shortfall).
  A caller who is muted or has not sent yet therefore starves every tick: that is a fact, not an error.
- Callers are summed in int32 and saturated to int16: three loud callers clip instead of wrapping to the
  opposite sign (a wrap is a full-scale click). Saturated samples are counted (``clipped_samples``).
- Latency is bounded: when a caller would still hold more than ``max_backlog_ms`` (100 ms) after this tick,
  its oldest audio is discarded down to ``trim_to_ms`` (40 ms) first (``trim_events``, ``trimmed_samples``).
  LiveKit hands out 10 ms frames at real time, so a backlog only grows when our loop stalled or a clock
  drifts; 100 ms absorbs ordinary event-loop jitter, while keeping 40 ms avoids starving the next tick.
- Level is the RMS of what the caller contributed this tick, in dBFS relative to 32768 (a full-scale square
  wave is 0 dBFS, a full-scale sine -3 dBFS), floored at ``SILENCE_DBFS``. ``active`` means the level reached
  ``activity_threshold_dbfs`` (-45 dBFS): conversational speech sits around -30 to -18 dBFS after WebRTC's
  gain control, while noise-suppressed room tone and soxr dither (-90 dBFS) stay far below.
- Callers may join and leave between ticks; audio for a caller who is not (or no longer) in the mix is
  dropped and counted (``unknown_caller_samples``), since frames can race a ``leave``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
import numpy.typing as npt

from core.ring import OverflowPolicy, RingBuffer

__all__ = ["MIXER_RATE", "SILENCE_DBFS", "CallerStats", "Mixer"]

Int16Array = npt.NDArray[np.int16]
MIXER_RATE = 48000
SILENCE_DBFS = -100.0  # below one LSB of int16 RMS (-90.3 dBFS), so "no signal" reads as its own value
_FULL_SCALE_SQUARED = 32768.0 * 32768.0


@dataclass(slots=True)
class CallerStats:
    """One caller's figures. ``level_dbfs`` and ``active`` describe the last tick; the rest are totals."""

    level_dbfs: float = SILENCE_DBFS
    active: bool = False
    samples_in: int = 0
    samples_mixed: int = 0
    starved_samples: int = 0
    starved_ticks: int = 0
    dropped_samples: int = 0  # ring overflow (nobody mixed for capacity_ms)
    trim_events: int = 0
    trimmed_samples: int = 0


class _Channel:
    __slots__ = ("ring", "stats")

    def __init__(self, capacity: int) -> None:
        self.ring = RingBuffer(capacity, dtype=np.int16, policy=OverflowPolicy.DROP_OLDEST)
        self.stats = CallerStats()


class Mixer:
    """N callers at 48 kHz in, one saturated int16 stream out."""

    def __init__(
        self,
        *,
        rate: int = MIXER_RATE,
        capacity_ms: int = 500,
        max_backlog_ms: int = 100,
        trim_to_ms: int = 40,
        activity_threshold_dbfs: float = -45.0,
    ) -> None:
        if not 0 <= trim_to_ms <= max_backlog_ms < capacity_ms:
            raise ValueError("need 0 <= trim_to_ms <= max_backlog_ms < capacity_ms")
        self._rate = rate
        self._capacity = rate * capacity_ms // 1000
        self._max_backlog = rate * max_backlog_ms // 1000
        self._trim_to = rate * trim_to_ms // 1000
        self._threshold_dbfs = activity_threshold_dbfs
        self._channels: dict[str, _Channel] = {}
        self._stats: dict[str, CallerStats] = {}
        self.ticks = 0
        self.samples_out = 0
        self.clipped_samples = 0
        self.unknown_caller_samples = 0
        self.joins = 0
        self.leaves = 0
        self.discarded_on_leave = 0
        # Totals over every caller ever mixed, so they survive a caller leaving.
        self.starved_samples = 0
        self.dropped_samples = 0
        self.trimmed_samples = 0

    @property
    def rate(self) -> int:
        return self._rate

    @property
    def callers(self) -> tuple[str, ...]:
        return tuple(self._channels)

    @property
    def stats(self) -> Mapping[str, CallerStats]:
        """Live per-caller figures of the callers now in the mix (read them, do not modify them)."""
        return MappingProxyType(self._stats)

    def backlog(self, caller_id: str) -> int:
        """Samples waiting for ``caller_id`` (0 if unknown)."""
        channel = self._channels.get(caller_id)
        return 0 if channel is None else channel.ring.available

    def join(self, caller_id: str) -> bool:
        """Add a caller (from the next tick on); False if already in the mix."""
        if caller_id in self._channels:
            return False
        channel = _Channel(self._capacity)
        self._channels[caller_id] = channel
        self._stats[caller_id] = channel.stats
        self.joins += 1
        return True

    def leave(self, caller_id: str) -> int:
        """Remove a caller; returns how many of its samples were still waiting and are now dropped."""
        channel = self._channels.pop(caller_id, None)
        if channel is None:
            return 0
        del self._stats[caller_id]
        self.leaves += 1
        dropped = channel.ring.clear()
        self.discarded_on_leave += dropped
        return dropped

    def write(self, caller_id: str, samples: Int16Array) -> int:
        """Queue a caller's 48 kHz samples; returns how many were lost (ring overflow or unknown caller)."""
        n: int = samples.shape[0]
        channel = self._channels.get(caller_id)
        if channel is None:
            self.unknown_caller_samples += n
            return n
        channel.stats.samples_in += n
        dropped = channel.ring.write(samples)
        if dropped:
            channel.stats.dropped_samples += dropped
            self.dropped_samples += dropped
        return dropped

    def mix(self, n_samples: int) -> Int16Array:
        """The next ``n_samples`` of the room: every caller summed, silence where a caller had none."""
        if n_samples <= 0:
            return np.zeros(0, dtype=np.int16)
        self.ticks += 1
        self.samples_out += n_samples
        total: npt.NDArray[np.int32] | None = None
        for channel in self._channels.values():
            frame = self._take(channel, n_samples)
            got = frame.shape[0]
            if got == 0:
                continue
            if total is None:
                total = np.zeros(n_samples, dtype=np.int32)
            total[:got] += frame
        if total is None:
            return np.zeros(n_samples, dtype=np.int16)
        if len(self._channels) == 1:
            return total.astype(np.int16)  # one int16 source cannot exceed int16
        out = np.clip(total, -32768, 32767)
        self.clipped_samples += n_samples - int(np.count_nonzero(out == total))
        return out.astype(np.int16)

    def _take(self, channel: _Channel, n: int) -> Int16Array:
        ring, stats = channel.ring, channel.stats
        if ring.available - n > self._max_backlog:
            trimmed = ring.discard(ring.available - n - self._trim_to)
            stats.trim_events += 1
            stats.trimmed_samples += trimmed
            self.trimmed_samples += trimmed
        frame = ring.read(n)
        got = frame.shape[0]
        stats.samples_mixed += got
        if got < n:
            stats.starved_samples += n - got
            stats.starved_ticks += 1
            self.starved_samples += n - got
        if got:
            as_float = frame.astype(np.float32)
            energy = float(np.dot(as_float, as_float))
        else:
            energy = 0.0
        # RMS over the whole tick, so a half-starved tick reads quieter, as it sounded.
        stats.level_dbfs = (
            SILENCE_DBFS if energy <= 0.0
            else max(SILENCE_DBFS, 10.0 * math.log10(energy / (n * _FULL_SCALE_SQUARED)))
        )
        stats.active = stats.level_dbfs >= self._threshold_dbfs
        return frame
