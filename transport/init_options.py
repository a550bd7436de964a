"""What a conversation is started with: first message, overrides, dynamic variables — parsed and checked.

Sans-I/O: text in, validated values or a :class:`~core.errors.ConfigError` out. Three ways in, one result
(:class:`StartOptions`, applied to the engine's :class:`~transport.engine_protocol.InitiationData`):

- the command line: ``--first-message TEXT``, ``--dynamic-var k=v`` (repeatable), ``--override-json JSON``;
- a worker job's dispatch metadata, a JSON object (:func:`parse_dispatch_metadata`)::

      {"first_message": "Hi Ada, thanks for calling.",
       "dynamic_variables": {"customer": "Ada", "tier": 2},
       "overrides": {"agent": {"language": "de"}},
       "user_id": "crm-4711"}

  every key optional; an empty metadata string means "nothing to add";
- the embedding API: ``StartOptions(...)`` or :func:`validate_overrides` on your own mapping.

Rules, and where they come from:

- Overrides are checked against the client-overridable subset of ``conversation_config_override`` (AAPI
  ``ConversationConfigClientOverride``, summarised in PROTOCOL.md): ``agent.first_message``,
  ``agent.language``, ``agent.prompt.{prompt, llm}``, ``agent.native_mcp_server_ids`` (≤ 10),
  ``tts.{voice_id, stability 0–1, speed 0.7–5, similarity_boost 0–1}``, ``asr.keywords``,
  ``conversation.{text_only, client_events}``. An unknown key or a wrong type is refused *here*, naming the
  path, rather than by the engine with close 1008 mid-call. Whether the engine *allows* a field is the
  agent's setting (``platform_settings.overrides``; ``python -m transport.engine_admin allow-overrides``):
  an override it does not allow still ends the conversation with ``override_error`` / 1008, final.
- An empty ``first_message`` is meaningful: the agent waits for the caller instead of greeting.
- ``--dynamic-var k=v`` values stay strings unless they are clearly something else: ``true`` / ``false``
  (lower case) become booleans, an integer without leading zeros (``42``, ``-7``, ``0``) an int, a decimal
  with digits on both sides of the point (``2.5``) a float. ``007``, ``1e3``, ``.5``, ``True`` stay strings;
  wrap a value in double quotes to keep it a string whatever it looks like (``zip="12345"``). In JSON
  (metadata, API) the JSON type is used as given; only strings, numbers and booleans are allowed (AAPI types
  dynamic variables as ``string | number | integer | boolean``).
- Variable names are ``[A-Za-z_][A-Za-z0-9_]*`` (the ``{{name}}`` placeholders of the agent's prompt and
  first message); a variable the agent's texts use but nobody sends ends the conversation with
  ``missing_dynamic_variable`` / 1008.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final

from core.errors import ConfigError
from transport.engine_protocol import InitiationData

__all__ = ["DynamicValue", "StartOptions", "explain_refusal", "parse_dispatch_metadata", "parse_dynamic_var",
           "parse_override_json", "validate_dynamic_variables", "validate_overrides"]

DynamicValue = str | int | float | bool
_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_INT: Final = re.compile(r"-?(0|[1-9][0-9]*)")
_FLOAT: Final = re.compile(r"-?(0|[1-9][0-9]*)\.[0-9]+")
MAX_DYNAMIC_VARIABLES: Final = 256  # a sanity bound on what a dispatcher can push into every init message
MAX_TEXT: Final = 20_000  # characters of one string value (a prompt is the longest)

_Check = Callable[[object], str | None]  # None: fine; else what is wrong with the value


def _string(value: object) -> str | None:
    if not isinstance(value, str):
        return "must be a string"
    return f"is longer than {MAX_TEXT} characters" if len(value) > MAX_TEXT else None


def _boolean(value: object) -> str | None:
    return None if isinstance(value, bool) else "must be true or false"


def _number(low: float, high: float) -> _Check:
    def check(value: object) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return "must be a number"
        return None if low <= value <= high else f"must be within {low:g}..{high:g}"
    return check


def _strings(limit: int | None = None) -> _Check:
    def check(value: object) -> str | None:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return "must be a list of strings"
        return f"holds at most {limit} entries" if limit is not None and len(value) > limit else None
    return check


# The client-overridable subset (PROTOCOL.md "conversation_config_override"): nested dicts are objects,
# leaves are value checks.
_Schema = dict[str, "_Schema | _Check"]
OVERRIDABLE: Final[_Schema] = {
    "agent": {"first_message": _string, "language": _string, "prompt": {"prompt": _string, "llm": _string},
              "native_mcp_server_ids": _strings(10)},
    "tts": {"voice_id": _string, "stability": _number(0, 1), "speed": _number(0.7, 5),
            "similarity_boost": _number(0, 1)},
    "asr": {"keywords": _strings()},
    "conversation": {"text_only": _boolean, "client_events": _strings()},
}


def validate_overrides(value: object, where: str = "overrides") -> dict[str, Any]:
    """A deep copy of ``value`` if every key is in the client-overridable subset with the right type; else a
    ConfigError naming the first bad path."""
    _check_object(value, OVERRIDABLE, where)
    assert isinstance(value, Mapping)
    return copy.deepcopy(dict(value))


def _check_object(value: object, schema: _Schema, where: str) -> None:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a JSON object")
    for key, item in value.items():
        rule = schema.get(key) if isinstance(key, str) else None
        if rule is None:
            raise ConfigError(f"{where}.{key} is not a client-overridable setting (allowed here: "
                              f"{', '.join(schema)})")
        if isinstance(rule, dict):
            _check_object(item, rule, f"{where}.{key}")
        elif (problem := rule(item)) is not None:
            raise ConfigError(f"{where}.{key} {problem}")


def validate_dynamic_variables(value: object, where: str = "dynamic_variables") -> dict[str, DynamicValue]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a JSON object of name: value")
    if len(value) > MAX_DYNAMIC_VARIABLES:
        raise ConfigError(f"{where} has {len(value)} entries; at most {MAX_DYNAMIC_VARIABLES}")
    out: dict[str, DynamicValue] = {}
    for name, item in value.items():
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ConfigError(f"{where}: {name!r} is not a variable name (letters, digits, '_'; not a digit first)")
        if isinstance(item, str):
            if len(item) > MAX_TEXT:
                raise ConfigError(f"{where}.{name} is longer than {MAX_TEXT} characters")
        elif not isinstance(item, bool | int | float):
            raise ConfigError(f"{where}.{name} must be a string, number or boolean, got {type(item).__name__}")
        out[name] = item
    return out


def parse_dynamic_var(text: str) -> tuple[str, DynamicValue]:
    """``name=value`` from the command line, typed by the rule in the module docstring."""
    name, sep, raw = text.partition("=")
    name = name.strip()
    if not sep or not _NAME.fullmatch(name):
        raise ConfigError(f"--dynamic-var takes name=value with a name of letters, digits and '_', got {text!r}")
    value: DynamicValue
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        value = raw[1:-1]
    elif raw in ("true", "false"):
        value = raw == "true"
    elif _INT.fullmatch(raw):
        value = int(raw)
    elif _FLOAT.fullmatch(raw):
        value = float(raw)
    else:
        value = raw
    return name, value


def parse_override_json(text: str, where: str = "--override-json") -> dict[str, Any]:
    """The JSON text of a ``conversation_config_override`` object, validated."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{where} is not valid JSON: {exc}") from None
    return validate_overrides(value, where)


