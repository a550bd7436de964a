"""A short soak: 5 sessions for 30 s with barge-ins, memory flat, every session still up, nothing left over.

The long version is ``python -m benchmarks.soak`` (20 sessions for 10 minutes by default).
"""

from __future__ import annotations

import pytest

from benchmarks.soak import SoakConfig, run_soak
from scripts.livekit_server import LiveKitServer
from tests.fault_helpers import record

pytestmark = pytest.mark.livekit


async def test_five_sessions_for_thirty_seconds_keep_memory_flat(livekit_server: LiveKitServer) -> None:
    config = SoakConfig(sessions=5, seconds=30.0, rss_bound_mib=10.0)
    result = await run_soak(livekit_server, config)
    interruptions = sum(p["interruptions"] for p in result.per_session)
    barges = sum(p["barge_ins"] for p in result.per_session)
    rss = [s["rss_mib"] for s in result.samples]
    summary = (f"5 sessions × 30 s: {barges} barge-ins, {interruptions} interruptions, "
               f"{sum(p['reconnects'] for p in result.per_session)} reconnects; RSS {rss[0]:.0f}→{rss[-1]:.0f} MiB, "
               f"+{result.rss_growth_mib:.1f} MiB after the first third (bound {config.rss_bound_mib:g}), "
               f"slope {result.rss_slope_mib_per_min:+.1f} MiB/min; scrape of 5 sessions {result.scrape_ms:.1f} ms")
    record("soak", "5 sessions × 30 s with barge-ins", "pass" if result.passed else "fail",
           [summary, *(result.errors + result.leftovers)], None, config.seconds)
    assert not result.errors, result.errors
    assert not result.leftovers, result.leftovers
    assert all(p["state"] == "running" for p in result.per_session)
    assert all(p["barge_ins"] >= 3 and p["interruptions"] >= 2 for p in result.per_session), result.per_session
    assert result.rss_growth_mib <= config.rss_bound_mib, summary
    assert result.passed
