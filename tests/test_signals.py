"""The shared signal measures: what the end-to-end tests' verdicts rest on."""

from __future__ import annotations

import numpy as np

from core.signals import dominant_hz, rms_dbfs, tone, voiced_s


def two_harmonics(phase: float, rate: int = 48_000) -> np.ndarray:
    t = np.arange(rate) / rate
    wave = np.sin(2 * np.pi * 300 * t) + 0.5 * np.sin(2 * np.pi * 600 * t + phase)
    return (wave / 1.5 * 0.3 * 32767).astype(np.int16)


def test_voiced_seconds_count_frames_not_waveform_shape() -> None:
    # The same voice with its second harmonic shifted (as codecs and resamplers leave it): the same level and
    # duration, but a different count of samples above an amplitude threshold.
    a, b = two_harmonics(0.0), two_harmonics(1.5)
    assert abs(rms_dbfs(a) - rms_dbfs(b)) < 0.1
    loud_a = np.count_nonzero(np.abs(a.astype(np.int32)) > 6000)
    loud_b = np.count_nonzero(np.abs(b.astype(np.int32)) > 6000)
    assert abs(loud_a - loud_b) > 0.05 * a.size
    assert voiced_s(a, 48_000) == voiced_s(b, 48_000) == 1.0


def test_voiced_seconds_of_a_gap_and_of_short_input() -> None:
    gap = np.concatenate([tone(440, 0.3), np.zeros(4800, np.int16), tone(440, 0.5)])
    assert voiced_s(gap, 48_000) == 0.8
    assert voiced_s(np.zeros(100, np.int16), 48_000) == 0.0
    assert voiced_s(tone(440, 0.5, amplitude=0.001), 48_000) == 0.0  # -60 dBFS is below the -40 default
    assert abs(dominant_hz(gap) - 440) < 3
