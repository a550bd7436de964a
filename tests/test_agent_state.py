"""The agent-state machine with literal times: state changes, turn figures and captions tied to playout."""

from __future__ import annotations

import numpy as np

from core.clock import MS, SECOND
from core.signals import tone
from transport.agent_state import (
    AgentState,
    AgentStateMachine,
    Caption,
    Output,
    StateChanged,
    TurnFigures,
    cut_at_word,
)

FRAME = 480  # 10 ms at 48 kHz
VOICE = tone(220.0, 0.01, amplitude=0.3)  # about -13 dBFS
HUSH = np.zeros(FRAME, np.int16)
L, T, S, INIT = AgentState.LISTENING, AgentState.THINKING, AgentState.SPEAKING, AgentState.INITIALIZING


def states(outputs: list[Output]) -> list[AgentState]:
    return [o.state for o in outputs if isinstance(o, StateChanged)]


def captions(outputs: list[Output]) -> list[tuple[str, str, bool]]:
    return [(o.segment_id, o.text, o.final) for o in outputs if isinstance(o, Caption)]


def figures(outputs: list[Output]) -> list[TurnFigures]:
    return [o for o in outputs if isinstance(o, TurnFigures)]


def opened(conversation: str = "c1") -> AgentStateMachine:
    m = AgentStateMachine()
    assert m.state is INIT
    assert states(m.conversation_opened(conversation, 1 * SECOND)) == [L]
    return m


def caller_speaks_until(m: AgentStateMachine, start_ns: int, stop_ns: int, then_quiet_ns: int) -> None:
    """Voiced 10 ms frames arriving until ``stop_ns``, then silent ones until ``then_quiet_ns``."""
    t = start_ns
    while t <= then_quiet_ns:
        m.caller_frame(VOICE if t <= stop_ns else HUSH, t)
        t += 10 * MS


def test_a_turn_goes_listening_thinking_speaking_listening_with_its_reply_latency() -> None:
    m = opened()
    caller_speaks_until(m, 2 * SECOND, 3 * SECOND, 3 * SECOND + 500 * MS)  # the engine's hangover follows
    assert states(m.user_turn_ended(3 * SECOND + 600 * MS)) == [T]
    m.agent_audio(7, 48_000)
    assert m.agent_text(7, "Hello there.", 3 * SECOND + 700 * MS) == []  # received, not yet heard
    out = m.voice_played(FRAME, 3 * SECOND + 800 * MS)
    assert states(out) == [S]
    (fig,) = figures(out)
    assert fig.reply_ms == 800.0 and fig.turn == 1  # from the last voiced frame (3.0 s) to the first played
    assert captions(out) == [("agent-c1-7", "Hello there.", False)]
    assert m.voice_played(FRAME, 3 * SECOND + 810 * MS) == []  # nothing new to say while it plays
    out = m.voice_ended(4 * SECOND + 800 * MS)
    assert states(out) == [L]
    assert captions(out) == [("agent-c1-7", "Hello there.", True)]
    assert m.voice_ended(5 * SECOND) == []


