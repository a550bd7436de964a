"""The agent voice's gain while a caller talks over it: duck at once, then let the engine decide. Sans-I/O.

The model. The envelope lives on the stream of samples leaving the bridge, not on wall time: :meth:`Duck.apply`
gains each 10 ms frame as the pacer hands it out, and every change starts at the next sample applied. Wall
time (``now_ns``) only decides *when* a change happens: the hold deadline.

- :meth:`Duck.start` (a caller's onset over the voice): ramp down by ``depth_db`` over ``ramp_ms`` (raised
  cosine: 8 ms is short enough to be felt as "at once" and long enough that the step between two samples stays
  a small fraction of the signal, so there is no click).
- :meth:`Duck.caller_active`: a caller still speaking pushes the hold deadline to ``hold_ms`` after it.
- Past the deadline with no interruption, :meth:`apply` ramps back to unity over ``release_ms`` (a slower
  ramp than the duck, so the voice returns rather than jumps) and counts the duck ``released``. At the end of
  the ramp the gain is exactly 1.0 and frames pass through unchanged.
- :meth:`Duck.interruption` (the engine's decision): the reply is being flushed, so the duck has done its job:
  ``confirmed`` if one was in force; the gain returns to unity at once (what follows is silence or a new reply).
- Nothing is ever dropped: :meth:`apply` returns exactly as many samples as it is given.
- :meth:`rewind_to` restarts the ramp from the gain a sample had when it was first sent: the shell re-sends
  the frames still queued in the AudioSource with the duck applied (see :mod:`core.ducker`).

Counters: ``started``, ``confirmed``, ``released``, ``restarted`` (an onset during a release ramp: a new duck
from the gain reached), ``interruptions_unducked`` (an interruption with no duck in force: a missed onset or
ducking off), and the onset→duck delays, recorded by the caller of :meth:`start` in a
:class:`~core.timing.StageTimer` stage ``duck.onset_to_duck``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from core.clock import MS
from core.errors import ConfigError

__all__ = ["Duck", "DuckConfig", "DuckState"]

Int16Array = npt.NDArray[np.int16]


@dataclass(frozen=True, slots=True)
class DuckConfig:
    depth_db: float = 18.0  # 0 disables ducking
    hold_ms: int = 500
    ramp_ms: float = 8.0
    release_ms: float = 60.0
    rate: int = 48_000

    def validate(self) -> None:
        if self.depth_db < 0 or self.hold_ms < 0 or self.ramp_ms <= 0 or self.release_ms <= 0:
            raise ConfigError("duck depth and hold must be >= 0, ramps > 0")

    @property
    def enabled(self) -> bool:
        return self.depth_db > 0


class DuckState(enum.Enum):
    UNITY = "unity"
    DUCKED = "ducked"  # ramping down or held down
    RELEASING = "releasing"  # ramping back up


class Duck:
    """The outgoing voice's gain envelope; all times are integer nanoseconds."""

    __slots__ = (
        "_deadline",
        "_floor_gain",
        "_from",
        "_len",
        "_pos",
        "_to",
        "config",
        "confirmed",
        "interruptions_unducked",
        "released",
        "restarted",
        "samples_in",
        "samples_out",
        "started",
        "state",
    )

    def __init__(self, config: DuckConfig | None = None) -> None:
        self.config = config = config or DuckConfig()
        config.validate()
        self._floor_gain = 10.0 ** (-config.depth_db / 20.0)
        self.state = DuckState.UNITY
        self._from = 1.0  # ramp from this gain ...
        self._to = 1.0  # ... to this one ...
        self._len = 1  # ... over this many samples ...
        self._pos = 1  # ... of which this many are done (pos >= len: holding ``_to``)
        self._deadline: int | None = None
        self.started = 0
        self.confirmed = 0
        self.released = 0
        self.restarted = 0
        self.interruptions_unducked = 0
        self.samples_in = 0
        self.samples_out = 0

    @property
    def gain(self) -> float:
        """The gain the next sample gets (linear)."""
        return self._gain_at(self._pos)

    @property
    def ducked(self) -> bool:
        return self.state is DuckState.DUCKED

    def start(self, now_ns: int) -> bool:
        """A caller's onset over the voice: ramp down from the next sample. False if already ducked (the hold
        is extended instead) or ducking is off."""
        if not self.config.enabled:
            return False
        self._deadline = now_ns + self.config.hold_ms * MS
        if self.state is DuckState.DUCKED:
            return False
        if self.state is DuckState.RELEASING:
            self.restarted += 1
        self.started += 1
        self.state = DuckState.DUCKED
        self._ramp_to(self._floor_gain, self.config.ramp_ms)
        return True

    def caller_active(self, now_ns: int) -> None:
        """A caller is still speaking at ``now_ns``: keep the duck ``hold_ms`` past it."""
        if self.state is DuckState.DUCKED:
            self._deadline = max(self._deadline or 0, now_ns + self.config.hold_ms * MS)

    def interruption(self, now_ns: int) -> bool:
        """The engine interrupted: the reply is flushed. True if that confirmed a duck."""
        del now_ns  # the gain change applies to whatever is sent next; kept for a uniform signature
        confirmed = self.state is DuckState.DUCKED
        if confirmed:
            self.confirmed += 1
        else:
            self.interruptions_unducked += 1
        self.state = DuckState.UNITY
        self._deadline = None
        self._from = self._to = 1.0
        self._pos = self._len = 1
        return confirmed

    def poll(self, now_ns: int) -> bool:
        """Release if the hold ran out; True if a release began now. :meth:`apply` calls it too."""
        if self.state is DuckState.DUCKED and self._deadline is not None and now_ns >= self._deadline:
            self.released += 1
            self.state = DuckState.RELEASING
            self._deadline = None
            self._ramp_to(1.0, self.config.release_ms)
            return True
        return False

    def next_wakeup_ns(self, now_ns: int) -> int | None:
        """The hold deadline while ducked (for a shell that wants the release on time when nothing plays)."""
        if self.state is DuckState.DUCKED and self._deadline is not None:
            return max(now_ns, self._deadline)
        return None

    def rewind_to(self, gain: float) -> None:
        """The stream goes back to a sample first sent with ``gain`` (the shell re-sends its queue): redo the
        ramp in progress from there, so the re-sent audio joins what was already heard without a step."""
        if self.state is DuckState.DUCKED:
            self._ramp_to(self._floor_gain, self.config.ramp_ms, start=gain)
        elif self.state is DuckState.RELEASING:
            self._ramp_to(1.0, self.config.release_ms, start=gain)

    def apply(self, samples: Int16Array, now_ns: int) -> Int16Array:
        """The frame with the envelope applied: same length, always."""
        self.poll(now_ns)
        n: int = samples.shape[0]
        self.samples_in += n
        self.samples_out += n
        pos, length = self._pos, self._len
        if pos >= length:
            if self._to == 1.0:
                if self.state is DuckState.RELEASING:
                    self.state = DuckState.UNITY
                return samples
            out = np.rint(samples * self._to)
        else:
            k = np.arange(pos, pos + n, dtype=np.float64)
            np.minimum(k, length, out=k)
            shape = 0.5 - 0.5 * np.cos(np.pi * k / length)
            gains = self._from + (self._to - self._from) * shape
            out = np.rint(samples * gains)
            self._pos = min(pos + n, length)
            if self._pos >= length and self._to == 1.0 and self.state is DuckState.RELEASING:
                self.state = DuckState.UNITY
        result: Int16Array = np.clip(out, -32768, 32767).astype(np.int16)
        return result

    def _ramp_to(self, gain: float, ms: float, start: float | None = None) -> None:
        self._from = self._gain_at(self._pos) if start is None else start
        self._to = gain
        self._len = max(1, round(self.config.rate * ms / 1000))
        self._pos = 0

    def _gain_at(self, pos: int) -> float:
        if pos >= self._len:
            return self._to
        shape = 0.5 - 0.5 * np.cos(np.pi * pos / self._len)
        return float(self._from + (self._to - self._from) * shape)
