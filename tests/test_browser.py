"""The browser path end to end: Debian's chromium (fake microphone from a WAV) loads the page from the token
server, joins, LiveKit dispatches the worker, the job joins the room, the page plays the agent and shows
captions. A screenshot of the page is saved under ``artifacts/browser/``.

The job runner here is the test's :class:`ToneAgent` (a steady 660 Hz voice, an agent caption, and a user
caption once it hears the page's microphone), so the test checks the production path without depending on
the engine. The page measures what it plays through Web Audio, so "the page hears the agent" is a measured
level and frequency, not just a subscribed track.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.formats import ROOM_RATE
from emulator import Emulator, EmulatorConfig, wire
from emulator.client_tools import call_tool, tool_result
from scripts.livekit_server import LiveKitServer
from tests.bridge_fixtures import ToneAgent, running_worker, unique, wait_for
from tests.cdp import Chromium, Page, find_chromium
from tests.conftest import need
from transport.config import RoomLinkConfig
from transport.session import BridgeSession, EngineSettings, SessionConfig, serve
from transport.token_server import SDK_PATH, WEB_ROOT, TokenServer, TokenServerConfig, dev_open
from transport.worker import JobContext, JobRunner, WorkerConfig

pytestmark = [pytest.mark.livekit, pytest.mark.browser]

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts" / "browser"
RATE = ROOM_RATE


def speech_like_wav(path: Path, seconds_on: float = 1.2, seconds_off: float = 1.3) -> Path:
    """A voiced burst (110 Hz fundamental, decaying harmonics, syllable-rate wobble), then silence.

    Chromium loops the file, so the fake microphone "speaks" every ``seconds_on + seconds_off`` seconds;
    the silence is longer than a VAD's end-of-turn hangover.
    """
    t = np.arange(int(seconds_on * RATE)) / RATE
    voice = sum(np.sin(2 * np.pi * 110 * k * t) / k for k in range(1, 12))
    voice *= 0.6 + 0.4 * np.sin(2 * np.pi * 4 * t)  # ~4 syllables a second
    ramp = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.02)
    burst = voice / np.max(np.abs(voice)) * 0.35 * ramp
    samples = np.concatenate([burst, np.zeros(int(seconds_off * RATE))])
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes((samples * 32767).astype(np.int16).tobytes())
    return path


@pytest.fixture
def chromium_binary() -> str:
    binary = find_chromium()
    if binary is None:
        need("Debian's chromium is not installed (apt-get install chromium; `make chromium`)")
    if not (WEB_ROOT / SDK_PATH).is_file():
        need("livekit-client is not installed for the page (npm ci --prefix web)")
    assert binary is not None
    return binary


@contextlib.asynccontextmanager
async def browser_page(binary: str, tmp_path: Path, *, seconds_off: float = 1.3) -> AsyncIterator[Page]:
    wav = speech_like_wav(tmp_path / "mic.wav", seconds_off=seconds_off)
    async with Chromium(binary, tmp_path / "profile", fake_audio=wav) as browser:
        yield await browser.new_page()


@contextlib.asynccontextmanager
async def production_path(server: LiveKitServer, runner: JobRunner, agent_name: str) -> AsyncIterator[str]:
    """A worker registered under ``agent_name`` and a token server dispatching it; yields the page URL."""
    worker_config = WorkerConfig(url=server.url, api_key=server.api_key, api_secret=server.api_secret,
                                 agent_name=agent_name, max_jobs=2,
                                 overload_lag_s=None)  # Chromium shares the machine: slots decide here
    token_config = TokenServerConfig(livekit_url=server.url, api_key=server.api_key,
                                     api_secret=server.api_secret, agent_name=agent_name, authorize=dev_open())
    async with running_worker(worker_config, runner), TokenServer(token_config) as tokens:
        yield tokens.url


async def state(page: Page) -> dict[str, Any]:
    value = await page.evaluate("JSON.parse(JSON.stringify(window.bridgeState))")
    assert isinstance(value, dict)
    return value


async def test_page_joins_gets_the_agent_and_shows_captions(livekit_server: LiveKitServer, chromium_binary: str,
                                                            tmp_path: Path) -> None:
    started = time.monotonic()
    agent = ToneAgent(660.0, caption="Hello from the tone agent.", legacy_caption="Also as a packet.")
    name, room = unique("web"), unique("web-room")
    async with production_path(livekit_server, agent, name) as site, \
            browser_page(chromium_binary, tmp_path) as page:
        try:
            await page.navigate(f"{site}/?room={room}&identity=web-user")
            assert await page.evaluate("window.bridgeState.connection") == "disconnected"
            await page.evaluate("document.getElementById('join').click()", user_gesture=True)
            await page.wait_for("window.bridgeState.connection === 'connected' && window.bridgeState.micPublished",
                                timeout=30)

            # LiveKit dispatched the worker into the page's room, and the job joined it.
            await wait_for(lambda: any(r.ctx.room_name == room and r.joined.is_set() for r in agent.jobs.values()),
                           timeout=30)
            (record,) = agent.jobs.values()
            await page.wait_for(f"window.bridgeState.agentIdentity === {record.ctx.identity!r}", timeout=20)

            # The page plays the agent's voice: a measured 660 Hz for more than two seconds.
            await page.wait_for("window.bridgeState.agentAudio.loudMs > 2000", timeout=30)
            s = await state(page)
            assert s["agentAudioPlaying"], s["agentAudio"]
            assert abs(s["agentAudio"]["peakHz"] - 660.0) < 15.0, s["agentAudio"]

            # The fake microphone's speech reached the job, which captioned it on the user's behalf, and the
            # agent's own caption arrived: both through lk.transcription text streams.
            await asyncio.wait_for(record.heard_user.wait(), 30)
            await page.wait_for("window.bridgeState.captions.filter(c => c.final).length >= 3", timeout=20)
            captions = {(c["role"], c["source"]): c for c in (await state(page))["captions"]}
            expected = {("agent", "text-stream"), ("agent", "transcription"), ("user", "text-stream")}
            assert set(captions) == expected, captions
            agent_caption = captions["agent", "text-stream"]
            assert agent_caption["text"] == "Hello from the tone agent."
            assert agent_caption["speaker"] == record.ctx.identity
            assert captions["agent", "transcription"]["text"] == "Also as a packet."
            user_caption = captions["user", "text-stream"]
            assert user_caption["text"] == "[speech heard]" and user_caption["speaker"] == "web-user"
            await page.wait_for("document.querySelectorAll('#captions li').length >= 3")
            assert "Hello from the tone agent." in await page.evaluate("document.getElementById('captions').innerText")

            shot = await page.screenshot(ARTIFACTS / "tone-agent.png")
            assert shot.stat().st_size > 5000

            await page.evaluate("document.getElementById('leave').click()")
            await page.wait_for("window.bridgeState.connection === 'disconnected'", timeout=20)
            assert page.exceptions == []
        except BaseException:
            with contextlib.suppress(Exception):
                await page.screenshot(ARTIFACTS / "tone-agent-failure.png")
            print(page.diagnostics())
            raise
    print(f"browser test took {time.monotonic() - started:.1f} s")


async def test_a_bad_name_in_the_url_shows_the_servers_message(livekit_server: LiveKitServer,
                                                               chromium_binary: str, tmp_path: Path) -> None:
    async with production_path(livekit_server, ToneAgent(), unique("web-bad")) as site, \
            browser_page(chromium_binary, tmp_path) as page:
        await page.navigate(f"{site}/?room=bad%20room&identity=web-user")
        await page.evaluate("document.getElementById('join').click()", user_gesture=True)
        message = await page.wait_for("window.bridgeState.error", timeout=20)
        assert "'room' must be 1-64 characters" in message
        assert await page.evaluate("window.bridgeState.connection") == "disconnected"
        assert await page.evaluate("document.getElementById('error').hidden") is False


def bridge_job_runner(engine: EngineSettings, sessions: list[BridgeSession]) -> JobRunner:
    """The production job: one BridgeSession in the job's room, until it ends or the server ends the job."""

    async def run(ctx: JobContext) -> None:
        session = BridgeSession(SessionConfig(room=RoomLinkConfig(ctx.url, ctx.token, identity=ctx.identity),
                                              engine=engine, linger_s=2.0))
        sessions.append(session)
        await serve(session, ctx.termination)

    return run


