"""Seeds found by mDNS on loopback: announced, found, filtered by mesh and operator, and
seeds that started alone routed to each other (agoramesh.bus.mdns).

Every test names its own mesh, so runs on one machine at the same time do not meet.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import pytest_asyncio
from zeroconf import IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from agoramesh.bus.mdns import SERVICE, MdnsDiscovery, SeedAd, follow_seeds, operator_fingerprint
from agoramesh.bus.server import EmbeddedServer
from agoramesh.config import ServerConfig
from agoramesh.errors import ConfigError, ServerError
from agoramesh.testing import assert_stopped, wait_until

LOOPBACK = ("127.0.0.1",)


def _mesh() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


def test_an_ad_round_trips_through_its_txt_record() -> None:
    ad = SeedAd(name="s1-1-host", mesh="m", server="s1", cluster="127.0.0.1:4248",
                leaf="127.0.0.1:7422", operator=operator_fingerprint("OABC"))
    properties = {key.encode(): value.encode() for key, value in ad.properties().items()}
    assert SeedAd.parse(f"s1-1-host.{SERVICE}", properties) == ad
    assert len(ad.operator) == 16 and operator_fingerprint("") == ""
    assert operator_fingerprint("OABC") != operator_fingerprint("OABD")


@pytest.mark.parametrize(("change", "why"), [
    ({b"v": b"2"}, "version"),
    ({b"cluster": b"no-port"}, "host:port"),
    ({b"leaf": b"127.0.0.1:99999"}, "host:port"),
    ({b"mesh": b""}, "no mesh"),
    ({b"server": None}, "no server"),
])
def test_a_record_that_does_not_parse_says_why(change: dict[bytes, bytes | None],
                                               why: str) -> None:
    properties: dict[bytes, bytes | None] = {
        b"v": b"1", b"mesh": b"m", b"server": b"s1", b"cluster": b"127.0.0.1:1",
        b"leaf": b"127.0.0.1:2"} | change
    with pytest.raises(ValueError, match=why):
        SeedAd.parse("x." + SERVICE, properties)


def test_bad_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="--mesh"):
        MdnsDiscovery(mesh="")
    with pytest.raises(ConfigError, match="IPv4 address"):
        MdnsDiscovery(mesh="m", interfaces=("eth0",))


Seeds = Callable[[str], Awaitable[EmbeddedServer]]


@pytest_asyncio.fixture
async def seeds(tmp_path: Path) -> AsyncIterator[Seeds]:
    """``await seed(name)``: a seed (no JetStream) started alone; all stopped after."""
    started: list[EmbeddedServer] = []

    async def make(name: str) -> EmbeddedServer:
        server = EmbeddedServer(ServerConfig(name=name, data_dir=tmp_path / name))
        started.append(server)
        await server.start()
        return server

    try:
        yield make
    finally:
        pids = [server.pid for server in started]
        await asyncio.gather(*(server.stop(grace=2.0) for server in started))
        assert_stopped(pids)


@pytest.mark.integration
async def test_a_finder_keeps_only_its_mesh_and_operator(seeds: Seeds) -> None:
    mesh, other = _mesh(), _mesh()
    ours, theirs, secured = [await seeds(name) for name in ("ours", "theirs", "secured")]
    async with (MdnsDiscovery(mesh=mesh, interfaces=LOOPBACK) as a,
                MdnsDiscovery(mesh=other, interfaces=LOOPBACK) as b,
                MdnsDiscovery(mesh=mesh, operator="0123456789abcdef", interfaces=LOOPBACK) as c):
        await asyncio.gather(a.announce(ours), b.announce(theirs), c.announce(secured))
        async with MdnsDiscovery(mesh=mesh, interfaces=LOOPBACK) as finder:
            found = await finder.find(10.0, settle=1.5)
            assert [ad.server for ad in found] == ["ours"]
            assert found[0].cluster == ours.cluster_address
            assert found[0].leaf == ours.leaf_address
            await wait_until(lambda: finder.skipped["other_mesh"] >= 1
                             and finder.skipped["other_operator"] >= 1, timeout=5.0)
            await asyncio.sleep(1.0)  # both instances' later answers and updates: not counted
            assert finder.skipped == {"other_mesh": 1, "other_operator": 1}
        async with MdnsDiscovery(mesh=mesh, operator="0123456789abcdef",
                                 interfaces=LOOPBACK) as trusting:
            found = await trusting.find(10.0, settle=1.5)
            assert [ad.server for ad in found] == ["secured"]


@pytest.mark.integration
async def test_nothing_heard_is_a_clear_error_naming_what_was_looked_for() -> None:
    mesh = _mesh()
    async with MdnsDiscovery(mesh=mesh, operator="feedfacefeedface",
                             interfaces=LOOPBACK) as finder:
        with pytest.raises(ServerError) as raised:
            await finder.find(0.5)
        # Seeds of other meshes (other tests on this machine) are named as skipped, if any.
        assert str(raised.value).startswith(
            f"nothing heard within 0.5 s from a seed of mesh {mesh!r} (operator "
            f"feedfacefeedface) announcing {SERVICE} on 127.0.0.1")
        assert await finder.find(0.2, required=False) == []


@pytest.mark.integration
async def test_a_malformed_announcement_is_skipped_and_counted() -> None:
    mesh = _mesh()
    zc = AsyncZeroconf(interfaces=list(LOOPBACK), ip_version=IPVersion.V4Only)
    name = f"bogus-{uuid.uuid4().hex[:6]}"
    info = AsyncServiceInfo(SERVICE, f"{name}.{SERVICE}", port=1,
                            addresses=[socket.inet_aton("127.0.0.1")], server=f"{name}.local.",
                            properties={"v": "1", "mesh": mesh, "server": "x",
                                        "cluster": "not an address", "leaf": "127.0.0.1:2"})
    await zc.async_register_service(info)
    try:
        async with MdnsDiscovery(mesh=mesh, interfaces=LOOPBACK) as finder:
            await wait_until(lambda: finder.skipped["malformed"] >= 1, timeout=10.0)
            assert await finder.find(0.2, required=False) == []
    finally:
        await zc.async_unregister_service(info)
        await zc.async_close()


@pytest.mark.integration
async def test_two_seeds_that_started_alone_route_to_each_other(
        seeds: Seeds) -> None:
    """Both found nobody (they started at the same moment): each announces, hears the other
    and one reload later they are one cluster."""
    mesh = _mesh()
    first, second = [await seeds(name) for name in ("first", "second")]
    async with (MdnsDiscovery(mesh=mesh, interfaces=LOOPBACK) as one,
                MdnsDiscovery(mesh=mesh, interfaces=LOOPBACK) as two):
        await asyncio.gather(one.announce(first), two.announce(second))
        followers = [asyncio.ensure_future(follow_seeds(first, one)),
                     asyncio.ensure_future(follow_seeds(second, two))]
        try:
            routed = await first.wait_routes(1, timeout=15.0)
            assert routed == {"second"}
            assert await second.wait_routes(1, timeout=5.0) == {"first"}
        finally:
            for follower in followers:
                follower.cancel()
            await asyncio.wait(followers)
