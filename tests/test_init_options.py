"""Start options: the CLI's typing rule, the overridable subset, dispatch metadata, and how they reach the init."""

from __future__ import annotations

import json
from typing import Any

import pytest

from core.errors import ConfigError
from transport.config import EngineSettings
from transport.engine_protocol import InitiationData
from transport.init_options import (
    StartOptions,
    parse_dispatch_metadata,
    parse_dynamic_var,
    parse_override_json,
    validate_overrides,
)


@pytest.mark.parametrize(("arg", "expected"), [
    ("name=Ada", ("name", "Ada")),
    ("n=42", ("n", 42)), ("n=-7", ("n", -7)), ("n=0", ("n", 0)),
    ("ratio=2.5", ("ratio", 2.5)), ("vip=true", ("vip", True)), ("vip=false", ("vip", False)),
    ("zip=007", ("zip", "007")), ("x=1e3", ("x", "1e3")), ("x=.5", ("x", ".5")), ("b=True", ("b", "True")),
    ('zip="12345"', ("zip", "12345")), ('q="true"', ("q", "true")),
    ("empty=", ("empty", "")), ("eq=a=b", ("eq", "a=b")), ("s= padded ", ("s", " padded ")),
])
def test_dynamic_var_values_stay_strings_unless_clearly_typed(arg: str, expected: tuple[str, Any]) -> None:
    name, value = parse_dynamic_var(arg)
    assert (name, value) == expected and type(value) is type(expected[1])


@pytest.mark.parametrize("arg", ["noequals", "=x", "1abc=2", "bad-name=1", "sp ace=1"])
def test_dynamic_var_needs_a_name_and_an_equals_sign(arg: str) -> None:
    with pytest.raises(ConfigError, match="name=value"):
        parse_dynamic_var(arg)


def test_the_client_overridable_subset_is_accepted() -> None:
    full = {"agent": {"first_message": "Hi", "language": "de", "prompt": {"prompt": "Be brief.", "llm": "gpt-4o"},
                      "native_mcp_server_ids": ["m1"]},
            "tts": {"voice_id": "v", "stability": 0.5, "speed": 1.2, "similarity_boost": 1},
            "asr": {"keywords": ["LiveKit"]}, "conversation": {"text_only": False, "client_events": ["audio"]}}
    assert validate_overrides(full) == full
    assert parse_override_json(json.dumps(full)) == full


@pytest.mark.parametrize(("overrides", "message"), [
    ({"agent": {"first_mesage": "Hi"}}, r"overrides\.agent\.first_mesage is not a client-overridable"),
    ({"tts": {"model_id": "x"}}, r"overrides\.tts\.model_id is not"),
    ({"turn": {}}, r"overrides\.turn is not"),
    ({"agent": {"first_message": 3}}, r"overrides\.agent\.first_message must be a string"),
    ({"tts": {"speed": 9}}, r"overrides\.tts\.speed must be within 0\.7\.\.5"),
    ({"tts": {"stability": True}}, r"overrides\.tts\.stability must be a number"),
    ({"conversation": {"text_only": "yes"}}, r"text_only must be true or false"),
    ({"agent": {"native_mcp_server_ids": [str(i) for i in range(11)]}}, r"at most 10"),
    ({"agent": "Hi"}, r"overrides\.agent must be a JSON object"),
    ([], r"overrides must be a JSON object"),
])
def test_bad_overrides_name_the_field(overrides: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate_overrides(overrides)


def test_override_json_must_parse() -> None:
    with pytest.raises(ConfigError, match="--override-json is not valid JSON"):
        parse_override_json("{agent:")


def test_start_options_merge_into_the_init() -> None:
    base = InitiationData(overrides={"agent": {"language": "de"}, "tts": {"speed": 1.1}},
                          dynamic_variables={"a": 1, "b": "x"}, user_id="u1")
    options = StartOptions(first_message="Hallo {{name}}", overrides={"tts": {"speed": 0.9}},
                           dynamic_variables={"b": "y", "name": "Ada"})
    merged = options.apply(base)
    assert merged.overrides == {"agent": {"language": "de", "first_message": "Hallo {{name}}"}, "tts": {"speed": 0.9}}
    assert merged.dynamic_variables == {"a": 1, "b": "y", "name": "Ada"}
    assert merged.user_id == "u1"
    assert base.overrides == {"agent": {"language": "de"}, "tts": {"speed": 1.1}}  # not mutated
    assert StartOptions().apply(base) is base
    assert StartOptions(first_message="").overrides == {"agent": {"first_message": ""}}  # "" means: wait


def test_first_message_given_twice_differently_is_an_error() -> None:
    with pytest.raises(ConfigError, match="given twice"):
        StartOptions(first_message="A", overrides={"agent": {"first_message": "B"}})
    assert StartOptions(first_message="A", overrides={"agent": {"first_message": "A"}}).overrides == {
        "agent": {"first_message": "A"}}


def test_engine_settings_refuse_a_bad_init_and_take_options() -> None:
    with pytest.raises(ConfigError, match=r"init\.overrides\.agent\.voice is not"):
        EngineSettings(url="ws://x", init=InitiationData(overrides={"agent": {"voice": "x"}}))
    with pytest.raises(ConfigError, match=r"must be a string, number or boolean"):
        EngineSettings(url="ws://x", init=InitiationData(dynamic_variables={"a": None}))  # type: ignore[dict-item]
    settings = EngineSettings(url="ws://x").with_options(StartOptions(first_message="Hi"))
    assert settings.init.overrides == {"agent": {"first_message": "Hi"}}


def test_dispatch_metadata_shape() -> None:
    assert parse_dispatch_metadata("").empty and parse_dispatch_metadata("  \n").empty
    options = parse_dispatch_metadata(json.dumps({
        "first_message": "Hi Ada", "dynamic_variables": {"customer": "Ada", "tier": 2},
        "overrides": {"agent": {"language": "en"}}, "user_id": "crm-1"}))
    assert options.overrides == {"agent": {"language": "en", "first_message": "Hi Ada"}}
    assert options.dynamic_variables == {"customer": "Ada", "tier": 2} and options.user_id == "crm-1"
    assert parse_dispatch_metadata('{"dynamic_variables": null}').empty


@pytest.mark.parametrize(("metadata", "message"), [
    ("hello", "dispatch metadata is not JSON"),
    ("[1]", "must be a JSON object, got list"),
    ('{"firstMessage": "Hi"}', "unknown key\\(s\\) 'firstMessage'"),
    ('{"first_message": 5}', "first_message must be a string"),
    ('{"dynamic_variables": {"a": {"b": 1}}}', r"dynamic_variables\.a must be a string, number or boolean"),
    ('{"dynamic_variables": {"1a": "x"}}', "is not a variable name"),
    ('{"dynamic_variables": []}', "dynamic_variables must be a JSON object"),
    ('{"overrides": {"agent": {"voice_id": "v"}}}', r"overrides\.agent\.voice_id is not"),
    ('{"user_id": 7}', "user_id must be a string"),
])
def test_bad_dispatch_metadata_is_a_clear_config_error(metadata: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_dispatch_metadata(metadata)