@contextlib.asynccontextmanager
async def bridged_page(server: LiveKitServer, binary: str, tmp_path: Path, prefix: str,
                       emulator_config: EmulatorConfig, *, seconds_off: float,
                       shot: str) -> AsyncIterator[tuple[Emulator, Page, list[BridgeSession]]]:
    """The production path with the real bridge: the emulator, a worker whose jobs are BridgeSessions, the token
    server, and the page joined to a room of its own with its one session started. A failure inside leaves
    ``artifacts/browser/<shot>-failure.png`` and the page's diagnostics."""
    name, room = unique(f"web-{prefix}"), unique(f"{prefix}-room")
    sessions: list[BridgeSession] = []
    async with Emulator(emulator_config) as emu:
        engine = EngineSettings(api_key=emu.api_key, agent_id=emulator_config.agent_id, api_base=emu.rest_base_url)
        async with production_path(server, bridge_job_runner(engine, sessions), name) as site, \
                browser_page(binary, tmp_path, seconds_off=seconds_off) as page:
            try:
                await page.navigate(f"{site}/?room={room}&identity=web-user")
                await page.evaluate("document.getElementById('join').click()", user_gesture=True)
                await page.wait_for("window.bridgeState.connection === 'connected'", timeout=30)
                await wait_for(lambda: len(sessions) == 1, timeout=30)
                yield emu, page, sessions
            except BaseException:
                with contextlib.suppress(Exception):
                    await page.screenshot(ARTIFACTS / f"{shot}-failure.png")
                with contextlib.suppress(Exception):
                    print("page state:", json.dumps(await state(page))[:4000])
                for session in sessions:
                    link = session.agent_state
                    print(f"agent state: {link.machine.state.value}, attribute calls {link.calls}, "
                          f"failed {link.failed}, coalesced {link.coalesced}")
                    print("session stats:", session.stats())
                print(page.diagnostics())
                raise


