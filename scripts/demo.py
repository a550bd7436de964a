"""``make demo``: the whole Speech Engine architecture on this machine, as a call you can listen to.

Starts the real livekit-server, the example brain server (``examples/brain_server.py``, the official SDK's
``SpeechEngineServer`` with authentication on), the Speech Engine emulator (in this process), points the
engine at the brain through its REST resource (``PATCH /v1/speech-engine/{id}``, as
``transport.engine_admin`` does against the real service), and starts the bridge (``runner.py --room demo``)
against the emulator with signed URLs, exactly as against ElevenLabs. Then a caller joins and speaks real
synthesized sentences (espeak-ng), talks over the agent once, and a second caller joins for one turn.

Every turn prints one line. At the end it writes ``demo-call.wav`` (stereo: left the callers as they spoke,
right the agent as the first caller heard it) and ``demo-call.png`` (both waveforms on one time axis, with
turn ends, replies, the interruption and the silence that followed it marked) and says where.

The emulator has no speech recognition: this script knows what its callers say and hands the emulator the
words in order (``Emulator.transcriber``); without that the brain would get ``[speech 1.2 s]`` placeholders.

``--browser`` also starts the browser path (``runner.py --worker`` and the token server) and keeps it up
after the scripted call until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import signal
import socket
import sys
import time
from collections import deque
from pathlib import Path

import numpy as np
import numpy.typing as npt

from emulator import Conversation, Emulator, EmulatorConfig
from emulator.records import Reply
from emulator.tts import TtsUnavailable, synthesize
from scripts.caller import RATE, Caller, Heard
from scripts.demo_record import Marks, plot, tracks, write_wav
from scripts.livekit_server import LiveKitServer, LiveKitServerError
from scripts.ports import free_tcp_port
from transport.engine_admin import EngineAdmin, EngineRef
from transport.livekit_token import mint_token
from transport.token_server import TokenServer, TokenServerConfig, dev_open

ROOT = Path(__file__).resolve().parents[1]
AGENT = "elevenlabs-agent"
ENGINE_ID = "seng_demo"
LOUD = 800  # int16 peak that counts as "the agent is speaking" (about -32 dBFS)
Int16Array = npt.NDArray[np.int16]

# (who, what they say, whether they talk over the agent's answer to the previous line)
SCRIPT: tuple[tuple[str, str, bool], ...] = (
    ("caller", "Hello, is anyone there?", False),
    ("caller", "Can you help me with a problem?", False),
    ("caller", "Sorry, what time is it?", True),
    ("second-caller", "Hi, I am the second caller. What is your name?", False),
    ("caller", "Thank you. Goodbye.", False),
)


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


async def until(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.02)
    return False


async def wait_listening(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
            continue
        writer.close()
        return


class Script:
    """The words behind each utterance, in the order they are spoken: the emulator's stand-in for ASR."""

    def __init__(self) -> None:
        self._pending: deque[str] = deque()

    def spoken(self, text: str) -> None:
        self._pending.append(text)

    def transcribe(self, samples: Int16Array, rate: int) -> str | None:
        if samples.size < rate // 4 or not self._pending:
            return None  # a cough or an unscripted sound: the brain gets the honest placeholder
        return self._pending.popleft()


def quiet_since(heard: Heard, since_ns: int, quiet_ms: int) -> int | None:
    last = heard.last_loud_time(LOUD)
    if last is not None and time.monotonic_ns() - max(last, since_ns) > quiet_ms * 1_000_000:
        return last
    return None


