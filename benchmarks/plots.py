"""PNG plots of the benchmark results (matplotlib, the ``bench`` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import summarize

__all__ = ["plot_all"]

OURS, BASE = "#1f77b4", "#d62728"
NAIVE = "#2ca02c"  # the naive bridge, where it is a third line beside ours and the null floor
CONV = "#ff7f0e"  # the null floor with an engine conversation


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _style(ax: Any, title: str, xlabel: str, ylabel: str, *, legend_loc: str = "best") -> None:
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc=legend_loc)


def save(fig: Any, path: Path) -> None:
    """Tight layout, a 110 dpi PNG at ``path``, and the figure closed (pyplot keeps open figures alive)."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)


def _cdf(ax: Any, values: list[float], label: str, color: str, style: str = "-") -> None:
    v = np.sort(np.asarray([x for x in values if x is not None], dtype=float))
    if v.size:
        ax.step(v, np.arange(1, v.size + 1) / v.size, where="post", label=f"{label} (n={v.size})", color=color,
                linestyle=style)


def plot_latency(latency: dict[str, Any], path: Path, machine: str) -> None:
    plt = pyplot()
    trials = latency["trials"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for ax, metric, title in zip(axes, ("uplink_ms", "downlink_ms", "round_trip_ms"),
                                 ("Uplink: caller track → engine", "Downlink: engine → caller hears",
                                  "Round trip (echo, no VAD, no think time)"), strict=True):
        for bridge, color, style in (("ours", OURS, "-"), ("baseline", BASE, "--")):
            _cdf(ax, [t[metric] for t in trials if t["bridge"] == bridge], bridge, color, style)
        _style(ax, title, "ms", "fraction of trials", legend_loc="lower right")
    fig.suptitle(f"Latency CDFs, through livekit-server and the emulator — {machine}", fontsize=10)
    save(fig, path)


def plot_interrupt(interrupt: dict[str, Any], path: Path, machine: str) -> None:
    plt = pyplot()
    trials = interrupt["trials"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    for ax, metric, title in zip(axes, ("bridge_ms", "remote_ms"),
                                 ("At the bridge output (engine send → AudioSource silent)",
                                  "At a remote subscriber (engine send → caller's audio stays silent)"), strict=True):
        values = [t[metric] for t in trials if t[metric] is not None]
        lo = max(0.01, min(values) * 0.7) if values else 0.01
        hi = max(values) * 1.4 if values else 10
        bins = np.logspace(np.log10(lo), np.log10(hi), 60)
        for bridge, color in (("ours", OURS), ("baseline", BASE)):
            v = [max(t[metric], lo) for t in trials if t["bridge"] == bridge and t[metric] is not None]
            if v:
                stats = summarize(v)
                ax.hist(v, bins=bins, alpha=0.75, color=color, label=f"{bridge}: p50 {stats['p50']:.3g} ms, "
                        f"p99 {stats['p99']:.3g} ms (n={len(v)}, hook and speech trials)")
        ax.set_xscale("log")
        _style(ax, title, "ms (log scale)", "trials")
    fig.suptitle(f"Interruption to silence, ours vs the naive bridge, same emulator — {machine}", fontsize=10)
    save(fig, path)


def plot_scaling(scaling: dict[str, Any], path: Path, machine: str) -> None:
    plt = pyplot()
    steps = [s for s in scaling["steps"] if s.get("sessions")]
    if not steps:
        return
    n = [s["n"] for s in steps]
    broken = [s["broken"] for s in steps]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))

    def mark(ax: Any, ys: list[float | None]) -> None:
        for x, y, b in zip(n, ys, broken, strict=True):
            if b and y is not None:
                ax.annotate("broken", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8, color=BASE)

    ax = axes[0][0]
    cpu = [s.get("cpu_cores") for s in steps]
    ax.plot(n, cpu, "o-", color=OURS, label="bridge process (all threads)")
    main = [s.get("thread_cores", {}).get("main") for s in steps]
    ax.plot(n, main, "s--", color="#2ca02c", label="  of which the Python loop thread")
    ax.plot(n, [s.get("machine_busy", 0) * s.get("machine_cores", 1) for s in steps], "^:", color="gray",
            label="whole machine (callers, server, emulator, others)")
    ax.axhline(steps[0].get("machine_cores", 2), color="k", linewidth=0.8)
    ax.set_ylabel("cores")
    ax.set_title("CPU", fontsize=10)
    mark(ax, cpu)
    ax.legend(fontsize=8)

    ax = axes[0][1]
    rss = [s.get("rss_per_session_mb") for s in steps]
    ax.plot(n, rss, "o-", color=OURS, label="(RSS − RSS before sessions) / N")
    slope = scaling.get("rss_per_extra_session_mb")
    if slope is not None:
        ax.axhline(slope, color=OURS, linestyle=":", linewidth=1, label=f"per extra session (fit): {slope:.2f} MB")
    ax.axhline(2.0, color=BASE, linestyle="--", linewidth=0.8, label="target: 2 MB per extra session")
    ax.set_ylabel("MB per session")
    ax.set_title("Memory", fontsize=10)
    ax.legend(fontsize=8)

    ax = axes[1][0]
    for key, style, label in (("p50", "o-", "p50"), ("p99", "s--", "p99")):
        ax.plot(n, [s.get("loop_lag_ms", {}).get(key) for s in steps], style, label=f"event-loop lag {label}")
    ax.set_ylabel("ms")
    ax.set_yscale("symlog", linthresh=1)
    ax.set_title("Event-loop lag (20 ms sleep overshoot) and underruns", fontsize=10)
    ax2 = ax.twinx()
    ax2.bar(n, [s.get("pacer_lag_ms", 0) / 1000 + s.get("underrun_ms", 0) / 1000 for s in steps],
            width=[max(0.5, x * 0.15) for x in n], alpha=0.25, color=BASE, label="audio gaps heard (s, all sessions)")
    ax2.set_ylabel("seconds of gaps in the window")
    ax2.set_ylim(bottom=0)
    ax.legend(fontsize=8, loc="upper left")
    ax2.legend(fontsize=8, loc="upper right")

    ax = axes[1][1]
    p99 = [s.get("interruption_bridge_ms", {}).get("p99") for s in steps]
    ax.plot(n, p99, "o-", color=OURS, label="p99")
    ax.plot(n, [s.get("interruption_bridge_ms", {}).get("p50") for s in steps], "s--", color=OURS, alpha=0.6,
            label="p50")
    ax.axhline(10, color=BASE, linestyle="--", linewidth=0.8, label="target p99 10 ms")
    ax.set_yscale("log")
    ax.set_ylabel("ms")
    ax.set_title("Interruption → silence at the bridge output, under load", fontsize=10)
    mark(ax, p99)
    ax.legend(fontsize=8)

    for s in scaling["steps"]:
        if s["broken"] and not s.get("sessions"):
            for row in axes:
                for a in row:
                    a.axvline(s["n"], color=BASE, linestyle=":", linewidth=1)
            axes[0][0].annotate(f"N={s['n']}: broken", (s["n"], 0.1), fontsize=8, color=BASE)
    for row in axes:
        for a in row:
            a.set_xscale("log")
            ticks = sorted({s["n"] for s in scaling["steps"]})
            a.set_xticks(ticks)
            a.set_xticklabels([str(x) for x in ticks])
            a.set_xlabel("sessions in one process (N)")
            a.grid(alpha=0.3)
    fig.suptitle(f"Scaling: N bridge sessions in one process, callers and emulator in others — {machine}", fontsize=10)
    save(fig, path)


