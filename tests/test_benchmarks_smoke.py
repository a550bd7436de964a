"""The interruption benchmark, two trials per bridge, through the real server: it runs, its JSON has the
shape the plots and the README read, and our bridge goes silent sooner than the naive one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.__main__ import parse_args, run
from scripts.livekit_server import LiveKitServer

pytestmark = [pytest.mark.livekit, pytest.mark.timeout(120)]


async def test_quick_interruption_benchmark(livekit_server: LiveKitServer, tmp_path: Path) -> None:
    opts = parse_args(["--quick", "--only", "interrupt", "--trials", "2", "--speech-trials", "0",
                       "--out", str(tmp_path), "--quiet"])
    results = await run(opts, server=livekit_server)

    data = json.loads((tmp_path / "interrupt.json").read_text())
    machine = data["machine"]
    for key in ("cpu_model", "cores", "mem_total_mb", "python", "numpy", "soxr", "livekit", "livekit_server", "date"):
        assert machine[key], key
    trials = data["trials"]
    assert sorted(t["bridge"] for t in trials) == ["baseline", "baseline", "ours", "ours"]
    for t in trials:
        assert t["mode"] == "hook"
        assert t["remote_heard_reply"], t
        assert t["late_voice_captures"] == 0, t
        for key in ("bridge_ms", "remote_ms", "t_int_ns", "delay_s"):
            assert isinstance(t[key], int | float), (key, t)
        assert 0 <= t["bridge_ms"] <= t["remote_ms"], t

    # Same trial index, same delay drawn from the same generator: ours is silent sooner, at both points.
    by_index: dict[int, dict[str, dict[str, float]]] = {}
    for t in trials:
        by_index.setdefault(t["index"], {})[t["bridge"]] = t
    for pair in by_index.values():
        assert pair["ours"]["bridge_ms"] < pair["baseline"]["bridge_ms"], pair
        assert pair["ours"]["remote_ms"] < pair["baseline"]["remote_ms"], pair

    summary = data["summary"]["hook"]
    for metric in ("bridge_ms", "remote_ms"):
        ours, base = summary[metric]["ours"], summary[metric]["baseline"]
        assert ours["n"] == base["n"] == 2
        assert ours["p50"] < base["p50"]
        assert summary[metric]["ratio"]["p50"] > 1
    # The bridge output goes quiet inside the reader's callback: a few ms at most even on a busy machine.
    assert summary["bridge_ms"]["ours"]["p99"] < 50

    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["benchmarks"] == ["interrupt"] and written["targets"]
    assert (tmp_path / "interrupt_hist.png").stat().st_size > 10_000
    assert "Interruption → silence" in results["table"]


def test_turns_lead_ins_cover_each_onset_phase_once() -> None:
    from benchmarks.turns import PHASE_PERIOD_MS, lead_in_grid

    grid = lead_in_grid(10, seed=12)
    assert sorted(grid) == [1.0, 3.0, 5.0, 7.0, 9.0, 11.0, 13.0, 15.0, 17.0, 19.0]
    assert grid != sorted(grid)  # shuffled: the phase does not drift with the trial index
    assert lead_in_grid(10, seed=12) == grid  # the same for both bridges and every rate
    assert all(0 < x < PHASE_PERIOD_MS for x in lead_in_grid(7, seed=1))
