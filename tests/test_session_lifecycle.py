"""The session's whole lifecycle with literal times: created → starting → waiting → running → stopping → stopped,
the ways a session ends (linger, engine failure, leaving the room, stop), keepalive across a reconnect, and a
talk-over ducked by the core. No server, no event loop; the helpers are :mod:`tests.test_session_core`'s."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from core.clock import MS, SECOND
from core.downlink import Downlink
from core.errors import EngineError, LiveKitError
from core.formats import ROOM_RATE
from core.signals import tone
from core.uplink import Uplink
from tests.test_session_core import FRAME, T0, make_core, metadata, of, running
from transport import engine_protocol as ep
from transport.engine_client import ConnectionState, StateChange
from transport.events import CallerJoined, Ducked, DuckEnded, SessionError, SessionState, SessionStateChanged
from transport.session_core import Action, End, SendAudio, SessionCore, StartEngine, WakePlayout


def states(actions: list[Action]) -> list[tuple[int, SessionState]]:
    return [(a.at_ns, a.state) for a in of(actions, SessionStateChanged)]


def test_the_lifecycle_in_order_created_starting_waiting_running_stopping_stopped() -> None:
    core = make_core()
    assert core.state.value == "created" and core.next_wakeup_ns(T0) is None
    seen = [*core.begin(T0), *core.room_joined(T0 + 400 * MS)]
    assert core.next_wakeup_ns(T0 + SECOND) is None  # no keepalive before a conversation: nothing to keep alive
    seen += core.caller_joined("alice", T0 + 3 * SECOND)
    assert core.state is SessionState.WAITING  # asked for the engine, not yet running
    core.engine_state(StateChange(ConnectionState.CONNECTED, T0 + 3200 * MS, 0, "conv-1"), T0 + 3200 * MS)
    core.engine_event(metadata(), T0 + 3200 * MS)
    seen += core.engine_started(T0 + 3300 * MS)
    assert core.next_wakeup_ns(T0 + 3300 * MS) == T0 + 3450 * MS  # keepalive: 250 ms after the metadata
    seen += core.stop(T0 + 5 * SECOND)
    assert core.ending and core.next_wakeup_ns(T0 + 5 * SECOND) is None  # stopping: no keepalive, no linger
    seen += core.stopped(T0 + 6 * SECOND)
    assert states(seen) == [(T0, SessionState.STARTING), (T0 + 400 * MS, SessionState.WAITING),
                            (T0 + 3300 * MS, SessionState.RUNNING), (T0 + 5 * SECOND, SessionState.STOPPING),
                            (T0 + 6 * SECOND, SessionState.STOPPED)]
    assert of(seen, StartEngine) == [StartEngine()]


def test_callers_already_in_the_room_skip_waiting() -> None:
    core = make_core()
    core.begin(T0)
    assert core.caller_joined("alice", T0 + 100 * MS) == [CallerJoined(T0 + 100 * MS, "alice")]  # no engine yet
    assert core.room_joined(T0 + 200 * MS) == [StartEngine()]  # starting → running directly
    assert core.state is SessionState.STARTING
    assert core.room_joined(T0 + 300 * MS) == []  # reported once
    assert states(core.engine_started(T0 + SECOND)) == [(T0 + SECOND, SessionState.RUNNING)]


def test_an_engine_that_cannot_start_or_fails_for_good_ends_the_session_with_its_error() -> None:
    core = make_core()
    core.begin(T0)
    core.room_joined(T0)
    core.caller_joined("alice", T0 + SECOND)
    error = EngineError("HTTP 401 from the signed-URL endpoint")
    failed = core.engine_failed(error, str(error), T0 + 2 * SECOND)
    assert failed == [SessionError(T0 + 2 * SECOND, str(error)), End(str(error), error)]
    assert core.state is SessionState.WAITING  # the shell's teardown moves it on, through stop()
    assert states(core.stop(T0 + 2 * SECOND)) == [(T0 + 2 * SECOND, SessionState.STOPPING)]
    running_core = make_core()
    running(running_core, T0)
    ended = running_core.engine_ended(T0 + 9 * SECOND)  # the engine closed the conversation normally
    assert len(ended) == 1 and isinstance(ended[0], End) and ended[0].error is None


def test_leaving_the_room_ends_the_session_and_a_removal_is_an_error() -> None:
    core = make_core()
    running(core, T0)
    left = core.room_left("CLIENT_INITIATED", T0 + SECOND)
    assert len(left) == 1 and isinstance(left[0], End) and left[0].error is None
    removed = core.room_left("PARTICIPANT_REMOVED", T0 + SECOND)
    assert len(removed) == 1 and isinstance(removed[0], End) and isinstance(removed[0].error, LiveKitError)
    core.stop(T0 + 2 * SECOND)
    assert core.room_left("ROOM_DELETED", T0 + 3 * SECOND) == []  # our own teardown leaves the room: no second end


def test_stopping_cancels_the_linger_and_holds_no_more_caller_audio() -> None:
    core = make_core(linger_s=5.0)
    running(core, T0)
    core.caller_left("alice", T0 + 2 * SECOND)
    assert core.next_wakeup_ns(T0 + 2 * SECOND) == T0 + 7 * SECOND  # the linger
    core.stop(T0 + 3 * SECOND)
    assert core.next_wakeup_ns(T0 + 3 * SECOND) is None and core.timer(T0 + 7 * SECOND) == []
    waiting = make_core()
    waiting.begin(T0)
    waiting.room_joined(T0)
    waiting.caller_joined("alice", T0)
    waiting.caller_audio("alice", tone(300.0, 0.1)[:FRAME], T0 + 20 * MS)  # held: no conversation yet
    assert waiting.backlog.stats().held_frames == 1
    waiting.stop(T0 + SECOND)
    assert waiting.caller_audio("alice", tone(300.0, 0.1)[:FRAME], T0 + SECOND) == ()
    assert waiting.backlog.stats().held_frames == 1  # nothing new held for a conversation that will not come


def test_a_lingering_room_ends_once_even_if_the_timer_fires_late() -> None:
    core = make_core(linger_s=2.0)
    running(core, T0)
    core.caller_left("alice", T0 + SECOND)
    late = core.timer(T0 + 10 * SECOND)  # the loop was busy: the timer fires 7 s late
    assert len(of(late, End)) == 1 and "2.0 s" in of(late, End)[0].reason
    assert of(core.timer(T0 + 11 * SECOND), End) == []


def test_keepalive_resumes_with_the_next_conversation_after_a_reconnect() -> None:
    core = make_core()
    running(core, T0)
    core.engine_state(StateChange(ConnectionState.RECONNECTING, T0 + SECOND, 1, "conv-1", 1006), T0 + SECOND)
    assert core.next_wakeup_ns(T0 + SECOND) is None
    core.engine_state(StateChange(ConnectionState.CONNECTED, T0 + 2 * SECOND, 1, "conv-2"), T0 + 2 * SECOND)
    assert core.next_wakeup_ns(T0 + 2 * SECOND) is None  # connected, but no formats yet: nothing to encode
    core.engine_event(metadata("conv-2"), T0 + 2100 * MS)
    assert core.next_wakeup_ns(T0 + 2100 * MS) == T0 + 2350 * MS
    keep = core.timer(T0 + 2350 * MS)
    assert len(keep) == 1 and isinstance(keep[0], SendAudio) and keep[0].keepalive


def quiet_room(n: int) -> npt.NDArray[np.int16]:
    """-65 dBFS of white noise: the floor the onset detector measures against."""
    return np.round(np.random.default_rng(1).standard_normal(n) * 32768 * 10 ** (-65 / 20)).astype(np.int16)


def test_a_talk_over_ducks_the_voice_before_any_audio_goes_to_the_engine() -> None:
    from core.ducker import Ducker
    from emulator.signals import speech_like

    core = SessionCore(start_immediately=False, end_when_empty=True, linger_ns=10 * SECOND,
                       make_uplink=lambda fmt, rate: Uplink(fmt, in_rate=rate, chunk_ms=20), make_downlink=Downlink,
                       ducker=Ducker())
    running(core, T0)
    assert core.ducker is not None
    voice = tone(220.0, 2.0, amplitude=0.37)
    talk = np.concatenate((quiet_room(ROOM_RATE // 2), speech_like(ROOM_RATE, 600, -18.0, seed=4)))
    ducked: list[Action] = []
    t = T0
    for k in range(talk.size // FRAME):
        t = T0 + (k + 1) * 20 * MS
        for half in (0, 1):  # the player's two 10 ms frames per caller frame (what the shell does)
            j = (2 * k + half) * (FRAME // 2)
            core.ducker.voice_frame(voice[j:j + FRAME // 2], t)
        actions = list(core.caller_audio("alice", talk[k * FRAME:(k + 1) * FRAME], t))
        if of(actions, Ducked):
            ducked = actions
            break
    assert ducked, "the talk-over was not ducked"
    first = ducked[0]
    assert isinstance(first, Ducked) and first.caller == "alice" and first.at_ns <= t
    assert ducked[1] == WakePlayout()  # the player re-sends its queue ducked, before the chunk goes out
    assert all(isinstance(a, SendAudio) for a in ducked[2:])
    confirmed = core.engine_event(ep.Interruption(2), t + 500 * MS)
    assert DuckEnded(t + 500 * MS, "confirmed") in confirmed