@dataclass(frozen=True, slots=True)
class StartOptions:
    """What to add to every conversation's init. ``first_message`` (also ``""``: wait for the caller) goes
    into ``overrides.agent.first_message``; giving both with different texts is an error."""

    first_message: str | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)
    dynamic_variables: Mapping[str, DynamicValue] = field(default_factory=dict)
    user_id: str | None = None

    def __post_init__(self) -> None:
        overrides = validate_overrides(self.overrides)
        if self.first_message is not None:
            problem = _string(self.first_message)
            if problem is not None:
                raise ConfigError(f"first_message {problem}")
            agent = overrides.setdefault("agent", {})
            given = agent.get("first_message")
            if given is not None and given != self.first_message:
                raise ConfigError("first_message is given twice with different texts (directly and in "
                                  "overrides.agent.first_message)")
            agent["first_message"] = self.first_message
        object.__setattr__(self, "overrides", overrides)
        object.__setattr__(self, "dynamic_variables", validate_dynamic_variables(self.dynamic_variables))
        if self.user_id is not None and (not isinstance(self.user_id, str) or not self.user_id):
            raise ConfigError("user_id must be a non-empty string")

    @property
    def empty(self) -> bool:
        return not (self.overrides or self.dynamic_variables or self.user_id is not None)

    def apply(self, init: InitiationData) -> InitiationData:
        """``init`` with these options on top: overrides deep-merged (ours win), variables merged."""
        if self.empty:
            return init
        overrides = _merge(dict(init.overrides or {}), self.overrides)
        variables = {**(init.dynamic_variables or {}), **self.dynamic_variables}
        return replace(init, overrides=overrides or None, dynamic_variables=variables or None,
                       user_id=self.user_id if self.user_id is not None else init.user_id)


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = copy.deepcopy(value)
    return out


