"""A tiny async client for nats-server's HTTP monitoring endpoints.

Only what readiness needs: ``/healthz``, ``/varz``, ``/routez``, ``/leafz``.
Written on asyncio streams so waiting for a server never blocks the loop.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from agoramesh.errors import ServerError

__all__ = ("MonitorClient",)


class MonitorClient:
    """GETs JSON from one server's monitoring port."""

    def __init__(self, host: str, port: int, *, timeout: float = 2.0) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def get(self, path: str) -> tuple[int, Any]:
        """(status, decoded JSON body) of ``GET path``."""
        async with asyncio.timeout(self.timeout):
            reader, writer = await asyncio.open_connection(self.host, self.port)
            try:
                writer.write(f"GET {path} HTTP/1.0\r\nHost: {self.host}\r\n\r\n".encode())
                await writer.drain()
                raw = await reader.read()
            finally:
                writer.close()
                await writer.wait_closed()
        head, _, body = raw.partition(b"\r\n\r\n")
        try:
            status = int(head.split(b" ", 2)[1])
            return status, json.loads(body) if body else None
        except (IndexError, ValueError) as exc:
            raise ServerError(f"unreadable monitoring reply from {self.url}{path}") from exc

    async def healthy(self, *, server_only: bool = False) -> bool:
        """``/healthz`` answers ok; ``server_only``: JetStream only needs to be enabled,
        not to have a meta leader or healthy streams yet."""
        try:
            status, _ = await self.get("/healthz?js-enabled-only=true" if server_only
                                       else "/healthz")
        except (OSError, TimeoutError, ServerError):
            return False
        return status == 200

    async def varz(self) -> dict[str, Any]:
        return dict((await self.get("/varz"))[1])

    async def route_peers(self) -> set[str]:
        """Names of the servers this one has routes to (pooled routes counted once)."""
        _, data = await self.get("/routez")
        routes = data.get("routes") or []
        return {route.get("remote_name") or route["remote_id"] for route in routes}

    async def leaf_hubs(self) -> list[str]:
        """Names of the servers this one's leafnode connections go to."""
        _, data = await self.get("/leafz")
        return [leaf.get("name", "") for leaf in data.get("leafs") or []]
