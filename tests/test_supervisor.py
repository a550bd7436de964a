"""``runner.py --worker --processes N`` against the real livekit-server: N registered children, LiveKit
dispatching to each, one scrape for all, a killed child restarted (its call ended), drain and forced stop.

The children run the real bridge session with the embedded emulator; each test registers an agent name of
its own (the session's server is shared).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from livekit import rtc

from scripts.caller import Caller
from scripts.livekit_server import LiveKitServer
from scripts.ports import free_tcp_port
from tests.bridge_fixtures import unique, wait_for
from tests.conftest import TEST_API_KEY, TEST_API_SECRET
from transport.livekit_token import mint_token
from transport.supervisor import ExitCode, describe_exit, merge_expositions, strip_options

pytestmark = pytest.mark.livekit

ROOT = Path(__file__).resolve().parents[1]


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


async def readyz(port: int) -> tuple[int, dict[str, Any]]:
    status, body = await asyncio.to_thread(http_get, port, "/readyz")
    return status, json.loads(body)


class Supervised:
    def __init__(self, proc: asyncio.subprocess.Process, port: int, log: Path) -> None:
        self.proc, self.port, self.log = proc, port, log
        self.snap: dict[str, Any] = {}
        self.status = 0

    async def refresh(self) -> dict[str, Any]:
        self.status, self.snap = await readyz(self.port)
        return self.snap

    async def until(self, predicate: Any, timeout: float = 60.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                with contextlib.suppress(OSError, ValueError):
                    snap = await self.refresh()
                    if predicate(snap):
                        return snap
                await asyncio.sleep(0.2)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""


@contextlib.asynccontextmanager
async def supervised(server: LiveKitServer, tmp_path: Path, name: str, *extra: str,
                     processes: int = 2) -> AsyncIterator[Supervised]:
    port = free_tcp_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LIVEKIT_", "ELEVENLABS_", "SPEECH_ENGINE"))}
    env.update(LIVEKIT_URL=server.url, LIVEKIT_API_KEY=TEST_API_KEY, LIVEKIT_API_SECRET=TEST_API_SECRET)
    log = tmp_path / f"{name}.log"
    with open(log, "wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(ROOT / "runner.py"), "--worker", "--processes", str(processes), "--agent-name", name,
            "--metrics-port", str(port), "--emulator", "--overload-lag-ms", "0",  # dispatch, not capacity
            "--reply", "tone", *extra, cwd=ROOT, env=env,
            stdout=out, stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL)
    sup = Supervised(proc, port, log)
    try:
        await sup.until(lambda s: sum(bool(c.get("registered")) for c in s["children"]) == processes, 90)
        yield sup
    except BaseException:
        print(sup.tail())
        raise
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()


@contextlib.asynccontextmanager
async def caller(server: LiveKitServer, room: str, agent_name: str) -> AsyncIterator[Caller]:
    token = mint_token(TEST_API_KEY, TEST_API_SECRET, room=room, identity="caller", dispatch_agent=agent_name)
    async with Caller(server.url, token, identity="caller") as c:
        yield c


def agents_in(c: Caller) -> list[str]:
    return [p.identity for p in c.room.remote_participants.values()
            if p.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT]


async def test_children_register_share_the_rooms_scrape_as_one_and_restart(livekit_server: LiveKitServer,
                                                                            tmp_path: Path) -> None:
    name = unique("procs")
    async with supervised(livekit_server, tmp_path, name, "--max-jobs", "1") as sup:
        snap = sup.snap
        assert sup.status == 200 and snap["ready"]
        pids = {c["pid"] for c in snap["children"]}
        ids = {c["worker_id"] for c in snap["children"]}
        assert len(pids) == 2 and len(ids) == 2 and all(i.startswith("AW_") for i in ids)
        assert (await asyncio.to_thread(http_get, sup.port, "/healthz"))[0] == 200

        async with caller(livekit_server, unique("a"), name) as a, caller(livekit_server, unique("b"), name) as b:
            # max_jobs 1 each: LiveKit must give one room to each child process.
            snap = await sup.until(lambda s: all(c.get("running") == 1 for c in s["children"]), 30)
            assert sup.status == 503, "every child is at capacity: not ready"
            await wait_for(lambda: len(agents_in(a)) == 1 and len(agents_in(b)) == 1, 30)
            rooms = {c["jobs"][0]["room"]: c for c in snap["children"]}
            assert set(rooms) == {a.room.name, b.room.name}

            # One scrape, both children (their sessions), plus the supervisor's own families.
            status, text = await asyncio.to_thread(http_get, sup.port, "/metrics")
            assert status == 200
            assert 'process="0"' in text and 'process="1"' in text, text[:2000]
            assert "lk_bridge_supervisor_processes_registered 2.0" in text

            # SIGKILL the child with room a: restarted, and the caller sees its agent leave at once.
            victim = rooms[a.room.name]
            gone_identity = victim["jobs"][0]["identity"]
            killed_at = time.monotonic()
            os.kill(victim["pid"], signal.SIGKILL)
            await wait_for(lambda: gone_identity not in agents_in(a), 15)
            left_after = time.monotonic() - killed_at
            snap = await sup.until(lambda s: s["restarts"] == 1 and all(c.get("registered") and c["alive"]
                                                                       for c in s["children"]), 60)
            child = snap["children"][victim["index"]]
            assert child["pid"] != victim["pid"] and child["starts"] == 2
            assert snap["calls_lost"] == 1
            assert agents_in(b) != [], "the other child's call was disturbed"
            assert left_after < 10, f"the dead child's agent stayed {left_after:.1f} s"
    assert sup.proc.returncode in (ExitCode.OK, ExitCode.FORCED), sup.tail()


async def test_sigterm_drains_every_child_and_a_second_one_forces(livekit_server: LiveKitServer,
                                                                  tmp_path: Path) -> None:
    name = unique("drainp")
    async with supervised(livekit_server, tmp_path, name, "--drain-grace", "60") as sup, \
            caller(livekit_server, unique("room"), name) as c:
        await wait_for(lambda: len(agents_in(c)) == 1, 30)
        sup.proc.send_signal(signal.SIGTERM)
        snap = await sup.until(lambda s: s["draining"], 10)
        assert sup.status == 503 and not snap["ready"]
        await asyncio.sleep(1.5)
        assert sup.proc.returncode is None and agents_in(c) != [], "the call ended before its grace"
        # Children idle ones have left already; the one with the call waits for its grace.
        forced_at = time.monotonic()
        sup.proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(sup.proc.wait(), 30)
        assert time.monotonic() - forced_at < 20
        assert code == ExitCode.FORCED, sup.tail()
        await wait_for(lambda: agents_in(c) == [], 15)


async def test_drain_without_calls_exits_ok(livekit_server: LiveKitServer, tmp_path: Path) -> None:
    async with supervised(livekit_server, tmp_path, unique("idle"), processes=1) as sup:
        sup.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(sup.proc.wait(), 30) == ExitCode.OK, sup.tail()


def test_exit_codes_and_argv() -> None:
    assert describe_exit(-9) == "killed by SIGKILL"
    assert describe_exit(4) == "exit 4 (FORCED)"
    assert describe_exit(137) == "exit 137 (signal SIGKILL)"
    assert strip_options(["--worker", "--processes", "3", "--metrics-port=9", "--no-redispatch", "--max-jobs", "2"],
                         {"--processes", "--metrics-port"}, frozenset({"--no-redispatch"})) == \
        ["--worker", "--max-jobs", "2"]


def test_merge_labels_every_child() -> None:
    one = "# HELP x_total things\n# TYPE x_total counter\nx_total{room=\"r\"} 2.0\n"
    two = "# HELP x_total things\n# TYPE x_total counter\nx_total{room=\"s\"} 3.0\n"
    text = merge_expositions([("0", one), ("1", two)], [("own", "gauge", "doc", 1.0)]).decode()
    assert 'x_total{process="0",room="r"} 2.0' in text or 'x_total{room="r",process="0"} 2.0' in text
    assert "process=\"1\"" in text and "own 1.0" in text


def _fake_child(tmp_path: Path, setup: str, in_loop: str = "") -> str:
    """A stand-in for the runner: the supervisor runs ``python <script> … --supervised-fd FD``. After ``setup``
    it reports itself registered every 100 ms (running ``in_loop`` each time) until a SIGTERM ends it (exit 0)."""
    script = tmp_path / "child.py"
    script.write_text("import json, os, signal, sys, time\n"
                      "fd = int(sys.argv[sys.argv.index('--supervised-fd') + 1])\n"
                      "index = int(os.environ['LK_BRIDGE_PROCESS_INDEX'])\n" + setup +
                      "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
                      "while True:\n"
                      "    os.write(fd, (json.dumps({'registered': True, 'running': 0, 'max_jobs': 1}) + '\\n')"
                      ".encode())\n" + in_loop +
                      "    time.sleep(0.1)\n")
    return str(script)


async def test_a_child_that_never_registers_is_a_crash_loop(tmp_path: Path) -> None:
    from transport.backoff import constant
    from transport.supervisor import Supervisor, SupervisorConfig

    script = _fake_child(tmp_path, "sys.exit(1)\n")
    sup = Supervisor(SupervisorConfig(processes=2, child_argv=(), runner_path=script, crash_loop_limit=3),
                     backoff=lambda: constant(0.01))
    started = time.monotonic()
    assert await asyncio.wait_for(sup.run(), 30) == ExitCode.CRASH_LOOP
    assert time.monotonic() - started < 20
    assert sup.children[0].starts == 3 or sup.children[1].starts == 3


async def test_a_refused_configuration_is_not_restarted(tmp_path: Path) -> None:
    from transport.backoff import constant
    from transport.supervisor import Supervisor, SupervisorConfig

    # Child 0 refuses its configuration; child 1 runs until asked to stop (SIGTERM), reporting registered.
    script = _fake_child(tmp_path, "if index == 0: sys.exit(3)\n")
    sup = Supervisor(SupervisorConfig(processes=2, child_argv=(), runner_path=script),
                     backoff=lambda: constant(0.01))
    assert await asyncio.wait_for(sup.run(), 30) == ExitCode.CONFIG
    assert sup.children[0].starts == 1, "a CONFIG exit was restarted"
    # It drained (0), or was still starting when the SIGTERM came (killed by it, before its handler existed).
    assert sup.children[1].proc is not None and sup.children[1].proc.returncode in (0, -signal.SIGTERM)


async def test_a_registered_child_that_dies_is_restarted_and_readiness_follows(tmp_path: Path) -> None:
    from transport.backoff import constant
    from transport.supervisor import Supervisor, SupervisorConfig

    # Registers, then dies after half a second (exit 1) on its first start; runs for ever afterwards.
    marker = tmp_path / "started-once"
    script = _fake_child(tmp_path, f"first = not os.path.exists({str(marker)!r})\n"
                         f"open({str(marker)!r}, 'a').close()\n"
                         "t0 = time.monotonic()\n",
                         in_loop="    if first and time.monotonic() - t0 > 0.5: sys.exit(1)\n")
    sup = Supervisor(SupervisorConfig(processes=1, child_argv=(), runner_path=script),
                     backoff=lambda: constant(0.2))
    task = asyncio.ensure_future(sup.run())
    await wait_for(lambda: sup.ready(), 10)
    await wait_for(lambda: sup.snapshot()["restarts"] == 1 and sup.ready(), 10)
    assert sup.children[0].starts == 2
    sup.request_stop()
    assert not sup.ready(), "ready while draining"
    assert await asyncio.wait_for(task, 15) == ExitCode.OK
