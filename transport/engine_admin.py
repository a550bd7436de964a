"""Configure a Speech Engine over the ElevenLabs REST API: audio formats and the brain server's secret header.

Commands::

    python -m transport.engine_admin show
    python -m transport.engine_admin set-formats --input pcm_16000 --output pcm_24000
    python -m transport.engine_admin set-brain-secret --header X-Brain-Secret --value-env BRAIN_SECRET
    python -m transport.engine_admin allow-overrides --first-message [--language --prompt]

``ELEVENLABS_API_KEY`` authenticates (header ``xi-api-key``; never printed, never in an error);
``SPEECH_ENGINE_ID`` or ``--engine-id`` names the engine; ``ELEVENLABS_BASE_URL`` (or ``ELEVENLABS_API_BASE``)
moves the API, e.g. to the local emulator. A header value is taken from ``--value-env NAME`` or stdin
(``--value -``) so it stays out of shell history and ``ps``; ``--value TEXT`` works too. ``--secret-id`` stores
a reference to a workspace secret instead of the value itself, which keeps the value out of the engine's
config entirely. ``show`` masks every header value.

Where the settings live (elevenlabs/elevenlabs-python @54e5899, 2026-07-23, Fern-generated from the API
definition):

- Speech Engine resource, ``GET/PATCH /v1/speech-engine/{speech_engine_id}`` (``speech_engine/raw_client.py``;
  the id "accepts seng_ or agent_ prefix"). Body (``types/speech_engine_response.py``): ``asr`` →
  ``user_input_audio_format`` (``types/asr_conversational_config.py``), ``tts`` → ``agent_output_audio_format``
  (``types/tts_conversational_config_output.py``), and ``speech_engine`` (``types/speech_engine_config.py``)
  → ``ws_url`` ("The WebSocket URL for the transcript server", required) and ``request_headers`` ("Headers to
  include in the WebSocket connection request"; values are a string, ``{"secret_id": …}`` or a dynamic
  variable, ``types/speech_engine_config_request_headers_value.py``). The brain server is that ``ws_url``;
  the engine also signs its connection with an ``X-Elevenlabs-Speech-Engine-Authorization`` JWT
  (``speech_engine/server.py``), see ``examples/brain_server_check.py``.
- Agent resource, ``GET/PATCH /v1/convai/agents/{agent_id}`` (``conversational_ai/agents/raw_client.py``):
  the same format fields under ``conversation_config.asr`` / ``conversation_config.tts``
  (``types/conversational_config.py``); a custom LLM's endpoint is ``conversation_config.agent.prompt.
  custom_llm`` (``types/prompt_agent_api_model_output.py``, ``types/custom_llm.py``) with ``url`` (required)
  and ``request_headers`` (string, secret or env-var locator values).
- Formats: ``pcm_8000 … pcm_48000``, ``ulaw_8000`` (``types/asr_input_format.py``, ``tts_output_format.py``).
- Which ``conversation_config_override`` fields a client may send (else the conversation ends with
  ``override_error``, close 1008): on the Speech Engine resource ``overrides.first_message`` (bool; the only
  switch, ``types/speech_engine_conversation_initiation_client_data_config.py``); on the agent resource
  ``platform_settings.overrides.conversation_config_override`` mirroring the override's shape with booleans,
  ``agent.first_message``, ``agent.language``, ``agent.prompt.prompt`` (``types/agent_platform_settings_
  request_model.py``, ``conversation_initiation_client_data_config_input.py``, ``agent_config_override_config.py``).

``--resource auto`` (default) picks the Speech Engine resource for ``seng_`` ids and the agent resource
otherwise. A header change sends the whole ``request_headers`` map (existing headers kept) together with the
required URL, because whether PATCH merges or replaces nested maps is not documented.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from core.errors import BridgeError, ConfigError, EngineError
from core.formats import ENGINE_FORMATS
from core.redact import MASK, Redactor, redact_url
from transport.signed_url import DEFAULT_API_BASE, api_request, check_api_base

__all__ = ["EngineAdmin", "EngineRef", "FieldPaths", "main", "mask_headers", "overrides_patch", "summary"]

Resource = Literal["speech-engine", "agent"]
Json = dict[str, Any]
# RFC 9110 field-name token characters.
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}")


@dataclass(frozen=True)
class FieldPaths:
    input_format: tuple[str, ...]
    output_format: tuple[str, ...]
    brain_url: tuple[str, ...]
    brain_headers: tuple[str, ...]


PATHS: Final[dict[Resource, FieldPaths]] = {
    "speech-engine": FieldPaths(("asr", "user_input_audio_format"), ("tts", "agent_output_audio_format"),
                                ("speech_engine", "ws_url"), ("speech_engine", "request_headers")),
    "agent": FieldPaths(("conversation_config", "asr", "user_input_audio_format"),
                        ("conversation_config", "tts", "agent_output_audio_format"),
                        ("conversation_config", "agent", "prompt", "custom_llm", "url"),
                        ("conversation_config", "agent", "prompt", "custom_llm", "request_headers")),
}


@dataclass(frozen=True)
class EngineRef:
    engine_id: str
    resource: Resource

    @classmethod
    def of(cls, engine_id: str, resource: str = "auto") -> EngineRef:
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,128}", engine_id):
            raise ConfigError("the engine id must be letters, digits, '_' or '-'")
        if resource == "auto":
            resource = "speech-engine" if engine_id.startswith("seng_") else "agent"
        if resource not in PATHS:
            raise ConfigError(f"unknown resource {resource!r}")
        return cls(engine_id, resource)

    @property
    def path(self) -> str:
        prefix = "/v1/speech-engine/" if self.resource == "speech-engine" else "/v1/convai/agents/"
        return prefix + self.engine_id

    @property
    def paths(self) -> FieldPaths:
        return PATHS[self.resource]


def _get(body: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = body
    for key in path:
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return node


def _nest(path: tuple[str, ...], value: Any) -> Json:
    out: Json = {path[-1]: value}
    for key in reversed(path[:-1]):
        out = {key: out}
    return out


def mask_headers(headers: object) -> dict[str, Any]:
    """Header names with values masked; secret/env references are kept (they name, not hold, a secret)."""
    if not isinstance(headers, Mapping):
        return {}
    masked: dict[str, Any] = {}
    for name, value in headers.items():
        if isinstance(value, Mapping) and set(value) & {"secret_id", "env_var_label"}:
            masked[str(name)] = {k: v for k, v in value.items() if k in ("secret_id", "env_var_label")}
        elif isinstance(value, Mapping) and "variable_name" in value:
            masked[str(name)] = {"variable_name": value["variable_name"]}
        else:
            masked[str(name)] = MASK
    return masked


def summary(ref: EngineRef, body: Mapping[str, Any]) -> Json:
    """What ``show`` prints: the settings this tool manages, header values masked."""
    p = ref.paths
    brain_url = _get(body, p.brain_url)
    return {
        "id": body.get("speech_engine_id") or body.get("agent_id") or ref.engine_id,
        "resource": ref.resource,
        "name": body.get("name"),
        "user_input_audio_format": _get(body, p.input_format),
        "agent_output_audio_format": _get(body, p.output_format),
        "brain_url": redact_url(brain_url) if isinstance(brain_url, str) and brain_url else brain_url,
        "brain_request_headers": mask_headers(_get(body, p.brain_headers)),
        "allowed_overrides": _get(body, OVERRIDE_PATHS[ref.resource]),
    }


OVERRIDE_PATHS: Final[dict[Resource, tuple[str, ...]]] = {
    "speech-engine": ("overrides",),
    "agent": ("platform_settings", "overrides", "conversation_config_override"),
}


def overrides_patch(ref: EngineRef, *, first_message: bool, language: bool = False, prompt: bool = False,
                    allow: bool = True) -> Json:
    """The PATCH body that allows (or with ``allow=False`` forbids) the named client overrides."""
    if not (first_message or language or prompt):
        raise ConfigError("name at least one override: --first-message, --language, --prompt")
    if ref.resource == "speech-engine":
        if language or prompt:
            raise ConfigError("the Speech Engine resource has only the first-message switch; use --resource agent "
                              "(with the agent id) for --language and --prompt")
        return {"overrides": {"first_message": allow}}
    agent: Json = {}
    if first_message:
        agent["first_message"] = allow
    if language:
        agent["language"] = allow
    if prompt:
        agent["prompt"] = {"prompt": allow}
    return _nest(OVERRIDE_PATHS["agent"], {"agent": agent})


def formats_patch(ref: EngineRef, input_format: str | None, output_format: str | None) -> Json:
    for name in (input_format, output_format):
        if name is not None and name not in ENGINE_FORMATS:
            raise ConfigError(f"unknown audio format {name!r}; expected one of {', '.join(ENGINE_FORMATS)}")
    if input_format is None and output_format is None:
        raise ConfigError("give --input and/or --output")
    patch: Json = {}
    for path, value in ((ref.paths.input_format, input_format), (ref.paths.output_format, output_format)):
        if value is not None:
            _deep_update(patch, _nest(path, value))
    return patch


def brain_secret_patch(ref: EngineRef, current: Mapping[str, Any], header: str, value: object,
                       url: str | None = None) -> Json:
    """The PATCH body that sets ``header`` (a string value or a ``{"secret_id": …}`` locator)."""
    if not _HEADER_NAME.fullmatch(header):
        raise ConfigError(f"{header!r} is not a valid HTTP header name")
    if isinstance(value, str) and (not value or "\r" in value or "\n" in value):
        raise ConfigError("the header value must be non-empty and on one line")
    p = ref.paths
    url = url or _get(current, p.brain_url)
    if not isinstance(url, str) or not url:
        what = "speech_engine.ws_url" if ref.resource == "speech-engine" else "custom_llm.url"
        raise ConfigError(f"the engine has no brain server URL ({what}) yet: pass --url")
    existing = _get(current, p.brain_headers)
    headers = {k: v for k, v in existing.items() if k.lower() != header.lower()} \
        if isinstance(existing, Mapping) else {}
    headers[header] = value
    patch = _nest(p.brain_url, url)
    _deep_update(patch, _nest(p.brain_headers, headers))
    return patch


def _deep_update(target: Json, patch: Mapping[str, Any]) -> None:
    for key, value in patch.items():
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _deep_update(target[key], value)
        else:
            target[key] = value


class EngineAdmin:
    """GET and PATCH one engine's configuration. Errors never carry the key or a header value."""

    def __init__(self, api_key: str, *, base_url: str = DEFAULT_API_BASE, timeout: float = 15.0,
                 secrets: Sequence[str] = ()) -> None:
        if not api_key:
            raise ConfigError("ELEVENLABS_API_KEY is not set")
        check_api_base(base_url)
        self._api_key = api_key
        self._base = base_url.rstrip("/")
        self._timeout = timeout
        self._redact = Redactor([api_key, *secrets])

    async def get(self, ref: EngineRef) -> Json:
        return await self._request("GET", ref, None)

    async def patch(self, ref: EngineRef, body: Json) -> Json:
        return await self._request("PATCH", ref, body)

    async def _request(self, method: str, ref: EngineRef, body: Json | None) -> Json:
        url = self._base + ref.path
        where = f"{method} {redact_url(url)}"
        status, raw = await api_request(method, url, self._api_key, where=where, timeout=self._timeout,
                                        body=body, auth_hint="check ELEVENLABS_API_KEY")
        if status != 200:
            raise EngineError(f"{where} answered HTTP {status}: {self._detail(raw)}")
        try:
            parsed = json.loads(raw)
        except ValueError:
            raise EngineError(f"{where} did not answer JSON") from None
        if not isinstance(parsed, dict):
            raise EngineError(f"{where} answered {type(parsed).__name__}, not an object")
        return parsed

    def _detail(self, raw: bytes) -> str:
        """The API's own explanation, short and scrubbed (it could echo what we sent)."""
        try:
            detail: Any = json.loads(raw).get("detail", "")
        except (ValueError, AttributeError):
            detail = raw[:200].decode("utf-8", "replace")
        if isinstance(detail, Mapping):
            detail = detail.get("message") or json.dumps(detail)
        return self._redact(str(detail)[:300]) or "no detail"


