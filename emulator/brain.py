"""The brain socket's asyncio shell: one outgoing WebSocket per conversation, to the user's brain server.

Opened when a conversation starts (after ``conversation_initiation_client_data``) if the Speech Engine record
has a ``speech_engine.ws_url``. Messages and facts: :mod:`emulator.brain_protocol`. What the emulator does
when the brain misbehaves (the real service's behaviour is not documented; every row is INFERRED, chosen to
be visible and to match the conversation socket's own error events, AAPI ``ErrorType``):

=================================================  ==============================================================
brain                                              emulator
=================================================  ==============================================================
unreachable, refuses the upgrade (e.g. 401),       the conversation gets an ``error`` event ``cascade_brain_error``
or no upgrade within ``brain_connect_timeout_s``   and closes 1002 (AAPI: 1002 = operational error)
closes or drops its socket during the conversation same: ``cascade_brain_error``, close 1002
no pong within ``brain_pong_timeout_s``            same
no ``agent_response`` within                       the turn is given up: nothing is spoken, the conversation goes
``brain_response_timeout_s`` of a transcript       on and the next turn sends the history again
a malformed frame                                  ignored, answered with ``{"type":"error","message"}``
text for an older ``event_id``                     dropped (counted in ``stale_responses``)
=================================================  ==============================================================

At the end of the conversation the engine sends ``{"type":"close"}`` and closes with 1000.
``secret_id`` header values (workspace secrets) cannot be resolved locally: the emulator leaves such a
header out and logs its name, never a value.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp

from core.errors import ProtocolError
from core.redact import redact_url
from emulator import brain_protocol as bp

__all__ = ["BrainLink", "BrainRecord"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BrainRecord:
    ns: int  # time.monotonic_ns()
    direction: Literal["in", "out"]
    type: str
    text: str


class BrainLink:
    """``await link.open()`` then ``send_transcript``; responses go to ``on_response``, a lost brain to
    ``on_lost(reason)``. ``await link.close()`` says ``close`` and closes the socket."""

    def __init__(self, url: str, *, api_key: str, conversation_id: str, headers: Mapping[str, Any],
                 on_response: Callable[[bp.AgentResponse], None], on_lost: Callable[[str], None],
                 connect_timeout_s: float = 5.0, ping_interval_s: float | None = 5.0,
                 pong_timeout_s: float | None = 15.0) -> None:
        self.url = url
        self.conversation_id = conversation_id
        self.records: list[BrainRecord] = []
        self.pongs = 0
        self.invalid = 0
        self.opened = False
        self.closed = False
        self._api_key = api_key
        self._headers = headers
        self._on_response = on_response
        self._on_lost = on_lost
        self._connect_timeout_s = connect_timeout_s
        self._ping_interval_s = ping_interval_s
        self._pong_timeout_s = pong_timeout_s
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._out: asyncio.Queue[tuple[str, str]] = asyncio.Queue()  # unbounded: a few messages per turn
        self._unanswered_since: int | None = None
        self._early: list[tuple[str, str]] = []  # queued before the upgrade finished; sent after init

    def _upgrade_headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        for name, value in self._headers.items():
            if isinstance(value, str):
                headers[name] = value
            else:
                log.warning("brain header %s refers to a workspace secret the emulator cannot resolve; left out",
                            name)
        headers[bp.AUTH_HEADER] = bp.speech_engine_jwt(self._api_key, int(time.time()))
        return headers

    async def open(self) -> None:
        """Dial the brain and send ``init``; raises ``ConnectionError`` (with the reason) when it cannot."""
        self._session = aiohttp.ClientSession()
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                self._ws = await self._session.ws_connect(self.url, headers=self._upgrade_headers(),
                                                          autoping=True, heartbeat=None, max_msg_size=1 << 20)
        except aiohttp.WSServerHandshakeError as exc:
            await self._session.close()
            raise ConnectionError(f"brain refused the upgrade with HTTP {exc.status}") from None
        except TimeoutError:
            await self._session.close()
            raise ConnectionError(f"brain did not answer within {self._connect_timeout_s} s") from None
        except (aiohttp.ClientError, OSError) as exc:
            await self._session.close()
            raise ConnectionError(f"brain unreachable: {type(exc).__name__}") from None
        self.opened = True
        log.info("conversation %s: brain connected at %s", self.conversation_id, redact_url(self.url))
        self._out.put_nowait((bp.init(self.conversation_id), "init"))
        for item in self._early:
            self._out.put_nowait(item)
        self._early.clear()
        self._tasks = [asyncio.create_task(self._receive(), name=f"{self.conversation_id}-brain-rx"),
                       asyncio.create_task(self._sender(), name=f"{self.conversation_id}-brain-tx")]
        if self._ping_interval_s:
            self._tasks.append(asyncio.create_task(self._keepalive(), name=f"{self.conversation_id}-brain-ping"))
        for task in self._tasks:
            task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        """A crashed link task must not leave a conversation waiting on a brain nobody listens to."""
        if not task.cancelled() and task.exception() is not None:
            log.error("conversation %s: brain link task %s failed", self.conversation_id, task.get_name(),
                      exc_info=task.exception())
            self._lost(f"brain link failed: {type(task.exception()).__name__}")

    def sent(self, type_: str | None = None) -> list[BrainRecord]:
        return [r for r in self.records if r.direction == "out" and (type_ is None or r.type == type_)]

    def received(self, type_: str | None = None) -> list[BrainRecord]:
        return [r for r in self.records if r.direction == "in" and (type_ is None or r.type == type_)]

    def send_transcript(self, history: list[tuple[bp.Role, str]], event_id: int) -> None:
        self.send(bp.user_transcript(history, event_id), "user_transcript")

    def send(self, text: str, type_: str) -> None:
        """Queue a message; one sender task writes them in order."""
        if self.closed:
            return
        if self.opened:
            self._out.put_nowait((text, type_))
        else:
            self._early.append((text, type_))

    async def _sender(self) -> None:
        while True:
            text, type_ = await self._out.get()
            try:
                if self._ws is not None and not self._ws.closed:
                    with contextlib.suppress(ConnectionError, RuntimeError):
                        await self._ws.send_str(text)
                        self.records.append(BrainRecord(time.monotonic_ns(), "out", type_, text))
            finally:
                self._out.task_done()

    async def _receive(self) -> None:
        assert self._ws is not None
        async for message in self._ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                self.invalid += 1
                self.send(bp.error("binary frames are not part of the brain protocol"), "error")
                continue
            now = time.monotonic_ns()
            try:
                parsed = bp.parse_brain_message(message.data)
            except ProtocolError as exc:
                self.invalid += 1
                self.records.append(BrainRecord(now, "in", "invalid", message.data))
                log.warning("conversation %s: brain sent an invalid message: %s", self.conversation_id, exc)
                self.send(bp.error(str(exc)), "error")
                continue
            kind = parsed.type if isinstance(parsed, bp.OtherBrainMessage) else \
                "pong" if isinstance(parsed, bp.BrainPong) else "agent_response"
            self.records.append(BrainRecord(now, "in", kind, message.data))
            if isinstance(parsed, bp.BrainPong):
                self.pongs += 1
                self._unanswered_since = None
            elif isinstance(parsed, bp.AgentResponse):
                self._on_response(parsed)
        if not self.closed:
            code = self._ws.close_code
            self._lost(f"brain closed its socket (code {code})")

    async def _keepalive(self) -> None:
        assert self._ping_interval_s
        while True:
            await asyncio.sleep(self._ping_interval_s)
            now = time.monotonic_ns()
            if self._pong_timeout_s and self._unanswered_since is not None \
                    and now - self._unanswered_since > self._pong_timeout_s * 1e9:
                self._lost(f"brain answered no ping for {self._pong_timeout_s} s")
                return
            if self._unanswered_since is None:
                self._unanswered_since = now
            self.send(bp.ping(), "ping")

    def _lost(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        log.warning("conversation %s: %s", self.conversation_id, reason)
        self._on_lost(reason)

    async def close(self) -> None:
        """Say ``close``, close with 1000, stop the tasks. Safe to call twice."""
        if not self.closed and self.opened:
            self.send(bp.close(), "close")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await self._out.join()
        self.closed = True
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        if self._ws is not None:
            with contextlib.suppress(ConnectionError, RuntimeError, TimeoutError):
                async with asyncio.timeout(2.0):
                    await self._ws.close(code=1000)
        if self._session is not None:
            await self._session.close()
