"""What :class:`~transport.metrics.BridgeMetrics` reads from one session at a scrape: its counters and gauges
under their metric names, the interruption-flush histogram, and the bucket counts themselves.

Collection only: nothing here knows Prometheus' types or serves anything (that is :mod:`transport.metrics`).
Everything is read from the session's public surface: ``session.stats(stages=False)``, the core's counters and
``session.timer.recent("interrupt.flush")``; no audio is copied.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from core.clock import SECOND
from core.formats import ROOM_RATE
from transport.engine_client import ConnectionState
from transport.events import SessionState

if TYPE_CHECKING:
    from transport.session import BridgeSession

__all__ = [
    "COUNTERS",
    "GAUGES",
    "INTERRUPTION_BUCKETS",
    "LAG_BUCKETS",
    "CounterKey",
    "Histogram",
    "Snapshot",
    "Tracked",
    "add_counts",
    "read_session",
]

# The flush itself takes microseconds; a slow one means the loop was busy. Upper buckets catch pathologies.
INTERRUPTION_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
# The agent voice has 30 ms of lead: lag beyond that is an audible gap.
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_VOICE_RATE = ROOM_RATE


class Histogram:
    """Bucket counts (not cumulative), sum and count; rendered cumulatively."""

    __slots__ = ("bounds", "count", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def merge(self, other: Histogram) -> None:
        for i, n in enumerate(other.counts):
            self.counts[i] += n
        self.total += other.total
        self.count += other.count

    def buckets(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            running += n
            out.append((_float(bound), float(running)))
        out.append(("+Inf", float(self.count)))
        return out


def _float(value: float) -> str:
    return "+Inf" if math.isinf(value) else repr(float(value))


# Counters summed into the totals (and kept for sessions that ended). Keys of Snapshot.counters.
COUNTERS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("engine_chunks_total", "Audio chunks exchanged with the Speech Engine.", ("direction",)),
    ("engine_bytes_total", "Raw audio bytes exchanged with the Speech Engine (before base64).", ("direction",)),
    ("livekit_frames_total", "Audio frames exchanged with the LiveKit room.", ("direction",)),
    ("uplink_dropped_chunks_total", "Caller audio chunks not sent to the engine.", ("reason",)),
    ("control_dropped_messages_total", "Messages to the engine (text, context, tool results) not sent.",
     ("reason",)),
    ("stale_chunks_dropped_total", "Agent audio chunks dropped as older than the last interruption.", ()),
    ("interruptions_total", "Interruptions (barge-ins) handled.", ()),
    ("ducks_total", "Local ducks of the agent's voice, by outcome.", ("outcome",)),
    ("playout_underruns_total", "Agent audio arrived late mid-reply (silence was played).", ()),
    ("playout_refused_seconds_total", "Agent audio refused by the playout buffer's cap.", ()),
    ("engine_reconnects_total", "Engine conversations re-established after a loss.", ()),
    ("engine_failed_attempts_total", "Engine connection attempts that failed.", ()),
    ("livekit_reconnects_total", "LiveKit room connections restored by the SDK.", ()),
    ("livekit_ghosts_removed_total", "Leaves the server never applied: the agent removed through its API.", ()),
    ("protocol_errors_total", "Engine messages dropped as malformed, by kind.", ("kind",)),
    ("tool_calls_total", "Client tool calls, by outcome.", ("outcome",)),
    ("chat_messages_total", "Room chat (lk.chat) messages, by outcome.", ("outcome",)),
    ("agent_attribute_writes_total", "Agent state attribute values, by outcome.", ("outcome",)),
    ("continuity_handovers_total", "Transcripts handed to a re-established engine conversation.", ()),
)
GAUGES: tuple[tuple[str, str], ...] = (
    ("callers", "Callers in the room."),
    ("engine_connected", "1 while an engine conversation is established."),
    ("playout_depth_seconds", "Agent audio buffered and not yet played."),
)

# ToolStats field → outcome label
_TOOL_OUTCOMES = (("local", "local"), ("forwarded", "forwarded"), ("errors", "error"), ("timeouts", "timeout"),
                  ("unknown", "unknown"), ("rejected", "rejected"), ("abandoned", "abandoned"))

CounterKey = tuple[str, tuple[str, ...]]  # (metric name, label values beyond room/session)


def add_counts(into: dict[CounterKey, float], values: dict[CounterKey, float]) -> None:
    for key, value in values.items():
        into[key] = into.get(key, 0.0) + value


@dataclass(slots=True)
class Snapshot:
    counters: dict[CounterKey, float] = field(default_factory=dict)
    gauges: dict[str, float] = field(default_factory=dict)
    running: bool = False


def read_session(session: BridgeSession) -> Snapshot:
    """The session's public stats snapshot, without percentiles; no copies of audio."""
    stats = session.stats(stages=False)
    snap = Snapshot()
    c = snap.counters
    room, engine, protocol, down = stats.room, stats.engine, stats.protocol, stats.downlink
    c["livekit_frames_total", ("in",)] = room.frames_in
    c["livekit_frames_total", ("out",)] = room.frames_out
    c["livekit_reconnects_total", ()] = room.reconnects
    c["livekit_ghosts_removed_total", ()] = room.ghosts_removed
    c["interruptions_total", ()] = stats.session.interruptions
    ducker = session.core.ducker
    if ducker is not None:
        c["ducks_total", ("started",)] = ducker.duck.started
        c["ducks_total", ("confirmed",)] = ducker.duck.confirmed
        c["ducks_total", ("released",)] = ducker.duck.released
    if engine is not None and protocol is not None:
        c["engine_chunks_total", ("sent",)] = engine.audio_chunks_queued
        c["engine_bytes_total", ("sent",)] = engine.audio_bytes_queued
        c["engine_chunks_total", ("received",)] = protocol.audio_chunks
        c["engine_bytes_total", ("received",)] = protocol.audio_bytes
        c["uplink_dropped_chunks_total", ("not_ready",)] = engine.audio_dropped_not_ready
        c["uplink_dropped_chunks_total", ("backpressure",)] = engine.audio_dropped_backpressure
        c["control_dropped_messages_total", ("not_ready",)] = engine.control_dropped_not_ready
        c["control_dropped_messages_total", ("backpressure",)] = engine.control_dropped_backpressure
        c["stale_chunks_dropped_total", ()] = protocol.stale_audio_chunks
        c["engine_reconnects_total", ()] = max(0, engine.connects - 1)
        c["engine_failed_attempts_total", ()] = engine.failed_attempts
        for kind, n in protocol.errors.items():
            c["protocol_errors_total", (kind,)] = n
    if down is not None:
        c["playout_underruns_total", ()] = down.underruns
        c["playout_refused_seconds_total", ()] = down.refused_samples / _VOICE_RATE
    if stats.tools is not None:
        for field_name, outcome in _TOOL_OUTCOMES:
            c["tool_calls_total", (outcome,)] = getattr(stats.tools, field_name)
    if stats.chat is not None:
        for outcome in ("sent", "truncated", "ignored", "refused", "failed", "not_sent"):
            c["chat_messages_total", (outcome,)] = getattr(stats.chat, outcome)
    if stats.agent_state is not None:
        c["agent_attribute_writes_total", ("sent",)] = stats.agent_state.attribute_calls
        c["agent_attribute_writes_total", ("failed",)] = stats.agent_state.attribute_failures
        c["agent_attribute_writes_total", ("coalesced",)] = stats.agent_state.attributes_coalesced
    if stats.continuity is not None:
        c["continuity_handovers_total", ()] = stats.continuity.handovers
    snap.gauges["callers"] = len(stats.callers)
    snap.gauges["engine_connected"] = 1.0 if stats.engine_state is ConnectionState.CONNECTED else 0.0
    snap.gauges["playout_depth_seconds"] = down.depth_ms / 1000 if down is not None else 0.0
    snap.running = stats.state not in (SessionState.STOPPING, SessionState.STOPPED)
    return snap


class Tracked:
    """One session and what the collector has already taken from it."""

    __slots__ = ("flush_seen", "interruptions", "session")

    def __init__(self, session: BridgeSession) -> None:
        self.session = session
        self.interruptions = Histogram(INTERRUPTION_BUCKETS)
        self.flush_seen = 0

    @property
    def labels(self) -> tuple[str, str]:
        context = self.session.log_context
        return context.room or "", context.session

    def update_histogram(self) -> None:
        """Observe the interruption flushes timed since the previous scrape (the session's own count says
        how many; its stage timer keeps the most recent 2048 durations)."""
        session = self.session
        count = session.core.stats().interruptions
        new = count - self.flush_seen
        if new <= 0:
            return
        self.flush_seen = count
        recent = session.timer.recent("interrupt.flush")
        for ns in recent[max(0, recent.size - new):]:
            self.interruptions.observe(int(ns) / SECOND)
