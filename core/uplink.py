"""Callers to engine: mix at 48 kHz, resample to the engine's input rate, encode, one chunk at a time.

The chunk length is the uplink's main latency knob. The docs suggest ~250 ms per ``user_audio_chunk`` and the
official web client sends 25 ms; we default to 20 ms: two LiveKit frames, so a chunk is ready the moment a
caller's frame completes it, and the engine's VAD hears the caller 230 ms sooner than with the documented
size. The cost is 50 messages a second per session (about 0.9 kB each at pcm_16000), measured in
``benchmarks``.

A chunk is cut when every *active* caller has a whole chunk waiting, or when one caller is ``slack_chunks``
further ahead (:meth:`Uplink.ready`). So the uplink runs at the pace of the callers' audio, not of a timer
that beats against it, and two callers whose frames arrive a few milliseconds apart are mixed chunk by chunk.
Cutting as soon as *any* caller had a chunk would alternate between them: each arrival would cut a chunk
holding only that caller, the others' share padded with silence — interleaving, not mixing (the end-to-end
test catches it). The slack (2 chunks, 40 ms) lets one caller's frames arrive late by that much, as they do on
a busy machine (measured: up to 9 late frames in 2.5 s with a slack of one chunk), without a hole in their
voice. A caller who sent nothing for ``inactive_ms`` (muted, track gone) is not waited for at all.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from core.clock import Clock
from core.formats import AudioFormat
from core.mixer import MIXER_RATE, Mixer
from core.resample import Resampler
from core.timing import StageTimer

__all__ = ["DEFAULT_CHUNK_MS", "Uplink"]

DEFAULT_CHUNK_MS = 20
Int16Array = npt.NDArray[np.int16]


class Uplink:
    """``write`` callers' 48 kHz frames; take engine-format chunks with :meth:`next_chunk`."""

    def __init__(self, fmt: AudioFormat, clock: Clock, *, chunk_ms: int = DEFAULT_CHUNK_MS,
                 slack_chunks: int = 2, inactive_ms: int = 100,
                 mixer: Mixer | None = None, timer: StageTimer | None = None) -> None:
        if chunk_ms <= 0 or chunk_ms % 10:
            raise ValueError(f"chunk length must be a positive multiple of 10 ms, got {chunk_ms}")
        self.format = fmt
        self.chunk_ms = chunk_ms
        self.mixer = mixer or Mixer()
        self._clock = clock
        self._chunk_in = MIXER_RATE * chunk_ms // 1000
        self._ahead = self._chunk_in * (1 + slack_chunks)
        self._inactive_ns = inactive_ms * 1_000_000
        self._last_write_ns: dict[str, int] = {}
        self._resampler = Resampler(MIXER_RATE, fmt.rate)
        self.timer = timer or StageTimer()
        self.chunks = 0
        self.bytes_out = 0

    def join(self, caller: str) -> None:
        self.mixer.join(caller)

    def leave(self, caller: str) -> None:
        self.mixer.leave(caller)
        self._last_write_ns.pop(caller, None)

    def write(self, caller: str, samples: Int16Array, now_ns: int) -> None:
        self.mixer.write(caller, samples)
        self._last_write_ns[caller] = now_ns

    def ready(self, now_ns: int) -> bool:
        """Every active caller has a whole chunk waiting, or one of them is ``slack_chunks`` ahead."""
        mixer, chunk, recent = self.mixer, self._chunk_in, now_ns - self._inactive_ns
        fullest, emptiest_active = 0, None
        for caller in mixer.callers:
            backlog = mixer.backlog(caller)
            fullest = max(fullest, backlog)
            last = self._last_write_ns.get(caller)
            if last is not None and last >= recent:
                emptiest_active = backlog if emptiest_active is None else min(emptiest_active, backlog)
        if fullest >= self._ahead:
            return True
        return emptiest_active is not None and emptiest_active >= chunk

    def next_chunk(self) -> bytes:
        """Mix, resample and encode one chunk; empty while the resampler is still filling its history."""
        clock, timer = self._clock, self.timer
        t0 = clock.now_ns()
        mixed = self.mixer.mix(self._chunk_in)
        t1 = clock.now_ns()
        resampled = self._resampler.push(mixed)
        t2 = clock.now_ns()
        payload = self.format.encode(resampled) if resampled.size else b""
        t3 = clock.now_ns()
        timer.add("uplink.mix", t1 - t0)
        timer.add("uplink.resample", t2 - t1)
        timer.add("uplink.encode", t3 - t2)
        self.chunks += 1
        self.bytes_out += len(payload)
        return payload
