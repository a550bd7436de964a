"""Room chat: ``lk.chat`` text streams from callers become the engine's ``user_message``.

LiveKit's chat convention (livekit-client ``sendText(text, {topic: 'lk.chat'})``, the agents framework's room
input) is one text stream per message on the topic ``lk.chat``. Each message a caller sends reaches the engine
as ``{"type": "user_message", "text": …}``, which the engine handles like a spoken turn.

Limits, and what happens past them (counted in :class:`ChatStats`):

- **Length**: ``max_chars`` (2000) characters a message. A longer one is cut to its first ``max_chars`` and sent;
  the rest is not read (the stream is closed).
- **Time**: a message must be complete within ``read_timeout_s`` (5 s) of its stream opening; a stream still
  open then is dropped, nothing of it sent.
- **Concurrency**: at most ``max_open`` streams are read at once per session; more are closed unread.
- **Senders**: only callers (see :class:`~transport.livekit_room.RoomLink`): the agent's own messages and other
  agents' are ignored. Empty or whitespace-only messages are ignored.
- **No conversation**: a message that arrives while the engine is not connected is dropped (``not_sent``).
- **Order**: messages are read side by side but sent in the order their streams opened, so a long message is
  not overtaken by a short one sent after it; a stalled stream holds the later ones back for at most
  ``read_timeout_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, fields

from livekit import rtc

from core.errors import ConfigError

__all__ = ["CHAT_TOPIC", "ChatConfig", "ChatRelay", "ChatStats", "ChatText"]

log = logging.getLogger(__name__)

CHAT_TOPIC = "lk.chat"


@dataclass(frozen=True, slots=True)
class ChatConfig:
    enabled: bool = True
    max_chars: int = 2000
    read_timeout_s: float = 5.0
    max_open: int = 4

    def __post_init__(self) -> None:
        if self.max_chars < 1 or self.max_open < 1 or self.read_timeout_s <= 0:
            raise ConfigError("chat max_chars and max_open must be at least 1, read_timeout_s positive")


@dataclass(frozen=True, slots=True)
class ChatStats:
    received: int = 0  # streams opened on lk.chat
    sent: int = 0  # user_message queued to the engine
    truncated: int = 0  # sent cut to max_chars
    ignored: int = 0  # not from a caller, or empty
    refused: int = 0  # over max_open
    failed: int = 0  # aborted by the sender or not complete within read_timeout_s
    not_sent: int = 0  # no conversation to take it


class ChatText:
    """One message's text as its chunks arrive, cut at ``max_chars``. Sans-I/O."""

    def __init__(self, max_chars: int) -> None:
        self._max = max_chars
        self._parts: list[str] = []
        self._length = 0
        self.truncated = False

    def add(self, chunk: str) -> bool:
        """Take a chunk; False once the message is full (read no more)."""
        room = self._max - self._length
        if len(chunk) > room:
            chunk = chunk[:room]
            self.truncated = True
        self._parts.append(chunk)
        self._length += len(chunk)
        return not self.truncated

    @property
    def text(self) -> str:
        return "".join(self._parts)


class ChatRelay:
    """Registers the ``lk.chat`` handler on ``room`` (before it connects) and sends each message with ``send``."""

    def __init__(self, room: rtc.Room, *, send: Callable[[str], bool], is_caller: Callable[[str], bool],
                 config: ChatConfig | None = None) -> None:
        self.config = config or ChatConfig()
        self._room = room
        self._send = send
        self._is_caller = is_caller
        self._tasks: set[asyncio.Task[None]] = set()
        self._last: asyncio.Task[None] | None = None  # the newest message: the next one is sent after it
        self._counts = {f.name: 0 for f in fields(ChatStats)}
        self._closed = False
        if self.config.enabled:
            room.register_text_stream_handler(CHAT_TOPIC, self._on_stream)

    def stats(self) -> ChatStats:
        return ChatStats(**self._counts)

    async def close(self) -> None:
        self._closed = True
        if self.config.enabled:
            self._room.unregister_text_stream_handler(CHAT_TOPIC)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task

    def _on_stream(self, reader: rtc.TextStreamReader, sender: str) -> None:
        self._counts["received"] += 1
        if self._closed or not self._is_caller(sender):
            self._counts["ignored"] += 1
            reader.close()
            return
        if len(self._tasks) >= self.config.max_open:
            self._counts["refused"] += 1
            log.warning("chat message from %s refused: %d messages already being read", sender, len(self._tasks))
            reader.close()
            return
        task = asyncio.get_running_loop().create_task(self._read(reader, sender, self._last), name=f"chat:{sender}")
        self._last = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _read(self, reader: rtc.TextStreamReader, sender: str, previous: asyncio.Task[None] | None) -> None:
        message = ChatText(self.config.max_chars)
        try:
            async with asyncio.timeout(self.config.read_timeout_s):
                async for chunk in reader:
                    if not message.add(chunk):
                        break
        except (TimeoutError, rtc.StreamError) as exc:
            self._counts["failed"] += 1
            log.warning("chat message from %s dropped: %s", sender,
                        "not complete in time" if isinstance(exc, TimeoutError) else "the stream failed")
            return
        finally:
            reader.close()
        if previous is not None:
            await asyncio.wait({previous})  # sent in arrival order; its outcome is its own
        text = message.text
        if not text.strip():
            self._counts["ignored"] += 1
            return
        if message.truncated:
            self._counts["truncated"] += 1
            log.info("chat message from %s cut to %d characters", sender, self.config.max_chars)
        if self._send(text):
            self._counts["sent"] += 1
        else:
            self._counts["not_sent"] += 1
            log.warning("chat message from %s not sent: no conversation", sender)
