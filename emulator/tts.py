"""Real speech for the emulator: Debian's ``espeak-ng``, run as a subprocess so the event loop never waits on it.

``espeak-ng --stdout`` writes a RIFF/WAVE stream (16-bit mono, 22 050 Hz for its standard voices) whose size
fields are left at "unknown" because it writes to a pipe, so the header is parsed for the format only and
the samples are everything after the ``data`` chunk's header. The text goes in on stdin, never as an
argument, so it cannot be read as an option. The result is resampled (soxr HQ) to the conversation's output
rate; the emulator then streams it in chunks faster than real time, exactly as it does its other replies.

Without ``espeak-ng`` on the PATH :func:`synthesize` raises :class:`TtsUnavailable`; ``make demo`` and
``make test`` install it (Debian package ``espeak-ng``).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import struct

import numpy as np
import numpy.typing as npt

from core.errors import BridgeError
from emulator.signals import resample, speech_like

__all__ = ["ESPEAK", "TtsUnavailable", "available", "parse_wav_stream", "speech_for", "synthesize"]

Int16Array = npt.NDArray[np.int16]
ESPEAK = "espeak-ng"
log = logging.getLogger(__name__)
_TIMEOUT_S = 20.0


class TtsUnavailable(BridgeError):
    """espeak-ng is missing or failed."""


def available() -> bool:
    return shutil.which(ESPEAK) is not None


def parse_wav_stream(data: bytes) -> tuple[Int16Array, int]:
    """(samples, rate) of a 16-bit mono PCM WAVE stream whose size fields may be wrong (written to a pipe)."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise TtsUnavailable("espeak-ng did not write a WAVE stream")
    position, rate = 12, 0
    while position + 8 <= len(data):
        chunk_id, size = data[position:position + 4], struct.unpack("<I", data[position + 4:position + 8])[0]
        body = position + 8
        if chunk_id == b"fmt ":
            fmt, channels, rate, _, _, bits = struct.unpack("<HHIIHH", data[body:body + 16])
            if fmt != 1 or channels != 1 or bits != 16:
                raise TtsUnavailable(f"unexpected WAVE format {fmt}/{channels} ch/{bits} bit")
        elif chunk_id == b"data":
            if rate == 0:
                raise TtsUnavailable("WAVE data before its format")
            payload = data[body:]
            payload = payload[:len(payload) - len(payload) % 2]
            return np.frombuffer(payload, dtype="<i2").astype(np.int16), rate
        position = body + size + (size & 1)
    raise TtsUnavailable("WAVE stream without data")


async def synthesize(text: str, rate: int, *, voice: str = "en-us", words_per_minute: int = 175) -> Int16Array:
    """``text`` spoken by espeak-ng, at ``rate`` Hz. Runs in a subprocess; cancelling kills it."""
    exe = shutil.which(ESPEAK)
    if exe is None:
        raise TtsUnavailable("espeak-ng is not installed (Debian: apt-get install espeak-ng)")
    proc = await asyncio.create_subprocess_exec(
        exe, "--stdout", "-v", voice, "-s", str(words_per_minute),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(_TIMEOUT_S):
            out, err = await proc.communicate(text.encode("utf-8"))
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    if proc.returncode != 0:
        raise TtsUnavailable(f"espeak-ng exited with {proc.returncode}: {err.decode(errors='replace')[:200]}")
    samples, source_rate = parse_wav_stream(out)
    return resample(samples, source_rate, rate)


async def speech_for(text: str, rate: int, *, voice: str = "en-us", words_per_minute: int = 175,
                     level_dbfs: float = -12.0, seed: int | None = None) -> Int16Array:
    """``text`` spoken by espeak-ng, or without it a speech-like stand-in of about the same length."""
    try:
        return await synthesize(text, rate, voice=voice, words_per_minute=words_per_minute)
    except TtsUnavailable as exc:
        log.warning("%s; speaking a speech-like stand-in instead", exc)
        return speech_like(rate, 70.0 * len(text), level_dbfs, seed)
