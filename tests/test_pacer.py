"""Pacer timing with literal times and a simulated sink: jitter, stalls, stop/start, reset, resync."""

from __future__ import annotations

import random

import pytest

from core.clock import MS, SECOND, FakeClock
from core.errors import ConfigError
from core.pacer import Pacer

F = 10 * MS


class Sink:
    """An AudioSource-like queue: from its first frame on, it plays one frame per period on its own grid."""

    def __init__(self, period_ns: int = F) -> None:
        self.period = period_ns
        self.queued = 0
        self.next_tick: int | None = None
        self.played = 0
        self.dry_ticks = 0
        self.max_queued = 0

    def advance(self, now_ns: int) -> None:
        while self.next_tick is not None and self.next_tick <= now_ns:
            if self.queued:
                self.queued -= 1
                self.played += 1
            else:
                self.dry_ticks += 1
            self.next_tick += self.period

    def push(self, n: int, now_ns: int) -> None:
        if self.next_tick is None:
            self.next_tick = now_ns + self.period
        self.queued += n
        self.max_queued = max(self.max_queued, self.queued)


def drive(pacer: Pacer, sink: Sink, clock: FakeClock, until_ns: int, jitter_ns: int, seed: int,
          max_queue: int | None = None) -> int:
    """The shell's loop: wake when asked (plus random lateness), send what is due; returns the last wakeup."""
    rng = random.Random(seed)
    now = clock.now_ns()
    while clock.now_ns() < until_ns:
        now = clock.now_ns()
        sink.advance(now)
        n = pacer.frames_due(now)
        assert 0 <= n <= pacer.lead_frames
        if n:
            sink.push(n, now)
            pacer.on_frames_sent(n, now)
        assert sink.queued <= (max_queue or pacer.lead_frames)
        wake = pacer.next_wakeup_ns(now)
        assert wake > now  # nothing left due right after sending
        clock.set(wake + rng.randrange(jitter_ns + 1))
    return now


@pytest.mark.parametrize("seed", range(5))
def test_exact_frame_count_under_jittery_wakeups(seed: int) -> None:
    clock = FakeClock(1_000 * SECOND)
    start = clock.now_ns()
    pacer, sink = Pacer(lead_frames=3), Sink()
    last = drive(pacer, sink, clock, start + 10 * SECOND, jitter_ns=8 * MS, seed=seed)
    # After every wakeup the pacer has sent exactly what the sink played plus the lead...
    assert pacer.frames_sent == (last - start) // F + 3
    # ...so a last look at exactly 10 s finds exactly 1000 frames played and 3 queued.
    end = start + 10 * SECOND
    clock.set(max(clock.now_ns(), end))
    sink.advance(end)
    n = pacer.frames_due(end)
    pacer.on_frames_sent(n, end)
    sink.push(n, end)
    assert pacer.frames_sent == 1000 + 3
    assert sink.played == 1000 and sink.queued == 3
    assert sink.max_queued <= 3
    assert sink.dry_ticks == 0  # 8 ms late wakeups never let a 30 ms lead run out
    assert pacer.reanchors == 0
    assert 0 < pacer.late_ns_max <= 8 * MS


def test_first_call_fills_the_lead_then_one_frame_per_period() -> None:
    pacer = Pacer(lead_frames=3)
    assert pacer.frames_due(0) == 3
    pacer.on_frames_sent(3, 0)
    assert pacer.frames_due(0) == 0
    assert pacer.next_wakeup_ns(0) == F
    assert pacer.frames_due(F - 1) == 0
    assert pacer.frames_due(F) == 1
    assert pacer.depth_frames(F) == 2
    pacer.on_frames_sent(1, F)
    # 25 ms late (at 35 ms): three frames played, one left, so two are due and the grid is kept.
    assert pacer.frames_due(35 * MS) == 2
    pacer.on_frames_sent(2, 35 * MS)
    assert pacer.next_wakeup_ns(35 * MS) == 40 * MS
    assert pacer.late_ns_max == 5 * MS  # the sixth frame fell due at 30 ms