def plot_floor(scaling: dict[str, Any], path: Path, machine: str) -> None:
    """Ours beside the null-bridge floor at each N, and the voice capture-frame study."""
    plt = pyplot()
    steps = [s for s in scaling["steps"] if s.get("sessions") and s.get("floor")]
    if not steps:
        return
    n = [s["n"] for s in steps]
    floor = [s["floor"] for s in steps]
    naive = [s.get("naive") or {} for s in steps]
    has_naive = any(naive)
    conv = [s.get("conversation_floor") or {} for s in steps]
    has_conv = any(conv)
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    ax = axes[0][0]
    ax.plot(n, [s.get("cpu_cores") for s in steps], "o-", color=OURS, label="ours (bridge process)")
    ax.plot(n, [f.get("cpu_cores") for f in floor], "s--", color=BASE, label="null bridge (SDK + WebRTC only)")
    if has_conv:
        ax.plot(n, [f.get("cpu_cores") for f in conv], "P--", color=CONV, label="null bridge + engine conversation")
    if has_naive:
        ax.plot(n, [f.get("cpu_cores") for f in naive], "v-.", color=NAIVE, label="naive bridge (same conversation)")
    ax.plot(n, [s.get("machine_busy", 0) * s.get("machine_cores", 1) for s in steps], "^:", color="gray",
            label="whole machine during ours (every process, other jobs too)")
    ax.axhline(steps[0].get("machine_cores", 2), color="k", linewidth=0.8)
    ax.set_ylabel("cores")
    ax.set_title("CPU of the process holding N rooms", fontsize=10)
    ax.legend(fontsize=8)
    ax = axes[0][1]
    ax.plot(n, [s.get("cpu_ms_per_session_second") for s in steps], "o-", color=OURS, label="ours")
    ax.plot(n, [f.get("cpu_ms_per_session_second") for f in floor], "s--", color=BASE, label="null bridge")
    if has_conv:
        ax.plot(n, [f.get("cpu_ms_per_session_second") for f in conv], "P--", color=CONV, label="null + conversation")
    if has_naive:
        ax.plot(n, [f.get("cpu_ms_per_session_second") for f in naive], "v-.", color=NAIVE, label="naive bridge")
    ax2 = ax.twinx()
    ax2.plot(n, [f.get("cpu_ratio") for f in floor], "d:", color="#9467bd", label="ours / null (CPU)")
    if has_conv:
        ax2.plot(n, [f.get("cpu_ratio") for f in conv], "x:", color=CONV, label="ours / null + conversation")
    ax2.axhline(1.15, color="#9467bd", linewidth=0.8, linestyle=":")
    ax2.set_ylabel("ratio")
    ax.set_ylabel("ms CPU per session-second")
    ax.set_title("CPU per session (flat = linear in N)", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    ax2.legend(fontsize=8, loc="upper right")
    ax = axes[1][0]
    for key, style in (("p50", "-"), ("p99", "--")):
        ax.plot(n, [s.get("loop_lag_ms", {}).get(key) for s in steps], "o" + style, color=OURS, label=f"ours {key}")
        ax.plot(n, [f.get("loop_lag_ms", {}).get(key) for f in floor], "s" + style, color=BASE,
                label=f"null {key}")
    ax.set_yscale("symlog", linthresh=1)
    ax.set_ylabel("ms")
    ax.set_title("Event-loop lag (20 ms sleep overshoot)", fontsize=10)
    ax.legend(fontsize=8)
    for a in (axes[0][0], axes[0][1], axes[1][0]):
        a.set_xlabel("rooms in one process (N)")
        a.grid(alpha=0.3)
    ax = axes[1][1]
    study = scaling.get("frame_study") or []
    base = {s["kind"]: s for s in steps if s["n"] == (scaling.get("config", {}).get("frame_study_n"))}
    bars: list[tuple[str, float, str]] = []
    if base:
        ours10 = base.get("ours")
        if ours10 is not None:
            ms = ours10.get("capture_ms", 10)
            bars.append((f"ours {ms} ms", ours10.get("cpu_cores") or 0.0, OURS))
            bars.append((f"null {ms} ms", ours10["floor"].get("cpu_cores") or 0.0, BASE))
    for s in study:
        bars.append((f"{s['kind']} {s['capture_ms']} ms", s.get("cpu_cores") or 0.0,
                     OURS if s["kind"] == "ours" else BASE))
    if bars:
        ax.bar(range(len(bars)), [b[1] for b in bars], color=[b[2] for b in bars], alpha=0.8)
        ax.set_xticks(range(len(bars)))
        ax.set_xticklabels([b[0] for b in bars], rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("cores")
        ax.set_title(f"Voice capture frame length at N={scaling.get('config', {}).get('frame_study_n')}",
                     fontsize=10)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"Ours vs the null-bridge floor, same run, same N, callers in other processes — {machine}",
                 fontsize=10)
    save(fig, path)


def plot_stages(latency: dict[str, Any], interrupt: dict[str, Any] | None, path: Path, machine: str) -> None:
    plt = pyplot()
    stages = dict(latency.get("stages_ns", {}))
    if interrupt and interrupt.get("interrupt_flush_ns"):
        stages["interrupt.flush"] = interrupt["interrupt_flush_ns"]
    if not stages:
        return
    names = list(stages)
    fig, ax = plt.subplots(figsize=(11, 4.5))
    data = [np.asarray(stages[k], dtype=float) / 1e6 for k in names]
    ax.boxplot(data, whis=(5, 95), showfliers=False)
    for i, d in enumerate(data, start=1):
        if d.size:
            ax.plot([i], [np.percentile(d, 99)], "v", color=BASE, markersize=5)
    ax.set_xticks(range(1, len(names) + 1))
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("ms (box: p25–p75, whiskers p5–p95, ▼ p99)")
    ax.axhline(5, color=BASE, linestyle="--", linewidth=0.8)
    ax.grid(alpha=0.3)
    ax.set_title(f"Bridge stage timings (session.timer) — {machine}", fontsize=10)
    save(fig, path)


def plot_turns(turns: dict[str, Any], path: Path, machine: str) -> None:
    """Per burst rate: turn latency p50 and interruption → silence at the caller, ours against naive."""
    plt = pyplot()
    rates = turns["rates"]
    x = [r["burst"] for r in rates]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    panels = (("turn_ms", "Turn: speech end → caller hears the reply (p50, p95)"),
              ("onset_ms", "Speech onset → engine receives it (p50, p95)"),
              ("remote_silent_ms", "Interruption → caller hears silence (p50, p95)"))
    for ax, (metric, title) in zip(axes, panels, strict=True):
        for bridge, color, label in (("ours", OURS, "ours"), ("baseline", BASE, "naive")):
            p50 = [r["summary"][metric][bridge]["p50"] for r in rates]
            p95 = [r["summary"][metric][bridge]["p95"] for r in rates]
            ax.plot(x, p50, marker="o", color=color, label=f"{label} p50")
            ax.plot(x, p95, marker="x", linestyle=":", color=color, label=f"{label} p95")
        ax.set_xscale("log")
        ax.set_xticks(x)
        ax.set_xticklabels([f"{v:g}×" for v in x])
        _style(ax, title, "engine burst rate (× real time)", "ms")
    fig.suptitle(f"Turns through livekit-server and the emulator, burst rate swept — {machine}", fontsize=10)
    save(fig, path)


def plot_all(results: dict[str, Any], out: Path) -> list[Path]:
    m = results.get("machine", {})
    machine = f"{m.get('cpu_model', '?')}, {m.get('cores', '?')} cores, {str(m.get('date', ''))[:10]}"
    written: list[Path] = []
    if "latency" in results:
        plot_latency(results["latency"], out / "latency_cdf.png", machine)
        plot_stages(results["latency"], results.get("interrupt"), out / "stages.png", machine)
        written += [out / "latency_cdf.png", out / "stages.png"]
    if "interrupt" in results:
        plot_interrupt(results["interrupt"], out / "interrupt_hist.png", machine)
        written.append(out / "interrupt_hist.png")
    if "turns" in results and results["turns"].get("rates"):
        plot_turns(results["turns"], out / "turns.png", machine)
        written.append(out / "turns.png")
    if "scaling" in results and results["scaling"].get("steps"):
        plot_scaling(results["scaling"], out / "scaling.png", machine)
        written.append(out / "scaling.png")
        if any(s.get("floor") for s in results["scaling"]["steps"]):
            plot_floor(results["scaling"], out / "scaling_floor.png", machine)
            written.append(out / "scaling_floor.png")
    return [p for p in written if p.exists()]
