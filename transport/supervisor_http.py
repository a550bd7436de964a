"""The supervisor's HTTP port (``--metrics-port``, loopback): liveness, readiness and every child's metrics.

- ``GET /healthz`` (liveness): 200 while the supervisor runs and is not giving up; 503 otherwise.
- ``GET /readyz`` (readiness): 200 when at least one child is registered with LiveKit, not draining and below
  ``max_jobs``; 503 otherwise, and always 503 once draining. Body: JSON with every child's status.
- ``GET /metrics``: every child's exposition, scraped on demand and merged, each sample labelled
  ``process="<index>"``, plus the supervisor's own ``lk_bridge_supervisor_*`` families.

It reads the supervisor only through :class:`SupervisorView` (its public state), so it can be served for
anything that answers those questions.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, Protocol

from aiohttp import ClientSession, ClientTimeout, web

__all__ = ["SupervisorHttp", "SupervisorView", "merge_expositions"]

log = logging.getLogger(__name__)


class ChildView(Protocol):
    @property
    def index(self) -> int: ...
    @property
    def status(self) -> dict[str, Any]: ...
    @property
    def alive(self) -> bool: ...


class SupervisorView(Protocol):
    @property
    def children(self) -> Sequence[ChildView]: ...
    @property
    def healthy(self) -> bool: ...
    def ready(self) -> bool: ...
    def snapshot(self) -> dict[str, Any]: ...


class SupervisorHttp:
    """``await start(host, port)``; ``await close()``. :attr:`port` is the bound port."""

    def __init__(self, supervisor: SupervisorView) -> None:
        self._sup = supervisor
        self._runner: web.AppRunner | None = None
        self._client: ClientSession | None = None
        self.port: int | None = None

    async def start(self, host: str, port: int) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        self._runner = runner
        self._client = ClientSession(timeout=ClientTimeout(total=3.0))
        self.port = int(runner.addresses[0][1])
        log.info("supervisor: /healthz /readyz /metrics on http://%s:%d", host, self.port)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _healthz(self, _request: web.Request) -> web.Response:
        children = self._sup.children
        ok = self._sup.healthy
        return web.json_response({"ok": ok, "alive": sum(c.alive for c in children), "processes": len(children)},
                                 status=200 if ok else 503)

    async def _readyz(self, _request: web.Request) -> web.Response:
        snap = self._sup.snapshot()
        return web.json_response(snap, status=200 if snap["ready"] else 503)

    async def _metrics(self, _request: web.Request) -> web.Response:
        children = list(self._sup.children)
        texts = await asyncio.gather(*(self._scrape(c) for c in children))
        body = merge_expositions([(str(c.index), t) for c, t in zip(children, texts, strict=True) if t is not None],
                                 self._own_metrics())
        response = web.Response(body=body)
        response.content_type = "text/plain"
        response.charset = "utf-8"
        response.headers["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8"
        return response

    async def _scrape(self, child: ChildView) -> str | None:
        port = child.status.get("metrics_port")
        if not child.alive or not port or self._client is None:
            return None
        try:
            async with self._client.get(f"http://127.0.0.1:{int(port)}/metrics") as response:
                return await response.text() if response.status == 200 else None
        except (OSError, TimeoutError) as exc:
            log.debug("scraping worker process %d failed: %s", child.index, exc)
            return None

    def _own_metrics(self) -> list[tuple[str, str, str, float]]:
        children, snap = self._sup.children, self._sup.snapshot()
        return [
            ("lk_bridge_supervisor_processes", "gauge", "worker processes configured", len(children)),
            ("lk_bridge_supervisor_processes_alive", "gauge", "worker processes running",
             sum(c.alive for c in children)),
            ("lk_bridge_supervisor_processes_registered", "gauge", "worker processes registered with LiveKit",
             sum(bool(c.alive and c.status.get("registered")) for c in children)),
            ("lk_bridge_supervisor_restarts", "counter", "worker processes restarted after dying", snap["restarts"]),
            ("lk_bridge_supervisor_calls_lost", "counter", "calls that were on a worker process when it died",
             snap["calls_lost"]),
            ("lk_bridge_supervisor_calls_redispatched", "counter",
             "rooms of a dead worker process LiveKit was asked to dispatch again", snap["redispatched"]),
            ("lk_bridge_supervisor_ready", "gauge", "1 when /readyz answers 200", float(snap["ready"])),
        ]


def merge_expositions(children: list[tuple[str, str]], own: list[tuple[str, str, str, float]]) -> bytes:
    """Children's Prometheus text expositions as one, every sample labelled ``process``; then ``own``."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.metrics_core import Metric
    from prometheus_client.parser import text_string_to_metric_families
    from prometheus_client.samples import Sample

    families: dict[str, Metric] = {}
    for index, text in children:
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(family.name, family.documentation, family.type,
                                                        family.unit)
            merged.samples.extend(Sample(s.name, {**s.labels, "process": index}, s.value, s.timestamp,
                                         s.exemplar) for s in family.samples)
    for name, kind, doc, value in own:
        metric = Metric(name, doc, kind)
        metric.samples.append(Sample(name + ("_total" if kind == "counter" else ""), {}, float(value)))
        families[name] = metric

    class _Families:
        def collect(self) -> list[Metric]:
            return list(families.values())

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families())
    return generate_latest(registry)
