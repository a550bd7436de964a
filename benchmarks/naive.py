"""The baseline: the bridge as it is usually first written, measured against the same emulator as ours.

It works (the caller hears the agent, the agent hears the caller); it is naive, not broken on purpose:

- ONE sequential loop reads the engine socket (raw ``websockets``, default options) and, for each ``audio``
  event, awaits ``AudioSource.capture_frame``. The source has the SDK's default ``queue_size_ms=1000``; the
  native side (livekit rust-sdks ``webrtc-sys/src/audio_track.cpp``, ``InternalSource::capture_frame``)
  accepts a frame while its buffer holds at most twice that (``queue_size_samples_ +
  notify_threshold_samples_``) and completes the capture only once the buffer is back down to
  ``queue_size_ms`` — so the loop runs freely until about a second is queued, then moves at real time, one
  chunk per chunk-length. Everything the engine sent faster than real time waits in the socket meanwhile.
- ``interruption`` → ``clear_queue()``, when the loop gets to it: behind every audio chunk received before it.
- No stale-id gate, no jitter buffer, no pacing, no look at ``conversation_initiation_metadata``: formats are
  fixed, 16 kHz in and 24 kHz out (``pcm_16000`` / ``pcm_24000``), resampled with a one-shot
  ``soxr.resample`` call per chunk (no stream, so each chunk restarts the filter).
- The caller's audio is forwarded by a second simple task per caller track, as the vendor's LiveKit sample
  does it: ``rtc.AudioStream(track, sample_rate=16000)`` (the SDK's native resampler hands out 10 ms frames
  at the engine's rate) and each frame sent at once as a ``user_audio_chunk``. That resampler's own delay is
  inside the SDK, before the frame reaches Python: it counts in the end-to-end figures, not in the naive
  bridge's "hold".
- Pings are answered (else the server ends the conversation), by the same loop.

Instrumentation (time.monotonic_ns, for the benchmarks): every capture's time and peak, every queue clear,
when the loop read each interruption and audio event.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from typing import Any

import numpy as np
import soxr
import websockets
from livekit import rtc

from core.formats import ROOM_RATE

__all__ = ["NaiveBridge"]

log = logging.getLogger(__name__)

OUT_RATE = ROOM_RATE
ENGINE_IN_RATE = 16_000
ENGINE_OUT_RATE = 24_000


class NaiveBridge:
    def __init__(self, livekit_url: str, token: str, engine_url: str) -> None:
        self.livekit_url, self.token, self.engine_url = livekit_url, token, engine_url
        self.room = rtc.Room()
        self.source: rtc.AudioSource | None = None
        self.ws: Any = None
        self._tasks: set[asyncio.Task[None]] = set()
        # Instrumentation.
        self.captures: list[tuple[int, int, int]] = []  # (ns before capture_frame, peak, samples)
        self.clears: list[int] = []  # ns right after clear_queue()
        self.interruptions: list[dict[str, int]] = []  # {"event_id", "loop_ns"}
        self.audio_events: list[tuple[int, int]] = []  # (ns the loop read it, event_id)
        self.caller_frames: list[tuple[int, int]] = []  # (ns the frame arrived, peak)
        self.holds_ns: list[int] = []  # frame arrived → its user_audio_chunk handed to the socket (send returned)
        self.chunks_sent = 0
        self.conversation_id: str | None = None  # read from the metadata for the benchmarks' joins only
        self.room.on("track_subscribed", self._on_track)

    async def start(self) -> None:
        await self.room.connect(self.livekit_url, self.token)
        self.source = rtc.AudioSource(OUT_RATE, 1)  # queue_size_ms defaults to 1000
        track = rtc.LocalAudioTrack.create_audio_track("agent-voice", self.source)
        await self.room.local_participant.publish_track(
            track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE))
        self.ws = await websockets.connect(self.engine_url)
        await self.ws.send(json.dumps({"type": "conversation_initiation_client_data"}))
        self._spawn(self._engine_loop())

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close()
        with contextlib.suppress(Exception):
            await self.room.disconnect()
        if self.source is not None:
            await self.source.aclose()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _engine_loop(self) -> None:
        source = self.source
        assert source is not None
        async for message in self.ws:
            now = time.monotonic_ns()
            data = json.loads(message)
            kind = data.get("type")
            if kind == "audio":
                event = data["audio_event"]
                self.audio_events.append((now, int(event.get("event_id", 0))))
                pcm = np.frombuffer(base64.b64decode(event["audio_base_64"]), dtype=np.int16)
                out = soxr.resample(pcm, ENGINE_OUT_RATE, OUT_RATE)
                self.captures.append((time.monotonic_ns(), max(int(out.max()), -int(out.min())) if out.size else 0,
                                      out.size))
                await source.capture_frame(rtc.AudioFrame(out.tobytes(), OUT_RATE, 1, out.size))
            elif kind == "interruption":
                event_id = int(data.get("interruption_event", {}).get("event_id", 0))
                self.interruptions.append({"event_id": event_id, "loop_ns": now})
                source.clear_queue()
                self.clears.append(time.monotonic_ns())
            elif kind == "conversation_initiation_metadata":
                self.conversation_id = data.get("conversation_initiation_metadata_event", {}).get("conversation_id")
            elif kind == "ping":
                event = data.get("ping_event", {})
                await self.ws.send(json.dumps({"type": "pong", "event_id": event.get("event_id")}))

    def _on_track(self, track: rtc.Track, _pub: rtc.RemoteTrackPublication,
                  _participant: rtc.RemoteParticipant) -> None:
        if track.kind == rtc.TrackKind.KIND_AUDIO:
            self._spawn(self._forward(rtc.AudioStream(track, sample_rate=ENGINE_IN_RATE, num_channels=1)))

    async def _forward(self, stream: rtc.AudioStream) -> None:
        async for event in stream:
            frame = event.frame
            arrived = time.monotonic_ns()
            pcm = np.frombuffer(frame.data, dtype=np.int16)
            # The peak is taken at 16 kHz; the benchmarks' onset threshold is far above any resampling ripple.
            self.caller_frames.append((arrived, max(int(pcm.max()), -int(pcm.min())) if pcm.size else 0))
            chunk = base64.b64encode(pcm.tobytes()).decode()
            with contextlib.suppress(websockets.ConnectionClosed):
                await self.ws.send(json.dumps({"user_audio_chunk": chunk}))
                self.holds_ns.append(time.monotonic_ns() - arrived)
                self.chunks_sent += 1
