"""Command line around :class:`transport.session.BridgeSession`.

    python runner.py --room demo --emulator      # dev: local LiveKit + the embedded Speech Engine emulator
    ELEVENLABS_API_KEY=… SPEECH_ENGINE_ID=… python runner.py --room support-42
    python runner.py --room demo --engine-url wss://…/v1/convai/conversation?agent_id=…
    python runner.py --worker --agent-name elevenlabs-bridge   # explicit dispatch (see README)

LiveKit: ``LIVEKIT_URL`` / ``LIVEKIT_API_KEY`` / ``LIVEKIT_API_SECRET`` (defaults: the local dev server at
ws://127.0.0.1:7880 with devkey/secret; in worker mode only with ``--emulator``: a production worker must be
told its server and credentials). Engine: ``--engine-url``, else ``ELEVENLABS_API_KEY`` + ``SPEECH_ENGINE_ID``
(signed URL minted here per connection; ``ELEVENLABS_API_BASE`` moves the REST API), else — only when asked
with ``--emulator`` — the embedded emulator, a dev-only mode: it would answer real callers with a test tone.
Without any of them the runner refuses to start and says what to set. The first log line names the mode.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from core.downlink import DownlinkConfig
from core.errors import BridgeError, ConfigError
from core.formats import CALLER_RATES, ENGINE_FORMATS, parse_format
from core.redact import Redactor
from core.uplink import DEFAULT_CHUNK_MS
from transport.config import EngineSettings, LiveKitTarget, RoomLinkConfig, SessionConfig, from_env
from transport.init_options import StartOptions, parse_dispatch_metadata, parse_dynamic_var, parse_override_json
from transport.livekit_token import mint_token
from transport.log_context import ContextFilter, JsonFormatter
from transport.session import BridgeSession, serve

if TYPE_CHECKING:
    from transport.metrics import BridgeMetrics
    from transport.worker_config import JobContext

log = logging.getLogger("runner")

# benchmarks/README.md "On a quiet machine, and with two processes": on the measured 2-core machine (callers and
# server on it too) one process held 6 sessions (0.86 cores, loop-lag p99 28 ms) and fell behind at 7 (p99
# 178 ms) and beyond; ~120 ms of CPU per session-second, 3/4 of it the SDK's. Run more worker processes
# (--processes), not more sessions per process. Was 50, then 10 (from a run on a saturated machine).
MEASURED_SESSIONS_PER_PROCESS = 6


def livekit_target(env: dict[str, str], *, dev_defaults: bool) -> LiveKitTarget:
    """LIVEKIT_URL / _API_KEY / _API_SECRET; without ``dev_defaults`` (a real deployment) all three must be set
    rather than silently falling back to a local ``--dev`` server's well-known keys."""
    if not dev_defaults:
        missing = [name for name in ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET") if not env.get(name)]
        if missing:
            raise ConfigError(f"a worker needs its LiveKit server and credentials: set {', '.join(missing)} "
                              "(or run with --emulator for a local dev server's defaults)")
    return from_env(env).livekit


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
    p.add_argument("--caller-rate", default="engine", choices=("engine", *map(str, CALLER_RATES)),
                   help="read callers at the engine's input rate (default: LiveKit's SDK resamples them in native "
                        "code, nothing is held) or at a fixed rate (48000: the full band, resampled here)")
    p.add_argument("--queue-ms", type=int, default=50, help="AudioSource queue, a multiple of 10 ms (default 50)")
    p.add_argument("--voice-frame-ms", type=int, default=20, choices=(10, 20, 40),
                   help="the agent voice's capture frame (default 20: half the SDK calls of 10 ms)")
    p.add_argument("--lead-frames", type=int, default=2, help="voice frames kept queued ahead (default 2)")
    p.add_argument("--duck-db", type=float, default=18.0,
                   help="duck the agent's voice this much when a caller talks over it, until the engine "
                        "decides (default 18 dB; 0 = off)")
    p.add_argument("--duck-hold-ms", type=int, default=500,
                   help="release the duck this long after the caller stops if no interruption came (default 500)")
    p.add_argument("--start", choices=("first_caller", "immediately"), default="first_caller",
                   help="open the engine conversation when the first caller appears (default) or at once")
    p.add_argument("--linger", type=float, default=10.0, help="seconds an empty room is kept before ending")
    p.add_argument("--stay", action="store_true", help="do not end the session when the room empties")
    p.add_argument("--emulator", action="store_true",
                   help="dev only: answer with the embedded Speech Engine emulator (no engine credentials needed)")
    p.add_argument("--reply", choices=("echo", "tone", "speech"), default="speech",
                   help="embedded emulator only: how the emulated agent answers")
    p.add_argument("--first-message", metavar="TEXT",
                   help="what the agent says first ('' = wait for the caller); needs the engine to allow the "
                        "first-message override (python -m transport.engine_admin allow-overrides --first-message)")
    p.add_argument("--dynamic-var", metavar="NAME=VALUE", action="append", default=[],
                   help="a dynamic variable for the agent's {{NAME}} placeholders (repeatable); values stay strings "
                        "unless clearly true/false, an integer or a decimal; \"quote\" to keep a string")
    p.add_argument("--override-json", metavar="JSON|@FILE",
                   help="conversation_config_override as JSON, or @path of a JSON file (the client-overridable "
                        "subset; see transport/init_options.py)")
    p.add_argument("--worker", action="store_true", help="register as an agent worker (explicit dispatch)")
    p.add_argument("--agent-name", default="elevenlabs-bridge", help="agent name for --worker")
    p.add_argument("--max-jobs", type=int, default=MEASURED_SESSIONS_PER_PROCESS,
                   help=f"sessions one worker process takes at most (default {MEASURED_SESSIONS_PER_PROCESS}, the "
                        "capacity measured per process; the worker also reports full while its event loop lags)")
    p.add_argument("--processes", type=int, default=os.cpu_count() or 1,
                   help="worker mode: worker processes to run under a supervisor (default: the number of cores)")
    p.add_argument("--metrics-host", default="127.0.0.1",
                   help="address the supervisor's /metrics /healthz /readyz bind (0.0.0.0 for Kubernetes probes)")
    p.add_argument("--no-redispatch", action="store_true",
                   help="worker mode: do not ask LiveKit to dispatch a dead worker process's rooms again")
    p.add_argument("--supervised-fd", type=int, help=argparse.SUPPRESS)  # set by transport.supervisor
    p.add_argument("--overload-lag-ms", type=float, default=30.0,
                   help="worker mode: report full while the event loop's lag p95 is at least this (0 = slots only; "
                        "default 30, the threshold past which the agent's voice gaps)")
    p.add_argument("--drain-grace", type=float, default=30.0,
                   help="seconds running sessions get to finish after SIGTERM (worker mode)")
    p.add_argument("--metrics-port", type=int,
                   help="serve Prometheus metrics on 127.0.0.1:PORT (with --processes: also /healthz and /readyz)")
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    p.add_argument("--json-logs", action="store_true", help="one JSON object per log line")
    args = p.parse_args(argv)
    if not args.worker and not args.room:
        p.error("give --room NAME (or --worker)")
    if args.processes < 1:
        p.error("--processes must be at least 1")
    if args.emulator and args.engine_url:
        p.error("--emulator and --engine-url exclude each other")
    return args


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
    fallback = args.input_format or "pcm_16000"
    if args.engine_url:
        log.info("mode: engine at the given conversation URL (--engine-url)")
        yield EngineSettings(url=args.engine_url, fallback_input_format=fallback)
        return
    hosted = from_env(env).engine
    if hosted is not None and not args.emulator:
        log.info("mode: hosted Speech Engine %s via %s", hosted.agent_id, hosted.api_base)
        yield dataclasses.replace(hosted, fallback_input_format=fallback)
        return
    if not args.emulator:
        raise ConfigError("no Speech Engine configured: set ELEVENLABS_API_KEY and SPEECH_ENGINE_ID, or give "
                          "--engine-url; --emulator runs the embedded emulator instead (development only)")
    from emulator import Emulator, EmulatorConfig

    config = EmulatorConfig(input_format=args.input_format or "pcm_16000",
                            output_format=args.output_format or "pcm_16000", reply_mode=args.reply)
    async with Emulator(config) as emu:
        # A stand-in for an engine the user configured: allow the overrides --first-message / --override-json
        # may send (a real engine: python -m transport.engine_admin allow-overrides).
        agent = emu.agents.get(config.agent_id)
        if agent is not None:
            agent.patch_agent({"platform_settings": {"overrides": {"conversation_config_override": {
                "agent": {"first_message": True, "language": True, "prompt": {"prompt": True}}}}}})
        log.warning("mode: DEV, the embedded Speech Engine emulator at %s answers every caller (reply mode %s, "
                    "formats %s in / %s out)", emu.rest_base_url, args.reply, config.input_format,
                    config.output_format)
        yield EngineSettings(api_key=emu.api_key, agent_id=config.agent_id, api_base=emu.rest_base_url)


def start_options(args: argparse.Namespace) -> StartOptions:
    """--first-message, --dynamic-var, --override-json; a ConfigError names what is wrong."""
    overrides: dict[str, Any] = {}
    if args.override_json:
        text, where = args.override_json, "--override-json"
        if text.startswith("@"):
            try:
                with open(text[1:], encoding="utf-8") as f:
                    text = f.read()
            except OSError as exc:
                raise ConfigError(f"--override-json: cannot read {text[1:]!r}: {exc.strerror}") from None
            where = f"--override-json {args.override_json}"
        overrides = parse_override_json(text, where)
    variables = dict(parse_dynamic_var(item) for item in args.dynamic_var)
    return StartOptions(first_message=args.first_message, overrides=overrides, dynamic_variables=variables)


def session_config(args: argparse.Namespace, livekit: LiveKitTarget, engine: EngineSettings,
                   *, url: str | None = None, token: str | None = None) -> SessionConfig:
    token = token or mint_token(livekit.api_key, livekit.api_secret, room=args.room, identity=args.identity,
                                agent=True)
    return SessionConfig(room=RoomLinkConfig(url or livekit.url, token, identity=args.identity,
                                             queue_ms=args.queue_ms, api_key=livekit.api_key,
                                             api_secret=livekit.api_secret),
                         engine=engine, chunk_ms=args.chunk_ms,
                         downlink=DownlinkConfig(frame_ms=args.voice_frame_ms, lead_frames=args.lead_frames),
                         start_when=args.start, end_when_empty=not args.stay, linger_s=args.linger,
                         duck_db=args.duck_db, duck_hold_ms=args.duck_hold_ms,
                         caller_rate=None if args.caller_rate == "engine" else int(args.caller_rate))


async def run_room(args: argparse.Namespace, env: dict[str, str], stop: asyncio.Event,
                   metrics: BridgeMetrics | None = None) -> int:
    livekit = from_env(env).livekit
    options = start_options(args)
    async with engine_settings(args, env) as engine:
        session = BridgeSession(session_config(args, livekit, engine.with_options(options)))
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
    from transport.worker import Worker, WorkerConfig

    livekit = livekit_target(env, dev_defaults=args.emulator)
    options = start_options(args)
    async with engine_settings(args, env) as engine:
        job = job_runner(args, livekit, engine.with_options(options), metrics)
        worker = Worker(WorkerConfig(url=livekit.url, api_key=livekit.api_key, api_secret=livekit.api_secret,
                                     agent_name=args.agent_name, max_jobs=args.max_jobs,
                                     overload_lag_s=args.overload_lag_ms / 1000 if args.overload_lag_ms > 0 else None),
                        job)
        serving = asyncio.ensure_future(worker.run())
        stopping = asyncio.ensure_future(stop.wait())
        reporter = None
        if args.supervised_fd is not None:  # a child of transport.supervisor: report status on its pipe
            from transport.supervisor import ChildReporter

            reporter = ChildReporter(args.supervised_fd, worker, on_orphaned=stop.set,
                                     metrics_port=None if metrics is None else metrics.port)
            reporter.start()
        log.info("worker for agent %r on %s; SIGTERM drains (%.0f s grace)", args.agent_name, livekit.url,
                 args.drain_grace)
        await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        failed_before = worker.stats().jobs_failed
        if stopping.done():
            stop.clear()  # a second SIGTERM/SIGINT ends every call at once
            force = asyncio.ensure_future(_force_on_second_stop(worker, stop))
            await worker.drain(grace_s=args.drain_grace)
            force.cancel()
        stopping.cancel()
        await serving
        if reporter is not None:
            await reporter.stop()
    return 4 if worker.stats().jobs_failed > failed_before else 0  # ExitCode.FORCED: calls were cut short


def job_runner(args: argparse.Namespace, livekit: LiveKitTarget, engine: EngineSettings,
               metrics: BridgeMetrics | None = None) -> Callable[[JobContext], Awaitable[None]]:
    async def job(ctx: JobContext) -> None:
        """One dispatched room: a bridge session until the room ends or the job is terminated. The dispatch
        metadata (JSON, transport/init_options.py) adds to the command line's start options; bad metadata
        fails this job with a ConfigError that says what is wrong, and the worker goes on."""
        settings = engine.with_options(parse_dispatch_metadata(ctx.metadata))
        session = BridgeSession(session_config(args, livekit, settings, url=ctx.url, token=ctx.token))
        if metrics is not None:
            metrics.track(session)
        try:
            await serve(session, ctx.termination)
        finally:
            if metrics is not None:
                metrics.untrack(session)
    return job


async def _force_on_second_stop(worker: Any, stop: asyncio.Event) -> None:
    await stop.wait()
    log.warning("second stop signal: ending every call now")
    await worker.drain(grace_s=0.0)


async def run_supervisor(args: argparse.Namespace, env: dict[str, str], argv: list[str]) -> int:
    """Worker mode: ``--processes`` worker processes (this runner again, supervised), one HTTP port for all."""
    from transport.supervisor import Supervisor, SupervisorConfig, strip_options

    livekit = livekit_target(env, dev_defaults=args.emulator)
    http_url = livekit.url.replace("wss://", "https://", 1).replace("ws://", "http://", 1)
    supervisor = Supervisor(SupervisorConfig(
        processes=args.processes,
        child_argv=tuple(strip_options(argv, {"--processes", "--metrics-port", "--metrics-host"},
                                       frozenset({"--no-redispatch"}))),
        drain_grace_s=args.drain_grace, metrics_port=args.metrics_port, host=args.metrics_host,
        livekit_http_url=http_url, redispatch=not args.no_redispatch,
        api_key=livekit.api_key, api_secret=livekit.api_secret, runner_path=os.path.abspath(__file__), env=env))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, supervisor.request_stop)
    log.info("supervising %d worker process(es) for agent %r", args.processes, args.agent_name)
    return int(await supervisor.run())


