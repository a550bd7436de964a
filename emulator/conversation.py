"""One emulated conversation: the server's half of the socket, its timeouts, and its recording.

Message flow, as the real server is documented to behave (``/work/shared/PROTOCOL.md``):

1. The first client message must be ``conversation_initiation_client_data``; we answer
   ``conversation_initiation_metadata`` with the agent's formats. Anything else first, or anything malformed
   later, gets an ``error`` event (``invalid_message``) and close 1008, and the reason is logged.
2. ``user_audio_chunk`` payloads are decoded in the input format. The user's turns and barge-in are
   :mod:`emulator.turns`'s; the replies (transcript, response, paced audio, interruption, correction)
   :mod:`emulator.replies`'s.
3. A ``user_message`` is a typed turn; a ``contextual_update`` is kept, and a scripted reply quotes the newest.
4. Pings every ``ping_interval_s`` carry the last measured round trip as ``ping_ms``. A ping unanswered for
   ``pong_timeout_s`` ends the conversation (1002; the real server's behaviour here is UNCONFIRMED). So do
   ``idle_timeout_s`` without any client message (``transport_receive_timeout``, 1002) and the maximum
   duration (``max_duration_exceeded``, 1000): an ``error`` event first, then the close.

Everything sent goes through one sender task (:mod:`emulator.outbox`), so faults (stall, jitter, drop) keep
the order of messages, and each message is recorded with ``time.monotonic_ns()`` when it is actually written.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

import numpy as np
import numpy.typing as npt
from aiohttp import WSMsgType, web

from core.errors import ProtocolError
from core.formats import AudioFormat, parse_format
from emulator import overrides, wire
from emulator.agents import AgentRecord
from emulator.config import EmulatorConfig, Faults, InjectKind, ReplyMode
from emulator.outbox import Outbox
from emulator.records import Out, PingRecord, Reply, Utterance, WireRecord
from emulator.replies import Replies
from emulator.turns import Turns
from emulator.voice import BrainVoice

if TYPE_CHECKING:
    from emulator.server import Emulator

__all__ = ["Conversation", "PingRecord", "Reply", "Utterance", "WireRecord"]

log = logging.getLogger(__name__)

Int16Array = npt.NDArray[np.int16]
_TICK_S = 0.05  # housekeeping period: pings and timeouts only; reply timing uses exact timers


class Conversation:
    """Created by :class:`~emulator.server.Emulator` per accepted socket; tests reach it through
    ``await emulator.next_conversation()`` and use the hooks and records below."""

    def __init__(self, emulator: Emulator, ws: web.WebSocketResponse, transport: asyncio.Transport | None,
                 agent: AgentRecord, conversation_id: str, query: dict[str, str]) -> None:
        self._emulator = emulator
        self._config: EmulatorConfig = emulator.config
        self._ws = ws
        self._transport = transport
        self.agent_id = agent.agent_id
        self.conversation_id = conversation_id
        self.query = query  # the upgrade's query parameters, signature removed
        self.subprotocol = ws.ws_protocol
        self.input_format: AudioFormat = parse_format(agent.input_format)
        self.output_format: AudioFormat = parse_format(agent.output_format)
        self.max_duration_s = agent.max_duration_s if agent.max_duration_s is not None \
            else self._config.max_duration_s
        self.started_ns = time.monotonic_ns()
        self.ended_ns: int | None = None
        self.close_code: int | None = None
        self.end_reason: str | None = None
        self.init: wire.ClientInit | None = None
        self.records: list[WireRecord] = []
        self.replies: list[Reply] = []
        self.utterances: list[Utterance] = []
        self.pings: list[PingRecord] = []
        self.audio_chunks: list[tuple[int, int]] = []  # (receive ns, samples) per user_audio_chunk
        self.client_messages: list[wire.ClientMessage] = []  # every parsed non-audio message
        # Received contextual updates and typed user messages, in order; a scripted (non-brain) reply's text
        # ends with the newest update's tail, so a test can see the agent "knows" it.
        self.contextual_updates: list[wire.ContextualUpdate] = []
        self.user_messages: list[str] = []
        self.first_message: str | None = None  # what the agent said first, once it started saying it
        self.faults_override: Faults | None = None
        self.voice: BrainVoice | None = None  # set when the engine record names a brain server
        self._agent = agent

        self._rng = random.Random(self._config.seed)
        self._audio = bytearray()  # received samples, int16 little-endian, input rate
        self._outbox = Outbox(ws, rng=self._rng, faults=lambda: self.faults, after_send=self._after_send,
                              name=conversation_id)
        self._replies = Replies(self)  # the agent's side: replies, pacing, interruptions (emulator/replies.py)
        self._ping_id = 0
        self._last_rtt_ms: int | None = None
        # User input (audio, text, user_activity) resets the idle timer; pongs and feedback do not, as AAPI
        # describes transport_receive_timeout as "no user input" and the docs tell clients to send
        # user_activity to keep a quiet conversation open.
        self._last_input_ns = self.started_ns
        self._initiated = False
        self._end_task: asyncio.Task[None] | None = None
        self._brain_open: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._replies_handed_out = 0
        self._turns = Turns(self, self._replies)  # the user's turns and barge-in (emulator/turns.py)

    # ------------------------------------------------------------------ public: state and waiting

    @property
    def faults(self) -> Faults:
        return self.faults_override or self._emulator.faults

    @property
    def config(self) -> EmulatorConfig:
        return self._config

    @property
    def transcriber(self) -> Callable[[Int16Array, int], str | None] | None:
        return self._emulator.transcriber

    @property
    def ended(self) -> bool:
        return self.ended_ns is not None

    @property
    def ending(self) -> bool:
        """An end was asked for (by a fault, a timeout, invalid input or :meth:`end`)."""
        return self._end_task is not None

    @property
    def current_reply(self) -> Reply | None:
        return self.replies[-1] if self.replies else None

    def received_audio(self) -> Int16Array:
        """Every user sample received so far, decoded, at the input rate."""
        return np.frombuffer(bytes(self._audio), dtype="<i2").astype(np.int16)

    def utterance_audio(self, utterance: Utterance) -> Int16Array:
        return self.received_audio()[utterance.start_sample:utterance.end_sample]

    def sent(self, type_: str | None = None) -> list[WireRecord]:
        return [r for r in self.records if r.direction == "out" and (type_ is None or r.type == type_)]

    def received(self, type_: str | None = None) -> list[WireRecord]:
        return [r for r in self.records if r.direction == "in" and (type_ is None or r.type == type_)]

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def changed(self) -> None:
        """Wake :meth:`wait_for` callers (for collaborators such as :class:`BrainVoice`)."""
        self._notify()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Until ``predicate()`` holds (checked after every recorded change), or TimeoutError."""
        async with asyncio.timeout(timeout):
            while not predicate():
                await self._changed.wait()

    async def next_reply(self, timeout: float = 10.0) -> Reply:
        """The first reply whose audio has started going out and that this method has not returned yet
        (a queue: a reply that started before the call is not missed)."""
        def started() -> list[Reply]:
            return [r for r in self.replies if r.start_ns is not None]
        await self.wait_for(lambda: len(started()) > self._replies_handed_out, timeout)
        self._replies_handed_out += 1
        return started()[self._replies_handed_out - 1]

    async def wait_closed(self, timeout: float = 10.0) -> None:
        await self.wait_for(lambda: self.ended, timeout)

    # ------------------------------------------------------------------ public: hooks

    def trigger_reply(self, mode: ReplyMode | None = None, *, ms: float | None = None,
                      samples: Int16Array | None = None, transcript: str | None = None) -> Reply:
        """Start a reply now, as if a user turn had just ended. ``samples`` (output rate) override ``mode``."""
        return self._replies.start(mode or self._config.reply_mode, None, ms=ms, samples=samples,
                                   transcript=transcript)

    def interrupt(self, reason: str | None = None) -> bool:
        """Interrupt the reply in progress, as a barge-in would; False if none is playing."""
        reply = self.current_reply
        if reply is None or not reply.playing_at(time.monotonic_ns(), self._replies.extra_ns()):
            return False
        self._replies.interrupt(reply, reason)
        return True

    def send(self, text: str, type_: str = "custom", event_id: int | None = None) -> None:
        """Send any server message (e.g. ``wire.client_tool_call(...)``), in order with everything else."""
        self._enqueue(text, type_, event_id)

    def send_audio(self, reply: Reply, data: bytes, samples: int, *, stale: bool = False) -> None:
        """Queue one audio chunk of ``reply`` (already encoded in the output format); ``stale``: sent even
        though the reply was interrupted (a late chunk on purpose)."""
        self._enqueue(wire.audio(data, reply.event_id), "audio", reply.event_id, reply=reply, samples=samples,
                      stale=stale)

    def stall(self, seconds: float) -> None:
        """Hold every send (queued or new) for ``seconds`` from now; order is kept."""
        self._outbox.stall(seconds)

    def inject(self, kind: InjectKind) -> None:
        """Send one malformed or unexpected message, in order with everything else."""
        reply = self.current_reply
        event_id = reply.event_id if reply is not None else self._replies.next_id
        text = wire.malformed(kind, event_id, oversize_bytes=self._config.oversize_bytes)
        self._enqueue(text, kind, event_id)

    def pause_reading(self, paused: bool = True) -> None:
        """Stop (or resume) reading the client's socket: a slow consumer whose receive window fills up."""
        if self._transport is not None:
            if paused:
                self._transport.pause_reading()
            else:
                self._transport.resume_reading()

    def drop(self) -> None:
        """Abort the TCP connection with no close frame (the client sees 1006)."""
        log.info("conversation %s: dropping the socket (fault injection)", self.conversation_id)
        if self._transport is not None:
            self._transport.abort()

    def end(self, code: int, error_type: str | None = None, message: str = "") -> None:
        """End like the server does: ``error`` event (when ``error_type``), then close with ``code``."""
        if self._end_task is None and not self.ended:
            self._end_task = asyncio.create_task(self._end(code, error_type, message))

    # ------------------------------------------------------------------ running

    async def run(self) -> None:
        sender = asyncio.create_task(self._outbox.run(), name=f"{self.conversation_id}-sender")
        housekeeping = asyncio.create_task(self._housekeeping(), name=f"{self.conversation_id}-tick")
        try:
            await self._receive_loop()
        finally:
            if self._end_task is not None:
                await asyncio.shield(self._end_task)
            if self._brain_open is not None:
                self._brain_open.cancel()
            if self.voice is not None:
                await self.voice.close()
            for task in (housekeeping, self._replies.task, sender):
                if task is not None:
                    task.cancel()
            self._turns.cancel()
            self.ended_ns = time.monotonic_ns()
            if self.close_code is None:
                self.close_code = self._ws.close_code
            log.info("conversation %s ended (code %s, %s)", self.conversation_id, self.close_code,
                     self.end_reason or "client closed")
            self._notify()

    async def _receive_loop(self) -> None:
        async for message in self._ws:
            now = time.monotonic_ns()
            if message.type == WSMsgType.TEXT:
                self._on_text(message.data, now)
            elif message.type == WSMsgType.BINARY:
                self._record("in", "binary", None, len(message.data), None, now)
                self._invalid("binary frames are not part of the protocol")
            elif message.type == WSMsgType.ERROR:
                log.info("conversation %s: socket error %s", self.conversation_id, self._ws.exception())
                break
            if self._end_task is not None:
                # Ending: the close handshake finishes the iteration; read nothing more into the dialogue.
                continue

    def _on_text(self, text: str, now: int) -> None:
        try:
            message = wire.parse_client_message(text)
        except ProtocolError as exc:
            self._record("in", "invalid", None, len(text), text, now)
            self._invalid(str(exc))
            return
        if isinstance(message, wire.UserAudioChunk):
            self._record("in", "user_audio_chunk", None, len(text), text, now)
        else:
            kind = type(message).__name__
            event_id = getattr(message, "event_id", None)
            raw_type = json.loads(text).get("type", kind)
            self._record("in", str(raw_type), event_id, len(text), text, now)
            self.client_messages.append(message)
        if self._end_task is not None:
            return
        if not self._initiated:
            if isinstance(message, wire.ClientInit):
                self._start(message)
            else:
                self._invalid("the first message must be conversation_initiation_client_data")
            return
        if isinstance(message, wire.UserAudioChunk | wire.UserMessage | wire.UserActivity | wire.ContextualUpdate):
            self._last_input_ns = now
        if isinstance(message, wire.UserAudioChunk):
            self._on_audio(message.data, now)
        elif isinstance(message, wire.Pong):
            self._on_pong(message.event_id, now)
        elif isinstance(message, wire.ClientInit):
            self._invalid("conversation_initiation_client_data sent twice")
        elif isinstance(message, wire.UserMessage):
            self.user_messages.append(message.text or "")
            self._turns.user_turn(None, now, transcript=message.text or "")
        elif isinstance(message, wire.ContextualUpdate):
            self.contextual_updates.append(message)
        self._notify()

    def _invalid(self, why: str) -> None:
        log.warning("conversation %s: invalid client input, closing 1008: %s", self.conversation_id, why)
        self.end(1008, "invalid_message", why)

    def _start(self, init: wire.ClientInit) -> None:
        self.init = init
        self._initiated = True
        refused = overrides.refusal(self._agent, init)  # override permissions, dynamic variables: 1008
        if refused is not None:
            log.info("conversation %s: refusing the init: %s", self.conversation_id, refused[1])
            self.end(1008, *refused)
            return
        self._enqueue(wire.metadata(self.conversation_id, self.input_format.name, self.output_format.name),
                      "conversation_initiation_metadata")
        first = overrides.first_message(self._agent, init, self.conversation_id)
        if first:
            self._replies.say_first(first)
        elif self._config.greeting_ms > 0 and not overrides.sets_first_message(init):
            self._replies.start("speech", None, ms=self._config.greeting_ms, transcript=None)
        brain_url = self._agent.speech_engine.get("ws_url")
        if isinstance(brain_url, str) and brain_url:
            headers = self._agent.speech_engine.get("request_headers") or {}
            self.voice = BrainVoice(self, brain_url, dict(headers), self._emulator.api_key)
            self._brain_open = asyncio.create_task(self.voice.open(), name=f"{self.conversation_id}-brain-open")

    # ------------------------------------------------------------------ turn-taking

    def _on_audio(self, data: bytes, now: int) -> None:
        try:
            samples = self.input_format.decode(data)
        except ProtocolError as exc:
            self._invalid(f"user_audio_chunk: {exc}")
            return
        self._audio += samples.astype("<i2").tobytes()
        self.audio_chunks.append((now, int(samples.size)))
        self._turns.audio(samples, now)

    # ------------------------------------------------------------------ pings and timeouts

    def _on_pong(self, event_id: int, now: int) -> None:
        if self.faults.ignore_pongs:
            return
        for ping in reversed(self.pings):
            if ping.event_id == event_id and ping.pong_ns is None:
                ping.pong_ns = now
                # Whole milliseconds, rounded up: the SDKs read a ping_ms of 0 as "no measurement" (the Python
                # one calls its latency callback only `if event["ping_ms"]`), and loopback round trips are < 1 ms.
                self._last_rtt_ms = max(1, math.ceil((now - ping.sent_ns) / 1e6))
                return
        log.info("conversation %s: pong for unknown ping %d", self.conversation_id, event_id)

    async def _housekeeping(self) -> None:
        config = self._config
        loop = asyncio.get_running_loop()
        next_ping = loop.time() + (config.ping_interval_s or 0)
        while True:
            await asyncio.sleep(_TICK_S)
            if self._end_task is not None:
                return
            now = time.monotonic_ns()
            if self._initiated and config.ping_interval_s and loop.time() >= next_ping:
                next_ping = loop.time() + config.ping_interval_s
                self._ping_id += 1
                ping = PingRecord(self._ping_id, 0)
                self._enqueue(wire.ping(self._ping_id, self._last_rtt_ms), "ping", self._ping_id, ping=ping)
            waiting = [p for p in self.pings if p.pong_ns is None]
            if config.pong_timeout_s and waiting and now - waiting[0].sent_ns > config.pong_timeout_s * 1e9:
                self.end(1002, "transport_receive_timeout", f"no pong for {config.pong_timeout_s} s")
            elif config.idle_timeout_s and now - self._last_input_ns > config.idle_timeout_s * 1e9:
                self.end(1002, "transport_receive_timeout", f"no user input for {config.idle_timeout_s} s")
            elif self.max_duration_s and now - self.started_ns > self.max_duration_s * 1e9:
                self.end(1000, "max_duration_exceeded", f"maximum duration of {self.max_duration_s} s reached")
            else:
                self._turns.check_stalled(now)

    # ------------------------------------------------------------------ sending

    def _enqueue(self, text: str | bytes, type_: str, event_id: int | None = None, *, reply: Reply | None = None,
                 samples: int = 0, stale: bool = False, ping: PingRecord | None = None) -> None:
        self._outbox.put(text, type_, event_id, reply=reply, samples=samples, stale=stale, ping=ping)

    def _after_send(self, item: Out, now: int) -> None:
        text = item.text if isinstance(item.text, str) and self._config.record_text else None
        self._record("out", item.type, item.event_id, len(item.text), text, now)
        if item.ping is not None:
            item.ping.sent_ns = now
            self.pings.append(item.ping)
        reply = item.reply
        if reply is not None and item.type == "audio":
            if item.stale:
                reply.stale_chunks_sent += 1
            else:
                reply.chunks_sent += 1
                reply.samples_sent += item.samples
                if reply.start_ns is None:
                    reply.start_ns = now
                if reply.samples_sent >= reply.samples.size and reply.final:
                    reply.end_ns = now
                drop_after = self.faults.drop_after_chunks
                if drop_after is not None and reply.chunks_sent >= drop_after:
                    self.drop()
        self._notify()

    def _record(self, direction: Literal["in", "out"], type_: str, event_id: int | None, size: int,
                text: str | None, now: int) -> None:
        keep = text if self._config.record_text else None
        self.records.append(WireRecord(now, direction, type_, event_id, size, keep))

    async def _end(self, code: int, error_type: str | None, message: str) -> None:
        self.end_reason = f"{error_type}: {message}" if error_type else message or f"closed with {code}"
        self.close_code = code
        self._turns.cancel()
        self._replies.cancel()
        if error_type is not None:
            self._enqueue(wire.error(code, error_type, message), "error")
        with contextlib.suppress(TimeoutError):  # a stalled sender must not keep the socket open forever
            async with asyncio.timeout(2.0):
                await self._outbox.join()
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self._ws.close(code=code, message=message.encode()[:120])
        self._notify()
