"""The worker's sans-I/O protocol: literal frames in, decoded frames out, no sockets and no clock."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st
from livekit.protocol import agent as pb

from core.errors import ConfigError, ProtocolError
from transport.worker_protocol import (
    JobAssigned,
    JobOffer,
    JobTerminationRequested,
    LagWindow,
    Pong,
    Registered,
    WorkerProtocol,
    decode_worker_messages,
)


def server(**kw: object) -> bytes:
    return pb.ServerMessage(**kw).SerializeToString()  # type: ignore[arg-type]


def offer(job_id: str, room: str = "r") -> bytes:
    return server(availability=pb.AvailabilityRequest(job=pb.Job(id=job_id, room={"name": room})))


def assign(job_id: str, token: str = "tok", room: str = "r") -> bytes:
    return server(assignment=pb.JobAssignment(job=pb.Job(id=job_id, room={"name": room}), token=token))


def sent(proto: WorkerProtocol) -> list[pb.WorkerMessage]:
    return decode_worker_messages(proto.data_to_send())


def registered(max_jobs: int = 2, **kw: object) -> WorkerProtocol:
    proto = WorkerProtocol(agent_name="bridge", version="v", max_jobs=max_jobs, **kw)  # type: ignore[arg-type]
    proto.connection_made()
    proto.receive(server(register=pb.RegisterWorkerResponse(worker_id="AW_1")), now=0.0)
    proto.data_to_send()
    return proto


def statuses(messages: list[pb.WorkerMessage]) -> list[tuple[int, float, int]]:
    return [(m.update_worker.status, round(m.update_worker.load, 6), m.update_worker.job_count)
            for m in messages if m.WhichOneof("message") == "update_worker"]


def test_registration_comes_first_and_carries_the_agent_name() -> None:
    proto = WorkerProtocol(agent_name="bridge", version="1.0", max_jobs=3, ping_interval_s=10)
    proto.connection_made()
    (msg,) = sent(proto)
    assert msg.register.agent_name == "bridge" and msg.register.type == pb.JT_ROOM
    assert (msg.register.version, msg.register.ping_interval) == ("1.0", 10)
    with pytest.raises(ProtocolError) as caught:
        proto.receive(offer("J1"), now=0.0)
    assert caught.value.kind == "not_registered"
    events = proto.receive(server(register=pb.RegisterWorkerResponse(
        worker_id="AW_1", server_info={"version": "1.13.5", "agent_protocol": 1})), now=0.0)
    assert events == [Registered("AW_1", "1.13.5", 1)]
    assert proto.registered and proto.worker_id == "AW_1"
    assert statuses(sent(proto)) == [(pb.WS_AVAILABLE, 0.0, 0)]


def test_offers_are_accepted_until_the_slots_are_taken_then_declined() -> None:
    proto = registered(max_jobs=2)
    assert proto.receive(offer("J1", "room-a"), now=0.0) == [JobOffer("J1", "room-a", True, "")]
    first = sent(proto)
    assert first[0].availability.available and first[0].availability.participant_identity == "agent-J1"
    # A reserved slot already counts: the status says so before any assignment arrives.
    assert statuses(first) == [(pb.WS_AVAILABLE, 0.35, 0)]
    proto.receive(offer("J2"), now=0.0)
    assert statuses(sent(proto)) == [(pb.WS_FULL, 0.7, 0)]
    assert proto.receive(offer("J3"), now=0.0) == [JobOffer("J3", "r", False, "full")]
    (declined,) = sent(proto)
    assert not declined.availability.available and declined.availability.job_id == "J3"


def test_assignment_runs_the_job_and_its_end_is_reported() -> None:
    proto = registered(max_jobs=2)
    proto.receive(offer("J1"), now=0.0)
    proto.data_to_send()
    (event,) = proto.receive(assign("J1", token="secret-token"), now=1.0)
    assert isinstance(event, JobAssigned) and event.expected
    assert (event.identity, event.token, event.url) == ("agent-J1", "secret-token", "")
    assert statuses(sent(proto)) == [(pb.WS_AVAILABLE, 0.35, 1)]
    proto.job_ended("J1", failed=True, error="boom")
    update, status = sent(proto)
    assert (update.update_job.job_id, update.update_job.status, update.update_job.error) == \
        ("J1", pb.JS_FAILED, "boom")
    assert statuses([status]) == [(pb.WS_AVAILABLE, 0.0, 0)]
    proto.job_ended("J1", failed=False)  # a second end is ignored
    assert sent(proto) == []


def test_an_assignment_we_never_accepted_is_failed_at_once() -> None:
    proto = registered()
    (event,) = proto.receive(assign("J9"), now=0.0)
    assert isinstance(event, JobAssigned) and not event.expected
    update = sent(proto)[0].update_job
    assert (update.job_id, update.status) == ("J9", pb.JS_FAILED)
    assert proto.running == frozenset()


def test_reservations_lapse_when_no_assignment_comes() -> None:
    proto = registered(max_jobs=1, reservation_ttl_s=15.0)
    proto.receive(offer("J1"), now=100.0)
    assert proto.slots().full
    assert proto.tick(114.0) == []
    assert proto.tick(115.0) == ["J1"]
    assert not proto.slots().full
    (event,) = proto.receive(assign("J1"), now=116.0)
    assert isinstance(event, JobAssigned) and not event.expected


def test_drain_reports_full_and_declines_everything() -> None:
    proto = registered(max_jobs=4)
    proto.drain()
    (msg,) = sent(proto)
    assert msg.update_worker.status == pb.WS_FULL and msg.update_worker.draining
    assert proto.receive(offer("J1"), now=0.0) == [JobOffer("J1", "r", False, "draining")]


def test_running_jobs_survive_a_reconnect_and_are_reported_after_it() -> None:
    proto = registered()
    proto.receive(offer("J1"), now=0.0)
    proto.receive(offer("J2"), now=0.0)
    proto.receive(assign("J1"), now=0.0)
    proto.connection_lost()
    assert proto.running == frozenset({"J1"}) and proto.slots().reserved == 0
    proto.job_ended("J1", failed=False)  # ended while disconnected: the new server never knew it
    proto.connection_made()
    assert [m.WhichOneof("message") for m in sent(proto)] == ["register"]
    proto.receive(server(register=pb.RegisterWorkerResponse(worker_id="AW_2")), now=0.0)
    assert statuses(sent(proto)) == [(pb.WS_AVAILABLE, 0.0, 0)]


def test_migrate_lists_the_jobs_still_running_after_re_registration() -> None:
    proto = registered()
    proto.receive(offer("J1"), now=0.0)
    proto.receive(assign("J1"), now=0.0)
    proto.connection_lost()
    proto.connection_made()
    proto.data_to_send()
    proto.receive(server(register=pb.RegisterWorkerResponse(worker_id="AW_2")), now=0.0)
    migrate, status = sent(proto)
    assert list(migrate.migrate_job.job_ids) == ["J1"]
    assert statuses([status]) == [(pb.WS_AVAILABLE, 0.35, 1)]


def test_ping_pong_gives_the_round_trip() -> None:
    proto = registered()
    proto.ping(now=10.0)
    (ping,) = sent(proto)
    assert ping.ping.timestamp == 10_000
    (event,) = proto.receive(server(pong=pb.WorkerPong(last_timestamp=10_000, timestamp=1)), now=10.025)
    assert isinstance(event, Pong) and event.rtt_ms == pytest.approx(25.0)


def test_a_repeated_offer_or_assignment_does_not_take_a_second_slot() -> None:
    proto = registered(max_jobs=3)
    proto.receive(offer("J1"), now=0.0)
    assert proto.receive(offer("J1"), now=0.0)[0] == JobOffer("J1", "r", False, "duplicate")
    proto.receive(assign("J1"), now=0.0)
    proto.data_to_send()
    (again,) = proto.receive(assign("J1"), now=0.0)
    assert isinstance(again, JobAssigned) and not again.expected
    assert statuses(sent(proto)) == [(pb.WS_AVAILABLE, round(0.7 / 3, 6), 1)]  # and no JS_FAILED for J1
    assert proto.running == frozenset({"J1"})


def test_termination_is_passed_on() -> None:
    proto = registered()
    assert proto.receive(server(termination=pb.JobTermination(job_id="J1")), now=0.0) == \
        [JobTerminationRequested("J1")]


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ConfigError):
        WorkerProtocol(agent_name="a", version="v", max_jobs=0)
    with pytest.raises(ConfigError):
        WorkerProtocol(agent_name="a", version="v", max_jobs=1, full_load=1.5)


@given(st.binary(max_size=200))
def test_arbitrary_frames_raise_only_protocol_errors(data: bytes) -> None:
    proto = registered()
    with contextlib.suppress(ProtocolError):
        proto.receive(data, now=0.0)


@given(st.lists(st.tuples(st.sampled_from(["offer", "assign", "end", "tick", "drain"]),
                          st.integers(0, 5)), max_size=60),
       st.integers(1, 4))
def test_never_overbooked_and_full_exactly_when_busy(ops: list[tuple[str, int]], max_jobs: int) -> None:
    proto = registered(max_jobs=max_jobs)
    now = 0.0
    for op, n in ops:
        job_id = f"J{n}"
        now += 1.0
        if op == "offer":
            proto.receive(offer(job_id), now=now)
        elif op == "assign":
            proto.receive(assign(job_id), now=now)
        elif op == "end":
            proto.job_ended(job_id, failed=False)
        elif op == "tick":
            proto.tick(now)
        else:
            proto.drain()
        slots = proto.slots()
        assert slots.running + slots.reserved <= max_jobs
        assert slots.full == (slots.draining or slots.running + slots.reserved >= max_jobs)
        for status, load, _ in statuses(sent(proto)):
            assert 0.0 <= load <= 0.7 + 1e-6
            assert (status == pb.WS_FULL) or load < 0.7


# ------------------------------------------------------------------------------------------ overload


def test_an_overloaded_worker_reports_full_and_declines_offers() -> None:
    # Before: the status only counted slots, so a process whose loop lagged kept taking rooms.
    proto = registered(max_jobs=4)
    proto.set_overloaded(True)
    assert statuses(sent(proto)) == [(pb.WS_FULL, 0.0, 0)]
    (event,) = proto.receive(offer("J1"), now=1.0)
    assert isinstance(event, JobOffer) and not event.accepted and event.reason == "full"
    proto.data_to_send()
    proto.set_overloaded(True)  # no change, no message
    assert sent(proto) == []
    proto.set_overloaded(False)
    assert statuses(sent(proto)) == [(pb.WS_AVAILABLE, 0.0, 0)]
    (event,) = proto.receive(offer("J2"), now=2.0)
    assert isinstance(event, JobOffer) and event.accepted


def test_lag_window_turns_on_at_the_threshold_and_off_below_half() -> None:
    w = LagWindow(full_at_s=0.030, window_s=10.0, min_samples=20)
    for i in range(19):
        assert not w.add(0.050, i * 0.1)  # too few samples to judge
    assert w.add(0.050, 1.9)
    # Recovering: p95 must fall below 15 ms; at 20 ms it stays full.
    for i in range(200):
        w.add(0.020, 2.0 + i * 0.1)
    assert w.overloaded
    for i in range(200):
        w.add(0.001, 30.0 + i * 0.1)
    assert not w.overloaded


def test_lag_window_ignores_a_few_stray_stalls() -> None:
    w = LagWindow(full_at_s=0.030)
    for i in range(100):
        w.add(0.200 if i % 25 == 0 else 0.002, i * 0.1)  # 4 % of wakeups stalled: under the p95
    assert not w.overloaded
