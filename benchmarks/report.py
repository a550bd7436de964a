"""The stdout table and the target verdicts, from the benchmarks' result dictionaries."""

from __future__ import annotations

from typing import Any

__all__ = ["render", "targets"]


def _f(v: float | None, digits: int = 1) -> str:
    if v is None:
        return "-"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) < 10:
        digits = max(digits, 2)
    return f"{v:.{digits}f}"


def _pcts(s: dict[str, Any] | None, digits: int = 1) -> str:
    if not s or not s.get("n"):
        return "-"
    return f"{_f(s['p50'], digits)} / {_f(s['p95'], digits)} / {_f(s['p99'], digits)}"


def _ratio(r: dict[str, float | None]) -> str:
    vals = [r.get(q) for q in ("p50", "p95", "p99")]
    if any(v is None for v in vals):
        return "-"
    return " / ".join(f"{v:.0f}×" for v in vals if v is not None)


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with the measured figure and met / missed (None: not measured in this run)."""
    out: list[dict[str, Any]] = []
    intr = results.get("interrupt", {}).get("summary", {}).get("hook")
    if intr:
        bridge = intr["bridge_ms"]
        p99 = bridge["ours"]["p99"]
        out.append({"target": "bridge-output interruption-to-silence p99 ≤ 10 ms", "measured": p99,
                    "unit": "ms", "met": p99 is not None and p99 <= 10})
        ratios = [bridge["ratio"][q] for q in ("p50", "p95", "p99")]
        worst = min((r for r in ratios if r is not None), default=None)
        out.append({"target": "≥ 100× better than the baseline (worst of the p50/p95/p99 ratios)",
                    "measured": worst, "unit": "×", "met": worst is not None and worst >= 100})
        remote = intr["remote_ms"]["ours"]["p95"]
        out.append({"target": "remote-subscriber silence after interruption p95 ≤ 80 ms", "measured": remote,
                    "unit": "ms", "met": remote is not None and remote <= 80})
    lat = results.get("latency", {}).get("summary")
    if lat:
        stages = lat.get("stages_ms", {})
        up = (stages.get("uplink.total") or {}).get("p95")
        down = (stages.get("downlink.total") or {}).get("p95")
        out.append({"target": "bridge processing ≤ 5 ms p95 beyond the chunk, uplink (uplink.total)",
                    "measured": up, "unit": "ms", "met": up is not None and up <= 5})
        out.append({"target": "bridge processing ≤ 5 ms p95 beyond the chunk, downlink (downlink.total)",
                    "measured": down, "unit": "ms", "met": down is not None and down <= 5})
        first = lat["bridge_downlink_ms"]["ours"].get("p95")
        out.append({"target": "…downlink, first chunk received → first samples to the AudioSource (p95)",
                    "measured": first, "unit": "ms", "met": first is not None and first <= 5})
        bup = lat["bridge_uplink_ms"]["ours"].get("p95")
        out.append({"target": "…uplink, caller frame in → engine receives it (p95; chunks leave with their frame)",
                    "measured": bup, "unit": "ms", "met": bup is not None and bup <= 5})
    turns = results.get("turns", {}).get("summary")
    if turns:
        row16 = next(iter(turns.values()))
        hold = row16["uplink_hold_ms"]["ours"].get("p95")
        out.append({"target": "bridge-only uplink hold p95 ≤ 3 ms at pcm_16000 (frame in → chunk queued, + any FIR)",
                    "measured": hold, "unit": "ms", "met": hold is not None and hold <= 3})
        for rate, row in turns.items():
            o, b = row["turn_net_ms"]["ours"].get("p50"), row["turn_net_ms"]["baseline"].get("p50")
            out.append({"target": f"turn minus the room's hops p50: the bridge adds ≤ 3 ms over the naive bridge at "
                                  f"{rate} burst (ours − naive)",
                        "measured": None if o is None or b is None else o - b, "unit": "ms",
                        "met": o is not None and b is not None and o - b <= 3})
            own = [(row[m]["ours"].get("p50"), row[m]["baseline"].get("p50"))
                   for m in ("onset_bridge_ms", "bridge_downlink_ms")]
            if all(o is not None and b is not None for o, b in own):
                extra = sum(o - b for o, b in own)
                out.append({"target": f"the bridge's own share (caller frame → engine + first audio → AudioSource) "
                                      f"p50 ≤ naive's + 0.5 ms at {rate} burst (ours − naive)",
                            "measured": extra, "unit": "ms", "met": extra <= 0.5})
            for metric, what in (("turn_ms", "raw turn latency"), ("onset_ms", "raw speech onset → engine")):
                o, b = row[metric]["ours"].get("p50"), row[metric]["baseline"].get("p50")
                out.append({"target": f"{what} p50 ≤ naive's at {rate} burst (ours − naive; with each rig's own "
                                      f"room hops, which differ by up to ±18 ms)",
                            "measured": None if o is None or b is None else o - b, "unit": "ms",
                            "met": o is not None and b is not None and o <= b})
            silent = row["bridge_silent_ms"]["ours"].get("p99")
            out.append({"target": f"interruption → bridge output silent p99 ≤ 10 ms at {rate} burst",
                        "measured": silent, "unit": "ms", "met": silent is not None and silent <= 10})
    scale = results.get("scaling")
    if scale and scale.get("steps"):
        clean = [s for s in scale["steps"]
                 if not s["broken"] and s.get("underruns", 1) == 0 and s.get("pacer_lag_ms", 1) == 0]
        best = max((s["n"] for s in clean), default=0)
        out.append({"target": "≥ 200 concurrent sessions without underruns", "measured": best, "unit": "sessions",
                    "met": best >= 200})
        marginal = scale.get("rss_per_extra_session_mb")
        out.append({"target": "≤ 2 MB RSS per extra session", "measured": marginal, "unit": "MB",
                    "met": marginal is not None and marginal <= 2})
    return out


def render(results: dict[str, Any]) -> str:
    lines: list[str] = []
    add = lines.append
    machine = results.get("machine", {})
    if machine:
        add(f"Machine: {machine.get('cpu_model')}, {machine.get('cores')} cores, {machine.get('mem_total_mb')} MB; "
            f"Python {machine.get('python')}, livekit {machine.get('livekit')}, {machine.get('livekit_server')}; "
            f"load {', '.join(f'{x:.2f}' for x in machine.get('loadavg_at_start', []))} at start; "
            f"{machine.get('date')}")
    intr = results.get("interrupt", {}).get("summary")
    if intr:
        add("")
        add("Interruption → silence (ms)          ours p50 / p95 / p99     baseline p50 / p95 / p99    n     "
            "baseline÷ours p50/p95/p99")
        labels = {"bridge_ms": "bridge output, from engine send", "bridge_from_read_ms": "bridge output, from its read",
                  "remote_ms": "remote subscriber", "read_delay_ms": "engine send → bridge reads it",
                  "room_delay_at_start_ms": "room delay at reply start*",
                  "room_delay_at_end_ms": "room delay at the end*",
                  "speech_to_interruption_ms": "caller speaks → engine interrupts"}
        for mode in ("hook", "speech"):
            row = intr.get(mode)
            if not row:
                continue
            add(f"  [{'hook-triggered' if mode == 'hook' else 'caller speech barge-in'}]")
            for metric, label in labels.items():
                m = row[metric]
                n = m["ours"]["n"]
                if not n:
                    continue
                add(f"  {label:<34} {_pcts(m['ours'], 2):<24} {_pcts(m['baseline'], 0):<27} {n:<5} "
                    f"{_ratio(m['ratio']) if metric in ('bridge_ms', 'remote_ms') else ''}")
        add("  * room delay: AudioSource → caller (Opus, SFU, the caller's jitter buffer), at the reply's first sound "
            "and from the bridge's silence to the caller's")
    lat = results.get("latency", {}).get("summary")
    if lat:
        add("")
        add("Latency (ms)                         ours p50 / p95 / p99     baseline p50 / p95 / p99    n")
        labels = {"uplink_ms": "uplink: caller track → engine", "downlink_ms": "downlink: engine → caller hears",
                  "round_trip_ms": "round trip (echo, no VAD/think)", "turnaround_ms": "  of which emulator turnaround",
                  "to_bridge_ms": "caller track → bridge AudioStream",
                  "bridge_uplink_ms": "bridge uplink: frame in → engine",
                  "bridge_downlink_ms": "bridge downlink: event → source"}
        for metric, label in labels.items():
            m = lat[metric]
            add(f"  {label:<34} {_pcts(m['ours']):<24} {_pcts(m['baseline']):<27} {m['ours']['n']}")
        add(f"  echo heard (300 Hz found in the reply): ours {lat['echo_heard']['ours']}, "
            f"baseline {lat['echo_heard']['baseline']}")
        add("")
        add("Bridge stages (ms, session.timer)    p50 / p95 / p99          n")
        stages = dict(lat.get("stages_ms", {}))
        flush = results.get("interrupt", {}).get("interrupt_flush_ms")
        if flush:
            stages["interrupt.flush"] = flush
        for name, s in stages.items():
            add(f"  {name:<34} {_pcts(s, 3):<24} {s['n']}")
    turns = results.get("turns", {}).get("summary")
    if turns:
        add("")
        add("Turns, burst rate swept (ms)         ours p50 / p95 / p99     baseline p50 / p95 / p99    n     "
            "baseline÷ours p50/p95/p99")
        labels = {"turn_ms": "turn: speech end → caller hears reply",
                  "turn_minus_hangover_ms": "  the same minus the 400 ms hangover",
                  "turn_net_ms": "  the same minus the room's hops",
                  "onset_ms": "speech onset → engine receives it",
                  "onset_room_ms": "  of which caller → bridge gets frame",
                  "onset_bridge_ms": "  of which bridge frame → engine",
                  "talkover_ms": "talk-over onset → engine interrupts",
                  "downlink_ms": "engine's first chunk → caller hears",
                  "bridge_downlink_ms": "bridge: first audio event → source",
                  "room_start_ms": "room: first capture → caller hears",
                  "bridge_silent_ms": "interruption → bridge output silent",
                  "remote_silent_ms": "interruption → caller hears silence"}
        for rate, row in turns.items():
            add(f"  [engine sends {rate} real time]")
            for metric, label in labels.items():
                m = row.get(metric)
                if not m or not m["ours"]["n"]:
                    continue
                add(f"  {label:<36} {_pcts(m['ours'], 2):<24} {_pcts(m['baseline'], 1):<27} {m['ours']['n']:<5} "
                    f"{_ratio(m['ratio']) if metric in ('bridge_silent_ms', 'remote_silent_ms') else ''}")
            hold = row["uplink_hold_ms"]
            add(f"  {'bridge-only uplink hold':<36} {_pcts(hold['ours'], 2):<24} {_pcts(hold['baseline'], 2):<27} "
                f"{hold['ours']['n']}")
            add(f"  stale loud captures after the interruption: ours {row['stale_captures']['ours']}, "
                f"baseline {row['stale_captures']['baseline']}")
    scale = results.get("scaling")
    if scale and scale.get("steps"):
        add("")
        add("Scaling   sessions  bridge CPU  ms CPU per  RSS/session  loop lag     loop thread      underruns /  "
            "interruption p50/p99  machine")
        add("  N       running   (cores)     session·s   (MB)         p50/p99 ms   cpu/wait/blocked source dry ms "
            "send→flush ms (n)     busy")
        for s in scale["steps"]:
            lag = s.get("loop_lag_ms", {})
            intr_s = s.get("interruption_bridge_ms", {})
            lt = s.get("loop_thread") or {}
            thread = (f"{lt['on_cpu']:.0%}/{lt['runnable_waiting']:.0%}/{lt['blocked_or_idle']:.0%}"
                      if lt else "-")
            add(f"  {s['n']:<7} {s.get('sessions', '-')!s:<9} {_f(s.get('cpu_cores'), 2):<11} "
                f"{_f(s.get('cpu_ms_per_session_second')):<11} {_f(s.get('rss_per_session_mb'), 2):<12} "
                f"{_f(lag.get('p50'))}/{_f(lag.get('p99')):<9} {thread:<16} "
                f"{s.get('underruns', '-')!s} / {_f(s.get('pacer_lag_ms'), 0):<8} "
                f"{_f(intr_s.get('p50'), 2)}/{_f(intr_s.get('p99'), 2)} ({intr_s.get('n', 0)})  "
                f"{_f(100 * s['machine_busy'] if s.get('machine_busy') is not None else None, 0)}%"
                + (f"  BROKEN: {'; '.join(s['why'])}" if s["broken"] else ""))
        if scale.get("skipped"):
            add(f"  not tried: N = {', '.join(map(str, scale['skipped']))}")
        if scale.get("rss_per_extra_session_mb") is not None:
            add(f"  RSS per extra session (slope over the unbroken steps): {scale['rss_per_extra_session_mb']:.2f} MB")
    verdicts = targets(results)
    if verdicts:
        add("")
        add("Targets")
        for t in verdicts:
            verdict = "met" if t["met"] else "MISSED"
            add(f"  [{verdict:>6}] {t['target']}: {_f(t['measured'], 2)} {t['unit']}")
    return "\n".join(lines)
