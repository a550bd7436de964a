"""Has a caller started to speak over the agent? A per-caller speech-onset detector, sans-I/O.

The detector answers one question fast and cheaply: did *this caller* start talking, as opposed to steady
noise, a click, or the agent's own voice coming back through the caller's speakers? It works on 5 ms blocks of
the caller's audio at the rate it is read (``rate``: 48 kHz, or the engine's 8/16/24 kHz when the SDK resamples
the caller for us; energies are mean powers, so one voice reference at 48 kHz serves every rate); every call
takes ``now_ns`` (when the frame reached the bridge), and nothing reads a clock. Rules, with the measured
reasons in ``benchmarks/ducking.py``:

- **Adaptive noise floor.** A block is loud when its energy is ``snr_db`` (10 dB) above the caller's floor and
  above ``min_level_dbfs``. The floor falls to a quieter block at once (a tenth of the way per block, so a
  single dropout does not pull it down) and rises by at most ``floor_rise_db_s`` (3 dB/s): steady noise is
  the floor within a second of the first frame, and two seconds of speech lift it by only 6 dB.
- **Minimum duration.** ``min_speech_ms`` (30 ms) of loud blocks in a row (one quiet block forgiven). Clicks
  and bumps shorter than that never qualify.
- **Voicing.** A loud run qualifies at ``min_speech_ms`` only if the last ``voicing_window_ms`` are periodic
  at a speech pitch (70–400 Hz): the normalised autocorrelation of the first-differenced, 8 kHz-decimated
  signal peaks above ``voicing`` (0.5). Clicks, bumps and noise bursts are aperiodic, whatever their length;
  steady hum is periodic but is the floor. A run that stays loud but aperiodic (a word starting with "s" or
  "h") qualifies after ``unvoiced_ms`` (120 ms), longer than any click.
- **Echo rejection.** The bridge knows what it played and when (:class:`core.voice_reference.VoiceReference`).
  Without echo cancellation a caller's microphone hears that voice again, delayed by the media path and the room (50–
  200 ms) and attenuated (the echo loss, 20 dB or more for a phone held to the ear or a laptop's speakers).
  A block's energy is compared with the played voice's energy at each delay in ``echo_delay_ms``, less
  ``echo_loss_db - echo_margin_db`` (20 − 6 dB); the reference envelope is held with a decay of
  ``echo_tail_db_per_10ms`` so a room's reverberation after a syllable stays "explained". The delay that
  explains the last ``min_speech_ms`` best is taken, and only the energy *above* that explanation counts as
  the caller's. An echo 20 dB or more down is explained whole; a caller talking over the agent is not.
  It is an energy bound, not an echo canceller: a caller quieter than the echo bound is missed while the
  agent is loud, and heard in its pauses.

Cost: the numpy work is done once per frame (the block energies, one read of the played voice's envelope for
all the frame's blocks); the 5 ms blocks then run on Python floats. A block's echo test first bounds its own
energy between what the loudest and the quietest played level would leave, which settles quiet blocks and a
caller far above the echo; only the rest (a quarter to a half of the blocks while the agent talks) need the
(delays x window) comparison of 41 x 6 numbers. The pitch search (~33 µs) runs only while a run is loud and
has not fired. Per 10 ms frame, p50 on a 2-vCPU Xeon at load < 1: 7.8 µs with the agent silent, 17 µs while
it plays and only its echo comes back, 16 µs with the caller talking over it (it was 15, 41 and 40 µs with
the per-block numpy work). ``benchmarks/ducking.py`` measures the whole ducker per 20 ms caller frame.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from core.clock import MS
from core.errors import ConfigError

if TYPE_CHECKING:
    from core.voice_reference import VoiceReference

__all__ = ["OnsetConfig", "OnsetDetector", "block_sum_squares", "dbfs_power", "power_dbfs"]

Int16Array = npt.NDArray[np.int16]
FloatArray = npt.NDArray[np.float64]
_FULL_SCALE_SQUARED = 32768.0 * 32768.0
_PITCH_RATE = 8000  # the pitch search runs on the signal decimated to 8 kHz (by 6 at 48 kHz, 2 at 16 kHz)
_PITCH_HZ = (70.0, 400.0)
_NO_SAMPLES: Int16Array = np.zeros(0, dtype=np.int16)


def dbfs_power(dbfs: float) -> float:
    """The mean-square power of int16 samples at ``dbfs``."""
    return float(_FULL_SCALE_SQUARED * 10.0 ** (dbfs / 10.0))


def block_sum_squares(samples: Int16Array, blocks: int, ones: FloatArray) -> list[float]:
    """The sums of squares of the first ``blocks`` blocks of ``len(ones)`` samples (here and in
    :mod:`core.voice_reference`), as a matrix product with ones: exact (whole numbers below 2**53 in float64,
    in any order) and 1.4 µs cheaper per 10 ms than einsum."""
    x = samples[: blocks * ones.shape[0]].astype(np.float64)
    sums: list[float] = (np.square(x, out=x).reshape(blocks, -1) @ ones).tolist()
    return sums


def power_dbfs(power: float) -> float:
    """Mean-square power of int16 samples in dBFS (-100 for silence)."""
    return 10.0 * math.log10(power / _FULL_SCALE_SQUARED) if power > 0.0 else -100.0


@dataclass(frozen=True, slots=True)
class OnsetConfig:
    rate: int = 48_000
    block_ms: int = 5
    min_speech_ms: int = 30
    unvoiced_ms: int = 120
    snr_db: float = 10.0
    min_level_dbfs: float = -50.0
    floor_rise_db_s: float = 3.0
    voicing: float = 0.5
    voicing_window_ms: int = 40
    echo_loss_db: float = 20.0
    echo_margin_db: float = 6.0
    echo_delay_ms: tuple[int, int] = (40, 240)
    echo_tail_db_per_10ms: float = 3.0
    echo_learn_db_s: float = 10.0  # how fast the learnt echo level falls when the echo is quieter
    echo_floor_db: float = 45.0  # the learnt echo bound never goes below -45 dB
    speech_hangover_ms: int = 100  # ``speaking`` stays true this long after the last loud block
    max_lag_ms: int = 500  # frames arriving in a burst are dated back by up to this much

    def validate(self) -> None:
        if self.rate % 1000 or self.rate * self.block_ms % 1000 or self.block_ms <= 0:
            raise ConfigError(f"a {self.block_ms} ms block must be a whole number of samples at {self.rate} Hz")
        if self.rate % _PITCH_RATE:
            raise ConfigError(f"onset detection needs a multiple of {_PITCH_RATE} Hz (8, 16, 24 or 48 kHz), "
                              f"got {self.rate}")
        if self.min_speech_ms < self.block_ms or self.unvoiced_ms < self.min_speech_ms:
            raise ConfigError("need block_ms <= min_speech_ms <= unvoiced_ms")
        if self.voicing_window_ms < self.block_ms:
            raise ConfigError("the voicing window must hold at least one block")
        lo, hi = self.echo_delay_ms
        if not 0 <= lo <= hi:
            raise ConfigError(f"bad echo delay range {self.echo_delay_ms}")

    @property
    def block_ns(self) -> int:
        return self.block_ms * MS

    @property
    def block_samples(self) -> int:
        return self.rate * self.block_ms // 1000


class OnsetDetector:
    """One caller's onset detector: :meth:`push` each frame as it arrives; True when speech started."""

    def __init__(self, reference: VoiceReference | None = None, config: OnsetConfig | None = None) -> None:
        self.config = config = config or (reference.config if reference is not None else OnsetConfig())
        config.validate()
        self.reference = reference
        self._bs = config.block_samples
        self._ones = np.ones(self._bs, dtype=np.float64)
        self._block_ns = config.block_ns
        self._n = n = max(1, config.min_speech_ms // config.block_ms)
        self._unvoiced_blocks = max(self._n, config.unvoiced_ms // config.block_ms)
        self._snr = 10.0 ** (config.snr_db / 10.0)
        self._min_power = dbfs_power(config.min_level_dbfs)
        self._rise = 10.0 ** (config.floor_rise_db_s * config.block_ms / 1000.0 / 10.0)
        # The echo bound starts at the worst case allowed (``echo_loss_db`` less the margin) and learns down.
        self._echo_max = 10.0 ** (-(config.echo_loss_db - config.echo_margin_db) / 10.0)
        self._echo_min = 10.0 ** (-config.echo_floor_db / 10.0)
        self._margin = 10.0 ** (config.echo_margin_db / 10.0)
        self._echo_gain = self._echo_max
        self._erl = self._echo_max / self._margin
        self._learn: deque[float] = deque()
        self._learn_power = dbfs_power(-40.0)  # learn only while the voice is clearly playing
        self._learn_delay = max(1, config.unvoiced_ms // config.block_ms)
        self._erl_decay = 10.0 ** (-config.echo_learn_db_s * config.block_ms / 1000.0 / 10.0)
        lo, hi = config.echo_delay_ms
        self._min_delay, self._max_delay = lo // config.block_ms, hi // config.block_ms
        # One block's echo test reads ``span`` reference blocks: from ``max_delay`` before its window's first
        # block to ``min_delay`` before its last. ``scaled`` holds them times the echo gain, and ``bound`` is a
        # fixed view of it: bound[d, j] = scaled[max_delay - delay_d + j], the bound on the echo in window block
        # j if the echo path delay were the d-th, shortest first (argmin's tie-break: the shortest delay).
        self._span = n + self._max_delay - self._min_delay
        self._scaled = np.zeros(self._span, dtype=np.float64)
        self._bound = sliding_window_view(self._scaled, n)[::-1]
        self._residual = np.zeros(self._bound.shape, dtype=np.float64)  # in place: no per-block temporaries
        self._sums = np.zeros(self._bound.shape[0], dtype=np.float64)
        # Rolling state: the last n block energies (then this frame's, during push), the samples for voicing.
        self._powers = [0.0] * n
        self._decimate = dec = config.rate // _PITCH_RATE
        self._decimate_ones = np.ones(dec, dtype=np.float64)
        self._voicing_samples = config.voicing_window_ms * config.rate // 1000 // dec * dec
        self._samples = np.zeros(self._voicing_samples, dtype=np.int16)
        dec_rate = config.rate / dec
        self._lags = (int(dec_rate / _PITCH_HZ[1]), math.ceil(dec_rate / _PITCH_HZ[0]))
        self._lag_range = np.arange(1, self._lags[1] + 2)
        # This frame's echo test, prepared once for its blocks (see _prepare_echo).
        self._echo_blocks = 0
        self._env = np.zeros(0, dtype=np.float64)
        self._env_list: list[float] = []
        self._pending = _NO_SAMPLES
        self._floor: float | None = None
        self._stream_ns: int | None = None  # the caller's timeline: when its last sample would have arrived
        self._max_lag_ns = config.max_lag_ms * MS
        self._hangover_ns = config.speech_hangover_ms * MS
        self._prev_raw = 0.0
        self._loud_run = 0  # blocks in a row the window was loud (caller's own energy)
        self._quiet_in_run = 0
        self._fired = False  # this run already reported its onset
        self.run_start_ns: int | None = None
        self.last_speech_ns: int | None = None
        self.blocks = 0
        self.onsets = 0
        self.echo_vetoes = 0  # windows loud on the raw signal but explained by the played voice
        self.unvoiced_vetoes = 0  # loud runs that never became periodic before they ended

    @property
    def stream_ns(self) -> int | None:
        """The caller's timeline: when the last sample pushed would have arrived in a steady stream."""
        return self._stream_ns

    @property
    def in_speech(self) -> bool:
        """In a run whose onset fired and has not ended."""
        return self._fired

    @property
    def floor_dbfs(self) -> float:
        return power_dbfs(self._floor) if self._floor is not None else -100.0

    def speaking(self, now_ns: int) -> bool:
        last = self.last_speech_ns
        return last is not None and now_ns - last <= self._hangover_ns

    def push(self, samples: Int16Array, now_ns: int) -> int | None:
        """A frame that reached the bridge at ``now_ns`` (its last sample). Returns the onset time (ns, the
        first loud block of the run) if speech started in it, else None."""
        # The caller's own timeline: frames that arrive in a burst (our loop stalled, the caller's network
        # bunched them) are dated back to when they would have arrived in a steady stream, up to
        # ``max_lag_ms``; a real gap (muted, track restarted) re-anchors at ``now_ns``. So a word that ended
        # before the agent started is not taken for a talk-over just because it was read late, and the echo
        # test lines the caller's blocks up with what was played *then*.
        dur = samples.shape[0] * 1_000_000_000 // self.config.rate
        prev = self._stream_ns
        steady = prev is not None and now_ns - (prev + dur) <= self._max_lag_ns
        stream = min(now_ns, prev + dur) if steady and prev is not None else now_ns
        self._stream_ns = stream
        data = np.concatenate((self._pending, samples)) if self._pending.size else samples
        bs = self._bs
        n = data.shape[0] // bs
        used = n * bs
        self._pending = data[used:].copy() if used < data.shape[0] else _NO_SAMPLES
        if n == 0:
            return None
        # Block k ends this many ns before the frame's last sample (the pending remainder is later still).
        end0 = stream - (data.shape[0] - used + (n - 1) * bs) * 1_000_000_000 // self.config.rate
        # The frame's numpy work is done once for all its blocks; the blocks then run on Python floats.
        # Energy over the last 10 ms, hopped by 5: a 5 ms block of a low voice (100 Hz, one glottal pulse per
        # 10 ms) alternates loud and quiet by 8 dB, which would break every run in two.
        powers, prev_raw = self._powers, self._prev_raw
        for total in block_sum_squares(data, n, self._ones):
            raw = total / bs
            powers.append(0.5 * (raw + prev_raw))
            prev_raw = raw
        self._prev_raw = prev_raw
        # The pitch search's samples: the last voicing window before this frame, then the frame's blocks.
        self._samples = np.concatenate((self._samples[-self._voicing_samples:], data[:used]))
        self._prepare_echo(end0 // self._block_ns - 1, n)
        onset: int | None = None
        for k in range(n):
            hit = self._block(k, end0 + k * self._block_ns)
            if hit is not None and onset is None:
                onset = hit
        del powers[:n]
        return onset

    def _block(self, k: int, end_ns: int) -> int | None:
        """The frame's k-th block, ending at ``end_ns``. Its window of energies is ``_powers[k + 1:k + n + 1]``,
        its own the last of them."""
        self.blocks += 1
        power = self._powers[k + self._n]
        floor = self._floor
        if floor is None:
            floor = self._floor = max(power, 1.0)
        threshold = max(floor * self._snr, self._min_power)
        # The floor: down towards quieter blocks quickly, up slowly (steady noise becomes floor, speech not).
        if power < floor:
            self._floor = max(1.0, floor + 0.1 * (power - floor)) if power > 0.25 * floor else max(1.0, floor * 0.5)
        else:
            self._floor = min(power, floor * self._rise)
        # The echo test runs on quiet blocks too: they are what teaches it how little echo this caller has.
        if self._own_quiet(k, power, threshold):
            if power >= threshold:
                self.echo_vetoes += 1
            self._quiet_block()
            return None
        self.last_speech_ns = end_ns
        self._quiet_in_run = 0
        if self._loud_run == 0:
            self.run_start_ns = end_ns - self._block_ns
        self._loud_run += 1
        if self._fired or self._loud_run < self._n:
            return None
        if self._loud_run >= self._unvoiced_blocks or self._voiced(k):
            self._fired = True
            self._learn.clear()
            self.onsets += 1
            return self.run_start_ns
        return None

    def _quiet_block(self) -> None:
        if self._loud_run and self._quiet_in_run == 0 and not self._fired:
            self._quiet_in_run = 1  # one quiet block inside a run is forgiven (a plosive's closure)
            return
        if self._loud_run and not self._fired and self._loud_run >= self._n:
            self.unvoiced_vetoes += 1
        self._loud_run = 0
        self._quiet_in_run = 0
        self._fired = False

    def _prepare_echo(self, last: int, blocks: int) -> None:
        """Which of this frame's ``blocks`` (the first is ``last`` on the reference grid) the echo test runs
        on, and the reference envelope they read, fetched once for all of them."""
        self._echo_blocks = 0
        ref = self.reference
        if ref is None:
            return
        # A block more than a window and the longest delay after the last audible one has nothing to test
        # against: the first ``count`` blocks of the frame are within reach.
        count = min(blocks, ref.last_voice_block + self._max_delay + self._n - last + 1)
        if count > 0:
            self._env = ref.window(last - self._n + 1 - self._max_delay, count - 1 + self._span)
            self._env_list = self._env.tolist()
            self._echo_blocks = count

    def _own_quiet(self, k: int, power: float, threshold: float) -> bool:
        """Is the frame's k-th block quiet once the played voice is taken out: is its energy not explained by
        the played voice (at the delay that explains the window best) below ``threshold``?"""
        if k >= self._echo_blocks:
            return power < threshold  # nothing played that could echo here
        # The played voice at this block, at each delay (the last column of ``bound``, unscaled).
        column = self._env_list[k + self._n - 1:k + self._span]
        loudest = max(column)
        # The block's own energy is max(power - gain x played, 0) at the best delay: no more than ``power``, no
        # less than with the loudest played and no more than with the quietest. Rounding is monotonic, so the
        # bounds hold for the computed figures too and the answer is the one the best delay would give. They
        # settle most blocks (quiet ones, and a caller far above the echo); the rest need the best delay.
        gain = self._echo_gain
        if power < threshold or power - gain * min(column) < threshold:
            quiet = True
        elif power - gain * loudest >= threshold:
            quiet = False
        else:
            quiet = self._best_residual(k) < threshold
        # Learn how loud this caller's echo really is: the mic's level against the loudest the played voice
        # could make it, in blocks that were not the caller's own speech. A peak-hold that decays, so an
        # echo path that is quieter than the worst case (headphones, a phone at the ear) lowers the bound.
        # A block is committed ``_learn_delay`` blocks later, and only if no onset fired meanwhile: the quiet
        # start of the caller's own words ("h" of "hold") must not teach the bound that speech is echo.
        if quiet and not self._fired and loudest > self._learn_power:
            self._learn.append(power / loudest)
            if len(self._learn) > self._learn_delay:
                self._erl = max(self._learn.popleft(), self._erl * self._erl_decay)
                self._echo_gain = min(self._echo_max, max(self._echo_min, self._erl * self._margin))
        return quiet

    def _best_residual(self, k: int) -> float:
        """The frame's k-th block's energy not explained by the played voice at the delay that explains its
        window best (the least unexplained energy over the window; the shortest delay on a tie)."""
        n = self._n
        np.multiply(self._env[k:k + self._span], self._echo_gain, out=self._scaled)  # updates self._bound too
        residual = self._residual
        np.subtract(self._powers[k + 1:k + 1 + n], self._bound, out=residual)
        np.maximum(residual, 0.0, out=residual)
        best = int(np.add.reduce(residual, axis=1, out=self._sums).argmin())
        own: float = residual.item(best, n - 1)
        return own

    def _voiced(self, k: int) -> bool:
        """Periodic at a speech pitch, over the voicing window ending with the frame's k-th block: the
        normalised autocorrelation of the 8 kHz, first-differenced signal has a real peak (a local maximum,
        with a valley before it) at a lag of 2.5–14 ms. A low rumble or thump is highly correlated at short
        lags too, but falls monotonically there: no valley, no peak."""
        end = (k + 1) * self._bs + self._voicing_samples
        window = self._samples[end - self._voicing_samples:end].astype(np.float64)
        # Decimated by a mean of each ``rate / 8000`` samples (6 at 48 kHz): a matrix product with ones is 3x
        # faster than sum(axis=1), and as exact (sums of int16 are whole numbers in float64, in any order).
        # At 8 kHz it is the signal itself; at 16/24 kHz the SDK's resampler has already band-limited it.
        dec = window.reshape(-1, self._decimate) @ self._decimate_ones / self._decimate
        x = dec[1:] - dec[:-1]  # = np.diff(dec), without its Python wrapper
        lo, hi = self._lags
        m = x.shape[0]
        if m <= hi + 8:
            return False
        full = np.correlate(x, x, mode="full")[m - 1:m + hi + 1]
        cum = np.zeros(m + 1, dtype=np.float64)
        np.cumsum(x * x, out=cum[1:])
        lags = self._lag_range
        head = cum[m - lags]  # energy of x[0 : m - lag]
        tail = cum[m] - cum[lags]  # energy of x[lag : m]
        r = full[1:hi + 2] / (np.sqrt(head * tail) + 1e-9)  # r[k] is lag k + 1
        best = lo - 1 + int(np.argmax(r[lo - 1:hi]))
        peak = float(r[best])
        if peak < self.config.voicing or r[best - 1] > peak or r[best + 1] > peak:
            return False
        return float(r[:best].min()) < peak - 0.3
