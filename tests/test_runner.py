"""``runner.py`` as a user runs it: one-line errors, the embedded emulator, a clean stop on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from scripts.caller import Caller, tone
from scripts.livekit_server import LiveKitServer
from tests.conftest import TEST_API_KEY, TEST_API_SECRET
from transport.livekit_token import mint_token

ROOT = Path(__file__).resolve().parents[1]
FAKE_XI_KEY = "sk_runnertest_0123456789abcdef"


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items()
                if not k.startswith(("LIVEKIT_", "ELEVENLABS_", "SPEECH_ENGINE"))}
    full_env.update(env or {})
    return subprocess.run([sys.executable, str(ROOT / "runner.py"), *args], env=full_env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False)


def last_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert lines, result.stderr[-2000:]
    return lines[-1]


def test_no_livekit_server_is_one_clear_line() -> None:
    result = run("--room", "x", "--emulator", env={"LIVEKIT_URL": "ws://127.0.0.1:9"})
    assert result.returncode == 1
    assert "nothing is listening" in last_line(result)


def test_unknown_format_is_refused_before_anything_starts() -> None:
    result = run("--room", "x", "--input-format", "pcm_11025")
    assert result.returncode == 2
    assert "invalid choice: 'pcm_11025'" in result.stderr


@pytest.mark.parametrize("mode", [["--worker"], ["--room", "x"]])
def test_no_engine_configured_is_refused_instead_of_a_silent_emulator(mode: list[str]) -> None:
    # Before: with no credentials the runner quietly started the embedded emulator, which then answered real
    # callers (and, as a worker, every dispatched room) with a test voice.
    result = run(*mode, env={"LIVEKIT_URL": "ws://127.0.0.1:9", "LIVEKIT_API_KEY": "k", "LIVEKIT_API_SECRET": "s"})
    assert result.returncode == 3  # ExitCode.CONFIG: restarting cannot help
    line = last_line(result)
    assert "no Speech Engine configured" in line and "--emulator" in line


def test_a_worker_without_livekit_credentials_is_refused() -> None:
    # Before: a worker fell back to ws://127.0.0.1:7880 with devkey/secret without a word.
    result = run("--worker", env={"ELEVENLABS_API_KEY": FAKE_XI_KEY, "SPEECH_ENGINE_ID": "seng_x"})
    assert result.returncode == 3  # ExitCode.CONFIG
    line = last_line(result)
    assert "LIVEKIT_URL" in line and "LIVEKIT_API_SECRET" in line
    assert FAKE_XI_KEY not in result.stderr


def test_half_the_engine_credentials_is_a_clear_error_without_the_key() -> None:
    result = run("--room", "x", env={"ELEVENLABS_API_KEY": FAKE_XI_KEY})
    assert result.returncode == 3  # ExitCode.CONFIG: a configuration refused, restarting cannot help
    assert "SPEECH_ENGINE_ID" in last_line(result)
    assert FAKE_XI_KEY not in result.stderr + result.stdout


@pytest.mark.livekit
def test_bad_livekit_credentials_say_so_and_leak_nothing(livekit_server: LiveKitServer) -> None:
    wrong_secret = "not-the-secret-0123456789abcdefghijklmn"
    result = run("--room", "x", "--emulator", env={"LIVEKIT_URL": livekit_server.url,
                                                   "LIVEKIT_API_KEY": TEST_API_KEY, "LIVEKIT_API_SECRET": wrong_secret})
    assert result.returncode == 1
    assert "refused the token" in last_line(result)
    assert wrong_secret not in result.stderr + result.stdout


@pytest.mark.livekit
def test_unreachable_engine_is_a_clear_error_with_the_url_redacted(livekit_server: LiveKitServer) -> None:
    signature = "sigRUNNERTEST0123456789"
    result = run("--room", "unreachable", "--start", "immediately",
                 "--engine-url", f"ws://127.0.0.1:9/v1/convai/conversation?agent_id=a&token={signature}",
                 env={"LIVEKIT_URL": livekit_server.url, "LIVEKIT_API_KEY": TEST_API_KEY,
                      "LIVEKIT_API_SECRET": TEST_API_SECRET}, timeout=120)
    assert result.returncode == 1
    line = last_line(result)
    assert "engine" in line.lower()
    assert signature not in result.stderr + result.stdout


@pytest.mark.livekit
async def test_runner_bridges_a_room_with_the_embedded_emulator_and_stops_on_sigterm(
        livekit_server: LiveKitServer) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ELEVENLABS_", "SPEECH_ENGINE"))}
    env.update(LIVEKIT_URL=livekit_server.url, LIVEKIT_API_KEY=TEST_API_KEY, LIVEKIT_API_SECRET=TEST_API_SECRET)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "runner.py"), "--room", "runner-e2e", "--emulator", "--reply", "echo", "--json-logs",
        env=env, cwd=ROOT, stderr=asyncio.subprocess.PIPE)
    token = mint_token(TEST_API_KEY, TEST_API_SECRET, room="runner-e2e", identity="rita")
    try:
        async with Caller(livekit_server.url, token, identity="rita") as rita:
            async with asyncio.timeout(20):
                while "elevenlabs-agent" not in rita.heard:
                    await asyncio.sleep(0.05)
            heard = rita.heard["elevenlabs-agent"]
            rita.say(tone(520.0, 1.0))
            await rita.wait_said()
            said_ns = time.monotonic_ns()
            async with asyncio.timeout(15):
                while heard.first_loud_after(said_ns, 1000) is None:
                    await asyncio.sleep(0.05)
            await asyncio.sleep(1.2)
            echo = heard.since(said_ns)
            loud = echo[np.abs(echo.astype(np.int32)) > 1000]
            assert loud.size > 0.5 * 48_000
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            code = await proc.wait()
        assert code == 0
        assert proc.stderr is not None
        logs = (await proc.stderr.read()).decode()
        assert "mode: DEV, the embedded Speech Engine emulator" in logs
        assert '"level"' in logs.splitlines()[0]  # JSON lines
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# ------------------------------------------------------------------------------------------ stopping


class Blackhole:
    """A TCP port that accepts connections and never answers: a LiveKit server that hangs mid-connect."""

    async def __aenter__(self) -> Blackhole:
        self.writers: list[asyncio.StreamWriter] = []

        async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.writers.append(writer)

        self.server = await asyncio.start_server(hold, "127.0.0.1", 0)
        self.url = f"ws://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        for writer in self.writers:
            writer.close()
        self.server.close()


async def start_runner(*args: str, url: str, ready: str) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LIVEKIT_", "ELEVENLABS_", "SPEECH_ENGINE"))}
    env.update(LIVEKIT_URL=url, LIVEKIT_API_KEY=TEST_API_KEY, LIVEKIT_API_SECRET=TEST_API_SECRET,
               PYTHONUNBUFFERED="1")
    proc = await asyncio.create_subprocess_exec(sys.executable, str(ROOT / "runner.py"), *args, env=env, cwd=ROOT,
                                                stderr=asyncio.subprocess.PIPE)
    assert proc.stderr is not None
    async with asyncio.timeout(60):
        while ready not in (await proc.stderr.readline()).decode():
            pass
    return proc


async def stopped_within(proc: asyncio.subprocess.Process, seconds: float) -> tuple[int | None, float, str]:
    started = time.monotonic()
    assert proc.stderr is not None
    try:
        err = await asyncio.wait_for(proc.stderr.read(), seconds)
        await asyncio.wait_for(proc.wait(), 1)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return None, time.monotonic() - started, ""
    return proc.returncode, time.monotonic() - started, err.decode()


async def test_sigterm_while_the_worker_connects_stops_at_once() -> None:
    # Before: the drain waited for the connection attempt's open timeout (10 s; measured 5.6 s after SIGTERM).
    async with Blackhole() as hole:
        proc = await start_runner("--worker", "--emulator", url=hole.url, ready="worker for agent")
        await asyncio.sleep(0.5)  # the worker is now inside its connect
        proc.send_signal(signal.SIGTERM)
        code, took, err = await stopped_within(proc, 20)
    assert code == 0, err[-2000:]
    assert took < 3.0, f"{took:.1f} s"


async def test_a_second_sigterm_forces_the_exit() -> None:
    # The room mode's first SIGTERM waits for the room connect (15 s against a blackhole); a second one
    # exits at once with a code that says so. Before: the second signal did nothing more.
    async with Blackhole() as hole:
        proc = await start_runner("--room", "r", "--emulator", url=hole.url, ready="bridging room")
        await asyncio.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        code, took, err = await stopped_within(proc, 20)
    assert code == 4, err[-2000:]  # ExitCode.FORCED
    assert took < 3.0, f"{took:.1f} s"
    assert "exiting now, without a clean shutdown" in err


def test_max_jobs_defaults_to_the_measured_capacity() -> None:
    # Before: 50, then 10; one process was measured to carry 6 (benchmarks/README.md, Scaling, quiet machine).
    from runner import MEASURED_SESSIONS_PER_PROCESS, parse_args

    assert parse_args(["--worker"]).max_jobs == MEASURED_SESSIONS_PER_PROCESS == 6


@pytest.mark.parametrize(("option", "message"), [
    (["--dynamic-var", "1bad=2"], "--dynamic-var takes name=value"),
    (["--override-json", '{"agent": {"voice": "x"}}'], "--override-json.agent.voice is not a client-overridable"),
    (["--override-json", "@/nonexistent/override.json"], "cannot read '/nonexistent/override.json'"),
    (["--first-message", "A", "--override-json", '{"agent": {"first_message": "B"}}'], "given twice"),
])
def test_bad_start_options_are_one_clear_line_before_anything_starts(option: list[str], message: str) -> None:
    result = run("--room", "x", "--emulator", *option, env={"LIVEKIT_URL": "ws://127.0.0.1:9"})
    assert result.returncode == 3  # ExitCode.CONFIG
    assert message in last_line(result)
