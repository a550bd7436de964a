"""The supervisor's restart policy and child table, sans-I/O: status reports and deaths given as plain values."""

from __future__ import annotations

from transport.backoff import constant
from transport.supervisor_policy import FALLBACK_DELAY_S, ChildState, ExitCode, GiveUp, Restart, RestartPolicy

REGISTERED = {"registered": True, "running": 0, "max_jobs": 2}


def test_a_registered_child_that_dies_is_restarted_after_the_backoff_delay() -> None:
    policy, child = RestartPolicy(lambda: iter([0.5, 1.0, 2.0]), crash_loop_limit=3), ChildState(0)
    child.started()
    assert child.report(REGISTERED) is True  # the first registration is news ...
    assert child.report(REGISTERED) is False  # ... a heartbeat is not
    assert policy.died(child, 1) == Restart(0.5)
    child.started()
    assert child.status == {} and child.starts == 2
    assert policy.died(child, -9) == Restart(1.0)  # never registered this time: same outage, next delay
    assert child.deaths_unregistered == 1


def test_registering_again_resets_the_delays_and_the_crash_count() -> None:
    policy, child = RestartPolicy(lambda: iter([0.5, 1.0]), crash_loop_limit=2), ChildState(0)
    child.started()
    assert policy.died(child, 1) == Restart(0.5)
    child.started()
    child.report(REGISTERED)
    assert child.deaths_unregistered == 0 and child.delays is None
    assert policy.died(child, 1) == Restart(0.5)  # a fresh outage starts the sequence again


def test_a_child_that_never_registers_is_a_crash_loop_at_the_limit() -> None:
    policy, child = RestartPolicy(lambda: constant(0.01), crash_loop_limit=3), ChildState(1)
    decisions = []
    for _ in range(3):
        child.started()
        child.report({"registered": False})
        decisions.append(policy.died(child, 1))
    assert decisions == [Restart(0.01), Restart(0.01), GiveUp(ExitCode.CRASH_LOOP)]


def test_a_refused_configuration_is_never_restarted() -> None:
    policy, child = RestartPolicy(lambda: constant(0.01), crash_loop_limit=5), ChildState(0)
    child.started()
    assert policy.died(child, ExitCode.CONFIG) == GiveUp(ExitCode.CONFIG)


def test_an_exhausted_backoff_waits_the_fallback_delay() -> None:
    policy, child = RestartPolicy(lambda: iter(()), crash_loop_limit=5), ChildState(0)
    child.started()
    assert policy.died(child, 1) == Restart(FALLBACK_DELAY_S)


def test_availability_follows_the_latest_report() -> None:
    child = ChildState(0)
    assert not child.available
    child.report(REGISTERED)
    assert child.available
    child.report({**REGISTERED, "running": 2})
    assert not child.available  # full
    child.report({**REGISTERED, "draining": True})
    assert not child.available
    child.report({**REGISTERED, "jobs": [{"job": "J1", "room": "r"}]})
    assert child.jobs == [{"job": "J1", "room": "r"}]
