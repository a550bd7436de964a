"""The two pipelines of a session, driven by literal times: no clock, no network."""

from __future__ import annotations

import numpy as np
import pytest

from core.clock import MS
from core.downlink import Downlink, DownlinkConfig
from core.errors import ConfigError
from core.formats import ROOM_RATE, parse_format
from core.uplink import Uplink

RATE = ROOM_RATE
FRAME20 = RATE // 50


def tone(freq: float, n: int, rate: int = RATE, amp: float = 8000.0, phase: int = 0) -> np.ndarray:
    t = (np.arange(n) + phase) / rate
    return (np.sin(2 * np.pi * freq * t) * amp).astype(np.int16)


def test_offset_callers_are_mixed_chunk_by_chunk() -> None:
    up = Uplink(parse_format("pcm_48000"), chunk_ms=20)
    up.join("a")
    up.join("b")
    chunks = []
    for k in range(20):
        # a's frame arrives 10 ms before b's, every 20 ms, as LiveKit delivers two tracks out of phase.
        now = k * 20 * MS
        up.write("a", tone(300, FRAME20, phase=k * FRAME20), now)
        while up.ready(now):
            chunks.append(up.next_chunk(now))
        up.write("b", tone(700, FRAME20, phase=k * FRAME20), now + 10 * MS)
        while up.ready(now + 10 * MS):
            chunks.append(up.next_chunk(now + 10 * MS))
    assert len(chunks) >= 18
    stats = up.mixer.stats
    # b is waited for from its first frame on; only the very first chunk, cut before b had ever sent, lacks b.
    assert stats["a"].starved_samples == 0
    assert stats["b"].starved_samples == FRAME20
    # The alignment wait is what a's chunk waited for b's frame: 10 ms, on the times given (no clock).
    waits = up.timer.recent("uplink.align_wait")
    assert np.all(waits[1:] == 10 * MS)


def test_a_silent_caller_is_not_waited_for() -> None:
    up = Uplink(parse_format("pcm_16000"), chunk_ms=20, inactive_ms=100)
    up.join("talker")
    up.join("muted")  # joined, never sends a frame
    up.write("talker", tone(300, FRAME20), 0)
    assert up.ready(0)  # the muted caller is inactive: no need to wait for them
    payload = up.next_chunk(0)
    assert len(payload) % 2 == 0


def test_a_late_caller_is_waited_for_up_to_the_slack() -> None:
    up = Uplink(parse_format("pcm_16000"), chunk_ms=20, slack_ms=40)
    up.join("a")
    up.join("b")
    up.write("a", tone(300, FRAME20), 0)
    up.write("b", tone(700, FRAME20), 0)
    assert up.ready(0)
    up.next_chunk(0)
    # b falls behind: a's next two chunks wait for b, the third is cut without b.
    up.write("a", tone(300, FRAME20), 20 * MS)
    assert not up.ready(20 * MS)
    up.write("a", tone(300, FRAME20), 40 * MS)
    assert not up.ready(40 * MS)
    up.write("a", tone(300, FRAME20), 60 * MS)
    assert up.ready(60 * MS)


def test_uplink_chunk_is_the_engine_format_and_length() -> None:
    up = Uplink(parse_format("ulaw_8000"), chunk_ms=20)
    up.join("a")
    total = 0
    for k in range(50):
        up.write("a", tone(440, FRAME20, phase=k * FRAME20), k * 20 * MS)
        while up.ready(k * 20 * MS):
            total += len(up.next_chunk(k * 20 * MS))
    # one byte per sample at 8 kHz: the first chunk is padded by what the decimator still holds
    assert total == 8000


FRAME10 = RATE // 100
ALL_FORMATS = ("pcm_8000", "pcm_16000", "pcm_22050", "pcm_24000", "pcm_44100", "pcm_48000", "ulaw_8000")


