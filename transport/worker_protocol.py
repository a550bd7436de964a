"""Sans-I/O core of a LiveKit agent worker: server messages in, events out, worker messages queued to send.

LiveKit dispatches agents to *workers*: processes holding a WebSocket to the server's ``/agent`` endpoint.
This module knows the protocol and the job-slot bookkeeping; it owns no socket, reads no clock (``now`` is
passed in) and logs nothing. :mod:`transport.worker` is the asyncio shell around it.

Protocol facts (read in livekit-server v1.13.5 ``pkg/agent/worker.go``, ``pkg/service/agentservice.go``,
``pkg/service/wsprotocol.go``; livekit/protocol ``protobufs/livekit_agent.proto``, ``rpc/agent.proto``;
livekit/agents ``worker.py``; psrpc ``pkg/client/rpc.go``):

1. Every frame is one binary protobuf: we send ``WorkerMessage``, the server sends ``ServerMessage``.
   (The server would also speak protojson over text frames; we do not.)
2. The first message is ``register`` (job type, agent name, version); the server answers with
   ``RegisterWorkerResponse{worker_id, server_info}`` and drops the socket if registration does not complete
   within 10 s. Anything else first is a protocol error here.
3. For each job the server sends ``AvailabilityRequest{job}`` and waits up to 10 s (``AssignJobTimeout``) for
   ``AvailabilityResponse{job_id, available, participant_identity, ...}``. ``available=false`` makes it try
   another worker. On ``available=true`` it mints the job's participant token itself (identity from our
   answer, kind AGENT, valid 1 h) and sends ``JobAssignment{job, token}``; the OSS server leaves ``url``
   unset, so the worker joins the URL it registered with.
4. ``UpdateJobStatus`` with ``JS_SUCCESS`` or ``JS_FAILED`` ends a job on the server (only those two count as
   ended in v1.13.5; ``JS_CANCELLED`` would leave it "running" there), so a cancelled job is reported FAILED.
5. ``JobTermination{job_id}`` asks us to end a job: sent when its dispatch is deleted, or after the agent
   participant left the room (the server then already counts the job as failed).
6. ``UpdateWorkerStatus{status, load, job_count}``: the server keeps the latest ``status``/``load``. It only
   picks workers whose status is ``WS_AVAILABLE``, weighted by ``1 - load``, and a node only claims a job
   while ``sum(max(0, target_load - load))`` over its available workers is above zero (psrpc ignores zero
   affinity); ``agents.target_load`` defaults to 0.7. Reporting ``running / max`` would therefore stop
   dispatch at 70 % of the slots, so the load we report is ``full_load * busy / max_jobs`` with
   ``full_load`` = 0.7 by default: every free slot stays reachable and the weighting between workers keeps
   its proportions. ``WS_FULL`` is sent the moment every slot is taken, counting offers accepted but not yet
   assigned, so a burst of requests cannot overbook us.
7. ``WorkerPing{timestamp}`` is answered with ``WorkerPong{last_timestamp, timestamp}`` echoing ours: we use
   it for round-trip time. Liveness is the WebSocket's own ping (the server pings every 10 s).
8. ``MigrateJobRequest{job_ids}`` after a re-registration tells the server which jobs still run here (the
   Agents framework does this; the v1.13.5 OSS server ignores it).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from google.protobuf.message import DecodeError
from livekit.protocol import agent as pb

from core.errors import ConfigError, ProtocolError

__all__ = [
    "DEFAULT_FULL_LOAD",
    "DEFAULT_RESERVATION_TTL_S",
    "GoAway",
    "JobAssigned",
    "JobOffer",
    "JobTerminationRequested",
    "LagWindow",
    "Pong",
    "Registered",
    "ServerEvent",
    "SlotState",
    "WorkerProtocol",
    "decode_worker_messages",
]

DEFAULT_FULL_LOAD: Final = 0.7  # livekit-server agents.target_load default (pkg/agent/config.go)
# The server waits 10 s for an assignment answer; an accepted offer that sees no assignment for longer
# than this never will, and its slot is freed.
DEFAULT_RESERVATION_TTL_S: Final = 15.0


@dataclass(frozen=True, slots=True)
class Registered:
    worker_id: str
    server_version: str
    agent_protocol: int


@dataclass(frozen=True, slots=True)
class JobOffer:
    """An availability request and our answer (already queued to send)."""

    job_id: str
    room_name: str
    accepted: bool
    reason: str  # why declined: "draining", "full" or "duplicate"; empty when accepted


@dataclass(frozen=True, slots=True)
class JobAssigned:
    job: pb.Job
    identity: str
    url: str  # empty when the server did not name one (OSS): join the URL we registered with
    token: str  # empty when the server sent none: mint one
    expected: bool  # False: we never accepted this job (or its reservation expired)


@dataclass(frozen=True, slots=True)
class JobTerminationRequested:
    job_id: str


@dataclass(frozen=True, slots=True)
class Pong:
    rtt_ms: float


@dataclass(frozen=True, slots=True)
class GoAway:
    reason: str


ServerEvent = Registered | JobOffer | JobAssigned | JobTerminationRequested | Pong | GoAway


@dataclass(frozen=True, slots=True)
class SlotState:
    """What the worker tells the server about its capacity, and why."""

    running: int
    reserved: int
    max_jobs: int
    draining: bool
    load: float
    full: bool


class WorkerProtocol:
    """One worker's protocol state across connections; :meth:`connection_made` starts each connection.

    Input: :meth:`receive` (one binary frame). Output: events returned from :meth:`receive`, and frames
    drained from :meth:`data_to_send`. Commands from the shell (:meth:`job_ended`, :meth:`drain`,
    :meth:`ping`, :meth:`tick`) only queue frames.
    """

    def __init__(self, *, agent_name: str, version: str, max_jobs: int, ping_interval_s: float = 10.0,
                 identity_prefix: str = "agent-", full_load: float = DEFAULT_FULL_LOAD,
                 reservation_ttl_s: float = DEFAULT_RESERVATION_TTL_S) -> None:
        if max_jobs < 1:
            raise ConfigError(f"max_jobs must be at least 1, got {max_jobs}")
        if not 0.0 < full_load <= 1.0:
            raise ConfigError(f"full_load must be in (0, 1], got {full_load}")
        self.agent_name, self.version, self.max_jobs = agent_name, version, max_jobs
        self.identity_prefix, self.full_load = identity_prefix, full_load
        self._ping_interval_s = ping_interval_s
        self._reservation_ttl_s = reservation_ttl_s
        self._out: list[bytes] = []
        self._registered = False
        self._draining = False
        self._overloaded = False  # the process's event loop lags (LagWindow): take no more jobs for now
        self._running: set[str] = set()
        self._reserved: dict[str, float] = {}  # job id → time the reservation lapses
        self.worker_id = ""

    # -- state ---------------------------------------------------------------------------------------
    @property
    def registered(self) -> bool:
        return self._registered

    @property
    def draining(self) -> bool:
        return self._draining

    @property
    def running(self) -> frozenset[str]:
        return frozenset(self._running)

    def slots(self) -> SlotState:
        busy = len(self._running) + len(self._reserved)
        full = self._draining or self._overloaded or busy >= self.max_jobs
        load = self.full_load * min(busy, self.max_jobs) / self.max_jobs
        return SlotState(len(self._running), len(self._reserved), self.max_jobs, self._draining, load, full)

    def data_to_send(self) -> list[bytes]:
        out, self._out = self._out, []
        return out

    # -- connection lifecycle ------------------------------------------------------------------------
    def connection_made(self) -> None:
        """A new socket is open: queue the registration (anything queued for the old socket is dropped)."""
        self._out.clear()
        self._registered = False
        self._queue(pb.WorkerMessage(register=pb.RegisterWorkerRequest(
            type=pb.JT_ROOM, agent_name=self.agent_name, version=self.version,
            ping_interval=max(1, round(self._ping_interval_s)))))

    def connection_lost(self) -> None:
        """The socket is gone. Running jobs stay ours; reservations die with the server's pending offers."""
        self._registered = False
        self._reserved.clear()
        self._out.clear()

    # -- input ---------------------------------------------------------------------------------------
    def receive(self, data: bytes, now: float) -> list[ServerEvent]:
        """Handle one frame from the server. Raises :class:`ProtocolError` on a frame we cannot place."""
        message = pb.ServerMessage()
        try:
            message.ParseFromString(data)
        except DecodeError:
            raise ProtocolError("agent server sent a frame that is not a ServerMessage",
                                kind="undecodable") from None
        which = message.WhichOneof("message")
        if not self._registered and which != "register":
            raise ProtocolError(f"expected a register response first, got {which!r}", kind="not_registered")
        if which == "register":
            return [self._on_registered(message.register)]
        if which == "availability":
            return [self._on_availability(message.availability.job, now)]
        if which == "assignment":
            return [self._on_assignment(message.assignment)]
        if which == "termination":
            return [JobTerminationRequested(message.termination.job_id)]
        if which == "pong":
            return [Pong(rtt_ms=max(0.0, now * 1000.0 - message.pong.last_timestamp))]
        if which == "go_away":
            return [GoAway(message.go_away.reason)]
        # An empty oneof or a message type newer than our protobufs: ignore, as newer servers expect.
        return []

    def _on_registered(self, response: pb.RegisterWorkerResponse) -> Registered:
        self._registered = True
        self.worker_id = response.worker_id
        if self._running:
            self._queue(pb.WorkerMessage(migrate_job=pb.MigrateJobRequest(job_ids=sorted(self._running))))
        self._queue_status()
        return Registered(response.worker_id, response.server_info.version,
                          response.server_info.agent_protocol)

    def _on_availability(self, job: pb.Job, now: float) -> JobOffer:
        if job.id in self._running or job.id in self._reserved:
            reason = "duplicate"
        elif self._draining:
            reason = "draining"
        else:
            reason = "full" if self.slots().full else ""
        accepted = not reason
        answer = pb.AvailabilityResponse(job_id=job.id, available=accepted)
        if accepted:
            answer.participant_identity = self.identity_of(job.id)
            answer.participant_name = self.agent_name
            self._reserved[job.id] = now + self._reservation_ttl_s
        self._queue(pb.WorkerMessage(availability=answer))
        if accepted:
            self._queue_status()
        return JobOffer(job.id, job.room.name, accepted, reason)

    def _on_assignment(self, assignment: pb.JobAssignment) -> JobAssigned:
        job = assignment.job
        expected = self._reserved.pop(job.id, None) is not None
        if expected:
            self._running.add(job.id)
        elif job.id not in self._running:
            # We hold no slot for it; the server counts it as running on us, so end it there at once.
            self._queue(pb.WorkerMessage(update_job=pb.UpdateJobStatus(
                job_id=job.id, status=pb.JS_FAILED, error="worker had not accepted this job")))
        self._queue_status()
        return JobAssigned(job, self.identity_of(job.id), assignment.url, assignment.token, expected)

    # -- commands ------------------------------------------------------------------------------------
    def identity_of(self, job_id: str) -> str:
        return f"{self.identity_prefix}{job_id}"

    def job_ended(self, job_id: str, *, failed: bool, error: str = "") -> None:
        """A job's runner returned (``failed=False``) or raised / was cut short (``failed=True``)."""
        if job_id not in self._running:
            return
        self._running.discard(job_id)
        if self._registered:
            self._queue(pb.WorkerMessage(update_job=pb.UpdateJobStatus(
                job_id=job_id, status=pb.JS_FAILED if failed else pb.JS_SUCCESS, error=error[:500])))
            self._queue_status()

    @property
    def overloaded(self) -> bool:
        return self._overloaded

    def set_overloaded(self, overloaded: bool) -> None:
        """Report full (and decline offers) while the process is too busy to take another session."""
        if overloaded != self._overloaded:
            self._overloaded = overloaded
            self._queue_status()

    def drain(self) -> None:
        """Take no new jobs from now on; the server hears WS_FULL at once."""
        if not self._draining:
            self._draining = True
            self._reserved.clear()
            self._queue_status()

    def ping(self, now: float) -> None:
        if self._registered:
            self._queue(pb.WorkerMessage(ping=pb.WorkerPing(timestamp=int(now * 1000.0))))

    def tick(self, now: float) -> list[str]:
        """Free reservations whose assignment never came and refresh the status; returns the freed job ids."""
        lapsed = [job_id for job_id, until in self._reserved.items() if until <= now]
        for job_id in lapsed:
            del self._reserved[job_id]
        self._queue_status()
        return lapsed

    # -- helpers -------------------------------------------------------------------------------------
    def _queue_status(self) -> None:
        if not self._registered:
            return
        state = self.slots()
        self._queue(pb.WorkerMessage(update_worker=pb.UpdateWorkerStatus(
            status=pb.WS_FULL if state.full else pb.WS_AVAILABLE, load=state.load,
            job_count=state.running, draining=state.draining)))

    def _queue(self, message: pb.WorkerMessage) -> None:
        self._out.append(message.SerializeToString())


