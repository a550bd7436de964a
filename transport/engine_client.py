"""The asyncio shell around :class:`~transport.engine_protocol.EngineProtocol`: socket, URL, reconnects.

Per connection there are two tasks. The **reader** takes each text message off the socket, stamps it with
the injected clock, lets the protocol parse it, queues any pong *before* handing events on, and calls the
synchronous ``on_event(event, recv_ns)`` callback. It never awaits anything but the socket, so an
``interruption`` is seen the moment it arrives whatever audio came before it; the callback must return at
once too (push audio into a ring buffer, flush on interruption). The **writer** drains three queues, pongs
first, then control messages (text, tool results), then audio, so a pong never waits behind a backlog of
audio. The reader queues each pong rather than writing it itself: a write can wait on a full socket buffer,
and the reader must never wait on anything but the next message. At most the newest 32 pongs wait.

Sending audio (:meth:`EngineClient.send_audio`) is synchronous and never blocks: before the conversation's
metadata has arrived, while reconnecting, or when the audio queue is full, the chunk is **dropped and
counted**, not queued. Live audio that waited through a reconnect would only add its age to every later
chunk's latency, and the engine could not use audio in a format it has not announced yet.

Connection lifecycle and the reconnect policy:

- Each attempt asks the :data:`~transport.signed_url.UrlProvider` for a URL (a fresh signed URL), opens the
  socket, sends ``conversation_initiation_client_data`` and waits for ``conversation_initiation_metadata``.
  Only then is the client ``CONNECTED`` and the consecutive-failure count reset.
- Refused or failed attempts (network errors, HTTP 5xx at the upgrade, no metadata in time) are retried after
  delays from the ``backoff`` generator (full jitter by default), at most ``max_attempts`` in a row; then
  :meth:`wait` raises :class:`~core.errors.EngineError` naming the attempts and the last cause.
- HTTP 401/403 from the REST endpoint or at the upgrade raises :class:`~core.errors.EngineAuthError`, never
  retried: the same credentials would be refused again.
- After a conversation was established, the close code decides. 1000 from the server means the conversation
  is over (the agent ended the call, or ``max_duration_exceeded``): the client closes, :meth:`wait` returns.
  1008 (our input or overrides broke the contract) is final: resending the same input cannot help. Anything
  else (1002 operational errors, 1011 server crash, 1006 dropped socket, 1009 too big) is retried.
- A reconnect starts a **new conversation** with a new ``conversation_id`` whose event ids start again, so
  the protocol is :meth:`~transport.engine_protocol.EngineProtocol.reset` (metadata, interruption gate, ping
  state) before the new socket's first message. Keeping the old gate would drop the new conversation's audio
  until its ids outgrew the old interruption's. The session should flush its playout buffer on
  ``RECONNECTING``: audio of the old conversation has nothing to continue.

Secrets: log lines and exception texts carry :func:`~core.redact.redact_url` forms only; every query value of
each URL the client is given is also registered with a :class:`~core.redact.Redactor` that scrubs any
exception text we quote. Exceptions are raised ``from None`` so a chained cause cannot leak a URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Literal
from urllib.parse import parse_qsl, urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.typing import Subprotocol

from core.clock import Clock, MonotonicClock
from core.errors import ConfigError, EngineAuthError, EngineError, ProtocolError
from core.formats import AudioFormat
from core.redact import Redactor, redact_url
from transport.backoff import DelayFactory, full_jitter
from transport.engine_protocol import (
    AgentAudio,
    ConversationMetadata,
    EngineErrorEvent,
    EngineProtocol,
    Event,
)
from transport.signed_url import UrlProvider

__all__ = [
    "ClientCounters",
    "ConnectionState",
    "EngineClient",
    "EventCallback",
    "InitiationData",
    "StateCallback",
    "StateChange",
]

log = logging.getLogger(__name__)
_WS_LOG = logging.getLogger("websockets.client")

DEFAULT_MAX_MESSAGE_BYTES: Final = 16 * 1024 * 1024  # the Python SDK's max_size
_CLOSE_NORMAL: Final = 1000
_CLOSE_POLICY: Final = 1008
# Pongs waiting for a stalled socket: only the newest are worth sending, and an engine that keeps pinging while
# it reads nothing must not grow the queue without bound.
_MAX_QUEUED_PONGS: Final = 32
_PROTOCOL_ERROR_LOG_FIRST: Final = 10  # per kind; afterwards every 1000th, so a flood cannot flood the log


class ConnectionState(enum.Enum):
    CONNECTING = "connecting"  # first connection, not yet established
    CONNECTED = "connected"  # metadata received; audio flows
    RECONNECTING = "reconnecting"  # an established conversation was lost; trying again
    CLOSED = "closed"  # final; see StateChange.reason / EngineClient.wait()


@dataclass(frozen=True, slots=True)
class StateChange:
    state: ConnectionState
    at_ns: int  # from the client's clock
    attempt: int  # consecutive failed attempts so far (0 once connected)
    conversation_id: str | None = None
    close_code: int | None = None
    reason: str | None = None  # already redacted


EventCallback = Callable[[Event, int], None]  # (event, receive time in ns from the client's clock)
StateCallback = Callable[[StateChange], None]


@dataclass(frozen=True, slots=True)
class InitiationData:
    """What goes into ``conversation_initiation_client_data`` on every (re)connect."""

    overrides: Mapping[str, Any] | None = None
    dynamic_variables: Mapping[str, str | int | float | bool] | None = None
    custom_llm_extra_body: Mapping[str, Any] | None = None
    user_id: str | None = None
    source_info: Mapping[str, str] | None = None


@dataclass(slots=True)
class ClientCounters:
    connects: int = 0  # conversations established (metadata received)
    failed_attempts: int = 0  # over the client's life
    audio_chunks_queued: int = 0
    audio_bytes_queued: int = 0
    audio_dropped_not_ready: int = 0  # no conversation (connecting, reconnecting, closed)
    audio_dropped_backpressure: int = 0  # audio queue full: the socket is not keeping up
    control_dropped_not_ready: int = 0
    pongs_dropped: int = 0  # oldest unsent pongs given up (more than _MAX_QUEUED_PONGS waiting)
    messages_sent: int = 0  # by the writer, all kinds
    callback_errors: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)  # protocol errors seen by the reader, by kind


class _RedactingLogger(logging.LoggerAdapter[logging.Logger]):
    """websockets logs the request line, query string included, at DEBUG: scrub every record it emits."""

    def __init__(self, logger: logging.Logger, redactor: Redactor) -> None:
        super().__init__(logger, {})
        self._redactor = redactor

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if self.isEnabledFor(level):
            text = str(msg) % args if args else str(msg)
            self.logger.log(level, "%s", self._redactor(text), **kwargs)


class _AttemptFailed(Exception):
    """An attempt ended before a conversation was established; retryable."""


@dataclass(frozen=True, slots=True)
class _Ended:
    close_code: int | None
    reason: str
    error: EngineError | None  # set when the end is final and an error
    final: bool


class EngineClient:
    """One logical conversation with the Speech Engine, kept up across reconnects.

    ``async with EngineClient(provider, on_event) as client:`` starts it (returns once the first
    conversation is established, or raises) and closes it cleanly with code 1000 on exit.
    """

    def __init__(
        self,
        url_provider: UrlProvider,
        on_event: EventCallback,
        *,
        on_state: StateCallback | None = None,
        init: InitiationData | None = None,
        clock: Clock | None = None,
        backoff: DelayFactory = full_jitter,
        max_attempts: int = 6,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        open_timeout: float = 10.0,
        metadata_timeout: float = 10.0,
        close_timeout: float = 5.0,
        keepalive_interval: float | None = 20.0,
        audio_queue_limit: int = 100,
        subprotocols: Sequence[str] = (),
        secrets: Iterable[str] = (),
        proxy: str | Literal[True] | None = True,
    ) -> None:
        if max_attempts < 1 or audio_queue_limit < 1 or max_message_bytes < 1:
            raise ConfigError("max_attempts, audio_queue_limit and max_message_bytes must be positive")
        self._url_provider = url_provider
        self._on_event = on_event
        self._on_state = on_state
        self._init = init or InitiationData()
        self._clock = clock or MonotonicClock()
        self._backoff = backoff
        self._max_attempts = max_attempts
        self._max_message_bytes = max_message_bytes
        self._open_timeout = open_timeout
        self._metadata_timeout = metadata_timeout
        self._close_timeout = close_timeout
        self._keepalive = keepalive_interval
        # 100 × 10 ms chunks = 1 s: beyond that the socket is stalled and old audio is worthless anyway.
        self._audio_queue_limit = audio_queue_limit
        self._subprotocols = [Subprotocol(p) for p in subprotocols] or None
        self._proxy = proxy
        self.redactor = Redactor(secrets)

        self.protocol = EngineProtocol(max_message_chars=max_message_bytes)
        self.counters = ClientCounters()
        self.state = ConnectionState.CLOSED
        self.last_error_event: EngineErrorEvent | None = None
        self.close_code: int | None = None

        self._task: asyncio.Task[None] | None = None
        self._ws: ClientConnection | None = None
        self._ready = False  # this connection has its metadata: audio may flow
        self._conn_ready = asyncio.Event()
        self._first_connected = asyncio.Event()
        self._stop = asyncio.Event()
        self._closing = False
        self._fatal: EngineError | None = None
        self._failures = 0
        self._pongs: deque[str] = deque()
        self._control: deque[str] = deque()
        self._audio: deque[str] = deque()
        self._wake = asyncio.Event()

    # ------------------------------------------------------------------ public surface

    @property
    def conversation_id(self) -> str | None:
        return self.protocol.conversation_id

    @property
    def input_format(self) -> AudioFormat | None:
        return self.protocol.input_format

    @property
    def output_format(self) -> AudioFormat | None:
        return self.protocol.output_format

    @property
    def ready(self) -> bool:
        """True while a conversation is established and audio is accepted."""
        return self._ready

    async def start(self) -> None:
        """Connect; return once the first conversation is established, or raise the final error."""
        if self._task is not None:
            raise ConfigError("EngineClient.start() called twice")
        self._task = asyncio.create_task(self._run(), name="engine-client")
        self._task.add_done_callback(self._report_end)
        waiter = asyncio.create_task(self._first_connected.wait())
        try:
            await asyncio.wait({waiter, self._task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if not self._first_connected.is_set():
            self._task.result()  # raises the final error
            raise EngineError("engine client closed before a conversation was established")

    def _report_end(self, task: asyncio.Task[None]) -> None:
        # Retrieving the exception here also keeps asyncio from warning when nobody awaits wait().
        if task.cancelled():
            return
        exc = task.exception()
        if isinstance(exc, EngineError):
            log.warning("engine client stopped: %s", self.redactor(str(exc)))
        elif exc is not None:
            log.error("engine client crashed: %s", self._describe(exc))

    async def wait(self) -> None:
        """Until the client is closed: returns on a clean end, raises the final :class:`EngineError`."""
        if self._task is None:
            raise ConfigError("EngineClient.wait() before start()")
        await asyncio.shield(self._task)

    async def close(self) -> None:
        """End the conversation with close code 1000 and stop reconnecting. Never raises the final error."""
        self._closing = True
        self._stop.set()
        ws = self._ws
        if ws is not None:
            await self._close_politely(ws)
        task = self._task
        if task is not None and not task.done():
            if ws is None:
                task.cancel()  # connecting or backing off: nothing to close politely
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(task), self._close_timeout)
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

    async def __aenter__(self) -> EngineClient:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    def send_audio(self, data: bytes) -> bool:
        """Queue one chunk (raw PCM s16le or μ-law bytes in :attr:`input_format`). Never blocks; returns
        False when the chunk was dropped (not connected, or queue full). Odd-length PCM is a ConfigError."""
        if not self._ready:
            self.counters.audio_dropped_not_ready += 1
            return False
        if len(self._audio) >= self._audio_queue_limit:
            self.counters.audio_dropped_backpressure += 1
            return False
        self._audio.append(self.protocol.user_audio(data))
        self.counters.audio_chunks_queued += 1
        self.counters.audio_bytes_queued += len(data)
        self._wake.set()
        return True

    def send_user_message(self, text: str) -> bool:
        return self._queue_control(self.protocol.user_message(text)) if self._ready else self._not_ready()

    def send_contextual_update(self, text: str, *, context_id: str | None = None) -> bool:
        if not self._ready:
            return self._not_ready()
        return self._queue_control(self.protocol.contextual_update(text, context_id=context_id))

    def send_user_activity(self) -> bool:
        return self._queue_control(self.protocol.user_activity()) if self._ready else self._not_ready()

    def send_client_tool_result(self, tool_call_id: str, result: str | Mapping[str, Any] | list[Any], *,
                                is_error: bool = False) -> bool:
        if not self._ready:
            return self._not_ready()
        return self._queue_control(self.protocol.client_tool_result(tool_call_id, result, is_error=is_error))

    def send_feedback(self, event_id: int, score: Literal["like", "dislike"] | None) -> bool:
        if not self._ready:
            return self._not_ready()
        return self._queue_control(self.protocol.feedback(event_id, score))

    # ------------------------------------------------------------------ internals: queues

    def _not_ready(self) -> bool:
        self.counters.control_dropped_not_ready += 1
        return False

    def _queue_control(self, text: str) -> bool:
        self._control.append(text)
        self._wake.set()
        return True

    def _set_state(self, state: ConnectionState, *, close_code: int | None = None,
                   reason: str | None = None) -> None:
        self.state = state
        change = StateChange(state, self._clock.now_ns(), self._failures, self.protocol.conversation_id,
                             close_code, reason)
        log.info("engine %s (attempt %d, conversation %s%s)", state.value, self._failures,
                 change.conversation_id, f", {reason}" if reason else "")
        if self._on_state is not None:
            try:
                self._on_state(change)
            except Exception:
                self.counters.callback_errors += 1
                log.exception("engine state callback failed")

    def _describe(self, exc: BaseException) -> str:
        return self.redactor(f"{type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------ internals: lifecycle

    async def _run(self) -> None:
        delays: Iterator[float] | None = None
        last_reason = "no attempt made"
        ended: _Ended | None = None
        self._set_state(ConnectionState.CONNECTING)
        try:
            while not self._closing:
                try:
                    ended = await self._attempt()
                except _AttemptFailed as exc:
                    self._failures += 1
                    self.counters.failed_attempts += 1
                    last_reason = str(exc)
                    log.warning("engine connection attempt %d failed: %s", self._failures, last_reason)
                else:
                    if ended.final:
                        if ended.error is not None:
                            raise ended.error
                        return
                    delays = None  # a new outage starts a new backoff sequence
                    last_reason = ended.reason
                    log.warning("engine conversation lost (%s); reconnecting", last_reason)
                if self._closing:
                    return
                if self._failures >= self._max_attempts:
                    raise EngineError(f"engine unreachable: gave up after {self._failures} failed attempts; "
                                      f"last: {last_reason}", close_code=self.close_code)
                if delays is None:
                    delays = self._backoff()
                delay = next(delays, None)
                if delay is None:
                    raise EngineError(f"engine unreachable: backoff exhausted after {self._failures} failed "
                                      f"attempts; last: {last_reason}", close_code=self.close_code)
                # Announced before the wait, so the session flushes the old conversation's audio at once.
                state = ConnectionState.RECONNECTING if self.counters.connects else ConnectionState.CONNECTING
                self._set_state(state, close_code=self.close_code, reason=last_reason)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
        finally:
            self._ready = False
            self._set_state(ConnectionState.CLOSED, close_code=self.close_code,
                            reason=ended.reason if ended is not None else None)

    async def _attempt(self) -> _Ended:
        try:
            url = await self._url_provider()
        except EngineAuthError:
            raise
        except EngineError as exc:
            raise _AttemptFailed(self.redactor(str(exc))) from None
        self.redactor.add(*(value for _, value in parse_qsl(urlsplit(url).query)))
        where = redact_url(url)
        log.debug("engine connecting to %s", where)
        try:
            # Compression is off on purpose: base64 PCM barely deflates and every chunk would pay CPU time.
            ws = await connect(
                url, subprotocols=self._subprotocols, compression=None, open_timeout=self._open_timeout,
                ping_interval=self._keepalive, ping_timeout=self._keepalive,
                close_timeout=self._close_timeout, max_size=self._max_message_bytes, proxy=self._proxy,
                logger=_RedactingLogger(_WS_LOG, self.redactor),
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403):
                raise EngineAuthError(f"engine refused the conversation URL {where} with HTTP {status}",
                                      close_code=None) from None
            raise _AttemptFailed(f"HTTP {status} from {where}") from None
        except (OSError, TimeoutError, WebSocketException) as exc:
            raise _AttemptFailed(f"{self._describe(exc)} connecting to {where}") from None
        if self._closing:
            await ws.close(_CLOSE_NORMAL, "client ended conversation")
            return _Ended(_CLOSE_NORMAL, "closed by client", None, final=True)
        return await self._converse(ws)

    async def _converse(self, ws: ClientConnection) -> _Ended:
        self._ws = ws
        self.protocol.reset()
        self._pongs.clear()
        self._control.clear()
        self._audio.clear()
        self._conn_ready.clear()
        self.last_error_event = None
        self._fatal = None
        init = self.protocol.initiation(
            overrides=self._init.overrides, dynamic_variables=self._init.dynamic_variables,
            custom_llm_extra_body=self._init.custom_llm_extra_body, user_id=self._init.user_id,
            source_info=self._init.source_info)
        reader = asyncio.create_task(self._reader(ws), name="engine-reader")
        writer = asyncio.create_task(self._writer(ws), name="engine-writer")
        try:
            with contextlib.suppress(ConnectionClosed):  # the reader reports the close
                await ws.send(init)
            ready = asyncio.create_task(self._conn_ready.wait())
            try:
                await asyncio.wait({ready, reader}, timeout=self._metadata_timeout,
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                ready.cancel()
            if not self._conn_ready.is_set():
                if not reader.done():
                    raise _AttemptFailed(f"no metadata within {self._metadata_timeout} s")
                ended = self._ending(ws)
                if ended.error is not None and ended.final:
                    raise ended.error
                raise _AttemptFailed(f"closed before metadata: {ended.reason}")
            await reader
            return self._ending(ws)
        finally:
            self._ready = False
            self._ws = None
            writer.cancel()
            reader.cancel()
            await self._close_politely(ws)

    async def _close_politely(self, ws: ClientConnection) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(_CLOSE_NORMAL, "client ended conversation"), self._close_timeout)

    def _ending(self, ws: ClientConnection) -> _Ended:
        """Classify a finished connection: retry, clean end, or final error."""
        received, sent = ws.protocol.close_rcvd, ws.protocol.close_sent
        # When we failed the connection (1009 message too big, 1002 protocol error) the peer may never
        # answer; our own code then says more than websockets' 1006.
        close = received or sent
        code = close.code if close is not None else 1006
        self.close_code = code
        error = self.last_error_event
        reason = f"close code {code}" + ("" if received or sent is None else " (sent by us)")
        if close is not None and close.reason:
            reason += f" ({self.redactor(close.reason)})"
        if error is not None:
            reason += f", error {error.error_type}: {self.redactor(error.message or '')}"
        if self._fatal is not None:
            return _Ended(code, reason, self._fatal, final=True)
        if self._closing:
            return _Ended(code, "closed by client", None, final=True)
        if code == _CLOSE_NORMAL:
            return _Ended(code, f"engine ended the conversation: {reason}", None, final=True)
        if code == _CLOSE_POLICY:
            return _Ended(code, reason, EngineError(f"engine closed the conversation: {reason}",
                                                    close_code=code), final=True)
        return _Ended(code, reason, None, final=False)

    # ------------------------------------------------------------------ internals: the two tasks

    async def _reader(self, ws: ClientConnection) -> None:
        try:
            async for message in ws:
                recv_ns = self._clock.now_ns()
                if isinstance(message, bytes):
                    self._protocol_error(self.protocol.binary_frame(len(message)))
                    continue
                try:
                    events = self.protocol.receive(message)
                except ProtocolError as exc:
                    self._protocol_error(exc)
                    if exc.kind == "unknown_format":
                        # Nothing this conversation sends could be played: stop, and do not retry.
                        self._fatal = EngineError(f"engine announced an unsupported format: {exc}")
                        return
                    continue
                for pong in self.protocol.data_to_send():  # sent ahead of anything else queued
                    if len(self._pongs) >= _MAX_QUEUED_PONGS:
                        self._pongs.popleft()
                        self.counters.pongs_dropped += 1
                    self._pongs.append(pong)
                    self._wake.set()
                audio = False
                for event in events:
                    if isinstance(event, ConversationMetadata):
                        self._on_metadata()
                    elif isinstance(event, EngineErrorEvent):
                        self.last_error_event = event
                    elif isinstance(event, AgentAudio):
                        audio = True
                    self._dispatch(event, recv_ns)
                if audio:
                    # websockets hands out queued messages without suspending, so a burst of audio events
                    # would all be decoded and resampled before the playout task could send the first frame
                    # (1-3 ms at a 10x burst). One loop turn lets it; an interruption behind them waits
                    # only for that turn, never for audio output.
                    await asyncio.sleep(0)
        except ConnectionClosed:
            pass

    def _on_metadata(self) -> None:
        if self._ready:
            return
        self._ready = True
        self._failures = 0
        self.counters.connects += 1
        self._conn_ready.set()
        self._first_connected.set()
        self._set_state(ConnectionState.CONNECTED)

    def _dispatch(self, event: Event, recv_ns: int) -> None:
        try:
            self._on_event(event, recv_ns)
        except Exception:
            self.counters.callback_errors += 1
            log.exception("engine event callback failed on %s", type(event).__name__)

    def _protocol_error(self, exc: ProtocolError) -> None:
        count = self.counters.by_kind.get(exc.kind, 0) + 1
        self.counters.by_kind[exc.kind] = count
        if count <= _PROTOCOL_ERROR_LOG_FIRST or count % 1000 == 0:
            log.warning("dropped engine message (%s, %d so far): %s", exc.kind, count,
                        self.redactor(str(exc)))

    async def _writer(self, ws: ClientConnection) -> None:
        try:
            while True:
                if self._pongs:
                    text = self._pongs.popleft()
                elif self._control:
                    text = self._control.popleft()
                elif self._audio:
                    text = self._audio.popleft()
                else:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                await ws.send(text)
                self.counters.messages_sent += 1
        except ConnectionClosed:
            pass
