"""The SDK's native events, routed by handle: each room, stream and capture hears its own, at O(1) per event.

livekit-rtc 1.2.1 offers every event of the process's native layer to every subscriber's filter
(``FfiQueue.put``, on the SDK's callback thread, under a lock and the interpreter lock). Each
``AudioStream`` and each ``AudioSource.capture_frame`` subscribes with a filter of its own, so in one process of
N rooms every caller frame and every capture completion (100-150 a second per room) is checked by every room's,
stream's and capture's filter: the cost per room grows with N. Two changes, both reaching into the SDK:

- :func:`narrow_room_events`: once the room has joined, its handle and its local participant's handle are
  known, and its subscription's filter is replaced with one that keeps what the room's listener uses: room
  events of this room, RPC invocations for this participant, and the request callbacks (publish and
  unpublish of a track are awaited through the room's queue; the rest are rare). Capture callbacks, stream
  events and other rooms' events are no longer delivered to it.
- :func:`install_router`: the queue's ``put``/``subscribe``/``unsubscribe`` are replaced by an
  :class:`EventRouter` with the same contract. A stream's or a capture's subscription is recognised by its
  filter (the SDK's own lambda in ``AudioStream.__init__`` / ``AudioSource.capture_frame``, which reads one
  closure variable, the stream handle or the capture's ``async_id``, set once the request returns) and kept in
  a table by that key: an audio-stream event or a capture callback goes straight to the subscriptions with its
  key, plus those whose key is not known yet (which, as in the SDK, take every event of their kind). Every
  other subscription is offered every event through its own filter, as before, except that a narrowed room
  is known not to take the two hot kinds. So a caller frame or a capture costs the same at 1 room and at 50.

This uses ``FfiClient.instance.queue`` and its ``_lock`` and ``_subscribers`` (a list of ``(queue, loop,
filter)``, which only the queue's own three methods read: the router takes it over and empties it),
``Room._ffi_queue`` and ``_ffi_handle``, ``LocalParticipant._ffi_handle``, and the SDK's two filter lambdas
(recognised by their qualified name and closure variable). It is used only on the SDK line it was read on
(``livekit-rtc`` 1.2.x) and when those shapes are as expected; otherwise the SDK's own queue is kept, one
warning says so, and ``tests/test_sdk_events.py`` fails. A filter it does not recognise is simply offered
every event (correct, only slower).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from livekit import rtc

__all__ = ["EventRouter", "install_router", "narrow_room_events", "room_filter", "router", "sdk_supported"]

log = logging.getLogger(__name__)

_SDK_LINE = "1.2."
# Never for a room's listener: each has a subscription of its own (streams, captures, data tracks).
_NOT_FOR_A_ROOM = frozenset({"audio_stream_event", "video_stream_event", "capture_audio_frame",
                             "data_track_stream_event"})
_warned = False
_router_warned = False
_HOT = ("audio_stream_event", "capture_audio_frame")  # per caller frame and per capture: routed by key
# The SDK's filters for the hot kinds: (qualified name of the lambda, its closure variable, the event's key field).
_KEYED = {"audio_stream_event": ("AudioStream.__init__.<locals>.<lambda>", "handle_id", "stream_handle"),
          "capture_audio_frame": ("AudioSource.capture_frame.<locals>.<lambda>", "async_id", "async_id")}


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
        if _router is not None:  # the router holds the subscriptions
            if _router.set_filter(target, keep, rejects=_HOT):
                return True
            raise LookupError("the room's subscription was not found")
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


@dataclass(eq=False, slots=True)
class _Sub:
    queue: Any
    loop: Any
    filter: Callable[[Any], bool] | None
    rejects: tuple[str, ...] = ()  # hot kinds this filter is known to refuse (not asked for them)
    kind: str | None = None  # a keyed subscription: the hot kind it is for
    cell: Any = None  # and the closure cell holding its key (None until the SDK's request returns)
    key: int | None = None


@dataclass(eq=False, slots=True)
class _Table:
    """One hot kind's subscriptions: by key, and those whose key is not known yet."""

    field_name: str
    keyed: dict[int, list[_Sub]] = field(default_factory=dict)
    pending: list[_Sub] = field(default_factory=list)


