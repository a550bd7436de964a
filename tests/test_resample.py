"""Resampler streams: chunking invariance, no clicks at chunk boundaries, pitch kept, flush and reset."""

from __future__ import annotations

import itertools

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import ConfigError
from core.formats import SUPPORTED_RATES
from core.resample import Resampler

PAIRS = [(a, b) for a, b in itertools.product(SUPPORTED_RATES, repeat=2) if a != b]
# soxr dithers its int16 output (see core.resample), so two runs that chunk differently agree to ±2 LSB.
DITHER_LSB = 2
TONE_HZ = 1000  # below every Nyquist frequency in play (4 kHz at 8 kHz) and clear of the filters' roll-off
AMPLITUDE = 12000


def sine(rate: int, seconds: float, hz: float = TONE_HZ) -> npt.NDArray[np.int16]:
    t = np.arange(int(rate * seconds)) / rate
    return np.round(AMPLITUDE * np.sin(2 * np.pi * hz * t)).astype(np.int16)


def one_shot(in_rate: int, out_rate: int, x: npt.NDArray[np.int16]) -> npt.NDArray[np.int16]:
    r = Resampler(in_rate, out_rate)
    return np.concatenate([r.push(x), r.flush()])


def chunked(r: Resampler, x: npt.NDArray[np.int16], sizes: list[int]) -> list[npt.NDArray[np.int16]]:
    out, i = [], 0
    for size in itertools.cycle(sizes):
        if i >= len(x):
            break
        out.append(r.push(x[i : i + size]))
        i += size
    out.append(r.flush())
    return out


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
@settings(max_examples=5, deadline=None)
@given(sizes=st.lists(st.integers(1, 1500), min_size=1, max_size=12))
def test_chunked_equals_one_shot_without_clicks(in_rate: int, out_rate: int, sizes: list[int]) -> None:
    x = sine(in_rate, 0.25)
    whole = one_shot(in_rate, out_rate, x)
    pieces = chunked(Resampler(in_rate, out_rate), x, sizes)
    joined = np.concatenate(pieces)
    assert joined.shape == whole.shape
    assert np.abs(joined.astype(np.int32) - whole).max() <= DITHER_LSB
    # No step at a boundary larger than the steepest slope of the tone itself (plus dither).
    max_slope = 2 * np.pi * TONE_HZ * AMPLITUDE / out_rate
    boundaries = np.cumsum([len(p) for p in pieces[:-1]])
    boundaries = boundaries[(boundaries > 0) & (boundaries < len(joined))]
    steps = np.abs(joined[boundaries].astype(np.int32) - joined[boundaries - 1])
    assert steps.max(initial=0) <= max_slope + 2 * DITHER_LSB


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
def test_frequency_amplitude_and_length_are_kept(in_rate: int, out_rate: int) -> None:
    x = sine(in_rate, 1.0)
    y = one_shot(in_rate, out_rate, x)
    assert abs(len(y) - out_rate) <= 1
    spectrum = np.abs(np.fft.rfft(y[:out_rate] * np.hanning(out_rate)))
    peak_hz = int(np.argmax(spectrum))  # 1 s of signal: bin k is k Hz
    assert peak_hz == TONE_HZ
    # Away from the start/end transients the level is the input's within 0.05 dB (MQ's passband ripple).
    core = y[out_rate // 10 : -out_rate // 10].astype(np.float64)
    level_db = 20 * np.log10(np.sqrt(np.mean(core**2)) / (AMPLITUDE / np.sqrt(2)))
    assert abs(level_db) < 0.05


def test_output_starts_time_aligned() -> None:
    # soxr compensates its filter delay: the one-shot output tracks the ideal resampled sine from sample 0.
    y = one_shot(16000, 48000, sine(16000, 0.2))
    ideal = sine(48000, 0.2)
    assert np.abs(y[2000:8000].astype(np.int32) - ideal[2000:8000]).max() < 30


def test_flush_makes_the_stream_reusable() -> None:
    r = Resampler(24000, 48000)
    first = np.concatenate([r.push(sine(24000, 0.1)), r.flush()])
    second = np.concatenate([r.push(sine(24000, 0.1)), r.flush()])
    assert first.shape == second.shape == (4800,)
    assert np.abs(first.astype(np.int32) - second).max() <= DITHER_LSB
    assert r.flushes == 2
    assert r.samples_in == 4800 and r.samples_out == 9600


def test_reset_forgets_history_without_emitting() -> None:
    r = Resampler(48000, 16000)
    r.push(sine(48000, 0.1, hz=3000))
    assert r.delay_samples > 0
    r.reset()
    assert r.delay_samples == 0
    after = np.concatenate([r.push(sine(48000, 0.1)), r.flush()])
    fresh = one_shot(48000, 16000, sine(48000, 0.1))
    assert np.abs(after.astype(np.int32) - fresh).max() <= DITHER_LSB
    assert r.resets == 1


def test_small_pushes_may_return_nothing_yet() -> None:
    r = Resampler(16000, 48000)
    outputs = [r.push(sine(16000, 0.001)) for _ in range(3)]  # 16 samples each
    assert all(o.dtype == np.int16 for o in outputs)
    assert sum(len(o) for o in outputs) < 3 * 48  # soxr holds the tail back
    assert r.push(np.zeros(0, dtype=np.int16)).shape == (0,)


def test_identity_passes_through() -> None:
    r = Resampler(48000, 48000)
    x = sine(48000, 0.01)
    assert r.push(x) is x
    assert r.flush().shape == (0,)
    assert r.is_identity and r.delay_samples == 0.0 and r.clipped_samples == 0


def test_clipping_is_counted_across_restarts() -> None:
    r = Resampler(16000, 48000)
    square = np.tile(np.array([32767] * 40 + [-32768] * 40, dtype=np.int16), 20)
    r.push(square)
    r.flush()
    first = r.clipped_samples
    assert first > 0
    r.push(square)
    r.reset()
    assert r.clipped_samples > first


def test_bad_configuration() -> None:
    with pytest.raises(ConfigError):
        Resampler(11025, 48000)
    with pytest.raises(ConfigError):
        Resampler(16000, 48000, quality="QQ")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Resampler(16000, 48000).push(np.zeros(4, dtype=np.float32))
