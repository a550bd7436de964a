"""The asyncio shell around :class:`~transport.engine_protocol.EngineProtocol`: socket, URL, reconnects.

Per connection there are two tasks. The **reader** takes each text message off the socket, stamps it with
the injected clock, lets the protocol parse it, queues any pong *before* handing events on, and calls the
synchronous ``on_event(event, recv_ns)`` callback. It never awaits anything but the socket, so an
``interruption`` is seen the moment it arrives whatever audio came before it; the callback must return at
once too (push audio into a ring buffer, flush on interruption). The **writer** sends what the protocol hands
out, pongs first, then control messages (text, tool results), then audio (rule 8 of
:mod:`~transport.engine_protocol`, which also bounds each queue), so a pong never waits behind a backlog of
audio. The reader only queues pongs: a write can wait on a full socket buffer, and the reader must never wait
on anything but the next message.

Sending audio (:meth:`EngineClient.send_audio`) is synchronous and never blocks: before the conversation's
metadata has arrived, while reconnecting, or when the audio queue is full, the chunk is **dropped and
counted**, not queued. Live audio that waited through a reconnect would only add its age to every later
chunk's latency, and the engine could not use audio in a format it has not announced yet.

Connection lifecycle and the reconnect policy:

- Each attempt asks the :data:`~transport.signed_url.UrlProvider` for a URL (a fresh signed URL), opens the
  socket, sends ``conversation_initiation_client_data`` and waits for ``conversation_initiation_metadata``.
  Only then is the client ``CONNECTED``. The consecutive-failure count and the backoff sequence are reset
  only once a conversation has **lasted** ``stable_after_s`` (10 s): an engine that accepts and drops at once
  otherwise got a fresh, undelayed attempt every time (37 billed conversations in 5 s, measured).
- Re-established conversations are capped: more than ``max_reconnects`` within ``reconnect_window_s``
  (5 in 60 s) and the client gives up with an :class:`~core.errors.EngineError` that says so. Each reconnect
  is a signed URL and a billed conversation, and a fleet would otherwise hammer the engine in lockstep.
- Refused or failed attempts (network errors, HTTP 5xx at the upgrade, no metadata in time) are retried after
  delays from the ``backoff`` generator (full jitter by default), at most ``max_attempts`` in a row; then
  :meth:`wait` raises :class:`~core.errors.EngineError` naming the attempts and the last cause.
- HTTP 401/403 from the REST endpoint or at the upgrade raises :class:`~core.errors.EngineAuthError`, never
  retried: the same credentials would be refused again. 404/422 (unknown agent, invalid request) raise
  :class:`~core.errors.EngineRefusedError`, never retried either.
- After a conversation was established, the close code decides. 1000 from the server means the conversation
  is over (the agent ended the call, or ``max_duration_exceeded``): the client closes, :meth:`wait` returns.
  1008 (our input or overrides broke the contract) is final: resending the same input cannot help. So is an
  ``error`` event whose type says retrying cannot help whatever the close code (:data:`FINAL_ERROR_TYPES`:
  ``safety_violation``, ``override_error`` … and any type naming a quota or limit). Anything else (1002
  operational errors, 1011 server crash, 1006 dropped socket, 1009 too big) is retried.
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
import logging
import socket
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Literal
from urllib.parse import parse_qsl, urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.typing import Subprotocol

from core.clock import Clock, MonotonicClock
from core.errors import ConfigError, EngineAuthError, EngineError, EngineRefusedError, ProtocolError
from core.formats import AudioFormat
from core.redact import Redactor, redact_url
from transport.backoff import DelayFactory, RetryPolicy, full_jitter
from transport.engine_protocol import (
    CLOSE_NORMAL,
    DEFAULT_MAX_AUDIO_MS_PER_MESSAGE,
    AgentAudio,
    CloseAction,
    ConnectionState,
    ConversationMetadata,
    EngineErrorEvent,
    EngineProtocol,
    Event,
    EventCallback,
    InitiationData,
    StateCallback,
    StateChange,
    classify_close,
)
from transport.init_options import explain_refusal
from transport.log_context import RedactingLogger
from transport.signed_url import UrlProvider

__all__ = [  # the state and callback types live in transport.engine_protocol; re-exported here
    "FINAL_ERROR_TYPES",
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

# The Python SDK allows 16 MiB (its max_size). One 15 MiB message held the shared event loop ~600 ms in
# websockets' UTF-8 decode and json.loads, before any audio check could refuse it; 2 MiB still carries 10 s
# of pcm_48000 audio (1.3 MB of base64) or a large tool result, and costs a few ms. Larger: close 1009.
DEFAULT_MAX_MESSAGE_BYTES: Final = 2 * 1024 * 1024
_YIELD_AFTER_CHARS: Final = 256 * 1024
_PROTOCOL_ERROR_LOG_FIRST: Final = 10  # per kind; afterwards every 1000th, so a flood cannot flood the log
# ``error`` types after which a new conversation would end the same way (PROTOCOL.md "Close codes and
# errors", from the AsyncAPI ErrorType): the safety filter, our overrides or dynamic variables, our messages.
# Most come with 1008 (final anyway); safety_violation comes with 1002, which is otherwise retried.
FINAL_ERROR_TYPES: Final = frozenset({
    "safety_violation", "override_error", "missing_dynamic_variable", "missing_dynamic_variable_transfer",
    "invalid_message", "value_error", "missing_fields", "telephony_agent_error",
})
# Quota and usage-limit types are not in any source we read (UNCONFIRMED names); a type mentioning either
# word is treated as final, since a quota does not come back in a backoff's seconds.
_FINAL_ERROR_WORDS: Final = ("quota", "limit")


def is_final_error_type(error_type: str | None) -> bool:
    if not error_type:
        return False
    kind = error_type.lower()
    return kind in FINAL_ERROR_TYPES or any(word in kind for word in _FINAL_ERROR_WORDS)


@dataclass(slots=True)
class ClientCounters:
    connects: int = 0  # conversations established (metadata received)
    failed_attempts: int = 0  # over the client's life
    audio_chunks_queued: int = 0
    audio_bytes_queued: int = 0
    audio_dropped_not_ready: int = 0  # no conversation (connecting, reconnecting, closed)
    audio_dropped_backpressure: int = 0  # audio queue full: the socket is not keeping up
    control_dropped_not_ready: int = 0
    messages_sent: int = 0  # by the writer, all kinds
    callback_errors: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)  # protocol errors seen by the reader, by kind


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
        stable_after_s: float = 10.0,
        max_reconnects: int = 5,
        reconnect_window_s: float = 60.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_audio_ms_per_message: int = DEFAULT_MAX_AUDIO_MS_PER_MESSAGE,
        open_timeout: float = 10.0,
        metadata_timeout: float = 10.0,
        close_timeout: float = 5.0,
        keepalive_interval: float | None = 20.0,
        audio_queue_limit: int = 100,
        subprotocols: Sequence[str] = (),
        secrets: Iterable[str] = (),
        proxy: str | Literal[True] | None = True,
        default_input_format: str = "pcm_16000",
        reconnect_wanted: Callable[[], bool] | None = None,
        init_factory: Callable[[int], InitiationData] | None = None,
    ) -> None:
        if max_attempts < 1 or audio_queue_limit < 1 or max_message_bytes < 1:
            raise ConfigError("max_attempts, audio_queue_limit and max_message_bytes must be positive")
        if stable_after_s < 0 or max_reconnects < 0 or reconnect_window_s <= 0:
            raise ConfigError("stable_after_s and max_reconnects must be >= 0, reconnect_window_s > 0")
        self._stable_after_ns = int(stable_after_s * 1e9)
        self._max_reconnects = max_reconnects
        self._reconnect_window_ns = int(reconnect_window_s * 1e9)
        self._reconnects_at: deque[int] = deque()  # clock times of re-established conversations
        self._connected_at_ns: int | None = None
        self._url_provider = url_provider
        self._on_event = on_event
        self._on_state = on_state
        self._init = init or InitiationData()
        # Asked per attempt with the number of conversations established so far (0: the first), for the
        # init to send; None: ``init`` every time. The session's continuity uses it (transport/continuity.py).
        self._init_factory = init_factory
        self._clock = clock or MonotonicClock()
        self._retry = RetryPolicy(backoff, max_attempts)
        self._max_message_bytes = max_message_bytes
        self._open_timeout = open_timeout
        self._metadata_timeout = metadata_timeout
        self._close_timeout = close_timeout
        self._keepalive = keepalive_interval
        self._subprotocols = [Subprotocol(p) for p in subprotocols] or None
        self._proxy = proxy
        # Asked when an established conversation is lost: False ends the client cleanly instead.
        self._reconnect_wanted = reconnect_wanted
        self.redactor = Redactor(secrets)

        # default_input_format: assumed when the metadata names none (as the JS SDK does); audio_queue_limit:
        # 100 × 10 ms chunks = 1 s, beyond that the socket is stalled and old audio is worthless anyway.
        self.protocol = EngineProtocol(max_message_chars=max_message_bytes, default_input_format=default_input_format,
                                       audio_queue_limit=audio_queue_limit,
                                       max_audio_ms_per_message=max_audio_ms_per_message)
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
    def queued_audio(self) -> int:
        """Audio messages waiting for the socket (at most ``audio_queue_limit``)."""
        return self.protocol.queued[2]

    @property
    def queued_pongs(self) -> int:
        """Pongs waiting for the socket (at most 32: the newest are kept)."""
        return self.protocol.queued[0]

    @property
    def socket(self) -> socket.socket | None:
        """The current connection's OS socket, for diagnostics (buffer sizes); None between connections."""
        ws = self._ws
        return ws.transport.get_extra_info("socket") if ws is not None else None

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
        """End the conversation with close code 1000 and stop reconnecting. Never raises the final error.

        Takes at most ``close_timeout`` (plus the cancelled task's unwinding) in all: the polite close and
        the wait for the client's task share one budget, so a caller can budget its own teardown on it."""
        self._closing = True
        self._stop.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._close_timeout
        ws = self._ws
        if ws is not None:
            await self._close_politely(ws)
        task = self._task
        if task is not None and not task.done():
            if ws is None:
                task.cancel()  # connecting or backing off: nothing to close politely
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(task), max(0.0, deadline - loop.time()))
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
        if not self.protocol.send_audio(data):
            self.counters.audio_dropped_backpressure += 1
            return False
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
        self.protocol.send_control(text)
        self._wake.set()
        return True

    def _set_state(self, state: ConnectionState, *, close_code: int | None = None,
                   reason: str | None = None) -> None:
        self.state = state
        change = StateChange(state, self._clock.now_ns(), self._retry.failures, self.protocol.conversation_id,
                             close_code, reason)
        log.info("engine %s (attempt %d, conversation %s%s)", state.value, self._retry.failures,
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
        last_reason = "no attempt made"
        ended: _Ended | None = None
        self._set_state(ConnectionState.CONNECTING)
        try:
            while not self._closing:
                try:
                    ended = await self._attempt()
                except _AttemptFailed as exc:
                    self._retry.failed()
                    self.counters.failed_attempts += 1
                    last_reason = str(exc)
                    log.warning("engine connection attempt %d failed: %s", self._retry.failures, last_reason)
                else:
                    if ended.final:
                        if ended.error is not None:
                            raise ended.error
                        return
                    last_reason = ended.reason
                    lasted_ns = self._clock.now_ns() - (self._connected_at_ns or 0)
                    if lasted_ns >= self._stable_after_ns:
                        # It worked for a while: this is a new outage, with a fresh count and backoff.
                        self._retry.connected()
                        self._retry.lost()
                    log.warning("engine conversation lost after %.1f s (%s); reconnecting", lasted_ns / 1e9,
                                last_reason)
                    self._check_reconnect_budget(last_reason)
                if self._closing:
                    return
                failures = self._retry.failures
                if self._retry.exhausted:
                    raise EngineError(f"engine unreachable: gave up after {failures} failed attempts; "
                                      f"last: {last_reason}", close_code=self.close_code)
                delay = self._retry.next_delay()
                if delay is None:
                    raise EngineError(f"engine unreachable: backoff exhausted after {failures} failed "
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

    def _check_reconnect_budget(self, last_reason: str) -> None:
        now = self._clock.now_ns()
        while self._reconnects_at and now - self._reconnects_at[0] > self._reconnect_window_ns:
            self._reconnects_at.popleft()
        if len(self._reconnects_at) >= self._max_reconnects:
            raise EngineError(
                f"engine keeps dropping conversations: {len(self._reconnects_at)} re-established within "
                f"{self._reconnect_window_ns / 1e9:.0f} s and lost again; giving up (last: {last_reason})",
                close_code=self.close_code)

    async def _attempt(self) -> _Ended:
        try:
            url = await self._url_provider()
        except (EngineAuthError, EngineRefusedError):
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
                logger=RedactingLogger(_WS_LOG, self.redactor),
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
            await ws.close(CLOSE_NORMAL, "client ended conversation")
            return _Ended(CLOSE_NORMAL, "closed by client", None, final=True)
        return await self._converse(ws)

    async def _converse(self, ws: ClientConnection) -> _Ended:
        self._ws = ws
        self.protocol.reset()
        self._conn_ready.clear()
        self.last_error_event = None
        self._fatal = None
        data = self._init if self._init_factory is None else self._init_factory(self.counters.connects)
        init = self.protocol.initiation(
            overrides=data.overrides, dynamic_variables=data.dynamic_variables,
            custom_llm_extra_body=data.custom_llm_extra_body, user_id=data.user_id, source_info=data.source_info)
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
            await asyncio.wait_for(ws.close(CLOSE_NORMAL, "client ended conversation"), self._close_timeout)

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
            reason += explain_refusal(error.error_type)  # an override or variable problem: say what to do
        action = classify_close(code, by_client=self._closing, fatal=self._fatal is not None)
        if self._fatal is not None:
            return _Ended(code, reason, self._fatal, final=True)
        if self._closing:
            return _Ended(code, "closed by client", None, final=True)
        if action is CloseAction.DONE:
            return _Ended(code, f"engine ended the conversation: {reason}", None, final=True)
        if action is CloseAction.FAIL:
            return _Ended(code, reason, EngineError(f"engine closed the conversation: {reason}", close_code=code),
                          final=True)
        if self._reconnect_wanted is not None and not self._reconnect_wanted():
            # The owner has nobody to reconnect for (an empty room whose keepalive stopped, so the engine's
            # idle timeout ended the conversation): a new conversation would be billed for nothing.
            return _Ended(code, f"conversation lost and not reopened (not wanted): {reason}", None, final=True)
        if error is not None and is_final_error_type(error.error_type):
            return _Ended(code, reason, EngineRefusedError(
                f"engine closed the conversation with an error that a retry would repeat: {reason}",
                close_code=code), final=True)
        return _Ended(code, reason, None, final=False)

    # ------------------------------------------------------------------ internals: the two tasks

    async def _reader(self, ws: ClientConnection) -> None:
        try:
            async for message in ws:
                recv_ns = self._clock.now_ns()
                if len(message) > _YIELD_AFTER_CHARS:
                    # websockets hands over buffered messages without suspending: after a large one, let
                    # the other sessions on this loop run before parsing it, so a burst of large messages
                    # cannot hold the loop for its whole length.
                    await asyncio.sleep(0)
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
                if self.protocol.queued[0]:  # a pong: the writer sends it ahead of anything else queued
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
        now = self._clock.now_ns()
        if self.counters.connects:
            self._reconnects_at.append(now)
        self._connected_at_ns = now
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
                text = self.protocol.next_to_send()
                if text is None:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                await ws.send(text)
                self.counters.messages_sent += 1
        except ConnectionClosed:
            pass
