"""A two-node LiveKit cluster (two livekit-server processes over one loopback redis-server) with bridge worker
processes on different nodes: rooms created on both nodes, dispatched across the workers, dispatch time,
and a worker process killed mid-call.

Each node is a :class:`LiveKitServer` given the same redis address; each worker is ``runner.py --worker
--processes 1`` (a supervisor and one registered child, the real bridge with the emulator echoing) pointed
at one node. In CI a missing redis-server or a node that does not start fails these tests (``need``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import wave
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from livekit import api, rtc

from core.signals import voiced_s
from scripts.caller import Caller
from scripts.livekit_server import LiveKitServer, LiveKitServerError
from scripts.ports import free_tcp_port
from scripts.redis_server import RedisServer, RedisServerError
from tests.bridge_fixtures import dominant_hz, unique, wait_for
from tests.conftest import TEST_API_KEY, TEST_API_SECRET, need
from tests.test_bridge_e2e import voice
from transport.livekit_token import mint_token

pytestmark = pytest.mark.livekit

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts"
RATE = 48_000
# LiveKit's documentation of agent dispatch: "typically < 150 ms" from the room's request to the agent joining.
DOCUMENTED_DISPATCH_MS = 150.0


@dataclass
class Cluster:
    redis: RedisServer
    nodes: tuple[LiveKitServer, LiveKitServer]

    def node_id(self, node: LiveKitServer) -> str:
        assert node.log_path is not None
        found = re.search(r'"nodeID": "(ND_\w+)"', node.log_path.read_text(errors="replace"))
        return found.group(1) if found else ""

    def server_marks(self, room: str) -> dict[str, float]:
        """Seconds (server clock) of the room's allocation, its job's assignment and its agent's session start."""
        import datetime

        patterns = {"room": "selected node for room", "assigned": "assigned job to worker",
                    "agent_session": "starting RTC session"}
        marks: dict[str, float] = {}
        for node in self.nodes:
            assert node.log_path is not None
            for line in node.log_path.read_text(errors="replace").splitlines():
                if f'"room": "{room}"' not in line:
                    continue
                for key, text in patterns.items():
                    if text in line and (key != "agent_session" or '"participant": "agent-' in line):
                        stamp = datetime.datetime.strptime(line.split("\t", 1)[0], "%Y-%m-%dT%H:%M:%S.%fZ")
                        marks.setdefault(key, stamp.timestamp())
        return marks

    def hosting(self, room: str) -> int | None:
        """Index of the node the room allocator picked for ``room`` (its "selected node for room" log line)."""
        ids = [self.node_id(node) for node in self.nodes]
        for node in self.nodes:
            assert node.log_path is not None
            for line in node.log_path.read_text(errors="replace").splitlines():
                if "selected node for room" in line and f'"room": "{room}"' in line:
                    found = re.search(r'"selectedNodeID": "(ND_\w+)"', line)
                    if found and found.group(1) in ids:
                        return ids.index(found.group(1))
        return None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    log_dir = tmp_path_factory.mktemp("cluster")
    redis = RedisServer(log_dir=log_dir)
    try:
        redis.start()
    except RedisServerError as exc:
        need(f"redis-server is not available: {exc}")
    nodes: list[LiveKitServer] = []
    try:
        for _ in range(2):
            nodes.append(LiveKitServer(api_key=TEST_API_KEY, api_secret=TEST_API_SECRET, log_dir=log_dir,
                                       redis=redis.address).start())
    except LiveKitServerError as exc:
        for node in nodes:
            node.stop()
        redis.stop()
        need(f"a livekit-server cluster node did not start: {exc}")
    yield Cluster(redis, (nodes[0], nodes[1]))
    for node in nodes:
        node.stop()
    redis.stop()


def readyz(port: int) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
            return dict(json.loads(response.read()))
    except urllib.error.HTTPError as exc:
        return dict(json.loads(exc.read()))


@dataclass
class WorkerProc:
    node: int
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def status(self) -> dict[str, Any]:
        return readyz(self.port)

    def jobs(self) -> list[dict[str, str]]:
        with contextlib.suppress(OSError, ValueError):
            return [job for child in self.status()["children"] for job in child.get("jobs", ())]
        return []

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


@pytest.fixture(scope="module")
def workers(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list[WorkerProc]]]:
    """One bridge worker process (under its supervisor) on each node, same agent name, 3 calls each at most."""
    name = unique("cluster")
    log_dir = tmp_path_factory.mktemp("cluster-workers")
    procs: list[WorkerProc] = []
    for i, node in enumerate(cluster.nodes):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LIVEKIT_", "ELEVENLABS_", "SPEECH_ENGINE"))}
        env.update(LIVEKIT_URL=node.url, LIVEKIT_API_KEY=TEST_API_KEY, LIVEKIT_API_SECRET=TEST_API_SECRET)
        port = free_tcp_port()
        log = log_dir / f"worker-{i}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, str(ROOT / "runner.py"), "--worker", "--processes", "1", "--agent-name", name,
                 "--max-jobs", "3", "--metrics-port", str(port), "--emulator",
                 "--overload-lag-ms", "0", "--reply", "echo", "--drain-grace", "1",  # dispatch, not capacity
                 "--linger", "0.5"],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        procs.append(WorkerProc(i, proc, port, log))
    try:
        deadline = time.monotonic() + 60
        while not all(_registered(p) for p in procs):
            assert time.monotonic() < deadline, "\n".join(p.tail() for p in procs)
            time.sleep(0.2)
        yield name, procs
    finally:
        for p in procs:
            p.proc.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.proc.wait(30)
            except subprocess.TimeoutExpired:
                p.proc.kill()
                p.proc.wait()


