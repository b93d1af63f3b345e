"""Every metric the agoramesh Grafana dashboard queries is exported by a live node.

The node's server runs JetStream (a standalone seed, as ``agoramesh up --seeds 1``
does) with the job store created: the durable-job panels read the store's gauges,
which a process exports only while JetStream answers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from dashboard_queries import dashboard_metric_names
from prometheus_client.parser import text_string_to_metric_families

from agoramesh.bus.bus import Bus
from agoramesh.bus.identity import Identity
from agoramesh.bus.jetstream import JetStream
from agoramesh.bus.server import EmbeddedServer
from agoramesh.config import BusConfig, JetStreamConfig, JobsConfig, ServerConfig
from agoramesh.monitoring.http import MetricsServer
from agoramesh.nodes.task import TaskStatus
from agoramesh.testing import wait_until
from agoramesh.testing.plugin import AgentFactory, running_server

DASHBOARD = (Path(__file__).resolve().parents[2] / "src" / "agoramesh" / "monitoring"
             / "dashboards" / "agoramesh.json")


@pytest_asyncio.fixture
async def js_server(tmp_path: Path) -> AsyncIterator[EmbeddedServer]:
    """A standalone seed running JetStream, the job stream and result store created."""
    async with running_server(ServerConfig(name="solo", data_dir=tmp_path / "solo",
                                           jetstream=JetStreamConfig(),
                                           standalone=True)) as server:
        async with Bus(Identity.generate(), BusConfig(servers=(server.client_url,))) as bus:
            await JetStream(bus, JobsConfig(replicas=1)).ensure()
        yield server


@pytest.mark.integration
async def test_every_dashboard_metric_is_in_a_live_scrape(
        js_server: EmbeddedServer, agent_factory: AgentFactory) -> None:
    url = js_server.client_url
    boss = await agent_factory(url, "boss", ["math.evaluate"])
    worker = await agent_factory(url, "worker", ["echo"])
    async with MetricsServer(port=0) as endpoint:
        for agent in (boss, worker):
            endpoint.collector.add_agent(agent)
        endpoint.collector.add_server(js_server)
        await wait_until(lambda: worker.agent_id in boss.directory.capable("echo"), timeout=5)
        result = await boss.dispatcher.submit("echo", {"text": "dashboards"}, timeout=5)
        assert result.status is TaskStatus.COMPLETED
        async with aiohttp.ClientSession() as session, \
                session.get(endpoint.url + "/metrics") as response:
            exposition = await response.text()
    families: set[str] = set()
    sampled: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        families.add(family.name)
        sampled |= {sample.name for sample in family.samples}
    queried = dashboard_metric_names(DASHBOARD)
    assert len(queried) >= 15
    # Families are named without _total; what a query names is a sample name or a histogram.
    missing = {name for name in queried
               if name not in sampled and name not in families
               and name.removesuffix("_total") not in families}
    assert not missing, sorted(missing)
    # And the ones an auction, a task and the job store move have values, not just a
    # declaration.
    for name in ("agoramesh_auctions_total", "agoramesh_tasks_total",
                 "agoramesh_auction_duration_seconds_bucket", "agoramesh_agent_up",
                 "agoramesh_jobs_total", "agoramesh_job_queue",
                 "agoramesh_job_results_stored"):
        assert name in sampled
