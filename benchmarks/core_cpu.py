"""CPU cost of the core audio chains, per second of audio, per session.

    python -m benchmarks.core_cpu [--seconds 20] [--repeats 5]

Uplink:   callers' 48 kHz 10 ms frames → Mixer (tick 10 or 20 ms) → Resampler to the engine rate → encode
          (pcm16 or μ-law) in 100 ms chunks.
Downlink: engine chunks (100 ms) → decode → Resampler to 48 kHz → PlayoutBuffer.push → Pacer + pop_frame,
          10 ms at a time.

Each case runs ``--seconds`` of audio ``--repeats`` times; the figure is the best repeat's CPU time
(``time.process_time``) divided by the seconds of audio, with wall time (``perf_counter``) beside it. The best
repeat, because what we want is the code's cost, not the noise of a shared machine. A per-stage breakdown
comes from separate runs timed stage by stage with ``perf_counter_ns`` (best of the repeats per stage; it
includes ~0.1 µs of timer overhead per stage call). The resampler latency table behind ``core.resample``'s
quality choice is measured here too (soxr alone), and the uplink FIR decimators' latency beside it. Results
go to ``benchmarks/results/core_cpu.json`` with a description of the machine.

Nothing here is a test: the figures depend on the machine. The target is uplink + downlink under 2 ms of CPU
per second of audio per session.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import soxr

from core.clock import MS
from core.ducker import Ducker
from core.formats import AudioFormat, caller_rate_for, parse_format
from core.mixer import Mixer
from core.pacer import Pacer
from core.playout import PlayoutBuffer
from core.resample import Resampler
from core.uplink import Uplink

Int16Array = npt.NDArray[np.int16]
RESULTS = Path(__file__).resolve().parent / "results" / "core_cpu.json"
FRAME = 480  # 10 ms at 48 kHz
TARGET_MS = 2.0


def speechlike(rate: int, seconds: float, seed: int) -> Int16Array:
    """Harmonics of a wandering pitch plus noise, around -20 dBFS: busy enough that nothing is trivially zero."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    f0 = 140 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voiced = np.sum([np.sin(k * phase) / k for k in range(1, 12)], axis=0)
    signal = 2500 * voiced + 300 * rng.standard_normal(t.shape[0])
    samples: Int16Array = np.clip(np.round(signal), -32768, 32767).astype(np.int16)
    return samples


# ---------------------------------------------------------------------------------------------- uplink


class UplinkChain:
    def __init__(self, callers: int, fmt: AudioFormat, tick_ms: int, chunk_ms: int, seconds: int) -> None:
        self.ids = [f"caller-{i}" for i in range(callers)]
        self.mixer = Mixer()
        for caller in self.ids:
            self.mixer.join(caller)
        self.resampler = Resampler(48000, fmt.rate)
        self.fmt = fmt
        self.tick = 48 * tick_ms
        self.frames_per_tick = tick_ms // 10
        self.chunk_out = fmt.rate * chunk_ms // 1000
        self.frames = [speechlike(48000, seconds, seed=i).reshape(-1, FRAME) for i in range(callers)]
        self.bytes_out = 0

    def run(self, stages: dict[str, int] | None = None) -> None:
        mixer, resampler, fmt, ids = self.mixer, self.resampler, self.fmt, self.ids
        pending: list[Int16Array] = []
        pending_n = 0
        clock = time.perf_counter_ns
        n_frames = self.frames[0].shape[0]
        for i in range(n_frames):
            t0 = clock() if stages is not None else 0
            for caller, frames in zip(ids, self.frames, strict=True):
                mixer.write(caller, frames[i])
            if (i + 1) % self.frames_per_tick:
                if stages is not None:
                    stages["write"] += clock() - t0
                continue
            t1 = clock() if stages is not None else 0
            mixed = mixer.mix(self.tick)
            t2 = clock() if stages is not None else 0
            out = resampler.push(mixed)
            t3 = clock() if stages is not None else 0
            pending.append(out)
            pending_n += out.shape[0]
            if pending_n >= self.chunk_out:
                chunk = np.concatenate(pending)
                payload = fmt.encode(chunk[: self.chunk_out])
                self.bytes_out += len(payload)
                rest = chunk[self.chunk_out :]
                pending, pending_n = [rest], rest.shape[0]
            if stages is not None:
                t4 = clock()
                stages["write"] += t1 - t0
                stages["mix"] += t2 - t1
                stages["resample"] += t3 - t2
                stages["encode"] += t4 - t3


