"""One emulated conversation: the server's half of the socket, its turn-taking, and its recording.

Message flow, as the real server is documented to behave (``/work/shared/PROTOCOL.md``):

1. The first client message must be ``conversation_initiation_client_data``; we answer
   ``conversation_initiation_metadata`` with the agent's formats. Anything else first, or anything malformed
   later, gets an ``error`` event (``invalid_message``) and close 1008, and the reason is logged.
2. ``user_audio_chunk`` payloads are decoded in the input format and fed to an energy VAD. When the user
   stops, after ``think_time_ms`` the agent replies: ``user_transcript``, ``agent_response``, then audio
   chunks paced ``burst_factor`` times faster than real time. All chunks of a reply share one ``event_id``;
   ids grow per turn.
3. Barge-in: speech that starts while a reply is still playing *at the client* (within the reply's real-time
   duration since its first chunk went out, not just while chunks are being sent) interrupts it: unsent
   chunks are discarded, an ``interruption`` goes out, then ``agent_response_correction``. Which id the
   interruption carries, whether the next reply shares it, and whether some stale chunks of the interrupted
   reply follow it are configurable (:class:`~emulator.config.EmulatorConfig`).
4. Pings every ``ping_interval_s`` carry the last measured round trip as ``ping_ms``. A ping unanswered for
   ``pong_timeout_s`` ends the conversation (1002; the real server's behaviour here is UNCONFIRMED). So do
   ``idle_timeout_s`` without any client message (``transport_receive_timeout``, 1002) and the maximum
   duration (``max_duration_exceeded``, 1000): an ``error`` event first, then the close.

Everything sent goes through one sender task, so faults (stall, jitter, drop) keep the order of messages,
and each message is recorded with ``time.monotonic_ns()`` when it is actually written — the clock of
:class:`core.clock.MonotonicClock`, so tests and benchmarks can subtract the bridge's timestamps directly.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

import numpy as np
import numpy.typing as npt
from aiohttp import WSMsgType, web

from core.errors import ProtocolError
from core.formats import AudioFormat, parse_format
from emulator import overrides, tts, wire
from emulator.agents import AgentRecord
from emulator.config import EmulatorConfig, Faults, InjectKind, ReplyMode
from emulator.records import Out, PingRecord, Reply, Utterance, WireRecord
from emulator.signals import resample, speech_like, tone
from emulator.vad import EnergyVad, VadEdge
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
        self._vad = EnergyVad(self.input_format.rate, threshold_dbfs=self._config.vad_threshold_dbfs,
                              frame_ms=self._config.vad_frame_ms, min_speech_ms=self._config.vad_min_speech_ms,
                              hangover_ms=self._config.vad_hangover_ms)
        self._out: asyncio.Queue[Out] = asyncio.Queue()
        self._next_id = 1
        self._ping_id = 0
        self._last_rtt_ms: int | None = None
        # User input (audio, text, user_activity) resets the idle timer; pongs and feedback do not, as AAPI
        # describes transport_receive_timeout as "no user input" and the docs tell clients to send
        # user_activity to keep a quiet conversation open.
        self._last_input_ns = self.started_ns
        self._last_audio_ns = self.started_ns
        self._utt_start: tuple[int, int] | None = None  # (sample, ns) of the turn being spoken
        self._pending_reply: asyncio.TimerHandle | None = None
        self._reply_task: asyncio.Task[None] | None = None
        self._stall_until = 0.0
        self._initiated = False
        self._end_task: asyncio.Task[None] | None = None
        self._brain_open: asyncio.Task[None] | None = None
        self._barge_timer: asyncio.TimerHandle | None = None  # barge_in_delay_ms pending
        self._changed = asyncio.Event()
        self._replies_handed_out = 0

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
        return self._start_reply(mode or self._config.reply_mode, None, ms=ms, samples=samples,
                                 transcript=transcript)

    def interrupt(self, reason: str | None = None) -> bool:
        """Interrupt the reply in progress, as a barge-in would; False if none is playing."""
        reply = self.current_reply
        if reply is None or not reply.playing_at(time.monotonic_ns(), self._extra_ns()):
            return False
        self._interrupt(reply, reason)
        return True

    def send(self, text: str, type_: str = "custom", event_id: int | None = None) -> None:
        """Send any server message (e.g. ``wire.client_tool_call(...)``), in order with everything else."""
        self._enqueue(text, type_, event_id)

    def send_audio(self, reply: Reply, data: bytes, samples: int) -> None:
        """Queue one audio chunk of ``reply`` (already encoded in the output format)."""
        self._enqueue(wire.audio(data, reply.event_id), "audio", reply.event_id, reply=reply, samples=samples)

    def stall(self, seconds: float) -> None:
        """Hold every send (queued or new) for ``seconds`` from now; order is kept."""
        self._stall_until = max(self._stall_until, asyncio.get_running_loop().time() + seconds)

    def inject(self, kind: InjectKind) -> None:
        """Send one malformed or unexpected message, in order with everything else."""
        reply = self.current_reply
        event_id = reply.event_id if reply is not None else self._next_id
        texts: dict[str, str | bytes] = {
            "garbage": "this is not json {",
            "unknown_type": json.dumps({"type": "emulator_unknown_event", "emulator_unknown_event": {"x": 1}}),
            "bad_base64": json.dumps({"type": "audio", "audio_event": {"audio_base_64": "@@not*base64@@",
                                                                       "event_id": event_id}}),
            "odd_pcm": json.dumps({"type": "audio", "audio_event": {
                "audio_base_64": base64.b64encode(b"\x01\x02\x03").decode(), "event_id": event_id}}),
            "binary": b"\x00\x01binary",
        }
        if kind == "oversize":
            filler = "x" * self._config.oversize_bytes
            text: str | bytes = wire.agent_response(filler, event_id)
        else:
            text = texts[kind]
        self._enqueue(text, kind, event_id)

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
        sender = asyncio.create_task(self._sender(), name=f"{self.conversation_id}-sender")
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
            for task in (housekeeping, self._reply_task, sender):
                if task is not None:
                    task.cancel()
            if self._pending_reply is not None:
                self._pending_reply.cancel()
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
            self._on_user_turn(None, now, transcript=message.text or "")
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
            self._reply_task = asyncio.create_task(self._say_first(first), name=f"{self.conversation_id}-first")
        elif self._config.greeting_ms > 0 and not overrides.sets_first_message(init):
            self._start_reply("speech", None, ms=self._config.greeting_ms, transcript=None)
        brain_url = self._agent.speech_engine.get("ws_url")
        if isinstance(brain_url, str) and brain_url:
            headers = self._agent.speech_engine.get("request_headers") or {}
            self.voice = BrainVoice(self, brain_url, dict(headers), self._emulator.api_key)
            self._brain_open = asyncio.create_task(self.voice.open(), name=f"{self.conversation_id}-brain-open")

    async def _say_first(self, text: str) -> None:
        config = self._config
        samples = await tts.speech_for(text, self.output_format.rate, voice=config.tts_voice,
                                       words_per_minute=config.tts_words_per_minute,
                                       level_dbfs=config.reply_level_dbfs, seed=config.seed)
        if self._end_task is None and self.current_reply is None:  # the caller did not get a turn in first
            self.first_message = text
            self._start_reply("speech", None, samples=samples, transcript=None, text=text)

    # ------------------------------------------------------------------ turn-taking

    def _on_audio(self, data: bytes, now: int) -> None:
        try:
            samples = self.input_format.decode(data)
        except ProtocolError as exc:
            self._invalid(f"user_audio_chunk: {exc}")
            return
        self._audio += samples.astype("<i2").tobytes()
        self.audio_chunks.append((now, int(samples.size)))
        self._last_audio_ns = now
        for edge in self._vad.push(samples):
            if edge.kind == "start":
                self._on_speech_start(edge, now)
            else:
                self._on_speech_end(edge, now)

    def _on_speech_start(self, edge: VadEdge, now: int) -> None:
        if self._pending_reply is not None:
            # The user went on speaking within the think time: the turn continues, nothing was said yet.
            self._pending_reply.cancel()
            self._pending_reply = None
        else:
            self._utt_start = (edge.sample, now)
        reply = self.current_reply
        if self._config.barge_in and reply is not None and reply.playing_at(now, self._extra_ns()):
            delay = self._config.barge_in_delay_ms
            if delay > 0:
                # A slower engine's decision: interrupt later, if that reply is still playing then (or when the
                # user's turn ends first, see _on_user_turn).
                if self._barge_timer is not None:
                    self._barge_timer.cancel()
                self._barge_timer = asyncio.get_running_loop().call_later(
                    delay / 1000, self._delayed_interrupt, reply)
            else:
                self._interrupt(reply, None)

    def _delayed_interrupt(self, reply: Reply) -> None:
        self._barge_timer = None
        if (reply is self.current_reply and self._end_task is None
                and reply.playing_at(time.monotonic_ns(), self._extra_ns())):
            self._interrupt(reply, None)

    def _on_speech_end(self, edge: VadEdge, now: int) -> None:
        start_sample, start_ns = self._utt_start or (edge.sample, now)
        utterance = Utterance(start_sample, edge.sample, start_ns, now)
        self.utterances.append(utterance)
        self._on_user_turn(utterance, now)

    def _on_user_turn(self, utterance: Utterance | None, now: int, transcript: str | None = None) -> None:
        reply = self.current_reply
        if self._barge_timer is not None and reply is not None:
            self._barge_timer.cancel()  # the turn ended before the delayed barge-in: decide now
            self._delayed_interrupt(reply)
        if utterance is None and reply is not None and reply.playing_at(now, self._extra_ns()):
            self._interrupt(reply, None)  # a typed user message interrupts like speech does
        if self._pending_reply is not None:
            self._pending_reply.cancel()
        loop = asyncio.get_running_loop()
        self._pending_reply = loop.call_later(
            self._config.think_time_ms / 1000, self._think_done, utterance, transcript)

    def _think_done(self, utterance: Utterance | None, transcript: str | None) -> None:
        self._pending_reply = None
        self._utt_start = None
        if self._end_task is None:
            if self.voice is not None:
                self._start_brain_reply(utterance, transcript)
            else:
                self._start_reply(self._config.reply_mode, utterance, transcript=transcript)

    def _start_brain_reply(self, utterance: Utterance | None, typed: str | None) -> Reply:
        assert self.voice is not None
        previous = self.current_reply
        if previous is not None and not previous.done and self._reply_task is not None:
            self._reply_task.cancel()
        text = self.voice.transcript_for(utterance, typed)
        event_id = self._next_id
        self._next_id += 1
        reply = Reply(event_id, "brain", np.zeros(0, np.int16), self.output_format.rate, "", time.monotonic_ns(),
                      utterance, final=False)
        self.replies.append(reply)
        self._enqueue(wire.user_transcript(text, event_id), "user_transcript", event_id)
        self._reply_task = self.voice.user_turn(reply, text)
        self._notify()
        return reply

    def _extra_ns(self) -> int:
        return int(self._config.barge_in_extra_ms * 1_000_000)

    def _start_reply(self, mode: ReplyMode, utterance: Utterance | None, *, ms: float | None = None,
                     samples: Int16Array | None = None, transcript: str | None = None,
                     text: str | None = None) -> Reply:
        previous = self.current_reply
        if previous is not None and not previous.done and self._reply_task is not None:
            self._reply_task.cancel()  # a hook started a new reply over a running one: stop the old one
        rate = self.output_format.rate
        config = self._config
        if samples is None:
            samples, mode = self._reply_audio(mode, utterance, ms)
        event_id = self._next_id
        self._next_id += 1
        duration_ms = samples.size * 1000 // rate
        if text is None:
            text = f"[{mode} reply, {duration_ms} ms]"
            if self.contextual_updates:  # INFERRED stand-in for an LLM that read its context
                known = " ".join(self.contextual_updates[-1].text.split())
                text += f" (in context: …{known[-160:]})"
        reply = Reply(event_id, mode, samples.astype(np.int16, copy=False), rate, text, time.monotonic_ns(),
                      utterance)
        if transcript is None and utterance is not None:
            heard = (utterance.end_sample - utterance.start_sample) * 1000 // self.input_format.rate
            transcript = f"[{heard} ms of user speech]"
        self.replies.append(reply)
        self._reply_task = asyncio.create_task(self._play(reply, transcript, config.chunk_ms / 1000,
                                                          config.burst_factor))
        self._notify()
        return reply

    def _reply_audio(self, mode: ReplyMode, utterance: Utterance | None, ms: float | None
                     ) -> tuple[Int16Array, ReplyMode]:
        config, rate = self._config, self.output_format.rate
        if mode == "echo" and utterance is not None and utterance.end_sample > utterance.start_sample:
            return resample(self.utterance_audio(utterance), self.input_format.rate, rate), "echo"
        if mode == "speech":
            return speech_like(rate, ms or config.speech_ms, config.reply_level_dbfs, config.seed), "speech"
        return tone(rate, ms or config.tone_ms, config.tone_hz, config.reply_level_dbfs), "tone"

    async def _play(self, reply: Reply, transcript: str | None, chunk_s: float, burst: float) -> None:
        if transcript is not None:
            self._enqueue(wire.user_transcript(transcript, reply.event_id), "user_transcript", reply.event_id)
        self._enqueue(wire.agent_response(reply.text, reply.event_id), "agent_response", reply.event_id)
        step = max(1, round(reply.rate * chunk_s))
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for k, position in enumerate(range(0, reply.samples.size, step)):
            delay = t0 + k * chunk_s / burst - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            part = reply.samples[position:position + step]
            self._enqueue(wire.audio(self.output_format.encode(part), reply.event_id), "audio", reply.event_id,
                          reply=reply, samples=int(part.size))

    def _interrupt(self, reply: Reply, reason: str | None) -> None:
        config = self._config
        reply.interrupted_ns = time.monotonic_ns()
        if self._reply_task is not None:
            self._reply_task.cancel()
        if config.interrupt_id_mode == "reply":
            interruption_id = reply.event_id
        else:
            # The id of the turn that interrupted: above the reply's, so its late chunks fall under a "<" gate.
            interruption_id = self._next_id
            if not config.reply_shares_interrupt_id:
                self._next_id += 1
        reply.interruption_id = interruption_id
        log.info("conversation %s: barge-in, interrupting reply %d with id %d", self.conversation_id,
                 reply.event_id, interruption_id)
        self._enqueue(wire.interruption(interruption_id, reason), "interruption", interruption_id)
        step = max(1, round(reply.rate * config.chunk_ms / 1000))
        position = reply.samples_sent
        for _ in range(config.stale_chunks_after_interrupt):
            part = reply.samples[position:position + step]
            if part.size == 0:
                break
            self._enqueue(wire.audio(self.output_format.encode(part), reply.event_id), "audio", reply.event_id,
                          reply=reply, samples=int(part.size), stale=True)
            position += part.size
        heard = reply.samples_sent / max(1, reply.samples.size)
        corrected = reply.text[:int(len(reply.text) * heard)]
        self._enqueue(wire.agent_response_correction(reply.text, corrected, reply.event_id),
                      "agent_response_correction", reply.event_id)
        self._notify()

    # ------------------------------------------------------------------ pings and timeouts

    def _on_pong(self, event_id: int, now: int) -> None:
        if self.faults.ignore_pongs:
            return
        for ping in reversed(self.pings):
            if ping.event_id == event_id and ping.pong_ns is None:
                ping.pong_ns = now
                self._last_rtt_ms = round((now - ping.sent_ns) / 1e6)
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
            elif self._vad.in_speech and now - self._last_audio_ns > config.vad_hangover_ms * 1e6:
                # The client stopped sending mid-utterance: end the turn on wall-clock time instead.
                edge = self._vad.force_end()
                if edge is not None:
                    self._on_speech_end(edge, now)

    # ------------------------------------------------------------------ sending

    def _enqueue(self, text: str | bytes, type_: str, event_id: int | None = None, *, reply: Reply | None = None,
                 samples: int = 0, stale: bool = False, ping: PingRecord | None = None) -> None:
        self._out.put_nowait(Out(text, type_, event_id, reply, samples, stale, ping,
                                  asyncio.get_running_loop().time()))

    def _discarded(self, item: Out) -> bool:
        reply = item.reply
        return reply is not None and reply.interrupted_ns is not None and not item.stale

    async def _sender(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            item = await self._out.get()
            try:
                if self._discarded(item):
                    continue
                jitter = self.faults.jitter_ms
                # Jitter is measured from when the message was queued, so it delays without piling up.
                target = max(self._stall_until, item.enqueued + (self._rng.uniform(0, jitter) / 1000 if jitter else 0))
                while (delay := max(target, self._stall_until) - loop.time()) > 0:
                    await asyncio.sleep(delay)
                if self._discarded(item) or self._ws.closed:
                    continue
                if isinstance(item.text, bytes):
                    await self._ws.send_bytes(item.text)
                else:
                    await self._ws.send_str(item.text)
                now = time.monotonic_ns()
                self._after_send(item, now)
            except (ConnectionError, RuntimeError) as exc:
                # aiohttp raises these once the transport is gone; the receive loop sees the close.
                log.debug("conversation %s: send failed: %s", self.conversation_id, exc)
            finally:
                self._out.task_done()

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
        if self._pending_reply is not None:
            self._pending_reply.cancel()
        if self._reply_task is not None:
            self._reply_task.cancel()
        if error_type is not None:
            self._enqueue(wire.error(code, error_type, message), "error")
        with contextlib.suppress(TimeoutError):  # a stalled sender must not keep the socket open forever
            async with asyncio.timeout(2.0):
                await self._out.join()
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self._ws.close(code=code, message=message.encode()[:120])
        self._notify()