class Call:
    def __init__(self, url: str, api_key: str, api_secret: str, emulator: Emulator, script: Script) -> None:
        self.url, self._key, self._secret = url, api_key, api_secret
        self.emulator, self.script = emulator, script
        self.marks = Marks()
        self.callers: dict[str, Caller] = {}
        self.conversation: Conversation | None = None
        self.t0 = 0
        self.turn = 0

    async def join(self, identity: str) -> Caller:
        caller = Caller(self.url, mint_token(self._key, self._secret, room="demo", identity=identity),
                        identity=identity)
        await caller.start()
        self.callers[identity] = caller
        if not await until(lambda: AGENT in caller.heard, 30):
            raise RuntimeError(f"{identity} never heard the agent join")
        return caller

    async def say(self, who: str, text: str) -> tuple[int, int]:
        """Queue ``text`` for ``who``; (voice onset, voice end) in monotonic ns, without espeak's padding."""
        caller = self.callers[who]
        samples = await synthesize(text, RATE)
        self.script.spoken(text)
        before = len(caller.speech_started_ns)
        caller.say(samples)
        await until(lambda: len(caller.speech_started_ns) > before, 5)
        start = caller.speech_started_ns[before]
        self.marks.said.append((who, start, samples))
        # espeak-ng pads with silence: the voice itself runs from the first to the last loud sample.
        loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > LOUD)
        first, last = (int(loud[0]), int(loud[-1])) if loud.size else (0, samples.size)
        return start + first * 1_000_000_000 // RATE, start + last * 1_000_000_000 // RATE

    async def next_reply(self, timeout: float = 20.0) -> Reply:
        assert self.conversation is not None
        reply = await self.conversation.next_reply(timeout)
        if reply.utterance is not None:
            self.marks.turn_ends.append(reply.utterance.end_ns)
        return reply

    async def run(self) -> None:
        first = await self.join("caller")
        self.t0 = time.monotonic_ns()
        print("caller: joined room 'demo'; the agent is there", flush=True)
        self.conversation = await self.emulator.next_conversation(30)
        heard = first.heard[AGENT]
        pending_barge: tuple[str, str] | None = None
        for index, (who, text, _) in enumerate(SCRIPT):
            if (who, text) == pending_barge:
                continue
            if who not in self.callers:
                await self.join(who)
                print(f"{who}: joined the room", flush=True)
            _, stopped = await self.say(who, text)
            await self.callers[who].wait_said()
            reply = await self.next_reply()
            first_heard = await self._first_heard(heard, stopped)
            barge = SCRIPT[index + 1] if index + 1 < len(SCRIPT) and SCRIPT[index + 1][2] else None
            if barge is not None:
                await self._talk_over(heard, who, text, reply, stopped, first_heard, barge)
                pending_barge = (barge[0], barge[1])
                continue
            await self._played(heard, reply, stopped)
            self._line(who, text, reply, stopped, first_heard, "played to the end")
            if who != "caller":
                await self.callers.pop(who).stop()
                print(f"{who}: left the room", flush=True)

    @staticmethod
    async def _played(heard: Heard, reply: Reply, since: int) -> None:
        await until(lambda: reply.done, 30)
        await until(lambda: quiet_since(heard, since, 500) is not None, 30)

    async def _first_heard(self, heard: Heard, since: int) -> int | None:
        found: list[int] = []

        def loud() -> bool:
            t = heard.first_loud_after(since, LOUD)
            if t is not None:
                found.append(t)
            return t is not None

        await until(loud, 20)
        return found[0] if found else None

    def _line(self, who: str, text: str, reply: Reply, stopped: int, first_heard: int | None, how: str) -> None:
        self.turn += 1
        said = " ".join(reply.phrases) or "(nothing)"
        if reply.interrupted_ns is not None and reply.start_ns is not None:  # what the caller heard of it
            heard = min(1.0, (reply.interrupted_ns - reply.start_ns) / max(1, reply.duration_ns))
            said = said[:int(len(said) * heard)].rstrip() + "…"
        if first_heard is not None:
            self.marks.replies.append((first_heard, said))
        start = f"{(first_heard - stopped) / 1e6:.0f} ms after {who} stopped" if first_heard else "never"
        print(f"turn {self.turn} ({who}): \"{text}\" -> agent: \"{said}\" (heard {start}; {how})", flush=True)

    async def _talk_over(self, heard: Heard, who: str, text: str, reply: Reply, stopped: int,
                         first_heard: int | None, barge: tuple[str, str, bool]) -> None:
        await asyncio.sleep(1.2)
        barge_start, stopped2 = await self.say(barge[0], barge[1])
        await until(lambda: reply.interrupted_ns is not None, 10)
        await until(lambda: quiet_since(heard, barge_start, 300) is not None, 10)
        silent = heard.last_loud_time(LOUD) or barge_start
        silent = max(silent, barge_start)
        if reply.interrupted_ns is not None:
            self.marks.interruption = (barge_start, reply.interrupted_ns, silent)
        engine = f"the engine interrupted {(reply.interrupted_ns - barge_start) / 1e6:.0f} ms and " \
            if reply.interrupted_ns is not None else ""
        self._line(who, text, reply, stopped, first_heard,
                   f"{barge[0]} talked over it: {engine}the agent went silent {(silent - barge_start) / 1e6:.0f} ms "
                   "after they started")
        await self.callers[barge[0]].wait_said()
        second = await self.next_reply()
        first2 = await self._first_heard(heard, stopped2)
        await self._played(heard, second, stopped2)
        self._line(barge[0], barge[1], second, stopped2, first2, "played to the end")


# ------------------------------------------------------------------ processes


async def stop_process(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proc.wait(), 15)
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


