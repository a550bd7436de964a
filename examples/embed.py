"""Embedding the bridge in your own supervisor: two rooms, one event loop, your logging, your signals.

    LIVEKIT_URL=ws://127.0.0.1:7880 LIVEKIT_API_KEY=devkey LIVEKIT_API_SECRET=secret \
    ELEVENLABS_API_KEY=... SPEECH_ENGINE_ID=... python examples/embed.py room-a room-b

Without ELEVENLABS_API_KEY it starts the local emulator and bridges to that instead. Both rooms share one
client tool, ``get_utc_time``; a tool the agent calls that is not registered here goes to the callers as a
LiveKit RPC (see the README's "Client tools").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

from transport import (
    AgentResponse,
    BridgeSession,
    CallerJoined,
    CallerLeft,
    ClientTools,
    EngineSettings,
    EngineStateChanged,
    Interrupted,
    RoomLinkConfig,
    SessionConfig,
    SessionError,
    SessionEvent,
    UserTranscript,
    mint_token,
)


@contextlib.asynccontextmanager
async def engine() -> AsyncIterator[EngineSettings]:
    key, engine_id = os.environ.get("ELEVENLABS_API_KEY"), os.environ.get("SPEECH_ENGINE_ID")
    if key and engine_id:
        yield EngineSettings(api_key=key, agent_id=engine_id)
        return
    from emulator import Emulator, EmulatorConfig

    async with Emulator(EmulatorConfig(reply_mode="echo")) as emu:
        yield EngineSettings(api_key=emu.api_key, agent_id=emu.config.agent_id, api_base=emu.rest_base_url)


async def get_utc_time(_params: dict[str, Any]) -> dict[str, str]:
    """A client tool: the agent gets this (as JSON) as the tool's result."""
    return {"utc": time.strftime("%H:%M", time.gmtime())}


async def watch(room: str, session: BridgeSession) -> None:
    event: SessionEvent
    async for event in session.events():
        match event:
            case CallerJoined(identity=who) | CallerLeft(identity=who):
                logging.info("[%s] %s %s", room, type(event).__name__, who)
            case UserTranscript(text=text, final=True) | AgentResponse(text=text):
                logging.info("[%s] %s: %s", room, type(event).__name__, text)
            case Interrupted(event_id=event_id, dropped_ms=dropped_ms):
                logging.info("[%s] interrupted reply %d, %d ms of it dropped", room, event_id, dropped_ms)
            case EngineStateChanged() | SessionError():
                logging.info("[%s] %s", room, event)


async def main(rooms: list[str], run_for: float | None = None) -> None:
    url = os.environ.get("LIVEKIT_URL", "ws://127.0.0.1:7880")
    key, secret = os.environ.get("LIVEKIT_API_KEY", "devkey"), os.environ.get("LIVEKIT_API_SECRET", "secret")
    tools = ClientTools({"get_utc_time": get_utc_time})
    async with engine() as settings:
        sessions = {room: BridgeSession(SessionConfig(
            room=RoomLinkConfig(url, mint_token(key, secret, room=room, identity="agent", agent=True),
                                identity="agent", api_key=key, api_secret=secret),  # the key: a sure leave
            engine=settings, end_when_empty=False), tools=tools) for room in rooms}
        await asyncio.gather(*(s.start() for s in sessions.values()))
        watchers = [asyncio.ensure_future(watch(room, s)) for room, s in sessions.items()]
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*(s.wait() for s in sessions.values())), run_for)
        finally:
            for room, session in sessions.items():
                logging.info("[%s] stats: %s", room, session.stats(stages=False).session)
            await asyncio.gather(*(s.stop() for s in sessions.values()))
            for w in watchers:
                w.cancel()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(sys.argv[1:] or ["room-a", "room-b"]))
