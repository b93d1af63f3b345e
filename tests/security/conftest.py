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

from agoramesh.agent import AgentNode
from agoramesh.config import EnvelopePolicy
from agoramesh.nodes.capability import Capability
from agoramesh.testing.plugin import AgentFactory


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


@pytest.fixture
def node_factory(agent_factory: AgentFactory) -> NodeFactory:
    """``await node_factory(url, name, capabilities, policy=SMALL, **agent_factory_options)``.

    The plugin's ``agent_factory`` with the envelope policy of the node's bus
    (default :data:`~hostile_support.SMALL`, so oversize fits under the server's limit).
    """
    async def make(url: str, name: str, capabilities: Sequence[str | Capability], *,
                   policy: EnvelopePolicy = SMALL, **options: Any) -> AgentNode:
        return await agent_factory(url, name, capabilities, bus={"envelope": policy},
                                   **options)

    return make


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