class LagWindow:
    """Event-loop lag over a sliding window, with hysteresis: pure, times passed in.

    ``add(lag_s, now_s)`` records how late one wakeup was. :attr:`overloaded` turns on when the window's
    p95 reaches ``full_at_s`` (docs/OPERATIONS.md: lag p99 beyond 30 ms is an audible gap, since the agent's
    voice has 30 ms of lead) and off again when it falls below half of that, so the status does not flap.
    p95 over 10 s of 100 ms probes, not p99: one stray stall on a shared machine is not a full process.
    At most ``window_s / 0.001`` samples are kept.
    """

    def __init__(self, full_at_s: float = 0.030, window_s: float = 10.0, min_samples: int = 20) -> None:
        if full_at_s <= 0 or window_s <= 0 or min_samples < 1:
            raise ConfigError("LagWindow needs full_at_s > 0, window_s > 0, min_samples >= 1")
        self.full_at_s, self.window_s, self.min_samples = full_at_s, window_s, min_samples
        self._samples: deque[tuple[float, float]] = deque(maxlen=max(min_samples, int(window_s / 0.001)))
        self.overloaded = False

    def add(self, lag_s: float, now_s: float) -> bool:
        """Record one sample; returns :attr:`overloaded` after it."""
        samples = self._samples
        samples.append((now_s, max(0.0, lag_s)))
        while samples and samples[0][0] < now_s - self.window_s:
            samples.popleft()
        if len(samples) >= self.min_samples:
            lags = sorted(lag for _, lag in samples)
            p95 = lags[min(len(lags) - 1, int(0.95 * len(lags)))]
            if self.overloaded and p95 < self.full_at_s / 2:
                self.overloaded = False
            elif not self.overloaded and p95 >= self.full_at_s:
                self.overloaded = True
        return self.overloaded


def decode_worker_messages(frames: Iterable[bytes]) -> list[pb.WorkerMessage]:
    """Parse frames we queued (for tests and debugging)."""
    out = []
    for frame in frames:
        message = pb.WorkerMessage()
        message.ParseFromString(frame)
        out.append(message)
    return out
