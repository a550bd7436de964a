"""Command line around :class:`transport.session.BridgeSession`.

    python runner.py --room demo                 # local dev LiveKit + embedded Speech Engine emulator
    ELEVENLABS_API_KEY=… SPEECH_ENGINE_ID=… python runner.py --room support-42
    python runner.py --room demo --engine-url wss://…/v1/convai/conversation?agent_id=…
    python runner.py --worker --agent-name elevenlabs-bridge   # explicit dispatch (see README)

LiveKit: ``LIVEKIT_URL`` / ``LIVEKIT_API_KEY`` / ``LIVEKIT_API_SECRET`` (defaults: the local dev server at
ws://127.0.0.1:7880 with devkey/secret). Engine: ``--engine-url``, else ``ELEVENLABS_API_KEY`` +
``SPEECH_ENGINE_ID`` (signed URL minted here per connection; ``ELEVENLABS_API_BASE`` moves the REST API),
else the embedded emulator.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.downlink import DownlinkConfig
from core.errors import BridgeError, ConfigError
from core.formats import ENGINE_FORMATS, parse_format
from core.redact import Redactor
from core.uplink import DEFAULT_CHUNK_MS
from transport.livekit_token import mint_token
from transport.log_context import ContextFilter
from transport.session import BridgeSession, EngineSettings, SessionConfig, serve
from transport.signed_url import DEFAULT_API_BASE

if TYPE_CHECKING:
    from transport.metrics import BridgeMetrics

log = logging.getLogger("runner")

DEFAULT_LIVEKIT_URL = "ws://127.0.0.1:7880"
DEV_KEY, DEV_SECRET = "devkey", "secret"


@dataclass(frozen=True, slots=True)
class LiveKitTarget:
    url: str
    api_key: str
    api_secret: str


def livekit_from_env(env: dict[str, str] | None = None) -> LiveKitTarget:
    env = dict(os.environ) if env is None else env
    return LiveKitTarget(env.get("LIVEKIT_URL") or DEFAULT_LIVEKIT_URL,
                         env.get("LIVEKIT_API_KEY") or DEV_KEY, env.get("LIVEKIT_API_SECRET") or DEV_SECRET)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="runner.py", description="ElevenLabs Speech Engine ⇄ LiveKit room bridge")
    p.add_argument("--room", help="room to join (one session); not with --worker")
    p.add_argument("--identity", default="elevenlabs-agent", help="the agent's participant identity")
    p.add_argument("--engine-url", help="connect to this conversation URL as given (no signed URL)")
    p.add_argument("--input-format", choices=ENGINE_FORMATS,
                   help="caller audio format; with the embedded emulator it sets the emulator's agent, with a real "
                        "engine it is only a fallback when the metadata names none (configure the engine with "
                        "`python -m transport.engine_admin`)")
    p.add_argument("--output-format", choices=ENGINE_FORMATS, help="agent audio format (as --input-format)")
    p.add_argument("--chunk-ms", type=int, default=DEFAULT_CHUNK_MS,
                   help=f"user_audio_chunk length, a multiple of 5 ms (default {DEFAULT_CHUNK_MS})")
    p.add_argument("--queue-ms", type=int, default=50, help="AudioSource queue, a multiple of 10 ms (default 50)")
    p.add_argument("--lead-frames", type=int, default=3, help="10 ms frames kept queued ahead (default 3)")
    p.add_argument("--start", choices=("first_caller", "immediately"), default="first_caller",
                   help="open the engine conversation when the first caller appears (default) or at once")
    p.add_argument("--linger", type=float, default=10.0, help="seconds an empty room is kept before ending")
    p.add_argument("--stay", action="store_true", help="do not end the session when the room empties")
    p.add_argument("--reply", choices=("echo", "tone", "speech"), default="speech",
                   help="embedded emulator only: how the emulated agent answers")
    p.add_argument("--worker", action="store_true", help="register as an agent worker (explicit dispatch)")
    p.add_argument("--agent-name", default="elevenlabs-bridge", help="agent name for --worker")
    p.add_argument("--max-jobs", type=int, default=50, help="sessions one worker process takes at most")
    p.add_argument("--drain-grace", type=float, default=30.0,
                   help="seconds running sessions get to finish after SIGTERM (worker mode)")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on 127.0.0.1:PORT")
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    p.add_argument("--json-logs", action="store_true", help="one JSON object per log line")
    args = p.parse_args(argv)
    if not args.worker and not args.room:
        p.error("give --room NAME (or --worker)")
    return args


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {"ts": round(record.created, 3), "level": record.levelname,
                                 "logger": record.name, "msg": record.getMessage()}
        for key in ("session", "room", "conversation_id", "job"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exc"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(level: str, json_logs: bool, redactor: Redactor) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_logs else
                         logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S"))
    redactor.install(handler)
    ContextFilter().install(handler)  # session / room / conversation_id on every record (JSON fields)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # The SDK's native layer logs every ICE and codec detail at INFO.
    logging.getLogger("livekit").setLevel(max(logging.WARNING, logging.getLevelName(level)))


@contextlib.asynccontextmanager
async def engine_settings(args: argparse.Namespace, env: dict[str, str]) -> AsyncIterator[EngineSettings]:
    """Real engine when asked for, else the embedded emulator for the life of the block."""
    if args.engine_url:
        yield EngineSettings(url=args.engine_url, fallback_input_format=args.input_format or "pcm_16000")
        return
    api_key, agent_id = env.get("ELEVENLABS_API_KEY"), env.get("SPEECH_ENGINE_ID")
    if api_key or agent_id:
        if not (api_key and agent_id):
            raise ConfigError("set both ELEVENLABS_API_KEY and SPEECH_ENGINE_ID to use the hosted engine")
        yield EngineSettings(api_key=api_key, agent_id=agent_id,
                             api_base=env.get("ELEVENLABS_API_BASE") or DEFAULT_API_BASE,
                             fallback_input_format=args.input_format or "pcm_16000")
        return
    from emulator import Emulator, EmulatorConfig

    config = EmulatorConfig(input_format=args.input_format or "pcm_16000",
                            output_format=args.output_format or "pcm_16000", reply_mode=args.reply)
    async with Emulator(config) as emu:
        log.info("no engine credentials: using the embedded Speech Engine emulator at %s (reply mode %s, "
                 "formats %s in / %s out)", emu.rest_base_url, args.reply, config.input_format,
                 config.output_format)
        yield EngineSettings(api_key=emu.api_key, agent_id=config.agent_id, api_base=emu.rest_base_url)


def session_config(args: argparse.Namespace, livekit: LiveKitTarget, engine: EngineSettings,
                   *, url: str | None = None, token: str | None = None) -> SessionConfig:
    token = token or mint_token(livekit.api_key, livekit.api_secret, room=args.room, identity=args.identity,
                                agent=True)
    return SessionConfig(livekit_url=url or livekit.url, livekit_token=token, engine=engine,
                         identity=args.identity, chunk_ms=args.chunk_ms, queue_ms=args.queue_ms,
                         downlink=DownlinkConfig(lead_frames=args.lead_frames),
                         start_when=args.start, end_when_empty=not args.stay, linger_s=args.linger)


async def run_room(args: argparse.Namespace, env: dict[str, str], stop: asyncio.Event,
                   metrics: BridgeMetrics | None = None) -> int:
    livekit = livekit_from_env(env)
    async with engine_settings(args, env) as engine:
        session = BridgeSession(session_config(args, livekit, engine))
        if metrics is not None:
            metrics.track(session)
        log.info("bridging room %r on %s as %s; Ctrl-C stops", args.room, livekit.url, args.identity)
        try:
            await serve(session, stop)
        finally:
            if metrics is not None:
                metrics.untrack(session)
    return 0


async def run_worker(args: argparse.Namespace, env: dict[str, str], stop: asyncio.Event,
                     metrics: BridgeMetrics | None = None) -> int:
    from transport.worker import JobContext, Worker, WorkerConfig

    livekit = livekit_from_env(env)
    async with engine_settings(args, env) as engine:

        async def job(ctx: JobContext) -> None:
            """One dispatched room: a bridge session until the room ends or the job is terminated."""
            session = BridgeSession(session_config(args, livekit, engine, url=ctx.url, token=ctx.token))
            if metrics is not None:
                metrics.track(session)
            try:
                await serve(session, ctx.termination)
            finally:
                if metrics is not None:
                    metrics.untrack(session)

        worker = Worker(WorkerConfig(url=livekit.url, api_key=livekit.api_key, api_secret=livekit.api_secret,
                                     agent_name=args.agent_name, max_jobs=args.max_jobs), job)
        serving = asyncio.ensure_future(worker.run())
        stopping = asyncio.ensure_future(stop.wait())
        log.info("worker for agent %r on %s; SIGTERM drains (%.0f s grace)", args.agent_name, livekit.url,
                 args.drain_grace)
        await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if stopping.done():
            await worker.drain(grace_s=args.drain_grace)
        stopping.cancel()
        await serving
    return 0


async def amain(argv: Sequence[str] | None = None, env: dict[str, str] | None = None) -> int:
    args = parse_args(argv)
    env = dict(os.environ) if env is None else env
    redactor = Redactor([env.get("ELEVENLABS_API_KEY"), env.get("LIVEKIT_API_SECRET")])
    setup_logging(args.log_level, args.json_logs, redactor)
    for name in (args.input_format, args.output_format):
        if name:
            parse_format(name)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    metrics = None
    if args.metrics_port is not None:
        from transport.metrics import BridgeMetrics  # prometheus-client: the optional `metrics` extra

        metrics = BridgeMetrics()
        await metrics.serve(args.metrics_port)
    try:
        return await (run_worker(args, env, stop, metrics) if args.worker else run_room(args, env, stop, metrics))
    except BridgeError as exc:
        print(f"error: {redactor(str(exc))}", file=sys.stderr)
        return 1
    finally:
        if metrics is not None:
            await metrics.close()


def main(argv: Sequence[str] | None = None) -> int:
    try:
        import uvloop
    except ImportError:  # not on every platform; asyncio's loop works, a little slower
        return asyncio.run(amain(argv))
    return uvloop.run(amain(argv))


def exit_now(code: int) -> None:
    """Leave the process with ``code`` without running interpreter finalisation.

    The LiveKit SDK's native threads can still be running (and calling back into Python to log) while the
    interpreter tears itself down; under load that very rarely ends in a Rust panic and SIGABRT instead of
    our exit code (seen once in a full test run, after a failed connect). By this point every session is
    stopped and every socket closed, so there is nothing left for finalisation to do but race: flush and go.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def cli() -> None:
    """The ``lk-speech-bridge`` console script."""
    exit_now(main())


if __name__ == "__main__":
    cli()