# -------------------------------------------------------------------------------------------- downlink


class DownlinkChain:
    def __init__(self, fmt: AudioFormat, chunk_ms: int, seconds: int) -> None:
        self.fmt = fmt
        source = speechlike(fmt.rate, seconds, seed=99)
        per_chunk = fmt.rate * chunk_ms // 1000
        self.chunks = [fmt.encode(source[i : i + per_chunk]) for i in range(0, source.shape[0], per_chunk)]
        self.resampler = Resampler(fmt.rate, 48000)
        self.playout = PlayoutBuffer()
        self.pacer = Pacer()
        self.frames_per_chunk = chunk_ms // 10
        self.now = 0
        self.frames_out = 0

    def run(self, stages: dict[str, int] | None = None) -> None:
        fmt, resampler, playout, pacer = self.fmt, self.resampler, self.playout, self.pacer
        clock = time.perf_counter_ns
        for payload in self.chunks:
            t0 = clock() if stages is not None else 0
            pcm = fmt.decode(payload)
            t1 = clock() if stages is not None else 0
            out = resampler.push(pcm)
            t2 = clock() if stages is not None else 0
            playout.push(out)
            t3 = clock() if stages is not None else 0
            # The pacer's side: one wakeup per 10 ms, taking whatever frames are due.
            for _ in range(self.frames_per_chunk):
                self.now += 10 * MS
                due = pacer.frames_due(self.now)
                sent = 0
                for _ in range(due):
                    if playout.pop_frame().size == 0:
                        break
                    sent += 1
                pacer.on_frames_sent(sent, self.now)
                pacer.next_wakeup_ns(self.now)
                self.frames_out += sent
            if stages is not None:
                t4 = clock()
                stages["decode"] += t1 - t0
                stages["resample"] += t2 - t1
                stages["playout_push"] += t3 - t2
                stages["pace_pop"] += t4 - t3


# ------------------------------------------------------------------------------------------ measuring


def best_of(make: Callable[[], Any], seconds: int, repeats: int) -> tuple[float, float]:
    """(CPU ms, wall ms) per second of audio, best of ``repeats`` fresh runs."""
    cpu, wall = [], []
    for _ in range(repeats):
        chain = make()
        c0, w0 = time.process_time(), time.perf_counter()
        chain.run()
        cpu.append((time.process_time() - c0) * 1000 / seconds)
        wall.append((time.perf_counter() - w0) * 1000 / seconds)
    return min(cpu), min(wall)


def stage_breakdown(make: Callable[[], Any], names: list[str], seconds: int, repeats: int) -> dict[str, float]:
    """ms per second of audio per stage, each stage's best of ``repeats`` runs (so the sum can undercut)."""
    best = dict.fromkeys(names, float("inf"))
    for _ in range(repeats):
        stages = dict.fromkeys(names, 0)
        make().run(stages)
        for name, ns in stages.items():
            best[name] = min(best[name], ns / 1e6 / seconds)
    return best


