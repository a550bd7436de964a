"""Agent configuration behind the emulator's REST endpoints.

Two views of one record, as on the real API, where ``agent_id`` accepts an agent id or a Speech Engine id
"resolved to the same underlying resource" (elevenlabs-python ``conversations/raw_client.py`` docstrings):

- ``GET/PATCH /v1/convai/agents/{agent_id}`` (elevenlabs-python ``conversational_ai/agents/raw_client.py``):
  ``{"agent_id", "name", "conversation_config": {"asr": {"user_input_audio_format"}, "tts":
  {"agent_output_audio_format"}, "turn", "conversation": {"max_duration_seconds", "client_events"}, "agent":
  {"prompt": {"custom_llm": {"url", "request_headers"}}}}, "platform_settings": {"auth": {"enable_auth"}},
  "tags", "metadata"}``.
- ``GET/PATCH /v1/speech-engine/{speech_engine_id}`` (elevenlabs-python ``speech_engine/raw_client.py``,
  ``types/speech_engine_response.py``): ``{"speech_engine_id", "name", "speech_engine": {"ws_url",
  "request_headers"}, "asr", "tts", "turn", "conversation", "privacy", "call_limits", "language", "tags",
  "overrides", "metadata"}``. ``speech_engine.request_headers`` is where the brain server's shared secret
  goes (values are strings or ``{"secret_id": …}`` locators); the real service also signs its upstream
  connection with an ``X-Elevenlabs-Speech-Engine-Authorization`` HS256 JWT keyed by SHA-256 of the API key
  (``speech_engine/resource.py``). When ``ws_url`` is set, every new conversation dials that brain server
  with these headers and the signed JWT (:mod:`emulator.brain`, :mod:`emulator.voice`).

PATCH deep-merges the body (objects merge, everything else replaces) and is refused with 422 when an audio
format is not one of the seven engine formats; a refused PATCH changes nothing.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any

from core.errors import ConfigError
from core.formats import parse_format
from emulator.config import EmulatorConfig

__all__ = ["AgentRecord", "AgentStore", "PatchError"]

Json = dict[str, Any]


class PatchError(Exception):
    """A PATCH body the API would refuse (HTTP 422)."""


def _merge(base: Json, patch: Json) -> Json:
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@dataclass(slots=True)
class AgentRecord:
    agent_id: str
    name: str
    conversation_config: Json
    platform_settings: Json
    speech_engine: Json = field(default_factory=lambda: {"ws_url": "", "request_headers": {}})
    tags: list[str] = field(default_factory=list)
    created_unix: int = field(default_factory=lambda: int(time.time()))
    updated_unix: int = field(default_factory=lambda: int(time.time()))

    @property
    def input_format(self) -> str:
        return str(self.conversation_config["asr"]["user_input_audio_format"])

    @property
    def output_format(self) -> str:
        return str(self.conversation_config["tts"]["agent_output_audio_format"])

    @property
    def requires_auth(self) -> bool:
        return bool(self.platform_settings.get("auth", {}).get("enable_auth", False))

    @property
    def max_duration_s(self) -> float | None:
        value = self.conversation_config.get("conversation", {}).get("max_duration_seconds")
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

    def _metadata(self) -> Json:
        return {"created_at_unix_secs": self.created_unix, "updated_at_unix_secs": self.updated_unix}

    def agent_view(self) -> Json:
        return {"agent_id": self.agent_id, "name": self.name,
                "conversation_config": copy.deepcopy(self.conversation_config),
                "platform_settings": copy.deepcopy(self.platform_settings), "tags": list(self.tags),
                "metadata": self._metadata()}

    def speech_engine_view(self) -> Json:
        cc = self.conversation_config
        return {"speech_engine_id": self.agent_id, "name": self.name,
                "speech_engine": copy.deepcopy(self.speech_engine),
                "asr": copy.deepcopy(cc.get("asr", {})), "tts": copy.deepcopy(cc.get("tts", {})),
                "turn": copy.deepcopy(cc.get("turn", {})),
                "conversation": copy.deepcopy(cc.get("conversation", {})),
                "privacy": {}, "call_limits": {}, "language": cc.get("agent", {}).get("language", "en"),
                "tags": list(self.tags), "overrides": {"first_message": self.first_message_overridable},
                "metadata": self._metadata()}

    @property
    def first_message_overridable(self) -> bool:
        """The Speech Engine's ``overrides.first_message``: the agent's ``platform_settings.overrides.
        conversation_config_override.agent.first_message`` under another name (emulator/overrides.py)."""
        node: Any = self.platform_settings
        for key in ("overrides", "conversation_config_override", "agent", "first_message"):
            node = node.get(key) if isinstance(node, dict) else None
        return node is True

    def patch_agent(self, body: Json) -> None:
        cc = _merge(self.conversation_config, _obj(body, "conversation_config"))
        ps = _merge(self.platform_settings, _obj(body, "platform_settings"))
        self._commit(cc, ps, self.speech_engine, body)

    def patch_speech_engine(self, body: Json) -> None:
        cc = self.conversation_config
        for section in ("asr", "tts", "turn", "conversation"):
            if section in body:
                cc = _merge(cc, {section: _obj(body, section)})
        engine = _merge(self.speech_engine, _obj(body, "speech_engine"))
        ps = self.platform_settings
        if "overrides" in body:
            allow = _obj(body, "overrides").get("first_message", self.first_message_overridable)
            if not isinstance(allow, bool):
                raise PatchError("overrides.first_message must be a boolean")
            ps = _merge(ps, {"overrides": {"conversation_config_override": {"agent": {"first_message": allow}}}})
        headers = engine.get("request_headers")
        if not isinstance(headers, dict) or not all(
                isinstance(v, str) or (isinstance(v, dict) and isinstance(v.get("secret_id"), str))
                for v in headers.values()):
            raise PatchError("speech_engine.request_headers values must be strings or {\"secret_id\": ...}")
        self._commit(cc, ps, engine, body)

    def _commit(self, cc: Json, ps: Json, engine: Json, body: Json) -> None:
        for section, key in (("asr", "user_input_audio_format"), ("tts", "agent_output_audio_format")):
            value = cc.get(section, {}).get(key)
            try:
                parse_format(value if isinstance(value, str) else repr(value))
            except ConfigError as exc:
                raise PatchError(f"{section}.{key}: {exc}") from None
        name, tags = body.get("name", self.name), body.get("tags", self.tags)
        if not isinstance(name, str) or not (isinstance(tags, list) and all(isinstance(t, str) for t in tags)):
            raise PatchError("name must be a string and tags a list of strings")
        self.conversation_config, self.platform_settings, self.speech_engine = cc, ps, engine
        self.name, self.tags = name, list(tags)
        self.updated_unix = int(time.time())


def _obj(body: Json, key: str) -> Json:
    value = body.get(key, {})
    if not isinstance(value, dict):
        raise PatchError(f"{key} must be an object")
    return value


class AgentStore:
    def __init__(self, config: EmulatorConfig) -> None:
        self._config = config
        self._agents: dict[str, AgentRecord] = {}
        self.create(config.agent_id)

    def create(self, agent_id: str, *, name: str | None = None) -> AgentRecord:
        config = self._config
        record = AgentRecord(
            agent_id=agent_id, name=name or f"emulated {agent_id}",
            conversation_config={
                "asr": {"user_input_audio_format": config.input_format},
                "tts": {"agent_output_audio_format": config.output_format},
                "turn": {},
                "conversation": {"max_duration_seconds": config.max_duration_s},
                "agent": {"first_message": "", "language": "en", "prompt": {}},
            },
            platform_settings={"auth": {"enable_auth": config.require_auth}},
            speech_engine={"ws_url": config.brain_url or "", "request_headers": dict(config.brain_headers)},
        )
        self._agents[agent_id] = record
        return record

    def get(self, agent_id: str) -> AgentRecord | None:
        record = self._agents.get(agent_id)
        if record is None and self._config.auto_create_agents and agent_id:
            record = self.create(agent_id)
        return record

    def __iter__(self) -> Any:
        return iter(self._agents.values())
