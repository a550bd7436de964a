"""The demo's recording: what happened when (:class:`Marks`), the two tracks of the call, the stereo WAV and
the picture. Used by :mod:`scripts.demo`; nothing here starts a process or touches the network."""

from __future__ import annotations

import time
import wave
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from scripts.caller import RATE, Heard

__all__ = ["Marks", "plot", "tracks", "write_wav"]

Int16Array = npt.NDArray[np.int16]


@dataclass
class Marks:
    """What happened when (monotonic ns), for the picture."""

    said: list[tuple[str, int, Int16Array]] = field(default_factory=list)  # (who, start, samples at RATE)
    turn_ends: list[int] = field(default_factory=list)
    replies: list[tuple[int, str]] = field(default_factory=list)  # (first heard, text)
    interruption: tuple[int, int, int] | None = None  # (talk-over starts, engine interrupts, agent silent)



def tracks(marks: Marks, heard: Heard | None, t0: int) -> tuple[Int16Array, Int16Array]:
    """(callers as spoken, agent as the first caller ``heard`` it), both at RATE from ``t0`` until now."""
    end = time.monotonic_ns()
    n = int((end - t0) * RATE // 1_000_000_000) + RATE
    left = np.zeros(n, np.int32)
    for _, start, samples in marks.said:
        at = max(0, int((start - t0) * RATE // 1_000_000_000))
        piece = samples[: max(0, n - at)]
        left[at:at + piece.size] += piece
    right = np.zeros(n, np.int16)
    if heard is not None and heard.frames:
        # Frames are contiguous audio: lay them end to end from the first one that arrived after t0.
        picked = [f for t, f in zip(heard.times_ns, heard.frames, strict=True) if t >= t0]
        first_t = next((t for t in heard.times_ns if t >= t0), t0)
        audio = np.concatenate(picked) if picked else np.zeros(0, np.int16)
        at = int((first_t - t0) * RATE // 1_000_000_000)
        audio = audio[: max(0, n - at)]
        right[at:at + audio.size] = audio
    return np.clip(left, -32768, 32767).astype(np.int16), right


def write_wav(path: Path, left: Int16Array, right: Int16Array, rate: int = RATE) -> None:
    stereo = np.stack([left, right], axis=1).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(stereo.tobytes())


def plot(path: Path, marks: Marks, t0: int, left: Int16Array, right: Int16Array, rate: int = RATE) -> None:
    """Both waveforms on one time axis from ``t0``, with turn ends, replies and the interruption marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def at(ns: int) -> float:
        return (ns - t0) / 1e9

    t = np.arange(left.size) / rate
    step = max(1, rate // 2000)  # draw 2000 points a second; the envelope is what matters
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(14, 5.5))
    top.plot(t[::step], left[::step] / 32768, lw=0.5, color="tab:blue")
    top.set_ylabel("callers")
    bottom.plot(t[::step], right[::step] / 32768, lw=0.5, color="tab:orange")
    bottom.set_ylabel("agent, as heard")
    for ax in (top, bottom):
        ax.set_ylim(-1, 1)
        for end in marks.turn_ends:
            ax.axvline(at(end), color="tab:green", ls="--", lw=1)
        if marks.interruption is not None:
            start, interrupted, silent = marks.interruption
            ax.axvline(at(interrupted), color="tab:red", lw=1.5)
            ax.axvspan(at(start), at(silent), color="tab:red", alpha=0.15)
    for who, start, _ in marks.said:
        top.annotate(who, (at(start), 0.85), fontsize=8, color="tab:blue")
    for k, (first, text) in enumerate(marks.replies):
        bottom.plot([at(first)], [0.9], marker="v", color="tab:purple")
        bottom.annotate(text[:34] + ("…" if len(text) > 34 else ""), (at(first), 0.74 - 0.16 * (k % 2)),
                        fontsize=7, color="tab:purple")
    handles = [plt.Line2D([], [], color="tab:green", ls="--", label="end of turn (engine's VAD)"),
               plt.Line2D([], [], color="tab:purple", marker="v", ls="", label="reply first heard"),
               plt.Line2D([], [], color="tab:red", label="interruption (engine)"),
               plt.Rectangle((0, 0), 1, 1, color="tab:red", alpha=0.15, label="talk-over until the agent is silent")]
    bottom.legend(handles=handles, loc="lower right", fontsize=8)
    bottom.set_xlabel("seconds since the first caller joined")
    fig.suptitle("make demo: a call through LiveKit, the bridge, the emulated Speech Engine and the example brain")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
