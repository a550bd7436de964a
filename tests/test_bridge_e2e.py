"""The bridge end to end: real livekit-server, real rtc callers, the emulator as the engine.

Every test asserts on audio: what the emulator received (level, rate, correlation with what the caller said)
and what the caller heard (the echo, silence after a barge-in).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import numpy as np
import pytest

from core.formats import caller_rate_for, parse_format
from core.signals import dominant_hz, rms_dbfs, voiced_s
from emulator import Emulator, EmulatorConfig
from scripts.caller import RATE, Caller, Heard, tone
from scripts.livekit_server import LiveKitServer
from tests.conftest import TEST_API_KEY, TEST_API_SECRET
from transport.config import RoomLinkConfig
from transport.engine_client import EngineClient
from transport.livekit_token import mint_token
from transport.session import BridgeSession, EngineSettings, SessionConfig

pytestmark = pytest.mark.livekit

AGENT = "bridge-agent"
LOUD = 1000


def voice(seconds: float, freq: float = 300.0, rate: int = RATE, level: float = 0.3) -> np.ndarray:
    """A harmonic test voice with a slow envelope, easy to find again by correlation after any codec."""
    t = np.arange(int(seconds * rate)) / rate
    wave = np.sin(2 * np.pi * freq * t) + 0.5 * np.sin(2 * np.pi * 2 * freq * t + 1.0)
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 3 * t)
    return (wave / 1.5 * envelope * level * 32767).astype(np.int16)


async def until(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


async def played_out(heard: Heard, since_ns: int, quiet_ms: int = 400, timeout: float = 15.0) -> None:
    """Until the agent, having spoken after ``since_ns``, has been quiet for ``quiet_ms``."""
    async with asyncio.timeout(timeout):
        while True:
            last = heard.last_loud_time(LOUD)
            if last is not None and last >= since_ns and time.monotonic_ns() - last > quiet_ms * 1_000_000:
                return
            await asyncio.sleep(0.05)


Bridge = Callable[..., Awaitable[tuple[BridgeSession, Emulator]]]


def bridge_session(server: LiveKitServer, emu: Emulator, room: str, *,
                   client_factory: Callable[..., EngineClient] = EngineClient, **options: Any) -> BridgeSession:
    """A bridge session joining ``room`` as the agent, its engine the emulator ``emu`` (not started yet)."""
    engine = EngineSettings(api_key=emu.api_key, agent_id=emu.config.agent_id, api_base=emu.rest_base_url)
    token = mint_token(TEST_API_KEY, TEST_API_SECRET, room=room, identity=AGENT, agent=True)
    link = RoomLinkConfig(server.url, token, identity=AGENT, api_key=TEST_API_KEY, api_secret=TEST_API_SECRET)
    return BridgeSession(SessionConfig(room=link, engine=engine, **options), client_factory=client_factory)


@pytest.fixture
async def bridge(livekit_server: LiveKitServer, request: pytest.FixtureRequest) -> AsyncIterator[Bridge]:
    """Start an emulator and a bridge session in a fresh room; both stop after the test."""
    started: list[tuple[BridgeSession, Emulator]] = []

    async def start(room: str, **emulator: object) -> tuple[BridgeSession, Emulator]:
        emu = Emulator(EmulatorConfig(**emulator))  # type: ignore[arg-type]
        await emu.start()
        session = bridge_session(livekit_server, emu, room, start_when="immediately", end_when_empty=False)
        await session.start()
        started.append((session, emu))
        return session, emu

    yield start
    for session, emu in started:
        await session.stop()
        await emu.stop()


def caller(server: LiveKitServer, room: str, identity: str) -> Caller:
    return Caller(server.url, mint_token(TEST_API_KEY, TEST_API_SECRET, room=room, identity=identity),
                  identity=identity)


async def agent_heard(c: Caller) -> Heard:
    await until(lambda: AGENT in c.heard)
    return c.heard[AGENT]


async def connected(session: BridgeSession, c: Caller) -> Heard:
    """Until both directions flow: the caller hears the agent's track and the bridge gets 100 ms of the
    caller's. Either subscription can complete first; speech said before the bridge subscribed is lost to
    any listener, so a test that measures what the engine heard must not start talking before then."""
    heard = await agent_heard(c)

    def bridge_hears() -> bool:
        stats = session.uplink.mixer.stats if session.uplink is not None else {}
        return c.identity in stats and stats[c.identity].samples_in >= RATE // 10

    await until(bridge_hears)
    return heard


async def test_caller_is_heard_by_the_engine_and_the_echo_comes_back(
        livekit_server: LiveKitServer, bridge: Bridge) -> None:
    session, emu = await bridge("echo", reply_mode="echo")
    conversation = await emu.next_conversation()
    said = voice(1.0, 300.0)
    async with caller(livekit_server, "echo", "alice") as alice:
        heard = await connected(session, alice)
        alice.say(said)
        await alice.wait_said()
        stopped_ns = time.monotonic_ns()
        reply = await conversation.next_reply(timeout=10)
        await until(lambda: heard.first_loud_after(stopped_ns, LOUD) is not None, 10)
        await played_out(heard, stopped_ns)  # the whole echo plays at real time

    # The engine got the caller's voice in its own format and rate, at the level it was sent.
    fmt = parse_format(emu.config.input_format)
    got = conversation.received_audio()
    loud = np.flatnonzero(np.abs(got.astype(np.int32)) > LOUD)
    # voice() is 1 s whose quietest 10 ms frame is -30 dBFS. WebRTC's receiver (NetEq) may shorten it a little
    # when it catches up after a stall on a loaded machine ("accelerate"); a lost start or a gap loses more.
    assert voiced_s(got, fmt.rate) >= 0.85, f"engine heard {voiced_s(got, fmt.rate):.2f} s of the caller"
    middle = got[loud[0] + fmt.rate // 5: loud[-1] - fmt.rate // 5]
    assert abs(dominant_hz(middle, fmt.rate) - 300.0) < 8
    assert abs(rms_dbfs(middle) - rms_dbfs(said)) < 4
    assert reply.event_id >= 1

    # ...and the caller heard the echo of its own voice.
    echo = heard.since(stopped_ns)
    loud_echo = np.flatnonzero(np.abs(echo.astype(np.int32)) > LOUD)
    assert voiced_s(echo, RATE) >= 0.85 * voiced_s(reply.samples, reply.rate), "the echo was cut short"
    body = echo[loud_echo[0] + RATE // 5: loud_echo[-1] - RATE // 5]
    assert abs(dominant_hz(body, RATE) - 300.0) < 8
    assert session.metrics()["downlink"]["underruns"] == 0


async def test_barge_in_silences_the_agent_and_late_stale_audio_stays_out(
        livekit_server: LiveKitServer, bridge: Bridge) -> None:
    # The interruption carries the next turn's id, 5 chunks of the old reply still arrive after it, and the
    # next reply shares the interruption's id (elevenlabs-python #829): stale chunks must be dropped, the
    # new reply must be played.
    session, emu = await bridge("barge", reply_mode="speech", speech_ms=8000, stale_chunks_after_interrupt=5,
                                interrupt_id_mode="next_turn", reply_shares_interrupt_id=True)
    conversation = await emu.next_conversation()
    async with caller(livekit_server, "barge", "bob") as bob:
        heard = await connected(session, bob)
        bob.say(voice(0.5, 250.0))
        await bob.wait_said()
        first = await conversation.next_reply(timeout=10)
        await until(lambda: heard.first_loud_after(first.trigger_ns, LOUD) is not None, 10)
        await asyncio.sleep(1.0)  # well into an 8 s reply, most of which is already buffered in the bridge
        bob.say(voice(0.6, 250.0))
        await until(lambda: len(session.interruptions) > 0, 10)
        interrupted = session.interruptions[0]
        await bob.wait_said()
        second = await conversation.next_reply(timeout=10)
        await until(lambda: heard.first_loud_after(second.trigger_ns, LOUD) is not None, 10)
        await asyncio.sleep(0.5)

    assert first.interrupted_ns is not None and first.stale_chunks_sent == 5
    assert second.event_id == first.interruption_id  # the case the "<=" gate gets wrong
    # At the bridge: the flush happened inside the reader callback, and seconds of burst were dropped.
    assert interrupted["silenced_ns"] - interrupted["recv_ns"] < 5_000_000
    assert interrupted["dropped_samples"] > RATE
    assert session.metrics()["protocol"]["stale_audio_chunks"] == 5
    # At the caller: silence soon after the interruption, kept until the new reply (no stale chunk played).
    gap = heard.since(interrupted["recv_ns"] + 300_000_000)
    resumed = heard.first_loud_after(interrupted["recv_ns"] + 300_000_000, LOUD)
    assert resumed is not None and resumed >= second.trigger_ns
    last_old = max((t for t, f in zip(heard.times_ns, heard.frames, strict=True)
                    if t < second.trigger_ns and f.size and int(np.max(np.abs(f.astype(np.int32)))) > LOUD),
                   default=None)
    assert last_old is not None
    assert last_old - interrupted["recv_ns"] < 250_000_000, (last_old - interrupted["recv_ns"]) / 1e6
    assert gap.size > 0


def band_level(samples: np.ndarray, rate: int, freq: float) -> float:
    """Magnitude of the Hann-windowed projection onto ``freq``, normalised by length.

    A projection, not the nearest FFT bin: half a 10 ms chunk is 5 ms, whose bins are 200 Hz apart, so 300 and
    700 Hz fall between bins. Their sum and difference (and twice each) are whole bins, where a Hann window's
    transform is zero, so neither tone leaks into the other's level.
    """
    n = samples.size
    basis = np.exp(-2j * np.pi * freq * np.arange(n) / rate)
    return float(np.abs(np.dot(samples.astype(np.float64) * np.hanning(n), basis))) / n


async def test_two_callers_reach_the_engine_mixed_never_interleaved(
        livekit_server: LiveKitServer, bridge: Bridge) -> None:
    session, emu = await bridge("duo", reply_mode="tone", barge_in=False, think_time_ms=60_000)
    conversation = await emu.next_conversation()
    async with caller(livekit_server, "duo", "ann") as ann, caller(livekit_server, "duo", "ben") as ben:
        await until(lambda: len(session.room.callers) == 2)
        await agent_heard(ann)
        await agent_heard(ben)
        assert session.uplink is not None
        mixer = session.uplink.mixer
        # Both callers' tracks are subscribed and their (silent) audio flows before the test window opens.
        await until(lambda: all(c in mixer.stats and mixer.stats[c].samples_in > RATE for c in ("ann", "ben")))
        mark = conversation.received_audio().size
        starved_before = {c: session.uplink.mixer.stats[c].starved_samples for c in ("ann", "ben")}
        ann.say(tone(300.0, 2.0, amplitude=0.2))
        ben.say(tone(700.0, 2.0, amplitude=0.2))
        await ann.wait_said()
        await ben.wait_said()
        await asyncio.sleep(0.5)
        starved = {c: session.uplink.mixer.stats[c].starved_samples - starved_before[c] for c in ("ann", "ben")}

    rate = parse_format(emu.config.input_format).rate
    got = conversation.received_audio()[mark:]
    loud = np.flatnonzero(np.abs(got.astype(np.int32)) > LOUD)
    assert loud.size > rate
    middle = got[loud[0] + rate // 4: loud[-1] - rate // 4]
    # Windows of half a chunk, every quarter chunk: if chunks alternated between the callers, some window
    # would lie inside a one-caller chunk and lose the other tone. A mix keeps both tones in every window.
    chunk = rate * session.config.chunk_ms // 1000
    win, step = chunk // 2, chunk // 4
    starts = range(0, middle.size - win, step)
    ann_level = np.array([band_level(middle[i:i + win], rate, 300.0) for i in starts])
    ben_level = np.array([band_level(middle[i:i + win], rate, 700.0) for i in starts])
    assert ann_level.size > 100
    # Interleaving would empty a quarter to a half of the windows; a busy machine can still make a caller's
    # own WebRTC stream conceal a packet or two (a dip in a few windows), which is not the bridge's doing.
    # Only where both voices overlap: the two tracks take separate WebRTC paths, and on a loaded machine one
    # can run a few hundred ms behind the other, so one voice starts or ends alone. That is an offset at the
    # edges; interleaving is holes all through the overlap.
    ann_on, ben_on = ann_level >= 0.3 * np.median(ann_level), ben_level >= 0.3 * np.median(ben_level)
    first = max(int(np.argmax(ann_on)), int(np.argmax(ben_on)))
    last = min(ann_on.size - int(np.argmax(ann_on[::-1])), ben_on.size - int(np.argmax(ben_on[::-1])))
    assert last - first > 100, f"the voices overlap for only {last - first} windows"
    lacking = ~(ann_on & ben_on)[first:last]
    assert lacking.mean() < 0.03, f"{lacking.sum()} of {lacking.size} windows lack a caller"
    # And the mixer's own account: while both talked, neither caller's share was replaced by silence.
    assert max(starved.values()) < RATE // 10, starved
    assert session.metrics()["uplink"]["chunks"] > 0


@pytest.mark.parametrize(("input_format", "output_format"),
                         [("ulaw_8000", "pcm_44100"), ("pcm_16000", "pcm_24000"), ("pcm_48000", "ulaw_8000")])
async def test_formats_end_to_end(livekit_server: LiveKitServer, bridge: Bridge,
                                  input_format: str, output_format: str) -> None:
    room = f"fmt-{input_format}-{output_format}"
    session, emu = await bridge(room, reply_mode="echo", input_format=input_format, output_format=output_format)
    conversation = await emu.next_conversation()
    async with caller(livekit_server, room, "fay") as fay:
        heard = await connected(session, fay)
        fay.say(voice(1.0, 440.0))
        await fay.wait_said()
        stopped_ns = time.monotonic_ns()
        reply = await conversation.next_reply(timeout=10)
        await until(lambda: heard.first_loud_after(stopped_ns, LOUD) is not None, 10)
        await played_out(heard, stopped_ns)

    assert session.uplink is not None and session.uplink.format.name == input_format
    assert session.downlink is not None and session.downlink.format.name == output_format
    # Callers read at the conversation's rate (the session started at pcm_16000's and switched if need be).
    assert session.room.caller_rate == caller_rate_for(parse_format(input_format))
    assert session.uplink.in_rate == session.room.caller_rate
    rate = parse_format(input_format).rate
    got = conversation.received_audio()
    loud = np.flatnonzero(np.abs(got.astype(np.int32)) > LOUD)
    assert voiced_s(got, rate) >= 0.85, f"engine heard {voiced_s(got, rate):.2f} s of the caller"
    assert abs(dominant_hz(got[loud[0] + rate // 5: loud[-1] - rate // 5], rate) - 440.0) < 10
    echo = heard.since(stopped_ns)
    loud_echo = np.flatnonzero(np.abs(echo.astype(np.int32)) > LOUD)
    assert voiced_s(echo, RATE) >= 0.85 * voiced_s(reply.samples, reply.rate), "the echo was cut short"
    assert abs(dominant_hz(echo[loud_echo[0] + RATE // 5: loud_echo[-1] - RATE // 5], RATE) - 440.0) < 10


async def test_engine_socket_drop_reconnects_and_the_call_goes_on(
        livekit_server: LiveKitServer, bridge: Bridge) -> None:
    session, emu = await bridge("drop", reply_mode="echo")
    first = await emu.next_conversation()
    async with caller(livekit_server, "drop", "dan") as dan:
        heard = await connected(session, dan)
        first.drop()
        second = await emu.next_conversation(timeout=15)
        assert second.conversation_id != first.conversation_id
        await until(lambda: session.engine is not None and session.engine.ready, 15)
        dan.say(voice(1.0, 350.0))
        await dan.wait_said()
        stopped_ns = time.monotonic_ns()
        await second.next_reply(timeout=10)
        await until(lambda: heard.first_loud_after(stopped_ns, LOUD) is not None, 10)
        assert AGENT in dan.room.remote_participants  # the room never saw the agent leave

    got = second.received_audio()
    rate = parse_format(emu.config.input_format).rate
    loud = np.flatnonzero(np.abs(got.astype(np.int32)) > LOUD)
    assert voiced_s(got, rate) >= 0.85, f"engine heard {voiced_s(got, rate):.2f} s of the caller"
    assert abs(dominant_hz(got[loud[0] + rate // 5: loud[-1] - rate // 5], rate) - 350.0) < 8
    assert session.metrics()["engine"]["connects"] == 2


async def test_the_bridge_never_sends_its_own_voice_or_another_agents_to_the_engine(
        livekit_server: LiveKitServer, bridge: Bridge) -> None:
    session, emu = await bridge("self", reply_mode="tone", tone_hz=1000.0, tone_ms=3000.0)
    conversation = await emu.next_conversation()
    other_agent_token = mint_token(TEST_API_KEY, TEST_API_SECRET, room="self", identity="other-bot", agent=True)
    async with caller(livekit_server, "self", "eve") as eve, \
            Caller(livekit_server.url, other_agent_token, identity="other-bot") as other_bot:
        heard = await agent_heard(eve)
        await until(lambda: "other-bot" in session.room.room.remote_participants)
        mark = conversation.received_audio().size
        other_bot.say(voice(3.0, 1500.0))  # another agent talks: not a caller
        conversation.trigger_reply("tone")  # our agent talks: never fed back
        await until(lambda: heard.first_loud_after(0, LOUD) is not None, 10)
        await asyncio.sleep(3.0)
        assert session.room.callers == ["eve"]

    got = conversation.received_audio()[mark:]
    assert got.size > 0
    assert int(np.max(np.abs(got.astype(np.int32)))) < 300, "the engine heard the agent's or the bot's voice"


async def test_the_session_ends_when_the_room_empties_after_the_linger(livekit_server: LiveKitServer) -> None:
    async with Emulator(EmulatorConfig(reply_mode="echo")) as emu:
        session = bridge_session(livekit_server, emu, "linger", linger_s=0.5)
        await session.start()
        async with caller(livekit_server, "linger", "lou"):
            await until(lambda: session.engine is not None and session.engine.ready)
            conversation = await emu.next_conversation()
        left_ns = time.monotonic_ns()
        await asyncio.wait_for(session.wait(), 10)
        assert time.monotonic_ns() - left_ns >= 400_000_000  # it lingered
        await conversation.wait_closed(5)
        assert conversation.close_code == 1000  # the bridge ended the conversation politely


async def test_a_room_that_empties_while_the_engine_connects_still_ends(livekit_server: LiveKitServer) -> None:
    # The caller joins (the conversation starts opening) and leaves before it is open: once it is, the room is
    # already empty, and no caller_left will come to arm the linger. A conversation kept open for nobody is
    # billed for nothing until the engine's own idle timeout.
    async with Emulator(EmulatorConfig(reply_mode="echo")) as emu:
        emu.faults.accept_delay_s = 1.5
        session = bridge_session(livekit_server, emu, "gone-early", linger_s=0.5)
        await session.start()
        async with caller(livekit_server, "gone-early", "gil"):
            await until(lambda: session.room.callers == ["gil"])
        await until(lambda: not session.room.callers)
        assert session.engine is not None and not session.engine.ready  # it left while the engine connected
        await asyncio.wait_for(session.wait(), 15)
        conversation = await emu.next_conversation()
        await conversation.wait_closed(5)
        assert conversation.close_code == 1000


async def test_the_session_ends_when_the_engine_ends_the_conversation(
        livekit_server: LiveKitServer, bridge: Bridge) -> None:
    session, emu = await bridge("engine-ends", reply_mode="echo")
    conversation = await emu.next_conversation()
    async with caller(livekit_server, "engine-ends", "max") as mia:
        await agent_heard(mia)
        conversation.end(1000, "max_duration_exceeded", "Conversation exceeded the maximum duration")
        await asyncio.wait_for(session.wait(), 10)
        await until(lambda: AGENT not in mia.room.remote_participants, 10)
    assert session.state.value == "stopped"
