"""Which session a log record belongs to: session, room and conversation ids on every record.

A :class:`LogContext` lives in a :mod:`contextvars` variable. :class:`~transport.session.BridgeSession`
binds its own context while it starts and stops; every task created meanwhile (the engine client's reader and
writer, the SDK's room listener and the callers' audio streams, the session's own tasks) copies the context
at creation, so whatever those tasks log (websockets, livekit, our modules) carries the ids without anyone
passing them along. The object is shared and mutable: the session fills in the room once it has joined and
the conversation id on every (re)connect, and records logged afterwards see the new values. The one gap: the
LiveKit SDK forwards its native layer's log lines from its own thread, outside any task, so those carry no ids.

:class:`ContextFilter` copies the fields onto the record as attributes (``session``, ``room``,
``conversation_id``); :class:`JsonFormatter` (the runner's ``--json-logs``) writes them out. Install the filter
on *handlers*: a logger's filters see only records logged on that very logger, a handler's see every record
that reaches it.
"""

from __future__ import annotations

import contextvars
import json
import logging
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from core.redact import Redactor

__all__ = [
    "FIELDS", "ContextFilter", "JsonFormatter", "LogContext", "RedactingLogger", "bound", "current", "new_session_id",
]

FIELDS = ("session", "room", "conversation_id")

_current: contextvars.ContextVar[LogContext | None] = contextvars.ContextVar("bridge_log_context", default=None)


def new_session_id() -> str:
    """Short, random, not derived from anything secret: 8 hex digits."""
    return secrets.token_hex(4)


@dataclass(slots=True)
class LogContext:
    session: str
    room: str | None = None
    conversation_id: str | None = None


def current() -> LogContext | None:
    return _current.get()


@contextmanager
def bound(context: LogContext) -> Iterator[LogContext]:
    """Make ``context`` current for this block and for every task created inside it."""
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)


class ContextFilter(logging.Filter):
    """Adds the current session's ids to each record (``None`` outside any session); never drops one."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = _current.get()
        if context is not None:
            # A record may already carry its own (a LoggerAdapter's extra): that one is more specific.
            for name in FIELDS:
                if getattr(record, name, None) is None:
                    setattr(record, name, getattr(context, name))
        return True

    def install(self, *handlers: logging.Handler) -> None:
        """Attach to these handlers, or to every handler of the root logger when none are given."""
        for handler in handlers or tuple(logging.getLogger().handlers):
            handler.addFilter(self)


class RedactingLogger(logging.LoggerAdapter[logging.Logger]):
    """websockets logs the request line, query string included, at DEBUG: scrub every record it emits."""

    def __init__(self, logger: logging.Logger, redactor: Redactor) -> None:
        super().__init__(logger, {})
        self._redactor = redactor

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if self.isEnabledFor(level):
            text = str(msg) % args if args else str(msg)
            self.logger.log(level, "%s", self._redactor(text), **kwargs)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, the context fields present, the traceback."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {"ts": round(record.created, 3), "level": record.levelname,
                                 "logger": record.name, "msg": record.getMessage()}
        for key in ("session", "room", "conversation_id", "job"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exc"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)