def _registered(p: WorkerProc) -> bool:
    with contextlib.suppress(OSError, ValueError):
        return all(c.get("registered") for c in p.status()["children"])
    return False


def agents_in(c: Caller) -> list[str]:
    return [p.identity for p in c.room.remote_participants.values()
            if p.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT]


@contextlib.asynccontextmanager
async def timed_caller(node: LiveKitServer, room: str,
                       agent_name: str) -> AsyncIterator[tuple[Caller, dict[str, float]]]:
    """A caller whose token carries the dispatch; times connect and the agent's arrival from the token."""
    marks: dict[str, float] = {}
    token = mint_token(TEST_API_KEY, TEST_API_SECRET, room=room, identity="caller", dispatch_agent=agent_name)
    marks["token"] = time.monotonic()
    c = Caller(node.url, token, identity="caller")

    def joined(p: rtc.RemoteParticipant) -> None:
        if p.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT:
            marks.setdefault("agent", time.monotonic())

    c.room.on("participant_connected", joined)
    async with c:
        marks["connected"] = time.monotonic()
        if agents_in(c):  # already there when the connect call returned
            marks.setdefault("agent", marks["connected"])
        yield c, marks


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


async def hears_echo(c: Caller, identity: str, freq: float, timeout: float = 20.0) -> None:
    """The caller says something at ``freq``; the agent ``identity`` (the emulator echoes) says it back."""
    await wait_for(lambda: identity in c.heard, timeout)
    start = time.monotonic_ns()
    c.say(voice(1.0, freq))
    await c.wait_said()

    def echoed() -> bool:
        got = c.heard[identity].since(start) if identity in c.heard else np.zeros(0, np.int16)
        return voiced_s(got, RATE) >= 0.6

    await wait_for(echoed, timeout)
    got = c.heard[identity].since(start)
    levels = np.abs(got.astype(np.int32))
    loud = np.flatnonzero(levels > 1000)
    span = got[loud[0]: loud[-1]]
    heard_hz = dominant_hz(span)
    if abs(heard_hz - freq) >= 10:
        # Seen twice under load (900 Hz for 450: the test voice's 2nd harmonic won); keep the evidence.
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"cluster-echo-{freq:.0f}hz.wav"
        with wave.open(str(path), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(RATE)
            w.writeframes(got.tobytes())
        spectrum = np.abs(np.fft.rfft(span.astype(np.float64) * np.hanning(span.size)))
        bins = np.fft.rfftfreq(span.size, 1 / RATE)
        peaks = [(round(float(bins[i])), round(float(spectrum[i]))) for i in np.argsort(spectrum)[-5:][::-1]]
        raise AssertionError(f"echo at {heard_hz:.0f} Hz, said {freq:.0f} Hz; loud span {span.size / RATE:.2f} s, "
                             f"voiced {voiced_s(got, RATE):.2f} s; strongest bins (Hz, magnitude) {peaks}; "
                             f"audio in {path}")


async def test_rooms_on_both_nodes_are_dispatched_across_workers_on_both(
        cluster: Cluster, workers: tuple[str, list[WorkerProc]]) -> None:
    name, procs = workers
    assert cluster.node_id(cluster.nodes[0]) != cluster.node_id(cluster.nodes[1])
    rooms = [unique(f"n{i % 2}") for i in range(6)]
    to_agent_ms: list[float] = []
    connect_ms: list[float] = []
    async with contextlib.AsyncExitStack() as stack:
        callers = []
        for i, room in enumerate(rooms):  # callers alternate between the nodes, one at a time
            c, marks = await stack.enter_async_context(timed_caller(cluster.nodes[i % 2], room, name))
            await wait_for(lambda m=marks: "agent" in m, 20)  # type: ignore[misc]
            to_agent_ms.append((marks["agent"] - marks["token"]) * 1000)
            connect_ms.append((marks["connected"] - marks["token"]) * 1000)
            callers.append(c)
        # Six rooms, three slots per worker: both workers (one per node) run calls.
        await wait_for(lambda: sum(len(p.jobs()) for p in procs) == 6, 20)
        by_worker = {p.node: sorted(j["room"] for j in p.jobs()) for p in procs}
        assert all(len(v) == 3 for v in by_worker.values()), by_worker
        # Each room has exactly one agent, and the agent is heard: a call through each node.
        assert all(len(agents_in(c)) == 1 for c in callers)
        await asyncio.gather(hears_echo(callers[0], agents_in(callers[0])[0], 350.0),
                             hears_echo(callers[1], agents_in(callers[1])[0], 450.0))
        # Rooms live on both nodes (a room runs on the node that created it), and LiveKit's
        # dispatcher hands rooms to a worker on the other node too.
        room_node = {room: cluster.hosting(room) for room in rooms}
        assert set(room_node.values()) == {0, 1}, room_node
        cross = sum(room_node[room] != p.node for p in procs for room in by_worker[p.node])

    after = [a - b for a, b in zip(to_agent_ms, connect_ms, strict=True)]
    server = [cluster.server_marks(room) for room in rooms]
    assigned_ms = [(m["assigned"] - m["room"]) * 1000 for m in server if "assigned" in m and "room" in m]
    joined_ms = [(m["agent_session"] - m["assigned"]) * 1000 for m in server if "assigned" in m
                 and "agent_session" in m]
    result = {
        "what": "token minted -> agent participant seen by the caller (participant_connected), ms; rooms created "
                "one at a time, callers alternating between the two nodes; includes the caller's own connect",
        "to_agent_ms": {"p50": percentile(to_agent_ms, 50), "p95": percentile(to_agent_ms, 95),
                        "max": max(to_agent_ms), "all": [round(v, 1) for v in to_agent_ms]},
        "caller_connect_ms": {"p50": percentile(connect_ms, 50), "p95": percentile(connect_ms, 95)},
        "agent_after_connect_ms": {"p50": percentile(after, 50), "p95": percentile(after, 95)},
        "server_room_created_to_job_assigned_ms": {"p50": percentile(assigned_ms, 50),
                                                   "p95": percentile(assigned_ms, 95),
                                                   "all": [round(v, 1) for v in assigned_ms]},
        "server_job_assigned_to_agent_session_ms": {"p50": percentile(joined_ms, 50),
                                                    "p95": percentile(joined_ms, 95)},
        "documented_ms": DOCUMENTED_DISPATCH_MS,
        "rooms_by_node": {str(n): sorted(r for r, h in room_node.items() if h == n) for n in (0, 1)},
        "rooms_by_worker_node": {str(k): v for k, v in by_worker.items()},
        "rooms_served_by_a_worker_on_the_other_node": cross,
        "machine": {"cpus": os.cpu_count(), "loadavg": os.getloadavg()},
    }
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "cluster_dispatch.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    # Generous: a shared 2-core machine; the figure itself is the report.
    assert result["to_agent_ms"]["p95"] < 5000


async def test_a_worker_process_killed_mid_call(cluster: Cluster, workers: tuple[str, list[WorkerProc]]) -> None:
    """What LiveKit does when the process running a call dies, and the supervisor's part."""
    name, procs = workers
    await wait_for(lambda: all(not p.jobs() for p in procs), 30)  # the previous test's calls have ended
    room = unique("kill")
    node = cluster.nodes[0]
    async with timed_caller(node, room, name) as (c, marks):
        await wait_for(lambda: "agent" in marks, 20)
        (first,) = agents_in(c)
        await hears_echo(c, first, 350.0)
        owner = next(p for p in procs if any(j["room"] == room for j in p.jobs()))
        child = owner.status()["children"][0]
        killed_at = time.monotonic()
        os.kill(child["pid"], signal.SIGKILL)
        # The supervisor removes the dead process's agent from the room through the API.
        await wait_for(lambda: first not in agents_in(c), 15)
        left_s = time.monotonic() - killed_at
        # livekit-server 1.13.5 does not dispatch the room again by itself (its log: "last worker
        # deregistered", then nothing for the room); the supervisor creates a fresh dispatch and LiveKit
        # assigns it to any worker with room for it, on either node.
        await wait_for(lambda: bool(agents_in(c)) and agents_in(c)[0] != first, 30)
        again_s = time.monotonic() - killed_at
        (second,) = agents_in(c)
        await hears_echo(c, second, 450.0)
        lkapi = api.LiveKitAPI(node.http_url, TEST_API_KEY, TEST_API_SECRET)
        try:
            dispatches = await lkapi.agent_dispatch.list_dispatch(room)
        finally:
            await lkapi.aclose()
        served_by = next(p.node for p in procs if any(j["room"] == room for j in p.jobs()))
        record = {"agent_left_s": round(left_s, 2), "agent_back_s": round(again_s, 2),
                  "killed_worker_node": owner.node, "new_job_worker_node": served_by,
                  "dispatches": [{"id": d.id, "jobs": [(j.id, j.state.status) for j in d.state.jobs]}
                                 for d in dispatches]}
        print(json.dumps(record))
        (ARTIFACTS / "cluster_kill.json").write_text(json.dumps(record, indent=2))
        assert left_s < 10
        assert owner.status()["redispatched"] == 1
        assert [d for d in dispatches if d.agent_name == name] and len(dispatches) == 1, "old dispatch kept"
