"""A real Prometheus server scrapes a local mesh: targets up, an auction counted."""

from __future__ import annotations

from pathlib import Path

import pytest

from agoramesh.monitoring.http import MetricsServer
from agoramesh.nodes.task import TaskStatus
from agoramesh.testing import wait_until
from agoramesh.testing.plugin import AgentFactory, MeshFactory
from agoramesh.testing.processes import alive
from agoramesh.testing.prometheus import PrometheusServer

pytestmark = pytest.mark.integration


async def test_prometheus_scrapes_the_mesh_and_sees_the_auction(
        tmp_path: Path, mesh_factory: MeshFactory, agent_factory: AgentFactory) -> None:
    mesh = await mesh_factory(seeds=3)
    seed1, seed2, _ = mesh.seeds
    boss = await agent_factory(seed1.client_url, "boss", ["math.evaluate"])
    worker = await agent_factory(seed2.client_url, "worker", ["echo"])
    # Two endpoints, as two processes would have: boss and the servers, the worker alone.
    endpoints = [MetricsServer(port=0), MetricsServer(port=0)]
    endpoints[0].collector.add_agent(boss)
    for server in mesh.servers:
        endpoints[0].collector.add_server(server)
    endpoints[1].collector.add_agent(worker)
    try:
        for endpoint in endpoints:
            await endpoint.start()
        targets = [endpoint.url.removeprefix("http://") for endpoint in endpoints]
        async with PrometheusServer(tmp_path / "prometheus", {"agoramesh": targets},
                                    interval=0.5) as prometheus:
            pid = prometheus.pid
            await wait_until(lambda: _all_up(prometheus, len(targets)), timeout=20, interval=0.2)

            await wait_until(lambda: worker.agent_id in boss.directory.capable("echo"),
                             timeout=5)
            result = await boss.dispatcher.submit("echo", {"text": "scrape me"}, timeout=5)
            assert result.status is TaskStatus.COMPLETED

            auctions = 'sum(agoramesh_auctions_total{agent="boss",outcome="awarded"})'
            tasks = 'sum(agoramesh_tasks_total{agent="worker",outcome="completed"})'
            for query in (auctions, tasks):  # each target's next scrape brings its counter
                await wait_until(lambda q=query: _positive(prometheus, q), timeout=20,
                                 interval=0.2)
                assert await prometheus.value(query) == 1
            assert await prometheus.value("sum(agoramesh_server_up)") == 3
            assert await prometheus.value(
                'histogram_quantile(0.5, sum by (le) '
                '(agoramesh_auction_duration_seconds_bucket))') is not None
        assert pid is not None and not alive(pid)
    finally:
        for endpoint in endpoints:
            await endpoint.stop()


async def _all_up(prometheus: PrometheusServer, count: int) -> bool:
    targets = await prometheus.targets()
    return len(targets) == count and all(t["health"] == "up" for t in targets)


async def _positive(prometheus: PrometheusServer, query: str) -> bool:
    found = await prometheus.value(query)
    return found is not None and found > 0
