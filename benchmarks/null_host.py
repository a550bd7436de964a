"""The floor of the scaling benchmark: N rooms that do only what any agent must, with none of our logic.

``python -m benchmarks.null_host [--capture-ms 10|20|40] [--caller-rate HZ] [--caller-frame-ms MS]``, the
same JSON-lines commands as :mod:`benchmarks.bridge_host` (``start``, ``measure_start``, ``measure_stop``,
``stop``), the same probes (CPU by thread, RSS, event-loop lag, FFI events). Per room it joins as the agent,
subscribes to every caller track through an ``AudioStream`` and reads every frame — at the rate and frame
length our bridge asks for (by default what a session on a ``pcm_16000`` conversation reads: 16 kHz mono,
10 ms frames; the scaling benchmark passes the session's own settings) — and publishes a 48 kHz tone
through an ``AudioSource`` (``queue_size_ms`` 50, as ours), paced on an
anchored schedule: one ``--capture-ms`` frame per period, ``lead`` frames ahead. No engine, no resampling,
no mixing, no playout buffer, no pacer state machine: what is left is the SDK and WebRTC, which is the cost
our bridge cannot go below in one process.

``--conversation`` adds what any bridge must do for the engine and nothing more: each room holds a
conversation with the engine (a signed URL per room, no per-message compression: as ours), sends every caller frame as a
``user_audio_chunk`` the moment it is read, reads every message (``json.loads``; each ``audio`` chunk
base64-decoded into samples, then dropped) and answers pings. The voice stays the paced tone. That is the
floor of a bridge that talks to the Speech Engine: ours minus it is our own logic.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import faulthandler
import json
import logging
import signal
import sys
from typing import Any

import numpy as np
import websockets
from livekit import rtc

from benchmarks.bridge_host import VOICE_LEAD_FRAMES, Host, serve_host, zero_counters
from benchmarks.common import run_loop
from scripts.caller import tone
from transport.signed_url import fetch_signed_url

log = logging.getLogger("benchmarks.null_host")
RATE = 48_000


class NullRoom:
    def __init__(self, url: str, token: str, engine_url: str | None, *, capture_ms: int, lead_ms: int,
                 caller_rate: int, caller_frame_ms: int) -> None:
        self.url, self.token, self.engine_url = url, token, engine_url
        self.capture_ms, self.lead_ms = capture_ms, lead_ms
        self.caller_rate, self.caller_frame_ms = caller_rate, caller_frame_ms
        self.room = rtc.Room()
        self.source = rtc.AudioSource(RATE, 1, queue_size_ms=50)
        self.frames_in = 0
        self.frames_out = 0
        self.late = 0
        self.ws: Any = None  # the engine conversation, with --conversation
        self.chunks_sent = 0
        self.audio_events = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.room.on("track_subscribed", self._on_track)
        frame = RATE * capture_ms // 1000
        second = tone(523.0, 1.0, amplitude=0.2)
        self._frames = [second[i:i + frame] for i in range(0, second.size - frame + 1, frame)]

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_track(self, track: rtc.Track, _pub: rtc.RemoteTrackPublication, _who: rtc.RemoteParticipant) -> None:
        if track.kind == rtc.TrackKind.KIND_AUDIO:
            self._spawn(self._read(rtc.AudioStream(track, sample_rate=self.caller_rate, num_channels=1,
                                                   frame_size_ms=self.caller_frame_ms)))

    async def _read(self, stream: rtc.AudioStream) -> None:
        try:
            async for event in stream:
                self.frames_in += 1
                if self.ws is not None:
                    chunk = base64.b64encode(bytes(event.frame.data)).decode()
                    with contextlib.suppress(websockets.ConnectionClosed):
                        await self.ws.send(json.dumps({"user_audio_chunk": chunk}))
                        self.chunks_sent += 1
        finally:
            await stream.aclose()

    async def start(self) -> None:
        await self.room.connect(self.url, self.token)
        track = rtc.LocalAudioTrack.create_audio_track("agent-voice", self.source)
        await self.room.local_participant.publish_track(
            track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE))
        if self.engine_url is not None:
            self.ws = await websockets.connect(self.engine_url, compression=None)  # as ours: no deflate per message
            await self.ws.send(json.dumps({"type": "conversation_initiation_client_data"}))
            self._spawn(self._listen())
        self._spawn(self._speak())

    async def _listen(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for message in self.ws:
                data = json.loads(message)
                kind = data.get("type")
                if kind == "audio":
                    np.frombuffer(base64.b64decode(data["audio_event"]["audio_base_64"]), dtype=np.int16)
                    self.audio_events += 1
                elif kind == "ping":
                    event_id = data.get("ping_event", {}).get("event_id")
                    await self.ws.send(json.dumps({"type": "pong", "event_id": event_id}))

    async def _speak(self) -> None:
        loop = asyncio.get_running_loop()
        period = self.capture_ms / 1000
        start = loop.time() - self.lead_ms / 1000  # lead: the first frames go at once
        k = 0
        while True:
            frame = self._frames[k % len(self._frames)]
            await self.source.capture_frame(rtc.AudioFrame(frame.tobytes(), RATE, 1, frame.size))
            self.frames_out += 1
            k += 1
            delay = start + k * period - loop.time()
            if delay < -0.2:  # the loop stalled: a new schedule instead of a burst (as our pacer re-anchors)
                self.late += 1
                start, k = loop.time() - self.lead_ms / 1000, 0
            elif delay > 0:
                await asyncio.sleep(delay)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close()
        with contextlib.suppress(Exception):
            await self.room.disconnect()
        await self.source.aclose()


class NullHost(Host):
    def __init__(self, capture_ms: int, caller_rate: int, caller_frame_ms: int, conversation: bool = False) -> None:
        super().__init__()
        self.capture_ms = capture_ms
        self.conversation = conversation
        self.caller_rate, self.caller_frame_ms = caller_rate, caller_frame_ms
        self.rooms: list[NullRoom] = []

    async def start(self, cmd: dict[str, Any]) -> dict[str, Any]:
        lead_ms = self.capture_ms * VOICE_LEAD_FRAMES[self.capture_ms]  # as ours at that frame length

        async def make(_room: str, token: str) -> NullRoom:
            engine_url = None
            if self.conversation:
                engine = cmd["engine"]
                engine_url = await fetch_signed_url(engine["api_key"], engine["agent_id"], base_url=engine["api_base"])
            return NullRoom(cmd["livekit_url"], token, engine_url, capture_ms=self.capture_ms, lead_ms=lead_ms,
                            caller_rate=self.caller_rate, caller_frame_ms=self.caller_frame_ms)

        self.rooms = await self.start_rooms(cmd, make)
        return {"started": len(self.rooms), "failed": self.failed, "rss_idle_mb": self.rss_idle}

    def _counters(self) -> dict[str, int]:
        c = zero_counters("frames_in")
        for room in getattr(self, "rooms", ()):
            c["frames_out"] += room.frames_out
            c["frames_in"] += room.frames_in
            c["reanchors"] += room.late
            c["chunks_sent"] += room.chunks_sent
            c["audio_events"] += room.audio_events
        return c

    def measure_stop(self) -> dict[str, Any]:
        result = super().measure_stop()
        result["sessions"] = len(self.rooms)
        result["session_states"] = {"running": len(self.rooms)}
        return result

    async def stop(self) -> dict[str, Any]:
        await self._probe.stop()
        await asyncio.gather(*(r.stop() for r in self.rooms), return_exceptions=True)
        return {}


async def serve(capture_ms: int, caller_rate: int, caller_frame_ms: int, conversation: bool) -> None:
    await serve_host(NullHost(capture_ms, caller_rate, caller_frame_ms, conversation))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--capture-ms", type=int, choices=(10, 20, 40), default=10)
    parser.add_argument("--caller-rate", type=int, default=16_000, help="the callers' AudioStream rate, Hz")
    parser.add_argument("--caller-frame-ms", type=int, default=10, help="the callers' AudioStream frame length")
    parser.add_argument("--conversation", action="store_true",
                        help="also hold an engine conversation per room (send every caller frame, read everything)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="null_host %(levelname)s %(message)s")
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    run_loop(serve(args.capture_ms, args.caller_rate, args.caller_frame_ms, args.conversation))


if __name__ == "__main__":
    main()
