"""``agoramesh node`` and ``agoramesh agents`` as processes: joining, eviction, listing."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agoramesh.bus import Identity
from agoramesh.config import BusConfig
from agoramesh.nodes.backends.base import Backend
from agoramesh.nodes.capability import Capability
from agoramesh.nodes.node import AgentNode, NodeConfig
from agoramesh.testing import AGORAMESH, NodeProcess, alive, wait_until

pytestmark = pytest.mark.e2e

HEARTBEAT = 0.5


class _NullBackend(Backend):
    """The observer only watches the directory; it is never given work."""

    type = "null"

    def chat(self, messages: Any) -> Any:  # pragma: no cover - never called
        raise NotImplementedError


@pytest.fixture
def processes() -> Iterator[list[NodeProcess]]:
    started: list[NodeProcess] = []
    yield started
    for node in started:
        node.reap()


async def test_node_joins_by_bootstrap_and_is_evicted_after_sigkill(
        tmp_path: Path, processes: list[NodeProcess]) -> None:
    seed = NodeProcess(tmp_path / "a", "--name", "alpha", "--heartbeat", str(HEARTBEAT))
    processes.append(seed)
    observer = AgentNode(Identity.generate(),
                         NodeConfig(name="observer", capabilities=(Capability(name="watch"),),
                                    heartbeat_interval=HEARTBEAT),
                         _NullBackend(), BusConfig(servers=(seed.ready["client"],)))
    await observer.start()
    try:
        await wait_until(lambda: seed.ready["id"] in observer.directory, timeout=3)
        joiner = NodeProcess(tmp_path / "b", "--name", "beta", "--heartbeat", str(HEARTBEAT),
                             "--bootstrap", seed.ready["cluster"], "--capability", "echo")
        processes.append(joiner)
        # Seen within two heartbeats of the joiner being ready.
        await wait_until(lambda: joiner.ready["id"] in observer.directory,
                         timeout=2 * HEARTBEAT)
        entry = observer.directory.get(joiner.ready["id"])
        assert entry is not None and [c.name for c in entry.card.capabilities] == ["echo"]

        listing = await asyncio.to_thread(subprocess.run, [
            *AGORAMESH, "agents", "--server", seed.ready["client"], "--json", "--timeout",
            "1"], capture_output=True, text=True, timeout=30, check=False)
        assert listing.returncode == 0, listing.stderr
        names = {agent["name"] for agent in json.loads(listing.stdout)}
        assert {"alpha", "beta", "observer"} <= names

        joiner.stop(signal.SIGKILL)
        await wait_until(lambda: joiner.ready["id"] not in observer.directory,
                         timeout=3 * HEARTBEAT + 1)
        await wait_until(lambda: not alive(int(joiner.ready["pid"])), timeout=5)
    finally:
        await observer.stop(grace=1)
    assert seed.stop() == 0


def test_node_flags_errors_are_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "AGORAMESH_HOME": str(tmp_path)}
    result = subprocess.run([*AGORAMESH, "node", "--name", "x", "--type", "offline",
                             "--capability", "no.such.skill"], env=env, capture_output=True,
                            text=True, timeout=30, check=False)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "offline agents offer" in result.stderr
    result = subprocess.run([*AGORAMESH, "agents", "--server", "nats://127.0.0.1:1"],
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 1 and result.stderr.startswith("agoramesh: error: cannot connect")
