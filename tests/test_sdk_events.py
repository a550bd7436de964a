"""transport.sdk_events: a room's event subscription narrowed to its own events, and the SDK shape it needs.

If the first test fails, livekit-rtc changed: read transport/sdk_events.py against the new SDK's
``_ffi_client.py`` and ``room.py`` before changing the version line there.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from livekit import rtc
from livekit.rtc._proto import ffi_pb2

from scripts.caller import Caller, tone
from scripts.livekit_server import LiveKitServer
from tests.bridge_fixtures import unique, wait_for
from tests.conftest import TEST_API_KEY, TEST_API_SECRET
from transport.livekit_room import RoomLink, RoomLinkConfig
from transport.livekit_token import mint_token
from transport.sdk_events import room_filter, sdk_supported


def event(**fields: object) -> ffi_pb2.FfiEvent:
    e = ffi_pb2.FfiEvent()
    for path, value in fields.items():
        target: object = e
        *parents, leaf = path.split("__")
        for name in parents:
            target = getattr(target, name)
        setattr(target, leaf, value)
    return e


async def test_the_sdk_has_the_shape_this_relies_on() -> None:
    assert sdk_supported(), f"livekit-rtc {rtc.__version__}: review transport/sdk_events.py (see this file's doc)"


def test_a_room_keeps_its_own_events_and_the_callbacks_it_awaits() -> None:
    keep = room_filter(room_handle=7, participant_handle=9)
    assert keep(event(room_event__room_handle=7))
    assert not keep(event(room_event__room_handle=8))
    assert keep(event(rpc_method_invocation__local_participant_handle=9))
    assert not keep(event(rpc_method_invocation__local_participant_handle=10))
    assert not keep(event(capture_audio_frame__async_id=3))  # each capture awaits its own subscription
    assert not keep(event(audio_stream_event__stream_handle=7))
    assert keep(event(publish_track__async_id=4))  # publish/unpublish are awaited through the room's queue
    assert keep(event(unpublish_track__async_id=5))
    assert keep(event(set_local_attributes__async_id=6))


@pytest.mark.livekit
async def test_two_rooms_in_one_process_each_hear_their_own_caller(livekit_server: LiveKitServer) -> None:
    heard: dict[str, int] = {}

    def on_audio(identity: str, _samples: object, _recv_ns: int) -> None:
        heard[identity] = heard.get(identity, 0) + 1

    rooms = [unique("narrow"), unique("narrow")]
    links = [RoomLink(RoomLinkConfig(livekit_server.url, mint_token(TEST_API_KEY, TEST_API_SECRET, room=r,
                                                                    identity=f"agent-{i}", agent=True),
                                     identity=f"agent-{i}"), on_caller_audio=on_audio)
             for i, r in enumerate(rooms)]
    for link in links:
        await link.connect()  # its voice track was published after the narrowing: the callback came through
    try:
        from livekit.rtc._ffi_client import FfiClient

        filters = {id(q): f for q, _loop, f in FfiClient.instance.queue._subscribers}
        other = event(room_event__room_handle=links[1].room._ffi_handle.handle)
        assert not filters[id(links[0].room._ffi_queue)](other)  # room 0 no longer sees room 1's events
        async with contextlib.AsyncExitStack() as stack:
            for i, r in enumerate(rooms):
                caller = await stack.enter_async_context(
                    Caller(livekit_server.url, mint_token(TEST_API_KEY, TEST_API_SECRET, room=r,
                                                          identity=f"caller-{i}"), identity=f"caller-{i}"))
                caller.say(tone(330.0 + 110 * i, 2.0))
            await wait_for(lambda: heard.get("caller-0", 0) > 20 and heard.get("caller-1", 0) > 20, timeout=20)
            assert links[0].callers == ["caller-0"] and links[1].callers == ["caller-1"]
            await asyncio.sleep(0.2)
    finally:
        for link in links:
            await link.close()
    assert all(link.room.connection_state == rtc.ConnectionState.CONN_DISCONNECTED for link in links)
