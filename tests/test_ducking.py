"""Local ducking, sans-I/O with literal times: the gain envelope, the onset detector, and the Ducker adapter."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from core.clock import MS
from core.duck import Duck, DuckConfig, DuckState
from core.ducker import Ducker, DuckerConfig
from core.errors import ConfigError
from core.onset import OnsetDetector
from core.voice_reference import VoiceReference
from emulator.signals import speech_like

RATE = 48_000
FRAME = 480  # 10 ms
Int16Array = npt.NDArray[np.int16]


def tone(n: int, hz: float = 300.0, amp: float = 10_000.0, start: int = 0) -> Int16Array:
    t = (np.arange(n) + start) / RATE
    return np.round(amp * np.sin(2 * np.pi * hz * t)).astype(np.int16)


def dc(n: int, value: int = 10_000) -> Int16Array:
    return np.full(n, value, dtype=np.int16)


def frames(samples: Int16Array, size: int = FRAME) -> list[Int16Array]:
    return [samples[i:i + size] for i in range(0, samples.size, size)]


# ---------------------------------------------------------------------- the envelope
def test_duck_reaches_depth_within_the_ramp_without_clicks() -> None:
    duck = Duck(DuckConfig(depth_db=18, ramp_ms=8))
    signal = dc(10 * FRAME)  # a constant: every sample-to-sample step is the envelope's own
    assert duck.start(1_000 * MS)
    out = np.concatenate([duck.apply(f, 1_000 * MS + k * 10 * MS) for k, f in enumerate(frames(signal))])
    assert out.size == signal.size
    ramp = RATE * 8 // 1000
    assert out[ramp] == round(10_000 * 10 ** (-18 / 20))  # the depth, exactly, from the end of the ramp on
    assert np.all(out[ramp:] == out[ramp])
    steps = np.abs(np.diff(out.astype(np.int32)))
    # A raised cosine over 384 samples: the steepest step is pi/2 * (1 - 0.126) * 10000 / 384, about 36.
    assert steps.max() <= 40
    assert duck.state is DuckState.DUCKED and not duck.start(1_050 * MS)  # already ducked: no second duck
    assert duck.started == 1


def test_release_after_the_hold_restores_unity_exactly() -> None:
    duck = Duck(DuckConfig(depth_db=18, hold_ms=500, release_ms=60))
    t0 = 2_000 * MS
    duck.start(t0)
    duck.caller_active(t0 + 200 * MS)  # the caller spoke until t0 + 200 ms: hold until t0 + 700 ms
    sig = tone(150 * FRAME)
    out = [duck.apply(f, t0 + k * 10 * MS) for k, f in enumerate(frames(sig))]
    assert duck.next_wakeup_ns(t0) is None  # released by now
    assert duck.released == 1 and duck.confirmed == 0
    assert duck.state is DuckState.UNITY and duck.gain == 1.0
    # Still held at t0 + 690 ms (frame 69), releasing from t0 + 700 ms, unity 60 ms later.
    assert np.abs(out[69]).max() < 10_000 * 10 ** (-17 / 20)
    assert np.array_equal(out[77], sig[77 * FRAME:78 * FRAME])
    assert all(np.array_equal(out[k], sig[k * FRAME:(k + 1) * FRAME]) for k in range(77, 150))
    whole = np.concatenate(out)
    assert whole.size == sig.size  # nothing dropped
    assert np.abs(np.diff(whole.astype(np.int32))).max() <= np.abs(np.diff(sig.astype(np.int32))).max() + 2


def test_interruption_confirms_and_returns_to_unity() -> None:
    duck = Duck(DuckConfig(depth_db=18))
    duck.start(0)
    duck.apply(dc(FRAME), 0)
    assert duck.interruption(30 * MS)
    assert duck.confirmed == 1 and duck.released == 0
    assert duck.state is DuckState.UNITY
    f = dc(FRAME)
    assert np.array_equal(duck.apply(f, 40 * MS), f)
    assert not duck.interruption(50 * MS) and duck.interruptions_unducked == 1


def test_hold_deadline_is_the_wakeup() -> None:
    duck = Duck(DuckConfig(hold_ms=500))
    assert duck.next_wakeup_ns(0) is None
    duck.start(100 * MS)
    assert duck.next_wakeup_ns(100 * MS) == 600 * MS
    duck.caller_active(300 * MS)
    assert duck.next_wakeup_ns(310 * MS) == 800 * MS
    assert not duck.poll(799 * MS) and duck.poll(800 * MS)
    assert duck.state is DuckState.RELEASING and duck.next_wakeup_ns(800 * MS) is None


def test_a_new_onset_during_the_release_ramps_down_from_where_it_was() -> None:
    duck = Duck(DuckConfig(depth_db=18, hold_ms=0, ramp_ms=8, release_ms=60))
    duck.start(0)
    sig = dc(20 * FRAME)
    parts = [duck.apply(f, k * 10 * MS) for k, f in enumerate(frames(sig)[:3])]  # releasing from frame 0 on
    assert duck.state is DuckState.RELEASING
    assert duck.start(30 * MS) and duck.restarted == 1
    parts += [duck.apply(f, (3 + k) * 10 * MS) for k, f in enumerate(frames(sig)[3:])]
    out = np.concatenate(parts)
    assert np.abs(np.diff(out.astype(np.int32))).max() <= 40


def test_depth_zero_is_off_and_bad_settings_are_refused() -> None:
    duck = Duck(DuckConfig(depth_db=0))
    assert not duck.start(0)
    f = tone(FRAME)
    assert np.array_equal(duck.apply(f, 0), f)
    with pytest.raises(ConfigError):
        Duck(DuckConfig(ramp_ms=0))


# ---------------------------------------------------------------------- the onset detector
def feed(det: OnsetDetector, samples: Int16Array, t0: int = 0, size: int = 960) -> list[int]:
    """Push 20 ms frames as they would arrive (time = their last sample); returns the times onsets fired."""
    fired = []
    for i in range(0, samples.size - size + 1, size):
        now = t0 + (i + size) * 1_000_000_000 // RATE
        if det.push(samples[i:i + size], now) is not None:
            fired.append(now)
    return fired


def noise(n: int, dbfs: float, seed: int = 1) -> Int16Array:
    x = np.random.default_rng(seed).standard_normal(n) * 32768 * 10 ** (dbfs / 20)
    return np.round(x).astype(np.int16)


def test_voiced_speech_fires_within_50_ms_of_its_onset() -> None:
    det = OnsetDetector()
    quiet = noise(RATE, -65)
    voice = speech_like(RATE, 1000, -20.0, seed=3)
    onset = np.flatnonzero(np.abs(voice) > 300)[0]
    fired = feed(det, np.concatenate((quiet, voice)))
    assert len(fired) >= 1
    onset_ns = (RATE + onset) * 1_000_000_000 // RATE
    assert 0 < fired[0] - onset_ns <= 50 * MS


@pytest.mark.parametrize("dbfs", [-60, -45, -30])
def test_steady_noise_never_fires(dbfs: float) -> None:
    det = OnsetDetector()
    assert feed(det, noise(5 * RATE, dbfs)) == []
    assert abs(det.floor_dbfs - dbfs) < 3


@pytest.mark.parametrize("ms", [20, 30, 40, 50])
def test_clicks_and_bursts_never_fire(ms: int) -> None:
    det = OnsetDetector()
    sig = noise(3 * RATE, -65).astype(np.float64)
    n = RATE * ms // 1000
    burst = noise(n, -10, seed=ms).astype(np.float64)
    for at in (0.5, 1.2, 2.0):
        s = int(at * RATE)
        sig[s:s + n] += burst
    assert feed(det, np.clip(sig, -32768, 32767).astype(np.int16)) == []


def echo_run(mic: Int16Array, played: Int16Array) -> list[int]:
    """The shell's order: the voice is recorded as it plays, the caller's 20 ms frames arrive after."""
    ref = VoiceReference()
    det = OnsetDetector(ref)
    fired = []
    for i in range(0, mic.size - 959, 960):
        ref.add(played[i:i + 960], i * 1_000_000_000 // RATE)
        now = (i + 960) * 1_000_000_000 // RATE
        if det.push(mic[i:i + 960], now) is not None:
            fired.append(now)
    return fired


def echo_scene() -> tuple[Int16Array, Int16Array, Int16Array]:
    """The agent's voice (3 s); the caller's microphone hearing it back 120 ms later and 20 dB down; the same
    with the caller talking over it from 1.5 s."""
    played = speech_like(RATE, 3000, -12.0, seed=5)
    delay = RATE * 120 // 1000
    mic = noise(played.size, -65).astype(np.float64)
    mic[delay:] += played[:-delay] * 10 ** (-20 / 20)
    echo_only = np.clip(mic, -32768, 32767).astype(np.int16)
    talk = speech_like(RATE, 800, -20.0, seed=9)
    mic[RATE * 3 // 2:RATE * 3 // 2 + talk.size] += talk
    return played, echo_only, np.clip(mic, -32768, 32767).astype(np.int16)


def test_the_played_voice_echoed_20_db_down_is_explained_but_a_talk_over_is_not() -> None:
    played, echo_only, talk_over = echo_scene()
    assert echo_run(echo_only, played) == []
    fired = echo_run(talk_over, played)
    assert fired and 1500 * MS <= fired[0] <= 1600 * MS


# ---------------------------------------------------------------------- the adapter
class Source:
    """An AudioSource-like queue: plays one 10 ms frame per 10 ms from the first frame it gets."""

    def __init__(self) -> None:
        self.queue: list[Int16Array] = []
        self.played: list[Int16Array] = []
        self.cleared = 0

    def play_until(self, now_ns: int, clock: list[int]) -> None:
        while clock[0] + 10 * MS <= now_ns:
            clock[0] += 10 * MS
            if self.queue:
                self.played.append(self.queue.pop(0))

    def queued_ns(self) -> int:
        return len(self.queue) * 10 * MS


def test_ducker_ducks_the_queued_lead_at_once_and_drops_nothing() -> None:
    """The shell's loop: 3 frames of lead; a caller talks over at 1 s; the queue is re-sent ducked."""
    ducker = Ducker(DuckerConfig(duck=DuckConfig(depth_db=18, hold_ms=300)))
    source, clock = Source(), [0]
    voice = tone(300 * FRAME, 220.0, 12_000.0)
    caller = np.concatenate((noise(RATE, -65), speech_like(RATE, 600, -18.0, seed=2), noise(2 * RATE, -65)))
    sent = 0
    duck_at = None
    for tick in range(300):
        now = tick * 10 * MS
        source.play_until(now, clock)
        if tick % 2 == 1:  # a 20 ms caller frame arrives
            i = (tick + 1) * FRAME
            if ducker.caller_frame("alice", caller[i - 960:i], now) and duck_at is None:
                duck_at = now
        redo = ducker.rewind(now, source.queued_ns())
        if redo.size:
            source.queue = frames(redo)
            source.cleared += 1
        while len(source.queue) < 3 and sent < voice.size:
            source.queue.append(ducker.voice_frame(voice[sent:sent + FRAME], now))
            sent += FRAME
    source.play_until(400 * 10 * MS, clock)
    out = np.concatenate(source.played)
    assert out.size == voice.size  # every sample of the reply played exactly once
    talk_onset = RATE + int(np.flatnonzero(np.abs(caller[RATE:]) > 1_000)[0])  # within 20 dB of its peak
    assert duck_at is not None and 0 < duck_at - talk_onset * 1_000_000_000 // RATE <= 50 * MS
    assert source.cleared == 1 and ducker.rewinds == 1
    k = duck_at // (10 * MS)  # the frame playing when the duck was decided
    # The frames after it were queued at unity and re-sent ducked: 10 ms later the voice is 18 dB down.
    level = np.abs(out[(k + 1) * FRAME:(k + 4) * FRAME]).max()
    assert level <= 12_000 * 10 ** (-17 / 20)
    assert np.abs(out[: k * FRAME]).max() >= 11_900  # before the duck: untouched
    assert np.abs(np.diff(out.astype(np.int32))).max() <= np.abs(np.diff(voice.astype(np.int32))).max() + 40
    assert np.array_equal(out[-50 * FRAME:], voice[-50 * FRAME:])  # released: unity, sample for sample
    stats = ducker.stats()
    assert stats["started"] == 1 and stats["released"] == 1 and stats["confirmed"] == 0


