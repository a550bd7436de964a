"""Local pre-emptive ducking for one session: onset detectors per caller + the voice's gain envelope.

The shell's side of it, in full (all calls synchronous, none awaits)::

    caller frame arrives:   if ducker.caller_frame(identity, samples, now): wake the playout loop
    playout loop, first:    redo = ducker.rewind(now)      # the AudioSource's queue, ducked
                            if redo.size: clear the AudioSource queue; send redo
    each paced frame:       samples = ducker.voice_frame(samples, now); send samples
    engine interruption:    ducker.interruption(now)       # after the flush and the queue clear
    caller left:            ducker.caller_left(identity)

Why re-send the queue. The pacer keeps up to ``lead`` frames (40 ms by default) in the AudioSource at unity
gain; a duck applied only to frames leaving the pacer would be heard that much later. The frames are still in hand here
(``history_ms``, 100 ms, more than the AudioSource queue can hold): :meth:`rewind` returns what the queue is
believed to hold (what was sent and has not yet played, on the same model the pacer uses: the source plays
at real time from the first sample it gets; or the source's own ``queued_ns`` when the shell passes it) with
the duck applied from its first sample. The shell clears the native queue and sends that instead. Every sample
of the reply is still played once: the re-sent ones replace the cleared ones.

What is "played" for echo rejection (:class:`~core.voice_reference.VoiceReference`) is the ducked audio at the
time it is expected to leave the source, so a ducked voice's echo is expected 18 dB lower too.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from core.clock import SECOND
from core.duck import Duck, DuckConfig
from core.onset import OnsetConfig, OnsetDetector
from core.timing import StageTimer
from core.voice_reference import VoiceReference

__all__ = ["Ducker", "DuckerConfig"]

Int16Array = npt.NDArray[np.int16]
_EMPTY = np.zeros(0, dtype=np.int16)


@dataclass(frozen=True, slots=True)
class DuckerConfig:
    duck: DuckConfig = field(default_factory=DuckConfig)
    onset: OnsetConfig = field(default_factory=OnsetConfig)
    history_ms: int = 100  # voice kept in hand to re-send ducked; must cover the AudioSource queue
    audible_within_ms: int = 60  # an onset ducks only if the voice played this recently (or is queued)


@dataclass(slots=True)
class _Sent:
    start_ns: int  # when its first sample is expected to leave the AudioSource
    samples: Int16Array  # as the pacer gave it, before the gain
    gain: float  # the gain its first sample got


class Ducker:
    """Onset detectors for every caller, one shared voice reference, and the duck envelope."""

    def __init__(self, config: DuckerConfig | None = None, *, timer: StageTimer | None = None) -> None:
        self.config = config = config or DuckerConfig()
        self.duck = Duck(config.duck)
        self.reference = VoiceReference(config.onset)
        self.timer = timer or StageTimer()
        self._rate = config.duck.rate
        self._detectors: dict[str, OnsetDetector] = {}
        self._caller_onset = config.onset  # the detectors' config: the voice's, at the rate callers are read
        self._history: deque[_Sent] = deque()
        self._history_samples = 0
        self._history_limit = self._rate * config.history_ms // 1000
        self._cursor_ns = 0  # when the next sample sent would start to play
        self._rewind_pending = False
        self.onsets = 0  # onsets from any caller, whether or not they ducked
        self.onsets_while_silent = 0  # onsets while the voice was not audible (no duck: nothing to duck)
        self.rewinds = 0
        self.rewound_samples = 0
        self.last_onset_to_duck_ns: int | None = None
        # What happened, for the shell to turn into session events: (kind, at_ns, data). Bounded: a shell that
        # never drains loses the oldest.
        self._events: deque[tuple[str, int, dict[str, Any]]] = deque(maxlen=64)
        self._released_seen = 0

    # ------------------------------------------------------------------ callers
    def caller_frame(self, identity: str, samples: Int16Array, now_ns: int) -> bool:
        """A caller's frame reached the bridge at ``now_ns``. True if it started a duck (wake the playout)."""
        detector = self._detectors.get(identity)
        if detector is None:
            detector = self._detectors[identity] = OnsetDetector(self.reference, self._caller_onset)
        onset = detector.push(samples, now_ns)
        duck = self.duck
        if detector.speaking(now_ns):
            duck.caller_active(now_ns)
        duck.poll(now_ns)
        self._note_release(now_ns)
        if onset is not None:
            self.onsets += 1
        elif not detector.in_speech or duck.ducked:
            return False
        # An onset, or a caller still talking when the voice (re)starts: a talk-over either way.
        # Audible when the caller spoke (its timeline), not when a late burst of its frames was read.
        spoke_ns = detector.stream_ns if detector.stream_ns is not None else now_ns
        if not self.reference.audible_at(spoke_ns, self.config.audible_within_ms):
            if onset is not None:
                self.onsets_while_silent += 1
            return False
        if not duck.start(now_ns):
            return False
        start = detector.run_start_ns if detector.run_start_ns is not None else now_ns
        self._rewind_pending = True
        self.last_onset_to_duck_ns = now_ns - start
        self.timer.add("duck.onset_to_duck", now_ns - start)
        self._events.append(("duck_started", now_ns, {"caller": identity,
                                                     "onset_to_duck_ms": (now_ns - start) / 1e6}))
        return True

    def drain_events(self) -> list[tuple[str, int, dict[str, Any]]]:
        """``duck_started`` / ``duck_released`` / ``duck_confirmed`` since the last call, oldest first."""
        events = list(self._events)
        self._events.clear()
        return events

    def caller_left(self, identity: str) -> None:
        self._detectors.pop(identity, None)

    @property
    def caller_rate(self) -> int:
        return self._caller_onset.rate

    def set_caller_rate(self, rate: int) -> None:
        """Callers' frames come at ``rate`` from now on (the voice stays at its own): each caller's detector
        starts again at that rate with its next frame (its noise floor is learnt again within a few blocks)."""
        if rate != self._caller_onset.rate:
            onset = replace(self.config.onset, rate=rate)
            onset.validate()
            self._caller_onset = onset
            self._detectors.clear()

    # ------------------------------------------------------------------ the voice
    @property
    def rewind_pending(self) -> bool:
        return self._rewind_pending

    def voice_frame(self, samples: Int16Array, now_ns: int) -> Int16Array:
        """A paced frame on its way to the AudioSource: returns it with the envelope applied."""
        start = max(self._cursor_ns, now_ns)
        gain = self.duck.gain
        out = self.duck.apply(samples, now_ns)
        self._note_release(now_ns)
        self._remember(_Sent(start, samples, gain), out)
        return out

    def rewind(self, now_ns: int, queued_ns: int | None = None) -> Int16Array:
        """After a duck started: the audio still queued in the AudioSource, ducked, to send in its place
        (after clearing the queue). Empty when there is nothing to re-send or no duck is pending."""
        if not self._rewind_pending:
            return _EMPTY
        self._rewind_pending = False
        queued = max(0, self._cursor_ns - now_ns) if queued_ns is None else max(0, queued_ns)
        want = min(self._history_samples, queued * self._rate // SECOND)
        if want <= 0:
            return _EMPTY
        # Take the last ``want`` samples of what was sent, with the gain their first sample had.
        parts: list[Int16Array] = []
        gain = self.duck.gain
        need = want
        while need > 0 and self._history:
            sent = self._history.pop()
            n = sent.samples.shape[0]
            self._history_samples -= n
            if n <= need:
                parts.append(sent.samples)
                gain = sent.gain
                need -= n
            else:
                # Split: the head stays (it played); the tail is re-sent. Its gain is the frame's first gain:
                # exact at unity, off by less than one frame's share of a ramp otherwise.
                head = sent.samples[: n - need]
                parts.append(sent.samples[n - need:])
                self._history.append(_Sent(sent.start_ns, head, sent.gain))
                self._history_samples += head.shape[0]
                gain = sent.gain
                need = 0
        tail = parts[0] if len(parts) == 1 else np.concatenate(parts[::-1])
        self.reference.clear_after(now_ns)
        self._cursor_ns = now_ns
        self.duck.rewind_to(gain)
        self.rewinds += 1
        self.rewound_samples += tail.shape[0]
        # Re-sent audio goes through the envelope (and the history) as if the pacer had sent it now.
        return self.voice_frame(tail, now_ns)

    def interruption(self, now_ns: int) -> bool:
        """The engine's interruption, after the shell flushed the reply and cleared the queue. True if it
        confirmed a duck."""
        self.voice_cleared(now_ns)
        confirmed = self.duck.interruption(now_ns)
        if confirmed:
            self._events.append(("duck_confirmed", now_ns, {}))
        return confirmed

    def voice_cleared(self, now_ns: int) -> None:
        """The AudioSource queue was cleared for a reason of the shell's (interruption, reconnect)."""
        self._history.clear()
        self._history_samples = 0
        self._rewind_pending = False
        self._cursor_ns = now_ns
        self.reference.clear_after(now_ns, silent=True)

    def next_wakeup_ns(self, now_ns: int) -> int | None:
        """The duck's hold deadline, if one is running."""
        return self.duck.next_wakeup_ns(now_ns)

    def stats(self) -> dict[str, Any]:
        d = self.duck
        s = self.timer.summary().get("duck.onset_to_duck")
        return {"state": d.state.value, "gain_db": _db(d.gain), "started": d.started, "confirmed": d.confirmed,
                "released": d.released, "restarted": d.restarted,
                "interruptions_unducked": d.interruptions_unducked, "onsets": self.onsets,
                "onsets_while_silent": self.onsets_while_silent, "rewinds": self.rewinds,
                "rewound_samples": self.rewound_samples,
                "echo_vetoes": sum(x.echo_vetoes for x in self._detectors.values()),
                "onset_to_duck_p50_ms": s.p50_ns / 1e6 if s else None,
                "onset_to_duck_p95_ms": s.p95_ns / 1e6 if s else None}

    def _note_release(self, now_ns: int) -> None:
        if self.duck.released != self._released_seen:
            self._released_seen = self.duck.released
            self._events.append(("duck_released", now_ns, {}))

    def _remember(self, sent: _Sent, out: Int16Array) -> None:
        n = out.shape[0]
        self.reference.add(out, sent.start_ns)
        self._cursor_ns = sent.start_ns + n * SECOND // self._rate
        self._history.append(sent)
        self._history_samples += n
        while self._history and self._history_samples - self._history[0].samples.shape[0] >= self._history_limit:
            self._history_samples -= self._history.popleft().samples.shape[0]


def _db(gain: float) -> float:
    return float(20.0 * np.log10(max(gain, 1e-9)))