# After the first SIGTERM/SIGINT the process gets this long, beyond the worker's drain grace, to stop cleanly
# (a job's stop timeout twice: asked to end, then cancelled; plus closing the worker socket); then it exits
# regardless. A second signal exits at once. Either way the exit code says it was forced.
_FORCED_EXIT_CODE = 4  # transport.supervisor.ExitCode.FORCED
_STOP_MARGIN_S = 30.0


def shutdown_budget_s(args: argparse.Namespace) -> float:
    return (args.drain_grace if args.worker else 0.0) + _STOP_MARGIN_S


def on_stop_signal(sig: signal.Signals, stop: asyncio.Event, budget_s: float) -> None:
    """First signal: stop cleanly, with a watchdog of ``budget_s``; second signal: exit now."""
    if stop.is_set():
        log.error("%s again: exiting now, without a clean shutdown", sig.name)
        exit_now(_FORCED_EXIT_CODE)
    log.info("%s: stopping (a second signal forces the exit; forced anyway after %.0f s)", sig.name, budget_s)
    stop.set()

    def overdue() -> None:
        log.error("still stopping %.0f s after %s: exiting without a clean shutdown", budget_s, sig.name)
        exit_now(_FORCED_EXIT_CODE)

    asyncio.get_running_loop().call_later(budget_s, overdue)


