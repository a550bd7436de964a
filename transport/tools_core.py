"""Client tools, sans-I/O: what a ``client_tool_call`` is answered with, and whom in the room to ask.

The engine asks the client to run a tool (``client_tool_call``: ``tool_name``, ``tool_call_id``, ``parameters``)
and waits for ``client_tool_result`` with the same id (AAPI types ``result`` as a string). The bridge answers
every call, never silence: a handler registered in this process, else a LiveKit RPC to a caller that
registered a method of that name, else an error result. This module holds the decisions and texts; the
asyncio part is :mod:`transport.tools`.

Rules, with their sources:

- **Results are strings.** A ``str`` goes as it is; ``None`` becomes "Client tool: <name> called
  successfully." (elevenlabs-python ``ClientTools.execute_tool``); anything else is JSON (the JS client
  stringifies objects). A result over ``max_result_chars`` is an error result, not a cut string the agent would
  take for the whole answer.
- **Errors are short and say what happened, never why in detail**: a handler's exception text can carry a
  URL with a key in it, so only :class:`~core.errors.ToolError`'s message (the handler's author chose it) and a
  participant's ``RpcError`` message (its author sent it over the wire on purpose) reach the engine; any other
  exception is named by its type only. The vendor's clients answer an unknown tool the same way ("Client tool
  with name X is not defined on client", ``is_error: true``).
- **LiveKit has no method discovery.** A call goes to the callers one after another, the participant that
  last answered this method first; an answer of ``UNSUPPORTED_METHOD`` (1400) means "not this one", and so do
  the codes that say the participant cannot take the call at all (gone, no RPC support, no acknowledgement):
  the method did not run there. Every other error is the tool's answer. Codes from livekit python-sdks
  ``livekit-rtc/livekit/rtc/rpc.py`` ``RpcError.ErrorCode`` (the JS SDK's ``RpcError.ErrorCode`` has the
  same values).
"""

from __future__ import annotations

import enum
import json
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from core.errors import ConfigError, ToolError

__all__ = ["RpcVerdict", "ToolConfig", "ToolRoutes", "ToolStats", "encode_params", "encode_result", "error_text",
           "rpc_verdict"]

# livekit-rtc rpc.py RpcError.ErrorCode
APPLICATION_ERROR: Final = 1500
CONNECTION_TIMEOUT: Final = 1501  # the destination did not acknowledge within max_round_trip_latency
RESPONSE_TIMEOUT: Final = 1502
RECIPIENT_DISCONNECTED: Final = 1503
RESPONSE_PAYLOAD_TOO_LARGE: Final = 1504
SEND_FAILED: Final = 1505
UNSUPPORTED_METHOD: Final = 1400
RECIPIENT_NOT_FOUND: Final = 1401
REQUEST_PAYLOAD_TOO_LARGE: Final = 1402
UNSUPPORTED_SERVER: Final = 1403
UNSUPPORTED_VERSION: Final = 1404

# A participant that answers one of these never ran the method: ask the next one.
_NOT_THIS_ONE: Final = frozenset({UNSUPPORTED_METHOD, RECIPIENT_NOT_FOUND, UNSUPPORTED_VERSION,
                                  CONNECTION_TIMEOUT, RECIPIENT_DISCONNECTED})
_MAX_ERROR_CHARS: Final = 200  # of a participant's or handler's own message, in the result the engine gets


@dataclass(frozen=True, slots=True)
class ToolConfig:
    """How client tool calls are run. Times in seconds."""

    timeout_s: float = 10.0  # a whole call: the handler, or every RPC tried; then an error result
    max_in_flight: int = 4  # per session; a call beyond it is answered at once with an error result
    forward: bool = True  # unregistered tools go to the callers as LiveKit RPCs (False: error result)
    # Per RPC: how long a participant may take to acknowledge (LiveKit's max_round_trip_latency, default 7 s).
    # A participant that cannot take the call costs at most this before the next one is asked.
    ack_timeout_s: float = 2.0
    max_result_chars: int = 16_384
    routes: int = 64  # methods whose last answering participant is remembered (oldest forgotten)

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.ack_timeout_s <= 0:
            raise ConfigError("tool timeouts must be positive")
        if self.max_in_flight < 1 or self.max_result_chars < 1 or self.routes < 1:
            raise ConfigError("max_in_flight, max_result_chars and routes must be at least 1")


