"""The reconnect policy of :class:`~transport.engine_client.EngineClient`, sans-I/O: how a finished connection
ends (retry, clean end, final error) and when reconnecting has gone on too long.

Rules (the client's docstring has the whole lifecycle):

- After a conversation was established, the close code decides (:func:`~transport.engine_protocol.classify_close`).
  1000 from the server means the conversation is over; 1008 (our input or overrides broke the contract) is
  final. So is an ``error`` event whose type says retrying cannot help whatever the close code
  (:data:`FINAL_ERROR_TYPES`, and any type naming a quota or limit). Anything else (1002, 1011, 1006, 1009) is
  retried, unless the owner no longer wants a conversation (``reconnect_wanted``).
- A conversation that **lasted** ``stable_after_ns`` resets the failure count and backoff; one that drops at
  once does not (an engine that accepts and drops at once otherwise got a fresh, undelayed attempt every
  time: 37 billed conversations in 5 s, measured).
- More than ``max_reconnects`` re-established conversations within ``window_ns`` and the client gives up: each
  reconnect is a signed URL and a billed conversation.

Times are passed in (``now_ns``); nothing here reads a clock, logs, or touches a socket.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from core.errors import EngineError, EngineRefusedError
from transport.engine_protocol import CloseAction, classify_close

__all__ = ["FINAL_ERROR_TYPES", "Ended", "ReconnectBudget", "classify_end", "is_final_error_type"]

# ``error`` types after which a new conversation would end the same way (PROTOCOL.md "Close codes and
# errors", from the AsyncAPI ErrorType): the safety filter, our overrides or dynamic variables, our messages.
# Most come with 1008 (final anyway); safety_violation comes with 1002, which is otherwise retried.
FINAL_ERROR_TYPES: Final = frozenset({
    "safety_violation", "override_error", "missing_dynamic_variable", "missing_dynamic_variable_transfer",
    "invalid_message", "value_error", "missing_fields", "telephony_agent_error",
})
# Quota and usage-limit types are not in any source we read (UNCONFIRMED names); a type mentioning either
# word is treated as final, since a quota does not come back in a backoff's seconds.
_FINAL_ERROR_WORDS: Final = ("quota", "limit")


def is_final_error_type(error_type: str | None) -> bool:
    if not error_type:
        return False
    kind = error_type.lower()
    return kind in FINAL_ERROR_TYPES or any(word in kind for word in _FINAL_ERROR_WORDS)


@dataclass(frozen=True, slots=True)
class Ended:
    """How one connection ended."""

    close_code: int | None
    reason: str
    error: EngineError | None  # set when the end is final and an error
    final: bool


def classify_end(code: int, reason: str, *, error_type: str | None, closing: bool, fatal: EngineError | None,
                 reconnect_wanted: Callable[[], bool] | None) -> Ended:
    """A finished connection (close ``code``, ``reason`` already redacted): retry, clean end, or final error.

    ``error_type``: of the last ``error`` event on it; ``closing``: we closed it; ``fatal``: the reader found
    it unusable (an unsupported format); ``reconnect_wanted``: asked only when the end would be retried."""
    action = classify_close(code, by_client=closing, fatal=fatal is not None)
    if fatal is not None:
        return Ended(code, reason, fatal, final=True)
    if closing:
        return Ended(code, "closed by client", None, final=True)
    if action is CloseAction.DONE:
        return Ended(code, f"engine ended the conversation: {reason}", None, final=True)
    if action is CloseAction.FAIL:
        return Ended(code, reason, EngineError(f"engine closed the conversation: {reason}", close_code=code),
                     final=True)
    if reconnect_wanted is not None and not reconnect_wanted():
        # The owner has nobody to reconnect for (an empty room whose keepalive stopped, so the engine's
        # idle timeout ended the conversation): a new conversation would be billed for nothing.
        return Ended(code, f"conversation lost and not reopened (not wanted): {reason}", None, final=True)
    if is_final_error_type(error_type):
        return Ended(code, reason, EngineRefusedError(
            f"engine closed the conversation with an error that a retry would repeat: {reason}",
            close_code=code), final=True)
    return Ended(code, reason, None, final=False)


class ReconnectBudget:
    """Established conversations over time: was the last one stable, and are there too many reconnects?"""

    def __init__(self, *, stable_after_ns: int, max_reconnects: int, window_ns: int) -> None:
        self._stable_after_ns = stable_after_ns
        self._max_reconnects = max_reconnects
        self._window_ns = window_ns
        self._reconnects_at: deque[int] = deque()  # times of re-established conversations (not the first)
        self._connected_at_ns: int | None = None

    def established(self, now_ns: int, *, first: bool) -> None:
        if not first:
            self._reconnects_at.append(now_ns)
        self._connected_at_ns = now_ns

    def lasted_ns(self, now_ns: int) -> int:
        """How long the last established conversation lasted (until ``now_ns``)."""
        return now_ns - (self._connected_at_ns or 0)

    def stable(self, now_ns: int) -> bool:
        """The last conversation worked for a while: its loss is a new outage (fresh count and backoff)."""
        return self.lasted_ns(now_ns) >= self._stable_after_ns

    def check(self, now_ns: int, last_reason: str, close_code: int | None) -> None:
        """Raise :class:`~core.errors.EngineError` when the conversations keep being re-established and lost."""
        while self._reconnects_at and now_ns - self._reconnects_at[0] > self._window_ns:
            self._reconnects_at.popleft()
        if len(self._reconnects_at) >= self._max_reconnects:
            raise EngineError(
                f"engine keeps dropping conversations: {len(self._reconnects_at)} re-established within "
                f"{self._window_ns / 1e9:.0f} s and lost again; giving up (last: {last_reason})",
                close_code=close_code)
