"""The conversation controls of a :class:`~transport.session.BridgeSession`: text into the running conversation,
and the continuity glue around engine reconnects.

Public methods (the session inherits them from :class:`ConversationControls`)::

    session.contextual_update("The caller is on the pricing page", context_id="page")  # -> bool
    session.user_message("What does the pro plan cost?")                                # -> bool
    session.user_activity()                                                             # -> bool

Each returns True when the message was queued for the engine, and False when a conversation exists but cannot
take it right now (the engine socket is reconnecting: the message is dropped and counted, as audio is, since
a late "the caller is typing" is wrong). Before the session has a conversation at all (not started, waiting
for the first caller with ``start_when="first_caller"``) or after it stopped they raise
:class:`NoConversation`, a :class:`~core.errors.ConfigError`: the call was made at a moment it cannot mean
anything. A ``user_message`` is also part of the continuity transcript and counts as the caller's turn.

Protocol (PROTOCOL.md "Client → server messages"): ``contextual_update`` adds to the agent's context without
interrupting it (only the latest update per ``context_id`` stays); ``user_message`` is handled like spoken
input (it interrupts a reply in progress, the way speech does); ``user_activity`` resets the engine's
turn/inactivity timer.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from core.errors import ConfigError
from transport.continuity import CONTEXT_ID, Continuity
from transport.engine_protocol import ConnectionState, StateChange
from transport.init_options import MAX_TEXT

if TYPE_CHECKING:
    from transport.engine_client import EngineClient

__all__ = ["ConversationControls", "NoConversation"]

log = logging.getLogger(__name__)


class NoConversation(ConfigError):
    """A conversation control was used while the session had no engine conversation (not yet, or no more)."""


class ConversationControls:
    """Mixed into :class:`~transport.session.BridgeSession`, which sets ``engine`` and ``continuity``."""

    engine: EngineClient | None
    continuity: Continuity

    def contextual_update(self, text: str, *, context_id: str | None = None) -> bool:
        """Tell the agent something without interrupting it (background for its next replies)."""
        return self._engine_for("contextual_update", text).send_contextual_update(text, context_id=context_id)

    def user_message(self, text: str) -> bool:
        """Send ``text`` as if the caller had said it."""
        sent = self._engine_for("user_message", text).send_user_message(text)
        if sent:
            self.continuity.user_message(text)
        return sent

    def user_activity(self) -> bool:
        """Keep a quiet conversation open (resets the engine's inactivity timer)."""
        return self._engine_for("user_activity", "").send_user_activity()

    def _engine_for(self, what: str, text: str) -> EngineClient:
        if not isinstance(text, str) or len(text) > MAX_TEXT:
            raise ConfigError(f"{what} takes a string of at most {MAX_TEXT} characters")
        engine = self.engine
        if engine is None or engine.state is ConnectionState.CLOSED:
            raise NoConversation(f"{what}: the session has no engine conversation "
                                 f"({'not started yet' if engine is None else 'it has ended'})")
        return engine

    def _conversation_state(self, change: StateChange) -> None:
        """On every established conversation after the first: hand the transcript over."""
        engine = self.engine
        if change.state is not ConnectionState.CONNECTED or engine is None:
            return
        text = self.continuity.handover(engine.counters.connects)
        if text is not None:
            sent = engine.send_contextual_update(text, context_id=CONTEXT_ID)
            log.info("new conversation %s: handed over %d characters of the call's transcript (%s)",
                     change.conversation_id, len(text), "sent" if sent else "not sent")
