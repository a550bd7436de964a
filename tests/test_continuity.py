"""Continuity across engine reconnects, the pure part: the bounded transcript, reconnect inits, the greeting gate."""

from __future__ import annotations

from transport import engine_protocol as ep
from transport.continuity import Continuity
from transport.engine_protocol import InitiationData

PLAIN = InitiationData(dynamic_variables={"name": "Ada"})
WITH_FIRST = InitiationData(overrides={"agent": {"first_message": "Hi Ada", "language": "en"}})


def talk(c: Continuity) -> None:
    for event in (ep.UserTranscript("Where is my order?", 1), ep.AgentResponse("It shipped", 2),
                  ep.AgentResponse("today.", 2), ep.UserTranscript("Thanks.", 3)):
        assert not c.drop(event)


def test_the_transcript_is_handed_to_later_conversations_only() -> None:
    c = Continuity(PLAIN)
    talk(c)
    assert c.entries == [("user", "Where is my order?"), ("agent", "It shipped today."), ("user", "Thanks.")]
    assert c.handover(1) is None  # the first conversation has nothing to continue
    text = c.handover(2)
    assert text is not None and text.endswith("User: Where is my order?\nAgent: It shipped today.\nUser: Thanks.")
    assert "do not greet again" in text and c.handovers == 1


def test_a_correction_replaces_what_was_not_heard() -> None:
    c = Continuity(PLAIN)
    c.drop(ep.AgentResponse("The plan costs ten euros a month and", 4))
    c.drop(ep.AgentResponseCorrection("The plan costs ten euros a month and", "The plan costs", 4))
    c.drop(ep.AgentResponse("Something else", 6))
    c.drop(ep.AgentResponseCorrection("Something else", "", 6))  # cut before a word was heard
    assert c.entries == [("agent", "The plan costs")]


def test_the_transcript_is_bounded_oldest_first() -> None:
    c = Continuity(PLAIN, max_chars=40)
    for i in range(10):
        c.drop(ep.UserTranscript(f"line number {i}", i))  # 13 characters each
    assert c.entries == [("user", "line number 7"), ("user", "line number 8"), ("user", "line number 9")]
    assert c.dropped_entries == 7
    c.drop(ep.AgentResponse("x" * 100, 20))  # one entry over the limit keeps its tail, alone
    assert c.entries == [("agent", "x" * 40)]


def test_with_the_first_message_override_reconnects_ask_for_no_greeting() -> None:
    c = Continuity(WITH_FIRST)
    assert c.uses_override
    assert c.init_for(0) is WITH_FIRST
    later = c.init_for(1)
    assert later.overrides == {"agent": {"first_message": "", "language": "en"}}
    assert WITH_FIRST.overrides == {"agent": {"first_message": "Hi Ada", "language": "en"}}  # not mutated
    talk(c)
    c.handover(2)
    assert not c.drop(ep.AgentAudio(b"\0\0", 1))  # nothing to drop: the engine was told not to greet


def test_without_the_override_a_reconnected_greeting_is_dropped_until_the_user_speaks() -> None:
    c = Continuity(PLAIN)
    assert not c.uses_override and c.init_for(3) is PLAIN
    assert not c.drop(ep.AgentResponse("Hello! How can I help?", 1))  # the first conversation's greeting plays
    talk(c)
    c.handover(2)
    greeting = [ep.AgentResponse("Hello! How can I help?", 1), ep.AgentAudio(b"\0\0", 1),
                ep.AgentChatResponsePart("Hello", "delta", 1), ep.AgentResponseCorrection("Hello!", "Hel", 1)]
    assert all(c.drop(event) for event in greeting) and c.greeting_events_dropped == 4
    assert not c.drop(ep.Interruption(2)) and not c.drop(ep.Ping(1))
    assert not c.drop(ep.TentativeUserTranscript("and", 2))  # the caller's turn opens the gate
    assert not c.drop(ep.AgentAudio(b"\0\0", 1))
    assert ("agent", "Hello! How can I help?") not in c.entries[1:]  # the dropped greeting is not transcript


def test_a_typed_message_opens_the_gate_too() -> None:
    c = Continuity(PLAIN)
    talk(c)
    c.handover(2)
    c.user_message("Are you still there?")
    assert not c.drop(ep.AgentResponse("Yes.", 2))
    assert c.entries[-2:] == [("user", "Are you still there?"), ("agent", "Yes.")]


def test_zero_turns_it_off() -> None:
    c = Continuity(WITH_FIRST, max_chars=0)
    talk(c)
    assert c.entries == [] and c.handover(2) is None and c.init_for(1) is WITH_FIRST
    assert not c.drop(ep.AgentAudio(b"\0\0", 1))


def test_only_the_greeting_is_dropped_not_a_later_unprompted_response() -> None:
    c = Continuity(PLAIN)
    talk(c)
    c.handover(2)
    assert c.drop(ep.AgentResponse("Hello again!", 1)) and c.drop(ep.AgentAudio(b"\0\0", 1))
    # Seconds later the agent re-engages a silent caller: a new response id, which the caller must hear.
    assert not c.drop(ep.AgentResponse("Are you still there?", 2)) and not c.drop(ep.AgentAudio(b"\0\0", 2))
    assert c.entries[-1] == ("agent", "Are you still there?") and c.greeting_events_dropped == 2
