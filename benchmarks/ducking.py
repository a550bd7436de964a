"""``python -m benchmarks.ducking``: false ducks and onset→duck latency on a labelled set, offline.

What runs. The session's ducking core (:class:`core.ducker.Ducker`: per-caller onset detectors, the played-voice
reference, the gain envelope) is driven sans-I/O with literal times, exactly as the session drives it: the agent's
voice leaves a simulated pacer in 10 ms frames 30 ms ahead of playout (the lead), a caller's microphone frames
reach the bridge every 20 ms (``caller_frame_ms``), a duck re-sends the queued lead ducked. The microphone
signal is built as it goes from what the bridge *actually played* (so a ducked voice echoes 18 dB lower) plus
the labelled content. The "engine" interrupts talk-overs ``--engine-delay-ms`` after their onset and nothing
else. No network: the figures are the bridge's own decision, to be added to the media hops.

The labelled set (:mod:`benchmarks.ducking_set`; every speech sample synthesised by Debian's ``espeak-ng``;
the agent is ``en-us``, callers ``en-gb``/``en-us+f3``/``en-gb-x-rp`` at other pitches; one clip = one
opportunity: the agent talks for the whole clip):

- ``noise``: steady white, pink and 50 Hz hum (with harmonics), -60/-50/-40/-30 dBFS, from the first frame on.
- ``click``: 20/30/40/50 ms impulsive clicks (decaying broadband), rectangular noise bursts, and low thumps
  (decaying 30-60 Hz), at -30 to -6 dBFS peak, three per clip.
- ``backchannel``: "mm-hmm", "yeah", "okay", "uh-huh", "right", "I see" at -30/-24/-18 dBFS, once mid-reply.
- ``echo_-10dB``/``echo_-20dB``/``echo_-30dB``: the played voice back in the microphone with 50/100/150/200 ms
  delay, a 60 ms reverberant tail, and -65 dBFS noise.
- ``talkover``: caller sentences at -30/-24/-18 dBFS over the agent, with its echo at -30 dB and 120 ms.

Figures. Per class: clips, clips with at least one duck, ducks; for talk-overs the latency from the
speech's true onset (first 5 ms block within 20 dB of its loudest) to the duck decision, and to the voice
being 12 dB down in what the bridge sends (p50/p95/p99), and talk-overs whose duck was released before the
engine's interruption came ("flaps"). Every duck must end released or confirmed. The baseline in the same run
is a naive detector: the emulator's energy VAD (-45 dBFS, 30 ms) with no noise floor, voicing or echo test.
Cost: the ducker's CPU time per 20 ms caller frame, p50/p95/p99. Sweeps: one knob at a time around the
defaults, to show why they are what they are.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from benchmarks.common import RESULTS, Progress, machine, summarize, write_json
from benchmarks.ducking_set import CALLER_FRAME, F64, FRAME, RATE, Clip, agent_voice, build_set, reverb
from core.clock import MS, SECOND
from core.duck import DuckConfig
from core.ducker import Ducker, DuckerConfig
from core.onset import OnsetConfig
from core.resample import Resampler
from emulator.vad import EnergyVad

__all__ = ["build_set", "run_set", "simulate"]

LEAD = 3  # frames the simulated pacer keeps queued ahead of playout, as the session's


# ---------------------------------------------------------------------- the simulation
@dataclass
class Result:
    ducks: int
    confirmed: int
    released: int
    unresolved: bool  # a duck neither released nor confirmed by the end of the clip (+ hold)
    duck_times: list[float]
    onset_to_duck_ms: float | None
    onset_to_12db_ms: float | None
    flap: bool  # a talk-over's duck released before the engine's interruption
    cost_ns: list[int]
    naive_ducks: int
    naive_onset_ms: float | None


def simulate(clip: Clip, agent: F64, config: DuckerConfig, engine_delay_ms: float,
             rng: np.random.Generator, caller_rate: int = RATE) -> Result:
    n = int(clip.seconds * RATE)
    agent_i16 = np.clip(np.rint(agent[:n]), -32768, 32767).astype(np.int16)
    played = np.zeros(n + RATE, dtype=np.float64)  # what left the bridge, at its play time
    ducker = Ducker(config)
    # Callers read at the engine's rate: the room's SDK resamples each frame; a streaming resampler stands in.
    ducker.set_caller_rate(caller_rate)
    to_caller_rate = Resampler(RATE, caller_rate)
    naive = EnergyVad(RATE, threshold_dbfs=-45, frame_ms=5, min_speech_ms=30, hangover_ms=300)
    naive_times: list[float] = []
    mic = clip.mic
    sent = 0  # agent samples handed to the (simulated) AudioSource
    cursor = 0  # sample index where the next sent sample will play
    interrupt_at = None
    if clip.interrupt and clip.onset_s is not None:
        interrupt_at = int((clip.onset_s + engine_delay_ms / 1000) * RATE)
    interrupted = False
    duck_times: list[float] = []
    cost: list[int] = []
    was_ducked = False
    flap = False
    delay = RATE * clip.echo_delay_ms // 1000
    echo_gain = 10 ** (clip.echo_gain_db / 20) if clip.echo_gain_db is not None else 0.0
    prev_rev = np.zeros(0)
    for tick in range(0, n // FRAME):
        now_s = tick * FRAME  # sample clock
        now = now_s * SECOND // RATE
        if interrupt_at is not None and not interrupted and now_s >= interrupt_at:
            interrupted = True
            ducker.interruption(now)
            played[now_s:] = 0.0  # flush: nothing more of the reply is heard
            cursor = now_s
        # The pacer: keep LEAD frames queued ahead of playout.
        while not interrupted and cursor < now_s + LEAD * FRAME and sent + FRAME <= n:
            redo = ducker.rewind(now)
            if redo.size:
                k = redo.shape[0]
                played[now_s:now_s + k] = redo
                cursor = now_s + k
                continue
            out = ducker.voice_frame(agent_i16[sent:sent + FRAME], now)
            start = max(cursor, now_s)
            played[start:start + FRAME] = out
            cursor = start + FRAME
            sent += FRAME
        # A caller frame completes every 20 ms: its mic = content + echo of what was played.
        if (now_s + FRAME) % CALLER_FRAME == 0 and now_s >= CALLER_FRAME - FRAME:
            end = now_s + FRAME
            a = end - CALLER_FRAME
            x = mic[a:end].copy()
            if echo_gain and a - delay >= 0:
                src = played[a - delay:end - delay] * echo_gain
                # a 60 ms reverberant tail, carried across frames
                wet = np.convolve(src, _IR)
                if prev_rev.size:
                    wet[: prev_rev.shape[0]] += prev_rev
                x += wet[:CALLER_FRAME]
                prev_rev = wet[CALLER_FRAME:]
            frame = np.clip(np.rint(x), -32768, 32767).astype(np.int16)
            heard = to_caller_rate.push(frame)
            t0 = time.perf_counter_ns()
            started = ducker.caller_frame("caller", heard, end * SECOND // RATE)
            cost.append(time.perf_counter_ns() - t0)
            if started:
                duck_times.append(end / RATE)
            if any(e.kind == "start" for e in naive.push(frame)) and (
                    sent > 0 and not interrupted):
                naive_times.append(end / RATE)
        ducked = ducker.duck.ducked
        if was_ducked and not ducked and not interrupted and interrupt_at is not None and now_s < interrupt_at:
            flap = True
        was_ducked = ducked
    # Let the hold run out after the clip: a duck must end released or confirmed.
    end_ns = n * SECOND // RATE + (config.duck.hold_ms + 100) * MS
    ducker.duck.poll(end_ns)
    unresolved = ducker.duck.ducked
    o2d = o12 = naive_ms = None
    onset_s = clip.onset_s
    if onset_s is not None:
        onset_s = talkover_onset(agent[:n], onset_s)
    if onset_s is not None and duck_times:
        after = [t for t in duck_times if t >= onset_s - 0.05]
        if after:
            o2d = (after[0] - onset_s) * 1000
            o12 = o2d + _ramp_to_12db_ms(config.duck)
    if onset_s is not None and naive_times:
        after_n = [t for t in naive_times if t >= onset_s - 0.05]
        naive_ms = (after_n[0] - onset_s) * 1000 if after_n else None
    return Result(ducker.duck.started, ducker.duck.confirmed, ducker.duck.released, unresolved, duck_times,
                  o2d, o12, flap, cost, len(naive_times), naive_ms)


def talkover_onset(agent: F64, onset_s: float) -> float:
    """When the caller's speech first overlaps the agent's voice: the onset itself, or, if the caller started in
    a pause between the agent's sentences, the moment the voice resumes (there was nothing to duck before)."""
    b = 240
    first = int(onset_s * RATE) // b
    nb = agent.shape[0] // b
    p = (agent[: nb * b].reshape(nb, b) ** 2).mean(axis=1)
    audible = p > (32768.0 ** 2) * 1e-6  # -60 dBFS
    for k in range(first, nb):
        if audible[max(0, k - 12):k + 1].any():
            return k * b / RATE if k > first else onset_s
    return onset_s