_METADATA_KEYS: Final = ("first_message", "dynamic_variables", "overrides", "user_id")


def parse_dispatch_metadata(text: str) -> StartOptions:
    """A job's dispatch metadata (module docstring for the shape). Blank: no options. Anything else must be
    a JSON object with only the known keys, each of the right type, or a ConfigError says what is wrong."""
    if not text.strip():
        return StartOptions()
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"dispatch metadata is not JSON ({exc}); expected an object with "
                          f"{', '.join(_METADATA_KEYS)}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"dispatch metadata must be a JSON object, got {type(value).__name__}")
    unknown = sorted(set(value) - set(_METADATA_KEYS))
    if unknown:
        raise ConfigError(f"dispatch metadata has unknown key(s) {', '.join(map(repr, unknown))}; known: "
                          f"{', '.join(_METADATA_KEYS)}")
    first = value.get("first_message")
    if first is not None and not isinstance(first, str):
        raise ConfigError("dispatch metadata: first_message must be a string")
    user_id = value.get("user_id")
    if user_id is not None and not isinstance(user_id, str):
        raise ConfigError("dispatch metadata: user_id must be a string")
    return StartOptions(
        first_message=first,
        overrides=validate_overrides(_or_empty(value, "overrides"), "dispatch metadata: overrides"),
        dynamic_variables=validate_dynamic_variables(_or_empty(value, "dynamic_variables"),
                                                     "dispatch metadata: dynamic_variables"),
        user_id=user_id)


def _or_empty(value: Mapping[str, Any], key: str) -> object:
    item = value.get(key)
    return {} if item is None else item


_REFUSALS: Final = {
    "override_error": "the engine does not allow an override this bridge sent (--first-message, --override-json "
                      "or the dispatch metadata): allow it on the engine (python -m transport.engine_admin "
                      "allow-overrides) or stop sending it",
    "missing_dynamic_variable": "the agent's prompt or first message uses a {{variable}} that was not sent: "
                                "give it with --dynamic-var NAME=VALUE or the dispatch metadata",
}


def explain_refusal(error_type: str | None) -> str:
    """What to do about an init the engine refused (``""`` for other error types)."""
    hint = _REFUSALS.get(error_type or "")
    return f" — {hint}" if hint else ""
