"""The asyncio side of the agent state: attribute writes never block the caller, only the latest value of an
attribute is sent, a failing write is counted and survived, and a write whose answer the SDK loses does not hold
back the next.

The room is a stand-in for ``rtc.Room`` (the link touches ``local_participant`` and the room's
``participant_attributes_changed`` event), so the test controls when the server "answers" a ``set_attributes``
call and when its update of our own participant arrives.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
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
        self.attributes: dict[str, str] = {}
        self.calls: list[dict[str, str]] = []
        self.answers: list[asyncio.Future[None]] = []  # one per call, in call order

    def answer(self, error: BaseException | None = None) -> None:
        """The server answers the oldest unanswered call."""
        future = next(f for f in self.answers if not f.done())
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)

    async def set_attributes(self, attributes: dict[str, str]) -> None:
        self.calls.append(dict(attributes))
        self.answers.append(answer := asyncio.get_running_loop().create_future())
        await answer


class Room:
    def __init__(self) -> None:
        self.local_participant = Participant()
        self.handlers: dict[str, list[Callable[..., None]]] = {}

    def on(self, event: str, handler: Callable[..., None]) -> None:
        self.handlers.setdefault(event, []).append(handler)

    def off(self, event: str, handler: Callable[..., None]) -> None:
        self.handlers[event].remove(handler)

    def server_update(self, participant: object, attributes: dict[str, str]) -> None:
        """The server's update of a participant, as the SDK emits it."""
        if participant is self.local_participant:
            self.local_participant.attributes.update(attributes)
        for handler in self.handlers.get("participant_attributes_changed", []):
            handler(dict(attributes), participant)


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
    room.local_participant.answer()
    await settle()
    assert room.local_participant.calls[1] == {"lk.agent.state": "thinking"}
    room.local_participant.answer()
    await link.close()


async def test_a_failing_write_is_counted_and_the_next_value_still_goes(caplog: pytest.LogCaptureFixture) -> None:
    room = Room()
    link = AgentStateLink(cast(rtc.Room, room), FakeClock(1_000))
    link.start(None)
    await settle()
    with caplog.at_level(logging.WARNING, logger="transport.agent_state_link"):
        room.local_participant.answer(RuntimeError("update own metadata not allowed"))
        await settle()
    assert link.failed == 1 and "update own metadata not allowed" in caplog.text
    link.engine_event(metadata("c1"), 2_000)
    await settle()
    assert room.local_participant.calls[-1] == {"lk.agent.state": "listening"}
    room.local_participant.answer()
    await settle()
    assert link.calls == 2 and link.failed == 1
    await link.close()


async def test_a_write_the_server_applied_is_over_when_its_update_comes_back_even_if_its_answer_is_lost() -> None:
    """The SDK can lose the server's answer to ``set_attributes`` (it registers for it after sending) and
    return 5 s later; the server's update of our own participant says the write was applied: the next state
    goes at once, so a short ``speaking`` is not replaced unsent."""
    room = Room()
    me = room.local_participant
    link = AgentStateLink(cast(rtc.Room, room), FakeClock(1_000))
    link.start(None)
    await settle()
    assert me.calls == [{"lk.agent.state": "initializing"}]
    room.server_update(object(), {"lk.agent.state": "initializing"})  # another participant's: not ours
    room.server_update(me, {"other": "x"})  # ours, without the value written
    link.engine_event(metadata("c1"), 2_000)  # listening, waiting behind the unanswered call
    await settle()
    assert len(me.calls) == 1
    room.server_update(me, {"lk.agent.state": "initializing"})  # applied; the answer never comes
    await settle()
    assert me.calls[1] == {"lk.agent.state": "listening"} and link.coalesced == 0
    room.server_update(me, {"lk.agent.state": "listening"})
    link.event(UserTranscript(3_000, "hello", 1, True))
    await settle()
    assert me.calls[2] == {"lk.agent.state": "thinking"}
    me.answers[2].set_result(None)  # the third call's answer, in time
    await settle()
    assert link.failed == 0 and link.calls == 3
    await link.close()  # the two calls whose answers were lost are not left behind
    assert [f.cancelled() for f in me.answers] == [True, True, False]
    assert room.handlers["participant_attributes_changed"] == []