@pytest.mark.parametrize("fmt_name", ALL_FORMATS)
def test_one_caller_chunk_leaves_with_its_frame_and_holds_a_few_ms(fmt_name: str) -> None:
    # Default 10 ms chunks: every 10 ms frame of a lone caller is cut into a chunk at once, and what the
    # resampler still holds of it is its group delay: ≤ 2.6 ms whatever the format (soxr held 11–43 ms).
    fmt = parse_format(fmt_name)
    up = Uplink(fmt)
    up.join("a")
    sizes, held = [], []
    for k in range(100):
        now = k * 10 * MS
        up.write("a", tone(440, FRAME10, phase=k * FRAME10), now)
        assert up.ready(now)
        chunk = up.next_chunk(now)
        assert not up.ready(now)
        sizes.append(len(chunk))
        held.append(up.last_held_ns)
    per_10ms = fmt.rate // 100 * fmt.bytes_per_sample
    assert all(abs(size - per_10ms) <= 2 * fmt.bytes_per_sample for size in sizes[1:])
    assert max(held[1:]) <= 2.6 * MS
    assert up.timer.recent("uplink.align_wait").max() == 0


@pytest.mark.parametrize("fmt_name", ("pcm_8000", "pcm_16000", "pcm_24000", "ulaw_8000"))
def test_every_chunk_ends_on_the_frame_grid_and_the_voice_sits_one_group_delay_later(fmt_name: str) -> None:
    # A receiver working in 10 ms frames of the stream (a VAD) completes frame k with chunk k, not k + 1:
    # from the first chunk on, chunk k ends at sample (k + 1) x 10 ms of the stream.
    fmt = parse_format(fmt_name)
    up = Uplink(fmt)
    up.join("a")
    onset = 5 * FRAME10 + 333  # a tone starts 333 samples into the sixth frame
    x = np.concatenate([np.zeros(onset, np.int16), tone(440, 40 * FRAME10 - onset, amp=12000.0)])
    out, ends = [], []
    for k in range(40):
        up.write("a", x[k * FRAME10:(k + 1) * FRAME10], k * 10 * MS)
        out.append(np.frombuffer(up.next_chunk(k * 10 * MS), dtype=np.uint8 if fmt.encoding == "ulaw" else "<i2"))
        ends.append(sum(c.size for c in out))
    per = fmt.rate // 100
    assert ends == [(k + 1) * per for k in range(40)]
    if fmt.encoding == "pcm":
        stream = np.concatenate(out).astype(np.int32)
        first_loud = int(np.flatnonzero(np.abs(stream) > 2000)[0])
        ratio = RATE // fmt.rate
        delay = up.resampler.delay_samples  # the group delay, in output samples
        # Where the onset lands: its time, plus the filter's delay; a 440 Hz sine needs < 1 ms to pass 2000.
        assert onset / ratio + delay - 2 <= first_loud <= onset / ratio + delay + fmt.rate // 1000


def test_chunk_length_must_be_a_multiple_of_5_ms() -> None:
    for ms in (20, 25, 250):
        assert Uplink(parse_format("pcm_16000"), chunk_ms=ms).chunk_ms == ms
    for ms in (0, 7, -10):
        with pytest.raises(ConfigError):
            Uplink(parse_format("pcm_16000"), chunk_ms=ms)


def burst(fmt_name: str, seconds: float) -> bytes:
    fmt = parse_format(fmt_name)
    return fmt.encode(tone(440, int(seconds * fmt.rate), rate=fmt.rate))


def drain(down: Downlink, start_ns: int, until_ns: int, step_ns: int = 10 * MS) -> list[tuple[int, np.ndarray]]:
    out = []
    for now in range(start_ns, until_ns, step_ns):
        samples = down.due(now)
        if samples is not None:
            out.append((now, samples))
    return out


