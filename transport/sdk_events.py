"""Each room hears its own events only: a narrower filter on the SDK's per-room event subscription.

livekit-rtc 1.2.1 offers every event of the process's native layer to every subscriber's filter
(``FfiQueue.put``), and a ``Room`` subscribes before it knows its own handle, with a filter that lets through
everything but audio and video stream events (``room.py``). So every room's listener task is woken for the
other rooms' events and for every ``AudioSource.capture_frame`` callback in the process (each room's voice
completes 100 captures a second), hands each to its ``_room_queue``, waits for that queue to be processed,
and only then finds the event was not its own. In one process of N rooms that is N × (N's events) wake-ups
of Python: the cost per room grows with N.

Once the room has joined, its handle and its local participant's handle are known, and
:func:`narrow_room_events` replaces the filter of that one subscription with one that keeps what the room's
listener uses: room events of this room, RPC invocations for this participant, and the request callbacks
(publish and unpublish of a track are awaited through the room's queue; the rest are rare). Capture
callbacks (each ``capture_frame`` awaits its own subscription), stream events (each stream has its own), and
other rooms' events are no longer delivered to it.

This reaches into the SDK: ``FfiClient.instance.queue`` and its ``_lock`` and ``_subscribers`` (a list of
``(queue, loop, filter)``), ``Room._ffi_queue`` and ``_ffi_handle``, ``LocalParticipant._ffi_handle``. It is
used only on the SDK line it was read on (``livekit-rtc`` 1.2.x) and when those shapes are as expected;
otherwise the room keeps the SDK's filter, one warning says so, and ``tests/test_sdk_events.py`` fails.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from livekit import rtc

__all__ = ["narrow_room_events", "room_filter", "sdk_supported"]

log = logging.getLogger(__name__)

_SDK_LINE = "1.2."
# Never for a room's listener: each has a subscription of its own (streams, captures, data tracks).
_NOT_FOR_A_ROOM = frozenset({"audio_stream_event", "video_stream_event", "capture_audio_frame",
                             "data_track_stream_event"})
_warned = False


def _queue() -> Any:
    from livekit.rtc._ffi_client import FfiClient

    return FfiClient.instance.queue


def sdk_supported() -> bool:
    """The SDK is the line and shape this module was written against."""
    if not str(getattr(rtc, "__version__", "")).startswith(_SDK_LINE):
        return False
    queue = _queue()
    subscribers = getattr(queue, "_subscribers", None)
    lock = getattr(queue, "_lock", None)
    return (isinstance(subscribers, list) and all(isinstance(s, tuple) and len(s) == 3 for s in subscribers)
            and lock is not None and hasattr(lock, "acquire") and callable(getattr(queue, "put", None)))


def room_filter(room_handle: int, participant_handle: int) -> Callable[[Any], bool]:
    """The events a room's listener uses, for the room with these native handles."""

    def keep(event: Any) -> bool:
        which = event.WhichOneof("message")
        if which == "room_event":
            return bool(event.room_event.room_handle == room_handle)
        if which == "rpc_method_invocation":
            return bool(event.rpc_method_invocation.local_participant_handle == participant_handle)
        return which not in _NOT_FOR_A_ROOM

    return keep


def narrow_room_events(room: rtc.Room) -> bool:
    """Narrow a joined room's event subscription to its own events; False (SDK filter kept) if not possible."""
    global _warned
    try:
        if not sdk_supported():
            raise LookupError(f"livekit-rtc {getattr(rtc, '__version__', '?')} is not the {_SDK_LINE}x SDK it was "
                              "written against (version or internals differ)")
        target = room._ffi_queue  # SDK internals: see the module docstring
        handle = room._ffi_handle
        if handle is None:
            raise LookupError("the room has not joined")
        keep = room_filter(handle.handle, room.local_participant._ffi_handle.handle)
        queue = _queue()
        lock: threading.RLock = queue._lock
        with lock:
            subscribers: list[tuple[Any, Any, Any]] = queue._subscribers
            for i, (q, loop, _old) in enumerate(subscribers):
                if q is target:
                    subscribers[i] = (q, loop, keep)
                    return True
        raise LookupError("the room's subscription was not found")
    except (LookupError, AttributeError, TypeError) as exc:
        if not _warned:
            _warned = True
            log.warning("every room keeps the SDK's event filter (each room sees every event): %s", exc)
        return False
