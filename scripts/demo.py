"""``make demo``: a whole call on this machine, narrated.

Starts the real livekit-server (on 127.0.0.1:7880 when free), then ``runner.py --room demo`` with the
embedded Speech Engine emulator, then a synthetic caller that joins the room, speaks, listens to the agent's
reply and talks over a long reply, printing one line per turn. Stops everything it started after
``--turns`` turns, ``--seconds`` seconds, or Ctrl-C.

It also starts the browser path: ``runner.py --worker`` (explicit dispatch, agent ``elevenlabs-bridge``) and
the token server, and prints the page's URL. With ``--browser`` it keeps them running after the scripted
turns, until Ctrl-C, so you can talk to the emulated agent from a browser on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from pathlib import Path

import numpy as np

from scripts.caller import RATE, Caller, Heard
from scripts.livekit_server import LiveKitServer, LiveKitServerError
from transport.livekit_token import mint_token
from transport.token_server import TokenServer, TokenServerConfig, dev_open

ROOT = Path(__file__).resolve().parents[1]
LOUD = 800  # int16 peak that counts as "the agent is speaking" (about -32 dBFS)


def speech(seconds: float, seed: int) -> np.ndarray:
    """A voice-like test signal: a 140 Hz buzz with formant-ish overtones and a 4 Hz syllable envelope."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    voice = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 6)) / (i + 1) for i, f in enumerate((140, 280, 700, 1200)))
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * 4 * t)
    return (voice / 2.1 * envelope * 0.35 * 32767).astype(np.int16)


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


async def wait_loud(heard: Heard, since_ns: int, timeout: float) -> int | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        t = heard.first_loud_after(since_ns, LOUD)
        if t is not None:
            return t
        await asyncio.sleep(0.02)
    return None


async def wait_quiet(heard: Heard, since_ns: int, quiet_ms: int, timeout: float) -> int | None:
    """Arrival time of the last loud frame after ``since_ns``, once ``quiet_ms`` of quiet followed it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        last = heard.last_loud_time(LOUD)
        if last is not None and time.monotonic_ns() - max(last, since_ns) > quiet_ms * 1_000_000:
            return last
        await asyncio.sleep(0.02)
    return None


async def converse(url: str, token: str, turns: int) -> None:
    async with Caller(url, token, identity="demo-caller") as caller:
        print("caller: joined room 'demo'; waiting for the agent", flush=True)
        async with asyncio.timeout(30):
            while "elevenlabs-agent" not in caller.heard:
                await asyncio.sleep(0.05)
        heard = caller.heard["elevenlabs-agent"]
        for turn in range(1, turns + 1):
            barge = turn % 2 == 0
            caller.say(speech(1.2, turn))
            await caller.wait_said()
            said_ns = time.monotonic_ns()
            first = await wait_loud(heard, said_ns, 10)
            if first is None:
                print(f"turn {turn}: no reply within 10 s", flush=True)
                continue
            if not barge:
                await wait_quiet(heard, first, 400, 30)
                print(f"turn {turn}: you spoke 1.2 s; the reply started {(first - said_ns) / 1e6:.0f} ms after you "
                      "stopped (the engine waits ~400 ms of silence to end your turn) and played to the end",
                      flush=True)
                continue
            await asyncio.sleep(0.8)
            caller.say(speech(0.8, 100 + turn))
            barge_ns = time.monotonic_ns()
            last = await wait_quiet(heard, barge_ns, 300, 10)
            if last is None:
                print(f"turn {turn}: the agent kept talking over you", flush=True)
                continue
            print(f"turn {turn}: reply started {(first - said_ns) / 1e6:.0f} ms after you stopped; you talked over it "
                  f"and the agent went silent {max(0, last - barge_ns) / 1e6:.0f} ms after you started "
                  "(the engine needs ~60 ms of speech to call it a barge-in)", flush=True)
            await caller.wait_said()
            await wait_quiet(heard, time.monotonic_ns(), 500, 20)


async def main_async(args: argparse.Namespace) -> int:
    port = 7880 if port_free(7880) else None
    try:
        server = LiveKitServer(port=port).start()
    except LiveKitServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"livekit-server on {server.url} (log: {server.log_path})", flush=True)
    env = dict(os.environ, LIVEKIT_URL=server.url, LIVEKIT_API_KEY=server.api_key,
               LIVEKIT_API_SECRET=server.api_secret, PYTHONUNBUFFERED="1")
    for key in ("ELEVENLABS_API_KEY", "SPEECH_ENGINE_ID"):
        env.pop(key, None)  # the demo always uses the embedded emulator
    bridge = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "runner.py"), "--room", "demo", "--emulator", "--reply", "speech", "--stay",
        "--log-level", args.log_level, env=env, cwd=ROOT)
    worker = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "runner.py"), "--worker", "--emulator", "--agent-name", "elevenlabs-bridge",
        "--reply", "echo", "--log-level", args.log_level, env=env, cwd=ROOT)
    print("runner.py --room demo started (embedded Speech Engine emulator)", flush=True)
    token = mint_token(server.api_key, server.api_secret, room="demo", identity="demo-caller")
    page = TokenServer(TokenServerConfig(livekit_url=server.url, api_key=server.api_key,
                                         api_secret=server.api_secret, agent_name="elevenlabs-bridge",
                                         authorize=dev_open()),
                       port=args.page_port if port_free(args.page_port) else 0)
    try:
        await page.start()
        print(f"browser path: open {page.url}/ — a worker (runner.py --worker) is dispatched into your room",
              flush=True)
        async with asyncio.timeout(args.seconds):
            await converse(server.url, token, args.turns)
            if args.browser:
                print("demo: scripted turns done; the page stays up until Ctrl-C", flush=True)
                await asyncio.Event().wait()
    except TimeoutError:
        print(f"demo: {args.seconds:.0f} s are up", flush=True)
    finally:
        await page.stop()
        for proc in (bridge, worker):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for proc in (bridge, worker):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 15)
            if proc.returncode is None:
                proc.kill()
        server.stop()
        print("demo: stopped the bridge, the worker and the server", flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument("--browser", action="store_true", help="keep the page and the worker up until Ctrl-C")
    parser.add_argument("--page-port", type=int, default=8080)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(main_async(args))
    return 130


if __name__ == "__main__":
    sys.exit(main())
