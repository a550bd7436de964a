"""The agent leaves the room when its link closes, even when the SDK's leave never reaches the server.

A lost leave is made here by not sending it at all (``Room.disconnect`` replaced for one close): to the server
that is the same as the race described in :mod:`transport.livekit_room`, a participant that is still there.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from livekit import rtc

from scripts.caller import Caller
from scripts.livekit_server import LiveKitServer
from tests.bridge_fixtures import unique, wait_for
from tests.conftest import TEST_API_KEY, TEST_API_SECRET
from transport.livekit_room import RoomLink, RoomLinkConfig
from transport.livekit_token import mint_token

pytestmark = pytest.mark.livekit

AGENT = "agent-leave"


async def agent_seen_by(server: LiveKitServer, watcher: tuple[str, Caller], *, credentials: bool,
                        configured_identity: str = AGENT) -> RoomLink:
    """The agent's link, joined to the watcher's room, once the watcher sees the agent. Its token names
    ``AGENT``; ``configured_identity`` is what its config says (a worker's job gets its identity from LiveKit)."""
    room, caller = watcher
    token = mint_token(TEST_API_KEY, TEST_API_SECRET, room=room, identity=AGENT, agent=True)
    keys = {"api_key": TEST_API_KEY, "api_secret": TEST_API_SECRET} if credentials else {}
    link = RoomLink(RoomLinkConfig(url=server.url, token=token, identity=configured_identity, **keys),
                    on_caller_audio=lambda *_: None)
    await link.connect()
    await wait_for(lambda: AGENT in caller.room.remote_participants, timeout=10)
    return link


@contextlib.asynccontextmanager
async def leave_lost(link: RoomLink) -> AsyncIterator[None]:
    """While inside, the link's leave never reaches the server; on the way out the SDK's room really leaves."""
    sdk_room = link.room
    leave = sdk_room.disconnect
    state = sdk_room.connection_state

    async def lost(**_: object) -> None:
        # As after a real disconnect, the SDK reports the room as left (its state flag), but the server never
        # heard of it.
        sdk_room._connection_state = rtc.ConnectionState.CONN_DISCONNECTED

    sdk_room.disconnect = lost  # type: ignore[method-assign]
    try:
        yield
    finally:
        sdk_room._connection_state = state
        await leave()


@pytest.fixture
async def watcher(livekit_server: LiveKitServer) -> AsyncIterator[tuple[str, Caller]]:
    room = unique("leave")
    caller = Caller(livekit_server.url, mint_token(TEST_API_KEY, TEST_API_SECRET, room=room, identity="watcher"),
                    identity="watcher")
    async with caller:
        yield room, caller


async def test_a_normal_leave_is_confirmed_without_removing_anyone(
        livekit_server: LiveKitServer, watcher: tuple[str, Caller]) -> None:
    caller = watcher[1]
    link = await agent_seen_by(livekit_server, watcher, credentials=True)
    await link.close()
    await wait_for(lambda: AGENT not in caller.room.remote_participants, timeout=5)
    assert link.stats.ghosts_removed == 0


@pytest.mark.parametrize("configured_identity", [AGENT, "not-the-token-identity"])
async def test_a_lost_leave_is_made_good_through_the_server_api(
        livekit_server: LiveKitServer, watcher: tuple[str, Caller], configured_identity: str) -> None:
    caller = watcher[1]
    link = await agent_seen_by(livekit_server, watcher, credentials=True, configured_identity=configured_identity)
    async with leave_lost(link):
        await link.close()
        await wait_for(lambda: AGENT not in caller.room.remote_participants, timeout=5)
        assert link.stats.ghosts_removed == 1


async def test_without_credentials_a_lost_leave_leaves_a_ghost(
        livekit_server: LiveKitServer, watcher: tuple[str, Caller]) -> None:
    # The control: what the check above makes good really happens without it.
    caller = watcher[1]
    link = await agent_seen_by(livekit_server, watcher, credentials=False)
    async with leave_lost(link):
        await link.close()
        await asyncio.sleep(2.0)  # longer than the check would have waited
        assert AGENT in caller.room.remote_participants and link.stats.ghosts_removed == 0
