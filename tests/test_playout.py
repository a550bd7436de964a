"""PlayoutBuffer: prebuffer, fixed frames, underrun vs end-of-reply accounting, overflow refusal, flush."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from hypothesis import given, settings
from hypothesis import strategies as st

from core.playout import PlayoutBuffer, PlayoutState

F = 480  # 10 ms at 48 kHz


def ms(n_ms: int, value: int = 1) -> npt.NDArray[np.int16]:
    return np.full(48 * n_ms, value, dtype=np.int16)


def state(p: PlayoutBuffer) -> PlayoutState:
    return p.state  # through a call, so mypy does not carry one assert's narrowing into the next


def ramp(n: int, start: int = 1) -> npt.NDArray[np.int16]:
    """Distinct non-zero samples, so audio can be told apart from padding and its order checked."""
    return (np.arange(start, start + n) % 30000 + 1).astype(np.int16)


def test_waits_for_the_start_threshold() -> None:
    p = PlayoutBuffer(start_ms=20)
    assert p.pop_frame().size == 0
    p.push(ms(10))
    assert not p.ready and p.pop_frame().size == 0 and state(p) is PlayoutState.IDLE
    p.push(ms(10))
    assert p.ready
    assert p.pop_frame().shape == (F,)
    assert state(p) is PlayoutState.PLAYING and p.starts == 1
    assert p.underruns == 0


def test_burst_plays_in_order_then_goes_idle_without_an_underrun() -> None:
    p = PlayoutBuffer(idle_after_ms=200)
    audio = ramp(48000 * 5)
    assert p.push(audio) == 0
    assert p.depth_ms == 5000.0
    frames = [p.pop_frame() for _ in range(500)]
    assert np.array_equal(np.concatenate(frames), audio)
    tail = []
    while (frame := p.pop_frame()).size:
        tail.append(frame)
        assert len(tail) <= 100
    assert len(tail) == 20 and not np.concatenate(tail).any()  # 200 ms of silence, then idle
    assert state(p) is PlayoutState.IDLE
    assert (p.underruns, p.underrun_samples, p.ends) == (0, 0, 1)
    assert p.padding_samples == 20 * F


def test_late_audio_within_the_window_is_an_underrun() -> None:
    p = PlayoutBuffer(start_ms=0)
    p.push(ms(50, 7))
    assert all(p.pop_frame().tolist() == [7] * F for _ in range(5))
    for _ in range(3):
        assert not p.pop_frame().any()
    assert state(p) is PlayoutState.STARVED
    p.push(ms(30, 9))
    assert p.pop_frame().tolist() == [9] * F
    assert state(p) is PlayoutState.PLAYING
    assert (p.underruns, p.underrun_samples) == (1, 3 * F)


def test_partial_frame_is_padded_and_counted_when_audio_resumes() -> None:
    p = PlayoutBuffer(start_ms=0)
    p.push(ms(15, 3))
    p.pop_frame()
    frame = p.pop_frame()
    assert frame[:240].tolist() == [3] * 240 and not frame[240:].any()
    p.push(ms(10, 4))
    assert p.pop_frame().tolist() == [4] * F
    assert (p.underruns, p.underrun_samples) == (1, 240)


def test_end_of_stream_goes_idle_at_once() -> None:
    p = PlayoutBuffer()
    p.push(ms(25, 5))
    p.mark_end_of_stream()
    assert p.pop_frame().tolist() == [5] * F
    assert p.pop_frame().tolist() == [5] * F
    last = p.pop_frame()
    assert last[:240].tolist() == [5] * 240 and not last[240:].any()
    assert state(p) is PlayoutState.IDLE
    assert p.pop_frame().size == 0
    assert (p.underruns, p.ends, p.padding_samples) == (0, 1, 240)


def test_end_of_stream_starts_a_tail_shorter_than_the_threshold() -> None:
    p = PlayoutBuffer(start_ms=20)
    p.push(ms(5))
    assert p.pop_frame().size == 0
    p.mark_end_of_stream()
    assert p.pop_frame()[:240].tolist() == [1] * 240
    assert state(p) is PlayoutState.IDLE


def test_end_of_stream_while_starved_ends_the_wait() -> None:
    p = PlayoutBuffer(start_ms=0)
    p.push(ms(10))
    p.pop_frame()
    p.pop_frame()
    assert state(p) is PlayoutState.STARVED
    p.mark_end_of_stream()
    assert state(p) is PlayoutState.IDLE and p.pop_frame().size == 0
    assert p.underruns == 0


def test_push_after_end_of_stream_is_a_new_reply() -> None:
    p = PlayoutBuffer(start_ms=0)
    p.push(ms(10))
    p.mark_end_of_stream()
    p.push(ms(10))  # clears the mark: this audio belongs to what follows
    p.pop_frame()
    p.pop_frame()
    assert p.pop_frame().size == F  # starved, not idle: the mark was withdrawn
    assert state(p) is PlayoutState.STARVED


def test_flush_drops_everything_and_reports_it() -> None:
    p = PlayoutBuffer()
    p.push(ms(1000))
    for _ in range(10):
        p.pop_frame()
    assert p.flush() == 48000 - 10 * F
    assert state(p) is PlayoutState.IDLE and p.depth_samples == 0
    assert p.pop_frame().size == 0
    assert (p.flushes, p.flushed_samples, p.underruns, p.ends) == (1, 48000 - 10 * F, 0, 0)
    assert p.flush() == 0


def test_overflow_refuses_the_newest_until_idle() -> None:
    p = PlayoutBuffer(capacity_ms=100, start_ms=0, idle_after_ms=20)
    assert p.push(ms(80, 1)) == 0
    assert p.push(ms(50, 2)) == 48 * 30
    assert p.push(ms(10, 3)) == 48 * 10  # refused whole: no splice after the hole
    assert (p.overflow_events, p.refused_samples) == (1, 48 * 40)
    played = np.concatenate([p.pop_frame() for _ in range(10)])
    assert played.tolist() == [1] * (48 * 80) + [2] * (48 * 20)
    while p.pop_frame().size:
        pass
    assert state(p) is PlayoutState.IDLE
    assert p.push(ms(10, 4)) == 0  # a new reply is accepted again


def test_flush_lifts_the_refusal() -> None:
    p = PlayoutBuffer(capacity_ms=100)
    p.push(ms(150))
    p.flush()
    assert p.push(ms(10)) == 0


def test_frame_length_is_configurable() -> None:
    p = PlayoutBuffer(rate=24000, frame_ms=20, start_ms=0)
    p.push(np.ones(1000, dtype=np.int16))
    assert p.frame_samples == 480 and p.pop_frame().shape == (480,)


@settings(max_examples=200, deadline=None)
@given(
    script=st.lists(
        st.one_of(
            st.tuples(st.just("push"), st.integers(0, 3000)),
            st.tuples(st.just("pop"), st.integers(1, 12)),
            st.tuples(st.just("end"), st.just(0)),
        ),
        max_size=50,
    ),
    start_ms=st.integers(0, 30),
    idle_after_ms=st.integers(0, 60),
)
def test_accounting_and_order(script: list[tuple[str, int]], start_ms: int, idle_after_ms: int) -> None:
    p = PlayoutBuffer(capacity_ms=100, start_ms=start_ms, idle_after_ms=idle_after_ms)
    fed, out = [], []
    next_value = 1
    for op, n in script:
        if op == "push":
            chunk = ramp(n, next_value)
            next_value += n
            refused = p.push(chunk)
            fed.append(chunk[: n - refused])
        elif op == "pop":
            for _ in range(n):
                frame = p.pop_frame()
                assert frame.shape in ((0,), (F,))
                out.append(frame)
        else:
            p.mark_end_of_stream()
        assert p.samples_in == p.samples_out + p.refused_samples + p.depth_samples
        assert p.frames_out * F == p.samples_out + p.padding_samples
        assert p.underrun_samples <= p.padding_samples
        assert p.depth_samples <= p.capacity_samples
    played = np.concatenate([np.zeros(0, dtype=np.int16), *out])
    accepted = np.concatenate([np.zeros(0, dtype=np.int16), *fed])
    audio = played[played != 0]
    assert np.array_equal(audio, accepted[: audio.shape[0]])


# ------------------------------------------------------------------------ interruptions by event id


def test_an_interruption_with_an_older_id_keeps_newer_audio() -> None:
    # A tool-call sound (event 4) is queued, then the reply of event 7; the interruption of event 5 stops the
    # sound only. Before, every interruption flushed everything, so the reply was cut too.
    p = PlayoutBuffer(start_ms=0)
    p.push(ms(30, 4), event_id=4)
    p.push(ms(50, 7), event_id=7)
    assert p.queued_event_ids == [4, 7]
    assert p.flush_before(5) == 48 * 30
    assert p.queued_event_ids == [7] and p.depth_samples == 48 * 50
    frames = [p.pop_frame() for _ in range(5)]
    assert all((f == 7).all() for f in frames)  # the reply, whole and in order


def test_an_interruption_with_a_newer_id_flushes_everything_older() -> None:
    p = PlayoutBuffer(start_ms=0)
    p.push(ms(30, 4), event_id=4)
    p.push(ms(20, 5), event_id=5)
    assert p.pop_frame()[0] == 4  # playing event 4
    assert p.flush_before(6) == 48 * 40
    assert p.depth_samples == 0 and state(p) is PlayoutState.IDLE and p.queued_event_ids == []


def test_an_interruption_keeps_audio_of_its_own_id_and_drops_id_less_audio() -> None:
    # "Below", not "at or below": a new reply may share the interruption's id (elevenlabs-python #829).
    p = PlayoutBuffer(start_ms=0)
    p.push(ms(10, 1))  # no id: older than anything
    p.push(ms(10, 3), event_id=3)
    p.push(ms(10, 5), event_id=5)
    p.push(ms(10, 6), event_id=6)
    assert p.flush_before(5) == 48 * 20
    assert p.queued_event_ids == [5, 6]
    assert p.pop_frame()[0] == 5 and p.pop_frame()[0] == 6
    assert p.flush_before(2) == 0  # nothing older left


def test_an_interruption_older_than_everything_queued_changes_nothing() -> None:
    p = PlayoutBuffer(start_ms=0)
    p.push(ms(20, 8), event_id=8)
    p.pop_frame()
    assert p.flush_before(3) == 0 and p.flushes == 0
    assert state(p) is PlayoutState.PLAYING and p.depth_samples == 48 * 10


@settings(max_examples=200, deadline=None)
@given(pushes=st.lists(st.tuples(st.integers(0, 9), st.integers(1, 400)), max_size=20),
       pops=st.integers(0, 30), cut=st.integers(0, 10))
def test_flush_before_keeps_exactly_the_newer_samples_in_order(pushes: list[tuple[int, int]], pops: int,
                                                               cut: int) -> None:
    p = PlayoutBuffer(start_ms=0, capacity_ms=1000)
    expected: list[int] = []
    for event_id, n in pushes:
        p.push(np.full(n, event_id + 1, dtype=np.int16), event_id=event_id)
        expected += [event_id + 1] * n
    played: list[int] = []
    for _ in range(pops):
        frame = p.pop_frame()
        played += [int(v) for v in frame if v]
    remaining = expected[len(played):]
    p.flush_before(cut)
    left: list[int] = []
    p.mark_end_of_stream()
    for _ in range(1000):
        frame = p.pop_frame()
        if frame.size == 0:
            break
        left += [int(v) for v in frame if v]
    assert left == [v for v in remaining if v - 1 >= cut]
