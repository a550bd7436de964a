"""What every benchmark shares: the machine description, percentiles, progress lines, signals, JSON out.

Timestamps everywhere are ``time.monotonic_ns()`` (CLOCK_MONOTONIC), the clock of :class:`core.clock.MonotonicClock`,
of the emulator's records and of the caller processes: one timeline for every process on this machine.
"""

from __future__ import annotations

import asyncio
import datetime
import importlib.metadata
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Coroutine, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from core.formats import ROOM_RATE

__all__ = [
    "LOUD_BRIDGE",
    "LOUD_REMOTE",
    "RATE",
    "RESULTS",
    "ROOT",
    "Progress",
    "machine",
    "peak",
    "summarize",
    "voice",
    "write_json",
]

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
RATE = ROOM_RATE
# "Non-silent" at the bridge output: a peak above -60 dBFS. The bridge hands exact zeros or real audio.
LOUD_BRIDGE = 32
# "Non-silent" at a remote subscriber: a peak above about -36 dBFS. After Opus, the end of a voice leaves a
# decaying tail and DTX comfort noise well below this; the test voices peak near -10 dBFS.
LOUD_REMOTE = 500

Int16Array = npt.NDArray[np.int16]
T = TypeVar("T")


def voice(seconds: float, freq: float = 300.0, rate: int = RATE, level: float = 0.3) -> Int16Array:
    """The end-to-end tests' harmonic voice with a slow envelope. It starts loud within a fraction of a
    millisecond (sin(0) = 0, then a 300 Hz cycle), so its onset is a sharp edge to time."""
    t = np.arange(int(seconds * rate)) / rate
    wave = np.sin(2 * np.pi * freq * t) + 0.5 * np.sin(2 * np.pi * 2 * freq * t + 1.0)
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 3 * t)
    out: Int16Array = (wave / 1.5 * envelope * level * 32767).astype(np.int16)
    return out


def peak(samples: npt.NDArray[np.int16]) -> int:
    if samples.size == 0:
        return 0
    return max(int(samples.max()), -int(samples.min()))


def first_loud(samples: npt.NDArray[np.int16], threshold: int) -> int | None:
    """Index of the first sample whose magnitude exceeds ``threshold``."""
    idx = np.flatnonzero(np.abs(samples.astype(np.int32)) > threshold)
    return int(idx[0]) if idx.size else None


def summarize(values: Iterable[float]) -> dict[str, float | int | None]:
    """n, p50/p95/p99 (nearest rank, so every figure is a measured sample), min, max, mean."""
    arr = np.sort(np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64))
    n = int(arr.size)
    if n == 0:
        return {"n": 0, "p50": None, "p95": None, "p99": None, "min": None, "max": None, "mean": None}

    def rank(q: float) -> float:
        return float(arr[max(0, math.ceil(q / 100 * n) - 1)])

    return {"n": n, "p50": rank(50), "p95": rank(95), "p99": rank(99), "min": float(arr[0]),
            "max": float(arr[-1]), "mean": float(arr.mean())}


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """uvloop where it is installed, as ``runner.py`` runs the bridge; asyncio's loop elsewhere."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def ms(ns: float | None) -> float | None:
    return None if ns is None else ns / 1e6


class Progress:
    """One line per step on stderr, with the time since the benchmark started."""

    def __init__(self, name: str, *, quiet: bool = False) -> None:
        self.name, self.quiet = name, quiet
        self.t0 = time.monotonic()

    def __call__(self, message: str) -> None:
        if not self.quiet:
            print(f"[{time.monotonic() - self.t0:7.1f} s] {self.name}: {message}", file=sys.stderr, flush=True)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def livekit_server_version() -> str | None:
    from scripts.livekit_server import binary_path
    try:
        out = subprocess.run([str(binary_path()), "--version"], capture_output=True, text=True, timeout=10,
                             check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
                if line.startswith("model name")), platform.processor() or "unknown")
    mem_kb = next((int(line.split()[1]) for line in _read("/proc/meminfo").splitlines()
                   if line.startswith("MemTotal:")), 0)
    hypervisor = "hypervisor" in _read("/proc/cpuinfo")
    import soxr
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "virtualised": hypervisor,
        "mem_total_mb": mem_kb // 1024,
        "loadavg_at_start": list(os.getloadavg()),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "soxr": soxr.__version__,
        "libsoxr": getattr(soxr, "__libsoxr_version__", None),
        "livekit": _version("livekit"),
        "livekit_api": _version("livekit-api"),
        "websockets": _version("websockets"),
        "aiohttp": _version("aiohttp"),
        "uvloop": _version("uvloop"),
        "livekit_server": livekit_server_version(),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty_paths": len((_git("status", "--porcelain") or "").splitlines()),
    }


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data.setdefault("machine", {})["loadavg_at_end"] = list(os.getloadavg())
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=_default) + "\n")
    os.replace(tmp, path)


def _default(obj: object) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def ratio(baseline: float | None, ours: float | None) -> float | None:
    if baseline is None or ours is None or ours <= 0:
        return None
    return baseline / ours


def versus(trials: Iterable[Mapping[str, Any]], metric: str) -> dict[str, Any]:
    """One metric over the same trials: percentiles for our bridge and for the baseline, and baseline/ours."""
    trials = list(trials)
    ours = summarize(t[metric] for t in trials if t["bridge"] == "ours")
    base = summarize(t[metric] for t in trials if t["bridge"] == "baseline")
    return {"ours": ours, "baseline": base, "ratio": {q: ratio(base[q], ours[q]) for q in ("p50", "p95", "p99")}}


def per_bridge_total(trials: Iterable[Mapping[str, Any]], key: str) -> dict[str, int]:
    """``key`` summed over the trials of each bridge."""
    trials = list(trials)
    return {b: sum(t[key] for t in trials if t["bridge"] == b) for b in ("ours", "baseline")}
