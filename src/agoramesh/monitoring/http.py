"""``/metrics`` and ``/healthz`` over HTTP: one endpoint per process, every hosted agent.

``GET /metrics`` is the Prometheus text format (OpenMetrics when the scraper
asks for it); ``GET /healthz`` is JSON, 200 when every attached agent is
running with its bus connected and every embedded server answers its own
``/healthz``, else 503 with the problems listed. Both poll the embedded
servers' monitoring ports first (bounded by ``poll_timeout``).
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from agoramesh.api.web import WebServer
from agoramesh.monitoring.metrics import MeshCollector, new_registry

__all__ = ("MetricsServer",)


class MetricsServer(WebServer):
    """Serves a :class:`MeshCollector` (``server.collector``: attach agents and servers)."""

    what = "the metrics endpoint"
    serves = "metrics"

    def __init__(self, collector: MeshCollector | None = None, *, host: str = "127.0.0.1",
                 port: int = 0, poll_timeout: float = 1.0) -> None:
        super().__init__(host=host, port=port, shutdown_timeout=1.0)
        self.collector = collector or MeshCollector()
        self.registry = new_registry(self.collector)
        self.poll_timeout = poll_timeout

    def application(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/", self._index)
        return app

    async def _metrics(self, request: web.Request) -> web.Response:
        await self.collector.refresh(self.poll_timeout)
        if "application/openmetrics-text" in request.headers.get("Accept", ""):
            body, content_type = generate_openmetrics(self.registry), OPENMETRICS  # type: ignore[no-untyped-call]
        else:
            body, content_type = generate_latest(self.registry), CONTENT_TYPE_LATEST
        response = web.Response(body=body)
        response.headers["Content-Type"] = content_type
        return response

    async def _healthz(self, _: web.Request) -> web.Response:
        await self.collector.refresh(self.poll_timeout)
        health = self.collector.health()
        return web.json_response(health, status=200 if health["status"] == "ok" else 503)

    async def _index(self, _: web.Request) -> web.Response:
        return web.Response(text="agoramesh: /metrics (Prometheus), /healthz (JSON)\n")
