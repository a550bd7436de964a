"""What a worker is told (:class:`WorkerConfig`), what each job gets (:class:`JobContext`), what it reports
(:class:`WorkerStats`). Plain data, checked when built; the worker itself is :mod:`transport.worker`."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlsplit, urlunsplit

from core.errors import ConfigError
from core.redact import redact_url
from transport.worker_protocol import DEFAULT_FULL_LOAD

__all__ = ["VERSION", "JobContext", "JobRunner", "WorkerConfig", "WorkerStats", "agent_endpoint"]

VERSION: Final = "lk-speech-bridge/0.1"


@dataclass(frozen=True)
class WorkerConfig:
    url: str
    api_key: str
    api_secret: str = field(repr=False)
    agent_name: str
    max_jobs: int = 4
    version: str = VERSION
    # Our WorkerPing cadence (round-trip time only; the WebSocket's own pings detect a dead socket).
    ping_interval_s: float = 10.0
    # Periodic UpdateWorkerStatus on top of the ones sent on every change; also frees lapsed reservations.
    status_interval_s: float = 5.0
    # A job asked to end (JobTermination, or drain after its grace) is cancelled if still running after this.
    # Longer than a session's own close budget (room first, then the engine's 5 s close timeout), so the
    # worker's cancel never cuts a teardown that is still within its budget; a cancelled job then gets the
    # same time again to unwind before the worker stops waiting for it.
    stop_timeout_s: float = 12.0
    full_load: float = DEFAULT_FULL_LOAD
    identity_prefix: str = "agent-"
    open_timeout_s: float = 10.0
    # Reconnect attempts per outage before run() gives up; None retries for ever (a worker's normal life).
    max_reconnects: int | None = None
    # Report full while the event loop's lag (p95 of 100 ms probes over 10 s) is at or above this: the
    # threshold in docs/OPERATIONS.md past which the agent's voice gaps. None: slots only.
    overload_lag_s: float | None = 0.030

    def __post_init__(self) -> None:
        if not self.agent_name:
            raise ConfigError("an agent name is needed for explicit dispatch")
        if not self.api_key or not self.api_secret:
            raise ConfigError("LiveKit API key and secret must both be set")
        agent_endpoint(self.url)  # validates the scheme

    @classmethod
    def from_env(cls, agent_name: str, **overrides: object) -> WorkerConfig:
        """LIVEKIT_URL / LIVEKIT_API_KEY / LIVEKIT_API_SECRET, defaulting to a local ``--dev`` server."""
        from transport.config import from_env

        livekit = from_env(os.environ).livekit
        values: dict[str, object] = {"url": livekit.url, "api_key": livekit.api_key,
                                     "api_secret": livekit.api_secret, "agent_name": agent_name}
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]


@dataclass(frozen=True)
class JobContext:
    """Everything a job runner needs to join its room; ``termination`` is set when it should end."""

    job_id: str
    dispatch_id: str
    room_name: str
    url: str
    token: str = field(repr=False)
    identity: str
    agent_name: str
    metadata: str  # the dispatch's metadata (RoomAgentDispatch.metadata)
    worker_id: str
    termination: asyncio.Event = field(default_factory=asyncio.Event, repr=False, compare=False)

    @property
    def termination_requested(self) -> bool:
        return self.termination.is_set()


JobRunner = Callable[[JobContext], Awaitable[None]]


@dataclass(frozen=True)
class WorkerStats:
    registered: bool
    worker_id: str
    draining: bool
    max_jobs: int
    jobs_running: int
    jobs_reserved: int
    load: float
    jobs_offered: int
    jobs_declined: int
    jobs_completed: int
    jobs_failed: int
    registrations: int
    connection_failures: int
    last_rtt_ms: float | None


def agent_endpoint(url: str) -> str:
    """``ws(s)://host[/prefix]/agent`` for a LiveKit URL given as ws(s):// or http(s)://."""
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise ConfigError(f"LiveKit URL must be ws(s):// or http(s)://, got {redact_url(url)!r}")
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + "/agent", "", ""))


