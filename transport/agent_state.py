"""What the agent is doing, as LiveKit frontends read it, decided without I/O.

LiveKit agents publish their state as the agent participant's attribute ``lk.agent.state`` (livekit/agents
``livekit-agents/livekit/agents/types.py`` ``ATTRIBUTE_AGENT_STATE``, formerly ``_constants.py``, whose docstring
points at components-js ``useVoiceAssistant``, which reads it into its ``state``; the values are the
``AgentState`` literal of ``voice/events.py``: ``initializing``, ``idle``, ``listening``, ``thinking``,
``speaking``; components-js' own ``AgentState`` type has the four without ``idle``). The bridge uses those four:

==================  ==========================================================================================
``initializing``    in the room, no conversation open (waiting for the first caller, connecting, reconnecting)
``listening``       a conversation is open and the agent is silent: after it opened, after the last sample of a
                    reply was played, after an interruption flushed the voice
``thinking``        from the engine's final ``user_transcript`` (the end of the caller's turn) until the first
                    sample of the reply is played (or ``thinking_timeout_ns`` passes with no reply)
``speaking``        from the first voice sample actually handed to the AudioSource (played, not received)
==================  ==========================================================================================

The same machine ties the agent's text to what was heard (:class:`Caption`) and measures each turn
(:class:`TurnFigures`):

- **Captions.** Each reply (engine ``event_id``) is one segment, ``agent-<conversation>-<event_id>`` (unique
  across engine reconnects: every conversation has its own id). Its text is the ``agent_response`` texts of that
  id, joined. Nothing is shown before its audio plays; an *interim* caption goes out when the reply starts to
  play and whenever more of its text arrives while it plays; the *final* one when its audio has played (the
  voice ended, or the next reply's audio started). An interruption cuts a playing reply: the caption is the
  fraction of the reply's **received** audio that was **played** (48 kHz samples handed to the AudioSource),
  mapped to the same fraction of the received text and moved back to a word boundary. It is an estimate: it
  assumes the words are spread evenly over the audio, the text received so far matches the audio received so
  far (the engine sends each phrase's text with its audio), and it counts the AudioSource's lead (40 ms,
  cleared by the interruption) as played. The engine's own ``agent_response_correction`` is not used: it says
  what the engine *sent*, not what the room heard.
- **Turn figures.** ``reply_ms``: from the caller's last voiced frame before the end of the turn (a 10 ms frame
  at or above ``voiced_dbfs``, by arrival time at the bridge) to the first reply sample played.
  A turn with no voiced frame since the previous one (a typed message, a reply the engine starts by itself)
  has no ``reply_ms``. ``interruption_ms``: from the engine's ``interruption`` reaching the bridge to the voice
  being cleared (the flush and the AudioSource's ``clear_queue``); ``onset_to_silence_ms``: from the talk-over's
  onset as the local ducker detected it (when ducking is on) to that same moment.

Every input takes the time (``now_ns``) and returns what changed; nothing reads a clock or logs.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from core.clock import MS, SECOND
from core.errors import ConfigError
from core.formats import ROOM_RATE

__all__ = ["ATTR_AGENT_STATE", "AgentState", "AgentStateMachine", "Caption", "Output", "StateChanged",
           "TurnFigures", "cut_at_word"]

ATTR_AGENT_STATE = "lk.agent.state"
_MAX_SEGMENTS = 64  # replies tracked at once (final ones are forgotten first; beyond this, the oldest)


class AgentState(enum.Enum):
    INITIALIZING = "initializing"
    LISTENING = "listening"
    THINKING = "thinking"
    SPEAKING = "speaking"


@dataclass(frozen=True, slots=True)
class StateChanged:
    at_ns: int
    state: AgentState


@dataclass(frozen=True, slots=True)
class Caption:
    at_ns: int
    segment_id: str
    text: str
    final: bool


@dataclass(frozen=True, slots=True)
class TurnFigures:
    """One turn's latencies in ms (None: not measured in this turn)."""

    at_ns: int
    turn: int  # user turns ended so far in this session
    reply_ms: float | None = None
    interruption_ms: float | None = None
    onset_to_silence_ms: float | None = None
    played_ms: float | None = None  # of the interrupted reply, before it was cut

    def as_dict(self) -> dict[str, float | int]:
        data: dict[str, float | int] = {"turn": self.turn}
        for name in ("reply_ms", "interruption_ms", "onset_to_silence_ms", "played_ms"):
            value = getattr(self, name)
            if value is not None:
                data[name] = round(value, 1)
        return data


Output = StateChanged | Caption | TurnFigures


@dataclass(slots=True)
class _Segment:
    event_id: int
    segment_id: str
    texts: list[str] = field(default_factory=list)
    received: int = 0  # 48 kHz samples of its audio received
    played: int = 0  # of those, handed to the AudioSource
    shown: str = ""  # the text last published
    final: bool = False
    cut: bool = False  # by an interruption or a lost conversation: nothing more of it will play

    @property
    def text(self) -> str:
        return _join(self.texts)


