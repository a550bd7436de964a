"""When is the next 10 ms frame due? A sans-I/O pacer in the style of aioquic's ``QuicPacketPacer``.

The pacer never reads a clock: every time-dependent method takes ``now_ns`` and the answer to "when do you
want to be woken?" is a return value (:meth:`Pacer.next_wakeup_ns`). The asyncio shell owns the sleeping.

The model. The sink (LiveKit's ``AudioSource``) plays one frame every ``frame_ns`` from a short queue. The
pacer keeps that queue at ``lead_frames`` (default 3, i.e. 30 ms: a wakeup up to ``lead - 1`` frames (20 ms)
late still finds audio queued, and after an interruption clears the pacer's side at most 30 ms is still on
its way out; the sink's own queue must hold at least the lead). It assumes the sink has played
``(now - anchor) // frame_ns`` frames since the anchor, so after ``sent`` frames the sink holds
``sent - played`` and frame ``k`` is due at ``anchor + (k - lead + 1) * frame_ns``:

- **Anchored, so it does not drift**: due times come from the anchor and a frame count, never from
  "last send + 10 ms", so late wakeups do not accumulate; the next call simply finds more frames due.
- **Never above the lead**: :meth:`frames_due` returns ``lead - depth``, at most ``lead_frames``, so the
  sink's queue is never asked to hold more than the lead.
- **Re-anchor instead of bursting**: if the loop stalled for longer than the lead covers, the sink has
  already played everything and sat idle; time it spent idle is gone, and sending the "missed" frames
  would only overfill its queue. So once the model says the sink has played more than we sent, the pacer
  re-anchors at ``now`` with an empty queue and asks for ``lead`` frames (``reanchors`` counts the events,
  ``lag_frames`` the frames' worth of time the sink sat dry).
- **Starts by itself; stop and reset**: a fresh pacer anchors at the first :meth:`frames_due` call and asks
  for the full lead, so the shell only consults it when it has audio to send. :meth:`stop` when there is
  nothing more to play: the schedule is kept, because the sink still drains what it holds, and the next
  :meth:`frames_due` continues it if the sink is still playing from it, or anchors afresh (not counted as a
  stall) if it ran empty meanwhile. :meth:`reset` after the sink's queue was cleared on an interruption:
  the pacer forgets what it had queued, so the next call refills the whole lead at once.
- **Drift**: our clock and the sink's can disagree by a few ppm. When the shell can see the sink's real
  queue (``AudioSource.queued_duration``) it may call :meth:`resync` to move the anchor to match.

A driver, in outline::

    while True:
        if not playout.ready:
            pacer.stop(); await audio_arrived()
        now = clock.now_ns()
        for _ in range(pacer.frames_due(now)):
            frame = playout.pop_frame()
            if not frame.size:
                break
            await source.capture_frame(to_audio_frame(frame))
            pacer.on_frames_sent(1, now)
        await sleep_until(pacer.next_wakeup_ns(clock.now_ns()))
"""

from __future__ import annotations

from core.clock import MS
from core.errors import ConfigError

__all__ = ["Pacer"]


