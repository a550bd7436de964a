"""Prometheus metrics for every bridge session of this process, read when scraped.

Nothing here runs per frame. The hot paths already keep plain counters (session, engine client, protocol,
room, playout); a custom collector reads them when Prometheus scrapes, so a process that is never scraped
pays nothing and one that is pays only on the scrape. The collector reads ``session.stats(stages=False)``:
the same public snapshot as everyone else, without the per-stage percentiles (numpy over 2048-sample
windows, about 0.5 ms a session measured): at a hundred sessions that alone would block the event loop for
longer than the agent voice's 30 ms lead. Reading the counters costs about 50 µs a session on the loop; the
text rendering (twice that) runs on a thread of the exporter's own.

Names (``bridge_`` prefix). Per session, labels ``room`` and ``session`` (the id in the structured logs);
the same name without ``session_`` is the process total, which also keeps the counts of sessions that have
ended (their final values are folded in when they stop), so totals never go backwards:

==========================================  =========  ======================================================
``sessions_active``                         gauge      sessions started and not yet stopped
``[session_]callers``                       gauge      callers in the room
``[session_]engine_connected``              gauge      1 while a conversation is established
``[session_]engine_chunks_total{direction}``  counter  ``sent`` (user audio queued) / ``received`` (agent audio)
``[session_]engine_bytes_total{direction}``   counter  raw audio bytes, before base64
``[session_]livekit_frames_total{direction}`` counter  ``in`` (callers' frames) / ``out`` (agent voice)
``[session_]uplink_dropped_chunks_total{reason}``  c.  ``not_ready`` (no conversation) / ``backpressure``
``[session_]control_dropped_messages_total{reason}``  c.  typed messages, context, tool results not sent:
                                                       ``not_ready`` / ``backpressure`` (256 waiting)
``[session_]stale_chunks_dropped_total``    counter    agent audio older than the last interruption
``[session_]interruptions_total``           counter
``[session_]interruption_to_silence_seconds``  hist.   interruption received → playout flushed and queue cleared
``[session_]ducks_total{outcome}``          counter    local ducks ``started`` / ``confirmed`` by an interruption /
                                                       ``released`` without one
``[session_]playout_underruns_total``       counter    the engine's audio came late mid-reply
``[session_]playout_depth_seconds``         gauge      agent audio buffered, not yet played
``[session_]playout_refused_seconds_total`` counter    agent audio refused by the 30 s playout cap
``[session_]engine_reconnects_total``       counter    conversations re-established after a loss
``[session_]engine_failed_attempts_total``  counter    connection attempts that failed
``[session_]livekit_reconnects_total``      counter    room connection restored by the SDK
``[session_]livekit_ghosts_removed_total``  counter    leaves the server never applied: the agent removed
                                                       through the server API (``transport.livekit_room``)
``[session_]protocol_errors_total{kind}``   counter    engine messages dropped, by ProtocolError kind
``[session_]tool_calls_total{outcome}``     counter    client tool calls: ``local`` / ``forwarded`` (answered),
                                                       ``error`` (every error result, of which ``timeout``,
                                                       ``unknown``, ``rejected``), ``abandoned``
``[session_]chat_messages_total{outcome}``  counter    lk.chat: ``sent`` (``truncated`` among them), ``ignored``,
                                                       ``refused``, ``failed``, ``not_sent``
``[session_]agent_attribute_writes_total{outcome}``  c.  ``lk.agent.state``/``lk.bridge.turn`` writes: ``sent``
                                                       (calls), ``failed``, ``coalesced`` (replaced unsent)
``[session_]continuity_handovers_total``    counter    transcripts handed to a re-established conversation
``event_loop_lag_seconds``                  histogram  how late a 100 ms sleep wakes up
``event_loop_lag_max_seconds``              gauge      worst lag since the previous scrape
==========================================  =========  ======================================================

Labels never carry secrets: room names and session ids only (no URLs, no tokens, no conversation ids).

What is read from each session, and the bucket counts: :mod:`transport.metrics_read`; here, the Prometheus
families, the totals across sessions and the endpoint.

Serving: :meth:`BridgeMetrics.serve` runs an aiohttp endpoint (``GET /metrics``) on the event loop itself,
so the collector reads counters between callbacks, never while one is half-way through an update.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from transport.events import SessionState
from transport.loop_lag import LoopLagProbe
from transport.metrics_read import (
    COUNTERS,
    GAUGES,
    INTERRUPTION_BUCKETS,
    LAG_BUCKETS,
    CounterKey,
    Histogram,
    Tracked,
    add_counts,
    read_session,
)

if TYPE_CHECKING:
    from transport.session import BridgeSession

__all__ = ["INTERRUPTION_BUCKETS", "LAG_BUCKETS", "BridgeMetrics", "LoopLagMonitor"]

log = logging.getLogger(__name__)

class LoopLagMonitor:
    """Event-loop lag as a histogram and the worst value since the last read (a :class:`LoopLagProbe`)."""

    def __init__(self, interval_s: float = 0.1) -> None:
        self.interval_s = interval_s
        self.histogram = Histogram(LAG_BUCKETS)
        self.max_since_read = 0.0
        self._probe = LoopLagProbe(interval_s, self._observe)

    def _observe(self, lag: float) -> None:
        self.histogram.observe(lag)
        self.max_since_read = max(self.max_since_read, lag)

    def start(self) -> None:
        self._probe.start()

    async def stop(self) -> None:
        await self._probe.stop()

    def take_max(self) -> float:
        worst, self.max_since_read = self.max_since_read, 0.0
        return worst


class BridgeMetrics:
    """``metrics = BridgeMetrics(); metrics.track(session); await metrics.serve(port)``.

    Sessions that stop are retired (their final counts go into the totals) when :meth:`untrack` is called
    or at the next scrape, whichever comes first.
    """

    def __init__(self, registry: CollectorRegistry | None = None, *, lag: LoopLagMonitor | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=False)
        self.lag = lag or LoopLagMonitor()
        self._tracked: dict[int, Tracked] = {}
        self._retired: dict[CounterKey, float] = {}
        self._retired_interruptions = Histogram(INTERRUPTION_BUCKETS)
        self._runner: web.AppRunner | None = None
        self._formatter: concurrent.futures.ThreadPoolExecutor | None = None
        self.port: int | None = None
        self.registry.register(_Collector(self))

    # -- sessions
    def track(self, session: BridgeSession) -> None:
        self._tracked.setdefault(id(session), Tracked(session))

    def untrack(self, session: BridgeSession) -> None:
        tracked = self._tracked.pop(id(session), None)
        if tracked is not None:
            self._retire(tracked)

    def _retire(self, tracked: Tracked) -> None:
        tracked.update_histogram()
        add_counts(self._retired, read_session(tracked.session).counters)
        self._retired_interruptions.merge(tracked.interruptions)

    @property
    def sessions(self) -> list[BridgeSession]:
        return [t.session for t in self._tracked.values()]

    # -- exposition
    def render(self) -> bytes:
        """The text exposition format, as served on ``/metrics``."""
        return generate_latest(self.registry)

    async def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve ``GET /metrics`` on the running loop; returns the port (pass 0 for any free one)."""
        app = web.Application()
        app.router.add_get("/metrics", self._handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        self._runner = runner
        self._formatter = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="metrics-format")
        self.port = int(runner.addresses[0][1])
        self.lag.start()
        log.info("metrics on http://%s:%d/metrics", host, self.port)
        return self.port

    async def close(self) -> None:
        await self.lag.stop()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        formatter, self._formatter = self._formatter, None
        if formatter is not None:
            formatter.shutdown(wait=True)

    async def _handle(self, _request: web.Request) -> web.Response:
        # Reading the counters happens here, on the loop, between callbacks; turning them into text (the
        # larger half of the cost, ~0.1 ms a session) happens on a thread of our own.
        families = list(self.collect())
        loop = asyncio.get_running_loop()
        body = await loop.run_in_executor(self._formatter, generate_latest, _Frozen(families))
        response = web.Response(body=body)
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        response.charset = "utf-8"
        return response

    # -- collection
    def collect(self) -> Iterator[Metric]:
        for key, tracked in list(self._tracked.items()):
            if tracked.session.state is SessionState.STOPPED:
                del self._tracked[key]
                self._retire(tracked)
        live = [(t, read_session(t.session)) for t in self._tracked.values()]
        for t, _ in live:
            t.update_histogram()

        yield GaugeMetricFamily("bridge_sessions_active", "Bridge sessions started and not yet stopped.",
                                value=sum(1 for _, s in live if s.running))
        for name, doc in GAUGES:
            total = GaugeMetricFamily(f"bridge_{name}", f"{doc} (all sessions)",
                                      value=sum(s.gauges[name] for _, s in live))
            per = GaugeMetricFamily(f"bridge_session_{name}", doc, labels=("room", "session"))
            for t, s in live:
                per.add_metric(t.labels, s.gauges[name])
            yield total
            yield per

        totals = dict(self._retired)
        for _, s in live:
            add_counts(totals, s.counters)
        every = {name: CounterMetricFamily(f"bridge_{name.removesuffix('_total')}",
                                           f"{doc} (all sessions, ended ones included)", labels=extra)
                 for name, doc, extra in COUNTERS}
        each = {name: CounterMetricFamily(f"bridge_session_{name.removesuffix('_total')}", doc,
                                          labels=("room", "session", *extra))
                for name, doc, extra in COUNTERS}
        for name, _, extra in COUNTERS:
            if not extra and (name, ()) not in totals:
                every[name].add_metric((), 0.0)  # a zero from the start, so rate() has a baseline
        for (name, values), v in sorted(totals.items()):
            every[name].add_metric(values, v)
        for t, s in live:  # one pass over each session's counters: a scrape costs O(sessions), not more
            labels = t.labels
            for (name, values), v in s.counters.items():
                each[name].add_metric((*labels, *values), v)
        for name, _, _ in COUNTERS:
            yield every[name]
            yield each[name]

        everything = Histogram(INTERRUPTION_BUCKETS)
        everything.merge(self._retired_interruptions)
        per_hist = HistogramMetricFamily("bridge_session_interruption_to_silence_seconds",
                                         "Interruption received until the agent's queued voice was dropped.",
                                         labels=("room", "session"))
        for t, _ in live:
            everything.merge(t.interruptions)
            per_hist.add_metric(t.labels, t.interruptions.buckets(), t.interruptions.total)
        total_hist = HistogramMetricFamily("bridge_interruption_to_silence_seconds",
                                           "Interruption received until the agent's queued voice was dropped "
                                           "(all sessions).", labels=())
        total_hist.add_metric((), everything.buckets(), everything.total)
        yield total_hist
        yield per_hist

        lag = HistogramMetricFamily("bridge_event_loop_lag_seconds",
                                    f"How late a {self.lag.interval_s * 1000:.0f} ms sleep on the event loop "
                                    "wakes up.", labels=())
        lag.add_metric((), self.lag.histogram.buckets(), self.lag.histogram.total)
        yield lag
        yield GaugeMetricFamily("bridge_event_loop_lag_max_seconds",
                                "Worst event-loop lag since the previous scrape.", value=self.lag.take_max())


class _Frozen:
    """Families already read, for formatting off the loop (``generate_latest`` only calls ``collect``)."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families


class _Collector(Collector):
    def __init__(self, metrics: BridgeMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self._metrics.collect()

    def describe(self) -> Iterable[Metric]:
        return []
