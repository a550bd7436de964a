"""What a session is told when it is built: the room, the engine, and how the two are bridged."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from core.downlink import DownlinkConfig
from core.errors import ConfigError
from core.uplink import DEFAULT_CHUNK_MS
from transport.engine_client import InitiationData
from transport.signed_url import DEFAULT_API_BASE, UrlProvider, signed_url_provider, static_url

__all__ = ["EngineSettings", "SessionConfig"]


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """Where the conversation lives. One of: ``url`` (connect as given) or ``api_key`` + ``agent_id``
    (mint a fresh signed URL per connection, the key never leaves this process)."""

    url: str | None = None
    api_key: str | None = None
    agent_id: str | None = None
    api_base: str = DEFAULT_API_BASE
    init: InitiationData = field(default_factory=InitiationData)
    max_attempts: int = 6
    # Used only when the engine's metadata does not name a format (the JS SDK assumes pcm_16000 too).
    fallback_input_format: str = "pcm_16000"

    def url_provider(self) -> UrlProvider:
        if self.url:
            return static_url(self.url)
        if self.api_key and self.agent_id:
            return signed_url_provider(self.api_key, self.agent_id, base_url=self.api_base)
        raise ConfigError("the engine needs either a conversation URL or an API key and agent id")

    def secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self.api_key,) if s)


@dataclass(frozen=True, slots=True)
class SessionConfig:
    livekit_url: str
    livekit_token: str
    engine: EngineSettings
    identity: str = ""
    chunk_ms: int = DEFAULT_CHUNK_MS
    queue_ms: int = 50
    caller_frame_ms: int = 20
    downlink: DownlinkConfig = field(default_factory=DownlinkConfig)
    start_when: Literal["first_caller", "immediately"] = "first_caller"
    end_when_empty: bool = True
    linger_s: float = 10.0
    publish_transcripts: bool = True
    ignore_identity_prefixes: tuple[str, ...] = ()
    events_queue: int = 256
