"""What the emulator does with a conversation's init: override permissions, dynamic variables, the first message.

Sans-I/O; :meth:`Conversation._start` asks :func:`refusal` before it answers the init, and :func:`first_message`
for what to say first.

- **Permissions** live where the real API keeps them: the agent's ``platform_settings.overrides.
  conversation_config_override`` mirrors the override's shape with booleans (elevenlabs-python
  ``types/conversation_initiation_client_data_config_input.py``, ``agent_config_override_config.py``:
  ``agent.first_message``, ``agent.language``, ``agent.prompt.prompt``, …; ``tts.voice_id``; ``conversation.
  text_only``). The Speech Engine view shows only ``overrides.first_message``
  (``types/speech_engine_conversation_initiation_client_data_config.py``), which is the same switch. Every
  value the client overrides must have ``true`` at its path (or at a parent path); else the conversation
  ends with an ``error`` of type ``override_error`` and close 1008 (AAPI ``ErrorType``), before any metadata.
  Nothing is allowed by default, as on a new agent.
- **Dynamic variables**: ``{{name}}`` placeholders in the first message and the prompt (the agent's or the
  override's) must be given in ``dynamic_variables``, else ``missing_dynamic_variable`` / 1008. ``system__*``
  names are the server's own and always count as given. INFERRED: the real service's exact wording and
  whether it checks at init or at first use are not documented; checking at init is the strict reading.
- **First message**: the override's ``agent.first_message`` when present (``""``: wait for the user), else
  the agent's; placeholders filled in. The emulator speaks it right after the metadata.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any, Final

from emulator import wire
from emulator.agents import AgentRecord

__all__ = ["first_message", "leaf_paths", "refusal", "sets_first_message"]

_PLACEHOLDER: Final = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def leaf_paths(value: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every path to a non-object value (the fields the client sets)."""
    for key, item in value.items():
        if isinstance(item, Mapping) and item:
            yield from leaf_paths(item, (*prefix, str(key)))
        else:
            yield (*prefix, str(key))


def _allowed(permissions: object, path: tuple[str, ...]) -> bool:
    node = permissions
    for key in path:
        if node is True:
            return True
        if not isinstance(node, Mapping):
            return False
        node = node.get(key)
    return node is True


def permissions(agent: AgentRecord) -> object:
    overrides = agent.platform_settings.get("overrides")
    return overrides.get("conversation_config_override") if isinstance(overrides, Mapping) else None


def _agent_texts(agent: AgentRecord, init: wire.ClientInit) -> list[str]:
    texts = [first_message(agent, init)]
    base = agent.conversation_config.get("agent", {}).get("prompt", {})
    override = init.overrides.get("agent", {}).get("prompt", {}) if isinstance(
        init.overrides.get("agent"), Mapping) else {}
    for prompt in (override, base):
        if isinstance(prompt, Mapping) and isinstance(prompt.get("prompt"), str):
            texts.append(prompt["prompt"])
            break
    return texts


def refusal(agent: AgentRecord, init: wire.ClientInit) -> tuple[str, str] | None:
    """``(error_type, message)`` when the server would refuse this init, else None."""
    allowed = permissions(agent)
    for path in leaf_paths(init.overrides):
        if not _allowed(allowed, path):
            field = ".".join(path)
            return "override_error", (f"Override for field '{field}' is not allowed by config "
                                      f"(enable it in platform_settings.overrides.conversation_config_override)")
    given = set(init.dynamic_variables)
    missing = sorted({name for text in _agent_texts(agent, init) for name in _PLACEHOLDER.findall(text)
                      if name not in given and not name.startswith("system__")})
    if missing:
        return "missing_dynamic_variable", f"Missing required dynamic variables: {', '.join(missing)}"
    return None


def first_message(agent: AgentRecord, init: wire.ClientInit, conversation_id: str = "") -> str:
    """What the agent says first (``""``: nothing), placeholders filled from the init's variables."""
    text: object = init.overrides["agent"]["first_message"] if sets_first_message(init) else None
    if text is None:
        text = agent.conversation_config.get("agent", {}).get("first_message", "")
    if not isinstance(text, str):
        return ""
    values = {**{k: json.dumps(v) if isinstance(v, bool) else str(v) for k, v in init.dynamic_variables.items()},
              "system__agent_id": agent.agent_id,
              "system__conversation_id": conversation_id}
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), text)


def sets_first_message(init: wire.ClientInit) -> bool:
    agent = init.overrides.get("agent")
    return isinstance(agent, Mapping) and "first_message" in agent
