"""Helpers shared by the engine client and emulator tests (no conftest: another suite owns that file)."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import numpy as np
import numpy.typing as npt
from websockets.asyncio.client import ClientConnection, connect

from core.formats import AudioFormat
from core.signals import dominant_hz
from emulator import Emulator, EmulatorConfig
from emulator.signals import tone
from transport.engine_protocol import Event

Int16Array = npt.NDArray[np.int16]

# Quick turn-taking so a whole turn takes a few hundred milliseconds; pings off unless a test wants them.
FAST = EmulatorConfig(think_time_ms=50.0, vad_hangover_ms=100.0, vad_min_speech_ms=30.0, chunk_ms=40.0,
                      burst_factor=4.0, tone_ms=300.0, ping_interval_s=None, idle_timeout_s=None, seed=7)


def fast(**changes: Any) -> EmulatorConfig:
    return replace(FAST, **changes)


@asynccontextmanager
async def running(config: EmulatorConfig | None = None) -> AsyncIterator[Emulator]:
    async with Emulator(config or fast()) as emulator:
        yield emulator


def utterance(ms_speech: float = 300.0, ms_silence: float = 300.0, rate: int = 16000, hz: float = 440.0
              ) -> Int16Array:
    """A tone, then silence long enough for the VAD hangover."""
    silence = np.zeros(round(rate * ms_silence / 1000), dtype=np.int16)
    return np.concatenate((tone(rate, ms_speech, hz, -12.0), silence))


def chunks(samples: Int16Array, fmt: AudioFormat, chunk_ms: float = 20.0) -> list[bytes]:
    step = round(fmt.rate * chunk_ms / 1000)
    return [fmt.encode(samples[i:i + step]) for i in range(0, samples.size, step)]


peak_hz = dominant_hz  # the shared FFT-peak oracle (core.signals), under the name these tests use


class Collector:
    """An ``on_event`` callback that keeps (event, recv_ns) and lets a test await a condition."""

    def __init__(self) -> None:
        self.items: list[tuple[Event, int]] = []
        self._changed = asyncio.Event()

    def __call__(self, event: Event, recv_ns: int) -> None:
        self.items.append((event, recv_ns))
        self._changed.set()

    def of(self, kind: type[Any]) -> list[Any]:
        return [e for e, _ in self.items if isinstance(e, kind)]

    async def until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()


class RawClient:
    """A bare ``websockets`` client speaking JSON, for testing the emulator as a strict server."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.received: list[dict[str, Any]] = []

    async def send(self, message: dict[str, Any] | str) -> None:
        await self.ws.send(message if isinstance(message, str) else json.dumps(message))

    async def init(self) -> dict[str, Any]:
        await self.send({"type": "conversation_initiation_client_data"})
        return await self.next("conversation_initiation_metadata")

    async def audio(self, data: bytes) -> None:
        await self.send({"user_audio_chunk": base64.b64encode(data).decode()})

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        text = await asyncio.wait_for(self.ws.recv(), timeout)
        message: dict[str, Any] = json.loads(text)
        self.received.append(message)
        return message

    async def next(self, type_: str, timeout: float = 5.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                message = await self.recv(timeout)
                if message.get("type") == type_:
                    return message


@asynccontextmanager
async def raw(url: str, **kwargs: Any) -> AsyncIterator[RawClient]:
    # max_queue=None: tests often leave messages unread; a bounded queue would pause reading and make the
    # close handshake wait out its timeout behind them.
    async with connect(url, compression=None, max_queue=None, **kwargs) as ws:
        yield RawClient(ws)


def audio_of(messages: list[dict[str, Any]], fmt: AudioFormat, event_id: int | None = None) -> Int16Array:
    parts = [fmt.decode(base64.b64decode(m["audio_event"]["audio_base_64"])) for m in messages
             if m.get("type") == "audio" and (event_id is None or m["audio_event"]["event_id"] == event_id)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)
