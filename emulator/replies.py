"""The agent's side of one emulated conversation: scripted and brain replies, their pacing, and barge-in.

A reply is ``user_transcript`` (when there was a user turn), ``agent_response``, then audio chunks paced
``burst_factor`` times faster than real time, all under one ``event_id``; ids grow per turn. An interruption
discards the reply's unsent chunks (the outbox skips them), sends ``interruption`` with the id the
configuration asks for (:class:`~emulator.config.EmulatorConfig` ``interrupt_id_mode``,
``reply_shares_interrupt_id``), optionally a few stale chunks of the interrupted reply, then
``agent_response_correction`` with the text cut where the audio was cut.

:class:`Replies` works through the conversation's public surface only (its records, formats, configuration
and ``send``/``send_audio``/``changed``); the socket, the turn-taking and the timeouts stay in
:mod:`emulator.conversation`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from emulator import tts, wire
from emulator.config import ReplyMode
from emulator.records import Reply, Utterance
from emulator.signals import resample, speech_like, tone

if TYPE_CHECKING:
    from emulator.conversation import Conversation

__all__ = ["Replies"]

log = logging.getLogger(__name__)

Int16Array = npt.NDArray[np.int16]


class Replies:
    """The replies of one :class:`~emulator.conversation.Conversation` and the task playing the current one."""

    def __init__(self, conversation: Conversation) -> None:
        self._conv = conversation
        self.next_id = 1  # the event id of the next turn
        self.task: asyncio.Task[None] | None = None  # playing (or preparing) the current reply

    def extra_ns(self) -> int:
        """How long after its last sample a reply still counts as playing at the client (barge-in)."""
        return int(self._conv.config.barge_in_extra_ms * 1_000_000)

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()

    def _take_id(self) -> int:
        event_id = self.next_id
        self.next_id += 1
        return event_id

    def _stop_previous(self) -> None:
        previous = self._conv.current_reply
        if previous is not None and not previous.done and self.task is not None:
            self.task.cancel()  # a new reply over a running one: stop the old one

    def start(self, mode: ReplyMode, utterance: Utterance | None, *, ms: float | None = None,
              samples: Int16Array | None = None, transcript: str | None = None, text: str | None = None) -> Reply:
        """A scripted reply (``samples`` at the output rate override ``mode``)."""
        conv = self._conv
        self._stop_previous()
        rate = conv.output_format.rate
        config = conv.config
        if samples is None:
            samples, mode = self._audio(mode, utterance, ms)
        event_id = self._take_id()
        duration_ms = samples.size * 1000 // rate
        if text is None:
            text = f"[{mode} reply, {duration_ms} ms]"
            if conv.contextual_updates:  # INFERRED stand-in for an LLM that read its context
                known = " ".join(conv.contextual_updates[-1].text.split())
                text += f" (in context: …{known[-160:]})"
        reply = Reply(event_id, mode, samples.astype(np.int16, copy=False), rate, text, time.monotonic_ns(),
                      utterance)
        if transcript is None and utterance is not None:
            heard = (utterance.end_sample - utterance.start_sample) * 1000 // conv.input_format.rate
            transcript = f"[{heard} ms of user speech]"
        conv.replies.append(reply)
        self.task = asyncio.create_task(self._play(reply, transcript, config.chunk_ms / 1000, config.burst_factor))
        conv.changed()
        return reply

    def start_brain(self, utterance: Utterance | None, typed: str | None) -> Reply:
        """A reply the brain server writes (:class:`~emulator.voice.BrainVoice` speaks it)."""
        conv = self._conv
        voice = conv.voice
        assert voice is not None
        self._stop_previous()
        text = voice.transcript_for(utterance, typed)
        event_id = self._take_id()
        reply = Reply(event_id, "brain", np.zeros(0, np.int16), conv.output_format.rate, "", time.monotonic_ns(),
                      utterance, final=False)
        conv.replies.append(reply)
        conv.send(wire.user_transcript(text, event_id), "user_transcript", event_id)
        self.task = voice.user_turn(reply, text)
        conv.changed()
        return reply

    def say_first(self, text: str) -> None:
        """Synthesize and say the first message, unless the caller got a turn in first."""
        self.task = asyncio.create_task(self._say_first(text), name=f"{self._conv.conversation_id}-first")

    async def _say_first(self, text: str) -> None:
        conv = self._conv
        config = conv.config
        samples = await tts.speech_for(text, conv.output_format.rate, voice=config.tts_voice,
                                       words_per_minute=config.tts_words_per_minute,
                                       level_dbfs=config.reply_level_dbfs, seed=config.seed)
        if not conv.ending and conv.current_reply is None:
            conv.first_message = text
            self.start("speech", None, samples=samples, transcript=None, text=text)

    def _audio(self, mode: ReplyMode, utterance: Utterance | None, ms: float | None) -> tuple[Int16Array, ReplyMode]:
        conv = self._conv
        config, rate = conv.config, conv.output_format.rate
        if mode == "echo" and utterance is not None and utterance.end_sample > utterance.start_sample:
            return resample(conv.utterance_audio(utterance), conv.input_format.rate, rate), "echo"
        if mode == "speech":
            return speech_like(rate, ms or config.speech_ms, config.reply_level_dbfs, config.seed), "speech"
        return tone(rate, ms or config.tone_ms, config.tone_hz, config.reply_level_dbfs), "tone"

    async def _play(self, reply: Reply, transcript: str | None, chunk_s: float, burst: float) -> None:
        conv = self._conv
        if transcript is not None:
            conv.send(wire.user_transcript(transcript, reply.event_id), "user_transcript", reply.event_id)
        conv.send(wire.agent_response(reply.text, reply.event_id), "agent_response", reply.event_id)
        step = max(1, round(reply.rate * chunk_s))
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for k, position in enumerate(range(0, reply.samples.size, step)):
            delay = t0 + k * chunk_s / burst - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            part = reply.samples[position:position + step]
            conv.send_audio(reply, conv.output_format.encode(part), int(part.size))

    def interrupt(self, reply: Reply, reason: str | None) -> None:
        conv = self._conv
        config = conv.config
        reply.interrupted_ns = time.monotonic_ns()
        self.cancel()
        if config.interrupt_id_mode == "reply":
            interruption_id = reply.event_id
        else:
            # The id of the turn that interrupted: above the reply's, so its late chunks fall under a "<" gate.
            interruption_id = self.next_id
            if not config.reply_shares_interrupt_id:
                self.next_id += 1
        reply.interruption_id = interruption_id
        log.info("conversation %s: barge-in, interrupting reply %d with id %d", conv.conversation_id,
                 reply.event_id, interruption_id)
        conv.send(wire.interruption(interruption_id, reason), "interruption", interruption_id)
        step = max(1, round(reply.rate * config.chunk_ms / 1000))
        position = reply.samples_sent
        for _ in range(config.stale_chunks_after_interrupt):
            part = reply.samples[position:position + step]
            if part.size == 0:
                break
            conv.send_audio(reply, conv.output_format.encode(part), int(part.size), stale=True)
            position += part.size
        heard = reply.samples_sent / max(1, reply.samples.size)
        corrected = reply.text[:int(len(reply.text) * heard)]
        conv.send(wire.agent_response_correction(reply.text, corrected, reply.event_id),
                  "agent_response_correction", reply.event_id)
        conv.changed()
