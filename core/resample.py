"""Streaming sample-rate conversion between the engine's rates and LiveKit's 48 kHz, over libsoxr and our FIR.

One :class:`Resampler` per direction per session, fed int16 chunks of any size. Output is continuous across
chunk boundaries (soxr keeps the filter history), so chunking never clicks.

Lifecycle: ``push`` while audio flows → ``flush`` at the end of an utterance (emits the filter tail, then the
stream is ready for the next utterance) → ``reset`` on interruption (history dropped, nothing emitted).

Quality: ``MQ`` by default, chosen by measurement (python-soxr 1.1 / libsoxr 0.1.3, 10 ms and 100 ms chunks).
Latency is the audio pushed in but not yet handed out, mean over a steady stream; it is set by soxr's block
processing, not only by the filter length:

    ============  ==========  ==========  ==========  ==========  ==========
    quality       48k→16k     48k→8k      16k→48k     24k→48k     44.1k→48k
    ============  ==========  ==========  ==========  ==========  ==========
    LQ            11 ms       22 ms       11 ms       11 ms       0.5 ms
    MQ            21 ms       43 ms       21 ms       21 ms       11 ms
    HQ            21 ms       85 ms       21 ms       21 ms       11 ms
    VHQ           42 ms       86 ms       42 ms       21 ms       11 ms
    ============  ==========  ==========  ==========  ==========  ==========

Response (48k→16k): LQ is already 12.8 dB down at 7 kHz and 48k→8k loses 7.9 dB at 3.4 kHz, the top of the
telephone band, so it dulls speech. MQ is flat (<0.01 dB) to 7 kHz / 3.4 kHz and rejects aliases by >116 dB,
well beyond the 96 dB an int16 signal can carry; HQ and VHQ only add precision int16 cannot hold (>136 dB)
while doubling the 8 kHz latency (HQ) or the 16 kHz one (VHQ). QQ (cubic) has no anti-alias filter at all:
a 9 kHz tone folds to 7 kHz at 0 dB, so it is not offered. CPU is the same ~0.35–0.55 ms per second of audio
for MQ and HQ.

Uplink conversion (48k→24k, 48k→16k, 48k→8k, and 48k→44.1k/22.05k) does not use soxr: its block processing held
the 11–43 ms above, which the caller hears on every turn (the uplink measured ~21 ms over its 5 ms budget beyond
the chunk). The 44.1 kHz family goes through ``core.fir.FirRational`` (147/160 and 147/320, polyphase, 0.46 and
0.92 ms of group delay, the same passband and stopband criteria).
``core.fir.FirDecimator`` (Kaiser-windowed sinc, polyphase, only the kept outputs computed) holds just its group
delay, measured the same way (mean over a steady 10 ms-chunk stream): 0.83 ms (48k→24k), 1.25 ms (48k→16k),
2.50 ms (48k→8k). Passband ±0.1 dB (+0.003/-0.07) to 9.65 / 6.43 / 3.22 kHz (≥ 0.8 × the output Nyquist),
≥ 71.6 dB down from the output Nyquist on; 48k→8k is 1.6 dB down at 3.4 kHz, the top of the telephone band,
the price of staying near 2 ms (details in ``core.fir``). Its output is not dithered and chunking does not
change it at all. CPU, 20 ms chunks: ~0.70–0.75 ms per second of audio vs soxr MQ's ~0.19–0.22 (+0.5 ms/s;
10 ms chunks +0.7 ms/s, per-call overhead; ``python -m benchmarks.core_cpu`` for the whole chain). The downlink
keeps soxr: replies arrive in bursts, so its delay is not heard.

int16 in, int16 out, natively: soxr converts internally and saturates (``clipped_samples``). Its int16 output
is TPDF-dithered (libsoxr's default; python-soxr has no switch for it), so digital silence comes out as ±1 LSB
(-90 dBFS) and a chunked run differs from a one-shot run by at most 2 LSB. Both are inaudible and below any
activity threshold; converting through float32 ourselves would avoid them at twice the CPU (0.68 vs 0.34 ms
per second of audio in 10 ms chunks), which is not worth it.
"""

from __future__ import annotations

from math import gcd
from typing import Literal

import numpy as np
import numpy.typing as npt
import soxr

from core.errors import ConfigError
from core.fir import DECIMATOR_TAPS, RATIONAL_TAPS_PER_PHASE, FirDecimator, FirRational
from core.formats import SUPPORTED_RATES

__all__ = ["DEFAULT_QUALITY", "Quality", "Resampler"]

