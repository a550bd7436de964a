"""Publish the conversation's transcripts into the room the way LiveKit clients expect them.

LiveKit's convention (client-sdk-js ``TextStreamReader`` consumers, the Agents framework: livekit/agents
``types.py`` names the attributes): a text stream on topic ``lk.transcription`` whose sender is the speaker,
with attributes ``lk.segment_id`` (one id per utterance, repeated for interim updates),
``lk.transcription_final`` ("true"/"false") and ``lk.transcribed_track_id`` when the track is known (for the
agent, its own published voice track, as the Agents framework sets it; for a caller, the microphone track the
bridge heard). Each stream carries one whole version
of a segment's text. Any LiveKit client can render captions from it.

Segment ids carry the conversation's id (``user-<conversation>-<event_id>``; the agent's come from
:mod:`transport.agent_state`), so an engine reconnect, whose event ids start again, never reuses one. The
agent's text is published as it is *played* (:class:`~transport.agent_state.AgentStateMachine` decides when
and how much); user transcripts as the engine sends them.

Publishing awaits the data channel, so it runs in one background task fed by a bounded queue: a transcript
never delays audio, and a stalled data channel drops the oldest captions (counted) instead of growing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from livekit import rtc

__all__ = ["TOPIC", "TranscriptPublisher"]

log = logging.getLogger(__name__)

TOPIC = "lk.transcription"
_QUEUE = 64


@dataclass(frozen=True, slots=True)
class _Caption:
    sender: str
    text: str
    segment_id: str
    final: bool
    track_id: str | None = None


class TranscriptPublisher:
    def __init__(self, room: rtc.Room) -> None:
        self._room = room
        self._queue: asyncio.Queue[_Caption] = asyncio.Queue(_QUEUE)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="bridge:transcripts")
        self.published = 0
        self.dropped = 0
        self.failed = 0
        self.conversation = "0"  # the open conversation's id, part of every user segment id

    def user(self, identity: str, text: str, *, event_id: int, final: bool, track_id: str | None = None) -> None:
        self._put(_Caption(identity, text, f"user-{self.conversation}-{event_id}", final, track_id))

    def agent(self, identity: str, text: str, *, segment_id: str, final: bool, track_id: str | None) -> None:
        self._put(_Caption(identity, text, segment_id, final, track_id))

    def _put(self, caption: _Caption) -> None:
        if self._queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self._queue.get_nowait()
                self.dropped += 1
        self._queue.put_nowait(caption)

    async def _run(self) -> None:
        participant = self._room.local_participant
        while True:
            caption = await self._queue.get()
            attributes = {"lk.segment_id": caption.segment_id,
                          "lk.transcription_final": "true" if caption.final else "false"}
            if caption.track_id:
                attributes["lk.transcribed_track_id"] = caption.track_id
            try:
                writer = await participant.stream_text(topic=TOPIC, attributes=attributes,
                                                       sender_identity=caption.sender or None)
                await writer.write(caption.text)
                await writer.aclose()
                self.published += 1
            except Exception as exc:  # a closed room or data channel; captions are best effort
                self.failed += 1
                log.debug("could not publish a transcript: %s", exc)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
