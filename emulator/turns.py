"""The user's side of one emulated conversation: turns found by an energy VAD, the think time, and barge-in.

- ``user_audio_chunk`` samples go to the VAD. When the user stops, after ``think_time_ms`` the agent replies
  (scripted, or the brain's when the agent record names a brain server). Speech that starts again within the
  think time continues the same turn: nothing was said yet.
- Barge-in: speech that starts while a reply is still playing *at the client* (within the reply's real-time
  duration since its first chunk went out, plus ``barge_in_extra_ms``) interrupts it, at once or, with
  ``barge_in_delay_ms``, later if that reply is still playing then (or when the user's turn ends first).
  A typed ``user_message`` interrupts like speech does.
- A client that stops sending mid-utterance has its turn ended on wall-clock time (:meth:`Turns.check_stalled`).

:class:`Turns` works through the conversation's public surface and its :class:`~emulator.replies.Replies`.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from emulator.records import Reply, Utterance
from emulator.replies import Replies
from emulator.vad import EnergyVad, VadEdge

if TYPE_CHECKING:
    from emulator.conversation import Conversation

__all__ = ["Turns"]


class Turns:
    """Turn-taking for one :class:`~emulator.conversation.Conversation`."""

    def __init__(self, conversation: Conversation, replies: Replies) -> None:
        self._conv = conversation
        self._replies = replies
        config = conversation.config
        self._vad = EnergyVad(conversation.input_format.rate, threshold_dbfs=config.vad_threshold_dbfs,
                              frame_ms=config.vad_frame_ms, min_speech_ms=config.vad_min_speech_ms,
                              hangover_ms=config.vad_hangover_ms)
        self._last_audio_ns = conversation.started_ns
        self._utt_start: tuple[int, int] | None = None  # (sample, ns) of the turn being spoken
        self._pending_reply: asyncio.TimerHandle | None = None  # the think time running
        self._barge_timer: asyncio.TimerHandle | None = None  # barge_in_delay_ms pending

    def audio(self, samples: npt.NDArray[np.int16], now: int) -> None:
        """Decoded user samples (input rate) received at ``now``."""
        self._last_audio_ns = now
        for edge in self._vad.push(samples):
            if edge.kind == "start":
                self._speech_start(edge, now)
            else:
                self._speech_end(edge, now)

    def check_stalled(self, now: int) -> None:
        """The client stopped sending mid-utterance: end the turn on wall-clock time instead."""
        if self._vad.in_speech and now - self._last_audio_ns > self._conv.config.vad_hangover_ms * 1e6:
            edge = self._vad.force_end()
            if edge is not None:
                self._speech_end(edge, now)

    def cancel(self) -> None:
        """No reply for a turn that ended (the conversation is ending)."""
        if self._pending_reply is not None:
            self._pending_reply.cancel()

    def user_turn(self, utterance: Utterance | None, now: int, transcript: str | None = None) -> None:
        """A user turn ended: spoken (``utterance``) or typed (``utterance`` None, ``transcript`` its text)."""
        reply = self._conv.current_reply
        if self._barge_timer is not None and reply is not None:
            self._barge_timer.cancel()  # the turn ended before the delayed barge-in: decide now
            self._delayed_interrupt(reply)
        if utterance is None and reply is not None and reply.playing_at(now, self._replies.extra_ns()):
            self._replies.interrupt(reply, None)  # a typed user message interrupts like speech does
        if self._pending_reply is not None:
            self._pending_reply.cancel()
        loop = asyncio.get_running_loop()
        self._pending_reply = loop.call_later(
            self._conv.config.think_time_ms / 1000, self._think_done, utterance, transcript)

    def _speech_start(self, edge: VadEdge, now: int) -> None:
        if self._pending_reply is not None:
            # The user went on speaking within the think time: the turn continues, nothing was said yet.
            self._pending_reply.cancel()
            self._pending_reply = None
        else:
            self._utt_start = (edge.sample, now)
        config = self._conv.config
        reply = self._conv.current_reply
        if config.barge_in and reply is not None and reply.playing_at(now, self._replies.extra_ns()):
            delay = config.barge_in_delay_ms
            if delay > 0:
                # A slower engine's decision: interrupt later, if that reply is still playing then (or when the
                # user's turn ends first, see user_turn).
                if self._barge_timer is not None:
                    self._barge_timer.cancel()
                self._barge_timer = asyncio.get_running_loop().call_later(
                    delay / 1000, self._delayed_interrupt, reply)
            else:
                self._replies.interrupt(reply, None)

    def _delayed_interrupt(self, reply: Reply) -> None:
        self._barge_timer = None
        if (reply is self._conv.current_reply and not self._conv.ending
                and reply.playing_at(time.monotonic_ns(), self._replies.extra_ns())):
            self._replies.interrupt(reply, None)

    def _speech_end(self, edge: VadEdge, now: int) -> None:
        start_sample, start_ns = self._utt_start or (edge.sample, now)
        utterance = Utterance(start_sample, edge.sample, start_ns, now)
        self._conv.utterances.append(utterance)
        self.user_turn(utterance, now)

    def _think_done(self, utterance: Utterance | None, transcript: str | None) -> None:
        self._pending_reply = None
        self._utt_start = None
        if not self._conv.ending:
            if self._conv.voice is not None:
                self._replies.start_brain(utterance, transcript)
            else:
                self._replies.start(self._conv.config.reply_mode, utterance, transcript=transcript)
