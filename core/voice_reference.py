"""What the bridge played and when, for the onset detectors' echo test (:mod:`core.onset`), sans-I/O.

The agent voice's energy per 5 ms block on the bridge's clock, shared by every caller's detector of a session.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from core.clock import MS
from core.onset import OnsetConfig, block_sum_squares, dbfs_power

__all__ = ["VoiceReference"]

Int16Array = npt.NDArray[np.int16]
FloatArray = npt.NDArray[np.float64]


class VoiceReference:
    """What the bridge played and when: the agent voice's energy per block on the bridge's clock.

    One instance per session, shared by every caller's detector. Blocks are on an absolute grid
    (``time // block_ns``), so audio written twice for the same time (a re-sent queue) overwrites, never adds.
    Holds ``history_ms`` (default 400 ms, enough for the longest echo delay plus a window); older blocks read
    as silence. The stored value is a peak-hold with decay, an upper bound for a reverberant echo.
    """

    def __init__(self, config: OnsetConfig | None = None, *, history_ms: int = 400) -> None:
        self.config = config = config or OnsetConfig()
        config.validate()
        self._block_ns = config.block_ns
        self._bs = config.block_samples
        self._ones = np.ones(self._bs, dtype=np.float64)
        self._cap = max(8, history_ms // config.block_ms)
        # A ring of ``cap`` slots kept twice over (slot and slot + cap hold the same block): any window of the
        # history is then one slice, never a gather around the end.
        self._energy = np.zeros(2 * self._cap, dtype=np.float64)
        self._ids = np.full(2 * self._cap, -1, dtype=np.int64)
        self._offsets = np.arange(self._cap, dtype=np.int64)
        self._decay = 10.0 ** (-config.echo_tail_db_per_10ms * config.block_ms / 10.0 / 10.0)
        self.last_voice_block = -1  # the last block with audible voice (above -60 dBFS)
        self._audible = dbfs_power(-60.0)
        # No block after this one holds an audible (held) energy: what lets audible_at skip the window read
        # while the agent is silent and a caller talks (a bound: overwriting a block lower leaves it as it is).
        self._last_audible_held = -1

    def add(self, samples: Int16Array, start_ns: int) -> None:
        """``samples`` (48 kHz) are heard from ``start_ns`` on."""
        bs = self._bs
        n = samples.shape[0] // bs
        if n == 0:
            return
        first = (start_ns + self._block_ns // 2) // self._block_ns
        prev_id = first - 1
        slot = prev_id % self._cap
        held = float(self._energy[slot]) if self._ids[slot] == prev_id else 0.0
        for k, total in enumerate(block_sum_squares(samples, n, self._ones)):
            block = first + k
            p = total / bs
            held = max(p, held * self._decay)
            slot = block % self._cap
            self._energy[slot] = self._energy[slot + self._cap] = held
            self._ids[slot] = self._ids[slot + self._cap] = block
            if p >= self._audible:
                self.last_voice_block = block
            if held >= self._audible:
                self._last_audible_held = max(self._last_audible_held, block)

    def window(self, first_block: int, n: int) -> FloatArray:
        """Energies of blocks ``first_block .. first_block + n - 1`` (0 where nothing was played)."""
        if n <= self._cap:
            s0 = first_block % self._cap
            blocks = first_block + self._offsets[:n]
            return np.where(self._ids[s0:s0 + n] == blocks, self._energy[s0:s0 + n], 0.0)
        blocks = np.arange(first_block, first_block + n)  # longer than the history: its oldest read as silence
        slots = blocks % self._cap
        return np.where(self._ids[slots] == blocks, self._energy[slots], 0.0)

    def audible_at(self, t_ns: int, within_ms: int = 60, ahead_ms: int = 30) -> bool:
        """Was the voice audible within ``within_ms`` before ``t_ns`` or ``ahead_ms`` after it (a voice just
        starting is already queued)? False for times older than the history."""
        first = (t_ns - within_ms * MS) // self._block_ns
        if self.last_voice_block < 0 or self._last_audible_held < first:
            return False
        last = (t_ns + ahead_ms * MS) // self._block_ns
        return bool((self.window(first, last - first + 1) >= self._audible).any())

    def clear_after(self, now_ns: int, *, silent: bool = False) -> None:
        """The audio queued after ``now_ns`` was taken back (the queue was cleared): it will not be heard.
        ``silent``: and nothing replaces it (an interruption), so there is no voice left to duck."""
        first = (now_ns + self._block_ns - 1) // self._block_ns
        blocks = self._ids >= first
        self._energy[blocks] = 0.0
        self._ids[blocks] = -1
        self.last_voice_block = -1 if silent else min(self.last_voice_block, first - 1)
        self._last_audible_held = min(self._last_audible_held, first - 1)
