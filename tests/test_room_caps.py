"""RoomLink against a real livekit-server: callers past ``max_callers`` are not admitted (nor mixed)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from scripts.caller import Caller, tone
from scripts.livekit_server import LiveKitServer
from tests.bridge_fixtures import unique, wait_for
from tests.conftest import TEST_API_KEY, TEST_API_SECRET
from transport.livekit_room import RoomLink, RoomLinkConfig
from transport.livekit_token import mint_token

pytestmark = pytest.mark.livekit


async def test_callers_past_the_cap_are_not_heard(livekit_server: LiveKitServer) -> None:
    # Before: every participant who published audio was admitted and mixed, however many.
    room = unique("cap")
    heard: dict[str, int] = {}

    def on_audio(identity: str, samples: object, _recv_ns: int) -> None:
        heard[identity] = heard.get(identity, 0) + 1

    token = mint_token(TEST_API_KEY, TEST_API_SECRET, room=room, identity="agent-cap", agent=True)
    link = RoomLink(RoomLinkConfig(url=livekit_server.url, token=token, identity="agent-cap", max_callers=2),
                    on_caller_audio=on_audio)
    await link.connect()
    try:
        async with contextlib.AsyncExitStack() as stack:
            callers = []
            for name in ("c1", "c2", "c3"):
                caller = Caller(livekit_server.url, mint_token(TEST_API_KEY, TEST_API_SECRET, room=room,
                                                               identity=name), identity=name)
                callers.append(await stack.enter_async_context(caller))
                await wait_for(lambda n=name: n in [p.identity for p in link.room.remote_participants.values()],
                               timeout=20)
            for caller in callers:
                caller.say(tone(440.0, 1.0))
            await wait_for(lambda: heard.get("c1", 0) > 10 and heard.get("c2", 0) > 10, timeout=20)
            await asyncio.sleep(1.0)
            assert sorted(link.callers) == ["c1", "c2"]
            assert "c3" not in heard and link.stats.callers_refused >= 1
    finally:
        await link.close()