async def test_the_page_talks_to_the_engine_through_the_bridge(livekit_server: LiveKitServer,
                                                               chromium_binary: str, tmp_path: Path) -> None:
    """Page joins → worker dispatched → the fake microphone's speech reaches the emulator → its reply (a
    660 Hz tone) plays in the page → user and agent captions appear."""
    started = time.monotonic()
    emulator_config = EmulatorConfig(reply_mode="tone", tone_hz=660.0, tone_ms=1500.0)
    async with bridged_page(livekit_server, chromium_binary, tmp_path, "bridge", emulator_config,
                            seconds_off=4.8, shot="bridge") as (emu, page, sessions):
        identity = sessions[0].config.room.identity
        await page.wait_for(f"window.bridgeState.agentIdentity === {identity!r}", timeout=20)

        # The microphone's speech reached the engine: the emulator's VAD found a user turn in it.
        conversation = await emu.next_conversation(timeout=30)
        await conversation.wait_for(lambda: len(conversation.utterances) >= 1, timeout=30)
        heard_ms = [(u.end_sample - u.start_sample) * 1000 // conversation.input_format.rate
                    for u in conversation.utterances]
        assert 800 <= heard_ms[0] <= 2000, heard_ms  # the WAV speaks for 1.2 s at a time

        # Its reply plays in the page, measured there: 660 Hz for more than a second.
        reply = await conversation.next_reply(timeout=20)
        assert reply.mode == "tone"
        await page.wait_for("window.bridgeState.agentAudio.loudMs > 1000", timeout=20)
        peaks = []
        for _ in range(3):
            peaks.append(await page.evaluate("window.bridgeState.agentAudio.peakHz"))
            if abs(peaks[-1] - 660.0) < 15.0:
                break
            await asyncio.sleep(0.3)
        assert any(abs(p - 660.0) < 15.0 for p in peaks), peaks

        # Captions: what the engine heard (user) and what it answered (agent), as LiveKit text streams.
        await page.wait_for("window.bridgeState.captions.some(c => c.role === 'user' && c.final) && "
                            "window.bridgeState.captions.some(c => c.role === 'agent')", timeout=20)
        captions = (await state(page))["captions"]
        user = next(c for c in captions if c["role"] == "user")
        agent = next(c for c in captions if c["role"] == "agent")
        assert user["speaker"] == "web-user" and "ms of user speech" in user["text"], captions
        assert agent["speaker"] == identity and agent["text"] == reply.text, captions
        await page.screenshot(ARTIFACTS / "bridge.png")
        await page.evaluate("document.getElementById('leave').click()")
        await page.wait_for("window.bridgeState.connection === 'disconnected'", timeout=20)
        assert page.exceptions == []
    print(f"full browser test took {time.monotonic() - started:.1f} s")


