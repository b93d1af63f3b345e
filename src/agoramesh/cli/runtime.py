"""What the long-running commands (``node``, ``up``, ``watch``, ``a2a``) share: signals and
endpoints (metrics, the HTTP API, the A2A bridge)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import re
import signal
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from types import ModuleType
from typing import TYPE_CHECKING

from agoramesh.agent import AgentNode
from agoramesh.api.server import HttpApi, validate_token
from agoramesh.bus.server import EmbeddedServer
from agoramesh.cli.output import warn
from agoramesh.config import Environment, JetStreamConfig
from agoramesh.console.app import Console
from agoramesh.console.feed import console_feed
from agoramesh.errors import ConfigError
from agoramesh.monitoring.http import MetricsServer
from agoramesh.observability import tracing
from agoramesh.protocols.allocation.dispatch import Dispatcher

if TYPE_CHECKING:
    from agoramesh.bridges.a2a_server import A2AServer

__all__ = ("Endpoints", "a2a_bridge", "add_a2a_port_option", "add_api_token_option",
           "add_jetstream_options", "add_otlp_option", "add_sign_all_option", "api_token",
           "jetstream_config", "on_signals", "parse_size", "serve_a2a", "serve_endpoints",
           "traced", "with_sign_all")

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2,
          "mib": 1024**2, "g": 1000**3, "gb": 1000**3, "gib": 1024**3, "t": 1000**4,
          "tb": 1000**4, "tib": 1024**4}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")


def parse_size(text: str) -> int:
    """``512MiB``, ``2GB``, ``1048576`` → bytes (an argparse type: a bad size is a usage error)."""
    match = _SIZE.fullmatch(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 512MiB, 2GiB, 100000)")
    return int(float(match.group(1)) * _UNITS[unit])


def add_jetstream_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The JetStream store of a command that starts seeds (``up``, ``node``)."""
    parser.add_argument("--no-jetstream", action="store_true",
                        help="seeds run no JetStream: no durable jobs on this mesh")
    parser.add_argument("--js-max-file", type=parse_size, metavar="SIZE",
                        default=JetStreamConfig().max_file,
                        help="JetStream file store limit per seed (default 2GiB)")
    parser.add_argument("--js-max-memory", type=parse_size, metavar="SIZE",
                        default=JetStreamConfig().max_memory,
                        help="JetStream memory store limit per seed (default 64MiB)")


def jetstream_config(args: argparse.Namespace) -> JetStreamConfig | None:
    """What :func:`add_jetstream_options` asked for; None with --no-jetstream."""
    if args.no_jetstream:
        return None
    return JetStreamConfig(max_file=args.js_max_file, max_memory=args.js_max_memory)


def add_sign_all_option(parser: argparse.ArgumentParser) -> None:
    """``--sign-all`` for a command that runs agents (``up``, ``node``)."""
    parser.add_argument("--sign-all", action="store_true",
                        help="sign every envelope (non-repudiation) and accept signed ones "
                             "only; set it on every node of the mesh "
                             "(or AGORAMESH_SIGN_ALL=1)")


def with_sign_all(args: argparse.Namespace, env: Environment) -> Environment:
    """``env`` with ``--sign-all`` applied (the variable AGORAMESH_SIGN_ALL does the same)."""
    return replace(env, sign_all=True) if args.sign_all else env


