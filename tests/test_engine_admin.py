"""engine_admin against the emulator's REST endpoints: the settings change where the engine reads them."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from websockets.asyncio.client import connect

from core.errors import ConfigError, EngineError
from emulator import Emulator, EmulatorConfig
from transport.engine_admin import EngineAdmin, EngineRef, brain_secret_patch, formats_patch, mask_headers, run
from transport.signed_url import fetch_signed_url

SECRET = "brain-shared-secret-9f8e7d6c5b4a"


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    async with Emulator(EmulatorConfig()) as e:
        yield e


def env_for(emu: Emulator, **extra: str) -> dict[str, str]:
    return {"ELEVENLABS_API_KEY": emu.api_key, "ELEVENLABS_BASE_URL": emu.rest_base_url, **extra}


async def admin(emu: Emulator, capsys: pytest.CaptureFixture[str], *argv: str,
                **env: str) -> tuple[int, dict[str, object] | None, str]:
    code = await run(list(argv), env_for(emu, **env))
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else None), err


async def metadata_formats(emu: Emulator, agent_id: str) -> tuple[str, str]:
    """What a new conversation announces: the formats the engine will really use."""
    url = await fetch_signed_url(emu.api_key, agent_id, base_url=emu.rest_base_url)
    async with connect(url, proxy=None) as ws:
        await ws.send(json.dumps({"type": "conversation_initiation_client_data"}))
        while True:
            message = json.loads(await ws.recv())
            if message["type"] == "conversation_initiation_metadata":
                meta = message["conversation_initiation_metadata_event"]
                return meta["user_input_audio_format"], meta["agent_output_audio_format"]


@pytest.mark.parametrize("engine_id", ["agent_emulator", "seng_emulator"])
async def test_set_formats_reaches_new_conversations(emu: Emulator, capsys: pytest.CaptureFixture[str],
                                                     engine_id: str) -> None:
    code, shown, _ = await admin(emu, capsys, "--engine-id", engine_id, "show")
    assert code == 0 and shown is not None
    assert (shown["user_input_audio_format"], shown["agent_output_audio_format"]) == ("pcm_16000", "pcm_16000")
    assert shown["resource"] == ("speech-engine" if engine_id.startswith("seng_") else "agent")

    code, changed, _ = await admin(emu, capsys, "--engine-id", engine_id, "set-formats",
                                   "--input", "ulaw_8000", "--output", "pcm_24000")
    assert code == 0 and changed is not None
    assert (changed["user_input_audio_format"], changed["agent_output_audio_format"]) == ("ulaw_8000", "pcm_24000")
    assert await metadata_formats(emu, engine_id) == ("ulaw_8000", "pcm_24000")

    code, changed, _ = await admin(emu, capsys, "--engine-id", engine_id, "set-formats", "--output", "pcm_48000")
    assert code == 0
    assert await metadata_formats(emu, engine_id) == ("ulaw_8000", "pcm_48000")


async def test_brain_secret_is_stored_and_never_printed(emu: Emulator, capsys: pytest.CaptureFixture[str]) -> None:
    engine = "seng_brain"
    code, _, err = await admin(emu, capsys, "--engine-id", engine, "set-brain-secret", "--header",
                               "X-Brain-Secret", "--value-env", "BRAIN_SECRET", BRAIN_SECRET=SECRET)
    assert code == 2 and "no brain server URL" in err  # a header needs the URL it goes to
    code, shown, err = await admin(emu, capsys, "--engine-id", engine, "set-brain-secret", "--header",
                                   "X-Brain-Secret", "--value-env", "BRAIN_SECRET",
                                   "--url", "wss://brain.example/ws?token=abc", BRAIN_SECRET=SECRET)
    assert code == 0 and shown is not None
    assert shown["brain_request_headers"] == {"X-Brain-Secret": "…"}
    assert shown["brain_url"] == "wss://brain.example/ws?token=…"
    record = emu.agents.get(engine)
    assert record is not None
    assert record.speech_engine == {"ws_url": "wss://brain.example/ws?token=abc",
                                    "request_headers": {"X-Brain-Secret": SECRET}}

    # A second header keeps the first; a secret reference is stored as a locator.
    code, shown, _ = await admin(emu, capsys, "--engine-id", engine, "set-brain-secret", "--header", "X-Other",
                                 "--secret-id", "sec_123")
    assert code == 0 and shown is not None
    assert shown["brain_request_headers"] == {"X-Brain-Secret": "…", "X-Other": {"secret_id": "sec_123"}}
    assert record.speech_engine["request_headers"] == {"X-Brain-Secret": SECRET, "X-Other": {"secret_id": "sec_123"}}

    code, shown, _ = await admin(emu, capsys, "--engine-id", engine, "show")
    out = json.dumps(shown)
    assert SECRET not in out and emu.api_key not in out


async def test_agent_resource_uses_the_custom_llm_headers(emu: Emulator, capsys: pytest.CaptureFixture[str]) -> None:
    code, shown, _ = await admin(emu, capsys, "--engine-id", "agent_x", "set-brain-secret", "--header",
                                 "X-Brain-Secret", "--value", SECRET, "--url", "https://brain.example/v1")
    assert code == 0 and shown is not None
    record = emu.agents.get("agent_x")
    assert record is not None
    assert record.conversation_config["agent"]["prompt"]["custom_llm"] == {
        "url": "https://brain.example/v1", "request_headers": {"X-Brain-Secret": SECRET}}


async def test_failures_say_why_without_the_key(emu: Emulator, capsys: pytest.CaptureFixture[str]) -> None:
    wrong = "sk_wrong_key_0123456789abcdef"
    code = await run(["--engine-id", "agent_1", "show"],
                     {"ELEVENLABS_API_KEY": wrong, "ELEVENLABS_BASE_URL": emu.rest_base_url})
    out, err = capsys.readouterr()
    assert code == 1 and "HTTP 401" in err and wrong not in out + err
    code, _, err = await admin(emu, capsys, "--engine-id", "agent_1", "set-formats", "--input", "mp3_44100")
    assert code == 2 and "invalid choice" in err
    code, _, err = await admin(emu, capsys, "show")
    assert code == 2 and "SPEECH_ENGINE_ID" in err
    code = await run(["--engine-id", "agent_1", "show"],
                     {"ELEVENLABS_API_KEY": "k" * 20, "ELEVENLABS_BASE_URL": "http://127.0.0.1:9"})
    _, err = capsys.readouterr()
    assert code == 1 and "ClientConnectorError" in err


async def test_a_refused_patch_reports_the_apis_reason(emu: Emulator, capsys: pytest.CaptureFixture[str]) -> None:
    # The emulator refuses a header value that is neither a string nor a locator (HTTP 422), as the API would.
    ref = EngineRef.of("seng_bad")
    body = {"speech_engine": {"ws_url": "wss://b", "request_headers": {"X": 5}}}
    with pytest.raises(EngineError, match=r"HTTP 422.*request_headers"):
        await EngineAdmin(emu.api_key, base_url=emu.rest_base_url).patch(ref, body)
    assert emu.api_key not in capsys.readouterr().err


def test_patch_bodies_follow_the_api_field_paths() -> None:
    seng, agent = EngineRef.of("seng_1"), EngineRef.of("agent_1")
    assert seng.path == "/v1/speech-engine/seng_1" and agent.path == "/v1/convai/agents/agent_1"
    assert formats_patch(seng, "pcm_16000", "ulaw_8000") == {
        "asr": {"user_input_audio_format": "pcm_16000"}, "tts": {"agent_output_audio_format": "ulaw_8000"}}
    assert formats_patch(agent, None, "pcm_24000") == {
        "conversation_config": {"tts": {"agent_output_audio_format": "pcm_24000"}}}
    current = {"speech_engine": {"ws_url": "wss://brain", "request_headers": {"x-brain-secret": "old", "A": "b"}}}
    assert brain_secret_patch(seng, current, "X-Brain-Secret", "new") == {
        "speech_engine": {"ws_url": "wss://brain", "request_headers": {"A": "b", "X-Brain-Secret": "new"}}}
    with pytest.raises(ConfigError):
        brain_secret_patch(seng, current, "Bad Header", "v")
    with pytest.raises(ConfigError):
        brain_secret_patch(seng, current, "X-Ok", "two\nlines")
    with pytest.raises(ConfigError):
        formats_patch(seng, "pcm_11025", None)
    assert EngineRef.of("agent_1", "speech-engine").path == "/v1/speech-engine/agent_1"
    assert mask_headers({"a": "s3cret", "b": {"secret_id": "x"}, "c": {"env_var_label": "E"}}) == {
        "a": "…", "b": {"secret_id": "x"}, "c": {"env_var_label": "E"}}


async def greeting(emu: Emulator, engine_id: str, overrides: dict[str, object]) -> str:
    """What a new conversation with these overrides says first: its first agent_response, or the error type."""
    url = await fetch_signed_url(emu.api_key, engine_id, base_url=emu.rest_base_url)
    async with connect(url, proxy=None) as ws:
        await ws.send(json.dumps({"type": "conversation_initiation_client_data",
                                  "conversation_config_override": overrides}))
        while True:
            message = json.loads(await ws.recv())
            if message["type"] == "agent_response":
                return str(message["agent_response_event"]["agent_response"])
            if message["type"] == "error":
                return f"error {message['error_event']['error_type']}"


@pytest.mark.parametrize("engine_id", ["agent_emulator", "seng_emulator"])
async def test_allow_overrides_lets_the_first_message_through(emu: Emulator, capsys: pytest.CaptureFixture[str],
                                                              engine_id: str) -> None:
    hello = {"agent": {"first_message": "Hello from the override."}}
    assert await greeting(emu, engine_id, hello) == "error override_error"
    code, shown, _ = await admin(emu, capsys, "--engine-id", engine_id, "allow-overrides", "--first-message")
    assert code == 0 and shown is not None
    assert shown["allowed_overrides"] == ({"first_message": True} if engine_id.startswith("seng_")
                                          else {"agent": {"first_message": True}})
    assert await greeting(emu, engine_id, hello) == "Hello from the override."
    assert await greeting(emu, engine_id, {"agent": {"first_message": "Hi", "language": "de"}}) == \
        "error override_error"  # only what was allowed
    code, _, _ = await admin(emu, capsys, "--engine-id", engine_id, "allow-overrides", "--first-message", "--deny")
    assert code == 0 and await greeting(emu, engine_id, hello) == "error override_error"


async def test_language_and_prompt_need_the_agent_resource(emu: Emulator,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = await admin(emu, capsys, "--engine-id", "seng_emulator", "allow-overrides", "--language")
    assert code == 2 and "--resource agent" in err
    code, shown, _ = await admin(emu, capsys, "--engine-id", "agent_emulator", "allow-overrides", "--first-message",
                                 "--language", "--prompt")
    assert code == 0 and shown is not None
    assert shown["allowed_overrides"] == {"agent": {"first_message": True, "language": True,
                                                    "prompt": {"prompt": True}}}
    assert await greeting(emu, "agent_emulator", {"agent": {"first_message": "Hallo.", "language": "de",
                                                            "prompt": {"prompt": "Sei kurz."}}}) == "Hallo."
    code, _, err = await admin(emu, capsys, "--engine-id", "agent_emulator", "allow-overrides")
    assert code == 2 and "name at least one override" in err
