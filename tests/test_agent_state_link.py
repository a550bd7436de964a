"""The asyncio side of the agent state: attribute writes never block the caller, only the latest value of an
attribute is sent, and a failing write is counted and survived.

The room is a stand-in for ``rtc.Room`` (the only thing the link touches is ``local_participant``), so the
test controls when the server "answers" a ``set_attributes`` call.
"""

from __future__ import annotations

import asyncio
import logging
from typing import cast

import pytest
from livekit import rtc

from core.clock import FakeClock
from core.formats import parse_format
from transport import engine_protocol as ep
from transport.agent_state_link import AgentStateLink
from transport.events import UserTranscript


class Participant:
    identity = "agent"

    def __init__(self) -> None:
        self.track_publications: dict[str, object] = {}
        self.calls: list[dict[str, str]] = []
        self.answer: asyncio.Queue[BaseException | None] = asyncio.Queue()

    async def set_attributes(self, attributes: dict[str, str]) -> None:
        self.calls.append(dict(attributes))
        error = await self.answer.get()
        if error is not None:
            raise error


class Room:
    def __init__(self) -> None:
        self.local_participant = Participant()


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def metadata(conversation_id: str) -> ep.ConversationMetadata:
    return ep.ConversationMetadata(conversation_id, parse_format("pcm_16000"), parse_format("pcm_16000"))


async def test_only_the_latest_state_waits_while_a_write_is_in_flight() -> None:
    room = Room()
    link = AgentStateLink(cast(rtc.Room, room), FakeClock(1_000))
    link.start(None)
    await settle()
    assert room.local_participant.calls == [{"lk.agent.state": "initializing"}]  # in flight, unanswered
    link.engine_event(metadata("c1"), 2_000)  # listening ...
    link.event(UserTranscript(3_000, "hello", 1, True))  # ... replaced by thinking before it could go
    await settle()
    assert len(room.local_participant.calls) == 1 and link.coalesced == 1
    room.local_participant.answer.put_nowait(None)
    await settle()
    assert room.local_participant.calls[1] == {"lk.agent.state": "thinking"}
    room.local_participant.answer.put_nowait(None)
    await link.close()


async def test_a_failing_write_is_counted_and_the_next_value_still_goes(caplog: pytest.LogCaptureFixture) -> None:
    room = Room()
    link = AgentStateLink(cast(rtc.Room, room), FakeClock(1_000))
    link.start(None)
    await settle()
    with caplog.at_level(logging.WARNING, logger="transport.agent_state_link"):
        room.local_participant.answer.put_nowait(RuntimeError("update own metadata not allowed"))
        await settle()
    assert link.failed == 1 and "update own metadata not allowed" in caplog.text
    link.engine_event(metadata("c1"), 2_000)
    await settle()
    assert room.local_participant.calls[-1] == {"lk.agent.state": "listening"}
    room.local_participant.answer.put_nowait(None)
    await settle()
    assert link.calls == 2 and link.failed == 1
    await link.close()
