"""``python -m emulator --port 8765``: run the emulator alone until interrupted."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal

from core.formats import ENGINE_FORMATS
from emulator.config import EmulatorConfig
from emulator.server import Emulator


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m emulator", description=__doc__)
    p.add_argument("--host", default="127.0.0.1", choices=("127.0.0.1", "::1"))
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--api-key", help="key the REST endpoints accept (default: random, printed)")
    p.add_argument("--agent-id", default="agent_emulator")
    p.add_argument("--input-format", default="pcm_16000", choices=ENGINE_FORMATS)
    p.add_argument("--output-format", default="pcm_16000", choices=ENGINE_FORMATS)
    p.add_argument("--reply-mode", default="echo", choices=("echo", "tone", "speech"))
    p.add_argument("--think-ms", type=float, default=250.0)
    p.add_argument("--chunk-ms", type=float, default=100.0)
    p.add_argument("--burst", type=float, default=4.0, help="how many times faster than real time to send")
    p.add_argument("--speech-ms", type=float, default=3000.0)
    p.add_argument("--greeting-ms", type=float, default=0.0)
    p.add_argument("--ping-interval", type=float, default=3.0)
    p.add_argument("--no-auth", action="store_true", help="accept unsigned conversation URLs")
    p.add_argument("--brain-url", help="the brain server every conversation dials (speech_engine.ws_url); its "
                                       "text is spoken with espeak-ng")
    p.add_argument("--log-level", default="INFO")
    return p


async def _main(args: argparse.Namespace) -> None:
    config = EmulatorConfig(
        host=args.host, port=args.port, api_key=args.api_key, agent_id=args.agent_id,
        input_format=args.input_format, output_format=args.output_format, reply_mode=args.reply_mode,
        think_time_ms=args.think_ms, chunk_ms=args.chunk_ms, burst_factor=args.burst, speech_ms=args.speech_ms,
        greeting_ms=args.greeting_ms, ping_interval_s=args.ping_interval, require_auth=not args.no_auth,
        brain_url=args.brain_url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with Emulator(config) as emulator:
        # The emulator's own key is printed on purpose: it is a local test key, and callers need it.
        print(f"REST      {emulator.rest_base_url}", flush=True)
        print(f"WebSocket {emulator.ws_url}?agent_id={config.agent_id}", flush=True)
        print(f"API key   {emulator.api_key}", flush=True)
        await stop.wait()


def main() -> None:
    args = _parser().parse_args()
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_main(args))


if __name__ == "__main__":
    main()
