"""The agent calls a client tool, as a real engine does when its LLM picks one: a test's hook.

    call_id = call_tool(conversation, "set_theme", {"theme": "dark"})
    result = await tool_result(conversation, call_id)        # wire.ClientToolResult: result, is_error

Results are the conversation's recorded client messages (``conversation.client_messages``); nothing here
changes what the emulator does with them (the real engine hands them to the LLM, the emulator only records).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

from emulator import wire
from emulator.conversation import Conversation

__all__ = ["call_tool", "tool_result", "tool_results"]

_ids = itertools.count(1)


def call_tool(conversation: Conversation, tool_name: str, parameters: Mapping[str, Any], *,
              event_id: int | None = None, expects_response: bool | None = None) -> str:
    """Send ``client_tool_call`` now, in order with everything else; returns its ``tool_call_id``. The
    conversation must have started (its metadata sent): a real engine calls tools only in a conversation."""
    if conversation.init is None:
        raise RuntimeError("the client has not initiated the conversation yet: wait for conversation.init")
    call_id = f"toolu_{next(_ids):04d}"
    eid = event_id if event_id is not None else (conversation.current_reply.event_id
                                                   if conversation.current_reply is not None else 1)
    conversation.send(wire.client_tool_call(tool_name, call_id, parameters, eid, expects_response),
                      "client_tool_call", eid)
    return call_id


def tool_results(conversation: Conversation, tool_call_id: str | None = None) -> list[wire.ClientToolResult]:
    """Every ``client_tool_result`` received so far (for one id, or all)."""
    return [m for m in conversation.client_messages if isinstance(m, wire.ClientToolResult)
            and (tool_call_id is None or m.tool_call_id == tool_call_id)]


async def tool_result(conversation: Conversation, tool_call_id: str, timeout: float = 10.0) -> wire.ClientToolResult:
    """The first result for ``tool_call_id``; TimeoutError if none comes."""
    await conversation.wait_for(lambda: bool(tool_results(conversation, tool_call_id)), timeout)
    return tool_results(conversation, tool_call_id)[0]
