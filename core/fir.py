"""Streaming polyphase FIR down-converters for the uplink, int16 in and out, a few ms of latency.

:class:`FirDecimator` serves the integer ratios (48k→24k/16k/8k), :class:`FirRational` the two 44.1 kHz
family rates (48k→44.1k is 147/160, 48k→22.05k is 147/320).

Why not soxr for these: soxr works in blocks and holds 21 ms (48k→16k) to 43 ms (48k→8k) of audio while
streaming 10–20 ms chunks (see ``core.resample``); on the uplink that adds straight to the caller's latency.
A linear-phase FIR only holds its group delay, ``(taps - 1) / 2`` input samples.

Filter: Kaiser-windowed sinc, β = 7 (≈ 72 dB sidelobes), cutoff 0.89 × the output Nyquist, the fewest odd taps
that keep the passband within ±0.1 dB to 0.8 × the output Nyquist and every frequency from the output Nyquist
up ≥ 70 dB down (measured with a dense DFT of the taps; ``benchmarks.core_cpu`` re-measures it):

    =========  ====  ========  ============  ==============  ============  =========================
    ratio      taps  delay     ±0.1 dB to    ripple there    stopband      at 3.4 kHz
    =========  ====  ========  ============  ==============  ============  =========================
    48k→24k     83   0.85 ms   9.65 kHz      +0.003/-0.07    71.6 dB       flat
    48k→16k    123   1.27 ms   6.43 kHz      +0.003/-0.07    72.1 dB       flat
    48k→8k     245   2.54 ms   3.22 kHz      +0.003/-0.07    72.2 dB       -1.6 dB
    =========  ====  ========  ============  ==============  ============  =========================

The transition band (0.8 → 1.0 × Nyquist) sets the length: a Kaiser window needs ≈ (A − 8) / (2.285 Δω) taps,
and the delay in ms depends only on its width in Hz, so 48k→8k (800 Hz wide) costs 2.5 ms whatever the
structure (a ÷2·÷3 cascade only saves CPU). Holding 48k→8k to 2.0 ms (193 taps) would leave it flat only to
3.0 kHz and 4.8 dB down at 3.4 kHz, the top of the telephone band; 0.5 ms more is the better trade. An
equiripple (Parks–McClellan) design would meet all three in ~180 taps but needs scipy, which we do not carry.

Streaming: the filter is symmetric, so output ``k`` is ``taps · x[k·R − D … k·R + D]`` with ``D`` the group
delay: the output is time-aligned with the input (as soxr's is) and ``ceil(n / R)`` samples long. The state is
the input not yet consumed by a full window, which also carries the phase (where the next window starts), so
any chunking gives exactly the one-shot result: each output is the same dot product over the same samples.

Rational ratios (``FirRational``): upsample by ``L``, low-pass, keep every ``M``-th sample, done as a polyphase
filter bank so only kept outputs are computed: output ``k`` sits at input time ``k·M/L``, and its window is the
``T`` inputs ending at ``⌊(k·M + C)/L⌋`` weighted by phase ``(k·M + C) mod L`` of the prototype (``C`` its
centre), so the output is time-aligned like the decimator's. The prototype is the same Kaiser design at the
upsampled rate with ``L·T − 1`` taps; ``T`` taps per phase chosen the same way (dense DFT, same criteria):

    ===========  ===========  ========  ============  ==============  ========
    ratio        taps/phase   delay     ±0.1 dB to    ripple there    stopband
    ===========  ===========  ========  ============  ==============  ========
    48k→44.1k        44       0.46 ms   17.6 kHz      +0.003/-0.08    70.7 dB
    48k→22.05k       88       0.92 ms   8.8 kHz       +0.003/-0.08    70.7 dB
    ===========  ===========  ========  ============  ==============  ========

soxr MQ holds 11 ms on 48k→44.1k while streaming 10 ms chunks, and LQ (0.5 ms) is not flat; hence our own.
The windows are gathered as rows of a strided view and the phase filters sliced from a table tiled over a
whole number of periods, so a chunk costs two copies and one row-wise product, no per-sample index arithmetic.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from core.errors import ConfigError

__all__ = ["DECIMATOR_TAPS", "RATIONAL_TAPS_PER_PHASE", "FirDecimator", "FirRational", "kaiser_lowpass"]

Int16Array = npt.NDArray[np.int16]
Float64Array = npt.NDArray[np.float64]
Float32Array = npt.NDArray[np.float32]

# Down-ratio → taps, from the table in the module docstring (all odd: the group delay is a whole sample).
DECIMATOR_TAPS: dict[int, int] = {2: 83, 3: 123, 6: 245}
# (up, down) → taps per polyphase branch, from the table above.
RATIONAL_TAPS_PER_PHASE: dict[tuple[int, int], int] = {(147, 160): 44, (147, 320): 88}
_BETA = 7.0
# Cutoff as a fraction of the output Nyquist: the middle of 0.8 (passband edge) and 1.0 (stopband edge)
# leaves the -0.1 dB point short of 0.8; 0.89 puts it just past (measured, see the table).
_CUTOFF = 0.89
_EMPTY = np.zeros(0, dtype=np.int16)


def kaiser_lowpass(taps: int, cutoff: float, beta: float = _BETA) -> Float64Array:
    """Linear-phase low-pass, ``cutoff`` as a fraction of the input sample rate, unity gain at DC."""
    n = np.arange(taps) - (taps - 1) / 2
    h: Float64Array = 2 * cutoff * np.sinc(2 * cutoff * n) * np.kaiser(taps, beta)
    unity: Float64Array = h / h.sum()
    return unity


class FirDecimator:
    """Keep every ``factor``-th sample of a low-passed int16 stream.

    Its methods mirror ``soxr.ResampleStream`` (``resample_chunk``, ``delay``, ``num_clips``, ``clear``) so
    ``core.resample.Resampler`` drives either engine the same way.
    """

    __slots__ = ("_clips", "_consumed_out", "_held", "_pushed_in", "factor", "group_delay", "taps")

    def __init__(self, factor: int, taps: int | None = None) -> None:
        if factor < 2:
            raise ConfigError(f"decimation factor must be at least 2, got {factor}")
        n_taps = DECIMATOR_TAPS[factor] if taps is None else taps
        if n_taps % 2 == 0:
            raise ConfigError(f"taps must be odd (a whole-sample delay), got {n_taps}")
        self.factor = factor
        self.taps: Float32Array = kaiser_lowpass(n_taps, _CUTOFF * 0.5 / factor).astype(np.float32)
        self.group_delay = (n_taps - 1) // 2  # input samples
        self._held: Float32Array = np.zeros(0, dtype=np.float32)
        self._pushed_in = 0
        self._consumed_out = 0
        self._clips = 0
        self.clear()

    def delay(self) -> float:
        """Output samples owed for the input pushed since the last ``clear``."""
        return self._pushed_in / self.factor - self._consumed_out

    def num_clips(self) -> int:
        """Output samples saturated to the int16 range since the last ``clear``."""
        return self._clips

    def clear(self) -> None:
        # Zeros before the first sample: output 0 is centred on input 0, as in a one-shot convolution.
        self._held = np.zeros(self.group_delay, dtype=np.float32)
        self._pushed_in = 0
        self._consumed_out = 0
        self._clips = 0

    def resample_chunk(self, samples: Int16Array, last: bool = False) -> Int16Array:
        """Every output whose window is complete; with ``last``, also the tail (zeros after the end)."""
        self._pushed_in += samples.shape[0]
        # float32: int16 converts exactly, and 24 bits of mantissa leave the rounding error of a 245-tap dot
        # product far below ½ LSB; half the memory traffic of float64 (8.0 → 5.5 µs per 10 ms chunk).
        buf: Float32Array = np.concatenate((self._held, samples), dtype=np.float32)
        owed = -(-self._pushed_in // self.factor) - self._consumed_out  # ceil: outputs at 0, R, 2R, … < n
        if last:
            buf = np.concatenate((buf, np.zeros(self.group_delay, dtype=np.float32)))
        n_taps = self.taps.shape[0]
        n_out = min(owed, (buf.shape[0] - n_taps) // self.factor + 1) if buf.shape[0] >= n_taps else 0
        if n_out <= 0:
            self._held = buf
            return _EMPTY
        # The rows of sliding_window_view(buf, taps)[::factor], built directly: sliding_window_view's Python
        # overhead measured 7.7 µs a call, as much as the arithmetic of a 20 ms chunk (0.55 µs this way).
        itemsize = buf.itemsize
        windows = np.ndarray((n_out, n_taps), np.float32, buffer=buf, strides=(self.factor * itemsize, itemsize))
        # Symmetric taps: correlation equals convolution, no reversal needed. einsum, because matmul on
        # overlapping rows falls back to a slow loop (16.8 µs vs 8.3 µs for 48k→16k, 20 ms chunks) and dot
        # copies them first (10 µs). Each output is the same dot product whatever the chunking, so chunked
        # output is bit-identical to one-shot.
        y = np.einsum("ij,j->i", windows, self.taps)
        np.rint(y, out=y)
        self._held = buf[n_out * self.factor :]
        self._consumed_out += n_out
        # A full-scale square's overshoot (Gibbs) exceeds int16; saturate and count as soxr does. One
        # reduction (|y| max) is 0.7 µs cheaper per chunk than max and min.
        if np.abs(y).max() > 32767.0:
            self._clips += int(np.count_nonzero((y > 32767.0) | (y < -32768.0)))
            np.clip(y, -32768.0, 32767.0, out=y)
        out: Int16Array = y.astype(np.int16)
        return out


class FirRational:
    """Resample by ``up / down`` (``down > up``, coprime) through a polyphase Kaiser FIR.

    Same surface as :class:`FirDecimator` (and ``soxr.ResampleStream``): ``resample_chunk``, ``delay``,
    ``num_clips``, ``clear``.
    """

    __slots__ = ("_base", "_buf", "_clips", "_consumed_out", "_ends", "_pushed_in", "_table", "centre", "down",
                 "group_delay", "taps_per_phase", "up")

    _TABLE_PERIODS = 8  # phase rows tiled over this many periods: a slice serves up to 7 periods per step

    def __init__(self, up: int, down: int, taps_per_phase: int | None = None) -> None:
        if not 1 <= up < down:
            raise ConfigError(f"FirRational converts down only, got {up}/{down}")
        t = RATIONAL_TAPS_PER_PHASE[(up, down)] if taps_per_phase is None else taps_per_phase
        self.up, self.down, self.taps_per_phase = up, down, t
        n_proto = up * t - 1 if (up * t) % 2 == 0 else up * t  # odd: the centre is a whole upsampled sample
        proto = np.zeros(up * t)
        proto[:n_proto] = up * kaiser_lowpass(n_proto, _CUTOFF * 0.5 / down)  # gain L restores the level
        self.centre = (n_proto - 1) // 2
        # Phase p uses proto[p], proto[p + L], … against x[n], x[n-1], …; stored reversed so a window read
        # forwards (oldest first) is a plain row-wise product.
        phases = proto.reshape(t, up).T[:, ::-1]  # (L, T)
        ks = np.arange(up)
        period_phases = (ks * down + self.centre) % up
        one_period = np.ascontiguousarray(phases[period_phases])  # row r: the filter of output k ≡ r (mod L)
        self._table: Float32Array = np.tile(one_period, (self._TABLE_PERIODS, 1)).astype(np.float32)
        # Window ends relative to the period's start: output q·L + r ends at q·M + _ends[r].
        self._ends = (np.arange(up * self._TABLE_PERIODS) * down + self.centre) // up
        self.group_delay = self.centre / up  # input samples
        self._buf: Float32Array = np.zeros(0, dtype=np.float32)
        self._pushed_in = 0
        self._consumed_out = 0
        self._clips = 0
        self.clear()

    def delay(self) -> float:
        """Output samples owed for the input pushed since the last ``clear``."""
        return self._pushed_in * self.up / self.down - self._consumed_out

    def num_clips(self) -> int:
        """Output samples saturated to the int16 range since the last ``clear``."""
        return self._clips

    def clear(self) -> None:
        # Zeros before the first sample, as in a one-shot convolution; buf[0] is input sample ``_base``.
        self._buf = np.zeros(self.taps_per_phase, dtype=np.float32)
        self._base = -self.taps_per_phase
        self._pushed_in = 0
        self._consumed_out = 0
        self._clips = 0

    def resample_chunk(self, samples: Int16Array, last: bool = False) -> Int16Array:
        """Every output whose window is complete; with ``last``, also the tail (zeros after the end)."""
        up, down, t, centre = self.up, self.down, self.taps_per_phase, self.centre
        self._pushed_in += samples.shape[0]
        buf: Float32Array = np.concatenate((self._buf, samples), dtype=np.float32)
        if last:
            buf = np.concatenate((buf, np.zeros(centre // up + 1, dtype=np.float32)))
        base, k0 = self._base, self._consumed_out
        owed = -(-self._pushed_in * up // down) - k0  # ceil: outputs at k·M/L < n
        newest = base + buf.shape[0] - 1
        # The last k whose window ends (at ⌊(kM + C)/L⌋) on an input in hand.
        k_max = ((newest + 1) * up - 1 - centre) // down
        n_out = min(owed, k_max + 1 - k0)
        if n_out <= 0:
            self._buf = buf
            return _EMPTY
        itemsize = buf.itemsize
        windows = np.ndarray((buf.shape[0] - t + 1, t), np.float32, buffer=buf, strides=(itemsize, itemsize))
        step = up * (self._TABLE_PERIODS - 1)
        parts = []
        for i in range(0, n_out, step):
            q, r0 = divmod(k0 + i, up)
            n = min(step, n_out - i)
            starts = self._ends[r0 : r0 + n] + (q * down - (t - 1) - base)
            parts.append(np.einsum("ij,ij->i", windows[starts], self._table[r0 : r0 + n]))
        y = np.rint(parts[0] if len(parts) == 1 else np.concatenate(parts))
        self._consumed_out = k0 + n_out
        keep = min(((k0 + n_out) * down + centre) // up - (t - 1) - base, buf.shape[0])
        self._buf = buf[keep:]
        self._base = base + keep
        if y.max() > 32767.0 or y.min() < -32768.0:
            self._clips += int(np.count_nonzero((y > 32767.0) | (y < -32768.0)))
            np.clip(y, -32768.0, 32767.0, out=y)
        out: Int16Array = y.astype(np.int16)
        return out
