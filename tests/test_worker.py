"""The agent worker against the real livekit-server: dispatch by name, capacity, termination, drain, restart.

Every test registers under an agent name of its own: the session's server is shared, and LiveKit would
happily hand one test's rooms to another test's worker of the same name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator, Iterator

import pytest
from livekit import api, rtc
from livekit.protocol import agent as pb
from websockets.asyncio.server import ServerConnection, serve

from core.errors import ConfigError, LiveKitError
from scripts.caller import Caller
from scripts.livekit_server import LiveKitServer
from tests.bridge_fixtures import RATE, ToneAgent, dominant_hz, running_worker, unique, wait_for
from tests.conftest import TEST_API_KEY, TEST_API_SECRET, started_server
from transport.backoff import constant
from transport.livekit_token import mint_token
from transport.worker import JobContext, Worker, WorkerConfig, agent_endpoint, drain_on_signals

pytestmark = pytest.mark.livekit


def config(server: LiveKitServer, agent_name: str, **kw: object) -> WorkerConfig:
    # These tests count slots; the callers run in this same process and load its loop, so the lag-based
    # "full" (tested in test_worker_protocol) would decide instead of the slots. Off unless a test asks.
    kw.setdefault("overload_lag_s", None)
    return WorkerConfig(url=server.url, api_key=server.api_key, api_secret=server.api_secret,
                        agent_name=agent_name, **kw)  # type: ignore[arg-type]


def dispatch_token(room: str, identity: str, agent_name: str, metadata: str = "") -> str:
    return mint_token(TEST_API_KEY, TEST_API_SECRET, room=room, identity=identity,
                      dispatch_agent=agent_name, dispatch_metadata=metadata)


@contextlib.asynccontextmanager
async def caller(server: LiveKitServer, room: str, agent_name: str, metadata: str = "",
                 identity: str = "caller") -> AsyncIterator[Caller]:
    async with Caller(server.url, dispatch_token(room, identity, agent_name, metadata),
                      identity=identity) as c:
        yield c


async def delete_the_dispatch(server: LiveKitServer, room: str) -> None:
    lkapi = api.LiveKitAPI(server.http_url, TEST_API_KEY, TEST_API_SECRET)
    try:
        (dispatch,) = await lkapi.agent_dispatch.list_dispatch(room)
        await lkapi.agent_dispatch.delete_dispatch(dispatch.id, room)
    finally:
        await lkapi.aclose()


def agents_in(c: Caller) -> list[rtc.RemoteParticipant]:
    return [p for p in c.room.remote_participants.values()
            if p.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT]


async def test_dispatch_runs_the_job_and_the_room_hears_it(livekit_server: LiveKitServer,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    name = unique("tone")
    agent = ToneAgent(660.0)
    async with running_worker(config(livekit_server, name), agent) as (worker, _):
        assert worker.worker_id.startswith("AW_")
        room = unique("room")
        async with caller(livekit_server, room, name, metadata='{"lang": "en"}') as c:
            await wait_for(lambda: len(agent.jobs) == 1)
            (record,) = agent.jobs.values()
            ctx = record.ctx
            assert (ctx.room_name, ctx.agent_name, ctx.metadata) == (room, name, '{"lang": "en"}')
            assert ctx.identity == f"agent-{ctx.job_id}" and ctx.url == livekit_server.url
            assert ctx.worker_id == worker.worker_id

            # The job's participant is in the room as an agent, and what it publishes is heard.
            await wait_for(lambda: ctx.identity in c.heard and c.heard[ctx.identity].audio().size > RATE * 2)
            assert [p.identity for p in agents_in(c)] == [ctx.identity]
            heard = c.heard[ctx.identity].audio()[-RATE:]
            assert abs(dominant_hz(heard) - 660.0) < 5.0
            stats = worker.stats()
            assert (stats.jobs_running, stats.jobs_offered, stats.jobs_declined) == (1, 1, 0)
            assert stats.last_rtt_ms is None or stats.last_rtt_ms >= 0

    assert TEST_API_SECRET not in caplog.text
    assert "eyJ" not in caplog.text, "a JWT reached the logs"


async def test_full_worker_gets_no_offers_and_rooms_spread_over_workers(livekit_server: LiveKitServer) -> None:
    name = unique("spread")
    first, second = ToneAgent(), ToneAgent()
    async with running_worker(config(livekit_server, name, max_jobs=1), first) as (w1, _), \
            running_worker(config(livekit_server, name, max_jobs=1), second) as (w2, _), \
            caller(livekit_server, unique("a"), name) as a, caller(livekit_server, unique("b"), name) as b:
        await wait_for(lambda: len(first.jobs) == 1 and len(second.jobs) == 1)
        await wait_for(lambda: len(agents_in(a)) == 1 and len(agents_in(b)) == 1)
        for w in (w1, w2):
            stats = w.stats()
            assert stats.jobs_running == 1 and stats.load == pytest.approx(0.7)
        # Both workers told the server WS_FULL: a third room is not even offered to them.
        offered = w1.stats().jobs_offered + w2.stats().jobs_offered
        async with caller(livekit_server, unique("c"), name) as c:
            await asyncio.sleep(4.0)
            assert w1.stats().jobs_offered + w2.stats().jobs_offered == offered
            assert agents_in(c) == []


async def test_slots_beyond_the_servers_target_load_are_used(livekit_server: LiveKitServer) -> None:
    # max_jobs=4: with load = running/max the fourth room would find the node at 0.75 > target_load 0.7
    # and get no agent (see worker_protocol rule 6). Scaled load keeps all four slots reachable.
    name = unique("four")
    agent = ToneAgent()
    async with running_worker(config(livekit_server, name, max_jobs=4), agent) as (worker, _), \
            contextlib.AsyncExitStack() as stack:
        for i in range(4):
            await stack.enter_async_context(caller(livekit_server, unique(f"r{i}"), name))
            await wait_for(lambda n=i + 1: len(agent.jobs) == n)  # type: ignore[misc]
        stats = worker.stats()
        assert (stats.jobs_running, stats.jobs_declined) == (4, 0) and stats.load == pytest.approx(0.7)


async def test_termination_from_the_server_ends_the_job(livekit_server: LiveKitServer) -> None:
    name = unique("term")
    agent = ToneAgent()
    room = unique("room")
    async with running_worker(config(livekit_server, name), agent) as (worker, _), \
            caller(livekit_server, room, name) as c:
        await wait_for(lambda: len(agents_in(c)) == 1)
        await delete_the_dispatch(livekit_server, room)  # the server sends the worker a JobTermination
        await wait_for(lambda: worker.stats().jobs_running == 0)
        (record,) = agent.jobs.values()
        assert record.ended_by == "termination"
        assert worker.stats().jobs_completed == 1
        await wait_for(lambda: agents_in(c) == [])


async def test_a_stubborn_job_is_cancelled_after_termination(livekit_server: LiveKitServer) -> None:
    name = unique("stubborn")
    agent = ToneAgent(ignore_termination=True)
    room = unique("room")
    cfg = config(livekit_server, name, stop_timeout_s=1.0)
    async with running_worker(cfg, agent) as (worker, _), caller(livekit_server, room, name) as c:
        await wait_for(lambda: len(agents_in(c)) == 1)
        await delete_the_dispatch(livekit_server, room)  # the server sends the worker a JobTermination
        await wait_for(lambda: worker.stats().jobs_running == 0, timeout=15)
        (record,) = agent.jobs.values()
        assert record.ended_by == "cancelled"
        # It ended as the server asked, if late: reported as a success.
        assert (worker.stats().jobs_completed, worker.stats().jobs_failed) == (1, 0)


async def test_drain_stops_offers_then_ends_jobs_after_the_grace(livekit_server: LiveKitServer) -> None:
    name = unique("drain")
    agent = ToneAgent()
    async with running_worker(config(livekit_server, name, max_jobs=3), agent) as (worker, run_task), \
            caller(livekit_server, unique("room"), name) as c:
        await wait_for(lambda: len(agents_in(c)) == 1)
        drain = asyncio.ensure_future(worker.drain(grace_s=3.0))
        await wait_for(lambda: worker.stats().draining)
        await asyncio.sleep(0.5)  # the WS_FULL status is on its way
        async with caller(livekit_server, unique("late"), name) as late:
            await asyncio.sleep(2.0)
            assert worker.stats().jobs_offered == 1, "a draining worker was offered a job"
            assert agents_in(late) == []
            assert agents_in(c) != [], "the running job ended before its grace period"
        await asyncio.wait_for(drain, 20)
        (record,) = agent.jobs.values()
        assert record.ended_by == "termination"
        await asyncio.wait_for(run_task, 10)  # run() returns once drained
        assert not worker.registered
        await wait_for(lambda: agents_in(c) == [])


async def test_drain_lets_a_job_finish_within_the_grace(livekit_server: LiveKitServer) -> None:
    name = unique("finish")
    agent = ToneAgent()
    async with running_worker(config(livekit_server, name), agent) as (worker, run_task):
        async with caller(livekit_server, unique("room"), name) as c:
            await wait_for(lambda: len(agents_in(c)) == 1)
            drain = asyncio.ensure_future(worker.drain(grace_s=120.0))
        # The caller left; the room closes after its departure timeout (20 s) and the job ends: the
        # runner sees its room go, or the server's JobTermination for the agent that left, whichever first.
        await asyncio.wait_for(drain, 90)
        (record,) = agent.jobs.values()
        assert record.ended_by in ("room closed", "termination")
        assert worker.stats().jobs_completed == 1
        await asyncio.wait_for(run_task, 10)


async def test_bad_credentials_fail_fast_without_leaking_the_secret(livekit_server: LiveKitServer) -> None:
    wrong = "wrong-secret-0123456789abcdefghijklmnopqrstuvwxyz"
    cfg = WorkerConfig(url=livekit_server.url, api_key=TEST_API_KEY, api_secret=wrong, agent_name="nobody")
    with pytest.raises(LiveKitError) as caught:
        async with running_worker(cfg, ToneAgent()):
            pass
    assert "401" in str(caught.value) and wrong not in str(caught.value)


@pytest.fixture
def own_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveKitServer]:
    """A server of this test's own: restarting the session's server would break other tests."""
    server = started_server(tmp_path_factory, "livekit-restart")
    yield server
    server.stop()


async def test_reregisters_after_the_server_restarts(own_server: LiveKitServer) -> None:
    name = unique("restart")
    agent = ToneAgent(440.0)
    cfg = config(own_server, name)
    async with running_worker(cfg, agent) as (worker, _):
        first_id = worker.worker_id
        await asyncio.to_thread(own_server.restart)
        await wait_for(lambda: worker.stats().registrations == 2, timeout=60)
        assert worker.registered and worker.worker_id != first_id
        # The restarted server dispatches to the re-registered worker.
        async with caller(own_server, unique("after"), name) as c:
            await wait_for(lambda: len(agents_in(c)) == 1, timeout=30)
            identity = agents_in(c)[0].identity
            await wait_for(lambda: identity in c.heard and c.heard[identity].audio().size > RATE)
            assert abs(dominant_hz(c.heard[identity].audio()[-RATE // 2:]) - 440.0) < 10.0
        assert worker.stats().connection_failures >= 0


async def test_sigterm_drains_the_worker(livekit_server: LiveKitServer) -> None:
    name = unique("sigterm")
    agent = ToneAgent()
    async with running_worker(config(livekit_server, name), agent) as (worker, run_task), \
            caller(livekit_server, unique("room"), name) as c:
        uninstall = drain_on_signals(worker, grace_s=0.5)
        try:
            await wait_for(lambda: len(agents_in(c)) == 1)
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.wait_for(run_task, 20)
        finally:
            uninstall()
        (record,) = agent.jobs.values()
        assert record.ended_by == "termination"
        assert worker.stats().draining and not worker.registered
        await wait_for(lambda: agents_in(c) == [])


def test_agent_endpoint_and_config() -> None:
    assert agent_endpoint("ws://127.0.0.1:7880") == "ws://127.0.0.1:7880/agent"
    assert agent_endpoint("https://lk.example.com/prefix/") == "wss://lk.example.com/prefix/agent"
    with pytest.raises(ConfigError):
        agent_endpoint("ftp://x")
    with pytest.raises(ConfigError):
        WorkerConfig(url="ws://h", api_key="k", api_secret="", agent_name="a")
    cfg = WorkerConfig.from_env("bridge", max_jobs=7, api_secret="a-long-test-secret-xyz")
    assert (cfg.agent_name, cfg.max_jobs) == ("bridge", 7)
    assert cfg.api_secret not in repr(cfg)


async def test_fake_server_assignment_without_token_and_go_away() -> None:
    """Behaviour a real server rarely shows: no token or a URL of its own in the assignment, and GoAway."""
    registrations: list[pb.RegisterWorkerRequest] = []
    answers: list[pb.AvailabilityResponse] = []
    got_job: asyncio.Queue[JobContext] = asyncio.Queue()

    async def runner(ctx: JobContext) -> None:
        await got_job.put(ctx)
        await ctx.termination.wait()

    async def agent_endpoint_handler(ws: ServerConnection) -> None:
        assert ws.request is not None and ws.request.path == "/agent"
        bearer = ws.request.headers["Authorization"].removeprefix("Bearer ")
        assert api.TokenVerifier(TEST_API_KEY, TEST_API_SECRET).verify(bearer).video.agent  # type: ignore[union-attr]
        first = pb.WorkerMessage.FromString(await ws.recv())  # type: ignore[arg-type]
        registrations.append(first.register)
        await ws.send(pb.ServerMessage(register=pb.RegisterWorkerResponse(worker_id=f"AW_{len(registrations)}"))
                      .SerializeToString())
        if len(registrations) > 1:
            await ws.wait_closed()
            return
        job = pb.Job(id="AJ_1", room={"name": "room-x"}, agent_name="fake", metadata="m")
        await ws.send(pb.ServerMessage(availability=pb.AvailabilityRequest(job=job)).SerializeToString())
        async for frame in ws:
            message = pb.WorkerMessage.FromString(frame)  # type: ignore[arg-type]
            if message.WhichOneof("message") == "availability":
                answers.append(message.availability)
                await ws.send(pb.ServerMessage(assignment=pb.JobAssignment(
                    job=job, url="ws://127.0.0.1:1/elsewhere")).SerializeToString())
                await asyncio.sleep(0.2)
                await ws.send(pb.ServerMessage(go_away=pb.AgentHttp.GoAway(reason="test")).SerializeToString())

    async with serve(agent_endpoint_handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        cfg = WorkerConfig(url=f"http://127.0.0.1:{port}", api_key=TEST_API_KEY, api_secret=TEST_API_SECRET,
                           agent_name="fake", version="test-1")
        worker = Worker(cfg, runner, backoff=lambda: constant(0.05))
        run_task = asyncio.ensure_future(worker.run())
        try:
            ctx = await asyncio.wait_for(got_job.get(), 10)
            assert (ctx.url, ctx.room_name, ctx.metadata, ctx.identity) == \
                ("ws://127.0.0.1:1/elsewhere", "room-x", "m", "agent-AJ_1")
            minted = api.TokenVerifier(TEST_API_KEY, TEST_API_SECRET).verify(ctx.token)
            assert (minted.identity, minted.kind, minted.video.room) == ("agent-AJ_1", "agent", "room-x")  # type: ignore[union-attr]
            assert answers[0].available and answers[0].participant_identity == "agent-AJ_1"
            assert registrations[0].agent_name == "fake" and registrations[0].version == "test-1"
            # GoAway: the worker reconnects and registers again; the job keeps running meanwhile.
            await wait_for(lambda: worker.stats().registrations == 2, timeout=10)
            assert worker.worker_id == "AW_2" and worker.stats().jobs_running == 1
        finally:
            await worker.aclose()
            await asyncio.wait_for(run_task, 10)
