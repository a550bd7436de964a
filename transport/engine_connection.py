"""One socket's conversation for :class:`~transport.engine_client.EngineClient`: the reader and writer tasks,
the wait for the metadata, the polite close, and how the connection ended.

The **reader** takes each text message off the socket, stamps it with the injected clock, lets the protocol
parse it, queues any pong *before* handing events on, and calls the synchronous ``on_event(event, recv_ns)``
callback. It never awaits anything but the socket, so an ``interruption`` is seen the moment it arrives
whatever audio came before it; the callback must return at once too. The **writer** sends what the protocol
hands out, pongs first, then control messages, then audio (rule 8 of :mod:`~transport.engine_protocol`, which
also bounds each queue), so a pong never waits behind a backlog of audio. The reader only queues pongs: a write
can wait on a full socket buffer, and the reader must never wait on anything but the next message.

The client owns the protocol (one per client, ``reset()`` per connection), the counters and the writer's wake
event (its ``send_*`` methods set it); a connection borrows them for its life. How the end is classified is
:func:`transport.engine_lifecycle.classify_end`; this module only reads the close frames off the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Literal

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.typing import Subprotocol

from core.clock import Clock
from core.errors import EngineAuthError, EngineError, ProtocolError
from core.redact import Redactor
from transport.engine_lifecycle import Ended, classify_end
from transport.engine_protocol import (
    CLOSE_NORMAL,
    AgentAudio,
    ConversationMetadata,
    EngineErrorEvent,
    EngineProtocol,
    Event,
    EventCallback,
)
from transport.init_options import explain_refusal
from transport.log_context import RedactingLogger

__all__ = ["AttemptFailed", "ClientCounters", "EngineConnection", "open_socket"]

log = logging.getLogger(__name__)
_WS_LOG = logging.getLogger("websockets.client")

_YIELD_AFTER_CHARS: Final = 256 * 1024
_PROTOCOL_ERROR_LOG_FIRST: Final = 10  # per kind; afterwards every 1000th, so a flood cannot flood the log


@dataclass(slots=True)
class ClientCounters:
    connects: int = 0  # conversations established (metadata received)
    failed_attempts: int = 0  # over the client's life
    audio_chunks_queued: int = 0
    audio_bytes_queued: int = 0
    audio_dropped_not_ready: int = 0  # no conversation (connecting, reconnecting, closed)
    audio_dropped_backpressure: int = 0  # audio queue full: the socket is not keeping up
    control_dropped_not_ready: int = 0
    control_dropped_backpressure: int = 0  # control queue full (control_queue_limit): the socket is stalled
    messages_sent: int = 0  # by the writer, all kinds
    callback_errors: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)  # protocol errors seen by the reader, by kind


class AttemptFailed(Exception):
    """An attempt ended before a conversation was established; retryable."""


async def open_socket(url: str, where: str, redactor: Redactor, *, subprotocols: list[Subprotocol] | None,
                      open_timeout: float, keepalive: float | None, close_timeout: float, max_size: int,
                      proxy: str | Literal[True] | None) -> ClientConnection:
    """Open the websocket to ``url`` (``where``: its redacted form, for messages). HTTP 401/403 at the upgrade
    raise :class:`~core.errors.EngineAuthError`; any other failure :class:`AttemptFailed` (retryable)."""
    try:
        # Compression is off on purpose: base64 PCM barely deflates and every chunk would pay CPU time.
        return await connect(
            url, subprotocols=subprotocols, compression=None, open_timeout=open_timeout,
            ping_interval=keepalive, ping_timeout=keepalive, close_timeout=close_timeout, max_size=max_size,
            proxy=proxy, logger=RedactingLogger(_WS_LOG, redactor),
        )
    except InvalidStatus as exc:
        status = exc.response.status_code
        if status in (401, 403):
            raise EngineAuthError(f"engine refused the conversation URL {where} with HTTP {status}",
                                  close_code=None) from None
        raise AttemptFailed(f"HTTP {status} from {where}") from None
    except (OSError, TimeoutError, WebSocketException) as exc:
        raise AttemptFailed(f"{redactor(f'{type(exc).__name__}: {exc}')} connecting to {where}") from None


class EngineConnection:
    """``await EngineConnection(ws, …).converse(init)``: the conversation on ``ws`` until it ends.

    ``on_established`` is called once, when the metadata arrives; ``on_finished`` once, when the connection is
    over, before the polite close is awaited. ``closing`` and ``reconnect_wanted`` are asked when the end is
    classified."""

    def __init__(self, ws: ClientConnection, protocol: EngineProtocol, counters: ClientCounters, *, clock: Clock,
                 redactor: Redactor, wake: asyncio.Event, on_event: EventCallback,
                 on_established: Callable[[], None], on_finished: Callable[[], None], closing: Callable[[], bool],
                 reconnect_wanted: Callable[[], bool] | None, metadata_timeout: float, close_timeout: float) -> None:
        self.ws = ws
        self.protocol = protocol
        self.counters = counters
        self._clock = clock
        self._redactor = redactor
        self._wake = wake
        self._on_event = on_event
        self._on_established = on_established
        self._on_finished = on_finished
        self._closing = closing
        self._reconnect_wanted = reconnect_wanted
        self._metadata_timeout = metadata_timeout
        self._close_timeout = close_timeout
        self.ready = False  # the metadata arrived: audio may flow
        self._established = asyncio.Event()
        self.last_error_event: EngineErrorEvent | None = None
        self.fatal: EngineError | None = None  # the reader found the conversation unusable
        self.close_code: int | None = None  # once classified

    async def converse(self, init: str) -> Ended:
        """Send ``init``, wait for the metadata, then read until the socket closes; raise :class:`AttemptFailed`
        (or the final error) when no conversation was established."""
        ws = self.ws
        reader = asyncio.create_task(self._reader(), name="engine-reader")
        writer = asyncio.create_task(self._writer(), name="engine-writer")
        try:
            with contextlib.suppress(ConnectionClosed):  # the reader reports the close
                await ws.send(init)
            ready = asyncio.create_task(self._established.wait())
            try:
                await asyncio.wait({ready, reader}, timeout=self._metadata_timeout,
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                ready.cancel()
            if not self._established.is_set():
                if not reader.done():
                    raise AttemptFailed(f"no metadata within {self._metadata_timeout} s")
                ended = self._ending()
                if ended.error is not None and ended.final:
                    raise ended.error
                raise AttemptFailed(f"closed before metadata: {ended.reason}")
            await reader
            return self._ending()
        finally:
            self.ready = False
            self._on_finished()
            writer.cancel()
            reader.cancel()
            await self.close_politely()

    async def close_politely(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(CLOSE_NORMAL, "client ended conversation"), self._close_timeout)

    def _ending(self) -> Ended:
        """Classify the finished connection: retry, clean end, or final error."""
        received, sent = self.ws.protocol.close_rcvd, self.ws.protocol.close_sent
        # When we failed the connection (1009 message too big, 1002 protocol error) the peer may never
        # answer; our own code then says more than websockets' 1006.
        close = received or sent
        code = close.code if close is not None else 1006
        self.close_code = code
        error = self.last_error_event
        reason = f"close code {code}" + ("" if received or sent is None else " (sent by us)")
        if close is not None and close.reason:
            reason += f" ({self._redactor(close.reason)})"
        if error is not None:
            reason += f", error {error.error_type}: {self._redactor(error.message or '')}"
            reason += explain_refusal(error.error_type)  # an override or variable problem: say what to do
        return classify_end(code, reason, error_type=error.error_type if error is not None else None,
                            closing=self._closing(), fatal=self.fatal, reconnect_wanted=self._reconnect_wanted)

    # ------------------------------------------------------------------ the two tasks

    async def _reader(self) -> None:
        protocol = self.protocol
        try:
            async for message in self.ws:
                recv_ns = self._clock.now_ns()
                if len(message) > _YIELD_AFTER_CHARS:
                    # websockets hands over buffered messages without suspending: after a large one, let
                    # the other sessions on this loop run before parsing it, so a burst of large messages
                    # cannot hold the loop for its whole length.
                    await asyncio.sleep(0)
                if isinstance(message, bytes):
                    self._protocol_error(protocol.binary_frame(len(message)))
                    continue
                try:
                    events = protocol.receive(message)
                except ProtocolError as exc:
                    self._protocol_error(exc)
                    if exc.kind == "unknown_format":
                        # Nothing this conversation sends could be played: stop, and do not retry.
                        self.fatal = EngineError(f"engine announced an unsupported format: {exc}")
                        return
                    continue
                if protocol.queued[0]:  # a pong: the writer sends it ahead of anything else queued
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
        if self.ready:
            return
        self.ready = True
        self._established.set()
        self._on_established()

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
                        self._redactor(str(exc)))

    async def _writer(self) -> None:
        try:
            while True:
                text = self.protocol.next_to_send()
                if text is None:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                await self.ws.send(text)
                self.counters.messages_sent += 1
        except ConnectionClosed:
            pass
