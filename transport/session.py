"""One bridge session: one LiveKit room ⇄ one Speech Engine conversation.

Data flow (see ``shared/ARCHITECTURE.md``)::

    callers' AudioStreams ─► Uplink (mixer → FIR → encode) ─► EngineClient.send_audio
    EngineClient reader ─► on_event ─► Downlink (gate → decode → soxr → playout) ─► pacer ─► AudioSource

Rules the code here keeps:

- Callbacks from both edges are synchronous and short. A caller's frame goes into the mixer and, when a chunk
  is complete, straight to the engine client's send queue; an engine ``audio`` event goes into the playout
  buffer; an ``interruption`` flushes the playout buffer, clears the AudioSource queue and wakes the pacer,
  all inside the reader's callback, before the reader reads the next message.
- Only :meth:`BridgeSession._play` awaits the AudioSource. It sleeps until the pacer's next deadline or until
  audio arrives, and never holds more than the pacer's lead in the native queue.
- Nothing here installs signal handlers or configures logging: the session runs inside someone else's
  process as easily as inside ``runner.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from core.clock import MS, SECOND, Clock, MonotonicClock
from core.downlink import Downlink, DownlinkConfig
from core.errors import BridgeError, ConfigError, EngineError, LiveKitError
from core.formats import AudioFormat
from core.timing import StageTimer
from core.uplink import DEFAULT_CHUNK_MS, Uplink
from transport.engine_client import ConnectionState, EngineClient, InitiationData, StateChange
from transport.engine_protocol import (
    AgentAudio,
    AgentResponse,
    AgentResponseCorrection,
    ConversationMetadata,
    EngineErrorEvent,
    Event,
    Interruption,
    TentativeUserTranscript,
    UserTranscript,
)
from transport.livekit_room import RoomLink, RoomLinkConfig
from transport.log_context import LogContext, bound, new_session_id
from transport.signed_url import DEFAULT_API_BASE, UrlProvider, signed_url_provider, static_url
from transport.transcripts import TranscriptPublisher

__all__ = ["BridgeSession", "EngineSettings", "SessionConfig", "SessionEvent", "SessionState", "serve"]

log = logging.getLogger(__name__)

# While no caller audio flows (empty room, "start at once"), the engine still needs input or it ends the
# conversation after 60 s (transport_receive_timeout): a quarter second of silence every quarter second,
# the documented chunk size, costs 4 messages a second.
_KEEPALIVE_NS = 250 * MS
_KEEP_INTERRUPTIONS = 1000


class SessionState(enum.Enum):
    CREATED = "created"
    STARTING = "starting"
    WAITING = "waiting"  # in the room, engine not started (start_when="first_caller")
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """Where the conversation lives. One of: ``url`` (connect as given) or ``api_key`` + ``agent_id``
    (mint a fresh signed URL per connection, the key never leaves this process)."""

    url: str | None = None
    api_key: str | None = None
    agent_id: str | None = None
    api_base: str = DEFAULT_API_BASE
    init: InitiationData = field(default_factory=InitiationData)
    max_attempts: int = 6
    # Used only when the engine's metadata does not name a format (the JS SDK assumes pcm_16000 too).
    fallback_input_format: str = "pcm_16000"

    def url_provider(self) -> UrlProvider:
        if self.url:
            return static_url(self.url)
        if self.api_key and self.agent_id:
            return signed_url_provider(self.api_key, self.agent_id, base_url=self.api_base)
        raise ConfigError("the engine needs either a conversation URL or an API key and agent id")

    def secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self.api_key,) if s)


@dataclass(frozen=True, slots=True)
class SessionConfig:
    livekit_url: str
    livekit_token: str
    engine: EngineSettings
    identity: str = ""
    chunk_ms: int = DEFAULT_CHUNK_MS
    queue_ms: int = 50
    caller_frame_ms: int = 10
    downlink: DownlinkConfig = field(default_factory=DownlinkConfig)
    start_when: Literal["first_caller", "immediately"] = "first_caller"
    end_when_empty: bool = True
    linger_s: float = 10.0
    publish_transcripts: bool = True
    ignore_identity_prefixes: tuple[str, ...] = ()
    events_queue: int = 256


@dataclass(frozen=True, slots=True)
class SessionEvent:
    """What a supervisor may want to know. ``kind``: state, caller_joined, caller_left, engine_state,
    user_transcript, tentative_user_transcript, agent_response, agent_response_correction, interruption,
    engine_error, error."""

    kind: str
    at_ns: int
    data: dict[str, Any] = field(default_factory=dict)


class BridgeSession:
    """``await session.start()``, then ``await session.wait()``; ``await session.stop()`` from anywhere."""

    def __init__(self, config: SessionConfig, *, clock: Clock | None = None,
                 client_factory: Callable[..., EngineClient] = EngineClient) -> None:
        self.config = config
        self.clock = clock or MonotonicClock()
        self.timer = StageTimer()
        self.state = SessionState.CREATED
        self.log_context = LogContext(session=new_session_id())  # ids on every log record of this session
        self._client_factory = client_factory
        self.room = RoomLink(
            RoomLinkConfig(url=config.livekit_url, token=config.livekit_token, identity=config.identity,
                           queue_ms=config.queue_ms, caller_frame_ms=config.caller_frame_ms,
                           ignore_identity_prefixes=config.ignore_identity_prefixes),
            on_caller_audio=self._on_caller_audio, on_caller_joined=self._on_caller_joined,
            on_caller_left=self._on_caller_left, on_state=self._on_room_state, clock=self.clock)
        self.engine: EngineClient | None = None
        self.uplink: Uplink | None = None
        self.downlink: Downlink | None = None
        self.transcripts: TranscriptPublisher | None = None
        self._subscribers: list[asyncio.Queue[SessionEvent | None]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._wake = asyncio.Event()
        self._done = asyncio.Event()
        self._error: BaseException | None = None
        self._teardown_task: asyncio.Task[None] | None = None
        self._linger: asyncio.TimerHandle | None = None
        self._last_uplink_ns = 0
        # The most recent interruptions (an engine can send any number of them); the count is in counters.
        self.interruptions: deque[dict[str, int]] = deque(maxlen=_KEEP_INTERRUPTIONS)
        self.counters: dict[str, int] = {"chunks_sent": 0, "chunks_dropped": 0, "audio_events": 0,
                                         "bad_audio": 0, "keepalive_chunks": 0, "interruptions": 0}

    # ------------------------------------------------------------------ public API
    async def start(self) -> None:
        """Join the room and (per ``start_when``) open the conversation; raise if either edge fails."""
        with bound(self.log_context):  # every task started from here on logs with this session's ids
            await self._start()

    async def _start(self) -> None:
        if self.state is not SessionState.CREATED:
            raise ConfigError("a session starts once")
        self._set_state(SessionState.STARTING)
        try:
            await self.room.connect()
            self.log_context.room = self.room.room.name
            if self.config.publish_transcripts:
                self.transcripts = TranscriptPublisher(self.room.room)
            if self.config.start_when == "immediately" or self.room.callers:
                await self._start_engine()
            else:
                self._set_state(SessionState.WAITING)
            self._spawn(self._play(), "playout")
            self._spawn(self._keepalive(), "keepalive")
            self._spawn(self._watch_room(), "room-watch")
        except BaseException:
            await self._teardown()
            raise

    async def wait(self) -> None:
        """Until the session ends; re-raises the error that ended it, if any."""
        await self._done.wait()
        if self._error is not None:
            raise self._error

    async def stop(self) -> None:
        """Close both sides and every task. Safe to call more than once and from any task."""
        if self.state in (SessionState.STOPPING, SessionState.STOPPED):
            await self._done.wait()
            return
        with bound(self.log_context):
            await self._teardown()

    async def events(self) -> AsyncIterator[SessionEvent]:
        """Every event from now until the session stops. Slow consumers lose the oldest events."""
        queue: asyncio.Queue[SessionEvent | None] = asyncio.Queue(self.config.events_queue)
        self._subscribers.append(queue)
        try:
            while (event := await queue.get()) is not None:
                yield event
        finally:
            self._subscribers.remove(queue)

    def metrics(self) -> dict[str, Any]:
        engine, up, down = self.engine, self.uplink, self.downlink
        return {
            "state": self.state.value,
            "callers": len(self.room.callers),
            "conversation_id": engine.conversation_id if engine else None,
            "engine_state": engine.state.value if engine else None,
            "session": dict(self.counters),
            "room": vars_of(self.room.stats),
            "engine": vars_of(engine.counters) if engine else {},
            "protocol": vars_of(engine.protocol.counters) if engine else {},
            "uplink": {"chunks": up.chunks, "bytes": up.bytes_out,
                       "starved_samples": up.mixer.starved_samples,
                       "trimmed_samples": up.mixer.trimmed_samples} if up else {},
            "downlink": down.stats() if down else {},
            "interruptions": self.counters["interruptions"],
            "stages": {k: vars_of(v) for k, v in self.timer.summary().items()},
        }

    # ------------------------------------------------------------------ engine side
    async def _start_engine(self) -> None:
        if self.engine is not None:
            return
        settings = self.config.engine
        self.engine = self._client_factory(
            settings.url_provider(), self._on_engine_event, on_state=self._on_engine_state,
            init=settings.init, clock=self.clock, max_attempts=settings.max_attempts,
            secrets=settings.secrets())
        await self.engine.start()
        self._set_state(SessionState.RUNNING)
        self._spawn(self._watch_engine(self.engine), "engine-watch")

    def _configure_formats(self, metadata: ConversationMetadata) -> None:
        """(Re)build both directions for the formats this conversation announced."""
        self.log_context.conversation_id = metadata.conversation_id
        up, down = self.uplink, self.downlink
        if up is None or up.format != metadata.input_format:
            self.uplink = Uplink(metadata.input_format, chunk_ms=self.config.chunk_ms, timer=self.timer)
            for caller in self.room.callers:
                self.uplink.join(caller)
        if down is None or down.format != metadata.output_format:
            self.downlink = Downlink(metadata.output_format, self.clock, self.config.downlink, timer=self.timer)
        log.info("conversation %s: user audio %s, agent audio %s", metadata.conversation_id,
                 metadata.input_format, metadata.output_format)

    def _on_engine_event(self, event: Event, recv_ns: int) -> None:
        if isinstance(event, AgentAudio):
            self._on_agent_audio(event, recv_ns)
        elif isinstance(event, Interruption):
            self._on_interruption(event, recv_ns)
        elif isinstance(event, ConversationMetadata):
            self._configure_formats(event)
        elif isinstance(event, UserTranscript | TentativeUserTranscript):
            final = isinstance(event, UserTranscript)
            self._emit("user_transcript" if final else "tentative_user_transcript",
                       text=event.text, event_id=event.event_id)
            if self.transcripts is not None:
                self.transcripts.user(self._speaker(), event.text, event_id=event.event_id, final=final)
        elif isinstance(event, AgentResponse):
            self._emit("agent_response", text=event.text, event_id=event.event_id)
            if self.transcripts is not None:
                self.transcripts.agent(self.room.identity, event.text, event_id=event.event_id)
        elif isinstance(event, AgentResponseCorrection):
            self._emit("agent_response_correction", original=event.original, corrected=event.corrected,
                       event_id=event.event_id)
            if self.transcripts is not None:
                self.transcripts.agent(self.room.identity, event.corrected, event_id=event.event_id)
        elif isinstance(event, EngineErrorEvent):
            self._emit("engine_error", code=event.code, error_type=event.error_type, message=event.message)

    def _on_agent_audio(self, event: AgentAudio, recv_ns: int) -> None:
        down = self.downlink
        if down is None:
            return
        self.counters["audio_events"] += 1
        try:
            down.push(event.audio, recv_ns)
        except BridgeError as exc:
            self.counters["bad_audio"] += 1
            log.warning("dropped an audio event: %s", exc)
            return
        self._wake.set()

    def _on_interruption(self, event: Interruption, recv_ns: int) -> None:
        """Silence first, bookkeeping after: nothing here awaits."""
        down = self.downlink
        dropped = down.interrupt() if down is not None else 0
        self.room.clear_voice()
        self._wake.set()
        done_ns = self.clock.now_ns()
        self.timer.add("interrupt.flush", done_ns - recv_ns)
        self.counters["interruptions"] += 1
        self.interruptions.append({"event_id": event.event_id, "recv_ns": recv_ns, "silenced_ns": done_ns,
                                   "dropped_samples": dropped})
        self._emit("interruption", event_id=event.event_id, dropped_ms=dropped * 1000 // 48_000)

    def _on_engine_state(self, change: StateChange) -> None:
        if change.state is ConnectionState.RECONNECTING:
            # The next conversation's audio has nothing to continue; what is buffered belongs to the old one.
            if self.downlink is not None:
                self.downlink.interrupt()
            self.room.clear_voice()
        self._emit("engine_state", state=change.state.value, attempt=change.attempt,
                   conversation_id=change.conversation_id, close_code=change.close_code, reason=change.reason)

    async def _watch_engine(self, engine: EngineClient) -> None:
        try:
            await engine.wait()
            log.info("the engine ended the conversation")
            self._finish(None)
        except EngineError as exc:
            log.error("engine connection failed: %s", exc)
            self._emit("error", message=str(exc))
            self._finish(exc)

    # ------------------------------------------------------------------ room side
    def _speaker(self) -> str:
        callers = self.room.callers
        return callers[0] if len(callers) == 1 else ""

    def _on_caller_joined(self, identity: str) -> None:
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        if self.uplink is not None:
            self.uplink.join(identity)
        self._emit("caller_joined", identity=identity)
        if self.engine is None and self.state is SessionState.WAITING:
            self._spawn(self._start_engine_safely(), "engine-start")

    async def _start_engine_safely(self) -> None:
        try:
            await self._start_engine()
        except BridgeError as exc:
            log.error("could not start the engine conversation: %s", exc)
            self._emit("error", message=str(exc))
            self._finish(exc)

    def _on_caller_left(self, identity: str) -> None:
        if self.uplink is not None:
            self.uplink.leave(identity)
        self._emit("caller_left", identity=identity)
        if self.config.end_when_empty and not self.room.callers and self.state is SessionState.RUNNING:
            loop = asyncio.get_running_loop()
            self._linger = loop.call_later(self.config.linger_s, self._room_empty)

    def _room_empty(self) -> None:
        if not self.room.callers:
            log.info("room empty for %.1f s: ending the session", self.config.linger_s)
            self._finish(None)

    def _on_caller_audio(self, identity: str, samples: npt.NDArray[np.int16], recv_ns: int) -> None:
        up, engine = self.uplink, self.engine
        if up is None or engine is None:
            return
        up.write(identity, samples, recv_ns)
        while up.ready(recv_ns):
            chunk = up.next_chunk(recv_ns)
            if not chunk:
                continue
            if engine.send_audio(chunk):
                self.counters["chunks_sent"] += 1
            else:
                self.counters["chunks_dropped"] += 1
            self._last_uplink_ns = self.clock.now_ns()
            self.timer.add("uplink.total", self._last_uplink_ns - recv_ns)
            self.timer.add("uplink.hold", self._last_uplink_ns - recv_ns + up.last_held_ns)

    def _on_room_state(self, state: str) -> None:
        self._emit("room_state", state=state)

    async def _watch_room(self) -> None:
        await self.room.disconnected.wait()
        if self.state not in (SessionState.STOPPING, SessionState.STOPPED):
            self._finish(None if self.room.disconnect_reason == "CLIENT_INITIATED" else
                         LiveKitError(f"removed from the room ({self.room.disconnect_reason})"))

    # ------------------------------------------------------------------ playout and keepalive
    async def _play(self) -> None:
        """The only writer of the agent's voice: pacer deadlines in, 10 ms frames out."""
        clock, room, wake = self.clock, self.room, self._wake
        loop = asyncio.get_running_loop()
        while True:
            down = self.downlink
            now = clock.now_ns()
            if down is not None:
                samples = down.due(now)
                if samples is not None:
                    t0 = clock.now_ns()
                    await room.send_voice(samples)
                    self.timer.add("downlink.capture", clock.now_ns() - t0)
                    continue
                wake_ns = down.next_wakeup_ns(now)
            else:
                wake_ns = None
            wake.clear()
            if wake_ns is None:
                await wake.wait()  # idle: the next audio event or interruption sets it
                continue
            # A timer that sets the same event: no task or cancellation per frame (wait_for would make both,
            # 100 times a second per playing session).
            timer = loop.call_later(max(0.0, (wake_ns - clock.now_ns()) / SECOND), wake.set)
            try:
                await wake.wait()
            finally:
                timer.cancel()

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(_KEEPALIVE_NS / SECOND)
            up, engine = self.uplink, self.engine
            if up is None or engine is None or not engine.ready:
                continue
            if self.clock.now_ns() - self._last_uplink_ns >= _KEEPALIVE_NS:
                engine.send_audio(silence(up.format, up.chunk_ms))  # as long as an ordinary chunk
                self.counters["keepalive_chunks"] += 1
                self._last_uplink_ns = self.clock.now_ns()

    # ------------------------------------------------------------------ plumbing
    def _spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        task.set_name(f"bridge:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        log.error("session task %s crashed", task.get_name(), exc_info=exc)
        self._finish(exc)

    def _finish(self, error: BaseException | None) -> None:
        """End the session from a callback: record why and let a task do the teardown."""
        if self.state in (SessionState.STOPPING, SessionState.STOPPED):
            return
        if error is not None and self._error is None:
            self._error = error
        if self._teardown_task is None:
            self._teardown_task = asyncio.ensure_future(self._teardown())

    async def _teardown(self) -> None:
        if self.state in (SessionState.STOPPING, SessionState.STOPPED):
            return
        self._set_state(SessionState.STOPPING)
        if self._linger is not None:
            self._linger.cancel()
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        for task in list(self._tasks):
            if task is not current:
                with contextlib.suppress(BaseException):
                    await task
        if self.engine is not None:
            with contextlib.suppress(Exception):
                await self.engine.close()
        if self.transcripts is not None:
            await self.transcripts.close()
        await self.room.close()
        self._set_state(SessionState.STOPPED)
        for queue in self._subscribers:
            _put_latest(queue, None)
        self._done.set()

    def _set_state(self, state: SessionState) -> None:
        self.state = state
        self._emit("state", state=state.value)

    def _emit(self, kind: str, **data: Any) -> None:
        if not self._subscribers:
            return
        event = SessionEvent(kind, self.clock.now_ns(), data)
        for queue in self._subscribers:
            _put_latest(queue, event)


def _put_latest(queue: asyncio.Queue[SessionEvent | None], item: SessionEvent | None) -> None:
    if queue.full():
        with contextlib.suppress(asyncio.QueueEmpty):
            queue.get_nowait()
    queue.put_nowait(item)


def silence(fmt: AudioFormat, ms: int) -> bytes:
    return fmt.encode(np.zeros(fmt.rate * ms // 1000, dtype=np.int16))


def vars_of(obj: object) -> dict[str, Any]:
    if hasattr(obj, "__dataclass_fields__"):
        return {k: getattr(obj, k) for k in obj.__dataclass_fields__}
    return dict(vars(obj))


async def serve(session: BridgeSession, stop: asyncio.Event) -> None:
    """Start ``session`` and run it until it ends by itself or ``stop`` is set; then stop it cleanly.

    Re-raises the error that ended the session, if any. A worker's job and a one-room runner are both this.
    """
    await session.start()
    ended = asyncio.ensure_future(session.wait())
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({ended, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        await session.stop()
    if ended.done():
        ended.result()
    else:
        ended.cancel()
