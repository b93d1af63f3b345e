"""Fixtures of the hostile-input suite: attackers, nodes under attack, unexpected errors.

Helpers (forgeries, the Attacker, exported counters) are in ``hostile_support``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import nats.errors
import pytest
import pytest_asyncio
from hostile_support import SMALL, Attacker, AttackerFactory, NodeFactory

from agoramesh.bus.identity import Identity
from agoramesh.config import BusConfig, EnvelopePolicy
from agoramesh.nodes.backends.base import Backend
from agoramesh.nodes.backends.offline import OfflineBackend
from agoramesh.nodes.capability import Capability
from agoramesh.nodes.catalog import capabilities_for
from agoramesh.nodes.node import AgentNode, NodeConfig


@pytest_asyncio.fixture
async def attacker_factory() -> AsyncIterator[AttackerFactory]:
    """``await attacker_factory(url)`` → a connected :class:`Attacker`, closed after the test."""
    attackers: list[Attacker] = []

    async def make(url: str) -> Attacker:
        attacker = await Attacker.connect(url)
        attackers.append(attacker)
        return attacker

    try:
        yield make
    finally:
        for attacker in attackers:
            await attacker.close()


@pytest_asyncio.fixture
async def node_factory() -> AsyncIterator[NodeFactory]:
    """``await node_factory(url, name, capabilities, policy=SMALL, backend=…, **config)``.

    Like the plugin's ``agent_factory``, plus the envelope policy of the node's
    bus (default :data:`~hostile_support.SMALL`) and ``node_class``.
    ``capabilities`` are offline capability names or Capability objects; nodes
    are stopped after the test.
    """
    nodes: list[AgentNode] = []

    async def make(url: str, name: str, capabilities: Sequence[str | Capability], *,
                   policy: EnvelopePolicy = SMALL, backend: Backend | None = None,
                   identity: Identity | None = None, agent_type: str = "offline",
                   node_class: type[AgentNode] = AgentNode, **settings: Any) -> AgentNode:
        named = [c for c in capabilities if isinstance(c, str)]
        caps = (*capabilities_for("offline", named),
                *(c for c in capabilities if isinstance(c, Capability)))
        extras = {key: settings.pop(key) for key in ("directory", "bid_policy",
                                                      "auction_policy") if key in settings}
        settings.setdefault("heartbeat_interval", 0.2)
        node = node_class(identity or Identity.generate(),
                          NodeConfig(name=name, type=agent_type, capabilities=caps, **settings),
                          backend or OfflineBackend(),
                          BusConfig(servers=(url,), name=name, envelope=policy), **extras)
        await node.start()
        nodes.append(node)
        return node

    try:
        yield make
    finally:
        for node in reversed(nodes):
            await node.stop(grace=1.0)


# -- nothing may fail unexpectedly -----------------------------------------------------


@pytest.fixture
def unexpected_errors(caplog: pytest.LogCaptureFixture) -> Callable[[], list[str]]:
    """``unexpected_errors()`` → what went wrong inside the nodes without being a rejection.

    Catches a handler that raised something other than an AgoraError (the Bus
    logs those with their traceback), an exception escaping a raw NATS
    callback (reported to the client's error callback, e.g. in an
    auctioneer's inbox), and asyncio tasks that died unobserved.
    """
    caplog.set_level(logging.DEBUG, logger="agoramesh.bus")

    def collect() -> list[str]:
        found = []
        for record in caplog.records:
            args = record.args if isinstance(record.args, tuple) else ()
            if record.name.startswith("agoramesh") and record.exc_info and \
                    record.levelno >= logging.WARNING:
                found.append(record.getMessage())
            elif record.name == "agoramesh.bus" and record.msg == "nats client error: %s" \
                    and args and not isinstance(args[0], nats.errors.Error):
                found.append(f"callback raised {type(args[0]).__name__}: "
                             f"{record.getMessage()}")
            elif record.name == "asyncio" and record.levelno >= logging.ERROR:
                found.append(record.getMessage())
        return found

    return collect
