"""``agoramesh node`` and ``agoramesh agents`` as processes: joining, eviction, listing,
the HTTP API's token."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agoramesh.agent import AgentNode
from agoramesh.bus import Identity
from agoramesh.cli.main import build_parser
from agoramesh.cli.node import _backend_config
from agoramesh.config import BusConfig, Environment
from agoramesh.nodes.backends.base import Backend
from agoramesh.nodes.capability import Capability
from agoramesh.nodes.node import NodeConfig
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


API_TOKEN = "e2e-api-token-0123456789abcdef"


def _node_fails(tmp_path: Path, *args: str, token: str | None = None) -> list[str]:
    """Run ``agoramesh node`` expecting exit 1 before it starts anything; its stderr lines."""
    env = {key: value for key, value in os.environ.items() if key != "AGORAMESH_API_TOKEN"}
    env["AGORAMESH_HOME"] = str(tmp_path)
    if token is not None:
        env["AGORAMESH_API_TOKEN"] = token
    result = subprocess.run([*AGORAMESH, "node", "--name", "x", *args], env=env,
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 1, result.stderr
    return result.stderr.splitlines()


def test_node_api_token_errors_are_one_line(tmp_path: Path) -> None:
    short = "only-15-chars.."
    expected = ("agoramesh: error: the HTTP API token must be at least 16 characters "
                "(e.g. from `openssl rand -hex 32`)")
    assert _node_fails(tmp_path, "--http-port", "0", "--api-token", short) == [expected]
    assert _node_fails(tmp_path, "--http-port", "0", token=short) == [expected]
    assert _node_fails(tmp_path, "--http-port", "0", "--api-token", "") == [expected]
    assert _node_fails(tmp_path, "--api-token", API_TOKEN) == [
        "agoramesh: error: --api-token needs --http-port or --a2a-port"]
    up = subprocess.run([*AGORAMESH, "up", "--http-port", "0", "--api-token", short],
                        capture_output=True, text=True, timeout=30, check=False)
    assert (up.returncode, up.stderr.splitlines()) == (1, [expected])  # before any server
    # The token is checked before anything starts, so a later bad flag shows what came first.
    bad_flag = ("--capability", "no.such.skill")
    [flag_wins] = _node_fails(tmp_path, "--http-port", "0", "--api-token", API_TOKEN, *bad_flag,
                              token=short)
    assert "offline agents offer" in flag_wins
    warning, error = _node_fails(tmp_path, "--host", "0.0.0.0", "--http-port", "0", *bad_flag)
    assert warning.startswith("WARNING: the HTTP API on 0.0.0.0 has no token: anyone")
    assert "offline agents offer" in error
    [error] = _node_fails(tmp_path, "--host", "0.0.0.0", "--http-port", "0", *bad_flag,
                          token=API_TOKEN)
    assert "offline agents offer" in error


async def test_node_http_api_requires_the_token_from_the_environment(
        tmp_path: Path, processes: list[NodeProcess]) -> None:
    node = NodeProcess(tmp_path, "--name", "guarded", "--http-port", "0", "--metrics-port", "0",
                       "--a2a-port", "0", env={"AGORAMESH_API_TOKEN": API_TOKEN})
    processes.append(node)
    url = node.ready["http"]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http:
        async with http.get(f"{url}/api/health") as response:
            assert response.status == 200
        async with http.get(f"{url}/api/agents") as response:
            assert response.status == 401 and response.headers["WWW-Authenticate"] == "Bearer"
            assert (await response.json())["error"]["type"] == "Unauthorized"
        async with http.get(f"{url}/api/agents",
                            headers={"Authorization": f"Bearer {API_TOKEN}"}) as response:
            assert response.status == 200
            assert node.id in {agent["id"] for agent in (await response.json())["agents"]}
        async with http.post(f"{url}/api/tasks", json={},
                             headers={"Authorization": f"Bearer {API_TOKEN}x"}) as response:
            assert response.status == 401
        async with http.post(node.ready["a2a"], json={}) as response:  # A2A: the same token
            assert response.status == 401 and response.headers["WWW-Authenticate"] == "Bearer"
        async with http.get(node.ready["metrics"]) as response:
            refused = sorted(line for line in (await response.text()).splitlines()
                             if line.startswith("agoramesh_http_unauthorized_total{"))
    assert refused == ['agoramesh_http_unauthorized_total{agent="guarded",api="a2a"} 1.0',
                       'agoramesh_http_unauthorized_total{agent="guarded",api="http"} 2.0']
    assert node.stop() == 0
    assert API_TOKEN not in json.dumps(node.ready) and API_TOKEN not in node.stderr


def test_backend_timeout_reaches_the_backend_and_bad_values_are_one_line(
        tmp_path: Path) -> None:
    env = Environment.read({"AGORAMESH_HOME": str(tmp_path)})
    parsed = build_parser(env).parse_args(["node", "--name", "x", "--type", "a2a", "--a2a-url",
                                           "http://127.0.0.1:9/", "--backend-timeout", "2.5"])
    assert _backend_config(parsed, env, "nats://127.0.0.1:4222").timeout == 2.5
    default = build_parser(env).parse_args(["node", "--name", "x"])
    assert _backend_config(default, env, "nats://127.0.0.1:4222").timeout == 60.0
    for bad in ("0", "-1", "nan"):
        assert _node_fails(tmp_path, "--backend-timeout", bad) == [
            "agoramesh: error: --backend-timeout must be a positive number of seconds"]
