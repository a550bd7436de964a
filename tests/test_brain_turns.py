"""BrainTurns, the sans-I/O core of the emulator's brain side: history, the live turn, phrases, deadlines."""

from __future__ import annotations

import pytest

from core.errors import ConfigError
from emulator.brain_protocol import AgentResponse
from emulator.brain_turns import BrainTurns, heard_text


def r(content: str, event_id: int, final: bool = False) -> AgentResponse:
    return AgentResponse(content, event_id, final)


def test_history_holds_user_words_and_what_was_heard_of_each_answer() -> None:
    turns = BrainTurns()
    assert turns.begin(1, "hi", None) == [("user", "hi")]
    assert turns.begin(3, "and then?", "Hello there.") == [("user", "hi"), ("agent", "Hello there."),
                                                           ("user", "and then?")]
    assert turns.begin(4, "hm", "") == [("user", "hi"), ("agent", "Hello there."), ("user", "and then?"),
                                        ("user", "hm")]  # nothing heard: no agent entry


def test_ids_must_increase() -> None:
    turns = BrainTurns()
    turns.begin(5, "a", None)
    with pytest.raises(ConfigError):
        turns.begin(5, "b", None)


def test_only_the_newest_turn_speaks_and_final_ends_it() -> None:
    turns = BrainTurns()
    turns.begin(1, "a", None)
    first = turns.response(r("One. Tw", 1))
    assert first is not None and first.phrases == ["One."] and not first.final
    turns.begin(2, "b", "One.")
    assert turns.response(r("o. Three.", 1)) is None  # the old turn's tail is stale
    done = turns.response(r("Fresh", 2, final=True))
    assert done is not None and done.phrases == ["Fresh"] and done.final
    assert turns.response(r("after final", 2)) is None
    assert turns.stale_responses == 2 and not turns.live


def test_a_cut_turn_takes_no_more_text() -> None:
    turns = BrainTurns()
    turns.begin(7, "a", None)
    turns.cut(6)  # another id: no effect
    assert turns.response(r("Still. ", 7)) is not None
    turns.cut(7)
    assert turns.response(r("Gone. ", 7)) is None and turns.stale_responses == 1


def test_the_deadline_gives_up_only_an_unanswered_live_turn() -> None:
    turns = BrainTurns()
    turns.begin(1, "a", None)
    assert turns.deadline(1) and turns.given_up == [1]
    assert turns.response(r("late", 1)) is None
    turns.begin(2, "b", None)
    turns.response(r("x", 2))
    assert not turns.deadline(2)  # answered in time
    assert not turns.deadline(1)  # not the live turn
    assert turns.given_up == [1]


@pytest.mark.parametrize(("played", "duration", "heard"), [
    (0, 1000, ""), (500, 1000, "Hello"), (1000, 1000, "Hello there"), (5000, 1000, "Hello there"), (-5, 1000, ""),
    (10, 0, "Hello there"),
])
def test_heard_text(played: int, duration: int, heard: str) -> None:
    assert heard_text("Hello there", played, duration) == heard
