"""When is the next 10 ms frame due? A sans-I/O pacer in the style of aioquic's ``QuicPacketPacer``.

The pacer never reads a clock: every time-dependent method takes ``now_ns`` and the answer to "when do you
want to be woken?" is a return value (:meth:`Pacer.next_wakeup_ns`). The asyncio shell owns the sleeping.

The model. The sink (LiveKit's ``AudioSource``) plays one frame every ``frame_ns`` from a short queue. The
pacer keeps that queue at ``lead_frames`` (default 3, i.e. 30 ms: enough to ride out event-loop wakeups that
are a few ms late, short enough that an interruption silences the voice within 30 ms once the queue is
cleared; the sink's own queue must hold at least this much). It assumes the sink has played
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
- **Stop, start and reset**: :meth:`stop` when there is nothing to play (the schedule is kept, since the sink
  still drains what it holds); :meth:`start` when audio is back (continues the old schedule while the sink
  is still playing from it, else anchors afresh); :meth:`reset` after the sink's queue was cleared on an
  interruption (the pacer forgets what it had queued, so it can refill at once).
- **Drift**: our clock and the sink's can disagree by a few ppm. When the shell can see the sink's real
  queue (``AudioSource.queued_duration``) it may call :meth:`resync` to move the anchor to match.

A driver, in outline::

    while True:
        if not playout.ready:
            pacer.stop(); await audio_arrived(); pacer.start(clock.now_ns())
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

__all__ = ["Pacer"]


class Pacer:
    """Real-time frame schedule for a sink with a short queue; all times are integer nanoseconds."""

    __slots__ = (
        "_anchor",
        "_frame_ns",
        "_lead",
        "_running",
        "_sent",
        "frames_sent",
        "lag_frames",
        "late_ns_max",
        "late_ns_total",
        "reanchors",
        "resets",
        "resyncs",
        "starts",
    )

    def __init__(self, *, frame_ns: int = 10 * MS, lead_frames: int = 3) -> None:
        if frame_ns <= 0:
            raise ValueError(f"frame_ns must be positive, got {frame_ns}")
        if lead_frames < 1:
            raise ValueError(f"lead_frames must be at least 1 (the sink needs a frame to play), got {lead_frames}")
        self._frame_ns = frame_ns
        self._lead = lead_frames
        self._running = False
        self._anchor = 0  # the sink's queue was empty here
        self._sent = 0  # frames sent since the anchor
        self.frames_sent = 0
        self.starts = 0
        self.resets = 0
        self.reanchors = 0
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
    def running(self) -> bool:
        return self._running

    def depth_frames(self, now_ns: int) -> int:
        """Frames the sink is believed to hold at ``now_ns`` (the one playing included)."""
        return max(0, self._sent - self._played(now_ns))

    def start(self, now_ns: int) -> None:
        """Audio is available again: resume the schedule, or anchor a new one if the sink ran empty."""
        self.starts += 1
        self._running = True
        if self._sent - self._played(now_ns) <= 0:
            self._anchor = now_ns
            self._sent = 0

    def stop(self) -> None:
        """Nothing to play: ask for no frames and no wakeups until :meth:`start`."""
        self._running = False

    def reset(self, now_ns: int) -> None:
        """The sink's queue was cleared (interruption): forget it; if running, the lead is due at once."""
        self.resets += 1
        self._anchor = now_ns
        self._sent = 0

    def frames_due(self, now_ns: int) -> int:
        """How many frames to hand the sink now: 0 ≤ n ≤ ``lead_frames``."""
        if not self._running:
            return 0
        played = self._played(now_ns)
        lag = played - self._sent
        if lag > 0:
            # The sink has been dry for ``lag`` frames; that time is lost, so start a fresh schedule.
            self.reanchors += 1
            self.lag_frames += lag
            self._anchor = now_ns
            self._sent = 0
            return self._lead
        return min(self._lead, played + self._lead - self._sent)

    def on_frames_sent(self, n: int, now_ns: int) -> None:
        """Record ``n`` frames handed to the sink at ``now_ns`` (after :meth:`frames_due` asked for them)."""
        if n <= 0:
            return
        late = now_ns - self._due_ns(self._sent + n - 1)
        if late > 0:
            self.late_ns_total += late
            self.late_ns_max = max(self.late_ns_max, late)
        self._sent += n
        self.frames_sent += n

    def next_wakeup_ns(self, now_ns: int) -> int | None:
        """When the next frame falls due (``now_ns`` if one is due already); None while stopped."""
        if not self._running:
            return None
        return max(now_ns, self._due_ns(self._sent))

    def resync(self, queued_ns: int, now_ns: int) -> None:
        """Align the model with the sink's own report that it holds ``queued_ns`` of audio at ``now_ns``."""
        self.resyncs += 1
        # Solve ``sent * frame - (now - anchor) == queued`` for the anchor: the queue ends where the sink says.
        self._anchor = now_ns - (self._sent * self._frame_ns - max(0, queued_ns))

    def _played(self, now_ns: int) -> int:
        return max(0, (now_ns - self._anchor) // self._frame_ns)

    def _due_ns(self, k: int) -> int:
        return self._anchor + (k - self._lead + 1) * self._frame_ns
