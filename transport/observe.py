"""The session's public observation surface: one stats snapshot, and hooks called as things happen.

- :class:`SessionStats` (``session.stats()``) composes one frozen snapshot per component: the core's counters
  (:class:`~transport.session_core.CoreStats`), the room (:class:`~transport.livekit_room.RoomStats`), the
  engine client and its protocol, the uplink, the downlink (:class:`~core.downlink.DownlinkStats`), local
  ducking, client tools, room chat, the agent state's attribute writes, continuity across reconnects and,
  optionally, per-stage timing percentiles. Reading it costs attribute reads (plus numpy percentiles with
  ``stages=True``); nothing in it is live. The Prometheus exporter and the benchmarks read this, nothing else.
- :class:`SessionHooks` are synchronous callbacks the session calls on its hot paths (each is a ``None``
  check when unset). They must return at once: they run inside the reader's callback or the player loop.
  Benchmarks record timings with them instead of wrapping the session's internals.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import numpy.typing as npt

from core.downlink import DownlinkStats
from core.timing import StageSummary
from transport.agent_state_link import AgentStateStats
from transport.chat import ChatStats
from transport.continuity import ContinuityStats
from transport.engine_client import ConnectionState
from transport.engine_protocol import Event
from transport.events import SessionState
from transport.livekit_room import RoomStats
from transport.session_core import CoreStats
from transport.tools_core import ToolStats

if TYPE_CHECKING:
    from transport.session import BridgeSession

__all__ = ["EngineStats", "ProtocolStats", "SessionHooks", "SessionStats", "UplinkStats", "metrics_dict",
           "session_stats"]

Int16Array = npt.NDArray[np.int16]
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class SessionHooks:
    """Observer callbacks; times are on the session's clock (``time.monotonic_ns`` by default)."""

    # (48 kHz samples, when they are handed to the AudioSource) — before the capture is awaited
    voice_out: Callable[[Int16Array, int], None] | None = None
    # (when the AudioSource queue was cleared) — after an interruption or a reconnect flushed the voice
    voice_cleared: Callable[[int], None] | None = None
    # (caller identity, 48 kHz samples, arrival time) — every caller frame, before the session takes it
    caller_frame: Callable[[str, Int16Array, int], None] | None = None
    # (engine event, receive time) — every event the engine client hands on, before the session acts on it
    engine_event: Callable[[Event, int], None] | None = None


@dataclass(frozen=True, slots=True)
class EngineStats:
    connects: int
    failed_attempts: int
    audio_chunks_queued: int
    audio_bytes_queued: int
    audio_dropped_not_ready: int
    audio_dropped_backpressure: int
    control_dropped_not_ready: int
    control_dropped_backpressure: int
    messages_sent: int
    callback_errors: int
    by_kind: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class ProtocolStats:
    received: Mapping[str, int]
    sent: Mapping[str, int]
    errors: Mapping[str, int]
    audio_chunks: int
    audio_bytes: int
    stale_audio_chunks: int
    stale_audio_bytes: int
    empty_audio_chunks: int
    bad_alignment: int
    unknown_events: int
    conversations: int
    pongs_dropped: int


@dataclass(frozen=True, slots=True)
class UplinkStats:
    chunks: int
    bytes: int
    starved_samples: int
    trimmed_samples: int


@dataclass(frozen=True, slots=True)
class SessionStats:
    state: SessionState
    callers: tuple[str, ...]
    conversation_id: str | None
    engine_state: ConnectionState | None
    session: CoreStats
    room: RoomStats
    engine: EngineStats | None
    protocol: ProtocolStats | None
    uplink: UplinkStats | None
    downlink: DownlinkStats | None
    stages: Mapping[str, StageSummary]
    duck: Mapping[str, Any] | None = None  # local ducking (core.ducker.Ducker.stats); None when off
    tools: ToolStats | None = None  # client tool calls (transport/tools.py)
    chat: ChatStats | None = None  # lk.chat messages (transport/chat.py)
    agent_state: AgentStateStats | None = None  # lk.agent.state and its writes (transport/agent_state_link.py)
    continuity: ContinuityStats | None = None  # transcripts handed over across reconnects (transport/continuity.py)


def _frozen_copy(cls: type[_T], source: object) -> _T:
    """A frozen snapshot of a mutable counters object with the same field names (mappings copied)."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        value = getattr(source, f.name)
        values[f.name] = dict(value) if isinstance(value, Mapping) else value
    return cls(**values)


def session_stats(session: BridgeSession, *, stages: bool = True) -> SessionStats:
    core, engine = session.core, session.engine
    up, down = core.uplink, core.downlink
    return SessionStats(
        state=core.state,
        callers=tuple(core.callers),
        conversation_id=engine.conversation_id if engine else None,
        engine_state=engine.state if engine else None,
        session=core.stats(),
        room=session.room.stats,
        engine=_frozen_copy(EngineStats, engine.counters) if engine else None,
        protocol=_frozen_copy(ProtocolStats, engine.protocol.counters) if engine else None,
        uplink=UplinkStats(chunks=up.chunks, bytes=up.bytes_out, starved_samples=up.mixer.starved_samples,
                           trimmed_samples=up.mixer.trimmed_samples) if up else None,
        downlink=down.stats() if down else None,
        stages=session.timer.summary() if stages else {},
        duck=core.ducker.stats() if core.ducker is not None else None,
        tools=session.tool_calls.stats(),
        chat=session.chat.stats(),
        agent_state=session.agent_state.stats(),
        continuity=session.continuity.stats(),
    )


def metrics_dict(stats: SessionStats) -> dict[str, Any]:
    """The snapshot as plain JSON-ready data (enums as their values, absent components as ``{}``)."""

    def plain(value: Any) -> Any:
        if isinstance(value, enum.Enum):
            return value.value
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, Mapping):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        return {} if value is None else value

    out: dict[str, Any] = {f.name: plain(getattr(stats, f.name)) for f in dataclasses.fields(stats)}
    out["callers"] = len(stats.callers)
    out["conversation_id"] = stats.conversation_id
    out["engine_state"] = stats.engine_state.value if stats.engine_state else None
    out["interruptions"] = stats.session.interruptions
    return out