async def amain(argv: Sequence[str] | None = None, env: dict[str, str] | None = None) -> int:
    args = parse_args(argv)
    env = dict(os.environ) if env is None else env
    redactor = Redactor([env.get("ELEVENLABS_API_KEY"), env.get("LIVEKIT_API_SECRET")])
    setup_logging(args.log_level, args.json_logs, redactor)
    for name in (args.input_format, args.output_format):
        if name:
            parse_format(name)
    if args.worker and args.supervised_fd is None:
        try:
            return await run_supervisor(args, env, list(sys.argv[1:] if argv is None else argv))
        except BridgeError as exc:
            print(f"error: {redactor(str(exc))}", file=sys.stderr)
            return 3 if isinstance(exc, ConfigError) else 1  # transport.supervisor.ExitCode CONFIG / ERROR
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    budget = shutdown_budget_s(args)
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, on_stop_signal, sig, stop, budget)
    metrics = None
    if args.metrics_port is not None:
        from transport.metrics import BridgeMetrics  # prometheus-client: the optional `metrics` extra

        metrics = BridgeMetrics()
        await metrics.serve(args.metrics_port)
    try:
        return await (run_worker(args, env, stop, metrics) if args.worker else run_room(args, env, stop, metrics))
    except BridgeError as exc:
        print(f"error: {redactor(str(exc))}", file=sys.stderr)
        return 3 if isinstance(exc, ConfigError) else 1  # transport.supervisor.ExitCode CONFIG / ERROR
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
