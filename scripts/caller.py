"""The synthetic caller: a real ``livekit.rtc`` participant that speaks prepared audio and records what it hears.

One class for the demo, the end-to-end tests and the benchmarks (:mod:`benchmarks.caller_host` runs many of
them in a process of their own). It publishes a 48 kHz mono track at real time, ``frame_ms`` a frame, idle
frames between utterances (silence, or quiet noise with ``idle_dbfs``) so the track never starves, and records
every frame it receives from other participants with the monotonic time it arrived.

Two ways to talk, chosen with ``paced``:

- ``paced=False`` (tests, demo): the SDK's default 1000 ms ``AudioSource`` queue, frames on an anchored
  schedule (frame k leaves at start + k·frame); after a stall of more than 200 ms a new schedule starts instead
  of a catch-up burst. Lateness can pile up in the queue, which is harmless when only the samples matter.
- ``paced=True`` (benchmarks): the queue is kept to ``lead`` frames by :class:`core.pacer.Pacer`, as the bridge
  does for its own voice, so the onset of an utterance reaches the track at most ``lead`` frames before it plays
  and the uplink latency figure is not inflated by a backlog in the caller.

What it heard is kept per remote identity (:class:`Heard`): arrival times and peaks always, the samples unless
``keep_audio=False`` (a long soak or a hundred callers would keep gigabytes).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from livekit import rtc

from core.clock import MS
from core.formats import ROOM_RATE
from core.pacer import Pacer
from core.signals import tone

__all__ = ["RATE", "Caller", "Heard", "tone"]

log = logging.getLogger(__name__)

RATE = ROOM_RATE
FRAME = RATE // 100  # 10 ms
Int16Array = npt.NDArray[np.int16]


def _peak(samples: Int16Array) -> int:
    return max(int(samples.max()), -int(samples.min())) if samples.size else 0


@dataclass
class Heard:
    """What one remote track delivered: frames in arrival order with their monotonic arrival times and peaks."""

    identity: str
    keep_audio: bool = True
    times_ns: list[int] = field(default_factory=list)
    peaks: list[int] = field(default_factory=list)
    frames: list[Int16Array] = field(default_factory=list)  # empty unless keep_audio

    def add(self, samples: Int16Array, t_ns: int) -> None:
        self.times_ns.append(t_ns)
        self.peaks.append(_peak(samples))
        if self.keep_audio:
            self.frames.append(samples.copy())

    def audio(self) -> Int16Array:
        return np.concatenate(self.frames) if self.frames else np.zeros(0, np.int16)

    def span(self, since_ns: int, until_ns: int | None = None) -> tuple[int, int]:
        """Indices of the frames that arrived in ``[since_ns, until_ns)``."""
        lo = bisect.bisect_left(self.times_ns, since_ns)
        hi = len(self.times_ns) if until_ns is None else bisect.bisect_left(self.times_ns, until_ns)
        return lo, hi

    def since(self, t_ns: int) -> Int16Array:
        """Samples of frames that arrived at or after ``t_ns``."""
        lo, _ = self.span(t_ns)
        return np.concatenate(self.frames[lo:]) if self.frames[lo:] else np.zeros(0, np.int16)

    def first_loud_after(self, t_ns: int, threshold: int = 500) -> int | None:
        """Arrival time of the first frame after ``t_ns`` with a sample louder than ``threshold``."""
        lo, _ = self.span(t_ns)
        return next((self.times_ns[i] for i in range(lo, len(self.peaks)) if self.peaks[i] > threshold), None)

    def last_loud_time(self, threshold: int = 500) -> int | None:
        return next((self.times_ns[i] for i in reversed(range(len(self.peaks))) if self.peaks[i] > threshold), None)


class Caller:
    """One participant that talks and listens. ``async with Caller(url, token) as c: c.say(audio)``."""

    def __init__(self, url: str, token: str, *, identity: str = "caller", paced: bool = False, frame_ms: int = 10,
                 lead: int = 2, idle_dbfs: float | None = None, listen: bool = True, keep_audio: bool = True) -> None:
        self.url, self.token, self.identity = url, token, identity
        self.listen, self.keep_audio = listen, keep_audio
        self.frame = RATE * frame_ms // 1000
        self.frame_ms = frame_ms
        self.room = rtc.Room()
        self.heard: dict[str, Heard] = {}
        self.gone: asyncio.Event = asyncio.Event()
        self.departed: list[str] = []
        self.frames_sent = 0
        self.speech_started_ns: list[int] = []  # when each utterance's first sample was handed to the track
        self.rpc_calls: list[tuple[str, str, dict[str, Any]]] = []  # (method, caller identity, parameters)
        # The native queue takes the pacer's lead plus a frame of slack before a capture waits.
        self.pacer = Pacer(frame_ns=frame_ms * MS, lead_frames=lead) if paced else None
        self._source = rtc.AudioSource(RATE, 1, queue_size_ms=(lead + 1) * frame_ms) if paced else rtc.AudioSource(
            RATE, 1)
        self._script: deque[Int16Array] = deque()
        self._pending: Int16Array = np.zeros(0, np.int16)
        self._tasks: set[asyncio.Task[None]] = set()
        self._said = asyncio.Event()
        self._said.set()
        if idle_dbfs is None:
            self._idle_frame = np.zeros(self.frame, np.int16)
        else:
            # Quiet noise, far below the emulator's VAD threshold: the bridge mixes and encodes real numbers.
            rng = np.random.default_rng(abs(hash(identity)) % 2**32)
            amp = 32767 * 10 ** (idle_dbfs / 20)
            self._idle_frame = np.clip(rng.standard_normal(self.frame) * amp, -32768, 32767).astype(np.int16)
        self._stopping = False
        self.room.on("track_subscribed", self._on_track)
        self.room.on("participant_disconnected", self._on_left)

    async def __aenter__(self) -> Caller:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def frames_heard(self) -> int:
        return sum(len(h.times_ns) for h in self.heard.values())

    async def start(self) -> None:
        await self.room.connect(self.url, self.token, rtc.RoomOptions(auto_subscribe=self.listen))
        track = rtc.LocalAudioTrack.create_audio_track("mic", self._source)
        options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        await self.room.local_participant.publish_track(track, options)
        self._spawn(self._talk_paced() if self.pacer is not None else self._talk())

    async def stop(self) -> None:
        # A track of another participant can still be announced while we leave (its event was queued before
        # the disconnect): from here on no new listener starts, and whatever started anyway is ended after
        # the room is gone, so nothing of this caller outlives stop().
        self._stopping = True
        await self._end_tasks()
        await self.room.disconnect()
        await self._end_tasks()
        await self._source.aclose()

    async def _end_tasks(self) -> None:
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                self._tasks.discard(task)

    def say(self, samples: Int16Array) -> None:
        """Queue an utterance; it is spoken at real time after anything queued before it."""
        self._script.append(np.asarray(samples, dtype=np.int16))
        self._said.clear()

    def answer_rpc(self, method: str, answer: Callable[[dict[str, Any]], Awaitable[str]]) -> None:
        """Offer an RPC method (a client tool the bridge may forward to us) once started; its JSON payload is
        passed to ``answer`` and every invocation is kept in :attr:`rpc_calls`."""

        async def handler(data: rtc.RpcInvocationData) -> str:
            params = json.loads(data.payload)
            self.rpc_calls.append((method, data.caller_identity, params))
            return await answer(params)

        self.room.local_participant.register_rpc_method(method, handler)

    async def wait_said(self) -> None:
        """Until everything queued with :meth:`say` has been handed to the track."""
        await self._said.wait()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_track(self, track: rtc.Track, _pub: rtc.RemoteTrackPublication,
                  participant: rtc.RemoteParticipant) -> None:
        if track.kind == rtc.TrackKind.KIND_AUDIO and not self._stopping:
            heard = self.heard.setdefault(participant.identity, Heard(participant.identity, self.keep_audio))
            # Paced callers measure per 10 ms frame; the others take the SDK's native framing (also 10 ms).
            stream = rtc.AudioStream(track, sample_rate=RATE, num_channels=1,
                                     frame_size_ms=10 if self.pacer is not None else None)
            self._spawn(self._listen(stream, heard))

    def _on_left(self, participant: rtc.RemoteParticipant) -> None:
        self.departed.append(participant.identity)
        self.gone.set()

    async def _listen(self, stream: rtc.AudioStream, heard: Heard) -> None:
        try:
            async for event in stream:
                heard.add(np.frombuffer(event.frame.data, dtype=np.int16), time.monotonic_ns())
        finally:
            await stream.aclose()

    def _next_frame(self) -> Int16Array:
        n = self.frame
        if self._pending.size == 0 and self._script:
            self._pending = self._script.popleft()
            self.speech_started_ns.append(time.monotonic_ns())
        if self._pending.size == 0:
            self._said.set()
            return self._idle_frame
        frame, self._pending = self._pending[:n], self._pending[n:]
        if frame.size < n:
            frame = np.concatenate([frame, np.zeros(n - frame.size, np.int16)])
        if self._pending.size == 0 and not self._script:
            self._said.set()
        return frame

    async def _send(self, frame: Int16Array) -> None:
        await self._source.capture_frame(rtc.AudioFrame(frame.tobytes(), RATE, 1, self.frame))
        self.frames_sent += 1

    async def _talk(self) -> None:
        loop = asyncio.get_running_loop()
        period = self.frame_ms / 1000
        start, sent = loop.time(), 0
        while True:
            await self._send(self._next_frame())
            sent += 1
            # Anchored schedule: frame k leaves at start + k·frame, so late wakeups do not add up to drift.
            delay = start + sent * period - loop.time()
            if delay < -0.2:  # stalled (e.g. the machine was busy): start a new schedule instead of bursting
                start, sent = loop.time(), 0
            elif delay > 0:
                await asyncio.sleep(delay)

    async def _talk_paced(self) -> None:
        pacer = self.pacer
        assert pacer is not None
        while True:
            now = time.monotonic_ns()
            for _ in range(pacer.frames_due(now)):
                await self._send(self._next_frame())
                pacer.on_frames_sent(1, now)
            delay = (pacer.next_wakeup_ns(time.monotonic_ns()) - time.monotonic_ns()) / 1e9
            await asyncio.sleep(max(0.0, delay))
