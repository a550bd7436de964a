"""The second reference of the scaling benchmark: N naive bridges (:mod:`benchmarks.naive`) in one process.

``python -m benchmarks.naive_host``, the same JSON-lines commands and probes as :mod:`benchmarks.bridge_host`.
The null floor (:mod:`benchmarks.null_host`) holds no engine conversation; this process holds one per room,
done the way a bridge is first written: each caller frame (16 kHz, 10 ms, from the SDK's resampler) sent at
once as a ``user_audio_chunk``, each engine ``audio`` event decoded, resampled by one ``soxr.resample`` call
and captured. What ours costs above this is our design (playout buffer, pacer, ducking, agent state,
gates); what this costs above the null floor is the conversation itself (a JSON message each way per chunk).
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import logging
import signal
import sys
from typing import Any

from benchmarks.bridge_host import Host, serve_host, zero_counters
from benchmarks.common import run_loop
from benchmarks.naive import NaiveBridge
from transport.signed_url import fetch_signed_url

log = logging.getLogger("benchmarks.naive_host")


class NaiveHost(Host):
    def __init__(self) -> None:
        super().__init__()
        self.bridges: list[NaiveBridge] = []

    async def start(self, cmd: dict[str, Any]) -> dict[str, Any]:
        engine = cmd["engine"]

        async def make(_room: str, token: str) -> NaiveBridge:
            url = await fetch_signed_url(engine["api_key"], engine["agent_id"], base_url=engine["api_base"])
            return NaiveBridge(cmd["livekit_url"], token, url)

        self.bridges = await self.start_rooms(cmd, make)
        return {"started": len(self.bridges), "failed": self.failed, "rss_idle_mb": self.rss_idle}

    def _counters(self) -> dict[str, int]:
        c = zero_counters()
        for bridge in getattr(self, "bridges", ()):
            c["frames_out"] += len(bridge.captures)
            c["chunks_sent"] += bridge.chunks_sent
            c["audio_events"] += len(bridge.audio_events)
            c["interruptions"] += len(bridge.interruptions)
        return c

    def measure_stop(self) -> dict[str, Any]:
        result = super().measure_stop()
        start = self._mark["wall"]
        result["sessions"] = len(self.bridges)
        result["session_states"] = {"running": len(self.bridges)}
        # The interruption's receive and the queue clear after it, joined with the emulator's send times.
        result["interruptions"] = [
            [b.conversation_id, rec["event_id"], rec["loop_ns"], clear]
            for b in self.bridges for rec, clear in zip(b.interruptions, b.clears, strict=False)
            if rec["loop_ns"] >= start]
        return result

    async def stop(self) -> dict[str, Any]:
        await self._probe.stop()
        await asyncio.gather(*(b.stop() for b in self.bridges), return_exceptions=True)
        return {}


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="naive_host %(levelname)s %(message)s")
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    run_loop(serve_host(NaiveHost()))


if __name__ == "__main__":
    main()