def _runs(states: list[str], *runs: list[str]) -> bool:
    """Do ``runs`` appear in ``states`` in this order, each as consecutive entries?"""
    at = 0
    for run in runs:
        while at + len(run) <= len(states) and states[at:at + len(run)] != run:
            at += 1
        if at + len(run) > len(states):
            return False
        at += len(run)
    return True


async def test_the_page_sees_the_agent_state_and_captions_cut_at_a_barge_in(livekit_server: LiveKitServer,
                                                                          chromium_binary: str,
                                                                          tmp_path: Path) -> None:
    """The page reads ``lk.agent.state`` as LiveKit frontends do: listening → thinking → speaking → listening
    across a turn (the fake microphone speaks, the emulator answers with a short tone), then speaking →
    listening when the engine interrupts a long reply; the agent's caption of that reply is cut to the part
    that played."""
    emulator_config = EmulatorConfig(reply_mode="tone", tone_hz=660.0, tone_ms=800.0)
    async with bridged_page(livekit_server, chromium_binary, tmp_path, "state", emulator_config,
                            seconds_off=60.0, shot="agent-state") as (emu, page, _sessions):
        conversation = await emu.next_conversation(timeout=30)

        # A turn: the microphone's speech ends, the engine answers, the answer plays to its end.
        reply = await conversation.next_reply(timeout=30)
        await page.wait_for("window.bridgeState.agentState === 'listening' && "
                            "window.bridgeState.agentStates.some(s => s.state === 'speaking')", timeout=20)
        seen = [s["state"] for s in (await state(page))["agentStates"]]
        assert _runs(seen, ["listening", "thinking", "speaking", "listening"]), seen
        await page.wait_for("window.bridgeState.agentTurn !== null", timeout=10)
        turn = (await state(page))["agentTurn"]
        assert turn["turn"] == 1 and emulator_config.think_time_ms < turn["reply_ms"] < 5000, turn

        # A barge-in: a long reply with words, interrupted by the engine while it plays.
        mark = len(seen)
        long_reply = conversation.trigger_reply("tone", ms=6000.0, transcript="tell me a long story")
        await page.wait_for("window.bridgeState.agentState === 'speaking'", timeout=20)
        words = " ".join(f"word{i:02d}" for i in range(30))
        conversation.send(wire.agent_response(words, long_reply.event_id), "agent_response",
                          long_reply.event_id)
        await asyncio.sleep(1.5)
        assert conversation.interrupt()
        await page.wait_for("window.bridgeState.agentState === 'listening'", timeout=20)
        seen = [s["state"] for s in (await state(page))["agentStates"]]
        assert _runs(seen[mark:], ["thinking", "speaking", "listening"]), seen

        # The caption of the cut reply: final, a prefix of its text ending at a word, well short of it.
        segment = f"agent-{conversation.conversation_id}-{long_reply.event_id}"
        await page.wait_for(f"window.bridgeState.captions.some(c => c.id === {segment!r} && c.final)",
                            timeout=20)
        caption = next(c for c in (await state(page))["captions"] if c["id"] == segment)
        full = f"{long_reply.text} {words}"
        assert caption["role"] == "agent" and caption["text"], caption
        assert full.startswith(caption["text"]) and full[len(caption["text"])] == " ", caption
        assert len(caption["text"]) < 0.6 * len(full), caption
        shown = await page.evaluate("document.getElementById('captions').innerText")
        assert caption["text"] in shown and "word29" not in shown
        assert await page.evaluate("document.getElementById('agent-state').textContent") == "listening"
        assert (await state(page))["agentTurn"]["interruption_ms"] < 50
        assert any(c["id"] == f"agent-{conversation.conversation_id}-{reply.event_id}" and c["final"]
                   and c["text"] == reply.text for c in (await state(page))["captions"])
        await page.screenshot(ARTIFACTS / "agent-state.png")
        assert page.exceptions == []