async def main_async(args: argparse.Namespace) -> int:
    try:
        await synthesize("test", RATE)
    except TtsUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    port = 7880 if port_free(7880) else None
    try:
        server = LiveKitServer(port=port).start()
    except LiveKitServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"livekit-server on {server.url} (log: {server.log_path})", flush=True)
    api_key = f"sk_demo_{secrets.token_hex(12)}"  # a local key shared by the emulator and the brain
    script = Script()
    emulator = Emulator(EmulatorConfig(api_key=api_key, agent_id=ENGINE_ID, output_format="pcm_24000",
                                       think_time_ms=150.0))
    emulator.transcriber = script.transcribe
    procs: list[asyncio.subprocess.Process] = []
    page: TokenServer | None = None
    env = dict(os.environ, LIVEKIT_URL=server.url, LIVEKIT_API_KEY=server.api_key,
               LIVEKIT_API_SECRET=server.api_secret, PYTHONUNBUFFERED="1")
    call = Call(server.url, server.api_key, server.api_secret, emulator, script)
    try:
        await emulator.start()
        brain_port = free_tcp_port()
        procs.append(await asyncio.create_subprocess_exec(
            sys.executable, "-m", "examples.brain_server", "--port", str(brain_port), "--log-level", args.log_level,
            env=dict(env, ELEVENLABS_API_KEY=api_key), cwd=ROOT))
        await wait_listening(brain_port)
        admin = EngineAdmin(api_key, base_url=emulator.rest_base_url)
        await admin.patch(EngineRef.of(ENGINE_ID), {"speech_engine": {"ws_url": f"ws://127.0.0.1:{brain_port}/"}})
        print(f"brain server (examples/brain_server.py, the SDK's SpeechEngineServer) on ws://127.0.0.1:{brain_port}/;"
              f" engine {ENGINE_ID} points at it", flush=True)
        procs.append(await asyncio.create_subprocess_exec(
            sys.executable, str(ROOT / "runner.py"), "--room", "demo", "--stay", "--log-level", args.log_level,
            env=dict(env, ELEVENLABS_API_KEY=api_key, SPEECH_ENGINE_ID=ENGINE_ID,
                     ELEVENLABS_API_BASE=emulator.rest_base_url), cwd=ROOT))
        print(f"bridge: runner.py --room demo, engine = the emulator at {emulator.rest_base_url} (signed URLs)",
              flush=True)
        if args.browser:
            procs.append(await asyncio.create_subprocess_exec(
                sys.executable, str(ROOT / "runner.py"), "--worker", "--emulator", "--agent-name",
                "elevenlabs-bridge", "--log-level", args.log_level, env=env, cwd=ROOT))
            page = TokenServer(TokenServerConfig(livekit_url=server.url, api_key=server.api_key,
                                                 api_secret=server.api_secret, agent_name="elevenlabs-bridge",
                                                 authorize=dev_open()),
                               port=args.page_port if port_free(args.page_port) else 0)
            await page.start()
            print(f"browser path: open {page.url}/ — a worker (runner.py --worker) is dispatched into your room",
                  flush=True)
        async with asyncio.timeout(args.seconds):
            await call.run()
            if args.browser:
                print("demo: scripted call done; the page stays up until Ctrl-C", flush=True)
                await asyncio.Event().wait()
    except TimeoutError:
        print(f"demo: {args.seconds:.0f} s are up", flush=True)
    finally:
        if call.t0:
            heard = call.callers["caller"].heard.get(AGENT) if "caller" in call.callers else None
            left, right = tracks(call.marks, heard, call.t0)
            out = Path(args.out_dir).resolve()
            out.mkdir(parents=True, exist_ok=True)
            write_wav(out / "demo-call.wav", left, right)
            plot(out / "demo-call.png", call.marks, call.t0, left, right)
            print(f"demo: wrote {out / 'demo-call.wav'} (left: callers, right: agent as heard) and "
                  f"{out / 'demo-call.png'}", flush=True)
        for caller in list(call.callers.values()):
            with contextlib.suppress(Exception):
                await caller.stop()
        if page is not None:
            await page.stop()
        for proc in reversed(procs):
            await stop_process(proc)
        await emulator.stop()
        server.stop()
        print("demo: stopped the bridge, the brain, the emulator and the server", flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=150.0)
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument("--out-dir", default=".", help="where demo-call.wav and demo-call.png go")
    parser.add_argument("--browser", action="store_true", help="also start the browser path, keep it up until Ctrl-C")
    parser.add_argument("--page-port", type=int, default=8080)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(main_async(args))
    return 130


if __name__ == "__main__":
    sys.exit(main())
