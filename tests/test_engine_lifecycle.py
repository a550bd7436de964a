"""transport.engine_lifecycle: how a connection's end is classified, and the reconnect budget (literal times)."""

from __future__ import annotations

import pytest

from core.errors import EngineError, EngineRefusedError
from transport.engine_lifecycle import ReconnectBudget, classify_end, is_final_error_type

S = 1_000_000_000


def test_a_dropped_socket_is_retried_unless_nobody_wants_it() -> None:
    retry = classify_end(1006, "close code 1006", error_type=None, closing=False, fatal=None, reconnect_wanted=None)
    assert not retry.final and retry.error is None and retry.close_code == 1006
    unwanted = classify_end(1006, "close code 1006", error_type=None, closing=False, fatal=None,
                            reconnect_wanted=lambda: False)
    assert unwanted.final and unwanted.error is None and "not wanted" in unwanted.reason


def test_normal_close_ends_cleanly_and_policy_violation_fails() -> None:
    done = classify_end(1000, "close code 1000", error_type=None, closing=False, fatal=None, reconnect_wanted=None)
    assert done.final and done.error is None and done.reason.startswith("engine ended the conversation")
    failed = classify_end(1008, "close code 1008", error_type=None, closing=False, fatal=None, reconnect_wanted=None)
    assert failed.final and isinstance(failed.error, EngineError) and failed.error.close_code == 1008


def test_a_final_error_type_is_not_retried_whatever_the_code() -> None:
    ended = classify_end(1002, "close code 1002", error_type="safety_violation", closing=False, fatal=None,
                         reconnect_wanted=None)
    assert ended.final and isinstance(ended.error, EngineRefusedError)
    assert is_final_error_type("monthly_quota_exceeded") and not is_final_error_type("internal_error")
    assert not is_final_error_type(None)


def test_our_own_close_and_a_fatal_reader_error_win() -> None:
    ours = classify_end(1011, "close code 1011", error_type=None, closing=True, fatal=None, reconnect_wanted=None)
    assert ours.final and ours.error is None and ours.reason == "closed by client"
    fatal = EngineError("unsupported format")
    assert classify_end(1000, "x", error_type=None, closing=True, fatal=fatal, reconnect_wanted=None).error is fatal


def test_stability_and_the_reconnect_cap() -> None:
    budget = ReconnectBudget(stable_after_ns=10 * S, max_reconnects=2, window_ns=60 * S)
    budget.established(0, first=True)
    assert not budget.stable(9 * S) and budget.stable(10 * S) and budget.lasted_ns(12 * S) == 12 * S
    budget.established(20 * S, first=False)
    budget.check(21 * S, "lost", 1006)  # one reconnect in the window: go on
    budget.established(30 * S, first=False)
    with pytest.raises(EngineError, match="2 re-established within 60 s"):
        budget.check(31 * S, "lost", 1006)
    budget.check(81 * S, "lost", 1006)  # the first reconnect has left the window