@dataclass(frozen=True, slots=True)
class ToolStats:
    calls: int = 0  # client_tool_call events received
    local: int = 0  # run by a registered handler
    forwarded: int = 0  # answered by a participant over RPC
    errors: int = 0  # error results sent, timeouts included
    timeouts: int = 0
    unknown: int = 0  # no handler and no participant with the method
    rejected: int = 0  # over max_in_flight
    abandoned: int = 0  # cancelled: the conversation was replaced, or the session stopped
    undelivered: int = 0  # results the engine client could not queue (no conversation)
    rpc_attempts: int = 0  # perform_rpc calls, probes included
    in_flight: int = 0


class RpcVerdict(enum.Enum):
    NEXT = "next"  # this participant cannot run it: ask the next one
    TIMEOUT = "timeout"
    ERROR = "error"  # the participant's answer is an error: that is the result


def rpc_verdict(code: int) -> RpcVerdict:
    if code in _NOT_THIS_ONE:
        return RpcVerdict.NEXT
    if code == RESPONSE_TIMEOUT:
        return RpcVerdict.TIMEOUT
    return RpcVerdict.ERROR


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_ERROR_CHARS else text[:_MAX_ERROR_CHARS - 1] + "…"


def error_text(tool: str, kind: str, *, detail: str = "", timeout_s: float = 0.0, code: int = 0) -> str:
    """The result text of an error result. ``kind``: unknown, timeout, busy, failed, exception, rpc."""
    if kind == "unknown":
        return f"Client tool with name {tool} is not defined on client"
    if kind == "timeout":
        return f"Client tool {tool} did not answer within {timeout_s:g} s"
    if kind == "busy":
        return f"Client tool {tool} was not run: too many tool calls in progress"
    if kind == "failed":  # the handler's own ToolError message
        return f"Client tool {tool} failed: {_clip(detail)}"
    if kind == "exception":  # any other exception: its type only (its text may hold secrets)
        return f"Client tool {tool} failed ({detail})"
    if code == REQUEST_PAYLOAD_TOO_LARGE:
        return f"Client tool {tool} was not run: its parameters are too large for a LiveKit RPC"
    if code == RESPONSE_PAYLOAD_TOO_LARGE:
        return f"Client tool {tool} failed: its result is too large for a LiveKit RPC"
    return f"Client tool {tool} failed: {_clip(detail) or 'error'} (RPC error {code})"


def encode_result(tool: str, value: object, *, max_chars: int) -> str:
    """A handler's or participant's return value as the result string; :class:`ToolError` if it cannot be."""
    if value is None:
        text = f"Client tool: {tool} called successfully."
    elif isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError):
            raise ToolError(f"its result ({type(value).__name__}) is not a string or JSON") from None
    if len(text) > max_chars:
        raise ToolError(f"its result of {len(text)} characters is over the limit of {max_chars}")
    return text


def encode_params(parameters: Mapping[str, Any]) -> str:
    """The RPC payload: the call's parameters as a JSON object (the engine sent them as one)."""
    return json.dumps(dict(parameters), separators=(",", ":"), ensure_ascii=False)


class ToolRoutes:
    """Which participant last answered each method, so the next call asks it first. Bounded (LRU)."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._last: OrderedDict[str, str] = OrderedDict()

    def order(self, method: str, callers: Iterable[str]) -> list[str]:
        """The participants to ask, in order: the last one to answer ``method`` (if still here), then the rest."""
        candidates = list(dict.fromkeys(callers))
        last = self._last.get(method)
        if last in candidates:
            candidates.remove(last)
            candidates.insert(0, last)
        return candidates

    def answered(self, method: str, identity: str) -> None:
        self._last[method] = identity
        self._last.move_to_end(method)
        while len(self._last) > self._capacity:
            self._last.popitem(last=False)

    def forget(self, method: str, identity: str) -> None:
        """``identity`` no longer has ``method`` (it said so): stop asking it first."""
        if self._last.get(method) == identity:
            del self._last[method]

    def __len__(self) -> int:
        return len(self._last)
