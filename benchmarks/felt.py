"""``python -m benchmarks.felt``: the felt barge-in through the real server, ducking on and off, slow engines.

Each trial, in one room: our bridge, the emulator playing a long 440 Hz tone reply (``tone``, the oracle: a
steady level whose drop is unambiguous), a *talker* who talks over it after 1–1.6 s (a 250 Hz harmonic voice,
loud from its first sample) and a *listener* who only listens. The emulator interrupts ``barge_in_delay_ms``
(60/300/600) after its VAD (60 ms of speech) hears the talk-over, as a slower hosted engine would.

What is measured, all on ``time.monotonic_ns()`` in this one process (run it in the network namespace,
``scripts/netns.sh exec``; it starts its own livekit-server):

- **felt** (``felt_ms``): the talker's first sample handed to its track → the first of five 10 ms frames in a
  row at the listener whose RMS is 12 dB below the listener's level over the 500 ms before the talk-over.
- **hop up** (``up_ms``): the talker's first sample → the bridge's first loud frame from the room
  (:class:`~benchmarks.taps.SessionTap`): Opus, the SFU, the bridge's AudioStream.
- **hop down** (``down_ms``): the bridge's first action on the voice after the talk-over (the duck decided,
  ``duck_started``; with ducking off the interruption's flush) → that listener frame: the pacer's next frame
  or the re-sent queue, the native queue tick, Opus, the SFU, the listener's jitter buffer.
- **decision** (``decision_ms``): the bridge's first loud frame → that action (ducking: the onset detector,
  30 ms of speech plus frame arrival; off: the engine's VAD and its delay and the trip to it and back).

Done-when of issue 13: with ducking, felt p95 ≤ (hop up + hop down) p95 + 40 ms, flat across engine delays.
The baseline in the same run is ducking off (today's bridge), same rooms, same engine delays.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sys
import time
from typing import Any

import numpy as np

from benchmarks.common import RESULTS, Progress, machine, run_loop, summarize, voice, write_json
from benchmarks.taps import SessionTap
from emulator import Emulator, EmulatorConfig
from scripts.caller import Caller, Heard
from scripts.livekit_server import LiveKitServer
from transport.config import RoomLinkConfig
from transport.events import Ducked
from transport.livekit_token import mint_token
from transport.session import BridgeSession, EngineSettings, SessionConfig

AGENT = "bridge-agent"
KEY, SECRET = "APIfeltBenchKey", "felt-bench-secret-0123456789abcdefghijklmnop"
LOUD = 1000
MS = 1_000_000


def first_down(heard: Heard, onset_ns: int, until_ns: int) -> tuple[int | None, float]:
    """The first of five frames in a row after ``onset_ns`` 12 dB below the level of the 500 ms before it
    (five, so a concealment glitch of a loaded machine is not taken for the duck); and that level."""
    frames = list(zip(heard.times_ns, heard.frames, strict=True))
    pre = [f for t, f in frames if onset_ns - 600 * MS <= t < onset_ns - 100 * MS]
    if not pre:
        return None, 0.0
    level = float(np.sqrt(np.mean(np.concatenate(pre).astype(np.float64) ** 2)))
    run: list[int] = []
    for t, f in frames:
        if not onset_ns <= t < until_ns or not f.size:
            continue
        if float(np.sqrt(np.mean(f.astype(np.float64) ** 2))) <= level / 4:
            run.append(t)
            if len(run) == 5:
                return run[0], level
        else:
            run = []
    return None, level


async def trial(server: LiveKitServer, duck_db: float, delay_ms: int, k: int, rng: random.Random) -> dict[str, Any]:
    room = f"felt-{int(duck_db)}-{delay_ms}-{k}"
    emu = Emulator(EmulatorConfig(reply_mode="tone", tone_hz=440.0, barge_in_delay_ms=delay_ms,
                                  think_time_ms=3000.0, record_text=False))
    await emu.start()
    token = mint_token(KEY, SECRET, room=room, identity=AGENT, agent=True)
    engine = EngineSettings(api_key=emu.api_key, agent_id=emu.config.agent_id, api_base=emu.rest_base_url)
    tap = SessionTap()
    session = BridgeSession(SessionConfig(room=RoomLinkConfig(server.url, token, identity=AGENT), engine=engine,
                                          start_when="immediately", end_when_empty=False, duck_db=duck_db),
                            hooks=tap.hooks())
    actions: list[int] = []  # when the bridge acted on the voice: a duck decided, an interruption's flush

    async def watch() -> None:
        async for event in session.events():
            if isinstance(event, Ducked):
                actions.append(event.at_ns)

    await session.start()
    watcher = asyncio.ensure_future(watch())
    out: dict[str, Any] = {"duck_db": duck_db, "engine_delay_ms": delay_ms, "trial": k}
    try:
        conversation = await emu.next_conversation()
        talker = Caller(server.url, mint_token(KEY, SECRET, room=room, identity="talker"), identity="talker")
        listener = Caller(server.url, mint_token(KEY, SECRET, room=room, identity="listener"), identity="listener")
        async with talker, listener:
            async with asyncio.timeout(10):
                while AGENT not in listener.heard:
                    await asyncio.sleep(0.02)
            heard = listener.heard[AGENT]
            reply = conversation.trigger_reply("tone", ms=8000)
            async with asyncio.timeout(10):
                while heard.first_loud_after(reply.trigger_ns, LOUD) is None:
                    await asyncio.sleep(0.02)
            await asyncio.sleep(1.0 + rng.uniform(0, 0.6))
            talker.say(voice(1.2, 250.0))
            async with asyncio.timeout(10):
                while not session.interruptions:
                    await asyncio.sleep(0.02)
            await asyncio.sleep(0.5)
        onset = talker.speech_started_ns[-1]
        interrupted = session.interruptions[0]["recv_ns"]
        down_at, level = first_down(heard, onset, interrupted + 1000 * MS)
        up_at = next((t for t, p in tap.caller_frames if t >= onset and p > LOUD), None)
        actions.append(session.interruptions[0]["silenced_ns"])
        clear_at = min(t for t in actions if t >= onset)
        out.update({
            "felt_ms": (down_at - onset) / MS if down_at else None,
            "up_ms": (up_at - onset) / MS if up_at else None,
            "down_ms": (down_at - clear_at) / MS if down_at and clear_at else None,
            "decision_ms": (clear_at - up_at) / MS if clear_at and up_at else None,
            "interruption_ms": (interrupted - onset) / MS,
            "pre_level_dbfs": 20 * float(np.log10(level / 32768 + 1e-12)),
            "duck": session.metrics()["duck"],
            "listener_rms": [(t - onset, float(np.sqrt(np.mean(f.astype(np.float64) ** 2))))
                             for t, f in zip(heard.times_ns, heard.frames, strict=True)
                             if onset - 300 * MS <= t < interrupted + 300 * MS],
        })
    finally:
        watcher.cancel()
        await session.stop()
        await emu.stop()
    return out


async def run(trials: int, progress: Progress) -> list[dict[str, Any]]:
    server = LiveKitServer(api_key=KEY, api_secret=SECRET)
    server.start()
    rng = random.Random(13)
    rows: list[dict[str, Any]] = []
    try:
        for k in range(trials):
            for delay in (60, 300, 600):
                for duck_db in (18.0, 0.0):  # alternate, so load drifts hit both alike
                    try:
                        rows.append(await trial(server, duck_db, delay, k, rng))
                    except TimeoutError:
                        rows.append({"duck_db": duck_db, "engine_delay_ms": delay, "trial": k, "error": "timeout"})
                    r = rows[-1]
                    progress(f"trial {k} delay {delay} duck {duck_db:.0f}: felt {r.get('felt_ms')} ms")
    finally:
        with contextlib.suppress(Exception):
            server.stop()
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.felt", description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=8, help="per (ducking on/off, engine delay); default 8")
    args = ap.parse_args(argv)
    progress = Progress("felt")
    t0 = time.monotonic()
    rows = run_loop(run(args.trials, progress))
    table: dict[str, Any] = {}
    lines = ["| ducking | engine delay | felt p50 / p95 | hop up p50 / p95 | hop down p50 / p95 | "
             "decision p50 / p95 | target: hops p95 + 40 |", "|---|---|---|---|---|---|---|"]
    for duck_db in (18.0, 0.0):
        for delay in (60, 300, 600):
            sel = [r for r in rows if r["duck_db"] == duck_db and r["engine_delay_ms"] == delay and "error" not in r]
            s = {m: summarize(r[m] for r in sel) for m in ("felt_ms", "up_ms", "down_ms", "decision_ms")}
            hops = summarize((r["up_ms"] or 0) + (r["down_ms"] or 0) for r in sel)
            name = f"{'on' if duck_db else 'off'} {delay}"
            table[name] = {**s, "hops_ms": hops}
            target = (hops["p95"] or 0) + 40
            lines.append(f"| {'on, ' + str(int(duck_db)) + ' dB' if duck_db else 'off'} | {delay} ms | "
                         f"{_f(s['felt_ms'])} | {_f(s['up_ms'])} | {_f(s['down_ms'])} | {_f(s['decision_ms'])} | "
                         f"{target:.0f} |")
    write_json(RESULTS / "felt.json", {"machine": machine(), "seconds": time.monotonic() - t0,
                                        "summary": table, "trials": rows})
    print("\n".join(lines))
    return 0


def _f(s: dict[str, Any]) -> str:
    if not s["n"]:
        return "-"
    return f"{s['p50']:.0f} / {s['p95']:.0f}"


if __name__ == "__main__":
    sys.exit(main())
