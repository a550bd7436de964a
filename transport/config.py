"""What a session is told when it is built, checked when it is built.

A :class:`SessionConfig` nests the options of the parts it wires instead of copying their fields:

    SessionConfig(
        room=RoomLinkConfig(url, token, identity="agent"),        # the LiveKit side (transport.livekit_room)
        engine=EngineSettings(api_key=key, agent_id=engine_id),   # the Speech Engine side
        downlink=DownlinkConfig(frame_ms=20, lead_frames=2),      # the agent voice's buffer and pacing (core)
        start_when="first_caller", linger_s=10.0)                 # the session's own choices

Every impossible combination is a :class:`~core.errors.ConfigError` raised by the constructor, not a failure
minutes later: the engine needs a URL or a key and an id; the AudioSource queue must hold the pacer's lead
(``room.queue_ms ≥ downlink.lead_frames × downlink.frame_ms``), else every capture would wait on the native
queue. The environment is read in one place, :func:`from_env`.

Secrets (LiveKit token and API secret, engine API key and conversation URL, which may carry a signature) are
``repr=False``: a config printed in a log line or a traceback shows none of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from core.downlink import DownlinkConfig
from core.errors import ConfigError
from core.formats import CALLER_RATES, caller_rate_for, parse_format
from core.uplink import DEFAULT_CHUNK_MS
from transport.engine_client import InitiationData
from transport.init_options import StartOptions, validate_dynamic_variables, validate_overrides
from transport.livekit_room import RoomLinkConfig
from transport.signed_url import DEFAULT_API_BASE, UrlProvider, signed_url_provider, static_url

__all__ = ["DEV_LIVEKIT", "EngineSettings", "Environment", "LiveKitTarget", "RoomLinkConfig", "SessionConfig",
           "from_env"]


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """Where the conversation lives. One of: ``url`` (connect as given) or ``api_key`` + ``agent_id``
    (mint a fresh signed URL per connection, the key never leaves this process)."""

    url: str | None = field(default=None, repr=False)
    api_key: str | None = field(default=None, repr=False)
    agent_id: str | None = None
    api_base: str = DEFAULT_API_BASE
    init: InitiationData = field(default_factory=InitiationData)
    max_attempts: int = 6
    # The caller-audio format assumed when the engine's metadata names none (the JS SDK assumes pcm_16000 too).
    fallback_input_format: str = "pcm_16000"

    def __post_init__(self) -> None:
        if not self.url and not (self.api_key and self.agent_id):
            raise ConfigError("the engine needs either a conversation URL or an API key and agent id")
        if self.max_attempts < 1:
            raise ConfigError(f"max_attempts must be at least 1, got {self.max_attempts}")
        parse_format(self.fallback_input_format)
        # Refused here, naming the field, rather than by the engine with close 1008 (transport.init_options).
        if self.init.overrides:
            validate_overrides(self.init.overrides, "init.overrides")
        if self.init.dynamic_variables:
            validate_dynamic_variables(self.init.dynamic_variables, "init.dynamic_variables")

    def with_options(self, options: StartOptions) -> EngineSettings:
        """These settings with a first message, overrides and dynamic variables added to every init."""
        return replace(self, init=options.apply(self.init))

    def url_provider(self) -> UrlProvider:
        if self.url:
            return static_url(self.url)
        assert self.api_key and self.agent_id  # __post_init__
        return signed_url_provider(self.api_key, self.agent_id, base_url=self.api_base)

    def secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self.api_key,) if s)


@dataclass(frozen=True, slots=True)
class SessionConfig:
    room: RoomLinkConfig
    engine: EngineSettings
    downlink: DownlinkConfig = field(default_factory=DownlinkConfig)
    chunk_ms: int = DEFAULT_CHUNK_MS  # uplink: user_audio_chunk length
    start_when: Literal["first_caller", "immediately"] = "first_caller"
    end_when_empty: bool = True
    linger_s: float = 10.0
    publish_transcripts: bool = True
    events_queue: int = 256  # per subscriber; the oldest are dropped beyond it
    backlog_ms: int = 2000  # caller audio held per caller while no conversation can take it
    # Local ducking of the voice while a caller talks over it, until the engine decides (0 = off): depth in dB
    # and how long after the caller stops the voice comes back if no interruption came. See core/ducker.py and
    # the README for the false-duck measurements behind the defaults.
    duck_db: float = 18.0
    duck_hold_ms: int = 500
    # Continuity across engine reconnects (transport/continuity.py): characters of the call's transcript kept
    # and handed to a new conversation as a contextual_update (0 = off: no handover, no greeting suppression).
    continuity_chars: int = 4000
    # The rate callers are read at. None: the engine's input rate whenever the room's SDK delivers it (8, 16,
    # 24, 48 kHz; it resamples in native code, whole 10 ms frames, no hold), else 48 kHz resampled here (the
    # 44.1 kHz family); it starts at ``engine.fallback_input_format``'s and follows each conversation's. An int
    # (one of core.formats.CALLER_RATES) fixes it: 48000 reads the full band and resamples in the bridge.
    caller_rate: int | None = None

    @property
    def initial_caller_rate(self) -> int:
        """The rate callers are read at before any conversation said which it takes."""
        if self.caller_rate is not None:
            return self.caller_rate
        return caller_rate_for(parse_format(self.engine.fallback_input_format))

    def __post_init__(self) -> None:
        down, room = self.downlink, self.room
        if room.queue_ms < down.lead_frames * down.frame_ms:
            raise ConfigError(f"the AudioSource queue ({room.queue_ms} ms) must hold the pacer's lead "
                              f"({down.lead_frames} × {down.frame_ms} ms)")
        if self.chunk_ms <= 0 or self.chunk_ms % 5:
            raise ConfigError(f"chunk_ms must be a positive multiple of 5 ms, got {self.chunk_ms}")
        if self.start_when not in ("first_caller", "immediately"):
            raise ConfigError(f"start_when must be 'first_caller' or 'immediately', got {self.start_when!r}")
        if self.linger_s < 0 or self.events_queue < 1 or self.backlog_ms <= 0:
            raise ConfigError("linger_s must be ≥ 0, events_queue ≥ 1 and backlog_ms > 0")
        if self.caller_rate is not None and self.caller_rate not in CALLER_RATES:
            raise ConfigError(f"caller_rate must be None (follow the engine) or one of {CALLER_RATES}, "
                              f"got {self.caller_rate}")
        if self.continuity_chars < 0:
            raise ConfigError(f"continuity_chars must be ≥ 0, got {self.continuity_chars}")
        if not 0 <= self.duck_db <= 60 or self.duck_hold_ms < 0:
            raise ConfigError(f"duck_db must be in 0..60 (0 = off) and duck_hold_ms ≥ 0, got {self.duck_db} dB, "
                              f"{self.duck_hold_ms} ms")


@dataclass(frozen=True, slots=True)
class LiveKitTarget:
    """A LiveKit server and the API key pair that mints tokens for it."""

    url: str
    api_key: str
    api_secret: str = field(repr=False)


DEV_LIVEKIT = LiveKitTarget("ws://127.0.0.1:7880", "devkey", "secret")  # ``livekit-server --dev``


@dataclass(frozen=True, slots=True)
class Environment:
    livekit: LiveKitTarget
    engine: EngineSettings | None  # None: no engine credentials (the runner then starts the emulator)


def from_env(env: Mapping[str, str]) -> Environment:
    """``LIVEKIT_URL`` / ``LIVEKIT_API_KEY`` / ``LIVEKIT_API_SECRET`` (default: a local ``--dev`` server);
    ``ELEVENLABS_API_KEY`` + ``SPEECH_ENGINE_ID`` (both or neither), ``ELEVENLABS_API_BASE``."""
    dev = DEV_LIVEKIT
    livekit = LiveKitTarget(env.get("LIVEKIT_URL") or dev.url, env.get("LIVEKIT_API_KEY") or dev.api_key,
                            env.get("LIVEKIT_API_SECRET") or dev.api_secret)
    api_key, agent_id = env.get("ELEVENLABS_API_KEY"), env.get("SPEECH_ENGINE_ID")
    if not (api_key or agent_id):
        return Environment(livekit, None)
    if not (api_key and agent_id):
        raise ConfigError("set both ELEVENLABS_API_KEY and SPEECH_ENGINE_ID to use the hosted engine")
    engine = EngineSettings(api_key=api_key, agent_id=agent_id,
                            api_base=env.get("ELEVENLABS_API_BASE") or DEFAULT_API_BASE)
    return Environment(livekit, engine)
