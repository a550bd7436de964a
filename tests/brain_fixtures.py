"""Brain servers for the tests (the official SDK's and hand-made misbehaving ones) and a speech oracle."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import numpy as np
import numpy.typing as npt
from websockets.asyncio.server import ServerConnection, serve

from emulator import tts
from scripts.ports import free_tcp_port
from tests.conftest import need

Int16Array = npt.NDArray[np.int16]


def require_sdk() -> Any:
    """The ``elevenlabs.speech_engine`` module; a dev dependency, so missing it fails in CI."""
    try:
        import elevenlabs.speech_engine as speech_engine
    except ImportError:
        need("the elevenlabs SDK is not installed (pip install -e '.[dev]')")
    return speech_engine


def require_espeak() -> None:
    if not tts.available():
        need("espeak-ng is not installed (apt-get install espeak-ng)")


async def _until_listening(port: int, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.02)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return


@contextlib.asynccontextmanager
async def sdk_brain(api_key: str, **handlers: Any) -> AsyncIterator[str]:
    """The SDK's ``SpeechEngineServer`` (authentication on) with ``handlers``; yields its ws:// URL."""
    speech_engine = require_sdk()
    port = free_tcp_port()
    server = speech_engine.SpeechEngineServer(port=port, api_key=api_key, **handlers)
    task = asyncio.create_task(server.serve())
    try:
        await _until_listening(port)
        yield f"ws://127.0.0.1:{port}/"
    finally:
        await server.stop()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(task, 5)


@contextlib.asynccontextmanager
async def raw_brain(handler: Callable[[ServerConnection], Awaitable[None]]) -> AsyncIterator[str]:
    """A bare ``websockets`` server playing a (misbehaving) brain, no authentication."""
    async with serve(handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/"


async def until_brain_pongs(conversation: Any, count: int, timeout: float = 5.0) -> None:
    """Until ``count`` pings of the emulator to the brain behind ``conversation`` were answered."""
    async with asyncio.timeout(timeout):
        while conversation.voice is None or conversation.voice.link.pongs < count:
            await asyncio.sleep(0.05)


def speech_stats(samples: Int16Array, rate: int) -> dict[str, float]:
    """What tells speech from a tone: how much of the energy the strongest 20 Hz of spectrum holds (a tone:
    nearly all; speech: little), the share of energy in the 100–4000 Hz voice band, and how much the 50 ms
    loudness varies (syllables and pauses; a steady tone: hardly at all)."""
    x = samples.astype(np.float64)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size))) ** 2
    freqs = np.fft.rfftfreq(x.size, 1 / rate)
    peak = int(np.argmax(spectrum))
    near = np.abs(freqs - freqs[peak]) <= 10.0
    total = float(spectrum.sum()) + 1e-12
    window = rate // 20
    frames = x[: x.size // window * window].reshape(-1, window)
    loudness = np.sqrt(np.mean(frames**2, axis=1))
    return {"peak_share": float(spectrum[near].sum()) / total,
            "voice_band_share": float(spectrum[(freqs >= 100) & (freqs <= 4000)].sum()) / total,
            "loudness_cv": float(loudness.std() / (loudness.mean() + 1e-12))}


def is_speech_like(samples: Int16Array, rate: int) -> bool:
    stats = speech_stats(samples, rate)
    return stats["peak_share"] < 0.2 and stats["voice_band_share"] > 0.7 and stats["loudness_cv"] > 0.4


def voiced_seconds(samples: Int16Array, rate: int, threshold: float = 300.0) -> float:
    """Time from the first to the last 10 ms frame louder than ``threshold`` (int16 RMS)."""
    window = rate // 100
    frames = samples[: samples.size // window * window].astype(np.float64).reshape(-1, window)
    loud = np.flatnonzero(np.sqrt(np.mean(frames**2, axis=1)) > threshold)
    return 0.0 if loud.size == 0 else float(loud[-1] - loud[0] + 1) / 100