def add_otlp_option(parser: argparse.ArgumentParser) -> None:
    """``--otlp-endpoint`` or ``--propagate-traces`` for a command that runs agents (``up``,
    ``node``)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--otlp-endpoint", metavar="URL",
                       help="send OpenTelemetry traces to this OTLP/HTTP collector, e.g. "
                            "http://localhost:4318/v1/traces (needs the otel extra)")
    group.add_argument("--propagate-traces", action="store_true",
                       help="carry W3C trace context through this process without recording "
                            "or sending spans: what others record on either side joins one "
                            "trace (needs the otel extra)")


@contextlib.contextmanager
def traced(args: argparse.Namespace, env: Environment, service_name: str) -> Iterator[None]:
    """Tracing for the command while inside, as ``--otlp-endpoint``, ``--propagate-traces``
    (and the tests' ``AGORAMESH_TRACE_CAPTURE``) ask; nothing is set up without one. The
    spans still batched are sent on exit. ConfigError without the otel extra."""
    if not tracing.configure(service_name, endpoint=args.otlp_endpoint,
                             capture=env.trace_capture, propagate=args.propagate_traces):
        yield
        return
    try:
        yield
    finally:
        tracing.shutdown()


def add_api_token_option(parser: argparse.ArgumentParser) -> None:
    """``--api-token`` for a command that serves the HTTP API (``--http-port``) or A2A."""
    parser.add_argument("--api-token", metavar="TOKEN",
                        help="require 'Authorization: Bearer TOKEN' on the HTTP API (every "
                             "route but /api/health) and on A2A (all but the agent cards); "
                             "at least 16 characters; default $AGORAMESH_API_TOKEN, which "
                             "other users cannot see in ps")


def add_a2a_port_option(parser: argparse.ArgumentParser) -> None:
    """``--a2a-port`` for a command that runs agents (``node``, ``up``)."""
    parser.add_argument("--a2a-port", type=int, metavar="PORT",
                        help="serve the mesh's agents as A2A agents here (the mesh at /, "
                             "each agent at /agents/<name>/; needs agoramesh[a2a]); 0 picks "
                             "a free port")


def api_token(args: argparse.Namespace, env: Environment) -> str | None:
    """The bearer token of the HTTP API and of A2A: ``--api-token``, else
    ``$AGORAMESH_API_TOKEN``, else None.

    Checked before anything starts; an endpoint with no token beyond loopback gets a warning.
    """
    served = [name for name, port in (("the HTTP API", getattr(args, "http_port", None)),
                                      ("A2A", getattr(args, "a2a_port", None)))
              if port is not None]
    if not served:
        if args.api_token is not None:
            raise ConfigError("--api-token needs --http-port or --a2a-port")
        return None
    token = args.api_token if args.api_token is not None else env.api_token
    if token is not None:
        return validate_token(token)
    if not _is_loopback(args.host):
        warn(f"WARNING: {' and '.join(served)} on {args.host} has no token: anyone who can "
             f"reach it submits work as this node. Set AGORAMESH_API_TOKEN or --api-token "
             f"(docs/SECURITY.md).")
    return None


def a2a_bridge() -> ModuleType:
    """:mod:`agoramesh.bridges.a2a_server`, or a one-line ConfigError naming the extra."""
    try:
        import agoramesh.bridges.a2a_server as bridge
    except ImportError as exc:
        raise ConfigError(f"A2A needs an extra package: pip install 'agoramesh[a2a]' "
                          f"({exc.name} missing)") from None
    return bridge


@contextlib.asynccontextmanager
async def serve_a2a(dispatcher: Dispatcher, *, host: str, port: int,
                    token: str | None) -> AsyncIterator[A2AServer]:
    """The A2A bridge over ``dispatcher`` on ``host:port`` (0: a free port) until exit."""
    server: A2AServer = a2a_bridge().A2AServer(dispatcher, host=host, port=port, token=token)
    async with server:
        yield server


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a name (or "" for every interface) may resolve to anything
        return False


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
    a2a: A2AServer | None = None


@contextlib.asynccontextmanager
async def serve_endpoints(*, host: str, metrics_port: int | None, http_port: int | None,
                          api_agent: AgentNode | None, agents: Iterable[AgentNode] = (),
                          servers: Iterable[EmbeddedServer] = (),
                          api_token: str | None = None,
                          a2a_port: int | None = None) -> AsyncIterator[Endpoints]:
    """Serve /metrics (``agents`` and ``servers``), and the HTTP API (with the web console,
    which draws ``servers``) and A2A of ``api_agent``.

    A port of None serves nothing; 0 picks a free one. All stop on exit, A2A and the API
    first. ``api_token``: the bearer token the API and A2A require (None: open).
    """
    servers = tuple(servers)
    async with contextlib.AsyncExitStack() as stack:
        metrics = api = a2a = None
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
            feed = await stack.enter_async_context(console_feed(api_agent.bus, servers))
            api = HttpApi(api_agent.dispatcher, host=host, port=http_port,
                          agent_id=api_agent.agent_id, token=api_token, mounts=(Console(feed),))
            feed.activity = api.activity
            await stack.enter_async_context(api)
            if metrics is not None:
                metrics.collector.add_api(api, agent=api_agent.config.name)
        if a2a_port is not None:
            if api_agent is None:
                raise ConfigError("A2A needs an agent to serve it")
            a2a = await stack.enter_async_context(serve_a2a(
                api_agent.dispatcher, host=host, port=a2a_port, token=api_token))
            if metrics is not None:
                metrics.collector.add_api(a2a, agent=api_agent.config.name, kind="a2a")
        yield Endpoints(metrics=metrics, api=api, a2a=a2a)
