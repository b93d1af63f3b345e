"""``/metrics`` and ``/healthz`` over HTTP: one endpoint per process, every hosted agent.

``GET /metrics`` is the Prometheus text format (OpenMetrics when the scraper
asks for it); ``GET /healthz`` is JSON, 200 when every attached agent is
running with its bus connected and every embedded server answers its own
``/healthz``, else 503 with the problems listed. Both poll the embedded
servers' monitoring ports first (bounded by ``poll_timeout``).
"""

from __future__ import annotations

import logging
import os

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from agoramesh.errors import ConfigError, NotConnected
from agoramesh.observability.metrics import MeshCollector, new_registry

__all__ = ("MetricsServer",)

log = logging.getLogger("agoramesh.metrics")


class MetricsServer:
    """Serves a :class:`MeshCollector` (``server.collector``: attach agents and servers)."""

    def __init__(self, collector: MeshCollector | None = None, *, host: str = "127.0.0.1",
                 port: int = 0, poll_timeout: float = 1.0) -> None:
        if not 0 <= port <= 65535:
            raise ConfigError(f"metrics port must be 0-65535, not {port}")
        self.collector = collector or MeshCollector()
        self.registry = new_registry(self.collector)
        self.host = host
        self.poll_timeout = poll_timeout
        self._requested_port = port
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        """``http://host:port`` once started."""
        if self.port is None:
            raise NotConnected("the metrics endpoint is not started")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def application(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/", self._index)
        return app

    async def start(self) -> None:
        """Listen; a port in use is a one-line ConfigError."""
        if self._runner is not None:
            return
        runner = web.AppRunner(self.application(), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self._requested_port).start()
        except OSError as exc:
            await runner.cleanup()
            reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
            raise ConfigError(f"cannot serve metrics on {self.host}:{self._requested_port}: "
                              f"{reason}") from None
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        log.info("metrics on %s/metrics", self.url)

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        self.port = None

    async def __aenter__(self) -> MetricsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

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
