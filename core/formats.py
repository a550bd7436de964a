"""Audio format strings of the Speech Engine (``pcm_16000``, ``ulaw_8000`` …) as typed values.

The engine announces its formats in ``conversation_initiation_metadata``; the same seven strings serve both
directions. An unknown string is a :class:`~core.errors.ConfigError` at session start, never a guess.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from core.codec import pcm16_decode, pcm16_encode, ulaw_decode, ulaw_encode
from core.errors import ConfigError

__all__ = ["CALLER_RATES", "ENGINE_FORMATS", "ROOM_RATE", "SUPPORTED_RATES", "AudioFormat", "caller_rate_for",
           "parse_format"]

Encoding = Literal["pcm", "ulaw"]
# The room side of the bridge: callers are read, mixed and the agent voice is played at this rate (LiveKit
# and WebRTC Opus run at 48 kHz). Defined here once; every 48 kHz in the code is this constant.
ROOM_RATE = 48_000
SUPPORTED_RATES = (8000, 16000, 22050, 24000, 44100, 48000)
# Rates callers can be read at: the room's SDK resamples to these in whole 10 ms frames (WebRTC's resampler,
# native code), and the onset detector's pitch search decimates them to 8 kHz by a whole factor.
CALLER_RATES = (8000, 16000, 24000, 48000)
ENGINE_FORMATS = ("pcm_8000", "pcm_16000", "pcm_22050", "pcm_24000", "pcm_44100", "pcm_48000", "ulaw_8000")


@dataclass(frozen=True, slots=True)
class AudioFormat:
    encoding: Encoding
    rate: int

    @property
    def name(self) -> str:
        return f"{self.encoding}_{self.rate}"

    @property
    def bytes_per_sample(self) -> int:
        return 2 if self.encoding == "pcm" else 1

    def decode(self, data: bytes) -> npt.NDArray[np.int16]:
        return pcm16_decode(data) if self.encoding == "pcm" else ulaw_decode(data)

    def encode(self, samples: npt.NDArray[np.int16]) -> bytes:
        return pcm16_encode(samples) if self.encoding == "pcm" else ulaw_encode(samples)

    def __str__(self) -> str:
        return self.name


def parse_format(name: str) -> AudioFormat:
    """``"pcm_16000"`` → ``AudioFormat("pcm", 16000)``; anything outside :data:`ENGINE_FORMATS` is refused."""
    if name not in ENGINE_FORMATS:
        raise ConfigError(f"unknown audio format {name!r}; expected one of {', '.join(ENGINE_FORMATS)}")
    encoding, rate = name.split("_")
    return AudioFormat("pcm" if encoding == "pcm" else "ulaw", int(rate))


def caller_rate_for(fmt: AudioFormat) -> int:
    """The rate to read callers at for an engine that takes ``fmt``: its own when the SDK delivers it (no
    resampling in the bridge at all), else the room's 48 kHz (the 44.1 kHz family is resampled here)."""
    return fmt.rate if fmt.rate in CALLER_RATES else ROOM_RATE
