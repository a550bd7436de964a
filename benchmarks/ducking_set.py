"""The labelled set of :mod:`benchmarks.ducking`: what a caller's microphone hears while the agent talks.

Every speech sample is synthesised by Debian's ``espeak-ng`` (the agent ``en-us``; callers ``en-gb``,
``en-us+f3`` and ``en-gb-x-rp`` at other pitches); noise, clicks and the room are built here from a seeded
generator, so a run is repeatable. One :class:`Clip` is one opportunity to duck: the agent talks for the whole
clip; the classes and their levels are listed in :mod:`benchmarks.ducking`'s docstring.
"""

from __future__ import annotations

import functools
import io
import subprocess
import sys
import wave
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from emulator.signals import resample

__all__ = ["CALLER_FRAME", "F64", "FRAME", "RATE", "Clip", "agent_voice", "build_set", "espeak", "reverb"]

Int16Array = npt.NDArray[np.int16]
F64 = npt.NDArray[np.float64]
RATE = 48_000
FRAME = RATE // 100  # 10 ms
CALLER_FRAME = RATE // 50  # 20 ms, as the session's caller_frame_ms
AGENT_VOICE = "en-us"
AGENT_TEXT = (
    "Thanks for calling. I can help you change your booking, check the status of an order, or answer "
    "questions about your account. Before we start, could you tell me the name on the reservation and the "
    "date you are travelling? Our records show two upcoming trips, one next Tuesday and one at the end of "
    "the month, and I want to be sure I change the right one."
)
CALLERS = (("en-gb", 45), ("en-us+f3", 60), ("en-gb-x-rp", 40))
BACKCHANNELS = ("mm-hmm", "yeah", "okay", "uh-huh", "right", "I see")
TALKOVERS = ("wait, stop", "sorry, can I ask something", "no, that's not what I meant", "hold on a second",
             "excuse me", "actually I need to change that", "stop, please", "hang on")


# ---------------------------------------------------------------------- signals
@functools.cache
def espeak(text: str, voice: str = AGENT_VOICE, pitch: int = 50, speed: int = 170) -> Int16Array:
    """``text`` spoken by espeak-ng, at 48 kHz, leading and trailing silence trimmed."""
    try:
        out = subprocess.run(["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(speed), "--stdout", text],
                             capture_output=True, check=True, timeout=60).stdout
    except FileNotFoundError:
        sys.exit("espeak-ng is missing: apt-get install espeak-ng (make test installs it)")
    with wave.open(io.BytesIO(out)) as w:
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.int16)
    pcm = resample(pcm, rate, RATE)
    loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > 100)
    return pcm[loud[0]:loud[-1] + 1] if loud.size else pcm


def active_rms(x: npt.NDArray[Any]) -> float:
    """RMS over the 10 ms blocks within 30 dB of the loudest: a speech level that ignores pauses."""
    n = x.shape[0] // FRAME
    p = (x[: n * FRAME].astype(np.float64).reshape(n, FRAME) ** 2).mean(axis=1)
    return float(np.sqrt(p[p >= p.max() * 1e-3].mean())) if n else 0.0


def at_level(x: npt.NDArray[Any], dbfs: float) -> F64:
    """``x`` scaled so its active RMS is ``dbfs``."""
    return np.asarray(x, dtype=np.float64) * (32768.0 * 10 ** (dbfs / 20) / max(active_rms(x), 1e-9))


def onset_sample(x: F64) -> int:
    """The true onset of a labelled sound: the first 5 ms block within 20 dB of its loudest."""
    b = 240
    n = x.shape[0] // b
    p = (x[: n * b].reshape(n, b) ** 2).mean(axis=1)
    return int(np.flatnonzero(p >= p.max() * 0.01)[0]) * b


def noise(kind: str, n: int, dbfs: float, rng: np.random.Generator) -> F64:
    if kind == "white":
        x = rng.standard_normal(n)
    elif kind == "pink":
        spec = np.fft.rfft(rng.standard_normal(n))
        f = np.fft.rfftfreq(n, 1 / RATE)
        spec[1:] /= np.sqrt(f[1:])
        spec[0] = 0
        x = np.fft.irfft(spec, n)
    else:  # mains hum with harmonics
        t = np.arange(n) / RATE
        x = np.zeros(n)
        for k in range(1, 8):
            x += np.sin(2 * np.pi * 50 * k * t + k) / k
    out: F64 = x * (32768.0 * 10 ** (dbfs / 20) / np.sqrt(np.mean(x * x)))
    return out


