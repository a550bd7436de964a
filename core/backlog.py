"""Callers' frames held while no conversation can take them yet.

A caller who joins an empty room usually speaks first ("hello?"), and the engine's socket is not open yet: with
``start_when="first_caller"`` the conversation is only opened when that caller arrives, which takes a few
hundred milliseconds (signed URL, TLS, ``conversation_initiation_metadata``); a reconnect leaves a similar
gap. Dropping those frames loses the caller's first words. So they wait here, and are replayed into the uplink
the moment the conversation's formats are known.

Limit and overflow policy: at most ``limit_ms`` of audio **per caller** (default 2 s: longer than any
connect that succeeds, short enough that the engine does not answer something said long ago). Past it the
caller's **oldest** frames are dropped and counted (``dropped_frames`` / ``dropped_samples``): the newest speech
is the part the engine must hear to answer. A caller who leaves takes their frames along (:meth:`forget`).
Frames come back out in arrival order across callers (a sequence number per frame), so the mixer sees the
same interleaving it would have seen live. Pure: no clock is read; arrival times are stored as given.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from core.errors import ConfigError
from core.formats import ROOM_RATE
from core.resample import Resampler

__all__ = ["BacklogStats", "CallerBacklog", "HeldFrame"]

Int16Array = npt.NDArray[np.int16]


@dataclass(frozen=True, slots=True)
class HeldFrame:
    identity: str
    samples: Int16Array
    recv_ns: int


@dataclass(frozen=True, slots=True)
class BacklogStats:
    held_samples: int
    held_frames: int
    dropped_frames: int
    dropped_samples: int
    replayed_frames: int


class CallerBacklog:
    """``push`` frames while the engine cannot take them; ``drain`` them, oldest first, when it can."""

    def __init__(self, limit_ms: int = 2000, rate: int = ROOM_RATE) -> None:
        if limit_ms <= 0:
            raise ConfigError(f"the caller backlog needs a positive limit, got {limit_ms} ms")
        self.limit_ms = limit_ms
        self.rate = rate
        self.limit_samples = rate * limit_ms // 1000
        self._callers: dict[str, deque[tuple[int, HeldFrame]]] = {}
        self._held: dict[str, int] = {}
        self._seq = 0
        self.dropped_frames = 0
        self.dropped_samples = 0
        self.replayed_frames = 0

    def __len__(self) -> int:
        return sum(len(q) for q in self._callers.values())

    def push(self, identity: str, samples: Int16Array, recv_ns: int) -> None:
        queue = self._callers.get(identity)
        if queue is None:
            queue = self._callers[identity] = deque()
            self._held[identity] = 0
        queue.append((self._seq, HeldFrame(identity, samples, recv_ns)))
        self._seq += 1
        held = self._held[identity] + samples.size
        while held > self.limit_samples and queue:
            _, oldest = queue.popleft()
            held -= oldest.samples.size
            self.dropped_frames += 1
            self.dropped_samples += oldest.samples.size
        self._held[identity] = held

    def forget(self, identity: str) -> None:
        """The caller left: their held frames would only be mixed against nobody."""
        self._callers.pop(identity, None)
        self._held.pop(identity, None)

    def resample(self, rate: int) -> None:
        """Callers are read at ``rate`` from now on: what is held is converted to it, each caller's frames as
        one stream (the filter's tail goes to its last frame), so the replay is at one rate throughout."""
        if rate == self.rate:
            return
        for queue in self._callers.values():
            resampler = Resampler(self.rate, rate)
            items = list(queue)
            queue.clear()
            for k, (seq, frame) in enumerate(items):
                out = resampler.push(frame.samples)
                if k == len(items) - 1:
                    tail = resampler.flush()
                    out = np.concatenate((out, tail)) if tail.size else out
                queue.append((seq, HeldFrame(frame.identity, out, frame.recv_ns)))
        self._held = {identity: sum(f.samples.size for _, f in q) for identity, q in self._callers.items()}
        self.rate = rate
        self.limit_samples = rate * self.limit_ms // 1000

    def drain(self) -> list[HeldFrame]:
        """Every held frame in arrival order; the backlog is empty afterwards."""
        frames = [frame for _, frame in heapq.merge(*self._callers.values(), key=lambda item: item[0])]
        self._callers.clear()
        self._held.clear()
        self.replayed_frames += len(frames)
        return frames

    def stats(self) -> BacklogStats:
        return BacklogStats(held_samples=sum(self._held.values()), held_frames=len(self),
                            dropped_frames=self.dropped_frames, dropped_samples=self.dropped_samples,
                            replayed_frames=self.replayed_frames)