def test_ducker_interruption_confirms_and_an_onset_without_voice_does_not_duck() -> None:
    ducker = Ducker()
    talk = np.concatenate((noise(RATE // 2, -65), speech_like(RATE, 500, -18.0, seed=4)))
    started = [ducker.caller_frame("bob", f, (k + 1) * 20 * MS) for k, f in enumerate(frames(talk, 960))]
    assert not any(started) and ducker.onsets == 1 and ducker.onsets_while_silent == 1
    voice = tone(100 * FRAME)
    ducker2 = Ducker()
    t = 0
    hit = False
    for k, f in enumerate(frames(talk, 960)):
        t = (k + 1) * 20 * MS
        ducker2.voice_frame(voice[2 * k * FRAME:(2 * k + 1) * FRAME], t)
        ducker2.voice_frame(voice[(2 * k + 1) * FRAME:(2 * k + 2) * FRAME], t)
        hit = ducker2.caller_frame("bob", f, t) or hit
    assert hit and ducker2.duck.ducked
    assert ducker2.interruption(t + 10 * MS)
    assert ducker2.stats()["confirmed"] == 1 and not ducker2.duck.ducked
    assert ducker2.rewind(t + 20 * MS).size == 0  # nothing to re-send after a flush


# ---------------------------------------------------------------------- the benchmark's labelled set
def test_false_duck_benchmark_on_a_slice_of_the_labelled_set() -> None:
    """A slice of ``benchmarks.ducking`` (espeak-ng speech): the done-when targets hold on it."""
    import shutil

    from tests.conftest import need

    if shutil.which("espeak-ng") is None:
        need("espeak-ng is missing (apt-get install espeak-ng)")
    from benchmarks import ducking

    clips = ducking.build_set(quick=True)
    picked = [c for c in clips if c.cls in ("noise", "echo_-20dB", "talkover")
              or (c.cls == "click" and c.name.endswith("-6 dBFS"))]
    result = ducking.run_set(picked, DuckerConfig(), engine_delay_ms=600)
    classes = result["classes"]
    assert classes["noise"]["ducks"] == 0
    assert classes["click"]["ducks"] == 0
    assert classes["echo_-20dB"]["ducks"] == 0
    talk = classes["talkover"]
    assert talk["clips_ducked"] == talk["clips"] > 0
    assert talk["unresolved"] == 0 and talk["flaps"] == 0
    assert result["onset_to_duck_ms"]["p50"] <= 60


def test_a_late_burst_of_caller_frames_is_dated_back_and_does_not_duck_a_voice_that_started_after_it() -> None:
    """The caller spoke from 0.3 to 0.7 s, before the agent's voice started at 0.75 s; our loop stalled and read
    the frames after 0.3 s only at 0.8 s, all at once. On the caller's timeline it was no talk-over: no duck."""
    ducker = Ducker()
    talk = np.concatenate((noise(RATE * 3 // 10, -65), speech_like(RATE, 400, -18.0, seed=4),
                           noise(RATE // 10, -65)))
    fs = frames(talk, 960)  # 40 frames: 0 .. 0.8 s
    for k, f in enumerate(fs[:15]):  # until 0.3 s, on time
        assert not ducker.caller_frame("bob", f, (k + 1) * 20 * MS)
    voice = tone(10 * FRAME)
    for k in range(5):  # the voice plays from 0.75 s
        ducker.voice_frame(voice[k * FRAME:(k + 1) * FRAME], 750 * MS + k * 10 * MS)
    started = [ducker.caller_frame("bob", f, 800 * MS) for f in fs[15:]]  # 0.3-0.8 s, read late
    assert not any(started) and ducker.onsets == 1 and ducker.onsets_while_silent == 1
    # Read on time, the same frames would have been a talk-over from 0.75 s on.
    on_time = Ducker()
    for k in range(5):
        on_time.voice_frame(voice[k * FRAME:(k + 1) * FRAME], 750 * MS + k * 10 * MS)
    late_talk = np.concatenate((noise(RATE * 3 // 4, -65), speech_like(RATE, 400, -18.0, seed=4)))
    hits = [on_time.caller_frame("bob", f, (k + 1) * 20 * MS) for k, f in enumerate(frames(late_talk, 960))]
    assert any(hits)


def test_several_callers_each_with_its_own_detector() -> None:
    """Ann's speakers leak the agent back at -20 dB (never a duck); Ben, on headphones, talks over at 1.5 s."""
    ducker = Ducker()
    voice = speech_like(3 * RATE, 3000, -12.0, seed=5)
    delay = RATE * 100 // 1000
    ann = noise(voice.size, -65).astype(np.float64)
    ann[delay:] += voice[:-delay] * 10 ** (-20 / 20)
    ann_i16 = np.clip(ann, -32768, 32767).astype(np.int16)
    ben = np.concatenate((noise(RATE * 3 // 2, -65), speech_like(RATE, 700, -20.0, seed=8),
                          noise(RATE * 8 // 10, -65)))
    duck_at = []
    for k in range(voice.size // 960):
        now = (k + 1) * 20 * MS
        ducker.voice_frame(voice[k * 960:k * 960 + 480], now - 20 * MS)
        ducker.voice_frame(voice[k * 960 + 480:(k + 1) * 960], now - 10 * MS)
        if ducker.caller_frame("ann", ann_i16[k * 960:(k + 1) * 960], now):
            duck_at.append(("ann", now))
        if ducker.caller_frame("ben", ben[k * 960:(k + 1) * 960], now):
            duck_at.append(("ben", now))
    assert [who for who, _ in duck_at] == ["ben"]
    assert 1_500 * MS < duck_at[0][1] <= 1_600 * MS
    ducker.caller_left("ann")
    assert ducker.stats()["started"] == 1


# ---------------------------------------------------------------------- callers read at the engine's rate
def at_rate(samples: Int16Array, rate: int) -> Int16Array:
    """What the room's SDK hands over when callers are read at ``rate`` (a band-limited resampler)."""
    from core.resample import Resampler

    return samples if rate == RATE else Resampler(RATE, rate).push(samples)


@pytest.mark.parametrize("rate", [8000, 16000, 24000])
def test_the_detector_decides_as_at_48_khz_on_callers_read_at_the_engine_rate(rate: int) -> None:
    from dataclasses import replace

    from core.onset import OnsetConfig

    config = replace(OnsetConfig(), rate=rate)
    size = rate // 50  # 20 ms frames

    def run(mic48: Int16Array, played: Int16Array | None = None) -> list[int]:
        ref = VoiceReference()  # the voice stays at 48 kHz
        det = OnsetDetector(ref, config)
        mic = at_rate(mic48, rate)
        fired = []
        for k, i in enumerate(range(0, mic.size - size + 1, size)):
            if played is not None:
                ref.add(played[k * 960:(k + 1) * 960], k * 20 * MS)
            if det.push(mic[i:i + size], (k + 1) * 20 * MS) is not None:
                fired.append((k + 1) * 20 * MS)
        return fired

    # Voiced speech after quiet: within 50 ms of its onset.
    voice = speech_like(RATE, 1000, -20.0, seed=3)
    onset_ns = (RATE + np.flatnonzero(np.abs(voice) > 300)[0]) * 1_000_000_000 // RATE
    fired = run(np.concatenate((noise(RATE, -65), voice)))
    assert fired and 0 < fired[0] - onset_ns <= 50 * MS
    # Steady noise and 40 ms bursts never.
    assert run(noise(3 * RATE, -45)) == []
    sig = noise(3 * RATE, -65).astype(np.float64)
    sig[RATE:RATE + RATE // 25] += noise(RATE // 25, -10, seed=40)
    assert run(np.clip(sig, -32768, 32767).astype(np.int16)) == []
    # The played voice's echo 20 dB down is explained; a caller talking over it at 1.5 s is not.
    played, echo_only, talk_over = echo_scene()
    assert run(echo_only, played) == []
    fired = run(talk_over, played)
    assert fired and 1500 * MS <= fired[0] <= 1600 * MS


def test_the_ducker_restarts_its_detectors_at_a_new_caller_rate_and_refuses_one_it_cannot_decimate() -> None:
    ducker = Ducker()
    assert ducker.caller_rate == RATE
    ducker.caller_frame("alice", noise(960, -65), 20 * MS)
    ducker.set_caller_rate(16_000)
    assert ducker.caller_rate == 16_000
    voice = at_rate(np.concatenate((noise(RATE, -65), speech_like(RATE, 1000, -20.0, seed=3))), 16_000)
    for k, i in enumerate(range(0, voice.size - 319, 320)):
        ducker.caller_frame("alice", voice[i:i + 320], (k + 2) * 20 * MS)
    assert ducker.onsets == 1  # the 16 kHz frames were read as 16 kHz: one onset, at the speech
    with pytest.raises(ConfigError):
        ducker.set_caller_rate(22_050)
