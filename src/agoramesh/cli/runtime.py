"""What the long-running commands (``node``, ``up``, ``watch``) share: signals and endpoints."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass

from agoramesh.bus.server import EmbeddedServer
from agoramesh.errors import ConfigError
from agoramesh.nodes.node import AgentNode
from agoramesh.observability.http import MetricsServer
from agoramesh.protocols.http_api import HttpApi

__all__ = ("Endpoints", "on_signals", "serve_endpoints")


@contextlib.contextmanager
def on_signals(callback: Callable[[], None]) -> Iterator[None]:
    """Call ``callback`` on SIGINT or SIGTERM while inside; the handlers are removed on exit."""
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for signum in signals:
        loop.add_signal_handler(signum, callback)
    try:
        yield
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)


@dataclass(frozen=True, slots=True)
class Endpoints:
    """The HTTP endpoints a command serves; None where not asked for."""

    metrics: MetricsServer | None
    api: HttpApi | None


@contextlib.asynccontextmanager
async def serve_endpoints(*, host: str, metrics_port: int | None, http_port: int | None,
                          api_agent: AgentNode | None, agents: Iterable[AgentNode] = (),
                          servers: Iterable[EmbeddedServer] = ()) -> AsyncIterator[Endpoints]:
    """Serve /metrics (``agents`` and ``servers``) and the HTTP API of ``api_agent``.

    A port of None serves nothing; 0 picks a free one. Both stop on exit, the API first.
    """
    async with contextlib.AsyncExitStack() as stack:
        metrics = api = None
        if metrics_port is not None:
            metrics = MetricsServer(host=host, port=metrics_port)
            for server in servers:
                metrics.collector.add_server(server)
            for agent in agents:
                metrics.collector.add_agent(agent)
            await stack.enter_async_context(metrics)
        if http_port is not None:
            if api_agent is None:
                raise ConfigError("the HTTP API needs an agent to serve it")
            api = await stack.enter_async_context(
                HttpApi(api_agent.dispatcher, host=host, port=http_port,
                        agent_id=api_agent.agent_id))
        yield Endpoints(metrics=metrics, api=api)