def _ramp_to_12db_ms(duck: DuckConfig) -> float:
    """Into the raised-cosine ramp, where the gain passes -12 dB (the re-sent queue starts the ramp at once)."""
    floor, target = 10 ** (-duck.depth_db / 20), 10 ** (-12 / 20)
    if floor > target:
        return float("nan")
    shape = (1 - target) / (1 - floor)
    return float(np.arccos(1 - 2 * shape) / np.pi * duck.ramp_ms)


_IR = reverb(np.concatenate(([1.0], np.zeros(RATE * 60 // 1000 - 1))), 60, np.random.default_rng(1))


CLASSES = ("noise", "click", "backchannel", "echo_-10dB", "echo_-20dB", "echo_-30dB", "talkover")


def run_set(clips: list[Clip], config: DuckerConfig, engine_delay_ms: float, *, seed: int = 3,
            keep_clips: bool = False, caller_rate: int = RATE) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    agents: dict[float, F64] = {}
    per: dict[str, dict[str, Any]] = {c: {"clips": 0, "clips_ducked": 0, "ducks": 0, "confirmed": 0, "released": 0,
                                          "unresolved": 0, "flaps": 0, "naive_clips_ducked": 0}
                                      for c in CLASSES}
    onset_ms: list[float] = []
    felt_ms: list[float] = []
    naive_ms: list[float] = []
    cost: list[int] = []
    rows = []
    for i, clip in enumerate(clips):
        agent = agents.setdefault(clip.seconds, agent_voice(clip.seconds))
        # Each clip starts at a different place in the agent's text, so echoes and talk-overs meet different words.
        shift = (i * 7919) % int(RATE * 1.0)
        res = simulate(clip, np.roll(agent, -shift) if shift else agent, config, engine_delay_ms, rng,
                       caller_rate)
        p = per[clip.cls]
        p["clips"] += 1
        p["clips_ducked"] += res.ducks > 0
        p["ducks"] += res.ducks
        p["confirmed"] += res.confirmed
        p["released"] += res.released
        p["unresolved"] += res.unresolved
        p["flaps"] += res.flap
        p["naive_clips_ducked"] += res.naive_ducks > 0
        if clip.cls == "talkover":
            if res.onset_to_duck_ms is not None:
                onset_ms.append(res.onset_to_duck_ms)
            if res.onset_to_12db_ms is not None:
                felt_ms.append(res.onset_to_12db_ms)
            if res.naive_onset_ms is not None:
                naive_ms.append(res.naive_onset_ms)
        cost.extend(res.cost_ns)
        if keep_clips:
            rows.append({"class": clip.cls, "name": clip.name, "ducks": res.ducks, "confirmed": res.confirmed,
                         "released": res.released, "unresolved": res.unresolved, "flap": res.flap,
                         "duck_times_s": res.duck_times, "onset_to_duck_ms": res.onset_to_duck_ms,
                         "naive_ducks": res.naive_ducks})
    return {"classes": per, "onset_to_duck_ms": summarize(onset_ms), "onset_to_12db_ms": summarize(felt_ms),
            "naive_onset_to_duck_ms": summarize(naive_ms),
            "cost_us_per_20ms_frame": summarize([c / 1000 for c in cost]), "clips": rows,
            "raw": {"onset_to_duck_ms": onset_ms, "onset_to_12db_ms": felt_ms}}


def config_with(**onset: Any) -> DuckerConfig:
    duck_keys = {"depth_db", "hold_ms", "ramp_ms", "release_ms"}
    d = {k: v for k, v in onset.items() if k in duck_keys}
    o = {k: v for k, v in onset.items() if k not in duck_keys}
    return DuckerConfig(duck=replace(DuckConfig(), **d), onset=replace(OnsetConfig(), **o))


SWEEPS: dict[str, tuple[Any, ...]] = {
    "min_speech_ms": (20, 30, 40),
    "voicing": (0.0, 0.4, 0.5, 0.6),
    "echo_margin_db": (3.0, 6.0, 10.0),
    "snr_db": (6.0, 10.0, 14.0),
    "unvoiced_ms": (60, 120, 1000),
}


def table(result: dict[str, Any]) -> str:
    lines = ["| class | clips | clips ducked | ducks | confirmed | released | unresolved | naive VAD: clips ducked |",
             "|---|---|---|---|---|---|---|---|"]
    for cls, p in result["classes"].items():
        if p["clips"]:
            lines.append(f"| {cls} | {p['clips']} | {p['clips_ducked']} | {p['ducks']} | {p['confirmed']} | "
                         f"{p['released']} | {p['unresolved']} | {p['naive_clips_ducked']} |")
    return "\n".join(lines)


def plot(result: dict[str, Any], delays: dict[str, Any], path: Any, title: str) -> None:
    from benchmarks.plots import pyplot, save

    fig, axes = pyplot().subplots(1, 2, figsize=(13, 4.5))
    ax = axes[0]
    names = [c for c, p in result["classes"].items() if p["clips"]]
    ours = [result["classes"][c]["clips_ducked"] / result["classes"][c]["clips"] for c in names]
    base = [result["classes"][c]["naive_clips_ducked"] / result["classes"][c]["clips"] for c in names]
    xs = np.arange(len(names))
    ax.bar(xs - 0.2, ours, 0.4, label="onset detector", color="#1f77b4")
    ax.bar(xs + 0.2, base, 0.4, label="naive energy VAD", color="#d62728")
    ax.set_xticks(xs, names, rotation=20, fontsize=8)
    ax.set_ylabel("fraction of clips with a duck")
    ax.set_title("Ducks per class (talkover: wanted; all others: false)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    ax = axes[1]
    for label, res in delays.items():
        v = np.sort(res["raw"]["onset_to_duck_ms"])
        if v.size:
            ax.step(v, np.arange(1, v.size + 1) / v.size, where="post", label=f"engine delay {label} (n={v.size})")
    ax.set_xlabel("talk-over onset → duck decision, ms (add the ramp and the media hops for the felt figure)")
    ax.set_ylabel("fraction of talk-overs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    save(fig, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.ducking", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a smaller set and no sweeps (~20 s)")
    ap.add_argument("--no-sweep", action="store_true")
    args = ap.parse_args(argv)
    progress = Progress("ducking")
    t0 = time.monotonic()
    clips = build_set(args.quick)
    progress(f"{len(clips)} clips built")
    default = DuckerConfig()
    delays = {}
    for delay in (60, 300, 600):
        delays[f"{delay} ms"] = run_set(clips, default, delay, keep_clips=delay == 600)
        progress(f"engine delay {delay} ms done")
    main_result = delays["600 ms"]
    # The same set with callers read at the engine's rate (the session's default: the SDK resamples them).
    by_rate = {rate: run_set(clips, default, 600, caller_rate=rate) for rate in (8000, 16000, 24000)}
    progress("caller rates 8/16/24 kHz done")
    sweeps: dict[str, list[dict[str, Any]]] = {}
    if not (args.quick or args.no_sweep):
        for knob, values in SWEEPS.items():
            for value in values:
                r = run_set(clips, config_with(**{knob: value}), 600)
                sweeps.setdefault(knob, []).append({"value": value, "classes": r["classes"],
                                                    "onset_to_duck_ms": r["onset_to_duck_ms"]})
                progress(f"sweep {knob}={value}")
        for hold in (200, 350, 500, 800):
            r = run_set(clips, config_with(hold_ms=hold), 600)
            sweeps.setdefault("hold_ms", []).append({"value": hold, "classes": r["classes"],
                                                     "onset_to_duck_ms": r["onset_to_duck_ms"]})
            progress(f"sweep hold_ms={hold}")
    out_dir = RESULTS / "quick" if args.quick else RESULTS
    data = {"machine": machine(), "seconds": time.monotonic() - t0,
            "config": {"duck": vars_of(default.duck), "onset": vars_of(default.onset)},
            "assumes": "offline, sans-I/O: the bridge's decision only; 20 ms caller frames, 30 ms pacer lead; "
                       "add the media hops (caller → bridge, bridge → listener) for what a caller feels",
            "by_engine_delay": {k: {kk: vv for kk, vv in v.items() if kk != "raw"} for k, v in delays.items()},
            "raw": {k: v["raw"] for k, v in delays.items()}, "sweeps": sweeps,
            "by_caller_rate": {str(rate): {kk: vv for kk, vv in v.items() if kk not in ("raw", "clips")}
                               for rate, v in by_rate.items()}}
    write_json(out_dir / "ducking.json", data)
    plot(main_result, delays, out_dir / "ducking.png", "Local ducking on the labelled set (espeak-ng speech)")
    print(table(main_result))
    print()
    for k, v in delays.items():
        o, f, c = v["onset_to_duck_ms"], v["onset_to_12db_ms"], v["naive_onset_to_duck_ms"]
        flaps = v["classes"]["talkover"]["flaps"]
        print(f"engine delay {k}: onset→duck p50/p95/p99 {o['p50']:.0f}/{o['p95']:.0f}/{o['p99']:.0f} ms; "
              f"onset→12 dB down {f['p50']:.0f}/{f['p95']:.0f}/{f['p99']:.0f} ms; naive VAD onset→duck "
              f"{_fmt(c['p50'])}/{_fmt(c['p95'])} ms; talk-over ducks released before the interruption: {flaps}")
    c = main_result["cost_us_per_20ms_frame"]
    print(f"ducker CPU per 20 ms caller frame: p50/p95/p99 {c['p50']:.0f}/{c['p95']:.0f}/{c['p99']:.0f} µs")
    for rate, v in by_rate.items():
        cl, o, c = v["classes"], v["onset_to_duck_ms"], v["cost_us_per_20ms_frame"]
        bits = ", ".join(f"{name} {cl[name]['clips_ducked']}/{cl[name]['clips']}" for name in CLASSES
                         if cl[name]["clips"])
        print(f"callers at {rate // 1000} kHz (engine delay 600 ms): {bits}; onset→duck p50/p95 "
              f"{_fmt(o['p50'])}/{_fmt(o['p95'])} ms; CPU per 20 ms frame p50 {c['p50']:.0f} µs")
    for knob, rows in sweeps.items():
        print(f"\nsweep {knob}:")
        for row in rows:
            cl = row["classes"]
            o = row["onset_to_duck_ms"]
            bits = ", ".join(f"{name} {cl[name]['clips_ducked']}/{cl[name]['clips']}" for name in CLASSES
                             if cl[name]["clips"])
            extra = f", flaps {cl['talkover']['flaps']}" if knob == "hold_ms" else ""
            print(f"  {row['value']}: {bits}; onset→duck p50/p95 {_fmt(o['p50'])}/{_fmt(o['p95'])} ms{extra}")
    return 0


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def vars_of(obj: Any) -> dict[str, Any]:
    return {k: getattr(obj, k) for k in obj.__dataclass_fields__}


if __name__ == "__main__":
    sys.exit(main())
