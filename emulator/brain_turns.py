"""The engine's bookkeeping of brain turns, without I/O: history, which turn is live, and its text as phrases.

:class:`BrainTurns` is driven by :class:`emulator.voice.BrainVoice` (the asyncio shell) and knows no sockets,
tasks or clocks; times come in as arguments. Rules:

- A turn starts with the user's words; the history sent with it is every earlier turn's user words and the
  agent's words *as the caller heard them*, then the new user words. Ids only increase (they are the
  conversation socket's reply ids); a non-increasing id is our own misuse and raises ``ConfigError``.
- Only the newest turn is live. Text for any other id, for a turn that was cut off, given up, or already
  finished (``is_final`` seen) is stale: dropped and counted.
- A live turn's text is cut into phrases by :class:`~emulator.brain_protocol.Segmenter`; ``is_final`` flushes
  the rest and ends the turn. A turn with no text at all by its deadline is given up (nothing is said).
- What the caller heard of a cut-off answer: the share of its text matching the share of its audio that had
  *played* (real time since its first chunk) when it was cut, as audio goes out faster than real time.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.errors import ConfigError
from emulator import brain_protocol as bp

__all__ = ["BrainTurns", "Phrases", "heard_text"]


@dataclass(frozen=True, slots=True)
class Phrases:
    """What a live turn's response adds: phrases to speak, and whether the answer is complete."""

    event_id: int
    phrases: list[str]
    final: bool


def heard_text(text: str, played_ns: int, duration_ns: int) -> str:
    """The beginning of ``text`` in proportion to how much of its ``duration_ns`` of audio played."""
    share = min(1.0, max(0.0, played_ns / max(1, duration_ns)))
    return text[:int(len(text) * share)].strip()


class BrainTurns:
    def __init__(self) -> None:
        self.history: list[tuple[bp.Role, str]] = []
        self.current_id: int | None = None
        self.stale_responses = 0
        self.given_up: list[int] = []
        self._segmenter = bp.Segmenter()
        self._live = False
        self._answered = False

    @property
    def live(self) -> bool:
        return self._live

    def begin(self, event_id: int, user_text: str, previous_heard: str | None) -> list[tuple[bp.Role, str]]:
        """A new user turn; ``previous_heard``: what the caller heard of the last answer. Returns the
        history to send with it (a copy)."""
        if self.current_id is not None and event_id <= self.current_id:
            raise ConfigError(f"brain turn ids must increase ({event_id} after {self.current_id})")
        if previous_heard:
            self.history.append(("agent", previous_heard))
        self.history.append(("user", user_text))
        self.current_id, self._live, self._answered = event_id, True, False
        self._segmenter = bp.Segmenter()
        return list(self.history)

    def cut(self, event_id: int) -> None:
        """The turn's answer was interrupted: any more text for it is stale."""
        if event_id == self.current_id:
            self._live = False

    def response(self, message: bp.AgentResponse) -> Phrases | None:
        """Phrases to speak for a live turn, or None (stale; counted)."""
        if not self._live or message.event_id != self.current_id:
            self.stale_responses += 1
            return None
        self._answered = True
        phrases = self._segmenter.push(message.content)
        if message.is_final:
            phrases += self._segmenter.flush()
            self._live = False
        return Phrases(message.event_id, phrases, message.is_final)

    def deadline(self, event_id: int) -> bool:
        """The response deadline of ``event_id`` passed: True when the turn is given up now."""
        if not self._live or event_id != self.current_id or self._answered:
            return False
        self._live = False
        self.given_up.append(event_id)
        return True
