"""transport.sdk_events: a room's event subscription narrowed to its own events, the SDK's events routed by
handle, and the SDK shape both need.

If the first test fails, livekit-rtc changed: read transport/sdk_events.py against the new SDK's
``_ffi_client.py`` and ``room.py`` before changing the version line there.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

import pytest
from livekit import rtc
from livekit.rtc._proto import ffi_pb2

from scripts.caller import Caller, tone
from scripts.livekit_server import LiveKitServer
from tests.bridge_fixtures import unique, wait_for
from tests.conftest import TEST_API_KEY, TEST_API_SECRET
from transport.livekit_room import RoomLink, RoomLinkConfig
from transport.livekit_token import mint_token
from transport.sdk_events import EventRouter, room_filter, router, sdk_supported


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
        routed = router()  # the rooms' connect installed it: it holds every subscription of the process
        assert routed is not None
        keep = routed.filter_of(links[0].room._ffi_queue)
        assert keep is not None
        other = event(room_event__room_handle=links[1].room._ffi_handle.handle)
        assert not keep(other)  # room 0 no longer sees room 1's events
        async with contextlib.AsyncExitStack() as stack:
            for i, r in enumerate(rooms):
                caller = await stack.enter_async_context(
                    Caller(livekit_server.url, mint_token(TEST_API_KEY, TEST_API_SECRET, room=r,
                                                          identity=f"caller-{i}"), identity=f"caller-{i}"))
                caller.say(tone(330.0 + 110 * i, 2.0))
            await wait_for(lambda: heard.get("caller-0", 0) > 20 and heard.get("caller-1", 0) > 20, timeout=20)
            assert links[0].callers == ["caller-0"] and links[1].callers == ["caller-1"]
            # The SDK's stream and capture filters were recognised: each caller frame and each capture callback
            # goes to its own subscription only (the SDK would ask every subscription's filter).
            assert routed.keyed_subscriptions() >= 2
            events, offered = routed.events, routed.offered
            subscriptions = routed.subscriptions()
            await asyncio.sleep(1.0)
            per_event = (routed.offered - offered) / max(1, routed.events - events)
            assert routed.events - events > 100 and per_event < 0.5 * subscriptions, (per_event, subscriptions)
            await asyncio.sleep(0.2)
    finally:
        for link in links:
            await link.close()
    assert all(link.room.connection_state == rtc.ConnectionState.CONN_DISCONNECTED for link in links)


class _Fake:
    """An SDK queue's shape: a lock and a subscriber list."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._subscribers: list[tuple[Any, Any, Any]] = []


class _Loop:
    def __init__(self) -> None:
        self.got: list[tuple[Any, Any]] = []

    def call_soon_threadsafe(self, put: Any, item: Any) -> None:
        self.got.append((put.__self__, item))


class AudioStream:  # the SDK's filter, as livekit-rtc 1.2.1 writes it (qualified name and closure variable)
    def __init__(self) -> None:
        self.handle_id: int | None = None
        handle_id: int | None = None
        self.filter = lambda e: (e.WhichOneof("message") == "audio_stream_event"
                                 and (handle_id is None or e.audio_stream_event.stream_handle == handle_id))

        def set_handle(value: int) -> None:
            nonlocal handle_id
            handle_id = value

        self.set_handle = set_handle


class AudioSource:
    def capture_frame(self) -> tuple[Any, Any]:
        async_id: int | None = None
        fn = lambda e: (e.WhichOneof("message") == "capture_audio_frame"  # noqa: E731
                        and (async_id is None or e.capture_audio_frame.async_id == async_id))

        def set_id(value: int) -> None:
            nonlocal async_id
            async_id = value

        return fn, set_id


def test_the_router_hands_hot_events_to_their_own_subscription_only() -> None:
    fake, loop = _Fake(), _Loop()
    routed = EventRouter(fake)
    streams = [AudioStream() for _ in range(50)]
    queues = [routed.subscribe(loop, s.filter) for s in streams]
    room = routed.subscribe(loop, lambda e: e.WhichOneof("message") != "audio_stream_event")
    everything = routed.subscribe(loop, None)
    assert routed.subscriptions() == 52 and routed.keyed_subscriptions() == 50
    # A stream whose handle is not known yet takes every stream event (as the SDK's filter does).
    routed.put(event(audio_stream_event__stream_handle=7))
    assert {q for q, _ in loop.got} == {*queues, everything}
    for k, s in enumerate(streams):
        s.set_handle(100 + k)
    loop.got.clear()
    before = routed.offered
    routed.put(event(audio_stream_event__stream_handle=123))
    assert [q for q, _ in loop.got] == [queues[23], everything]
    assert routed.offered - before == 3  # its stream, the room's filter (asked: not narrowed), the catch-all
    # A narrowed room is not even asked about the hot kinds, and still gets its own events.
    routed.set_filter(room, lambda e: e.WhichOneof("message") == "room_event", rejects=("audio_stream_event",
                                                                                        "capture_audio_frame"))
    loop.got.clear()
    before = routed.offered
    routed.put(event(audio_stream_event__stream_handle=140))
    assert [q for q, _ in loop.got] == [queues[40], everything] and routed.offered - before == 2
    loop.got.clear()
    routed.put(event(room_event__room_handle=1))
    assert [q for q, _ in loop.got] == [room, everything]
    # A capture: all captures' events until its async_id is known, then its own only.
    fn, set_id = AudioSource().capture_frame()
    capture = routed.subscribe(loop, fn)
    loop.got.clear()
    routed.put(event(capture_audio_frame__async_id=5))
    assert [q for q, _ in loop.got] == [capture, everything]
    set_id(6)
    loop.got.clear()
    routed.put(event(capture_audio_frame__async_id=5))
    routed.put(event(capture_audio_frame__async_id=6))
    assert [q for q, _ in loop.got] == [everything, capture, everything]
    # Unsubscribing, from each table.
    for q in (capture, queues[0], room, everything):
        routed.unsubscribe(q)
    assert routed.subscriptions() == 49 and routed.keyed_subscriptions() == 49
    loop.got.clear()
    routed.put(event(audio_stream_event__stream_handle=100))
    routed.put(event(capture_audio_frame__async_id=6))
    assert loop.got == []


def test_the_router_takes_over_the_subscriptions_already_there() -> None:
    fake, loop = _Fake(), _Loop()
    stream = AudioStream()
    stream.set_handle(9)
    q1: Any = asyncio.Queue()
    fake._subscribers.append((q1, loop, stream.filter))
    routed = EventRouter(fake)
    assert routed.keyed_subscriptions() == 1 and fake._subscribers == []  # the router holds it now
    routed.put(event(audio_stream_event__stream_handle=9))
    routed.put(event(audio_stream_event__stream_handle=8))
    assert [q for q, _ in loop.got] == [q1]
