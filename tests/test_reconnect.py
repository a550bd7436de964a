"""The reconnect policy and the close classifier the engine client and the worker share, without I/O."""

from __future__ import annotations

import pytest

from core.errors import ConfigError
from transport.backoff import RetryPolicy, constant, full_jitter
from transport.engine_protocol import CloseAction, classify_close


@pytest.mark.parametrize(("code", "by_client", "fatal", "action"), [
    (1000, False, False, CloseAction.DONE),  # the agent ended the call
    (1006, True, False, CloseAction.DONE),  # we were closing: however it ended, it is over
    (1008, False, False, CloseAction.FAIL),  # our input broke the contract
    (1000, False, True, CloseAction.FAIL),  # an unsupported format: no retry can help
    (1002, False, False, CloseAction.RETRY),
    (1006, False, False, CloseAction.RETRY),
    (1009, False, False, CloseAction.RETRY),
    (1011, False, False, CloseAction.RETRY),
])
def test_close_codes_decide_what_comes_next(code: int, by_client: bool, fatal: bool, action: CloseAction) -> None:
    assert classify_close(code, by_client=by_client, fatal=fatal) is action


def test_consecutive_failures_are_capped_and_a_success_starts_again() -> None:
    retry = RetryPolicy(lambda: constant(0.5), max_failures=3)
    for n in (1, 2):
        retry.failed()
        assert retry.next_delay() == 0.5 and retry.failures == n
    retry.failed()
    assert retry.exhausted and retry.next_delay() is None
    retry.connected()
    retry.failed()
    assert retry.next_delay() == 0.5


def test_each_outage_gets_a_fresh_delay_sequence() -> None:
    draws = iter([0.0, 0.99, 0.99, 0.99])
    retry = RetryPolicy(lambda: full_jitter(1.0, 8.0, rand=lambda: next(draws)))
    retry.failed()
    assert retry.next_delay() == 0.0  # window 1 s
    retry.failed()
    assert retry.next_delay() == pytest.approx(1.98)  # window 2 s
    retry.connected()
    retry.lost()
    retry.failed()
    assert retry.next_delay() == pytest.approx(0.99)  # back to the 1 s window


def test_a_finite_backoff_ends_the_retries() -> None:
    retry = RetryPolicy(lambda: iter([0.1]))
    retry.failed()
    assert retry.next_delay() == 0.1
    retry.failed()
    assert retry.next_delay() is None


def test_a_cap_below_one_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        RetryPolicy(max_failures=0)