def test_quiet_caller_frames_are_not_the_end_of_speech() -> None:
    m = opened()
    m.caller_frame(VOICE, 2 * SECOND)
    m.caller_frame((VOICE // 200).astype(np.int16), 2 * SECOND + 10 * MS)  # -59 dBFS: below -45
    m.user_turn_ended(2 * SECOND + 400 * MS)
    m.agent_audio(1, FRAME)
    (fig,) = figures(m.voice_played(FRAME, 2 * SECOND + 500 * MS))
    assert fig.reply_ms == 500.0


def test_a_caption_grows_with_the_text_that_arrives_while_it_plays() -> None:
    m = opened()
    m.user_turn_ended(2 * SECOND)
    m.agent_text(3, "One phrase.", 2 * SECOND)
    m.agent_audio(3, 48_000)
    assert captions(m.voice_played(FRAME, 2 * SECOND + 100 * MS)) == [("agent-c1-3", "One phrase.", False)]
    assert captions(m.agent_text(3, "And another.", 2 * SECOND + 500 * MS)) == [
        ("agent-c1-3", "One phrase. And another.", False)]
    m.agent_audio(3, 48_000)
    assert captions(m.voice_ended(4 * SECOND)) == [("agent-c1-3", "One phrase. And another.", True)]


def test_a_barge_in_cuts_the_caption_to_what_was_played_and_reports_the_silence() -> None:
    m = opened()
    m.user_turn_ended(2 * SECOND)
    text = "The first words are heard but the rest is not."
    m.agent_text(4, text, 2 * SECOND)
    m.agent_audio(4, 48_000)  # one second received
    m.voice_played(12_000, 2 * SECOND + 100 * MS)  # 250 ms of it played
    m.talk_over(2 * SECOND + 200 * MS)  # the ducker's onset
    m.talk_over(2 * SECOND + 300 * MS)  # a later one in the same reply does not move it
    m.voice_played(12_000, 2 * SECOND + 350 * MS)  # half the reply played
    out = m.interrupted(5, 2 * SECOND + 400 * MS, 2 * SECOND + 401 * MS)
    assert states(out) == [L]
    # Half of 47 characters is 23, inside "heard": cut back to the word boundary before it.
    assert captions(out) == [("agent-c1-4", "The first words are", True)]
    (fig,) = figures(out)
    assert fig.interruption_ms == 1.0 and fig.onset_to_silence_ms == 201.0 and fig.played_ms == 500.0
    assert fig.as_dict() == {"turn": 1, "interruption_ms": 1.0, "onset_to_silence_ms": 201.0, "played_ms": 500.0}
    # Late text of the cut reply (a correction is not used; a late phrase) changes nothing heard.
    assert m.agent_text(4, "late", 2 * SECOND + 500 * MS) == []


def test_the_turn_figures_keep_the_reply_latency_when_the_reply_is_interrupted() -> None:
    m = opened()
    m.caller_frame(VOICE, 2 * SECOND)
    m.user_turn_ended(2 * SECOND + 500 * MS)
    m.agent_audio(1, 48_000)
    m.voice_played(FRAME, 3 * SECOND)
    (fig,) = figures(m.interrupted(2, 3 * SECOND + 100 * MS, 3 * SECOND + 100 * MS))
    assert fig.as_dict() == {"turn": 1, "reply_ms": 1000.0, "interruption_ms": 0.0, "played_ms": 10.0}


def test_an_interruption_of_an_older_event_leaves_the_newer_reply_speaking() -> None:
    m = opened()
    m.agent_audio(2, FRAME)  # a tool-call sound
    m.agent_text(2, "Hold on.", 0)
    m.voice_played(FRAME, 2 * SECOND)
    m.agent_audio(3, 48_000)
    m.agent_text(3, "Here is the answer.", 2 * SECOND)
    out = m.voice_played(FRAME, 2 * SECOND + 10 * MS)
    assert captions(out) == [("agent-c1-2", "Hold on.", True), ("agent-c1-3", "Here is the answer.", False)]
    out = m.interrupted(3, 2 * SECOND + 20 * MS, 2 * SECOND + 20 * MS)
    assert out == [] and m.state is S


def test_segment_ids_stay_unique_across_a_reconnect() -> None:
    m = opened("conv-a")
    m.agent_audio(1, 48_000)
    m.agent_text(1, "Before the drop of the line.", 0)
    m.voice_played(24_000, 2 * SECOND)
    out = m.conversation_lost(2 * SECOND + 600 * MS)
    assert states(out) == [INIT]
    assert captions(out) == [("agent-conv-a-1", "Before the", True)]  # half of 28 characters is inside "drop"
    assert states(m.conversation_opened("conv-b", 3 * SECOND)) == [L]
    m.agent_audio(1, 48_000)  # the new conversation's ids start again
    m.agent_text(1, "After.", 3 * SECOND)
    assert captions(m.voice_played(FRAME, 3 * SECOND + 100 * MS)) == [("agent-conv-b-1", "After.", False)]


def test_thinking_gives_up_after_the_timeout_without_a_reply() -> None:
    m = AgentStateMachine(thinking_timeout_ns=5 * SECOND)
    m.conversation_opened("c", 0)
    assert m.next_wakeup_ns() is None
    m.user_turn_ended(10 * SECOND)
    assert m.next_wakeup_ns() == 15 * SECOND
    assert m.timer(15 * SECOND - 1) == []
    assert states(m.timer(15 * SECOND)) == [L]
    assert m.next_wakeup_ns() is None


def test_no_thinking_without_a_conversation_or_while_speaking() -> None:
    m = AgentStateMachine()
    assert m.user_turn_ended(1 * SECOND) == []  # not open yet
    m.conversation_opened("c", 2 * SECOND)
    m.agent_audio(1, 48_000)
    m.voice_played(FRAME, 3 * SECOND)  # a greeting: no user turn, so no reply latency
    assert m.figures is None and m.state is S
    assert m.user_turn_ended(3 * SECOND + 100 * MS) == []


def test_a_reply_whose_voice_paused_long_enough_to_end_plays_on_under_the_same_segment() -> None:
    m = opened()
    m.agent_audio(5, FRAME)
    m.agent_text(5, "First phrase.", 0)
    m.voice_played(FRAME, 2 * SECOND)
    assert captions(m.voice_ended(2 * SECOND + 300 * MS)) == [("agent-c1-5", "First phrase.", True)]
    m.agent_audio(5, FRAME)
    out = m.agent_text(5, "Second phrase.", 3 * SECOND) + m.voice_played(FRAME, 3 * SECOND)
    assert states(out) == [S]
    assert captions(out) == [("agent-c1-5", "First phrase. Second phrase.", False)]


def test_cut_at_word() -> None:
    text = "alpha beta gamma"
    assert cut_at_word(text, 1.0) == text
    assert cut_at_word(text, 0.0) == ""
    assert cut_at_word(text, 5 / 16) == "alpha"  # the boundary itself
    assert cut_at_word(text, 8 / 16) == "alpha"  # inside "beta": not reached whole
    assert cut_at_word(text, 10 / 16) == "alpha beta"
    assert cut_at_word("word", 0.9) == ""


def test_a_voiced_frame_counts_for_one_turn_only() -> None:
    m = opened()
    m.caller_frame(VOICE, 2 * SECOND)
    m.user_turn_ended(2 * SECOND + 500 * MS)
    m.agent_audio(1, FRAME)
    assert figures(m.voice_played(FRAME, 3 * SECOND))[0].reply_ms == 1000.0
    m.voice_ended(3 * SECOND + 10 * MS)
    m.user_turn_ended(5 * SECOND)  # a typed message: nobody spoke since
    m.agent_audio(2, FRAME)
    assert figures(m.voice_played(FRAME, 6 * SECOND)) == []
