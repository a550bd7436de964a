"""Reply audio: a sine, a speech-like signal, and one-shot resampling for the echo probe."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import soxr

__all__ = ["resample", "speech_like", "tone"]

Int16Array = npt.NDArray[np.int16]


def _amplitude(level_dbfs: float) -> float:
    return float(32767.0 * 10.0 ** (level_dbfs / 20.0))


def tone(rate: int, ms: float, hz: float = 440.0, level_dbfs: float = -12.0) -> Int16Array:
    n = round(rate * ms / 1000)
    t = np.arange(n) / rate
    return np.round(_amplitude(level_dbfs) * np.sin(2 * np.pi * hz * t)).astype(np.int16)


def speech_like(rate: int, ms: float, level_dbfs: float = -12.0, seed: int | None = None) -> Int16Array:
    """Voiced, syllabic, with pauses: a gliding 100–200 Hz fundamental with 1/k harmonics below 4 kHz,
    amplitude-modulated at about 4 syllables per second, and a 200 ms pause every 1.5 s. Enough structure
    for a VAD and a listener to take it for speech; not intelligible."""
    rng = np.random.default_rng(seed)
    n = round(rate * ms / 1000)
    t = np.arange(n) / rate
    f0 = 150 + 40 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 2 * np.pi)) + 10 * np.sin(2 * np.pi * 3.1 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    signal = np.zeros(n)
    for k in range(1, 20):
        if 200 * k > min(4000, rate / 2 - 200):
            break
        signal += np.sin(k * phase) / k
    syllables = np.abs(np.sin(np.pi * (4.0 + rng.uniform(-0.5, 0.5)) * t)) ** 0.6
    pauses = ((t % 1.5) < 1.3).astype(float)
    shaped = signal * syllables * pauses
    peak = float(np.max(np.abs(shaped))) if n else 1.0
    out: Int16Array = np.round(shaped / max(peak, 1e-9) * _amplitude(level_dbfs)).astype(np.int16)
    return out


def resample(samples: Int16Array, src_rate: int, dst_rate: int) -> Int16Array:
    if src_rate == dst_rate or samples.size == 0:
        return samples.astype(np.int16, copy=True)
    out: Int16Array = soxr.resample(samples.astype(np.int16, copy=False), src_rate, dst_rate, quality="HQ")
    return out
