"""Mixer: summing with saturation, starvation, join/leave between ticks, levels, overflow and backlog trim."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.mixer import SILENCE_DBFS, Mixer

TICK = 480  # 10 ms at 48 kHz


def const(value: int, n: int = TICK) -> npt.NDArray[np.int16]:
    return np.full(n, value, dtype=np.int16)


def test_one_caller_passes_through_unchanged() -> None:
    mixer = Mixer()
    mixer.join("a")
    x = np.arange(-240, 240, dtype=np.int16) * 100
    mixer.write("a", x)
    assert np.array_equal(mixer.mix(TICK), x)


def test_no_callers_is_silence() -> None:
    out = Mixer().mix(TICK)
    assert out.dtype == np.int16 and out.shape == (TICK,) and not out.any()


def test_sum_saturates_instead_of_wrapping() -> None:
    mixer = Mixer()
    for caller, value in (("a", 30000), ("b", 30000), ("c", -20000)):
        mixer.join(caller)
        mixer.write(caller, const(value))
    assert set(mixer.mix(TICK).tolist()) == {32767}  # 40000 would wrap to -25536
    assert mixer.clipped_samples == TICK
    for caller in ("a", "b"):
        mixer.write(caller, const(-30000))
    assert set(mixer.mix(TICK).tolist()) == {-32768}
    assert mixer.clipped_samples == 2 * TICK


def test_missing_audio_is_silence_and_counted_per_caller() -> None:
    mixer = Mixer()
    mixer.join("a")
    mixer.join("b")
    mixer.write("a", const(1000, 300))
    out = mixer.mix(TICK)
    assert out[:300].tolist() == [1000] * 300 and not out[300:].any()
    assert (mixer.stats["a"].starved_samples, mixer.stats["a"].starved_ticks) == (180, 1)
    assert (mixer.stats["b"].starved_samples, mixer.stats["b"].starved_ticks) == (TICK, 1)
    assert mixer.starved_samples == 180 + TICK
    mixer.leave("a")
    assert mixer.starved_samples == 180 + TICK  # totals survive a caller leaving


def test_join_and_leave_between_ticks() -> None:
    mixer = Mixer()
    assert mixer.join("a") and not mixer.join("a")
    mixer.write("a", const(100, 2 * TICK))
    assert mixer.mix(TICK).tolist() == [100] * TICK
    mixer.join("b")
    mixer.write("b", const(7))
    assert mixer.mix(TICK).tolist() == [107] * TICK
    mixer.write("a", const(100, 200))
    assert mixer.leave("a") == 200
    assert mixer.leave("a") == 0
    assert mixer.callers == ("b",) and "a" not in mixer.stats
    assert mixer.write("a", const(5)) == TICK  # a late frame after leave is dropped, counted
    assert mixer.unknown_caller_samples == TICK
    assert not mixer.mix(TICK).any()
    assert (mixer.joins, mixer.leaves, mixer.discarded_on_leave) == (2, 1, 200)


def test_level_and_activity() -> None:
    mixer = Mixer(activity_threshold_dbfs=-45.0)
    mixer.join("loud")
    mixer.join("quiet")
    mixer.join("absent")
    t = np.arange(TICK) / 48000
    mixer.write("loud", np.round(32767 * np.sin(2 * np.pi * 1000 * t)).astype(np.int16))
    mixer.write("quiet", np.round(100 * np.sin(2 * np.pi * 1000 * t)).astype(np.int16))
    mixer.mix(TICK)
    loud, quiet, absent = (mixer.stats[c] for c in ("loud", "quiet", "absent"))
    assert loud.level_dbfs == pytest.approx(-3.01, abs=0.01)
    assert loud.active
    assert quiet.level_dbfs == pytest.approx(20 * np.log10(100 / np.sqrt(2) / 32768), abs=0.05)
    assert not quiet.active
    assert absent.level_dbfs == SILENCE_DBFS and not absent.active


def test_backlog_is_trimmed_to_bound_latency() -> None:
    mixer = Mixer(max_backlog_ms=100, trim_to_ms=40)
    mixer.join("a")
    mixer.write("a", np.arange(48000 * 3 // 10, dtype=np.int32).astype(np.int16))  # 300 ms queued
    out = mixer.mix(TICK)
    stats = mixer.stats["a"]
    assert mixer.backlog("a") == 40 * 48  # the newest 40 ms wait after this tick
    assert (stats.trim_events, stats.trimmed_samples) == (1, 14400 - TICK - 1920)
    # What was played is the audio just before the kept 40 ms: the oldest went.
    assert out[0] == 14400 - TICK - 1920
    # A backlog within the limit is left alone.
    mixer.write("a", const(0, 2000))  # 40 + ~42 - 10 ms = 72 ms left after the tick
    mixer.mix(TICK)
    assert mixer.stats["a"].trim_events == 1
    assert mixer.trimmed_samples == 14400 - TICK - 1920


def test_overflow_drops_oldest_and_counts() -> None:
    mixer = Mixer(capacity_ms=500)
    mixer.join("a")
    assert mixer.write("a", const(1, 48000 * 6 // 10)) == 4800
    assert mixer.stats["a"].dropped_samples == mixer.dropped_samples == 4800


@settings(max_examples=150, deadline=None)
@given(
    script=st.lists(
        st.one_of(
            st.tuples(
                st.just("write"), st.sampled_from("abc"), st.integers(0, 700), st.integers(-32768, 32767)
            ),
            st.tuples(st.just("mix"), st.just(""), st.integers(1, 600), st.just(0)),
            st.tuples(st.just("join"), st.sampled_from("abc"), st.just(0), st.just(0)),
            st.tuples(st.just("leave"), st.sampled_from("abc"), st.just(0), st.just(0)),
        ),
        max_size=40,
    )
)
def test_mix_matches_a_model(script: list[tuple[str, str, int, int]]) -> None:
    # Backlog limits out of reach, so the model is plain per-caller FIFOs summed and clipped.
    mixer = Mixer(capacity_ms=1000, max_backlog_ms=900, trim_to_ms=900)
    queues: dict[str, list[int]] = {}
    for op, caller, n, value in script:
        if op == "join":
            mixer.join(caller)
            queues.setdefault(caller, [])
        elif op == "leave":
            mixer.leave(caller)
            queues.pop(caller, None)
        elif op == "write":
            mixer.write(caller, const(value, n))
            if caller in queues:
                queues[caller].extend([value] * n)
        else:
            total = np.zeros(n, dtype=np.int64)
            for q in queues.values():
                taken, q[:] = q[:n], q[n:]
                total[: len(taken)] += np.array(taken, dtype=np.int64)
            assert mixer.mix(n).tolist() == np.clip(total, -32768, 32767).tolist()
