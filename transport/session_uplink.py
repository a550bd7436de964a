"""The session's caller → engine half, without I/O: hold, replay, chunk, keep alive.

Caller audio before the conversation can take it (waiting for the first caller, connecting, reconnecting) is
held in a :class:`~core.backlog.CallerBacklog` (2 s per caller, oldest dropped and counted) and replayed into
the uplink when the conversation's formats arrive, in messages of up to 250 ms so a 2 s backlog is 8 messages,
well inside the engine client's 50-message audio queue.

Keepalive: with a conversation open and no caller audio for 250 ms (empty room, "start at once"), one chunk of
silence goes out, as long as an ordinary chunk so the engine sees one chunk size; else the engine ends the
conversation after 60 s (``transport_receive_timeout``). 4 messages a second when idle, none while callers
talk. Whether a keepalive is wanted at all (the session's state, an empty room) is
:class:`~transport.session_core.SessionCore`'s decision; this part only knows when one is due.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from core.backlog import CallerBacklog
from core.clock import MS
from core.formats import ROOM_RATE, AudioFormat
from core.uplink import Uplink
from transport.session_actions import NOTHING, Action, CoreCounters, SendAudio

__all__ = ["KEEPALIVE_NS", "REPLAY_MESSAGE_MS", "UplinkPath", "silence"]

KEEPALIVE_NS = 250 * MS
REPLAY_MESSAGE_MS = 250  # replayed backlog goes out in messages of up to this much audio
Int16Array = npt.NDArray[np.int16]


class UplinkPath:
    """Callers' frames to :class:`SendAudio` actions: into the uplink while a conversation is open, else held."""

    def __init__(self, counters: CoreCounters, *, backlog_ms: int = 2000, keepalive_ns: int = KEEPALIVE_NS,
                 rate: int = ROOM_RATE) -> None:
        self.uplink: Uplink | None = None
        self.backlog = CallerBacklog(backlog_ms, rate)  # at the rate callers are read, converted when it changes
        self.open = False  # a conversation's metadata arrived and it has not been lost since
        self._counters = counters
        self._keepalive_ns = keepalive_ns
        self._last_sent_ns = 0

    def join(self, identity: str) -> None:
        if self.uplink is not None:
            self.uplink.join(identity)

    def leave(self, identity: str) -> None:
        if self.uplink is not None:
            self.uplink.leave(identity)
        self.backlog.forget(identity)

    def frame(self, identity: str, samples: Int16Array, recv_ns: int, *, hold: bool) -> Sequence[Action]:
        """One caller frame (at the callers' rate); the chunks it completes. Held (when ``hold``) while no
        conversation is open."""
        up = self.uplink
        if up is None or not self.open:
            if hold:
                self.backlog.push(identity, samples, recv_ns)
            return NOTHING
        up.write(identity, samples, recv_ns)
        if not up.ready(recv_ns):
            return NOTHING
        actions: list[Action] = []
        while up.ready(recv_ns):
            chunk = up.next_chunk(recv_ns)
            if chunk:
                actions.append(SendAudio(chunk, recv_ns))
        if actions:
            self._last_sent_ns = recv_ns
        return actions

    def opened(self, up: Uplink, callers: Sequence[str], now_ns: int) -> list[Action]:
        """A conversation takes audio through ``up`` (a new one when its format changed): replay what was held."""
        if up is not self.uplink:
            self.uplink = up
            for caller in callers:
                up.join(caller)
        self.open = True
        self._last_sent_ns = now_ns
        return self._replay(up, now_ns)

    def _replay(self, up: Uplink, now_ns: int) -> list[Action]:
        chunks: list[bytes] = []
        for frame in self.backlog.drain():
            up.write(frame.identity, frame.samples, frame.recv_ns)
            while up.ready(frame.recv_ns):
                chunk = up.next_chunk(frame.recv_ns)
                if chunk:
                    chunks.append(chunk)
        if not chunks:
            return []
        self._counters.replayed_chunks += len(chunks)
        self._last_sent_ns = now_ns
        # PCM16 and μ-law are sample-wise encodings: consecutive chunks concatenate into one longer chunk.
        limit = len(silence(up.format, REPLAY_MESSAGE_MS))
        messages: list[Action] = []
        pending: list[bytes] = []
        size = 0
        for chunk in chunks:
            if pending and size + len(chunk) > limit:
                messages.append(SendAudio(b"".join(pending), None))
                pending, size = [], 0
            pending.append(chunk)
            size += len(chunk)
        messages.append(SendAudio(b"".join(pending), None))
        return messages

    def keepalive_at(self) -> int | None:
        """When silence is due if no caller audio goes out before; None while no conversation is open."""
        if not self.open or self.uplink is None:
            return None
        return self._last_sent_ns + self._keepalive_ns

    def keepalive(self, now_ns: int) -> SendAudio:
        assert self.uplink is not None
        # As long as an ordinary chunk: the engine sees one chunk size whatever the room does.
        self._counters.keepalive_chunks += 1
        self._last_sent_ns = now_ns
        return SendAudio(silence(self.uplink.format, self.uplink.chunk_ms), None, keepalive=True)


def silence(fmt: AudioFormat, ms: int) -> bytes:
    return fmt.encode(np.zeros(fmt.rate * ms // 1000, dtype=np.int16))
