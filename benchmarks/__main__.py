"""``python -m benchmarks [--quick] [--only interrupt|latency|scaling]``: the bridge measured end to end.

Everything goes through a real livekit-server on loopback (started here) and the Speech Engine emulator;
run it inside the private network namespace (``make bench`` / ``make bench-quick`` do), since WebRTC needs an
interface that is not ``lo``. Three benchmarks, each its own module with the details of what it measures:

- ``interrupt`` (:mod:`benchmarks.interrupt`): interruption → silence at the bridge output and at a remote
  subscriber, ours against the naive bridge (:mod:`benchmarks.naive`), same emulator, same run.
- ``latency`` (:mod:`benchmarks.latency`): uplink, downlink, round trip, ours and the naive bridge, and our
  per-stage processing times from ``session.timer``.
- ``scaling`` (:mod:`benchmarks.scaling`): N sessions in one process, N stepped up until it breaks.
- ``turns`` (:mod:`benchmarks.turns`): whole turns with the emulator's VAD (turn latency, speech onset →
  engine, talk-over → interruption, interruption → silence, the bridge-only uplink hold), ours against the
  naive bridge, with the engine's burst rate swept 1×, 2×, 4×, 10×.

Progress goes to stderr; the table to stdout; JSON with every raw sample and the machine description to
``benchmarks/results/<name>.json`` (``--quick``: ``benchmarks/results/quick/``) with ``summary.json`` beside
them; PNG plots next to them. Full mode takes about 15 minutes on a 2-core machine, ``--quick`` about 4.
``--what-if NAME`` (scaling) measures a change to the bridge before it is made; its results go to
``benchmarks/results/whatif-NAME/``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks import interrupt, latency, scaling, turns
from benchmarks.common import RESULTS, Progress, machine, run_loop, write_json
from benchmarks.report import render, targets
from scripts.livekit_server import LiveKitServer, LiveKitServerError

NAMES = ("turns", "interrupt", "latency", "scaling")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer trials and smaller N: a few minutes")
    parser.add_argument("--only", action="append", choices=NAMES, help="run only this benchmark (repeatable)")
    parser.add_argument("--out", type=Path, help="results directory (default benchmarks/results[/quick])")
    parser.add_argument("--trials", type=int, help="interruption trials per bridge (hook-triggered)")
    parser.add_argument("--speech-trials", type=int, help="interruption trials per bridge by caller speech")
    parser.add_argument("--latency-trials", type=int, help="latency trials per bridge")
    parser.add_argument("--turn-trials", type=int, help="turn trials per bridge per burst rate")
    parser.add_argument("--bursts", help="engine burst rates for the turns, comma-separated (default 1,2,4,10)")
    parser.add_argument("--steps", help="scaling N values, comma-separated (e.g. 1,10,50)")
    parser.add_argument("--window", type=float, help="scaling measurement window per step, seconds")
    parser.add_argument("--frame-study-n", type=int,
                        help="scaling: N at which ours and the null floor run again with 10/40 ms voice frames "
                             "(0: off)")
    parser.add_argument("--break-lag-ms", type=float,
                        help="scaling: event-loop lag p99 that marks a step broken and ends the curve (default 100); "
                             "raise it on a machine other jobs saturate, and say so")
    parser.add_argument("--no-floor", action="store_true", help="scaling: skip the null-bridge floor")
    parser.add_argument("--no-naive", action="store_true", help="scaling: skip the naive-bridge reference")
    parser.add_argument("--no-conversation-floor", action="store_true",
                        help="scaling: skip the floor with an engine conversation")
    parser.add_argument("--processes", type=int,
                        help="scaling: bridge processes per step, the rooms dealt over them (default 1)")
    parser.add_argument("--what-if", action="append", default=[], metavar="NAME",
                        help="scaling only: measure a change to the bridge before it is made "
                             "(frame10, frame40, switch-1ms; see benchmarks.bridge_host)")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--replot", action="store_true",
                        help="measure nothing: redraw the plots and print the table from the JSON in --out")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser.parse_args(argv)


def configs(opts: argparse.Namespace) -> tuple[interrupt.InterruptConfig, latency.LatencyConfig,
                                               scaling.ScalingConfig]:
    if opts.quick:
        i_cfg = interrupt.InterruptConfig(trials=10, speech_trials=2)
        l_cfg = latency.LatencyConfig(trials=10)
        s_cfg = scaling.ScalingConfig(steps=(1, 10, 50), warmup_s=3.0, window_s=10.0, time_budget_s=150.0,
                                      frame_study_n=None)
    else:
        i_cfg, l_cfg, s_cfg = interrupt.InterruptConfig(), latency.LatencyConfig(), scaling.ScalingConfig()
    if opts.trials is not None:
        i_cfg = replace(i_cfg, trials=opts.trials)
    if opts.speech_trials is not None:
        i_cfg = replace(i_cfg, speech_trials=opts.speech_trials)
    if opts.latency_trials is not None:
        l_cfg = replace(l_cfg, trials=opts.latency_trials)
    if opts.steps:
        s_cfg = replace(s_cfg, steps=tuple(int(x) for x in opts.steps.split(",")))
    if opts.window is not None:
        s_cfg = replace(s_cfg, window_s=opts.window)
    if opts.what_if:
        s_cfg = replace(s_cfg, what_if=tuple(opts.what_if))
    if opts.frame_study_n is not None:
        s_cfg = replace(s_cfg, frame_study_n=opts.frame_study_n or None)
    if opts.break_lag_ms is not None:
        s_cfg = replace(s_cfg, break_lag_p99_ms=opts.break_lag_ms)
    if opts.no_floor:
        s_cfg = replace(s_cfg, floor=False)
    if opts.no_naive:
        s_cfg = replace(s_cfg, naive=False)
    if opts.no_conversation_floor:
        s_cfg = replace(s_cfg, conversation_floor=False)
    if opts.processes is not None:
        s_cfg = replace(s_cfg, processes=opts.processes)
    return i_cfg, l_cfg, s_cfg


def _strip_raw(result: dict[str, Any]) -> dict[str, Any]:
    """The summary part of a benchmark's result (no per-trial samples)."""
    keep = {k: v for k, v in result.items()
            if k not in ("trials", "stages_ns", "interrupt_flush_ns", "machine", "rates")}
    if "steps" in keep:
        keep["steps"] = [{k: v for k, v in s.items() if k not in ("lags_ms", "interruption_samples_ms")}
                         for s in keep["steps"]]
    return keep