class AgentStateMachine:
    """Events and ``now_ns`` in, :data:`Output` lists out. The shell publishes them."""

    def __init__(self, *, voiced_dbfs: float = -45.0, thinking_timeout_ns: int = 15 * SECOND) -> None:
        if thinking_timeout_ns <= 0:
            raise ConfigError("thinking_timeout_ns must be positive")
        self.state = AgentState.INITIALIZING
        # rms_dbfs(x) >= voiced_dbfs, as a sum of squares: no float64 copy, no log on every 10 ms caller frame.
        self._voiced_power = (32768.0 * 10.0 ** (voiced_dbfs / 20.0)) ** 2
        self._thinking_timeout_ns = thinking_timeout_ns
        self._open = False  # a conversation is open
        self._conversation = "0"
        self._conversations = 0
        self._segments: deque[_Segment] = deque()
        self._last_voiced_ns: int | None = None
        self._caller_stop_ns: int | None = None  # of the turn being answered
        self._thinking_since: int | None = None
        self._onset_ns: int | None = None  # of a talk-over while speaking (local ducking)
        self._speaking_since: int | None = None
        self.turns = 0
        self.figures: TurnFigures | None = None  # the latest turn's

    # ------------------------------------------------------------------ conversation
    def conversation_opened(self, conversation_id: str, now_ns: int) -> list[Output]:
        self._conversations += 1
        self._conversation = conversation_id or str(self._conversations)
        self._open = True
        return self._move(AgentState.LISTENING, now_ns) if self.state is AgentState.INITIALIZING else []

    def conversation_lost(self, now_ns: int) -> list[Output]:
        """The engine connection is reconnecting: what was buffered is gone, as after an interruption."""
        self._open = False
        out = self._cut(None, now_ns)
        self._thinking_since = self._caller_stop_ns = None
        return out + self._move(AgentState.INITIALIZING, now_ns)

    # ------------------------------------------------------------------ callers
    def caller_frame(self, samples: npt.NDArray[np.int16], recv_ns: int) -> None:
        x = samples.astype(np.float32)
        if samples.size and float(np.dot(x, x)) >= self._voiced_power * samples.size:
            self._last_voiced_ns = recv_ns

    def talk_over(self, onset_ns: int) -> None:
        """The local ducker found a caller starting to talk over the voice (its onset time)."""
        if self.state is AgentState.SPEAKING and self._onset_ns is None:
            self._onset_ns = onset_ns

    def user_turn_ended(self, now_ns: int) -> list[Output]:
        """The engine's final transcript of the callers: their turn is over."""
        self.turns += 1
        last_voiced, self._last_voiced_ns = self._last_voiced_ns, None  # a voiced frame belongs to one turn
        if self.state is AgentState.SPEAKING or not self._open:
            return []
        self._caller_stop_ns = last_voiced
        self._thinking_since = now_ns
        return self._move(AgentState.THINKING, now_ns)

    # ------------------------------------------------------------------ the agent's reply
    def agent_text(self, event_id: int, text: str, now_ns: int) -> list[Output]:
        seg = self._segment(event_id)
        seg.texts.append(text)
        return self._show(seg, now_ns) if seg.played and not seg.final else []

    def agent_audio(self, event_id: int, samples_48k: int) -> None:
        seg = self._segment(event_id)
        seg.received += samples_48k
        if seg.final and not seg.cut:
            seg.final = False  # more of a reply whose voice had paused long enough to end: it plays on

    def voice_played(self, samples_48k: int, now_ns: int) -> list[Output]:
        """Real voice samples (not padding or silence) were handed to the AudioSource."""
        out: list[Output] = []
        if self.state is not AgentState.SPEAKING:
            if self.state is AgentState.THINKING and self._caller_stop_ns is not None:
                self.figures = TurnFigures(now_ns, self.turns, reply_ms=(now_ns - self._caller_stop_ns) / MS)
                out.append(self.figures)
            self._thinking_since = self._caller_stop_ns = self._onset_ns = None
            self._speaking_since = now_ns
            out += self._move(AgentState.SPEAKING, now_ns)
        left = samples_48k
        for seg in self._segments:
            if seg.final or not left:
                continue
            room = seg.received - seg.played
            if room <= 0:
                continue  # its audio has all played (more may come, then it plays again)
            take = min(room, left)
            if not seg.played:
                out += self._finish_before(seg, now_ns)  # the next reply started: earlier ones were heard whole
            seg.played += take
            left -= take
            if seg.shown != seg.text:
                out += self._show(seg, now_ns)
        return out

    def voice_ended(self, now_ns: int) -> list[Output]:
        """The playout went idle after the last sample of the reply was played."""
        if self.state is not AgentState.SPEAKING:
            return []
        out: list[Output] = []
        for seg in self._segments:
            if seg.played and not seg.final:
                seg.final = True
                out.append(self._caption(seg, seg.text, now_ns))
        self._prune()
        return out + self._move(AgentState.LISTENING if self._open else AgentState.INITIALIZING, now_ns)

    def interrupted(self, event_id: int, recv_ns: int, now_ns: int) -> list[Output]:
        """The engine's ``interruption`` (received at ``recv_ns``) was carried out: the voice of replies older
        than ``event_id`` was cleared by ``now_ns``."""
        was_speaking = self.state is AgentState.SPEAKING
        played = sum(s.played for s in self._segments if not s.final and s.event_id < event_id)
        out = self._cut(event_id, now_ns)
        if any(not s.final and s.received > s.played for s in self._segments):
            return out  # a newer reply the interruption does not target goes on playing
        if was_speaking:
            onset = self._onset_ns
            before = self.figures if self.figures is not None and self.figures.turn == self.turns else None
            self.figures = TurnFigures(now_ns, self.turns, reply_ms=before.reply_ms if before else None,
                                       interruption_ms=(now_ns - recv_ns) / MS,
                                       onset_to_silence_ms=None if onset is None else (now_ns - onset) / MS,
                                       played_ms=played * 1000 / ROOM_RATE)
            out.append(self.figures)
        self._thinking_since = self._caller_stop_ns = self._onset_ns = None
        return out + self._move(AgentState.LISTENING if self._open else AgentState.INITIALIZING, now_ns)

    # ------------------------------------------------------------------ deadline
    def next_wakeup_ns(self) -> int | None:
        if self.state is AgentState.THINKING and self._thinking_since is not None:
            return self._thinking_since + self._thinking_timeout_ns
        return None

    def timer(self, now_ns: int) -> list[Output]:
        """No reply came within the timeout: the agent is listening again."""
        wake = self.next_wakeup_ns()
        if wake is None or now_ns < wake:
            return []
        self._thinking_since = self._caller_stop_ns = None
        return self._move(AgentState.LISTENING, now_ns)

    # ------------------------------------------------------------------ plumbing
    def _segment(self, event_id: int) -> _Segment:
        segment_id = f"agent-{self._conversation}-{event_id}"
        for seg in self._segments:
            if seg.segment_id == segment_id:
                return seg
        seg = _Segment(event_id, segment_id)
        self._segments.append(seg)
        while len(self._segments) > _MAX_SEGMENTS:
            self._segments.popleft()
        return seg

    def _show(self, seg: _Segment, now_ns: int) -> list[Output]:
        seg.shown = seg.text
        return [Caption(now_ns, seg.segment_id, seg.shown, False)]

    def _caption(self, seg: _Segment, text: str, now_ns: int) -> Caption:
        seg.shown = text
        return Caption(now_ns, seg.segment_id, text, True)

    def _finish_before(self, current: _Segment, now_ns: int) -> list[Output]:
        out: list[Output] = []
        for seg in self._segments:
            if seg is current:
                break
            if seg.played and not seg.final:
                seg.final = True
                out.append(self._caption(seg, seg.text, now_ns))
        return out

    def _cut(self, event_id: int | None, now_ns: int) -> list[Output]:
        """Replies older than ``event_id`` (all: None) end here, their captions cut to what was played."""
        out: list[Output] = []
        for seg in self._segments:
            if seg.final or (event_id is not None and seg.event_id >= event_id):
                continue
            seg.final = seg.cut = True
            if seg.played:
                fraction = min(1.0, seg.played / seg.received) if seg.received else 1.0
                out.append(self._caption(seg, cut_at_word(seg.text, fraction), now_ns))
        self._prune()
        return out

    def _prune(self) -> None:
        # The newest reply stays known even when final: more of its text or audio may still come.
        while len(self._segments) > 1 and self._segments[0].final:
            self._segments.popleft()

    def _move(self, state: AgentState, now_ns: int) -> list[Output]:
        if state is self.state:
            return []
        self.state = state
        return [StateChanged(now_ns, state)]


def cut_at_word(text: str, fraction: float) -> str:
    """The first ``fraction`` of ``text``, ending at a word boundary at or before that point (a word counts
    only if it was reached whole), stripped; all of it for a fraction of 1 or more."""
    if fraction >= 1.0:
        return text.strip()
    end = int(len(text) * max(0.0, fraction))
    if end < len(text) and not text[end].isspace():
        space = text.rfind(" ", 0, end + 1)
        end = space if space >= 0 else 0
    return text[:end].strip()


def _join(parts: list[str]) -> str:
    text = ""
    for part in parts:
        if text and part and not text[-1].isspace() and not part[0].isspace():
            text += " "
        text += part
    return text.strip()
