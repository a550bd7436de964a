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
    # No step at a boundary larger than the steepest slope of the tone itself (plus dither). The tone starts
    # and stops abruptly, and every filter rings there (one-shot too: 48k→44.1k overshoots the slope by 3 %
    # in its first samples), so boundaries in the first and last 5 ms are covered by the comparison above.
    max_slope = 2 * np.pi * TONE_HZ * AMPLITUDE / out_rate
    settle = out_rate // 200
    boundaries = np.cumsum([len(p) for p in pieces[:-1]])
    boundaries = boundaries[(boundaries > settle) & (boundaries < len(joined) - settle)]
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


# ---------------------------------------------------------------------- uplink FIR decimators (core.fir)

DECIMATIONS = [(48000, 24000), (48000, 16000), (48000, 8000), (48000, 44100), (48000, 22050)]
# core.fir's design: 48k→8k needs 245 taps (2.54 ms) to be flat to 3.2 kHz and 70 dB down from 4 kHz; the
# others are well inside 2 ms (44.1k/22.05k: 0.46/0.92 ms, polyphase rational).
MAX_DELAY_MS = {24000: 2.0, 16000: 2.0, 8000: 2.6, 44100: 1.0, 22050: 1.0}


def tone_level_db(out_rate: int, hz: float) -> float:
    """Output level of a 48 kHz tone at ``hz``, relative to the input, away from the ends."""
    x = sine(48000, 1.0, hz=hz)
    y = one_shot(48000, out_rate, x)[out_rate // 10 : -out_rate // 10].astype(np.float64)
    # An alias below ½ LSB rounds to digital silence; count it at int16's rounding floor (1/√12 LSB rms,
    # -93 dB here) instead of -inf.
    rms = max(float(np.sqrt(np.mean(y**2))), 1 / np.sqrt(12))
    return float(20 * np.log10(rms / (AMPLITUDE / np.sqrt(2))))


@pytest.mark.parametrize(("in_rate", "out_rate"), DECIMATIONS)
@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(1, 2000), min_size=1, max_size=20), seed=st.integers(0, 2**16))
def test_fir_chunked_is_bit_identical_to_one_shot(in_rate: int, out_rate: int, sizes: list[int], seed: int) -> None:
    # No dither and the same float64 dot product per output whatever the chunking: exact, not ±LSB.
    x = np.random.default_rng(seed).integers(-20000, 20000, 3000).astype(np.int16)
    joined = np.concatenate(chunked(Resampler(in_rate, out_rate), x, sizes))
    assert np.array_equal(joined, one_shot(in_rate, out_rate, x))
    assert joined.shape == (-(-3000 * out_rate // in_rate),)


@pytest.mark.parametrize(("in_rate", "out_rate"), DECIMATIONS)
def test_fir_group_delay_is_small(in_rate: int, out_rate: int) -> None:
    r = Resampler(in_rate, out_rate)
    # Held while streaming 10 ms chunks: the benchmark's latency measure.
    held = []
    for _ in range(20):
        r.push(sine(in_rate, 0.01))
        held.append(r.delay_ms)
    assert max(held[5:]) <= MAX_DELAY_MS[out_rate]
    # The output is time-aligned (delay compensated like soxr): a click at input sample 960 (20 ms) comes out
    # at output 20 ms, and the first output appears only once the click is group-delay old.
    click = np.zeros(4800, dtype=np.int16)
    click[960] = 30000
    r = Resampler(in_rate, out_rate)
    first = r.push(click[:961])
    assert (961 * out_rate / in_rate - first.size) * 1000 / out_rate <= MAX_DELAY_MS[out_rate]
    y = np.concatenate([first, r.push(click[961:]), r.flush()])
    assert int(np.argmax(np.abs(y))) == 960 * out_rate // in_rate  # 20 ms in, 20 ms out
    # Cross-correlating a chirp finds the same alignment: zero lag against the chirp sampled at the output rate.
    def chirp(rate: int) -> npt.NDArray[np.float64]:
        t = np.arange(rate // 2) / rate
        return np.round(8000 * np.sin(2 * np.pi * (100 * t + 0.8 * out_rate / 2 * t**2)))
    out = one_shot(in_rate, out_rate, chirp(in_rate).astype(np.int16)).astype(np.float64)
    ideal = chirp(out_rate)
    lags = np.arange(-20, 21)
    corr = [np.dot(out[100 + k : -100 + k], ideal[100:-100]) for k in lags]
    assert lags[int(np.argmax(corr))] == 0


@pytest.mark.parametrize(("in_rate", "out_rate"), DECIMATIONS)
def test_fir_passband_is_flat_to_0_8_nyquist(in_rate: int, out_rate: int) -> None:
    nyquist = out_rate / 2
    for hz in (0.5 * nyquist, 0.8 * nyquist):
        assert abs(tone_level_db(out_rate, hz)) < 0.1, hz


@pytest.mark.parametrize(("in_rate", "out_rate"), DECIMATIONS)
def test_fir_rejects_aliases_by_70_db(in_rate: int, out_rate: int) -> None:
    # Just above the output Nyquist (9 kHz into 48k→16k folds to 7 kHz) and further up.
    # 48k→44.1k has only 22.05–24 kHz to fold back from.
    nyquist = out_rate / 2
    tones = [hz for hz in (nyquist + 500, nyquist + 1000, nyquist * 1.5, 20000, 23500) if nyquist < hz < 24000]
    assert len(tones) >= 3
    for hz in tones:
        assert tone_level_db(out_rate, hz) <= -70, hz


def test_fir_flush_emits_the_tail_and_reset_drops_history() -> None:
    r = Resampler(48000, 16000)
    x = sine(48000, 0.02, hz=3000)
    head = r.push(x)
    assert head.size < 320 and r.delay_samples == 320 - head.size
    tail = r.flush()
    assert head.size + tail.size == 320 and np.abs(tail).max() > AMPLITUDE / 2  # real signal, not just zeros
    assert r.delay_samples == 0
    r.push(x)
    r.reset()
    assert r.delay_samples == 0 and r.flush().size == 0
    # After the reset nothing of the old tone leaks into the next utterance.
    silence = np.concatenate([r.push(np.zeros(960, dtype=np.int16)), r.flush()])
    assert silence.shape == (320,) and not silence.any()
    assert r.resets == 1 and r.flushes == 3


def test_fir_saturates_and_counts_clips() -> None:
    r = Resampler(48000, 8000)
    square = np.tile(np.array([32767] * 240 + [-32768] * 240, dtype=np.int16), 10)
    y = np.concatenate([r.push(square), r.flush()])
    assert r.clipped_samples > 0
    assert y.max() == 32767 and y.min() == -32768


@pytest.mark.parametrize(("in_rate", "out_rate"), DECIMATIONS)
def test_fir_tone_comes_out_at_its_frequency(in_rate: int, out_rate: int) -> None:
    # The FFT peak of a converted 48 kHz tone sits at the tone's frequency, at the input's level.
    for hz in (440.0, 3000.0, 0.7 * out_rate / 2):
        y = one_shot(in_rate, out_rate, sine(in_rate, 0.5, hz=hz))[out_rate // 20 : -out_rate // 20]
        spectrum = np.abs(np.fft.rfft(y.astype(np.float64) * np.hanning(y.size)))
        peak = float(np.fft.rfftfreq(y.size, 1 / out_rate)[int(np.argmax(spectrum))])
        assert abs(peak - hz) <= out_rate / y.size, (hz, peak)
        rms = float(np.sqrt(np.mean(y.astype(np.float64) ** 2)))
        assert abs(20 * np.log10(rms / (AMPLITUDE / np.sqrt(2)))) < 0.1


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), out_rate=st.sampled_from([16000, 44100, 8000]))
def test_fir_sample_at_a_time_equals_whole(seed: int, out_rate: int) -> None:
    # The extreme chunking: one sample per push gives exactly what one push of everything gives.
    x = np.random.default_rng(seed).integers(-30000, 30000, 700).astype(np.int16)
    r = Resampler(48000, out_rate)
    pieces = [r.push(x[i : i + 1]) for i in range(x.size)] + [r.flush()]
    assert np.array_equal(np.concatenate(pieces), one_shot(48000, out_rate, x))
