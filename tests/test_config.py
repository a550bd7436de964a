"""Configs are checked when built, read the environment in one place, and never show a secret in repr()."""

from __future__ import annotations

import asyncio

import pytest

from core.downlink import DownlinkConfig
from core.errors import ConfigError
from transport.config import EngineSettings, LiveKitTarget, RoomLinkConfig, SessionConfig, from_env
from transport.engine_client import EngineClient
from transport.token_auth import shared_secret
from transport.token_server import TokenServerConfig
from transport.worker import JobContext, WorkerConfig

CANARIES = ("tok-CANARY-1", "xi-CANARY-2", "sig-CANARY-3", "secret-CANARY-4")


def every_public_config() -> list[object]:
    token, key, signature, secret = CANARIES
    engine_by_key = EngineSettings(api_key=key, agent_id="agent_1")
    engine_by_url = EngineSettings(url=f"wss://engine.example/v1/convai/conversation?conversation_signature={signature}")
    room = RoomLinkConfig("wss://lk.example", token, identity="agent")
    return [
        engine_by_key,
        engine_by_url,
        room,
        SessionConfig(room=room, engine=engine_by_key),
        SessionConfig(room=room, engine=engine_by_url),
        LiveKitTarget("wss://lk.example", "APIkey", secret),
        from_env({"LIVEKIT_API_SECRET": secret, "ELEVENLABS_API_KEY": key, "SPEECH_ENGINE_ID": "agent_1"}),
        WorkerConfig(url="wss://lk.example", api_key="APIkey", api_secret=secret, agent_name="bridge"),
        TokenServerConfig(livekit_url="wss://lk.example", api_key="APIkey", api_secret=secret, agent_name="bridge",
                          authorize=shared_secret(secret * 4)),
        JobContext(job_id="J", dispatch_id="D", room_name="r", url="wss://lk.example", token=token, identity="a",
                   agent_name="bridge", metadata="", worker_id="W", termination=asyncio.Event()),
    ]


@pytest.mark.parametrize("config", every_public_config(), ids=lambda c: type(c).__name__)
def test_repr_shows_no_secret(config: object) -> None:
    text = repr(config) + str(config)
    assert not [c for c in CANARIES if c in text], text


def test_the_queue_must_hold_the_pacer_s_lead() -> None:
    room = RoomLinkConfig("wss://lk.example", "t", queue_ms=30)
    engine = EngineSettings(url="wss://e.example")
    SessionConfig(room=room, engine=engine, downlink=DownlinkConfig(frame_ms=10, lead_frames=3))  # 30 ms fits
    with pytest.raises(ConfigError, match="must hold the pacer's lead"):
        SessionConfig(room=room, engine=engine, downlink=DownlinkConfig(frame_ms=10, lead_frames=4))
    with pytest.raises(ConfigError, match="must hold the pacer's lead"):
        SessionConfig(room=room, engine=engine, downlink=DownlinkConfig(frame_ms=20, lead_frames=2))


@pytest.mark.parametrize("settings", [{}, {"api_key": "k"}, {"agent_id": "a"}, {"url": ""}])
def test_the_engine_needs_a_url_or_a_key_and_an_id(settings: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="URL or an API key"):
        EngineSettings(**settings)


@pytest.mark.parametrize("bad", [{"chunk_ms": 12}, {"chunk_ms": 0}, {"start_when": "later"}, {"linger_s": -1.0},
                                 {"events_queue": 0}, {"backlog_ms": 0}])
def test_impossible_session_options_fail_when_built(bad: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        SessionConfig(room=RoomLinkConfig("wss://lk.example", "t"), engine=EngineSettings(url="wss://e"),
                      **bad)  # type: ignore[arg-type]


def test_an_unknown_fallback_format_fails_when_built() -> None:
    with pytest.raises(ConfigError, match="unknown audio format"):
        EngineSettings(url="wss://e", fallback_input_format="opus_48000")


def test_the_fallback_format_reaches_the_protocol() -> None:
    async def provider() -> str:
        return "wss://e"

    client = EngineClient(provider, lambda _e, _t: None, default_input_format="pcm_24000")
    metadata = client.protocol.receive('{"type":"conversation_initiation_metadata","conversation_initiation_'
                                       'metadata_event":{"conversation_id":"c","agent_output_audio_format":"pcm_16000"}}')
    assert client.protocol.input_format is not None and client.protocol.input_format.name == "pcm_24000", metadata


def test_environment_is_read_in_one_place() -> None:
    env = from_env({})
    assert env.livekit.url == "ws://127.0.0.1:7880" and env.engine is None  # a local --dev server, the emulator
    with pytest.raises(ConfigError, match="both"):
        from_env({"ELEVENLABS_API_KEY": "k"})
    hosted = from_env({"ELEVENLABS_API_KEY": "k", "SPEECH_ENGINE_ID": "seng_1", "ELEVENLABS_API_BASE": "https://x"})
    assert hosted.engine is not None and (hosted.engine.agent_id, hosted.engine.api_base) == ("seng_1", "https://x")
