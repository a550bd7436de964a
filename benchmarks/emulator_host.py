"""The emulator in a process of its own for the scaling benchmark, with a scripted conversation on every socket.

``python -m benchmarks.emulator_host --seed 1``: prints ``{"event": "ready", "rest": …, "api_key": …,
"agent_id": …}`` on stdout, then answers JSON-lines commands (as :mod:`benchmarks.caller_host`):

- ``activity``: ``{"on": true}`` starts (or stops) the script on every conversation, present and future:
  pause 0.3–1.5 s, a 3 s reply (a continuous voice, 4× faster than real time in 100 ms chunks), then either
  an interruption after 0.5–2 s of playback (70 %) or the reply plays out, and again.
- ``report``: per conversation id, ``[[interruption event id, ns written], …]`` and reply counts, plus this
  process's CPU.
- ``stop``.

Records are drained every second (the interruption send times kept, the rest dropped), so a long run at
hundreds of conversations does not grow without bound; the emulator's received-audio buffer still grows
(32 kB/s per conversation at pcm_16000), which this process can afford for a few minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import resource
import sys
import time
from typing import Any

import numpy as np

from benchmarks.common import RATE, run_loop, voice
from benchmarks.procs import serve_json_lines
from emulator import Conversation, Emulator, EmulatorConfig
from emulator.signals import resample

log = logging.getLogger("benchmarks.emulator_host")


class Script:
    def __init__(self, emulator: Emulator, seed: int, reply_ms: int, interrupt_share: float) -> None:
        self.emulator = emulator
        self.rng = random.Random(seed)
        self.reply = resample(voice(reply_ms / 1000, 220.0, level=0.35), RATE, 24_000)
        self.interrupt_share = interrupt_share
        self.on = False
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.interruptions: dict[str, list[tuple[int, int]]] = {}
        self.replies: dict[str, int] = {}
        self._seen: dict[str, int] = {}

    def sweep(self) -> None:
        """Start the script on new conversations; collect interruption send times; drop old records."""
        for conv in self.emulator.conversations:
            cid = conv.conversation_id
            records = conv.records
            found = self.interruptions.setdefault(cid, [])
            for record in records:
                if record.direction == "out" and record.type == "interruption" and record.event_id is not None:
                    found.append((record.event_id, record.ns))
            del records[:]
            if self.on and cid not in self.tasks and not conv.ended:
                self.tasks[cid] = asyncio.get_running_loop().create_task(self._run(conv))

    async def _run(self, conv: Conversation) -> None:
        rng = self.rng
        cid = conv.conversation_id
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            while self.on and not conv.ended:
                await asyncio.sleep(rng.uniform(0.3, 1.5))
                reply = conv.trigger_reply(samples=self.reply)
                self.replies[cid] = self.replies.get(cid, 0) + 1
                await conv.wait_for(lambda r=reply: r.start_ns is not None, 10)
                assert reply.start_ns is not None
                if rng.random() < self.interrupt_share:
                    at = reply.start_ns + int(rng.uniform(0.5, 2.0) * 1e9)
                    await asyncio.sleep(max(0.0, (at - time.monotonic_ns()) / 1e9))
                    conv.interrupt()
                else:
                    end = reply.start_ns + reply.duration_ns
                    await asyncio.sleep(max(0.0, (end - time.monotonic_ns()) / 1e9) + 0.2)

    def stop(self) -> None:
        self.on = False
        for task in self.tasks.values():
            task.cancel()
        self.tasks.clear()


async def serve(args: argparse.Namespace) -> None:
    config = EmulatorConfig(reply_mode="echo", input_format="pcm_16000", output_format="pcm_24000",
                            record_text=False, seed=args.seed, idle_timeout_s=None)
    emulator = Emulator(config)
    await emulator.start()
    script = Script(emulator, args.seed, args.reply_ms, args.interrupt_share)

    async def sweeper() -> None:
        while True:
            await asyncio.sleep(1.0)
            script.sweep()

    sweep_task = asyncio.get_running_loop().create_task(sweeper())
    cpu0 = time.process_time()

    async def handle(cmd: dict[str, Any]) -> dict[str, Any]:
        op = cmd.get("op")
        if op == "activity":
            script.on = bool(cmd.get("on", True))
            if not script.on:
                script.stop()
            script.sweep()
            return {}
        if op == "report":
            script.sweep()
            usage = resource.getrusage(resource.RUSAGE_SELF)
            return {"interruptions": script.interruptions, "replies": script.replies,
                    "conversations": len(emulator.conversations), "active": len(emulator.active),
                    "cpu_s": time.process_time() - cpu0, "max_rss_mb": usage.ru_maxrss / 1024}
        if op == "stop":
            script.stop()
            return {}
        raise ValueError(f"unknown op {op!r}")

    try:
        await serve_json_lines(handle, ready={"event": "ready", "rest": emulator.rest_base_url,
                                              "api_key": emulator.api_key, "agent_id": config.agent_id})
    finally:
        sweep_task.cancel()
        script.stop()
        await emulator.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--reply-ms", type=int, default=3000)
    parser.add_argument("--interrupt-share", type=float, default=0.7)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="emulator_host %(levelname)s %(message)s")
    np.seterr(all="ignore")
    run_loop(serve(args))


if __name__ == "__main__":
    main()
