"""Helpers for the worker, token-server and browser tests: a tone-playing job runner and a running worker.

:class:`ToneAgent` stands in for the bridge session: as a job runner it joins the room with the job's token,
publishes a steady tone as its microphone, publishes an agent caption on ``lk.transcription``, publishes a
user caption (on the user's behalf) once it hears a remote participant speak, and stays until the job is
terminated or the room goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from livekit import rtc

from core.formats import ROOM_RATE
from core.signals import dominant_hz
from scripts.caller import tone
from transport.worker import JobContext, JobRunner, Worker, WorkerConfig

__all__ = ["ToneAgent", "dominant_hz", "running_worker", "unique", "wait_for"]

log = logging.getLogger(__name__)

RATE = ROOM_RATE
FRAME = RATE // 100
TOPIC = "lk.transcription"


def unique(prefix: str) -> str:
    """Names must not collide: the session's livekit-server is shared by every test."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def wait_for(predicate: Callable[[], bool], timeout: float = 20.0, interval: float = 0.05) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(interval)


@dataclass
class JobRecord:
    ctx: JobContext
    joined: asyncio.Event = field(default_factory=asyncio.Event)
    heard_user: asyncio.Event = field(default_factory=asyncio.Event)
    voice_sid: str = ""
    ended_by: str = ""


class ToneAgent:
    """A job runner: ``Worker(config, ToneAgent())``. ``ignore_termination`` makes a stubborn job."""

    def __init__(self, freq: float = 660.0, *, caption: str = "Hello from the tone agent.",
                 ignore_termination: bool = False, user_caption: str = "[speech heard]",
                 legacy_caption: str | None = None) -> None:
        self.freq, self.caption, self.user_caption = freq, caption, user_caption
        self.legacy_caption = legacy_caption
        self.ignore_termination = ignore_termination
        self.jobs: dict[str, JobRecord] = {}

    async def __call__(self, ctx: JobContext) -> None:
        record = self.jobs[ctx.job_id] = JobRecord(ctx)
        room = rtc.Room()
        gone = asyncio.Event()
        tasks: set[asyncio.Task[None]] = set()
        room.on("disconnected", lambda *_: gone.set())

        def on_track(track: rtc.Track, pub: rtc.RemoteTrackPublication, who: rtc.RemoteParticipant) -> None:
            if track.kind == rtc.TrackKind.KIND_AUDIO:
                task = asyncio.get_running_loop().create_task(self._listen(room, track, pub, who, record))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

        room.on("track_subscribed", on_track)
        source = rtc.AudioSource(RATE, 1, queue_size_ms=100)
        try:
            await room.connect(ctx.url, ctx.token)
            track = rtc.LocalAudioTrack.create_audio_track("agent-voice", source)
            pub = await room.local_participant.publish_track(
                track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE))
            record.joined.set()
            speaker = asyncio.get_running_loop().create_task(self._speak(source))
            tasks.add(speaker)
            await self._caption(room, room.local_participant.identity, self.caption, pub.sid, "agent-1")
            record.voice_sid = pub.sid
            stop = asyncio.ensure_future(gone.wait() if self.ignore_termination else
                                         _first(gone.wait(), ctx.termination.wait()))
            await stop
            record.ended_by = "termination" if ctx.termination_requested else "room closed"
        except asyncio.CancelledError:
            record.ended_by = "cancelled"
            raise
        finally:
            for task in list(tasks):
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(Exception):
                await room.disconnect()
            await source.aclose()

    async def _speak(self, source: rtc.AudioSource) -> None:
        # One second of tone, looped at real time; capture_frame waits while the 100 ms queue is full.
        second = tone(self.freq, 1.0, amplitude=0.3)
        while True:
            for start in range(0, second.size, FRAME):
                chunk = second[start:start + FRAME]
                await source.capture_frame(rtc.AudioFrame(chunk.tobytes(), RATE, 1, FRAME))

    async def _listen(self, room: rtc.Room, track: rtc.Track, pub: rtc.RemoteTrackPublication,
                      who: rtc.RemoteParticipant, record: JobRecord) -> None:
        stream = rtc.AudioStream(track, sample_rate=RATE, num_channels=1)
        loud_frames = 0
        try:
            async for event in stream:
                samples = np.frombuffer(event.frame.data, dtype=np.int16)
                if samples.size and int(np.abs(samples.astype(np.int32)).max()) > 1000:
                    loud_frames += 1
                if loud_frames == 20 and not record.heard_user.is_set():  # 200 ms of sound: someone speaks
                    record.heard_user.set()
                    await self._caption(room, who.identity, self.user_caption, pub.sid, "user-1")
                    if self.legacy_caption:
                        await self._legacy_caption(room, record.voice_sid, self.legacy_caption)
        finally:
            await stream.aclose()

    @staticmethod
    async def _legacy_caption(room: rtc.Room, track_sid: str, text: str) -> None:
        """The older transcription packet (RoomEvent.TranscriptionReceived in the JS SDK).

        Sent only once the user has been heard: a client that does not know the sender yet cannot place it.
        """
        await room.local_participant.publish_transcription(rtc.Transcription(
            participant_identity=room.local_participant.identity, track_sid=track_sid,
            segments=[rtc.TranscriptionSegment(id="legacy-1", text=text, start_time=0, end_time=0,
                                               language="en", final=True)]))

    @staticmethod
    async def _caption(room: rtc.Room, sender: str, text: str, track_sid: str, segment: str) -> None:
        """One final caption, the way the Agents framework sends it (see transport.transcripts)."""
        writer = await room.local_participant.stream_text(
            topic=TOPIC, sender_identity=sender,
            attributes={"lk.segment_id": segment, "lk.transcription_final": "true",
                        "lk.transcribed_track_id": track_sid})
        await writer.write(text)
        await writer.aclose()


async def _first(*aws: Coroutine[Any, Any, object]) -> None:
    tasks = [asyncio.ensure_future(aw) for aw in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


@contextlib.asynccontextmanager
async def running_worker(config: WorkerConfig, runner: JobRunner,
                         timeout: float = 20.0) -> AsyncIterator[tuple[Worker, asyncio.Task[None]]]:
    """A registered worker; closed (jobs ended at once) on exit unless the test drained it already."""
    worker = Worker(config, runner)
    task = asyncio.get_running_loop().create_task(worker.run(), name="test-worker")
    try:
        async with asyncio.timeout(timeout):
            done, _ = await asyncio.wait([task, asyncio.ensure_future(worker.wait_registered())],
                                         return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()  # raises why it could not register
        yield worker, task
    finally:
        if not task.done():
            await worker.aclose()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, 30)
