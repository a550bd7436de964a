"""Synthetic callers in a process of their own, so the process being measured holds only the bridge.

Run by the benchmarks as ``python -m benchmarks.caller_host``; it speaks JSON lines: one command per line on
stdin, one answer per line on stdout (same ``id``), logs on stderr. Commands:

- ``join``: ``{"callers": [{"name", "url", "token", "listen", "frame_ms", "lead", "idle_dbfs"}, ...],
  "concurrency": 8}`` → ``{"joined": [...], "failed": {name: error}}``.
- ``say``: ``{"name", "seconds", "freq", "level"}`` queues the test voice (:func:`benchmarks.common.voice`).
- ``spoken``: ``{"name"}`` → ``{"starts": [ns, ...]}``, when each utterance's first sample went to the track.
- ``heard``: ``{"name", "since", "until", "audio": false}`` → ``{"times": [...], "peaks": [...]}`` for every
  10 ms frame the caller received from the agent between those times (and the samples, base64, if asked).
- ``stats`` → CPU and frame counters; ``stop`` → leaves every room and exits.

A caller is a real ``livekit.rtc`` participant. It talks at real time through an ``AudioSource`` whose queue
is kept to ``lead`` frames by :class:`core.pacer.Pacer` (as the bridge does for its own voice): the onset of an
utterance is handed to the track at most ``lead`` frames before it plays, so the uplink figure is not
inflated by a backlog in the caller. ``scripts.caller.Caller`` (SDK default 1000 ms queue, catch-up bursts)
lets lateness pile up in its queue, which is right for tests and wrong for timing.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import resource
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from livekit import rtc

from benchmarks.common import RATE, run_loop, voice
from core.clock import MS
from core.pacer import Pacer
from transport.loop_lag import LoopLagProbe

log = logging.getLogger("benchmarks.caller_host")

Int16Array = npt.NDArray[np.int16]


@dataclass
class Heard:
    times: list[int] = field(default_factory=list)
    peaks: list[int] = field(default_factory=list)
    frames: list[bytes] = field(default_factory=list)


class BenchCaller:
    def __init__(self, name: str, url: str, token: str, *, listen: bool = True, frame_ms: int = 10,
                 lead: int = 2, idle_dbfs: float | None = None, keep_audio: bool = True) -> None:
        self.name, self.url, self._token = name, url, token
        self.listen, self.keep_audio = listen, keep_audio
        self.frame = RATE * frame_ms // 1000
        self.frame_ms = frame_ms
        # The native queue takes the pacer's lead plus a frame of slack before a capture waits.
        self.source = rtc.AudioSource(RATE, 1, queue_size_ms=(lead + 1) * frame_ms)
        self.pacer = Pacer(frame_ns=frame_ms * MS, lead_frames=lead)
        self.room = rtc.Room()
        self.heard = Heard()
        self.speech_starts: list[int] = []
        self.frames_sent = 0
        self.frames_heard = 0
        self._script: deque[Int16Array] = deque()
        self._pending: Int16Array = np.zeros(0, np.int16)
        self._tasks: set[asyncio.Task[None]] = set()
        rng = np.random.default_rng(abs(hash(name)) % 2**32)
        if idle_dbfs is None:
            self._idle = np.zeros(self.frame, np.int16)
        else:
            # Quiet noise, far below the emulator's VAD threshold: the bridge mixes and encodes real numbers.
            amp = 32767 * 10 ** (idle_dbfs / 20)
            self._idle = np.clip(rng.standard_normal(self.frame) * amp, -32768, 32767).astype(np.int16)
        self.room.on("track_subscribed", self._on_track)

    async def start(self) -> None:
        await self.room.connect(self.url, self._token, rtc.RoomOptions(auto_subscribe=self.listen))
        track = rtc.LocalAudioTrack.create_audio_track("mic", self.source)
        options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        await self.room.local_participant.publish_track(track, options)
        self._spawn(self._talk())

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):
            await self.room.disconnect()
        with contextlib.suppress(Exception):
            await self.source.aclose()

    def say(self, samples: Int16Array) -> None:
        self._script.append(samples)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_track(self, track: rtc.Track, _pub: rtc.RemoteTrackPublication,
                  participant: rtc.RemoteParticipant) -> None:
        if track.kind == rtc.TrackKind.KIND_AUDIO:
            self._spawn(self._listen(rtc.AudioStream(track, sample_rate=RATE, num_channels=1, frame_size_ms=10)))

    async def _listen(self, stream: rtc.AudioStream) -> None:
        heard = self.heard
        try:
            async for event in stream:
                now = time.monotonic_ns()
                data = event.frame.data
                samples = np.frombuffer(data, dtype=np.int16)
                heard.times.append(now)
                heard.peaks.append(max(int(samples.max()), -int(samples.min())) if samples.size else 0)
                if self.keep_audio:
                    heard.frames.append(bytes(data))
                self.frames_heard += 1
        finally:
            await stream.aclose()

    def _next_frame(self) -> tuple[Int16Array, bool]:
        started = False
        if self._pending.size == 0 and self._script:
            self._pending = self._script.popleft()
            started = True
        if self._pending.size == 0:
            return self._idle, False
        frame, self._pending = self._pending[:self.frame], self._pending[self.frame:]
        if frame.size < self.frame:
            frame = np.concatenate([frame, np.zeros(self.frame - frame.size, np.int16)])
        return frame, started

    async def _talk(self) -> None:
        pacer, source, n = self.pacer, self.source, self.frame
        while True:
            now = time.monotonic_ns()
            for _ in range(pacer.frames_due(now)):
                frame, started = self._next_frame()
                if started:
                    self.speech_starts.append(time.monotonic_ns())
                await source.capture_frame(rtc.AudioFrame(frame.tobytes(), RATE, 1, n))
                pacer.on_frames_sent(1, now)
                self.frames_sent += 1
            delay = (pacer.next_wakeup_ns(time.monotonic_ns()) - time.monotonic_ns()) / 1e9
            await asyncio.sleep(max(0.0, delay))

    def heard_between(self, since: int, until: int | None, audio: bool) -> dict[str, Any]:
        h = self.heard
        lo = _bisect(h.times, since)
        hi = len(h.times) if until is None else _bisect(h.times, until)
        out: dict[str, Any] = {"times": h.times[lo:hi], "peaks": h.peaks[lo:hi]}
        if audio and self.keep_audio:
            out["audio"] = base64.b64encode(b"".join(h.frames[lo:hi])).decode()
        return out


def _bisect(values: list[int], x: int) -> int:
    import bisect
    return bisect.bisect_left(values, x)


class Host:
    def __init__(self) -> None:
        self.callers: dict[str, BenchCaller] = {}
        self.cpu0 = time.process_time()
        self.lags: list[float] = []  # event-loop lag (ms) of this process: is the load generator keeping up?
        self._probe = LoopLagProbe(0.02, lambda lag_s: self.lags.append(lag_s * 1000))

    async def handle(self, cmd: dict[str, Any]) -> dict[str, Any]:
        op = cmd["op"]
        self._probe.start()
        if op == "join":
            return await self._join(cmd["callers"], int(cmd.get("concurrency", 8)))
        if op == "say":
            caller = self.callers[cmd["name"]]
            caller.say(voice(float(cmd["seconds"]), float(cmd.get("freq", 300.0)), level=float(cmd.get("level", 0.3))))
            return {}
        if op == "spoken":
            return {"starts": self.callers[cmd["name"]].speech_starts}
        if op == "heard":
            return self.callers[cmd["name"]].heard_between(int(cmd.get("since", 0)), cmd.get("until"),
                                                           bool(cmd.get("audio", False)))
        if op == "stats":
            usage = resource.getrusage(resource.RUSAGE_SELF)
            lags = sorted(self.lags)
            result = {"cpu_s": time.process_time() - self.cpu0, "max_rss_mb": usage.ru_maxrss / 1024,
                      "lag_p50_ms": lags[len(lags) // 2] if lags else None,
                      "lag_p99_ms": lags[min(len(lags) - 1, int(len(lags) * 0.99))] if lags else None,
                      "callers": len(self.callers),
                      "frames_sent": sum(c.frames_sent for c in self.callers.values()),
                      "frames_heard": sum(c.frames_heard for c in self.callers.values()),
                      "pacer_reanchors": sum(c.pacer.reanchors for c in self.callers.values())}
            if cmd.get("reset"):
                self.lags.clear()
                self.cpu0 = time.process_time()
            return result
        if op == "stop":
            await self._probe.stop()
            await asyncio.gather(*(c.stop() for c in self.callers.values()), return_exceptions=True)
            return {}
        raise ValueError(f"unknown op {op!r}")

    async def _join(self, specs: list[dict[str, Any]], concurrency: int) -> dict[str, Any]:
        gate = asyncio.Semaphore(concurrency)
        failed: dict[str, str] = {}
        joined: list[str] = []

        async def one(spec: dict[str, Any]) -> None:
            async with gate:
                caller = BenchCaller(spec["name"], spec["url"], spec["token"], listen=spec.get("listen", True),
                                     frame_ms=spec.get("frame_ms", 10), lead=spec.get("lead", 2),
                                     idle_dbfs=spec.get("idle_dbfs"), keep_audio=spec.get("keep_audio", True))
                try:
                    async with asyncio.timeout(30):
                        await caller.start()
                except Exception as exc:
                    failed[spec["name"]] = f"{type(exc).__name__}: {exc}"
                    await caller.stop()
                    return
                self.callers[spec["name"]] = caller
                joined.append(spec["name"])

        await asyncio.gather(*(one(s) for s in specs))
        return {"joined": joined, "failed": failed}


async def serve() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    host = Host()
    out = sys.stdout

    def answer(msg: dict[str, Any]) -> None:
        out.write(json.dumps(msg) + "\n")
        out.flush()

    async def run(cmd: dict[str, Any]) -> None:
        try:
            result = await host.handle(cmd)
            answer({"id": cmd.get("id"), "ok": True, **result})
        except Exception as exc:
            log.exception("command %s failed", cmd.get("op"))
            answer({"id": cmd.get("id"), "ok": False, "error": f"{type(exc).__name__}: {exc}"})

    tasks: set[asyncio.Task[None]] = set()
    while line := await reader.readline():
        cmd = json.loads(line)
        if cmd.get("op") == "stop":
            await run(cmd)
            break
        task = asyncio.create_task(run(cmd))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    else:
        await host.handle({"op": "stop"})


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="caller_host %(levelname)s %(message)s")
    run_loop(serve())


if __name__ == "__main__":
    main()