def _header_value(args: argparse.Namespace, env: Mapping[str, str]) -> object:
    if args.secret_id:
        return {"secret_id": args.secret_id}
    if args.value_env:
        value = env.get(args.value_env)
        if not value:
            raise ConfigError(f"environment variable {args.value_env} is empty or not set")
        return value
    if args.value == "-":
        return sys.stdin.readline().rstrip("\r\n")
    if args.value:
        return str(args.value)
    raise ConfigError("give the header value with --value-env NAME, --value - (stdin), --value or --secret-id")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m transport.engine_admin",
                                     description="Show or change a Speech Engine's formats and brain-server "
                                                 "headers through the ElevenLabs REST API")
    parser.add_argument("--engine-id", help="Speech Engine (seng_…) or agent (agent_…) id; "
                                            "default $SPEECH_ENGINE_ID")
    parser.add_argument("--resource", choices=("auto", "speech-engine", "agent"), default="auto",
                        help="API resource to use (auto: speech-engine for seng_ ids, else agent)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("show", help="print the formats and brain-server settings (header values masked)")
    formats = sub.add_parser("set-formats", help="set the audio formats")
    formats.add_argument("--input", choices=ENGINE_FORMATS, help="user_input_audio_format")
    formats.add_argument("--output", choices=ENGINE_FORMATS, help="agent_output_audio_format")
    secret = sub.add_parser("set-brain-secret", help="set a request header the engine sends the brain server")
    secret.add_argument("--header", required=True, help="header name, e.g. X-Brain-Secret")
    source = secret.add_mutually_exclusive_group()
    source.add_argument("--value-env", metavar="NAME", help="read the value from this environment variable")
    source.add_argument("--value", help="the value, or '-' to read one line from stdin")
    source.add_argument("--secret-id", help="reference a workspace secret instead of sending a value")
    secret.add_argument("--url", help="also set the brain server URL (ws_url / custom_llm.url)")
    allow = sub.add_parser("allow-overrides", help="let clients override the first message (and, on the agent "
                                                   "resource, the language and prompt) at conversation start")
    allow.add_argument("--first-message", action="store_true", help="agent.first_message (runner --first-message)")
    allow.add_argument("--language", action="store_true", help="agent.language (agent resource only)")
    allow.add_argument("--prompt", action="store_true", help="agent.prompt.prompt (agent resource only)")
    allow.add_argument("--deny", action="store_true", help="forbid the named overrides instead")
    return parser.parse_args(argv)


async def run(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    try:
        args = parse_args(argv)
    except SystemExit as exc:  # usage errors and --help: argparse has printed why
        return exc.code if isinstance(exc.code, int) else 2
    redact = Redactor([env.get("ELEVENLABS_API_KEY")])
    try:
        engine_id = args.engine_id or env.get("SPEECH_ENGINE_ID") or ""
        if not engine_id:
            raise ConfigError("give --engine-id or set SPEECH_ENGINE_ID")
        ref = EngineRef.of(engine_id, args.resource)
        base = env.get("ELEVENLABS_BASE_URL") or env.get("ELEVENLABS_API_BASE") or DEFAULT_API_BASE
        value = _header_value(args, env) if args.command == "set-brain-secret" else None
        secrets = [value] if isinstance(value, str) else []
        redact.add(*secrets)
        admin = EngineAdmin(env.get("ELEVENLABS_API_KEY", ""), base_url=base, secrets=secrets)
        if args.command == "show":
            body = await admin.get(ref)
        elif args.command == "set-formats":
            body = await admin.patch(ref, formats_patch(ref, args.input, args.output))
        elif args.command == "allow-overrides":
            body = await admin.patch(ref, overrides_patch(ref, first_message=args.first_message,
                                                          language=args.language, prompt=args.prompt,
                                                          allow=not args.deny))
        else:
            current = await admin.get(ref)
            body = await admin.patch(ref, brain_secret_patch(ref, current, args.header, value, args.url))
    except ConfigError as exc:
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        return 2
    except BridgeError as exc:
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        return 1
    print(redact(json.dumps(summary(ref, body), indent=2)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return asyncio.run(run(argv))


if __name__ == "__main__":
    sys.exit(main())
