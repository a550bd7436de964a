"""Energy voice-activity detection for the emulator's turn-taking; pure, driven by received samples.

Time is measured in samples of received audio, not wall-clock time, so a client sending faster than real
time ends its turn exactly where its audio says it did. (The conversation adds a wall-clock fallback for a
client that simply stops sending.) A frame is voiced when its RMS level reaches ``threshold_dbfs``; speech
starts after ``min_speech_ms`` of consecutive voiced frames (at the first of them) and ends after
``hangover_ms`` of unvoiced frames (at the end of the last voiced one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

__all__ = ["EnergyVad", "VadEdge", "level_dbfs"]


@dataclass(frozen=True, slots=True)
class VadEdge:
    kind: Literal["start", "end"]
    sample: int  # position in the stream of received samples


def level_dbfs(samples: npt.NDArray[np.int16]) -> float:
    if samples.size == 0:
        return float("-inf")
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    return 20.0 * math.log10(max(rms, 1e-9) / 32768.0)


class EnergyVad:
    def __init__(self, rate: int, *, threshold_dbfs: float = -45.0, frame_ms: float = 10.0,
                 min_speech_ms: float = 60.0, hangover_ms: float = 400.0) -> None:
        self.frame = max(1, round(rate * frame_ms / 1000))
        self.threshold = threshold_dbfs
        self.min_frames = max(1, round(min_speech_ms / frame_ms))
        self.hangover_frames = max(1, round(hangover_ms / frame_ms))
        self.in_speech = False
        self.position = 0  # samples consumed into whole frames
        self._pending = np.zeros(0, dtype=np.int16)
        self._voiced_run = 0
        self._run_start = 0
        self._silent_run = 0
        self._last_voiced_end = 0

    def push(self, samples: npt.NDArray[np.int16]) -> list[VadEdge]:
        data = np.concatenate((self._pending, samples)) if self._pending.size else samples
        whole = data.size - data.size % self.frame
        self._pending = data[whole:].copy()
        edges: list[VadEdge] = []
        for offset in range(0, whole, self.frame):
            frame = data[offset:offset + self.frame]
            start, end = self.position, self.position + self.frame
            self.position = end
            voiced = level_dbfs(frame) >= self.threshold
            if not self.in_speech:
                if voiced:
                    if self._voiced_run == 0:
                        self._run_start = start
                    self._voiced_run += 1
                    if self._voiced_run >= self.min_frames:
                        self.in_speech = True
                        self._silent_run = 0
                        self._last_voiced_end = end
                        edges.append(VadEdge("start", self._run_start))
                else:
                    self._voiced_run = 0
            elif voiced:
                self._silent_run = 0
                self._last_voiced_end = end
            else:
                self._silent_run += 1
                if self._silent_run >= self.hangover_frames:
                    edges.append(self._end())
        return edges

    def force_end(self) -> VadEdge | None:
        """End the current speech now (the client stopped sending audio); None when not in speech."""
        return self._end() if self.in_speech else None

    def _end(self) -> VadEdge:
        self.in_speech = False
        self._voiced_run = 0
        self._silent_run = 0
        return VadEdge("end", self._last_voiced_end)
