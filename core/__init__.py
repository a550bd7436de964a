"""Pure audio engine: buffers, codecs, resampling, mixing, playout and pacing. No sockets, no asyncio.

The public surface, one concept per module:

- :mod:`core.errors`   the project's exception tree (``BridgeError`` and below)
- :mod:`core.clock`    monotonic nanosecond clocks, real and fake
- :mod:`core.redact`   keeping secrets out of logs and errors
- :mod:`core.codec`    PCM16 and G.711 μ-law, vectorised
- :mod:`core.formats`  the engine's audio format strings as typed values
- :mod:`core.ring`     fixed-capacity sample FIFO with a named overflow policy
- :mod:`core.resample` streaming soxr resampler between the supported rates
- :mod:`core.mixer`    callers at 48 kHz summed into one saturated stream
- :mod:`core.playout`  the agent voice's buffer: bursts in, fixed frames out
- :mod:`core.pacer`    when the next frame is due, sans-I/O
- :mod:`core.timing`   per-stage timings on the injected clock
- :mod:`core.uplink`   callers → mixer → engine rate → encoded chunks
- :mod:`core.downlink` engine audio → 48 kHz → playout → paced frames
- :mod:`core.onset`    a caller's speech onset: noise floor, duration, voicing, the played voice's echo
- :mod:`core.voice_reference` what was played and when, for the onset detectors' echo test
- :mod:`core.duck`     the voice's gain envelope while a caller talks over it
- :mod:`core.ducker`   onset detectors + duck for one session, the shell's side of local ducking
"""

from core.clock import MS, SECOND, Clock, FakeClock, MonotonicClock
from core.codec import pcm16_decode, pcm16_encode, ulaw_decode, ulaw_encode
from core.downlink import OUTPUT_RATE, Downlink, DownlinkConfig
from core.duck import Duck, DuckConfig, DuckState
from core.ducker import Ducker, DuckerConfig
from core.errors import (
    BridgeError,
    BufferOverflowError,
    ConfigError,
    EngineAuthError,
    EngineError,
    EngineRefusedError,
    LiveKitError,
    ProtocolError,
)
from core.formats import ENGINE_FORMATS, SUPPORTED_RATES, AudioFormat, parse_format
from core.mixer import MIXER_RATE, SILENCE_DBFS, CallerStats, Mixer
from core.onset import OnsetConfig, OnsetDetector
from core.pacer import Pacer
from core.playout import PlayoutBuffer, PlayoutState
from core.redact import MASK, Redactor, redact_url
from core.resample import DEFAULT_QUALITY, Quality, Resampler
from core.ring import OverflowPolicy, RingBuffer
from core.timing import StageSummary, StageTimer
from core.uplink import DEFAULT_CHUNK_MS, Uplink
from core.voice_reference import VoiceReference

__all__ = [
    "DEFAULT_CHUNK_MS",
    "DEFAULT_QUALITY",
    "ENGINE_FORMATS",
    "MASK",
    "MIXER_RATE",
    "MS",
    "OUTPUT_RATE",
    "SECOND",
    "SILENCE_DBFS",
    "SUPPORTED_RATES",
    "AudioFormat",
    "BridgeError",
    "BufferOverflowError",
    "CallerStats",
    "Clock",
    "ConfigError",
    "Downlink",
    "DownlinkConfig",
    "Duck",
    "DuckConfig",
    "DuckState",
    "Ducker",
    "DuckerConfig",
    "EngineAuthError",
    "EngineError",
    "EngineRefusedError",
    "FakeClock",
    "LiveKitError",
    "Mixer",
    "MonotonicClock",
    "OnsetConfig",
    "OnsetDetector",
    "OverflowPolicy",
    "Pacer",
    "PlayoutBuffer",
    "PlayoutState",
    "ProtocolError",
    "Quality",
    "Redactor",
    "Resampler",
    "RingBuffer",
    "StageSummary",
    "StageTimer",
    "Uplink",
    "VoiceReference",
    "parse_format",
    "pcm16_decode",
    "pcm16_encode",
    "redact_url",
    "ulaw_decode",
    "ulaw_encode",
]