async def test_the_page_answers_the_agents_tool_call_and_its_chat_reaches_the_engine(
        livekit_server: LiveKitServer, chromium_binary: str, tmp_path: Path) -> None:
    """The engine (emulator) calls the page's ``set_theme`` RPC tool through the bridge and gets its answer; a
    message typed into the page's chat box reaches the engine as ``user_message``."""
    emulator_config = EmulatorConfig(reply_mode="tone", tone_hz=660.0, tone_ms=300.0)
    async with bridged_page(livekit_server, chromium_binary, tmp_path, "tools", emulator_config,
                            seconds_off=4.8, shot="tools-chat") as (emu, page, sessions):
        session = sessions[0]
        conversation = await emu.next_conversation(timeout=30)
        await conversation.wait_for(lambda: conversation.init is not None, timeout=20)
        await wait_for(lambda: "web-user" in session.room.callers, timeout=20)

        # The agent calls the page's tool: the page runs it and its answer is the engine's result.
        call_id = call_tool(conversation, "set_theme", {"theme": "dark"})
        result = await tool_result(conversation, call_id, timeout=20)
        assert (result.result, result.is_error) == ("The page now uses the dark theme.", False)
        assert await page.evaluate("document.body.dataset.theme") == "dark"
        calls = (await state(page))["toolCalls"]
        assert [(c["method"], c["caller"], c["params"]) for c in calls] == \
            [("set_theme", session.config.room.identity, {"theme": "dark"})]
        # A refusal in the page (its RpcError) reaches the engine as an error result with its message.
        call_id = call_tool(conversation, "set_theme", {"theme": "pink"})
        refused = await tool_result(conversation, call_id, timeout=20)
        assert refused.is_error and 'unknown theme "pink"' in refused.result, refused
        assert await page.evaluate("document.body.dataset.theme") == "dark"

        # A chat message typed into the page reaches the engine as a user message.
        await page.wait_for("!document.getElementById('chat-send').disabled", timeout=10)
        await page.evaluate("document.getElementById('chat-input').focus()")
        await page.send("Input.insertText", {"text": "Hello from the page's chat box"})
        await page.evaluate("document.getElementById('chat-send').click()")

        def typed() -> list[str | None]:
            return [m.text for m in conversation.client_messages if isinstance(m, wire.UserMessage)]

        await conversation.wait_for(lambda: bool(typed()), timeout=20)
        assert typed() == ["Hello from the page's chat box"]
        assert await page.evaluate("document.getElementById('chat-input').value") == ""
        stats = session.stats()
        assert stats.tools is not None and stats.tools.forwarded == 1 and stats.tools.errors == 1
        assert stats.chat is not None and stats.chat.sent == 1
        await page.screenshot(ARTIFACTS / "tools-chat.png")
        await page.evaluate("document.getElementById('leave').click()")
        await page.wait_for("window.bridgeState.connection === 'disconnected'", timeout=20)
        assert page.exceptions == []
