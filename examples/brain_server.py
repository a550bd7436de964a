"""An example brain server on the official SDK's ``SpeechEngineServer``, with a tiny rule-based responder.

A Speech Engine dials this server (its ``speech_engine.ws_url``) once per conversation. The SDK checks the
engine's signed ``X-Elevenlabs-Speech-Engine-Authorization`` header against your API key before it accepts
the upgrade, answers pings, cancels the handler of a turn the caller talked over, and streams what the
handler yields as ``agent_response`` pieces. All this file adds is the answer: a few keyword rules, no
network and no model, streamed a word at a time the way a language model would stream it.

Run it next to the emulator (``python -m emulator --brain-url ws://127.0.0.1:3001/``) or a real engine::

    ELEVENLABS_API_KEY=sk_... python -m examples.brain_server --port 3001

Needs the ``elevenlabs`` package (``pip install -e '.[examples]'``); the bridge itself never does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import re
import sys
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from elevenlabs.speech_engine import ConversationMessage, SpeechEngineServer, SpeechEngineSession

log = logging.getLogger("brain_server")

_PLACEHOLDER = re.compile(r"^\[speech (\d+(?:\.\d+)?) s\]$")
_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\b(bye|goodbye|that'?s all)\b"), "Goodbye, and thank you for calling."),
    (re.compile(r"\b(name|who are you)\b"), "I am a rule based brain, a few lines of Python behind a Speech Engine."),
    (re.compile(r"\b(hello|hi|hey|good (morning|afternoon|evening))\b"),
     "Hello! This is the example brain speaking through the emulator. How can I help?"),
    (re.compile(r"\bweather\b"), "I cannot see the sky from here, but the forecast inside this machine is calm."),
    (re.compile(r"\btime\b"), "It is {time} in universal time."),
    (re.compile(r"\b(help|support|problem)\b"),
     "I can tell you the time, talk about the weather, or just listen. Please go on."),
    (re.compile(r"\b(thanks|thank you)\b"), "You are welcome."),
)


def answer(transcript: Sequence[ConversationMessage], now_s: float | None = None) -> str:
    """The reply to the last user message of ``transcript`` (the whole history, oldest first)."""
    said = next((m.content for m in reversed(transcript) if m.role == "user"), "").strip()
    turn = sum(1 for m in transcript if m.role == "user")
    placeholder = _PLACEHOLDER.match(said)
    if placeholder:
        return (f"I heard about {placeholder.group(1)} seconds of speech, but the emulator has no speech "
                f"recognition, so I cannot tell the words. That was turn {turn}.")
    lowered = said.lower()
    for pattern, reply in _RULES:
        if pattern.search(lowered):
            return reply.format(time=time.strftime("%H:%M", time.gmtime(now_s)))
    if not said:
        return "Sorry, I did not catch that."
    return f"You said: {said.rstrip('.!?')}. Tell me more."


async def pieces(text: str, delay_s: float) -> AsyncIterator[str]:
    """``text`` a word at a time (with its trailing space), ``delay_s`` apart: a language model's stream."""
    for word in re.findall(r"\S+\s*", text):
        yield word
        await asyncio.sleep(delay_s)


def build_server(*, port: int, api_key: str | None = None, piece_delay_s: float = 0.02,
                 path: str | None = None) -> SpeechEngineServer:
    """A ``SpeechEngineServer`` with authentication on (``api_key`` or ``ELEVENLABS_API_KEY``)."""

    async def on_init(conversation_id: str, session: SpeechEngineSession) -> None:
        log.info("conversation %s started", conversation_id)

    async def on_transcript(transcript: list[ConversationMessage], session: SpeechEngineSession) -> None:
        reply = answer(transcript)
        log.info("conversation %s, turn %d: %r -> %r", session.conversation_id,
                 sum(1 for m in transcript if m.role == "user"), transcript[-1].content if transcript else "", reply)
        await session.send_response(pieces(reply, piece_delay_s))

    async def on_close(session: SpeechEngineSession) -> None:
        log.info("conversation %s closed by the engine", session.conversation_id)

    async def on_error(error: Any, session: SpeechEngineSession) -> None:
        log.warning("conversation %s: %s", session.conversation_id, error)

    return SpeechEngineServer(port=port, path=path, api_key=api_key, on_init=on_init, on_transcript=on_transcript,
                              on_close=on_close, on_error=on_error)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.brain_server", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=3001)
    parser.add_argument("--piece-delay-ms", type=float, default=20.0, help="pause between streamed words")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = build_server(port=args.port, piece_delay_s=args.piece_delay_ms / 1000)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(server.serve())
    except RuntimeError as exc:  # no API key: the SDK refuses to run without authentication
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
