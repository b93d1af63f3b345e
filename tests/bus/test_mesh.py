"""Must-demonstrate 3 and 4: mesh formation, cross-leaf requests, scatter-gather, failover."""

from __future__ import annotations

import asyncio

import pytest

from agoramesh.bus import Bus, Delivery
from agoramesh.bus.mesh import Mesh
from agoramesh.errors import BusError
from agoramesh.testing.plugin import BusFactory, MeshFactory, over_plain_and_tls

pytestmark = pytest.mark.integration


async def _echo(delivery: Delivery) -> None:
    await delivery.respond("task_response", {"echo": delivery.body, "by": delivery.bus.agent_id})


async def _request_until_ok(bus: Bus, subject: str, deadline: float) -> None:
    """Retry a request until it succeeds; TimeoutError after ``deadline`` seconds."""
    async with asyncio.timeout(deadline):
        while True:
            try:
                await bus.request(subject, "task_request", {"ping": 1}, timeout=0.25)
                return
            except BusError:
                await asyncio.sleep(0.02)


@over_plain_and_tls
async def test_mesh_forms_from_one_bootstrap_address_each(mesh_factory: MeshFactory) -> None:
    mesh: Mesh = await mesh_factory(seeds=3, leaves=2)
    first = mesh.seeds[0]
    for seed in mesh.seeds[1:]:
        assert seed.config.bootstrap == (first.cluster_address,)
    # Gossip completed the full mesh: every seed routes to both others.
    for seed in mesh.seeds:
        others = {s.config.name for s in mesh.seeds} - {seed.config.name}
        assert await seed._monitor().route_peers() == others
    for leaf in mesh.leaves:
        assert len(leaf.config.hubs) == 1
        assert await leaf.wait_hub(timeout=2) in {s.config.name for s in mesh.seeds}


@over_plain_and_tls
async def test_signed_request_leaf_to_leaf(mesh_factory: MeshFactory,
                                           bus_factory: BusFactory) -> None:
    mesh = await mesh_factory(seeds=3, leaves=2)
    requester = await bus_factory(mesh.leaves[0].client_url)
    responder = await bus_factory(mesh.leaves[1].client_url)
    subject = responder.subjects.cap("echo")
    await responder.subscribe(subject, _echo, queue=subject)
    await _request_until_ok(requester, subject, deadline=3)
    reply = await requester.request(subject, "task_request", {"n": 42}, timeout=2)
    assert reply.sender == responder.agent_id
    assert reply.to == requester.agent_id
    assert reply.body == {"echo": {"n": 42}, "by": responder.agent_id}
    assert requester.rejections.total() == 0 and responder.rejections.total() == 0


@over_plain_and_tls
async def test_scatter_gather_to_ten_across_the_mesh_closes_early(
        mesh_factory: MeshFactory, bus_factory: BusFactory) -> None:
    mesh = await mesh_factory(seeds=3, leaves=2)
    servers = mesh.servers
    asker = await bus_factory(mesh.leaves[0].client_url)
    responders = [await bus_factory(servers[i % len(servers)].client_url) for i in range(10)]
    subject = asker.subjects.discover
    for bus in responders:
        await bus.subscribe(subject, _echo)
    expected = {bus.agent_id for bus in responders}
    # Interest crosses routes and leaf links asynchronously: gather until it has settled.
    async with asyncio.timeout(5):
        while len(await asker.gather(subject, "discovery", {}, expected=10, timeout=0.5)) < 10:
            pass
    # Its deadline is 10 s: it must close as soon as all 10 answered.
    async with asyncio.timeout(5):
        replies = await asker.gather(subject, "discovery", {"q": 1}, expected=10, timeout=10)
    assert {reply.sender for reply in replies} == expected
    assert len(replies) == 10


async def test_gather_returns_short_count_at_deadline(mesh_factory: MeshFactory,
                                                      bus_factory: BusFactory) -> None:
    mesh = await mesh_factory(seeds=1)
    asker = await bus_factory(mesh.url)
    responder = await bus_factory(mesh.url)
    await responder.subscribe(asker.subjects.discover, _echo)
    replies = await asker.gather(asker.subjects.discover, "discovery", {}, expected=3,
                                 timeout=0.3)
    assert [r.sender for r in replies] == [responder.agent_id]


@over_plain_and_tls
async def test_leaf_fails_over_when_its_seed_dies(mesh_factory: MeshFactory,
                                                  bus_factory: BusFactory) -> None:
    mesh = await mesh_factory(seeds=3, leaves=2)
    leaf1, leaf2 = mesh.leaves
    requester = await bus_factory(leaf1.client_url)
    responder = await bus_factory(leaf2.client_url)
    subject = responder.subjects.cap("echo")
    await responder.subscribe(subject, _echo, queue=subject)
    await _request_until_ok(requester, subject, deadline=3)

    hub_name = await leaf1.wait_hub(timeout=2)
    hub = next(seed for seed in mesh.seeds if seed.config.name == hub_name)
    hub.kill()
    async with asyncio.timeout(5):
        await hub.crashed.wait()
    await _request_until_ok(requester, subject, deadline=3)
    new_hub = await leaf1.wait_hub(timeout=1)
    assert new_hub != hub_name and new_hub in {s.config.name for s in mesh.seeds}
    # The connection to its own embedded leaf never dropped.
    assert requester.is_connected
