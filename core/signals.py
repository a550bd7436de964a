"""Test signals and their measures, defined once for tests, benchmarks and tools.

The oracle the whole project uses: a sine in, the FFT peak of what comes out. ``tone`` makes the sine,
``dominant_hz`` finds the peak (Hann window, so a short or cut tone still peaks at its frequency), ``rms_dbfs``
measures level relative to int16 full scale (a full-scale square wave is 0 dBFS, a full-scale sine -3 dBFS).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from core.formats import ROOM_RATE

__all__ = ["dominant_hz", "rms_dbfs", "tone", "voiced_s"]

Int16Array = npt.NDArray[np.int16]


def tone(freq: float, seconds: float, *, rate: int = ROOM_RATE, amplitude: float = 0.3) -> Int16Array:
    """A sine of ``freq`` Hz, ``amplitude`` relative to full scale."""
    t = np.arange(int(seconds * rate)) / rate
    return (np.sin(2 * np.pi * freq * t) * amplitude * 32767).astype(np.int16)


def dominant_hz(samples: npt.NDArray[np.generic], rate: int = ROOM_RATE) -> float:
    """The frequency of the strongest FFT bin; 0.0 for fewer than 256 samples (too short to say)."""
    if samples.size < 256:
        return 0.0
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(samples.size)))
    return float(np.fft.rfftfreq(samples.size, 1 / rate)[int(np.argmax(spectrum))])


def rms_dbfs(samples: npt.NDArray[np.generic]) -> float:
    """RMS level in dBFS (int16 full scale); about -240 for digital silence, never -inf."""
    if samples.size == 0:
        return -240.0
    return float(20 * np.log10(np.sqrt(np.mean((samples.astype(np.float64) / 32768) ** 2)) + 1e-12))


def voiced_s(samples: npt.NDArray[np.generic], rate: int, threshold_dbfs: float = -40.0) -> float:
    """Seconds of 10 ms frames whose level reaches ``threshold_dbfs``: how long something was heard.

    Not a count of samples above an amplitude: that depends on the waveform's shape (the relative phase of
    harmonics, which Opus and the resamplers do not keep), so one second of a two-harmonic voice at the same
    level counted 0.58-0.78 s of "loud samples" depending on the path it took.
    """
    frame = rate // 100
    if frame == 0 or samples.size < frame:
        return 0.0
    frames = samples[: samples.size // frame * frame].astype(np.float64).reshape(-1, frame) / 32768
    levels = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-24)
    return float(np.count_nonzero(levels >= threshold_dbfs)) / 100