@pytest.mark.parametrize(("frame_ms", "lead"), [(10, 3), (20, 2), (40, 1)])
def test_a_burst_is_played_at_real_time_with_a_bounded_lead(frame_ms: int, lead: int) -> None:
    down = Downlink(parse_format("pcm_24000"), DownlinkConfig(frame_ms=frame_ms, lead_frames=lead))
    down.push(burst("pcm_24000", 2.0), 0)  # two seconds arrive at once
    sent = drain(down, 0, 3_000 * MS)
    total = sum(s.size for _, s in sent)
    assert abs(total - 2 * RATE) < 0.05 * RATE  # all of it, once (tail flushed at the end)
    # Whole frames, never more than the lead ahead of real time.
    frame = RATE * frame_ms // 1000
    played = 0
    for now, samples in sent:
        assert samples.size % frame == 0
        played += samples.size
        assert played <= (now // (frame_ms * MS) + lead) * frame + frame
    assert down.playout.underruns == 0


def test_interrupt_drops_everything_and_nothing_more_is_due() -> None:
    down = Downlink(parse_format("pcm_16000"))
    down.push(burst("pcm_16000", 5.0), 0)
    drain(down, 0, 500 * MS)
    dropped = down.interrupt()
    assert dropped > 4 * RATE
    # Then only digital silence, paced, and only the configured amount: the receiver hears real silence
    # instead of concealing a stopped stream.
    after = drain(down, 510 * MS, 1_000 * MS)
    silence = np.concatenate([s for _, s in after])
    assert silence.size == down.config.silence_after_interrupt_ms * RATE // 1000
    assert not silence.any()
    assert down.due(1_000 * MS) is None
    assert down.next_wakeup_ns(1_000 * MS) is None  # idle: the driver may sleep until audio arrives
    down.push(burst("pcm_16000", 0.5), 1_100 * MS)  # the next reply plays again
    assert down.due(1_100 * MS) is not None


def test_the_reply_tail_leaves_the_resampler_when_audio_stops() -> None:
    down = Downlink(parse_format("pcm_16000"), DownlinkConfig(tail_after_ms=60))
    down.push(burst("pcm_16000", 0.1), 0)
    sent = drain(down, 0, 400 * MS)
    total = sum(s.size for _, s in sent)
    assert total >= int(0.1 * RATE)  # the ~21 ms still in soxr came out too
    assert not down.playout.is_playing


def test_a_deep_buffer_does_not_make_the_driver_spin() -> None:
    """While a long reply is buffered, the next wakeup is the next frame, never a deadline already passed."""
    down = Downlink(parse_format("pcm_16000"), DownlinkConfig(tail_after_ms=60))
    down.push(burst("pcm_16000", 3.0), 0)
    for now in range(0, 1_000 * MS, 10 * MS):
        down.due(now)
        wake = down.next_wakeup_ns(now)
        assert wake is not None and wake > now, (now, wake)


def test_an_interruption_of_an_older_event_leaves_the_newer_reply_playing() -> None:
    # The service interrupts event 5 (say, a tool-call sound) while the reply of event 7 is queued: the
    # reply plays on, unpaused and with no silence inserted; only the older sound is dropped.
    down = Downlink(parse_format("pcm_16000"))
    sound = parse_format("pcm_16000").encode(tone(880, 16000 // 5, rate=16000))  # 200 ms, event 4
    down.push(sound, 0, event_id=4)
    down.push(burst("pcm_16000", 1.0), 0, event_id=7)  # 1 s of 440 Hz, event 7
    drain(down, 0, 100 * MS)
    dropped = down.interrupt(5)
    assert 0 < dropped <= 48 * 200
    after = np.concatenate([s for _, s in drain(down, 100 * MS, 1_500 * MS)])
    loud = after[np.abs(after) > 1000]
    assert loud.size > 0.9 * RATE  # all of the reply still plays
    spectrum = np.abs(np.fft.rfft(after.astype(np.float64)))
    assert abs(np.argmax(spectrum) * RATE / after.size - 440) < 5
    assert down.interruptions == 1


def test_an_interruption_of_the_newest_event_still_flushes_everything() -> None:
    down = Downlink(parse_format("pcm_16000"))
    down.push(burst("pcm_16000", 0.5), 0, event_id=3)
    down.push(burst("pcm_16000", 1.0), 0, event_id=4)
    drain(down, 0, 100 * MS)
    assert down.interrupt(5) > 1.2 * RATE
    after = drain(down, 110 * MS, 1_000 * MS)
    assert not np.concatenate([s for _, s in after]).any()  # only the silence after an interruption
    assert down.due(1_000 * MS) is None
