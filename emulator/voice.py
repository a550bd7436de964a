"""A conversation's brain-driven voice: user turns go to the brain, its streamed text comes back as speech.

One :class:`BrainVoice` per conversation (the asyncio shell; the rules live in the sans-I/O
:class:`~emulator.brain_turns.BrainTurns`) whose Speech Engine record has a brain ``ws_url``. At the end of
every user turn it adds the user's words to the history and sends the whole history to the brain with the
turn's ``event_id`` (the same id the reply's audio carries on the conversation socket, so ids only
increase). The brain's ``agent_response`` pieces for that id are cut into phrases
(:class:`~emulator.brain_protocol.Segmenter`), each phrase is synthesized with espeak-ng
(:mod:`emulator.tts`, a subprocess, off the event loop), announced with an ``agent_response`` event and
streamed as audio chunks ``burst_factor`` times faster than real time, like the emulator's other replies.
INFERRED: one ``agent_response`` per phrase, just before its audio (the docs say the event comes with the
response's first audio chunk; a streamed answer's whole text is not known by then).

Interruption: a barge-in interrupts the reply as for any other reply
(:meth:`emulator.replies.Replies.interrupt`): its unsent audio is discarded and its synthesis task cancelled.
The next turn's transcript carries a higher id, the SDK cancels the brain's old handler, and any text still
arriving for an older id is dropped here (``stale_responses``), so the engine never speaks words of a turn
that was talked over.

The history's agent entries hold what the caller actually heard: the whole reply, or for an interrupted one
the share of its text matching the share of its audio that had played, in real time, when it was cut off.
INFERRED: the real engine's history wording after an interruption is not documented.

No speech recognition: the emulator cannot know the words. The user's entry is the typed text of a
``user_message``, else what :attr:`Emulator.transcriber` returns (a test or the demo that knows what was
said), else an honest placeholder, ``[speech 1.2 s]``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

import numpy as np

from emulator import brain_protocol as bp
from emulator import tts, wire
from emulator.brain import BrainLink
from emulator.brain_turns import BrainTurns, heard_text
from emulator.records import Reply, Utterance
from emulator.signals import speech_like

if TYPE_CHECKING:
    from emulator.conversation import Conversation

__all__ = ["BrainVoice", "placeholder_transcript"]

log = logging.getLogger(__name__)


def placeholder_transcript(samples: int, rate: int) -> str:
    return f"[speech {samples / rate:.1f} s]"


class BrainVoice:
    """The asyncio shell around :class:`~emulator.brain_turns.BrainTurns`: the brain link, the response
    deadline timer, and one speaking task per turn fed through a queue of phrases."""

    def __init__(self, conversation: Conversation, url: str, headers: dict[str, object], api_key: str) -> None:
        config = conversation.config
        self._conversation = conversation
        self.turns = BrainTurns()
        self._queue: asyncio.Queue[str | None] | None = None
        self._timeout: asyncio.TimerHandle | None = None
        self._last_reply: Reply | None = None
        self.link = BrainLink(url, api_key=api_key, conversation_id=conversation.conversation_id,
                              headers=headers, on_response=self._on_response, on_lost=self._on_lost,
                              connect_timeout_s=config.brain_connect_timeout_s,
                              ping_interval_s=config.brain_ping_interval_s,
                              pong_timeout_s=config.brain_pong_timeout_s)

    @property
    def history(self) -> list[tuple[bp.Role, str]]:
        return self.turns.history

    @property
    def stale_responses(self) -> int:
        return self.turns.stale_responses

    @property
    def given_up(self) -> list[int]:
        return self.turns.given_up

    async def open(self) -> None:
        try:
            await self.link.open()
        except ConnectionError as exc:
            log.warning("conversation %s: %s", self._conversation.conversation_id, exc)
            self._conversation.end(1002, "cascade_brain_error", str(exc))
        self._conversation.changed()

    async def close(self) -> None:
        if self._timeout is not None:
            self._timeout.cancel()
        await self.link.close()

    def transcript_for(self, utterance: Utterance | None, typed: str | None) -> str:
        if typed is not None:
            return typed
        if utterance is None:
            return ""
        conversation = self._conversation
        samples = conversation.utterance_audio(utterance)
        rate = conversation.input_format.rate
        transcriber = conversation.transcriber
        heard = transcriber(samples, rate) if transcriber is not None else None
        return heard if heard is not None else placeholder_transcript(samples.size, rate)

    def user_turn(self, reply: Reply, transcript: str) -> asyncio.Task[None]:
        """Send the history for ``reply``'s turn; returns the task that will speak the answer."""
        history = self.turns.begin(reply.event_id, transcript, self._heard_of_last(time.monotonic_ns()))
        self._last_reply = reply
        if self._queue is not None:
            self._queue.put_nowait(None)  # an overtaken turn's speaking task ends
        self._queue = asyncio.Queue()
        self.link.send_transcript(history, reply.event_id)
        if self._timeout is not None:
            self._timeout.cancel()
        timeout_s = self._conversation.config.brain_response_timeout_s
        if timeout_s:
            self._timeout = asyncio.get_running_loop().call_later(timeout_s, self._deadline, reply.event_id)
        return asyncio.create_task(self._speak(reply, self._queue), name=f"brain-reply-{reply.event_id}")

    def _heard_of_last(self, now_ns: int) -> str | None:
        reply = self._last_reply
        if reply is None or not reply.phrases:
            return None
        text = " ".join(reply.phrases)
        if reply.interrupted_ns is None and reply.end_ns is not None:
            return text
        cut_ns = reply.interrupted_ns or now_ns  # interrupted, or overtaken by the turn starting now
        return heard_text(text, cut_ns - reply.start_ns if reply.start_ns is not None else 0, reply.duration_ns)

    def _on_response(self, response: bp.AgentResponse) -> None:
        reply = self._last_reply
        if reply is not None and reply.interrupted_ns is not None:
            self.turns.cut(reply.event_id)
        phrases = self.turns.response(response)
        if phrases is None or self._queue is None:
            return
        if self._timeout is not None:
            self._timeout.cancel()
            self._timeout = None
        for phrase in phrases.phrases:
            self._queue.put_nowait(phrase)
        if phrases.final:
            self._queue.put_nowait(None)
            self._queue = None

    def _deadline(self, event_id: int) -> None:
        self._timeout = None
        if self.turns.deadline(event_id) and self._queue is not None:
            log.warning("conversation %s: no brain response for turn %d within %s s; nothing said",
                        self._conversation.conversation_id, event_id,
                        self._conversation.config.brain_response_timeout_s)
            self._queue.put_nowait(None)
            self._queue = None

    def _on_lost(self, reason: str) -> None:
        self._conversation.end(1002, "cascade_brain_error", reason)

    async def _speak(self, reply: Reply, queue: asyncio.Queue[str | None]) -> None:
        conversation, config = self._conversation, self._conversation.config
        fmt, rate = conversation.output_format, conversation.output_format.rate
        step = max(1, round(rate * config.chunk_ms / 1000))
        loop = asyncio.get_running_loop()
        anchor_t, anchor_pos = loop.time(), 0
        while (phrase := await queue.get()) is not None:
            try:
                samples = await tts.synthesize(phrase, rate, voice=config.tts_voice,
                                               words_per_minute=config.tts_words_per_minute)
            except tts.TtsUnavailable as exc:
                log.warning("conversation %s: %s; speaking a speech-like stand-in instead",
                            conversation.conversation_id, exc)
                samples = speech_like(rate, 70.0 * len(phrase), config.reply_level_dbfs, config.seed)
            reply.phrases.append(phrase)
            reply.text = " ".join(reply.phrases)
            conversation.send(wire.agent_response(phrase, reply.event_id), "agent_response", reply.event_id)
            start = reply.samples.size
            reply.samples = np.concatenate([reply.samples, samples.astype(np.int16, copy=False)])
            if loop.time() > anchor_t + (start - anchor_pos) / (rate * config.burst_factor):
                anchor_t, anchor_pos = loop.time(), start  # synthesis took longer than the audio queued so far
            for position in range(start, reply.samples.size, step):
                delay = anchor_t + (position - anchor_pos) / (rate * config.burst_factor) - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                part = reply.samples[position:position + step]
                conversation.send_audio(reply, fmt.encode(part), int(part.size))
        reply.final = True
        if reply.samples_sent >= reply.samples.size and reply.end_ns is None:
            reply.end_ns = time.monotonic_ns()
        conversation.changed()