class Pacer:
    """Real-time frame schedule for a sink with a short queue; all times are integer nanoseconds."""

    __slots__ = (
        "_anchor",
        "_frame_ns",
        "_lead",
        "_paused",
        "_sent",
        "frames_sent",
        "lag_frames",
        "late_ns_max",
        "late_ns_total",
        "reanchors",
        "resets",
        "resyncs",
        "starts",
        "stops",
    )

    def __init__(self, *, frame_ns: int = 10 * MS, lead_frames: int = 3) -> None:
        if frame_ns <= 0:
            raise ConfigError(f"frame_ns must be positive, got {frame_ns}")
        if lead_frames < 1:
            raise ConfigError(f"lead_frames must be at least 1 (the sink needs a frame to play), got {lead_frames}")
        self._frame_ns = frame_ns
        self._lead = lead_frames
        self._anchor: int | None = None  # the sink's queue was empty here; None: no schedule yet
        self._sent = 0  # frames sent since the anchor
        self._paused = False
        self.frames_sent = 0
        self.starts = 0  # schedules begun: first call, after a reset, or resumed after the sink ran empty
        self.stops = 0
        self.resets = 0
        self.reanchors = 0  # stalls: the sink ran dry while we had audio for it
        self.lag_frames = 0
        self.resyncs = 0
        self.late_ns_max = 0  # how long after its due time a frame was reported sent, worst case
        self.late_ns_total = 0

    @property
    def frame_ns(self) -> int:
        return self._frame_ns

    @property
    def lead_frames(self) -> int:
        return self._lead

    @property
    def anchored(self) -> bool:
        """True while a schedule is in force (not before the first call, not after :meth:`reset`)."""
        return self._anchor is not None

    def depth_frames(self, now_ns: int) -> int:
        """Frames the sink is believed to hold at ``now_ns`` (the one playing included)."""
        if self._anchor is None:
            return 0
        return max(0, self._sent - self._played(self._anchor, now_ns))

    def stop(self) -> None:
        """Nothing more to play for now; the next :meth:`frames_due` picks the schedule up again."""
        if not self._paused:
            self.stops += 1
        self._paused = True

    def reset(self) -> None:
        """The sink's queue was cleared (interruption): forget the schedule; the next call refills the lead."""
        self.resets += 1
        self._anchor = None
        self._paused = False

    def frames_due(self, now_ns: int) -> int:
        """How many frames to hand the sink now: 0 ≤ n ≤ ``lead_frames``."""
        anchor = self._anchor
        if anchor is not None and self._paused and self._sent <= self._played(anchor, now_ns):
            anchor = None  # the sink drained while we had nothing: a new start, not a stall
        self._paused = False
        if anchor is None:
            self.starts += 1
            self._begin(now_ns)
            return self._lead
        played = self._played(anchor, now_ns)
        lag = played - self._sent
        if lag > 0:
            # The sink has been dry for ``lag`` frames; that time is lost, so start a fresh schedule.
            self.reanchors += 1
            self.lag_frames += lag
            self._begin(now_ns)
            return self._lead
        return min(self._lead, played + self._lead - self._sent)

    def on_frames_sent(self, n: int, now_ns: int) -> None:
        """Record ``n`` frames handed to the sink at ``now_ns`` (after :meth:`frames_due` asked for them)."""
        if n <= 0:
            return
        if self._anchor is None:
            self.starts += 1
            self._begin(now_ns)
        late = now_ns - self._due_ns(self._sent + n - 1)
        if late > 0:
            self.late_ns_total += late
            self.late_ns_max = max(self.late_ns_max, late)
        self._sent += n
        self.frames_sent += n

    def next_wakeup_ns(self, now_ns: int) -> int:
        """When the next frame falls due: ``now_ns`` if one is due already (or no schedule is in force).

        Ask only while there is audio to send; an idle shell waits for audio, not for the pacer.
        """
        if self._anchor is None or self._paused:
            return now_ns
        return max(now_ns, self._due_ns(self._sent))

    def resync(self, queued_ns: int, now_ns: int) -> None:
        """Align the model with the sink's own report that it holds ``queued_ns`` of audio at ``now_ns``.

        Ignored while no schedule is in force: there is nothing of ours in the sink to line up.
        """
        if self._anchor is None:
            return
        self.resyncs += 1
        # Solve ``sent * frame - (now - anchor) == queued`` for the anchor: the queue ends where the sink says.
        self._anchor = now_ns - (self._sent * self._frame_ns - max(0, queued_ns))

    def _begin(self, now_ns: int) -> None:
        self._anchor = now_ns
        self._sent = 0

    def _played(self, anchor: int, now_ns: int) -> int:
        return max(0, (now_ns - anchor) // self._frame_ns)

    def _due_ns(self, k: int) -> int:
        anchor = self._anchor if self._anchor is not None else 0
        return anchor + (k - self._lead + 1) * self._frame_ns