def test_a_stall_reanchors_instead_of_bursting() -> None:
    clock = FakeClock(0)
    pacer, sink = Pacer(lead_frames=3), Sink()
    drive(pacer, sink, clock, 1 * SECOND, jitter_ns=0, seed=0)
    clock.advance(200 * MS)  # the event loop was blocked
    now = clock.now_ns()
    sink.advance(now)
    n = pacer.frames_due(now)
    assert n == 3  # not the ~23 frames the old schedule would call overdue
    assert pacer.reanchors == 1 and 15 <= pacer.lag_frames <= 20
    sink.push(n, now)
    pacer.on_frames_sent(n, now)
    drive(pacer, sink, clock, now + 1 * SECOND, jitter_ns=0, seed=0)
    assert sink.max_queued <= 3 and pacer.reanchors == 1


def test_small_lateness_never_reanchors() -> None:
    pacer = Pacer(lead_frames=3)
    pacer.on_frames_sent(pacer.frames_due(0), 0)
    # 29 ms without a wakeup: the sink still has a frame, so this is catch-up within the lead.
    assert pacer.frames_due(29 * MS) == 2
    assert pacer.reanchors == 0
    # 31 ms: the sink played all three; it has just gone dry, which is still not lag.
    pacer2 = Pacer(lead_frames=3)
    pacer2.on_frames_sent(pacer2.frames_due(0), 0)
    assert pacer2.frames_due(31 * MS) == 3 and pacer2.reanchors == 0
    assert pacer2.frames_due(41 * MS) == 3 and pacer2.reanchors == 1


def test_first_call_anchors_and_asks_for_the_lead() -> None:
    pacer = Pacer(lead_frames=3)
    assert not pacer.anchored and pacer.next_wakeup_ns(7) == 7
    assert pacer.frames_due(7) == 3
    assert pacer.anchored and pacer.starts == 1 and pacer.reanchors == 0


def test_stop_then_resume_continues_while_the_sink_drains() -> None:
    pacer = Pacer(lead_frames=3)
    pacer.on_frames_sent(pacer.frames_due(0), 0)
    pacer.stop()
    assert pacer.next_wakeup_ns(12 * MS) == 12 * MS  # asked only when there is audio again: at once
    # Audio again at 15 ms: the sink still holds 2 of our frames, so keep the grid and top up by one.
    assert pacer.depth_frames(15 * MS) == 2
    assert pacer.frames_due(15 * MS) == 1
    pacer.on_frames_sent(1, 15 * MS)
    pacer.stop()
    # Audio again at 500 ms: long drained. A fresh anchor, the lead at once, and no stall counted.
    assert pacer.frames_due(500 * MS) == 3
    assert (pacer.starts, pacer.stops, pacer.reanchors, pacer.lag_frames) == (2, 2, 0, 0)


def test_reset_after_interruption_refills_at_once() -> None:
    pacer = Pacer(lead_frames=4)
    pacer.on_frames_sent(pacer.frames_due(0), 0)
    assert pacer.frames_due(5 * MS) == 0
    pacer.reset()  # the AudioSource queue was cleared
    assert pacer.next_wakeup_ns(5 * MS) == 5 * MS
    assert pacer.frames_due(5 * MS) == 4
    pacer.on_frames_sent(4, 5 * MS)
    assert pacer.next_wakeup_ns(5 * MS) == 15 * MS
    assert (pacer.resets, pacer.reanchors, pacer.starts) == (1, 0, 2)


def run_slow_sink(resync: bool) -> Sink:
    clock = FakeClock(0)
    pacer, sink = Pacer(lead_frames=3), Sink(period_ns=F + F // 1000)  # the sink's clock runs 0.1% slow
    for second in range(1, 31):
        # The slow sink ticks up to 10 µs after the pacer's grid, so a frame can sit queued for that long.
        drive(pacer, sink, clock, second * SECOND, jitter_ns=0, seed=second, max_queue=10)
        if resync and sink.queued and sink.next_tick is not None:
            # The shell reads the real queue (AudioSource.queued_duration) once a second.
            now = clock.now_ns()
            sink.advance(now)
            pacer.resync((sink.queued - 1) * sink.period + (sink.next_tick - now), now)
    return sink


def test_resync_corrects_a_drifting_sink() -> None:
    assert run_slow_sink(resync=False).max_queued >= 5  # 3 frames of drift in 30 s pile up
    assert run_slow_sink(resync=True).max_queued <= 4


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError):
        Pacer(lead_frames=0)
    with pytest.raises(ConfigError):
        Pacer(frame_ns=0)
