"""``python -m benchmarks.flood``: event-loop lag across 10 sessions while one receives huge ``audio`` messages.

All sessions share one event loop, as in ``runner.py``. Each is an :class:`~transport.engine_client.EngineClient`
talking to the emulator, feeding every ``audio`` event into its own :class:`~core.downlink.Downlink` (decode,
resample to 48 kHz, playout buffer) from the reader's callback, as the session does, and a 10 ms pacer tick
per session pops frames. Nine sessions receive an ordinary tone reply from the emulator; the tenth talks to
a flooding engine in a process of its own (so building and sending the huge messages costs this loop
nothing), which at the start of the measurement window sends ``--messages`` audio messages of ``--mib`` MiB
each (pcm_16000: a 15 MiB message is ~6 minutes of audio). A probe task sleeps 5 ms at a time and records
how late it wakes: that lateness is what every other session's pacer, reader and pong suffer.

Two configurations in the same run, same emulator: **guarded** (this project's defaults: socket max_size
2 MiB, at most 10 s of audio per message, refused before base64 decoding) and **unguarded** (max_size 16 MiB
as the Python SDK, no per-message duration bound: what the bridge did before). Figures: loop lag p50/p95/p99
and max during the flood window (ms), and whether the flooded session got through it (reconnected) and the
others kept playing. Excludes: LiveKit (the stall is in the engine reader; room I/O would only add load).
Output: the table on stdout, ``benchmarks/results/flood.json`` (every lag sample) and ``flood.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import RESULTS, machine, run_loop, summarize, write_json
from core.clock import MonotonicClock
from core.downlink import Downlink
from emulator import Emulator, EmulatorConfig
from transport.engine_client import EngineClient
from transport.engine_protocol import AgentAudio, ConversationMetadata, Event
from transport.signed_url import signed_url_provider, static_url

SESSIONS = 10
PROBE_S = 0.005
FLOOD_DELAY_S = 1.0  # after the flooded conversation's metadata: the baseline window


async def serve_flood(mib: float, messages: int) -> None:
    """The flooding engine (run in a subprocess): metadata, then after FLOOD_DELAY_S the huge messages."""
    from websockets.asyncio.server import ServerConnection, serve

    text = huge_audio(mib, 1000)
    metadata = json.dumps({"type": "conversation_initiation_metadata", "conversation_initiation_metadata_event": {
        "conversation_id": "conv_flood", "agent_output_audio_format": "pcm_16000",
        "user_input_audio_format": "pcm_16000"}})

    async def engine(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.send(metadata)
        await asyncio.sleep(FLOOD_DELAY_S)
        for _ in range(messages):
            try:
                await ws.send(text)
            except Exception:
                break
        await ws.wait_closed()

    async with serve(engine, "127.0.0.1", 0, max_size=None, compression=None) as server:
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Event().wait()


@dataclass
class Session:
    down: Downlink | None = None
    frames: int = 0
    audio_events: int = 0
    clock: MonotonicClock = field(default_factory=MonotonicClock)

    def on_event(self, event: Event, recv_ns: int) -> None:
        if isinstance(event, ConversationMetadata):
            self.down = Downlink(event.output_format)
        elif isinstance(event, AgentAudio) and self.down is not None:
            self.audio_events += 1
            self.down.push(event.audio, recv_ns, event_id=event.event_id)

    async def pace(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if self.down is not None:
                out = self.down.due(self.clock.now_ns())
                if out is not None:
                    self.frames += out.size // 480
            await asyncio.sleep(0.01)


def huge_audio(mib: float, event_id: int) -> str:
    raw = int(mib * 1024 * 1024 * 3 / 4) // 2 * 2
    payload = base64.b64encode(np.zeros(raw // 2, dtype=np.int16).tobytes()).decode()
    return json.dumps({"type": "audio", "audio_event": {"audio_base_64": payload, "event_id": event_id}})


async def probe(lags: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        before = time.perf_counter()
        await asyncio.sleep(PROBE_S)
        lags.append((time.perf_counter() - before - PROBE_S) * 1000.0)


async def measure(name: str, client_kwargs: dict[str, Any], mib: float, messages: int) -> dict[str, Any]:
    config = EmulatorConfig(port=0, reply_mode="tone", record_text=False, ping_interval_s=None,
                            idle_timeout_s=None)
    async with Emulator(config) as emu:
        flooder = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "benchmarks.flood", "--serve-flood", "--mib", str(mib), "--messages", str(messages),
            stdout=asyncio.subprocess.PIPE)
        assert flooder.stdout is not None
        port = int((await flooder.stdout.readline()).decode())
        sessions = [Session() for _ in range(SESSIONS)]
        provider = signed_url_provider(emu.api_key, emu.config.agent_id, base_url=emu.rest_base_url)
        clients = [EngineClient(provider, s.on_event, **client_kwargs) for s in sessions[1:]]
        for client in clients:
            await client.start()
        conversations = [await emu.next_conversation() for _ in clients]
        for conv in conversations:
            conv.trigger_reply("tone", ms=8000)
        stop = asyncio.Event()
        pacers = [asyncio.create_task(s.pace(stop)) for s in sessions]
        baseline: list[float] = []
        probe_task = asyncio.create_task(probe(baseline, stop))
        await asyncio.sleep(0.5)
        clients.insert(0, EngineClient(static_url(f"ws://127.0.0.1:{port}/"), sessions[0].on_event,
                                       **client_kwargs))
        await clients[0].start()
        await asyncio.sleep(FLOOD_DELAY_S * 0.9)
        stop.set()
        await probe_task
        stop = asyncio.Event()
        lags: list[float] = []
        probe_task = asyncio.create_task(probe(lags, stop))
        pacers += [asyncio.create_task(s.pace(stop)) for s in sessions]
        started = time.monotonic()
        others_before = [s.frames for s in sessions[1:]]
        await asyncio.sleep(3.0)
        flood_s = time.monotonic() - started
        stop.set()
        await probe_task
        await asyncio.gather(*pacers, return_exceptions=True)
        others_played = [s.frames - b for s, b in zip(sessions[1:], others_before, strict=True)]
        result = {
            "name": name, "client": client_kwargs, "message_mib": mib, "messages": messages,
            "lag_ms_baseline": summarize(baseline), "lag_ms_flood": summarize(lags), "lag_samples_ms": lags,
            "flooded_connects": clients[0].counters.connects, "flooded_close_code": clients[0].close_code,
            "flooded_protocol_errors": dict(clients[0].counters.by_kind),
            "flooded_audio_events": sessions[0].audio_events,
            "others_frames_during_flood_min": min(others_played), "window_s": flood_s,
        }
        for client in clients:
            await client.close()
        flooder.kill()
        await flooder.wait()
        return result


def plot(results: list[dict[str, Any]], path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(8, 4))
    for r in results:
        lags = np.sort(np.asarray(r["lag_samples_ms"]))
        if lags.size:
            ax.plot(lags, np.arange(1, lags.size + 1) / lags.size, label=r["name"])
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlabel("event-loop lag of a 5 ms sleep during the flood (ms)")
    ax.set_ylabel("fraction of wakeups")
    ax.set_title(f"{SESSIONS} sessions on one loop, one flooded with huge audio messages")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


async def main_async(mib: float, messages: int) -> list[dict[str, Any]]:
    unguarded = {"max_message_bytes": 16 * 1024 * 1024 + 65536, "max_audio_ms_per_message": 10**9}
    # Two floods: a few messages as large as the (15 MiB), and many just under the guarded max_size.
    return [
        await measure(f"guarded, {messages} x {mib:g} MiB", {}, mib, messages),
        await measure(f"unguarded, {messages} x {mib:g} MiB", unguarded, mib, messages),
        await measure("guarded, 30 x 1.9 MiB", {}, 1.9, 30),
        await measure("unguarded, 30 x 1.9 MiB", unguarded, 1.9, 30),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.flood", description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=float, default=15.0, help="size of each huge audio message")
    parser.add_argument("--messages", type=int, default=4, help="huge messages sent to the flooded session")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--serve-flood", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_flood:
        asyncio.run(serve_flood(args.mib, args.messages))
        return 0
    results = run_loop(main_async(args.mib, args.messages))
    print(f"{'configuration':28} {'lag p50':>8} {'p95':>8} {'p99':>8} {'max':>8} ms  {'base p99':>8}  "
          "others' min frames/3 s  flooded: connects, errors")
    for r in results:
        f = r["lag_ms_flood"]
        print(f"{r['name']:28} {f['p50']:8.2f} {f['p95']:8.2f} {f['p99']:8.2f} {f['max']:8.1f}     "
              f"{r['lag_ms_baseline']['p99']:8.2f}  {r['others_frames_during_flood_min']:22d}  "
              f"{r['flooded_connects']}, {r['flooded_protocol_errors'] or r['flooded_close_code']}")
    write_json(args.out / "flood.json", {"machine": machine(), "results": results})
    plot(results, args.out / "flood.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