async def run(opts: argparse.Namespace, server: LiveKitServer | None = None) -> dict[str, Any]:
    """Run the selected benchmarks; write JSON (and plots); return every result. ``server``: reuse one."""
    default = RESULTS / ("whatif-" + "+".join(opts.what_if)) if opts.what_if else RESULTS
    out: Path = opts.out or (default / "quick" if opts.quick else default)
    out.mkdir(parents=True, exist_ok=True)
    if opts.quick and out == default / "quick":
        (out / ".gitignore").write_text("# quick runs are for trying things; the committed figures are full runs\n*\n")
    selected = opts.only or list(NAMES)
    i_cfg, l_cfg, s_cfg = configs(opts)
    log_dir = Path(tempfile.mkdtemp(prefix="lk-bench-logs-"))
    top = Progress("benchmarks", quiet=opts.quiet)
    desc = machine()
    mode = "quick" if opts.quick else "full"
    results: dict[str, Any] = {"machine": desc, "mode": mode, "benchmarks": selected}
    own_server = server is None
    if server is None:
        server = LiveKitServer(log_dir=log_dir)
        server.start()
    top(f"{mode} run of {', '.join(selected)}; livekit-server on {server.url}; logs in {log_dir}")
    try:
        for name in selected:
            progress = Progress(name, quiet=opts.quiet)
            t0 = time.monotonic()
            if name == "interrupt":
                res = await interrupt.run(server, i_cfg, progress, log_dir=log_dir)
            elif name == "latency":
                res = await latency.run(server, l_cfg, progress, log_dir=log_dir)
            elif name == "turns":
                t_cfg = turns.TurnsConfig(trials=4) if opts.quick else turns.TurnsConfig()
                if opts.turn_trials is not None:
                    t_cfg = replace(t_cfg, trials=opts.turn_trials)
                if opts.bursts:
                    t_cfg = replace(t_cfg, bursts=tuple(float(b) for b in opts.bursts.split(",")))
                res = await turns.run(server, t_cfg, progress, log_dir=log_dir)
            else:
                res = await scaling.run(server, s_cfg, progress, log_dir=log_dir)
            res["elapsed_s"] = time.monotonic() - t0
            res["mode"] = mode
            res["machine"] = desc
            write_json(out / f"{name}.json", res)
            results[name] = res
            top(f"{name} done in {res['elapsed_s']:.0f} s → {out / (name + '.json')}")
    finally:
        if own_server:
            server.stop()
    # With --only, the other benchmarks' latest results in the same directory still belong in the summary,
    # the table and the plots; each keeps its own machine description (date, commit, load).
    earlier = [name for name in NAMES if name not in selected and (out / f"{name}.json").exists()]
    for name in earlier:
        results[name] = json.loads((out / f"{name}.json").read_text())
    summary = {"machine": desc, "mode": mode, "benchmarks": selected, "earlier_runs": {
                   name: {k: results[name]["machine"].get(k) for k in ("date", "git_commit", "loadavg_at_start")}
                   for name in earlier},
               "targets": targets(results), **{name: _strip_raw(results[name]) for name in NAMES if name in results}}
    write_json(out / "summary.json", summary)
    if not opts.no_plots:
        from benchmarks.plots import plot_all
        for path in plot_all(results, out):
            top(f"plot → {path}")
    results["table"] = render(results)
    return results


def replot(opts: argparse.Namespace) -> dict[str, Any]:
    out: Path = opts.out or (RESULTS / "quick" if opts.quick else RESULTS)
    results: dict[str, Any] = {}
    for name in opts.only or NAMES:
        path = out / f"{name}.json"
        if path.exists():
            results[name] = json.loads(path.read_text())
            results.setdefault("machine", results[name].get("machine", {}))
    if not opts.no_plots:
        from benchmarks.plots import plot_all
        plot_all(results, out)
    results["table"] = render(results)
    return results


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    if opts.replot:
        print(replot(opts)["table"])
        return 0
    try:
        results = run_loop(run(opts))
    except LiveKitServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(results["table"])
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
