"""The asyncio shell around :class:`~transport.engine_protocol.EngineProtocol`: socket, URL, reconnects.

Per connection there are two tasks (:class:`~transport.engine_connection.EngineConnection`). The **reader**
stamps each message with the injected clock, lets the protocol parse it, queues any pong *before* handing
events on, and calls the synchronous ``on_event(event, recv_ns)`` callback, which must return at once (push
audio into a ring buffer, flush on interruption). The **writer** sends pongs first, then control messages
(text, tool results), then audio, so a pong never waits behind a backlog of audio.

Sending audio (:meth:`EngineClient.send_audio`) is synchronous and never blocks: before the conversation's
metadata has arrived, while reconnecting, or when the audio queue is full, the chunk is **dropped and
counted**, not queued. Live audio that waited through a reconnect would only add its age to every later
chunk's latency, and the engine could not use audio in a format it has not announced yet.

Connection lifecycle and the reconnect policy:

- Each attempt asks the :data:`~transport.signed_url.UrlProvider` for a URL (a fresh signed URL), opens the
  socket, sends ``conversation_initiation_client_data`` and waits for ``conversation_initiation_metadata``.
  Only then is the client ``CONNECTED``. The failure count and backoff are reset only once a conversation has
  **lasted** ``stable_after_s`` (10 s); more than ``max_reconnects`` re-established conversations within
  ``reconnect_window_s`` (5 in 60 s) and the client gives up (:mod:`transport.engine_lifecycle` says why).
- Refused or failed attempts (network errors, HTTP 5xx at the upgrade, no metadata in time) are retried after
  delays from the ``backoff`` generator (full jitter by default), at most ``max_attempts`` in a row; then
  :meth:`wait` raises :class:`~core.errors.EngineError` naming the attempts and the last cause.
- HTTP 401/403 from the REST endpoint or at the upgrade raises :class:`~core.errors.EngineAuthError`, never
  retried: the same credentials would be refused again. 404/422 (unknown agent, invalid request) raise
  :class:`~core.errors.EngineRefusedError`, never retried either.
- After a conversation was established, the close code decides (:func:`~transport.engine_lifecycle.classify_end`):
  1000 from the server ends the client cleanly (:meth:`wait` returns); 1008, or an ``error`` event of a type
  in :data:`FINAL_ERROR_TYPES` (or naming a quota or limit), is final; anything else is retried.
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
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Final, Literal
from urllib.parse import parse_qsl, urlsplit

from websockets.asyncio.client import ClientConnection
from websockets.typing import Subprotocol

from core.clock import Clock, MonotonicClock
from core.errors import ConfigError, EngineAuthError, EngineError, EngineRefusedError
from core.formats import AudioFormat
from core.redact import Redactor, redact_url
from transport.backoff import DelayFactory, RetryPolicy, full_jitter
from transport.engine_connection import AttemptFailed, ClientCounters, EngineConnection, open_socket
from transport.engine_lifecycle import FINAL_ERROR_TYPES, Ended, ReconnectBudget, is_final_error_type
from transport.engine_protocol import (
    CLOSE_NORMAL,
    DEFAULT_MAX_AUDIO_MS_PER_MESSAGE,
    ConnectionState,
    EngineErrorEvent,
    EngineProtocol,
    EventCallback,
    InitiationData,
    StateCallback,
    StateChange,
)
from transport.signed_url import UrlProvider

__all__ = [  # the state and callback types live in transport.engine_protocol, the end rules in
    # transport.engine_lifecycle; re-exported here
    "FINAL_ERROR_TYPES",
    "ClientCounters",
    "ConnectionState",
    "EngineClient",
    "EventCallback",
    "InitiationData",
    "StateCallback",
    "StateChange",
    "is_final_error_type",
]

log = logging.getLogger(__name__)

# The Python SDK allows 16 MiB (its max_size). One 15 MiB message held the shared event loop ~600 ms in
# websockets' UTF-8 decode and json.loads, before any audio check could refuse it; 2 MiB still carries 10 s
# of pcm_48000 audio (1.3 MB of base64) or a large tool result, and costs a few ms. Larger: close 1009.
DEFAULT_MAX_MESSAGE_BYTES: Final = 2 * 1024 * 1024


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
        control_queue_limit: int = 256,
        subprotocols: Sequence[str] = (),
        secrets: Iterable[str] = (),
        proxy: str | Literal[True] | None = True,
        default_input_format: str = "pcm_16000",
        reconnect_wanted: Callable[[], bool] | None = None,
        init_factory: Callable[[int], InitiationData] | None = None,
    ) -> None:
        if max_attempts < 1 or audio_queue_limit < 1 or control_queue_limit < 1 or max_message_bytes < 1:
            raise ConfigError("max_attempts, audio_queue_limit, control_queue_limit and max_message_bytes "
                              "must be positive")
        if stable_after_s < 0 or max_reconnects < 0 or reconnect_window_s <= 0:
            raise ConfigError("stable_after_s and max_reconnects must be >= 0, reconnect_window_s > 0")
        self._budget = ReconnectBudget(stable_after_ns=int(stable_after_s * 1e9), max_reconnects=max_reconnects,
                                       window_ns=int(reconnect_window_s * 1e9))
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
        # Control messages (typed messages, context, tool results, feedback) waiting for a stalled socket: a
        # bound, so a caller typing into a dead connection cannot grow memory. Beyond it: dropped, counted.
        self._control_limit = control_queue_limit
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
        self.close_code: int | None = None

        self._task: asyncio.Task[None] | None = None
        self._ws: ClientConnection | None = None
        self._ready = False  # this connection has its metadata: audio may flow
        self._conn: EngineConnection | None = None  # the latest connection (kept after it ended)
        self._first_connected = asyncio.Event()
        self._stop = asyncio.Event()
        self._closing = False
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
    def last_error_event(self) -> EngineErrorEvent | None:
        """The last ``error`` event of the latest connection."""
        return self._conn.last_error_event if self._conn is not None else None

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
        ws, conn = self._ws, self._conn
        if ws is not None and conn is not None:
            await conn.close_politely()
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
        if self.protocol.queued[1] >= self._control_limit:
            self.counters.control_dropped_backpressure += 1
            dropped = self.counters.control_dropped_backpressure
            if dropped == 1 or dropped % 100 == 0:
                log.warning("engine socket not keeping up: %d control messages waiting, %d dropped so far",
                            self._control_limit, dropped)
            return False
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
        ended: Ended | None = None
        self._set_state(ConnectionState.CONNECTING)
        try:
            while not self._closing:
                try:
                    ended = await self._attempt()
                except AttemptFailed as exc:
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
                    now = self._clock.now_ns()
                    if self._budget.stable(now):
                        # It worked for a while: this is a new outage, with a fresh count and backoff.
                        self._retry.connected()
                        self._retry.lost()
                    log.warning("engine conversation lost after %.1f s (%s); reconnecting",
                                self._budget.lasted_ns(now) / 1e9, last_reason)
                    self._budget.check(now, last_reason, self.close_code)
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

    async def _attempt(self) -> Ended:
        try:
            url = await self._url_provider()
        except (EngineAuthError, EngineRefusedError):
            raise
        except EngineError as exc:
            raise AttemptFailed(self.redactor(str(exc))) from None
        self.redactor.add(*(value for _, value in parse_qsl(urlsplit(url).query)))
        where = redact_url(url)
        log.debug("engine connecting to %s", where)
        ws = await open_socket(url, where, self.redactor, subprotocols=self._subprotocols,
                               open_timeout=self._open_timeout, keepalive=self._keepalive,
                               close_timeout=self._close_timeout, max_size=self._max_message_bytes, proxy=self._proxy)
        if self._closing:
            await ws.close(CLOSE_NORMAL, "client ended conversation")
            return Ended(CLOSE_NORMAL, "closed by client", None, final=True)
        return await self._converse(ws)

    async def _converse(self, ws: ClientConnection) -> Ended:
        self.protocol.reset()
        data = self._init if self._init_factory is None else self._init_factory(self.counters.connects)
        init = self.protocol.initiation(
            overrides=data.overrides, dynamic_variables=data.dynamic_variables,
            custom_llm_extra_body=data.custom_llm_extra_body, user_id=data.user_id, source_info=data.source_info)
        conn = self._conn = EngineConnection(
            ws, self.protocol, self.counters, clock=self._clock, redactor=self.redactor, wake=self._wake,
            on_event=self._on_event, on_established=self._on_established, on_finished=self._on_finished,
            closing=lambda: self._closing, reconnect_wanted=self._reconnect_wanted,
            metadata_timeout=self._metadata_timeout, close_timeout=self._close_timeout)
        self._ws = ws
        try:
            return await conn.converse(init)
        finally:
            if conn.close_code is not None:
                self.close_code = conn.close_code

    def _on_established(self) -> None:
        self._ready = True
        self._budget.established(self._clock.now_ns(), first=not self.counters.connects)
        self.counters.connects += 1
        self._first_connected.set()
        self._set_state(ConnectionState.CONNECTED)

    def _on_finished(self) -> None:
        self._ready = False
        self._ws = None
