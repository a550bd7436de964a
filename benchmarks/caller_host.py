"""Synthetic callers in a process of their own, so the process being measured holds only the bridge.

Run by the benchmarks as ``python -m benchmarks.caller_host``; it speaks JSON lines: one command per line on
stdin, one answer per line on stdout (same ``id``), logs on stderr. Commands:

- ``join``: ``{"callers": [{"name", "url", "token", "listen", "frame_ms", "lead", "idle_dbfs"}, ...],
  "concurrency": 8}`` → ``{"joined": [...], "failed": {name: error}}``.
- ``say``: ``{"name", "seconds", "freq", "level", "lead_in_ms"}`` queues the test voice
  (:func:`benchmarks.common.voice`) after ``lead_in_ms`` of silence (default 0): the onset then falls that far
  into the utterance's first frame, so a benchmark can place it anywhere in the 10 ms / 20 ms framing.
- ``spoken``: ``{"name"}`` → ``{"starts": [ns, ...]}``, when each utterance's first sample went to the track.
- ``heard``: ``{"name", "since", "until", "audio": false}`` → ``{"times": [...], "peaks": [...]}`` for every
  10 ms frame the caller received from the agent between those times (and the samples, base64, if asked).
- ``stats`` → CPU and frame counters; ``stop`` → leaves every room and exits.

Each caller is a :class:`scripts.caller.Caller` with ``paced=True``: its ``AudioSource`` queue is kept to
``lead`` frames by :class:`core.pacer.Pacer` (as the bridge does for its own voice), so the onset of an utterance
is handed to the track at most ``lead`` frames before it plays and the uplink figure is not inflated by a
backlog in the caller.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import resource
import sys
import time
from typing import Any

import numpy as np

from benchmarks.common import RATE, run_loop, voice
from benchmarks.procs import serve_json_lines
from scripts.caller import Caller
from transport.loop_lag import LoopLagProbe

log = logging.getLogger("benchmarks.caller_host")


def heard_between(caller: Caller, since: int, until: int | None, audio: bool) -> dict[str, Any]:
    """Frames from the agent between two times. A benchmark room holds one caller and one bridge, so the one
    remote track a caller hears is the agent's."""
    heard = next(iter(caller.heard.values()), None)
    if heard is None:
        return {"times": [], "peaks": []}
    lo, hi = heard.span(since, until)
    out: dict[str, Any] = {"times": heard.times_ns[lo:hi], "peaks": heard.peaks[lo:hi]}
    if audio and heard.keep_audio:
        out["audio"] = base64.b64encode(b"".join(f.tobytes() for f in heard.frames[lo:hi])).decode()
    return out


class Host:
    def __init__(self) -> None:
        self.callers: dict[str, Caller] = {}
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
            said = voice(float(cmd["seconds"]), float(cmd.get("freq", 300.0)), level=float(cmd.get("level", 0.3)))
            lead_in = round(float(cmd.get("lead_in_ms", 0.0)) * RATE / 1000)
            caller.say(np.concatenate([np.zeros(lead_in, np.int16), said]) if lead_in > 0 else said)
            return {}
        if op == "spoken":
            return {"starts": self.callers[cmd["name"]].speech_started_ns}
        if op == "heard":
            return heard_between(self.callers[cmd["name"]], int(cmd.get("since", 0)), cmd.get("until"),
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
                      "pacer_reanchors": sum(c.pacer.reanchors for c in self.callers.values() if c.pacer)}
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
                caller = Caller(spec["url"], spec["token"], identity=spec["name"], paced=True,
                                listen=spec.get("listen", True), frame_ms=spec.get("frame_ms", 10),
                                lead=spec.get("lead", 2), idle_dbfs=spec.get("idle_dbfs"),
                                keep_audio=spec.get("keep_audio", True))
                try:
                    async with asyncio.timeout(30):
                        await caller.start()
                except Exception as exc:
                    failed[spec["name"]] = f"{type(exc).__name__}: {exc}"
                    with contextlib.suppress(Exception):
                        await caller.stop()
                    return
                self.callers[spec["name"]] = caller
                joined.append(spec["name"])

        await asyncio.gather(*(one(s) for s in specs))
        return {"joined": joined, "failed": failed}


async def serve() -> None:
    await serve_json_lines(Host().handle, concurrent=True)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="caller_host %(levelname)s %(message)s")
    run_loop(serve())


if __name__ == "__main__":
    main()