def click(kind: str, ms: int, peak_dbfs: float, rng: np.random.Generator) -> F64:
    n = RATE * ms // 1000
    t = np.arange(n) / RATE
    if kind == "impulse":
        x = rng.standard_normal(n) * np.exp(-t / (ms / 1000 / 5))  # -43 dB at its end
    elif kind == "burst":
        x = rng.standard_normal(n) * np.minimum(1, np.minimum(t, t[::-1]) / 0.002)
    else:  # thump: a decaying low sinusoid
        x = np.sin(2 * np.pi * rng.uniform(30, 60) * t) * np.exp(-t / (ms / 1000 / 4))
    out: F64 = x * (32768.0 * 10 ** (peak_dbfs / 20) / np.max(np.abs(x)))
    return out


def reverb(x: F64, tail_ms: float, rng: np.random.Generator) -> F64:
    """A crude room: the direct sound plus an exponentially decaying noise tail at -10 dB."""
    n = RATE * int(tail_ms) // 1000
    t = np.arange(n) / RATE
    ir = rng.standard_normal(n) * np.exp(-t / (tail_ms / 1000 / 6.9)) * 10 ** (-10 / 20) / np.sqrt(n / 6.9)
    ir[0] = 1.0
    return np.convolve(x, ir)[: x.shape[0]]


# ---------------------------------------------------------------------- clips
@dataclass
class Clip:
    cls: str
    name: str
    seconds: float
    mic: F64  # labelled content, not including echo
    echo_gain_db: float | None = None  # the played voice, back in the mic at this gain ...
    echo_delay_ms: int = 0  # ... and delay
    onset_s: float | None = None  # talk-overs: the true onset of the caller's speech
    interrupt: bool = False  # the engine decides this is a barge-in


def build_set(quick: bool, seed: int = 7) -> list[Clip]:
    rng = np.random.default_rng(seed)
    clips: list[Clip] = []
    secs = 4.0
    n = int(secs * RATE)
    def floor() -> F64:  # a quiet room under every clip
        return noise("white", n, -65, rng)

    levels = (-60, -50, -40, -30)
    for kind in ("white", "pink", "hum"):
        for lv in levels:
            clips.append(Clip("noise", f"{kind} {lv} dBFS", secs, noise(kind, n, lv, rng)))
    for kind in ("impulse", "burst", "thump"):
        for ms in (20, 30, 40, 50):
            for pk in ((-20, -6) if quick else (-30, -18, -6)):
                mic = floor()
                for at in (0.8, 1.9, 3.0):
                    c = click(kind, ms, pk, rng)
                    s = int(at * RATE)
                    mic[s:s + c.shape[0]] += c
                clips.append(Clip("click", f"{kind} {ms} ms {pk} dBFS", secs, mic))
    for i, word in enumerate(BACKCHANNELS):
        for lv in ((-24,) if quick else (-30, -24, -18)):
            voice, pitch = CALLERS[i % len(CALLERS)]
            w = at_level(espeak(word, voice, pitch), lv)
            mic = floor()
            s = int((1.2 + 0.1 * i) * RATE)
            mic[s:s + w.shape[0]] += w[: n - s]
            clips.append(Clip("backchannel", f"{word!r} {lv} dBFS", secs, mic, onset_s=(s + onset_sample(w)) / RATE))
    for gain in (-10, -20, -30):
        for delay in (50, 100, 150, 200):
            clips.append(Clip(f"echo_{gain}dB", f"echo {gain} dB {delay} ms", secs, floor(),
                              echo_gain_db=gain, echo_delay_ms=delay))
    for i, text in enumerate(TALKOVERS if not quick else TALKOVERS[:4]):
        for lv in (-30, -24, -18):
            voice, pitch = CALLERS[i % len(CALLERS)]
            w = at_level(espeak(text, voice, pitch), lv)
            mic = floor()
            s = int((1.0 + 0.13 * i) * RATE)
            mic[s:s + w.shape[0]] += w[: n - s]
            clips.append(Clip("talkover", f"{text!r} {lv} dBFS", secs, mic, echo_gain_db=-30, echo_delay_ms=120,
                              onset_s=(s + onset_sample(w)) / RATE, interrupt=True))
    return clips


def agent_voice(seconds: float) -> F64:
    base = at_level(espeak(AGENT_TEXT, AGENT_VOICE, 50, 165), -18)
    n = int(seconds * RATE)
    lead_in = int(0.2 * RATE)
    out = np.zeros(n)
    k = min(n - lead_in, base.shape[0])
    out[lead_in:lead_in + k] = base[:k]
    return out
