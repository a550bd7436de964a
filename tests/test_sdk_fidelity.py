"""The vendor's own conversation client against the emulator: a fidelity test of the emulator.

The official SDK's ``elevenlabs.conversational_ai.conversation.Conversation`` is pointed at the emulator the
way the SDK allows: ``ElevenLabs(base_url=<emulator REST base>)`` and ``requires_auth=False``, from which
it builds ``ws://…/v1/convai/conversation?agent_id=…&source=python_sdk&version=…`` itself
(``BaseConversation._get_wss_url``). A custom ``AudioInterface`` speaks a tone, records what it is given to
play and counts ``interrupt()`` calls. The SDK runs its socket in its own thread, as in production.

Asserted: the emulator hears the caller's tone; the SDK plays the agent's (its FFT peak); a barge-in reaches
the SDK as ``interrupt()`` and the SDK's own stale-audio gate lets the next reply through; the SDK answers
the emulator's pings with the ping's id; transcripts and agent responses reach its callbacks; the SDK
learns the emulator's conversation id.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from emulator.signals import tone
from tests.brain_fixtures import require_sdk
from tests.engine_fixtures import fast, peak_hz, running

RATE = 16_000
CHUNK = RATE // 20  # 50 ms, what the SDK's default interface sends is 250 ms; smaller keeps turns quick


class ScriptedAudio:
    """An ``AudioInterface``: sends silence at real time, or a queued utterance; keeps what it is told to play."""

    def __init__(self) -> None:
        self.played: list[tuple[float, bytes]] = []
        self.interrupts: list[float] = []
        self._script: list[np.ndarray] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, input_callback: Callable[[bytes], None]) -> None:
        self._thread = threading.Thread(target=self._run, args=(input_callback,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def output(self, audio: bytes) -> None:
        self.played.append((time.monotonic(), audio))

    def interrupt(self) -> None:
        self.interrupts.append(time.monotonic())

    def say(self, samples: np.ndarray) -> None:
        with self._lock:
            self._script.append(samples)

    def played_since(self, t: float) -> np.ndarray:
        return np.frombuffer(b"".join(a for when, a in self.played if when >= t), dtype="<i2")

    def _run(self, send: Callable[[bytes], None]) -> None:
        pending = np.zeros(0, np.int16)
        start = time.monotonic()
        k = 0
        while not self._stop.is_set():
            if pending.size == 0:
                with self._lock:
                    pending = self._script.pop(0) if self._script else np.zeros(0, np.int16)
            chunk, pending = pending[:CHUNK], pending[CHUNK:]
            if chunk.size < CHUNK:
                chunk = np.concatenate([chunk, np.zeros(CHUNK - chunk.size, np.int16)])
            send(chunk.astype("<i2").tobytes())
            k += 1
            time.sleep(max(0.0, start + k * CHUNK / RATE - time.monotonic()))


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


async def test_the_official_conversation_client_talks_to_the_emulator() -> None:
    require_sdk()
    from elevenlabs.client import ElevenLabs
    from elevenlabs.conversational_ai.conversation import AudioInterface, Conversation

    class Interface(ScriptedAudio, AudioInterface):
        pass

    config = fast(require_auth=False, reply_mode="tone", tone_hz=880.0, tone_ms=2500.0, ping_interval_s=0.3,
                  pong_timeout_s=5.0)
    async with running(config) as emu:
        audio = Interface()
        agent_texts: list[str] = []
        user_texts: list[str] = []
        latencies: list[int] = []
        sdk: Any = Conversation(ElevenLabs(api_key="sk_not_needed_here", base_url=emu.rest_base_url),
                                emu.config.agent_id, requires_auth=False, audio_interface=audio,
                                callback_agent_response=agent_texts.append,
                                callback_user_transcript=user_texts.append,
                                callback_latency_measurement=latencies.append)
        sdk.start_session()
        try:
            conversation = await emu.next_conversation()
            assert conversation.query.get("source") == "python_sdk"
            await conversation.wait_for(lambda: conversation.init is not None)

            audio.say(tone(RATE, 400, 300.0, -12.0))
            first = await conversation.next_reply()
            await until(lambda: len(audio.played) > 3)
            t_interrupt = time.monotonic()
            await asyncio.sleep(0.3)
            audio.say(tone(RATE, 400, 300.0, -12.0))  # talk over the 2.5 s reply
            await until(lambda: bool(audio.interrupts))
            second = await conversation.next_reply(timeout=10)
            await until(lambda: second.done, timeout=15)
            await asyncio.sleep(0.3)
            after = audio.played_since(audio.interrupts[0])
            heard_first = audio.played_since(t_interrupt - 5)
            await until(lambda: sum(p.pong_ns is not None for p in conversation.pings) >= 3)
            assert latencies  # ping_ms of later pings, measured from the SDK's pongs
        finally:
            sdk.end_session()
            sdk_conversation_id = await asyncio.get_running_loop().run_in_executor(None, sdk.wait_for_session_end)
        await conversation.wait_closed()

    # Caller → engine: the emulator heard the SDK's 300 Hz tone.
    received = conversation.received_audio()
    first_turn = conversation.utterance_audio(conversation.utterances[0])
    assert received.size > RATE and abs(peak_hz(first_turn, RATE) - 300) < 10
    # Engine → caller: the SDK played the agent's 880 Hz tone, before and after the interruption.
    assert abs(peak_hz(heard_first, RATE) - 880) < 10
    assert first.interrupted_ns is not None and len(audio.interrupts) == 1
    assert after.size >= second.samples.size * 0.95 and abs(peak_hz(after, RATE) - 880) < 10
    # Pings answered with their own ids.
    answered = [p for p in conversation.pings if p.pong_ns is not None]
    assert len(answered) >= 3 and all(p.rtt_ms is not None and p.rtt_ms < 1000 for p in answered)
    # Callbacks and the conversation id.
    assert len(agent_texts) >= 2 and len(user_texts) >= 2
    assert sdk_conversation_id == conversation.conversation_id