class EventRouter:
    """``FfiQueue``'s put/subscribe/unsubscribe, routing the hot kinds by key (see the module notes).

    It takes over the SDK's subscriber list (emptied: the router holds every subscription from then on).
    ``put`` runs on the SDK's callback thread; everything is under the queue's own lock, as in the SDK.
    ``offered`` counts filter calls and direct deliveries (what ``put`` did per event, for the benchmarks)."""

    def __init__(self, queue: Any) -> None:
        from livekit.rtc._utils import Queue  # the queue class the SDK's subscribers read from

        self._new_queue = Queue
        self._lock: threading.RLock = queue._lock
        self._subs: dict[int, _Sub] = {}  # by id of the subscriber's queue
        self._general: list[_Sub] = []  # not keyed: offered every event through their filter
        # Per hot kind, the general subscriptions that may take it (not known to refuse it).
        self._general_for: dict[str, list[_Sub]] = {kind: [] for kind in _KEYED}
        self._tables = {kind: _Table(key) for kind, (_name, _var, key) in _KEYED.items()}
        self.offered = 0
        self.events = 0
        with self._lock:
            for q, loop, fn in queue._subscribers:
                self._add(_Sub(q, loop, fn))
            queue._subscribers.clear()

    # -- the SDK's contract
    def subscribe(self, loop: asyncio.AbstractEventLoop | None = None,
                  filter_fn: Callable[[Any], bool] | None = None) -> Any:
        with self._lock:
            queue: Any = self._new_queue()
            self._add(_Sub(queue, loop or asyncio.get_event_loop(), filter_fn))
            return queue

    def unsubscribe(self, queue: Any) -> None:
        with self._lock:
            sub = self._subs.pop(id(queue), None)
            if sub is None:
                return
            if sub.kind is None:
                self._general.remove(sub)
                self._sort_general()
                return
            table = self._tables[sub.kind]
            if sub.key is None:
                table.pending.remove(sub)
            else:
                same = table.keyed[sub.key]
                same.remove(sub)
                if not same:
                    del table.keyed[sub.key]

    def put(self, item: Any) -> None:
        with self._lock:
            self.events += 1
            which = item.WhichOneof("message")
            table = self._tables.get(which)
            general = self._general
            if table is not None:
                if table.pending:
                    self._promote(table)
                key = getattr(getattr(item, which), table.field_name)
                for sub in table.keyed.get(key, ()):
                    self._deliver(sub, item)
                for sub in table.pending:  # key not known yet: every event of the kind, as the SDK's filter
                    self._deliver(sub, item)
                general = self._general_for[which]
            for sub in general:
                fn = sub.filter
                if fn is not None:
                    self.offered += 1
                    try:
                        if not fn(item):
                            continue
                    except Exception:
                        pass  # as the SDK: on a filter error, deliver
                self._deliver(sub, item)

    # -- ours
    def set_filter(self, queue: Any, fn: Callable[[Any], bool], *, rejects: tuple[str, ...] = ()) -> bool:
        """A general subscription's new filter, and the hot kinds it refuses (not offered to it). False if
        ``queue`` is no general subscription of this router."""
        with self._lock:
            sub = self._subs.get(id(queue))
            if sub is None or sub.kind is not None:
                return False
            sub.filter, sub.rejects = fn, rejects
            self._sort_general()
            return True

    def filter_of(self, queue: Any) -> Callable[[Any], bool] | None:
        with self._lock:
            sub = self._subs.get(id(queue))
            return None if sub is None else sub.filter

    def subscriptions(self) -> int:
        with self._lock:
            return len(self._subs)

    def keyed_subscriptions(self) -> int:
        with self._lock:
            return sum(len(t.pending) + sum(map(len, t.keyed.values())) for t in self._tables.values())

    def _deliver(self, sub: _Sub, item: Any) -> None:
        self.offered += 1
        try:
            sub.loop.call_soon_threadsafe(sub.queue.put_nowait, item)
        except Exception as exc:  # the loop was closed without unsubscribing first: as the SDK, log it
            log.error("error putting an SDK event to a queue: %s", exc)

    def _add(self, sub: _Sub) -> None:
        self._subs[id(sub.queue)] = sub
        kind, cell = _keyed(sub.filter)
        if kind is None:
            self._general.append(sub)
            self._sort_general()
            return
        sub.kind, sub.cell = kind, cell
        table = self._tables[kind]
        table.pending.append(sub)
        self._promote(table)

    def _sort_general(self) -> None:
        """Which general subscriptions each hot kind is offered to (rebuilt when one comes, goes or narrows:
        per room and per rare request, never per frame)."""
        for kind, subs in self._general_for.items():
            subs[:] = [sub for sub in self._general if kind not in sub.rejects]

    @staticmethod
    def _promote(table: _Table) -> None:
        still: list[_Sub] = []
        for sub in table.pending:
            key = sub.cell.cell_contents
            if key is None:
                still.append(sub)
            else:
                sub.key = int(key)
                table.keyed.setdefault(sub.key, []).append(sub)
        table.pending = still


def _keyed(fn: Callable[[Any], bool] | None) -> tuple[str | None, Any]:
    """(hot kind, closure cell of its key) if ``fn`` is the SDK's stream or capture filter, else (None, None)."""
    code = getattr(fn, "__code__", None)
    cells = getattr(fn, "__closure__", None)
    if code is None or not cells:
        return None, None
    for kind, (qualname, var, _key) in _KEYED.items():
        if getattr(fn, "__qualname__", "") == qualname and code.co_freevars == (var,) and kind in code.co_consts:
            return kind, cells[0]
    return None, None


_router: EventRouter | None = None


def router() -> EventRouter | None:
    """The process's router, once :func:`install_router` succeeded."""
    return _router


def install_router() -> bool:
    """Route this process's SDK events by handle (once; later calls return whether it is in place)."""
    global _router, _router_warned
    if _router is not None:
        return True
    try:
        if not sdk_supported():
            raise LookupError(f"livekit-rtc {getattr(rtc, '__version__', '?')} is not the {_SDK_LINE}x SDK it was "
                              "written against (version or internals differ)")
        queue = _queue()
        with queue._lock:
            routed = EventRouter(queue)
            queue.put, queue.subscribe, queue.unsubscribe = routed.put, routed.subscribe, routed.unsubscribe
            _router = routed
        return True
    except (LookupError, AttributeError, TypeError) as exc:
        if not _router_warned:
            _router_warned = True
            log.warning("the SDK's event queue is kept (every event offered to every subscription): %s", exc)
        return False