def resampler_latency(seconds: float = 3.0) -> dict[str, dict[str, dict[str, float]]]:
    """Mean and max ms of audio held inside soxr while streaming 10 ms chunks, per quality and rate pair."""
    pairs = [(48000, 16000), (48000, 8000), (16000, 48000), (24000, 48000), (44100, 48000), (8000, 48000)]
    table: dict[str, dict[str, dict[str, float]]] = {}
    for quality in ("LQ", "MQ", "HQ", "VHQ"):
        row: dict[str, dict[str, float]] = {}
        for in_rate, out_rate in pairs:
            stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype="int16", quality=quality)
            x = speechlike(in_rate, seconds, seed=1)
            step = in_rate // 100
            got, held = 0, []
            for i in range(0, x.shape[0], step):
                got += stream.resample_chunk(x[i : i + step]).shape[0]
                held.append(((i + step) * out_rate / in_rate - got) * 1000 / out_rate)
            steady = np.array(held[len(held) // 3 :])  # skip the start-up third
            row[f"{in_rate}->{out_rate}"] = {"mean_ms": round(float(steady.mean()), 2),
                                             "max_ms": round(float(steady.max()), 2)}
        table[quality] = row
    return table


def fir_latency(seconds: float = 3.0) -> dict[str, dict[str, float]]:
    """The same measure for the uplink FIRs (``Resampler`` picks ``core.fir`` for every 48 kHz → engine pair)."""
    row: dict[str, dict[str, float]] = {}
    for out_rate in (44100, 24000, 22050, 16000, 8000):
        r = Resampler(48000, out_rate)
        x = speechlike(48000, seconds, seed=1)
        held = []
        for i in range(0, x.shape[0], 480):
            r.push(x[i : i + 480])
            held.append(r.delay_ms)
        steady = np.array(held[len(held) // 3 :])
        row[f"48000->{out_rate}"] = {"mean_ms": round(float(steady.mean()), 2), "max_ms": round(float(steady.max()), 2)}
    return row


class UplinkClass:
    """The real ``core.uplink.Uplink`` as the session drives it: write a 10 ms frame, cut while ready. Callers
    come at ``in_rate``: the engine's rate as the session reads them (the SDK resampled them), or 48 kHz."""

    def __init__(self, fmt: AudioFormat, chunk_ms: int, seconds: int, in_rate: int) -> None:
        self.uplink = Uplink(fmt, in_rate=in_rate, chunk_ms=chunk_ms)
        self.uplink.join("a")
        self.frames = speechlike(in_rate, seconds, seed=3).reshape(-1, in_rate // 100)

    def run(self, stages: dict[str, int] | None = None) -> None:
        up = self.uplink
        for i, frame in enumerate(self.frames):
            now = i * 10 * MS
            up.write("a", frame, now)
            while up.ready(now):
                up.next_chunk(now)


def uplink_hold(seconds: int) -> dict[str, dict[str, float]]:
    """Per format, the bridge-only hold without the network: a 10 ms frame written → its chunk returned (wall,
    ``perf_counter_ns``) plus what the FIR still holds (``Uplink.last_held_ns``); p50/p95/p99 in ms. Callers at
    the rate the session reads them for that format (``caller_rate_for``)."""
    out: dict[str, dict[str, float]] = {}
    for name in ("pcm_8000", "ulaw_8000", "pcm_16000", "pcm_22050", "pcm_24000", "pcm_44100", "pcm_48000"):
        fmt = parse_format(name)
        rate = caller_rate_for(fmt)
        frames = speechlike(rate, seconds, seed=5).reshape(-1, rate // 100)
        up = Uplink(fmt, in_rate=rate)
        up.join("a")
        holds = []
        for i, frame in enumerate(frames):
            now = i * 10 * MS
            t0 = time.perf_counter_ns()
            up.write("a", frame, now)
            while up.ready(now):
                up.next_chunk(now)
            holds.append(time.perf_counter_ns() - t0 + up.last_held_ns)
        p50, p95, p99 = np.percentile(np.asarray(holds[10:]) / 1e6, [50, 95, 99])
        out[name] = {"p50": round(float(p50), 3), "p95": round(float(p95), 3), "p99": round(float(p99), 3)}
    return out


def uplink_class_cpu(seconds: int, repeats: int) -> dict[str, dict[str, float]]:
    """CPU ms per second of audio of the whole ``Uplink`` (mix, FIR if any, encode, bookkeeping), one caller:
    read at the engine's rate (the session's default) at 10 and 20 ms chunks, and read at 48 kHz (the FIR)."""
    out: dict[str, dict[str, float]] = {}
    for name in ("pcm_8000", "ulaw_8000", "pcm_16000", "pcm_22050", "pcm_24000", "pcm_44100", "pcm_48000"):
        row, fmt = {}, parse_format(name)
        engine_rate = caller_rate_for(fmt)
        for label, chunk_ms, rate in (("chunk_10ms", 10, engine_rate), ("chunk_20ms", 20, engine_rate),
                                      ("chunk_10ms_read_48k", 10, 48000)):
            def make(fmt: AudioFormat = fmt, chunk_ms: int = chunk_ms, rate: int = rate) -> UplinkClass:
                return UplinkClass(fmt, chunk_ms, seconds, rate)
            cpu, _ = best_of(make, seconds, repeats)
            row[label] = round(cpu, 3)
        out[name] = row
    return out


class DuckerClass:
    """The session's ``core.ducker.Ducker`` while the agent speaks: one caller's 10 ms frames at ``caller_rate``
    (quiet noise at -60 dBFS, as the scaling benchmark's callers, or speech talking over the agent) and the
    voice's 20 ms frames at 48 kHz, as the session hands them over."""

    def __init__(self, caller_rate: int, seconds: int, *, talking: bool) -> None:
        self.ducker = Ducker()
        self.ducker.set_caller_rate(caller_rate)
        if talking:
            caller = speechlike(caller_rate, seconds, seed=5)
        else:
            noise = np.random.default_rng(5).standard_normal(caller_rate * seconds) * 32768 * 10 ** (-60 / 20)
            caller = noise.astype(np.int16)
        self.caller = caller.reshape(-1, caller_rate // 100)
        self.voice = speechlike(48_000, seconds, seed=6).reshape(-1, 960)

    def run(self, stages: dict[str, int] | None = None) -> None:
        ducker, voice = self.ducker, self.voice
        for i, frame in enumerate(self.caller):
            now = i * 10 * MS
            ducker.caller_frame("a", frame, now)
            if i % 2 == 0:
                ducker.voice_frame(voice[i // 2], now)
                ducker.rewind(now)


def ducker_cpu(seconds: int, repeats: int) -> dict[str, float]:
    """CPU ms per second of audio of the ducker (callers at 8/16/24 kHz; quiet, and talking over the agent)."""
    out: dict[str, float] = {}
    for rate in (8000, 16000, 24000):
        for talking in (False, True):
            def make(rate: int = rate, talking: bool = talking) -> DuckerClass:
                return DuckerClass(rate, seconds, talking=talking)
            cpu, _ = best_of(make, seconds, repeats)
            out[f"{rate // 1000}k_{'talking' if talking else 'quiet'}"] = round(cpu, 3)
    return out


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu_model": model,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "soxr": soxr.__version__,
        "libsoxr": soxr.__libsoxr_version__,
        # numpy's BLAS threads only matter for large matrix work; nothing here is large, noted for the record.
        "blas_env": {k: v for k, v in os.environ.items() if k.startswith(("OPENBLAS", "OMP_", "MKL_"))},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=20, help="seconds of audio per run (default 20)")
    parser.add_argument("--repeats", type=int, default=5, help="runs per case; the best counts (default 5)")
    args = parser.parse_args()
    seconds, repeats = args.seconds, args.repeats

    uplink_cases = [(c, f, t) for c in (1, 3) for f in ("pcm_16000", "ulaw_8000") for t in (10, 20)]
    downlink_cases = ["pcm_16000", "pcm_24000", "pcm_44100", "ulaw_8000", "pcm_48000"]
    up_stages = ["write", "mix", "resample", "encode"]
    down_stages = ["decode", "resample", "playout_push", "pace_pop"]

    results: dict[str, Any] = {"machine": machine(), "seconds": seconds, "repeats": repeats,
                               "target_ms_per_s": TARGET_MS, "uplink": [], "downlink": [], "sessions": []}
    print(f"{'chain':9} {'case':34} {'cpu ms/s':>9} {'wall ms/s':>10}   per-stage ms/s")
    uplink: dict[tuple[int, str, int], float] = {}
    for callers, name, tick in uplink_cases:
        fmt = parse_format(name)

        def make(callers: int = callers, fmt: AudioFormat = fmt, tick: int = tick) -> UplinkChain:
            return UplinkChain(callers, fmt, tick_ms=tick, chunk_ms=100, seconds=seconds)

        cpu, wall = best_of(make, seconds, repeats)
        stages = stage_breakdown(make, up_stages, seconds, repeats)
        uplink[callers, name, tick] = cpu
        case = f"{callers} caller{'s' if callers > 1 else ' '} {name} tick {tick} ms"
        detail = "  ".join(f"{k} {v:.3f}" for k, v in stages.items())
        print(f"{'uplink':9} {case:34} {cpu:9.3f} {wall:10.3f}   {detail}")
        results["uplink"].append({"callers": callers, "format": name, "tick_ms": tick, "chunk_ms": 100,
                                  "cpu_ms_per_s": round(cpu, 4), "wall_ms_per_s": round(wall, 4),
                                  "stages_ms_per_s": {k: round(v, 4) for k, v in stages.items()}})
    downlink: dict[str, float] = {}
    for name in downlink_cases:
        fmt = parse_format(name)

        def make_down(fmt: AudioFormat = fmt) -> DownlinkChain:
            return DownlinkChain(fmt, chunk_ms=100, seconds=seconds)

        cpu, wall = best_of(make_down, seconds, repeats)
        stages = stage_breakdown(make_down, down_stages, seconds, repeats)
        downlink[name] = cpu
        detail = "  ".join(f"{k} {v:.3f}" for k, v in stages.items())
        print(f"{'downlink':9} {name + ' → 48000':34} {cpu:9.3f} {wall:10.3f}   {detail}")
        results["downlink"].append({"format": name, "chunk_ms": 100, "cpu_ms_per_s": round(cpu, 4),
                                    "wall_ms_per_s": round(wall, 4),
                                    "stages_ms_per_s": {k: round(v, 4) for k, v in stages.items()}})

    print(f"\nsession = uplink + downlink (target < {TARGET_MS} ms CPU per second of audio)")
    sessions = [
        ("typical: 1 caller, pcm_16000 both ways, tick 10", (1, "pcm_16000", 10), "pcm_16000"),
        ("typical: 1 caller, pcm_16000 both ways, tick 20", (1, "pcm_16000", 20), "pcm_16000"),
        ("telephony: 1 caller, ulaw_8000 both ways, tick 10", (1, "ulaw_8000", 10), "ulaw_8000"),
        ("3 callers, pcm_16000 in, pcm_24000 out, tick 10", (3, "pcm_16000", 10), "pcm_24000"),
        ("3 callers, pcm_16000 in, pcm_24000 out, tick 20", (3, "pcm_16000", 20), "pcm_24000"),
        ("worst: 3 callers, ulaw_8000 in, pcm_44100 out, tick 10", (3, "ulaw_8000", 10), "pcm_44100"),
    ]
    for label, up_key, down_key in sessions:
        total = uplink[up_key] + downlink[down_key]
        verdict = "ok" if total < TARGET_MS else "OVER"
        print(f"  {label:56} {total:6.3f} ms/s  {verdict}")
        results["sessions"].append({"label": label, "cpu_ms_per_s": round(total, 4),
                                    "under_target": total < TARGET_MS})

    print("\nresampler latency, 10 ms chunks (mean / max ms held inside soxr)")
    latency = resampler_latency()
    results["resampler_latency_ms"] = latency
    pairs = list(next(iter(latency.values())))
    print(f"  {'':4}" + "".join(f"{p:>16}" for p in pairs))
    for quality, row in latency.items():
        print(f"  {quality:4}" + "".join(f"{row[p]['mean_ms']:7.1f} / {row[p]['max_ms']:5.1f}" for p in pairs))

    whole = uplink_class_cpu(seconds, repeats)
    results["uplink_class_cpu_ms_per_s"] = whole
    print("\ncore.uplink.Uplink, 1 caller, CPU ms per second of audio: callers at the engine's rate, 10 ms chunks / "
          "20 ms chunks; read at 48 kHz, 10 ms chunks")
    for name, row in whole.items():
        print(f"  {name:10} {row['chunk_10ms']:6.3f} / {row['chunk_20ms']:6.3f}; {row['chunk_10ms_read_48k']:6.3f}")

    ducking = ducker_cpu(seconds, repeats)
    results["ducker_cpu_ms_per_s"] = ducking
    print("\ncore.ducker.Ducker while the agent speaks (20 ms voice frames), 1 caller in 10 ms frames, CPU ms per "
          "second of audio: caller quiet (-60 dBFS) / talking over the agent")
    for rate in (8, 16, 24):
        print(f"  {rate:2} kHz     {ducking[f'{rate}k_quiet']:6.3f} / {ducking[f'{rate}k_talking']:6.3f}")

    hold = uplink_hold(seconds)
    results["uplink_hold_ms"] = hold
    print("\nuplink hold without the network, 1 caller, 10 ms chunks: frame written → chunk out + FIR (p50/p95/p99 ms)")
    for name, row in hold.items():
        print(f"  {name:10} {row['p50']:.3f} / {row['p95']:.3f} / {row['p99']:.3f}")

    fir = fir_latency()
    results["fir_latency_ms"] = fir
    print("\nuplink FIR latency, 10 ms chunks (mean / max ms held)")
    print("  " + "".join(f"{p:>16}" for p in fir))
    print("  " + "".join(f"{v['mean_ms']:7.2f} / {v['max_ms']:5.2f}" for v in fir.values()))

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {RESULTS.relative_to(Path.cwd()) if RESULTS.is_relative_to(Path.cwd()) else RESULTS}")


if __name__ == "__main__":
    main()
