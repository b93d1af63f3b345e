"""The embedded nats-server: config, readiness, crash detection, stop with grace then kill."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from agoramesh.bus.server import EmbeddedServer, render_config
from agoramesh.config import ServerConfig, ServerRole
from agoramesh.errors import ServerCrashed, ServerNotFound, ServerStartError
from agoramesh.testing import alive, assert_stopped

pytestmark = pytest.mark.integration


def test_leaf_config_has_one_remote_listing_every_hub(tmp_path: Path) -> None:
    config = ServerConfig(name="leaf", role=ServerRole.LEAF, data_dir=tmp_path,
                          hubs=("127.0.0.1:7001", "127.0.0.1:7002", "10.0.0.3:7003"))
    text = render_config(config)
    assert text.count("remotes") == 1
    assert ('urls: ["nats-leaf://127.0.0.1:7001", "nats-leaf://127.0.0.1:7002", '
            '"nats-leaf://10.0.0.3:7003"]') in text
    assert "cluster" not in text


def test_seed_config_routes_to_bootstrap(tmp_path: Path) -> None:
    config = ServerConfig(name="s", data_dir=tmp_path, bootstrap=("127.0.0.1:6222",))
    text = render_config(config)
    assert 'routes: ["nats-route://127.0.0.1:6222"]' in text
    assert 'listen: "127.0.0.1:-1"' in text


async def test_start_ready_and_stop(nats_server: EmbeddedServer) -> None:
    assert nats_server.pid is not None and alive(nats_server.pid)
    assert nats_server.client_url.startswith("nats://127.0.0.1:")
    assert await nats_server._monitor().healthy()
    assert nats_server.log_path.exists()
    nats_server.check()  # running: no error


async def test_crash_is_detected_and_surfaced(tmp_path: Path) -> None:
    async with EmbeddedServer(ServerConfig(name="crashy", data_dir=tmp_path)) as server:
        seen: list[ServerCrashed] = []
        server.on_crash.append(seen.append)
        pid = server.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        async with asyncio.timeout(5):
            await server.crashed.wait()
        with pytest.raises(ServerCrashed, match=r"crashy \(pid \d+\) exited with code"):
            server.check()
        assert len(seen) == 1
    assert_stopped([pid])


async def test_stop_kills_a_server_that_ignores_sigterm(tmp_path: Path) -> None:
    async with EmbeddedServer(ServerConfig(name="stuck", data_dir=tmp_path)) as server:
        pid = server.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)  # a stopped process cannot act on SIGTERM
        async with asyncio.timeout(10):
            await server.stop(grace=0.3)
        assert_stopped([pid])
        assert not server.crashed.is_set()  # a requested stop is not a crash


async def test_unreachable_bootstrap_is_a_clear_start_error(tmp_path: Path) -> None:
    server = EmbeddedServer(ServerConfig(name="lonely", data_dir=tmp_path,
                                         bootstrap=("127.0.0.1:1",), ready_timeout=1.0))
    with pytest.raises(ServerStartError, match=r"not ready within 1s \(routes to 1 peer"):
        await server.start()
    assert_stopped([server.pid])


async def test_bad_config_crash_during_start(tmp_path: Path) -> None:
    # max_payload above the server's hard limit makes nats-server refuse its config.
    server = EmbeddedServer(ServerConfig(name="bad", data_dir=tmp_path,
                                         max_payload=100 * 1024 * 1024))
    with pytest.raises((ServerCrashed, ServerStartError), match="bad"):
        await server.start()
    assert_stopped([server.pid])


async def test_missing_binary_is_server_not_found(tmp_path: Path) -> None:
    server = EmbeddedServer(ServerConfig(name="nobin", data_dir=tmp_path,
                                         binary=tmp_path / "no-such-nats-server"))
    with pytest.raises(ServerNotFound, match="AGORAMESH_NATS_SERVER"):
        await server.start()
