"""The session's lifecycle, deadlines and caller backlog with literal times: no server, no event loop."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from core.backlog import CallerBacklog
from core.clock import MS, SECOND
from core.downlink import Downlink
from core.formats import ROOM_RATE, AudioFormat, parse_format
from core.signals import dominant_hz, tone
from core.uplink import Uplink
from transport import engine_protocol as ep
from transport.engine_client import ConnectionState, StateChange
from transport.events import (
    AgentResponse,
    CallerJoined,
    CallerLeft,
    EngineStateChanged,
    Interrupted,
    SessionState,
    SessionStateChanged,
    UserTranscript,
)
from transport.session_core import (
    Action,
    ClearVoice,
    End,
    ReadCallersAt,
    SendAudio,
    SessionCore,
    StartEngine,
    WakePlayout,
)

FMT_IN, FMT_OUT = parse_format("pcm_16000"), parse_format("pcm_24000")
FRAME = ROOM_RATE // 50  # 20 ms caller frames
T0 = 1_000 * SECOND  # an arbitrary monotonic origin


def make_core(*, immediately: bool = False, end_when_empty: bool = True, linger_s: float = 10.0) -> SessionCore:
    return SessionCore(start_immediately=immediately, end_when_empty=end_when_empty,
                       linger_ns=int(linger_s * SECOND),
                       make_uplink=lambda fmt, rate: Uplink(fmt, in_rate=rate, chunk_ms=20),
                       make_downlink=Downlink)


def metadata(cid: str = "conv-1", fmt_in: AudioFormat = FMT_IN) -> ep.ConversationMetadata:
    return ep.ConversationMetadata(conversation_id=cid, input_format=fmt_in, output_format=FMT_OUT)


def of(actions: object, kind: type) -> list:  # type: ignore[type-arg]
    return [a for a in actions if isinstance(a, kind)]  # type: ignore[attr-defined]


def sent_audio(actions: list[Action]) -> bytes:
    return b"".join(a.payload for a in of(actions, SendAudio))


def running(core: SessionCore, now: int = T0, callers: tuple[str, ...] = ("alice",)) -> list[Action]:
    """created → starting → (callers join) → running with conversation metadata; returns the metadata actions."""
    core.begin(now)
    for c in callers:
        core.caller_joined(c, now)
    assert of(core.room_joined(now), StartEngine)
    core.engine_state(StateChange(ConnectionState.CONNECTED, now, 0, "conv-1"), now)
    actions = list(core.engine_event(metadata(), now))
    assert core.engine_started(now) == [SessionStateChanged(now, SessionState.RUNNING)]
    return actions


def test_first_caller_opens_the_conversation_and_an_empty_room_ends_it_after_the_linger() -> None:
    core = make_core(linger_s=10.0)
    assert core.begin(T0) == [SessionStateChanged(T0, SessionState.STARTING)]
    assert core.room_joined(T0 + 1 * MS) == [SessionStateChanged(T0 + 1 * MS, SessionState.WAITING)]
    assert core.next_wakeup_ns(T0 + 1 * MS) is None  # waiting needs no timer
    actions = core.caller_joined("alice", T0 + 5 * SECOND)
    assert actions == [CallerJoined(T0 + 5 * SECOND, "alice"), StartEngine()]
    assert core.caller_joined("bob", T0 + 5 * SECOND + 1) == [CallerJoined(T0 + 5 * SECOND + 1, "bob")]  # once
    assert core.engine_started(T0 + 6 * SECOND) == [SessionStateChanged(T0 + 6 * SECOND, SessionState.RUNNING)]
    core.caller_left("alice", T0 + 7 * SECOND)
    assert core.caller_left("bob", T0 + 8 * SECOND) == [CallerLeft(T0 + 8 * SECOND, "bob")]
    assert core.next_wakeup_ns(T0 + 8 * SECOND) == T0 + 18 * SECOND
    assert core.timer(T0 + 18 * SECOND - 1) == []
    ended = core.timer(T0 + 18 * SECOND)
    assert len(ended) == 1 and isinstance(ended[0], End) and ended[0].error is None
    assert core.next_wakeup_ns(T0 + 18 * SECOND) is None


def test_a_room_that_emptied_while_the_conversation_opened_lingers_once_it_is_open() -> None:
    core = make_core(linger_s=2.0)
    core.begin(T0)
    core.room_joined(T0)
    assert of(core.caller_joined("alice", T0 + SECOND), StartEngine)
    core.caller_left("alice", T0 + 2 * SECOND)  # gone before the conversation opened: nothing to linger on yet
    assert core.next_wakeup_ns(T0 + 2 * SECOND) is None
    core.engine_started(T0 + 3 * SECOND)
    assert core.next_wakeup_ns(T0 + 3 * SECOND) == T0 + 5 * SECOND
    assert of(core.timer(T0 + 5 * SECOND), End)


def test_a_room_nobody_joined_yet_is_waited_in_when_starting_at_once() -> None:
    core = make_core(immediately=True, linger_s=2.0)
    core.begin(T0)
    core.room_joined(T0)
    core.engine_started(T0 + SECOND)
    assert not of(core.timer(T0 + 60 * SECOND), End)


def test_a_caller_who_comes_back_cancels_the_linger() -> None:
    core = make_core(linger_s=2.0)
    running(core)
    core.caller_left("alice", T0 + SECOND)
    assert not of(core.timer(T0 + 3 * SECOND - 1), End)
    core.caller_joined("alice", T0 + 2 * SECOND)
    assert not of(core.timer(T0 + 3 * SECOND), End)


def test_stay_mode_never_lingers() -> None:
    core = make_core(end_when_empty=False)
    running(core)
    core.caller_left("alice", T0 + SECOND)
    assert not of(core.timer(T0 + 60 * SECOND), End)


def test_start_immediately_asks_for_the_engine_without_callers() -> None:
    core = make_core(immediately=True)
    core.begin(T0)
    assert core.room_joined(T0) == [StartEngine()]
    assert core.state is SessionState.STARTING  # until the conversation is open
    assert core.engine_started(T0 + 300 * MS) == [SessionStateChanged(T0 + 300 * MS, SessionState.RUNNING)]


def test_only_the_table_s_transitions_are_allowed() -> None:
    core = make_core()
    with pytest.raises(AssertionError):
        core.stopped(T0)  # created → stopped skips stopping
    core.begin(T0)
    assert core.stop(T0 + 1) == [SessionStateChanged(T0 + 1, SessionState.STOPPING)]
    assert core.stop(T0 + 2) == []  # a second stop is a no-op
    assert core.engine_started(T0 + 3) == []  # a late engine start cannot revive it
    assert core.stopped(T0 + 4) == [SessionStateChanged(T0 + 4, SessionState.STOPPED)]


def test_keepalive_silence_only_while_no_caller_audio_flows() -> None:
    core = make_core()
    running(core, T0)
    assert core.next_wakeup_ns(T0) == T0 + 250 * MS
    assert core.timer(T0 + 249 * MS) == []
    keep = core.timer(T0 + 250 * MS)
    assert len(keep) == 1 and isinstance(keep[0], SendAudio) and keep[0].keepalive
    assert keep[0].payload == bytes(16_000 // 50 * 2)  # one ordinary chunk (20 ms here) of pcm_16000 zeros
    assert core.next_wakeup_ns(T0 + 250 * MS) == T0 + 500 * MS
    # Caller audio moves the deadline: no keepalive while chunks go out.
    voice = tone(300.0, 0.6)
    t = T0 + 300 * MS
    for i in range(0, voice.size, FRAME):
        t += 20 * MS
        if of(core.caller_audio("alice", voice[i:i + FRAME], t), SendAudio):
            assert core.next_wakeup_ns(t) == t + 250 * MS
        assert core.timer(t) == []
    assert core.stats().keepalive_chunks == 1


def test_audio_before_the_conversation_is_held_and_replayed_in_order() -> None:
    core = make_core()
    core.begin(T0)
    core.room_joined(T0)
    core.caller_joined("alice", T0)
    voice = tone(440.0, 1.0)
    t = T0
    for i in range(0, voice.size, FRAME):  # the caller speaks while the engine connects
        t += 20 * MS
        assert core.caller_audio("alice", voice[i:i + FRAME], t) == ()
    actions = list(core.engine_event(metadata(), t + MS))
    sends = of(actions, SendAudio)
    assert all(s.recv_ns is None and not s.keepalive for s in sends)
    assert all(len(s.payload) <= 16_000 // 4 * 2 for s in sends)  # at most 250 ms per message
    pcm = FMT_IN.decode(sent_audio(actions))
    # Everything the caller said reached the engine: 1 s at 16 kHz, less the resampler's filter delay.
    assert 16_000 - 16_000 * 30 // 1000 <= pcm.size <= 16_000
    assert abs(dominant_hz(pcm, 16_000) - 440.0) < 5
    # From now on frames go straight through.
    live = [a for k in range(3) for a in core.caller_audio("alice", voice[:FRAME], t + (k + 1) * 20 * MS)]
    assert of(live, SendAudio)


def test_the_backlog_keeps_the_newest_two_seconds_and_counts_the_rest() -> None:
    core = make_core()
    core.begin(T0)
    core.caller_joined("alice", T0)
    first, rest = tone(200.0, 1.0), tone(600.0, 2.0)
    t = T0
    for i, voice in enumerate((first, rest)):
        for j in range(0, voice.size, FRAME):
            t += 20 * MS
            core.caller_audio("alice", voice[j:j + FRAME], t + i)
    backlog = core.stats().backlog
    assert backlog.dropped_samples == first.size and backlog.held_samples == 2 * ROOM_RATE
    pcm = FMT_IN.decode(sent_audio(list(core.engine_event(metadata(), t + MS))))
    assert abs(dominant_hz(pcm, 16_000) - 600.0) < 5  # the oldest second (200 Hz) is what was dropped


def test_a_reconnect_clears_the_voice_and_holds_audio_for_the_next_conversation() -> None:
    core = make_core()
    running(core, T0)
    reply = FMT_OUT.encode(tone(220.0, 0.5, rate=24_000))
    assert core.engine_event(ep.AgentAudio(reply, 1), T0 + 10 * MS) == (WakePlayout(),)
    lost = core.engine_state(StateChange(ConnectionState.RECONNECTING, T0 + SECOND, 0, "conv-1", 1006), T0 + SECOND)
    assert lost[0] == ClearVoice() and isinstance(lost[1], EngineStateChanged)
    assert core.downlink is not None and core.downlink.playout.depth_ms == 0
    assert core.next_wakeup_ns(T0 + SECOND) is None  # no keepalive into a closed socket
    voice = tone(500.0, 0.4)
    for i in range(0, voice.size, FRAME):
        assert core.caller_audio("alice", voice[i:i + FRAME], T0 + SECOND + i // FRAME * 20 * MS) == ()
    again = list(core.engine_event(metadata("conv-2"), T0 + 2 * SECOND))
    assert abs(dominant_hz(FMT_IN.decode(sent_audio(again)), 16_000) - 500.0) < 5


def test_an_interruption_flushes_the_reply_and_reports_what_was_dropped() -> None:
    core = make_core()
    running(core, T0)
    reply = FMT_OUT.encode(tone(220.0, 1.0, rate=24_000))
    core.engine_event(ep.AgentAudio(reply, 3), T0 + 10 * MS)
    actions = list(core.engine_event(ep.Interruption(4), T0 + 20 * MS))
    assert actions[0] == ClearVoice()  # silence first
    interrupted = actions[1]
    assert isinstance(interrupted, Interrupted) and interrupted.event_id == 4 and interrupted.at_ns == T0 + 20 * MS
    assert 950 <= interrupted.dropped_ms <= 1000  # the whole second, less what soxr still held
    assert core.stats().interruptions == 1


def test_engine_text_events_become_typed_session_events() -> None:
    core = make_core()
    running(core, T0)
    assert core.engine_event(ep.TentativeUserTranscript("hel", 5), T0) == [UserTranscript(T0, "hel", 5, False)]
    assert core.engine_event(ep.UserTranscript("hello", 5), T0) == [UserTranscript(T0, "hello", 5, True)]
    assert core.engine_event(ep.AgentResponseCorrection("Hi ther", "Hi", 6), T0) == [
        AgentResponse(T0, "Hi", 6, corrected_from="Hi ther")]
    assert core.speaker() == "alice"
    core.caller_joined("bob", T0)
    assert core.speaker() == ""


def test_callers_frames_come_back_in_arrival_order_and_leavers_take_theirs() -> None:
    backlog = CallerBacklog(limit_ms=100)
    a, b = np.ones(480, np.int16), np.full(480, 2, np.int16)
    backlog.push("a", a, 1)
    backlog.push("b", b, 2)
    backlog.push("a", a, 3)
    backlog.push("c", b, 4)
    backlog.forget("c")
    assert [(f.identity, f.recv_ns) for f in backlog.drain()] == [("a", 1), ("b", 2), ("a", 3)]
    assert len(backlog) == 0 and backlog.stats().replayed_frames == 3


def test_base64_is_not_involved() -> None:
    # The core takes decoded bytes from the protocol layer: a payload is never base64 text here.
    core = make_core()
    running(core, T0)
    raw = FMT_OUT.encode(tone(220.0, 0.1, rate=24_000))
    core.engine_event(ep.AgentAudio(raw, 1), T0)
    assert core.downlink is not None and core.downlink.bytes_in == len(raw) != len(base64.b64encode(raw))


def test_an_empty_room_gets_no_keepalive_and_is_not_worth_a_new_conversation() -> None:
    # Before: silence went out for ever, so the engine's idle timeout never ended a conversation nobody used.
    core = make_core(linger_s=30.0)
    running(core, T0)
    assert core.wants_conversation()
    core.caller_left("alice", T0 + SECOND)
    assert not core.wants_conversation()
    assert core.next_wakeup_ns(T0 + SECOND) == T0 + 31 * SECOND  # the linger only, no keepalive
    assert not of(core.timer(T0 + 2 * SECOND), SendAudio)
    stay = make_core(end_when_empty=False)
    running(stay, T0)
    stay.caller_left("alice", T0 + SECOND)
    assert stay.wants_conversation()  # --stay: the session keeps its conversation for the next caller
    assert of(stay.timer(T0 + 2 * SECOND), SendAudio)


def pcm(ms: int, level: int = 3000) -> bytes:
    return (np.full(FMT_OUT.rate * ms // 1000, level, dtype="<i2")).tobytes()


def test_an_interruption_of_an_older_event_leaves_the_newer_reply_and_its_queue() -> None:
    core = make_core()
    running(core, T0)
    core.engine_event(ep.AgentAudio(pcm(500), 7), T0 + MS)
    older = core.engine_event(ep.Interruption(5), T0 + 2 * MS)
    assert not of(older, ClearVoice)  # reply 7 goes on playing; nothing of it is cleared from the sink
    assert core.downlink is not None and core.downlink.playout.depth_samples > 0
    barge = core.engine_event(ep.Interruption(8), T0 + 3 * MS)
    assert of(barge, ClearVoice) and not core.downlink.playout.depth_samples


# ---------------------------------------------------------------------- callers at the engine's rate
def engine_rate_core(rate: int) -> SessionCore:
    return SessionCore(start_immediately=False, end_when_empty=True, linger_ns=10 * SECOND,
                       make_uplink=lambda fmt, r: Uplink(fmt, in_rate=r, chunk_ms=10), make_downlink=Downlink,
                       caller_rate=rate, follow_engine_rate=True)


def test_callers_read_at_the_engine_rate_go_out_sample_for_sample() -> None:
    """16 kHz callers into a pcm_16000 conversation: nothing is resampled, held or asked of the room."""
    core = engine_rate_core(16_000)
    core.begin(T0)
    core.caller_joined("alice", T0)
    core.room_joined(T0)
    core.engine_state(StateChange(ConnectionState.CONNECTED, T0, 0, "conv-1"), T0)
    actions = list(core.engine_event(metadata(), T0))
    assert not of(actions, ReadCallersAt)
    assert core.uplink is not None and core.uplink.in_rate == 16_000 and core.uplink.resampler.is_identity
    voice = tone(440.0, 0.2, rate=16_000)
    out = bytearray()
    for k, i in enumerate(range(0, voice.size, 160)):
        sends = of(core.caller_audio("alice", voice[i:i + 160], T0 + (k + 1) * 10 * MS), SendAudio)
        assert len(sends) == 1  # each 10 ms frame completes its chunk at once
        out += sends[0].payload
    assert np.array_equal(FMT_IN.decode(bytes(out)), voice)
    assert core.uplink.last_held_ns == 0


@pytest.mark.parametrize(("fmt", "rate"), [("pcm_24000", 24_000), ("ulaw_8000", 8_000), ("pcm_44100", 48_000),
                                           ("pcm_48000", 48_000)])
def test_a_conversation_at_another_rate_switches_the_callers_and_converts_what_was_held(fmt: str, rate: int) -> None:
    core = engine_rate_core(16_000)
    core.begin(T0)
    core.room_joined(T0)
    core.caller_joined("alice", T0)
    voice = tone(440.0, 1.0, rate=16_000)
    t = T0
    for i in range(0, voice.size, 320):  # held at 16 kHz while the engine connects
        t += 20 * MS
        core.caller_audio("alice", voice[i:i + 320], t)
    actions = list(core.engine_event(metadata(fmt_in=parse_format(fmt)), t + MS))
    # The room is told first, before any audio of the conversation goes out.
    assert isinstance(actions[0], ReadCallersAt) and actions[0].rate == rate
    assert core.caller_rate == rate and core.uplink is not None and core.uplink.in_rate == rate
    engine_fmt = parse_format(fmt)
    pcm = engine_fmt.decode(sent_audio(actions))
    # The held second arrives whole (less a filter's delay), at the conversation's rate, still 440 Hz.
    assert engine_fmt.rate * 0.97 <= pcm.size <= engine_fmt.rate * 1.01
    assert abs(dominant_hz(pcm, engine_fmt.rate) - 440.0) < 5
    # Frames at the new rate go straight through.
    live = tone(440.0, 0.1, rate=rate)
    step = rate // 100
    sent = [a for k, i in enumerate(range(0, live.size, step))
            for a in of(core.caller_audio("alice", live[i:i + step], t + (k + 2) * 10 * MS), SendAudio)]
    assert len(sent) >= 9


def test_a_fixed_caller_rate_is_never_switched() -> None:
    core = SessionCore(start_immediately=False, end_when_empty=True, linger_ns=10 * SECOND,
                       make_uplink=lambda fmt, r: Uplink(fmt, in_rate=r, chunk_ms=10), make_downlink=Downlink)
    actions = running(core)
    assert not of(actions, ReadCallersAt) and core.caller_rate == ROOM_RATE
    assert core.uplink is not None and core.uplink.in_rate == ROOM_RATE and not core.uplink.resampler.is_identity