Int16Array = npt.NDArray[np.int16]
Quality = Literal["LQ", "MQ", "HQ", "VHQ"]
DEFAULT_QUALITY: Quality = "MQ"
_QUALITIES: tuple[Quality, ...] = ("LQ", "MQ", "HQ", "VHQ")
_EMPTY = np.zeros(0, dtype=np.int16)


class Resampler:
    """Mono int16 stream from ``in_rate`` to ``out_rate``; equal rates pass samples through untouched."""

    __slots__ = (
        "_clips_before_restart",
        "_in_rate",
        "_out_rate",
        "_quality",
        "_stream",
        "flushes",
        "resets",
        "samples_in",
        "samples_out",
    )

    def __init__(self, in_rate: int, out_rate: int, *, quality: Quality = DEFAULT_QUALITY) -> None:
        for rate in (in_rate, out_rate):
            if rate not in SUPPORTED_RATES:
                raise ConfigError(f"unsupported sample rate {rate}; expected one of {SUPPORTED_RATES}")
        if quality not in _QUALITIES:
            raise ConfigError(f"unsupported resampler quality {quality!r}; expected one of {_QUALITIES}")
        self._in_rate = in_rate
        self._out_rate = out_rate
        self._quality = quality
        # Identity needs no filter: no latency, no dither, no CPU. Integer down-ratios get our FIR at any
        # quality: it holds 1–2.5 ms where soxr holds 21–43 ms (see the module docstring).
        self._stream: soxr.ResampleStream | FirDecimator | FirRational | None
        g = gcd(in_rate, out_rate)
        if in_rate == out_rate:
            self._stream = None
        elif in_rate % out_rate == 0 and in_rate // out_rate in DECIMATOR_TAPS:
            self._stream = FirDecimator(in_rate // out_rate)
        elif (out_rate // g, in_rate // g) in RATIONAL_TAPS_PER_PHASE:
            self._stream = FirRational(out_rate // g, in_rate // g)
        else:
            self._stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype="int16", quality=quality)
        self.samples_in = 0
        self.samples_out = 0
        self.flushes = 0
        self.resets = 0
        self._clips_before_restart = 0

    @property
    def in_rate(self) -> int:
        return self._in_rate

    @property
    def out_rate(self) -> int:
        return self._out_rate

    @property
    def quality(self) -> Quality:
        return self._quality

    @property
    def is_identity(self) -> bool:
        return self._stream is None

    @property
    def delay_samples(self) -> float:
        """Output samples owed for input already pushed (the engine's ``delay()``): the current latency."""
        return 0.0 if self._stream is None else float(self._stream.delay())

    @property
    def delay_ms(self) -> float:
        return self.delay_samples * 1000.0 / self._out_rate

    @property
    def clipped_samples(self) -> int:
        """Output samples saturated to the int16 range (filter overshoot on near-full-scale input)."""
        live = 0 if self._stream is None else int(self._stream.num_clips())
        return self._clips_before_restart + live

    def push(self, samples: Int16Array) -> Int16Array:
        """Convert a chunk; returns what is ready (possibly empty: soxr works in blocks and keeps a tail).

        For equal rates the input array itself is returned, not a copy.
        """
        if samples.dtype != np.int16:
            raise TypeError(f"Resampler needs int16 samples, got {samples.dtype}")
        self.samples_in += samples.shape[0]
        if self._stream is None:
            self.samples_out += samples.shape[0]
            return samples
        if samples.shape[0] == 0:
            return _EMPTY
        out = self._process(np.ascontiguousarray(samples), last=False)
        self.samples_out += out.shape[0]
        return out

    def flush(self) -> Int16Array:
        """End of utterance: the filter tail still owed, after which the stream starts afresh."""
        self.flushes += 1
        if self._stream is None:
            return _EMPTY
        out = self._process(_EMPTY, last=True)
        self.samples_out += out.shape[0]
        # soxr refuses input after ``last`` (the FIR mirrors it); clearing makes the stream reusable.
        self._restart()
        return out

    def reset(self) -> None:
        """Interruption: forget history and pending output without emitting it."""
        self.resets += 1
        if self._stream is not None:
            self._restart()

    def _process(self, samples: Int16Array, *, last: bool) -> Int16Array:
        assert self._stream is not None
        out: Int16Array = self._stream.resample_chunk(samples, last=last)
        return out

    def _restart(self) -> None:
        assert self._stream is not None
        # The engines' clip counters restart with ``clear()``; keep the running total for metrics.
        self._clips_before_restart += int(self._stream.num_clips())
        self._stream.clear()
