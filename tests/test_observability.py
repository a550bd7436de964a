"""Prometheus metrics scraped over HTTP, and structured logs that say which session a line belongs to."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from runner import JsonFormatter
from scripts.caller import Caller, tone
from scripts.livekit_server import LiveKitServer
from scripts.ports import free_tcp_port
from tests.conftest import TEST_API_KEY, TEST_API_SECRET
from tests.fault_helpers import Scenario, turn, until
from transport.livekit_token import mint_token
from transport.log_context import FIELDS, ContextFilter
from transport.metrics import BridgeMetrics

pytestmark = pytest.mark.livekit
ROOT = Path(__file__).resolve().parents[1]

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(port: int) -> tuple[str, Samples]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as response:
        assert response.status == 200
        content_type = response.headers["Content-Type"]
        text = await response.text()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):  # also proves the exposition parses
        for s in family.samples:
            samples[s.name, tuple(sorted(s.labels.items()))] = s.value
    return content_type, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[name, tuple(sorted(labels.items()))]


async def test_metrics_are_scraped_over_http_per_session_and_in_total(livekit_server: LiveKitServer) -> None:
    metrics = BridgeMetrics()
    port = await metrics.serve(0)
    try:
        async with Scenario("obs", "metrics", record_row=False) as sc:
            sc.on_exit(metrics.close)  # before the hygiene check: the exporter's formatting thread goes too
            rig = await sc.rig(livekit_server, start=False)
            metrics.track(rig.session)
            await rig.session.start()
            conversation = await rig.emu.next_conversation()
            await rig.caller("alice")
            await turn(rig, "alice", conversation, 300.0)
            reply = conversation.trigger_reply("tone", ms=4000)
            await conversation.wait_for(lambda: reply.chunks_sent >= 5, 10)
            assert conversation.interrupt()
            conversation.inject("garbage")
            conversation.inject("garbage")
            engine = rig.session.engine
            assert engine is not None
            await until(lambda: rig.session.stats(stages=False).session.interruptions == 1
                        and engine.protocol.counters.errors["not_json"] == 2, 10)
            await asyncio.sleep(0.3)  # a few event-loop lag samples

            content_type, live = await scrape(port)
            assert content_type.startswith("text/plain")
            room, sid = rig.room, rig.session.log_context.session
            per = {"room": room, "session": sid}
            assert value(live, "bridge_sessions_active") == 1
            assert value(live, "bridge_callers") == 1
            assert value(live, "bridge_session_callers", **per) == 1
            assert value(live, "bridge_session_engine_connected", **per) == 1
            for direction in ("sent", "received"):
                assert value(live, "bridge_session_engine_chunks_total", **per, direction=direction) > 10
                assert value(live, "bridge_engine_bytes_total", direction=direction) > 1000
            for direction in ("in", "out"):
                assert value(live, "bridge_session_livekit_frames_total", **per, direction=direction) > 10
            assert value(live, "bridge_session_interruptions_total", **per) == 1
            # An interruption with no caller talking over the voice: no duck, but the series is there.
            assert value(live, "bridge_session_ducks_total", **per, outcome="started") == 0
            assert value(live, "bridge_interruption_to_silence_seconds_count") == 1
            assert 0 < value(live, "bridge_interruption_to_silence_seconds_sum") < 0.05
            assert value(live, "bridge_session_interruption_to_silence_seconds_bucket", **per, le="0.05") == 1
            assert value(live, "bridge_protocol_errors_total", kind="not_json") == 2
            assert value(live, "bridge_session_protocol_errors_total", **per, kind="not_json") == 2
            assert value(live, "bridge_session_stale_chunks_dropped_total", **per) >= 0
            assert ("bridge_session_playout_depth_seconds", tuple(sorted(per.items()))) in live
            assert value(live, "bridge_session_playout_underruns_total", **per) >= 0
            assert value(live, "bridge_engine_reconnects_total") == 0
            assert value(live, "bridge_event_loop_lag_seconds_count") > 0
            assert value(live, "bridge_event_loop_lag_max_seconds") >= 0

            sent = value(live, "bridge_engine_chunks_total", direction="sent")
            await rig.session.stop()
            metrics.untrack(rig.session)
            _, after = await scrape(port)
            assert value(after, "bridge_sessions_active") == 0
            assert not [k for k in after if dict(k[1]).get("session") == sid]  # per-session series gone
            # Totals keep what ended sessions did: counters never go backwards.
            assert value(after, "bridge_interruptions_total") == 1
            assert value(after, "bridge_protocol_errors_total", kind="not_json") == 2
            assert value(after, "bridge_engine_chunks_total", direction="sent") >= sent
            assert value(after, "bridge_interruption_to_silence_seconds_count") == 1
    finally:
        await metrics.close()


async def test_runner_serves_metrics_and_writes_json_logs_with_session_ids(livekit_server: LiveKitServer) -> None:
    port = free_tcp_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ELEVENLABS_", "SPEECH_ENGINE"))}
    env.update(LIVEKIT_URL=livekit_server.url, LIVEKIT_API_KEY=TEST_API_KEY, LIVEKIT_API_SECRET=TEST_API_SECRET)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "runner.py"), "--room", "obs-runner", "--emulator", "--reply", "echo", "--json-logs",
        "--metrics-port", str(port), env=env, cwd=ROOT, stderr=asyncio.subprocess.PIPE)
    token = mint_token(TEST_API_KEY, TEST_API_SECRET, room="obs-runner", identity="olga")
    try:
        async with Caller(livekit_server.url, token, identity="olga") as olga:
            await until(lambda: "elevenlabs-agent" in olga.heard, 20, "the runner's agent")
            olga.say(tone(480.0, 0.8))
            await olga.wait_said()
            samples: Samples = {}

            async def scraped() -> bool:
                nonlocal samples
                try:
                    _, samples = await scrape(port)
                except (aiohttp.ClientError, KeyError):
                    return False
                return samples.get(("bridge_callers", ()), 0) == 1 and samples.get(
                    ("bridge_engine_chunks_total", (("direction", "received"),)), 0) > 0

            async with asyncio.timeout(20):
                while not await scraped():
                    await asyncio.sleep(0.2)
            assert value(samples, "bridge_sessions_active") == 1
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            assert await proc.wait() == 0
        assert proc.stderr is not None
        lines = [json.loads(line) for line in (await proc.stderr.read()).decode().splitlines()
                 if line.startswith("{")]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    tagged = [e for e in lines if e.get("session")]
    assert tagged, "no log line carries a session id"
    assert {e["session"] for e in tagged} == {tagged[0]["session"]}  # one session, one id
    assert {e.get("room") for e in tagged if e.get("room")} == {"obs-runner"}
    conversation = [e for e in tagged if e.get("conversation_id")]
    assert conversation and all(e["conversation_id"].startswith("conv_") for e in conversation)
    assert {e["logger"].split(".")[0] for e in tagged} >= {"transport"}


async def test_log_records_carry_the_ids_of_their_own_session(
        livekit_server: LiveKitServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="websockets")  # last: it also sets the handler's level
    ContextFilter().install(caplog.handler)
    async with Scenario("obs", "logs", record_row=False) as sc:
        rigs = [await sc.rig(livekit_server), await sc.rig(livekit_server)]
        conversations = [await r.emu.next_conversation() for r in rigs]
        for i, r in enumerate(rigs):
            await r.caller(f"caller-{i}")
        conversations[0].drop()  # a reconnect: a new conversation id mid-session
        await rigs[0].emu.next_conversation(timeout=15)
        await until(lambda: rigs[0].session.engine is not None and rigs[0].session.engine.ready, 15)
        ids = {r.session.log_context.session: r for r in rigs}
        assert len(ids) == 2
        records = list(caplog.records)
    tagged = [r for r in records if getattr(r, "session", None)]
    by_logger = {r.name.split(".")[0] for r in tagged}
    # Library loggers too (websockets logs from the engine client's tasks). Not the SDK's native lines: they
    # arrive on its own thread, outside any task.
    assert {"transport", "websockets"} <= by_logger, by_logger
    for record in tagged:
        rig = ids.get(record.session)  # type: ignore[attr-defined]
        assert rig is not None
        assert record.room in (None, rig.room), (record.room, rig.room)  # type: ignore[attr-defined]
        conv = record.conversation_id  # type: ignore[attr-defined]
        assert conv is None or conv in {c.conversation_id for c in rig.emu.conversations}
    # The reconnect moved the first session's records to the new conversation id.
    first = rigs[0]
    convs = [r.conversation_id for r in tagged if r.session == first.session.log_context.session  # type: ignore[attr-defined]
             and r.conversation_id]  # type: ignore[attr-defined]
    assert convs[0] == first.emu.conversations[0].conversation_id
    assert convs[-1] == first.emu.conversations[1].conversation_id
    # The JSON formatter writes the fields out.
    entry = json.loads(JsonFormatter().format(tagged[-1]))
    assert all(name in entry for name in FIELDS)
