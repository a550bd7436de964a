"""Does the way a bridge reads a caller's track decide when it hears the onset? One track, several readers.

``python -m benchmarks.subscribe_phase [--trials 20] [--out DIR]`` (inside ``scripts/netns.sh exec``).

One caller publishes a paced stream of 10 ms frames (silence, then a sharp 300 Hz onset, again and again);
two listener participants in the same room and process subscribe to that one track:

- ``ours``: ``AudioStream(sample_rate=48000, frame_size_ms=10)`` as ``transport.livekit_room`` reads callers,
  plus a second stream on the same subscription at 16 kHz with ``frame_size_ms=10`` (what reading callers at
  the engine's rate would be);
- ``naive``: ``AudioStream(sample_rate=16000)`` with the SDK's native framing, as the vendor's sample does.

Each figure is the caller's ``capture_frame`` of the first loud frame → the reader's ``async for`` gets the
first frame louder than -20 dBFS (``time.monotonic_ns``, one process). What it shows: whether the rate or the
framing a bridge asks for moves the onset, with the caller's tick, the Opus packetiser and the subscriber's
jitter buffer the same for every reader. (They are not the same across the turns benchmark's two rigs'
callers: see ``benchmarks.turns``.)
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np
from livekit import rtc

from benchmarks.common import RATE, RESULTS, machine, summarize, write_json
from scripts.livekit_server import LiveKitServer
from transport.livekit_token import mint_token

__all__ = ["main", "run"]

FRAME = RATE // 100
LOUD = 3000  # the onset frame peaks near 12000; Opus's ramp-in stays far below neither
# (listener, stream name, sample rate, frame_size_ms)
READERS = (("ours", "ours_48k_10ms", 48_000, 10), ("ours", "ours_16k_10ms", 16_000, 10),
           ("naive", "naive_16k_native", 16_000, None))


async def run(trials: int, seed: int = 1) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    heard: dict[str, list[int]] = {name: [] for _, name, _, _ in READERS}
    streams: list[rtc.AudioStream] = []
    tasks: list[asyncio.Task[None]] = []

    async def read(stream: rtc.AudioStream, name: str) -> None:
        async for event in stream:
            now = time.monotonic_ns()
            if int(np.abs(np.frombuffer(event.frame.data, dtype=np.int16)).max(initial=0)) > LOUD:
                heard[name].append(now)

    with LiveKitServer() as server:
        def token(identity: str) -> str:
            return mint_token(server.api_key, server.api_secret, room="phase", identity=identity)

        rooms: list[rtc.Room] = []
        subscribed: list[asyncio.Event] = []
        for listener in dict.fromkeys(who for who, _, _, _ in READERS):
            room, ready = rtc.Room(), asyncio.Event()
            mine = [(name, rate, fms) for who, name, rate, fms in READERS if who == listener]

            def on_track(track: rtc.Track, _pub: rtc.RemoteTrackPublication, _p: rtc.RemoteParticipant,
                         mine: list[tuple[str, int, int | None]] = mine, ready: asyncio.Event = ready) -> None:
                if track.kind != rtc.TrackKind.KIND_AUDIO:
                    return
                for name, rate, fms in mine:
                    stream = rtc.AudioStream(track, sample_rate=rate, num_channels=1, frame_size_ms=fms)
                    streams.append(stream)
                    tasks.append(asyncio.get_running_loop().create_task(read(stream, name)))
                ready.set()

            room.on("track_subscribed", on_track)
            await room.connect(server.url, token(listener))
            rooms.append(room)
            subscribed.append(ready)
        caller = rtc.Room()
        await caller.connect(server.url, token("caller"))
        source = rtc.AudioSource(RATE, 1, queue_size_ms=20)
        track = rtc.LocalAudioTrack.create_audio_track("mic", source)
        await caller.local_participant.publish_track(
            track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE))
        async with asyncio.timeout(20):
            for ready in subscribed:
                await ready.wait()
        silence = np.zeros(FRAME, np.int16).tobytes()
        loud = (np.sin(2 * np.pi * 300 * np.arange(FRAME) / RATE) * 12000).astype(np.int16).tobytes()
        starts: list[int] = []
        for trial in range(trials + 1):  # the first onset warms the path up and is not counted
            for _ in range(60 + int(rng.integers(40))):
                await source.capture_frame(rtc.AudioFrame(silence, RATE, 1, FRAME))
            if trial:
                starts.append(time.monotonic_ns())
            for _ in range(30):
                await source.capture_frame(rtc.AudioFrame(loud, RATE, 1, FRAME))
        for _ in range(50):
            await source.capture_frame(rtc.AudioFrame(silence, RATE, 1, FRAME))
        for task in tasks:
            task.cancel()
        for stream in streams:
            await stream.aclose()
        for room in (*rooms, caller):
            await room.disconnect()
        await source.aclose()
    onset_ms = {name: [(next((t for t in times if t >= s), s) - s) / 1e6 for s in starts]
                for name, times in heard.items()}
    ref = onset_ms["ours_48k_10ms"]
    return {"trials": trials, "readers": [list(r) for r in READERS], "onset_ms": onset_ms,
            "summary": {name: summarize(v) for name, v in onset_ms.items()},
            "minus_ours_48k": {name: summarize(a - b for a, b in zip(v, ref, strict=True))
                               for name, v in onset_ms.items() if v is not ref}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--out", type=Path, default=RESULTS)
    opts = parser.parse_args()
    desc = machine()
    result = asyncio.run(run(opts.trials))
    result["machine"] = desc  # write_json adds the load average at the end
    opts.out.mkdir(parents=True, exist_ok=True)
    write_json(opts.out / "subscribe_phase.json", result)
    for name, s in result["summary"].items():
        print(f"{name:<18} onset p50 / p95 / p99 {s['p50']:.1f} / {s['p95']:.1f} / {s['p99']:.1f} ms")
    for name, s in result["minus_ours_48k"].items():
        print(f"{name:<18} minus ours_48k_10ms p50 {s['p50']:+.2f} ms (min {s['min']:+.2f}, max {s['max']:+.2f})")


if __name__ == "__main__":
    main()
