"""A synthetic caller: a real ``livekit.rtc`` participant that speaks prepared audio and records what it hears.

Used by the demo, the end-to-end tests and the benchmarks. It publishes a 48 kHz mono track at real time,
10 ms a frame, silence between utterances (so the track never starves), and records every frame it receives
from other participants with the monotonic time it arrived, so tests can assert on samples and timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from livekit import rtc

from core.formats import ROOM_RATE
from core.signals import tone

__all__ = ["Caller", "Heard", "tone"]

log = logging.getLogger(__name__)

RATE = ROOM_RATE
FRAME = RATE // 100  # 10 ms


@dataclass
class Heard:
    """What one remote track delivered: frames in arrival order with their monotonic arrival times."""

    identity: str
    times_ns: list[int] = field(default_factory=list)
    frames: list[npt.NDArray[np.int16]] = field(default_factory=list)

    def audio(self) -> npt.NDArray[np.int16]:
        return np.concatenate(self.frames) if self.frames else np.zeros(0, np.int16)

    def since(self, t_ns: int) -> npt.NDArray[np.int16]:
        """Samples of frames that arrived at or after ``t_ns``."""
        picked = [f for t, f in zip(self.times_ns, self.frames, strict=True) if t >= t_ns]
        return np.concatenate(picked) if picked else np.zeros(0, np.int16)

    def first_loud_after(self, t_ns: int, threshold: int = 500) -> int | None:
        """Arrival time of the first frame after ``t_ns`` with a sample louder than ``threshold``."""
        for t, f in zip(self.times_ns, self.frames, strict=True):
            if t >= t_ns and f.size and int(np.max(np.abs(f.astype(np.int32)))) > threshold:
                return t
        return None

    def last_loud_time(self, threshold: int = 500) -> int | None:
        for t, f in zip(reversed(self.times_ns), reversed(self.frames), strict=True):
            if f.size and int(np.max(np.abs(f.astype(np.int32)))) > threshold:
                return t
        return None


class Caller:
    """One participant that talks and listens. ``async with Caller(url, token) as c: await c.say(audio)``."""

    def __init__(self, url: str, token: str, *, identity: str = "caller") -> None:
        self.url, self._token, self.identity = url, token, identity
        self.room = rtc.Room()
        self.heard: dict[str, Heard] = {}
        self.gone: asyncio.Event = asyncio.Event()
        self.departed: list[str] = []
        self._script: deque[npt.NDArray[np.int16]] = deque()
        self._pending = np.zeros(0, np.int16)
        self._source = rtc.AudioSource(RATE, 1)
        self._tasks: set[asyncio.Task[None]] = set()
        self._speech_started_ns: list[int] = []
        self._idle = asyncio.Event()
        self._idle.set()
        self._muted = False
        self.room.on("track_subscribed", self._on_track)
        self.room.on("participant_disconnected", self._on_left)

    async def __aenter__(self) -> Caller:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        await self.room.connect(self.url, self._token)
        track = rtc.LocalAudioTrack.create_audio_track("mic", self._source)
        options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        await self.room.local_participant.publish_track(track, options)
        self._spawn(self._talk())

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.room.disconnect()
        await self._source.aclose()

    def _spawn(self, coro: object) -> None:
        task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_track(self, track: rtc.Track, _pub: rtc.RemoteTrackPublication,
                  participant: rtc.RemoteParticipant) -> None:
        if track.kind == rtc.TrackKind.KIND_AUDIO:
            heard = self.heard.setdefault(participant.identity, Heard(participant.identity))
            self._spawn(self._listen(rtc.AudioStream(track, sample_rate=RATE, num_channels=1), heard))

    def _on_left(self, participant: rtc.RemoteParticipant) -> None:
        self.departed.append(participant.identity)
        self.gone.set()

    async def _listen(self, stream: rtc.AudioStream, heard: Heard) -> None:
        try:
            async for event in stream:
                heard.times_ns.append(time.monotonic_ns())
                heard.frames.append(np.frombuffer(event.frame.data, dtype=np.int16).copy())
        finally:
            await stream.aclose()

    def say(self, samples: npt.NDArray[np.int16]) -> None:
        """Queue an utterance; it is spoken at real time after anything queued before it."""
        self._script.append(np.asarray(samples, dtype=np.int16))
        self._idle.clear()

    async def wait_said(self) -> None:
        """Until everything queued with :meth:`say` has been handed to the track."""
        await self._idle.wait()

    @property
    def speech_started_ns(self) -> list[int]:
        """Monotonic time at which each utterance's first sample was handed to the track."""
        return self._speech_started_ns

    def _next_frame(self) -> npt.NDArray[np.int16]:
        if self._pending.size == 0 and self._script:
            self._pending = self._script.popleft()
            self._speech_started_ns.append(time.monotonic_ns())
        if self._pending.size == 0:
            self._idle.set()
            return np.zeros(FRAME, np.int16)
        frame, self._pending = self._pending[:FRAME], self._pending[FRAME:]
        if frame.size < FRAME:
            frame = np.concatenate([frame, np.zeros(FRAME - frame.size, np.int16)])
        if self._pending.size == 0 and not self._script:
            self._idle.set()
        return frame

    async def _talk(self) -> None:
        loop = asyncio.get_running_loop()
        start, sent = loop.time(), 0
        while True:
            frame = self._next_frame()
            await self._source.capture_frame(rtc.AudioFrame(frame.tobytes(), RATE, 1, FRAME))
            sent += 1
            # Anchored schedule: frame k leaves at start + k·10 ms, so late wakeups do not add up to drift.
            delay = start + sent * 0.010 - loop.time()
            if delay < -0.2:  # stalled (e.g. the machine was busy): start a new schedule instead of bursting
                start, sent = loop.time(), 0
            elif delay > 0:
                await asyncio.sleep(delay)
