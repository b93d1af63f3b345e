"""Node metrics on real servers: what is counted, how it is exposed, /healthz, promtool."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from agoramesh.agent import AgentNode
from agoramesh.bus import Identity
from agoramesh.bus.envelope import seal
from agoramesh.bus.jetstream import JetStream
from agoramesh.bus.server import EmbeddedServer
from agoramesh.errors import ConfigError
from agoramesh.monitoring.metrics import JOB_STORE_METRICS, METRICS, MeshCollector
from agoramesh.nodes.task import TaskStatus
from agoramesh.observability.stats import BUCKETS, AgentMetrics, Histogram
from agoramesh.protocols.auction.policy import AuctionPolicy
from agoramesh.testing import wait_until
from agoramesh.testing.plugin import AgentFactory, BusFactory
from agoramesh.testing.prometheus import promtool_check_metrics

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


# -- recording --------------------------------------------------------------------


def test_histogram_buckets_are_prometheus_le_buckets() -> None:
    histogram = Histogram()
    for seconds in (0.0005, 0.001, 0.0011, 0.3, 100.0):
        histogram.observe(seconds)
    cumulative = dict(histogram.cumulative())
    assert cumulative["0.001"] == 2  # a value on a bound counts in that bound's bucket
    assert cumulative["0.0025"] == 3
    assert cumulative["0.5"] == 4
    assert cumulative["60.0"] == 4
    assert cumulative["+Inf"] == histogram.count == 5
    assert histogram.sum == pytest.approx(100.3026)
    assert [le for le, _ in histogram.cumulative()] == [*map(repr, BUCKETS), "+Inf"]


def test_agent_metrics_totals_and_recent_events_drain() -> None:
    stats = AgentMetrics()
    stats.auction_finished("echo", "awarded", 0.01, task_id="t1", bids=3, winner="U1")
    stats.auction_finished("echo", "no_bidders", 0.5, task_id="t2", bids=0, winner=None)
    stats.bids["echo", "bid"] += 2
    stats.bids["echo", "refuse"] += 1
    stats.task_finished("echo", "completed", 0.002, "t1")
    assert stats.totals() == {
        "auctions": {"awarded": 1, "no_bidders": 1, "overloaded": 0, "failed": 0, "timeout": 0},
        "bids": {"bid": 2, "refuse": 1}}
    events = stats.take_recent()
    assert [(e["kind"], e["outcome"]) for e in events] == [
        ("auction", "awarded"), ("auction", "no_bidders"), ("task", "completed")]
    assert events[0]["bids"] == 3 and events[0]["winner"] == "U1" and events[0]["ms"] == 10.0
    assert stats.take_recent() == []
    for index in range(100):  # bounded between two beats
        stats.task_finished("echo", "failed", 0.001, f"x{index}")
    assert len(stats.take_recent()) == 32


# -- exposition --------------------------------------------------------------------


async def scrape(url: str) -> tuple[bytes, Samples, set[str]]:
    async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        body = await response.read()
    samples: Samples = {}
    families = set()
    for family in text_string_to_metric_families(body.decode()):
        families.add(family.name)
        for sample in family.samples:
            samples[sample.name, frozenset(sample.labels.items())] = sample.value
    return body, samples, families


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest_asyncio.fixture
async def metrics_server() -> AsyncIterator[Any]:
    from agoramesh.monitoring.http import MetricsServer

    server = MetricsServer(port=0)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.mark.integration
async def test_a_live_node_exports_every_family_and_passes_promtool(
        nats_server: EmbeddedServer, agent_factory: AgentFactory, bus_factory: BusFactory,
        metrics_server: Any) -> None:
    url = nats_server.client_url
    # Bids to count: with one agent known it would be awarded directly, without a cfp.
    boss = await agent_factory(url, "boss", ["math.evaluate"],
                               auction_policy=AuctionPolicy(direct_award=False))
    worker = await agent_factory(url, "worker", ["echo", "text.summarize"])
    metrics_server.collector.add_agent(boss)
    metrics_server.collector.add_agent(worker)
    metrics_server.collector.add_server(nats_server)
    await wait_until(lambda: worker.agent_id in boss.directory.capable("echo"), timeout=5)

    auctioned = await boss.dispatcher.submit("echo", {"text": "hello"}, timeout=5)
    assert auctioned.status is TaskStatus.COMPLETED
    bad = await boss.dispatcher.submit("text.summarize", {"text": 5}, strategy="direct",
                                       timeout=5)
    assert bad.status is TaskStatus.FAILED
    client = await bus_factory(url)
    forged = bytearray(seal(Identity.generate(), type="task_request",
                            subject=client.subjects.cap("echo"), body={"text": "x"}))
    forged[-1] ^= 1
    await client.nats.publish(client.subjects.cap("echo"), bytes(forged))
    await client.nats.flush()
    await wait_until(lambda: sum(worker.bus.rejections.values()) == 1, timeout=5)

    body, samples, families = await scrape(metrics_server.url)
    checked = promtool_check_metrics(body)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # The job store's families need JetStream, which this server does not run.
    exported = {name.removesuffix("_total") if METRICS[name][0] == "counter" else name
                for name in METRICS if name not in JOB_STORE_METRICS}
    assert exported <= families
    assert not JOB_STORE_METRICS & families

    assert value(samples, "agoramesh_agent_up", agent="boss") == 1
    assert value(samples, "agoramesh_agent_info", agent="worker", agent_id=worker.agent_id,
                 type="offline", version=worker.card.version) == 1
    assert value(samples, "agoramesh_auctions_total", agent="boss", capability="echo",
                 outcome="awarded") == 1
    assert value(samples, "agoramesh_auction_duration_seconds_count", agent="boss",
                 capability="echo") == 1
    assert value(samples, "agoramesh_auction_bids_received_total", agent="boss",
                 capability="echo") == 1
    assert value(samples, "agoramesh_bids_total", agent="worker", capability="echo",
                 decision="bid") == 1
    assert value(samples, "agoramesh_awards_total", agent="worker", capability="echo",
                 decision="accept") == 1
    assert value(samples, "agoramesh_tasks_total", agent="worker", capability="echo",
                 outcome="completed") == 1
    assert value(samples, "agoramesh_tasks_total", agent="worker",
                 capability="text.summarize", outcome="rejected") == 1
    assert value(samples, "agoramesh_task_duration_seconds_count", agent="worker",
                 capability="echo") == 1
    tokens = value(samples, "agoramesh_tokens_total", agent="worker", backend="offline",
                   model="offline", kind="input")
    assert tokens == worker.status.tokens_used - value(
        samples, "agoramesh_tokens_total", agent="worker", backend="offline", model="offline",
        kind="output") > 0
    assert value(samples, "agoramesh_envelopes_rejected_total", agent="worker",
                 reason="bad_signature") == 1
    assert value(samples, "agoramesh_envelopes_sent_total", agent="worker",
                 type="bid") == 1
    assert value(samples, "agoramesh_envelopes_received_total", agent="worker",
                 type="award") == 1
    assert value(samples, "agoramesh_task_capacity", agent="worker") == 8
    assert value(samples, "agoramesh_peers", agent="boss") >= 1
    assert value(samples, "agoramesh_server_up", server=nats_server.config.name,
                 role="seed") == 1
    assert value(samples, "agoramesh_server_connections", server=nats_server.config.name) >= 3
    assert value(samples, "process_resident_memory_bytes") > 0


@pytest.mark.integration
async def test_in_flight_gauges_follow_running_work(
        nats_server: EmbeddedServer, agent_factory: AgentFactory, metrics_server: Any) -> None:
    runner = await agent_factory(nats_server.client_url, "runner", ["code.run.python"])
    metrics_server.collector.add_agent(runner)
    work = asyncio.ensure_future(runner.dispatcher.submit(
        "code.run.python", {"code": "import time; time.sleep(1.5)", "timeout": 5},
        strategy="direct", timeout=10))
    try:
        await wait_until(lambda: runner.status.in_flight == 1, timeout=5)
        _, samples, _ = await scrape(metrics_server.url)
        assert value(samples, "agoramesh_tasks_in_flight", agent="runner") == 1
    finally:
        result = await work
    assert result.status is TaskStatus.COMPLETED
    _, samples, _ = await scrape(metrics_server.url)
    assert value(samples, "agoramesh_tasks_in_flight", agent="runner") == 0


@pytest.mark.integration
async def test_hosted_agents_sharing_a_name_get_distinct_labels(
        nats_server: EmbeddedServer, agent_factory: AgentFactory) -> None:
    collector = MeshCollector()
    first = await agent_factory(nats_server.client_url, "twin", ["echo"])
    second = await agent_factory(nats_server.client_url, "twin", ["echo"])
    collector.add_agent(first)
    collector.add_agent(second)
    labels = {sample.labels["agent"] for family in collector.collect()
              if family.name == "agoramesh_agent_up" for sample in family.samples}
    assert labels == {f"twin-{first.agent_id[:8]}", f"twin-{second.agent_id[:8]}"}
    collector.remove_agent(second)
    labels = {sample.labels["agent"] for family in collector.collect()
              if family.name == "agoramesh_agent_up" for sample in family.samples}
    assert labels == {"twin"}


async def healthz(url: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.get(url + "/healthz") as response:
        return response.status, await response.json()


@pytest.mark.integration
async def test_healthz_reports_stopped_agents_and_dead_servers(
        tmp_path: Any, agent_factory: AgentFactory, metrics_server: Any) -> None:
    from agoramesh.config import ServerConfig

    server = EmbeddedServer(ServerConfig(name="hub", data_dir=tmp_path / "hub"))
    await server.start()
    try:
        agent: AgentNode = await agent_factory(server.client_url, "solo", ["echo"])
        metrics_server.collector.add_agent(agent)
        metrics_server.collector.add_server(server)
        status, health = await healthz(metrics_server.url)
        assert (status, health["status"]) == (200, "ok")
        assert health["agents"] == {"solo": "ready"} and health["servers"] == {"hub": "ok"}

        server.kill()
        await asyncio.wait_for(server.crashed.wait(), 5)
        status, health = await healthz(metrics_server.url)
        assert status == 503 and health["status"] == "unhealthy"
        assert health["servers"] == {"hub": "crashed"}
        await wait_until(lambda: not agent.bus.is_connected, timeout=5)
        status, health = await healthz(metrics_server.url)
        assert "agent solo is disconnected" in health["problems"]
        _, samples, _ = await scrape(metrics_server.url)
        assert value(samples, "agoramesh_server_up", server="hub", role="seed") == 0
        assert value(samples, "agoramesh_agent_up", agent="solo") == 0
        await agent.stop(grace=0.1)
        status, health = await healthz(metrics_server.url)
        assert health["agents"] == {"solo": "stopped"}
    finally:
        await server.stop()


async def test_openmetrics_is_served_when_asked_for(metrics_server: Any) -> None:
    headers = {"Accept": "application/openmetrics-text; version=1.0.0"}
    async with aiohttp.ClientSession() as session, \
            session.get(metrics_server.url + "/metrics", headers=headers) as response:
        assert response.headers["Content-Type"].startswith("application/openmetrics-text")
        assert (await response.text()).rstrip().endswith("# EOF")


async def test_a_port_in_use_is_a_one_line_config_error(metrics_server: Any) -> None:
    from agoramesh.monitoring.http import MetricsServer

    with pytest.raises(ConfigError, match=f"cannot serve metrics on 127.0.0.1:"
                                          f"{metrics_server.port}"):
        await MetricsServer(port=metrics_server.port).start()
    with pytest.raises(ConfigError, match="0-65535"):
        MetricsServer(port=70000)


@pytest.mark.integration
async def test_tokens_and_cost_are_counted_by_backend_and_model(
        nats_server: EmbeddedServer, agent_factory: AgentFactory, metrics_server: Any) -> None:
    from agoramesh.nodes.backends.base import BackendConfig
    from agoramesh.nodes.backends.offline import OfflineBackend

    priced = OfflineBackend(BackendConfig(model="m1", input_price_per_1k=1.0,
                                          output_price_per_1k=2.0))
    agent = await agent_factory(nats_server.client_url, "priced", ["text.summarize"],
                                backend=priced)
    metrics_server.collector.add_agent(agent)
    for _ in range(2):
        result = await agent.dispatcher.submit(
            "text.summarize", {"text": "One sentence here. Another one there."},
            strategy="direct", timeout=5)
        assert result.status is TaskStatus.COMPLETED and result.cost_usd > 0
    _, samples, _ = await scrape(metrics_server.url)
    labels = {"agent": "priced", "backend": "offline", "model": "m1"}
    assert value(samples, "agoramesh_cost_usd_total", **labels) == pytest.approx(
        agent.status.total_cost_usd)
    assert (value(samples, "agoramesh_tokens_total", kind="input", **labels)
            + value(samples, "agoramesh_tokens_total", kind="output", **labels)
            == agent.status.tokens_used)


# -- durable jobs --------------------------------------------------------------------


class StoreAnswers(JetStream):
    """The job store's info as JetStream would give it, or no answer at all (``hang``)."""

    def __init__(self, bus: Any, *, queued: int = 0, hang: bool = False) -> None:
        super().__init__(bus)
        self.queued = queued
        self.hang = hang
        self.asked: list[str] = []

    async def consumer_info(self) -> dict[str, Any]:
        self.asked.append("consumer")
        if self.hang:
            await asyncio.Event().wait()
        return {"num_pending": self.queued, "num_ack_pending": 2, "num_redelivered": 1,
                "num_waiting": 3}

    async def stream_info(self, stream: str | None = None) -> dict[str, Any]:
        self.asked.append(stream or "jobs")
        return {"state": {"messages": 1204, "bytes": 65536}}


def families_of(collector: MeshCollector) -> dict[str, Any]:
    return {family.name: family for family in collector.collect()}


@pytest.mark.integration
async def test_job_counters_are_exported_per_agent_every_event_even_at_zero(
        nats_server: EmbeddedServer, agent_factory: AgentFactory, metrics_server: Any) -> None:
    agent = await agent_factory(nats_server.client_url, "jobber", ["echo"])
    metrics_server.collector.add_agent(agent)
    agent.metrics.jobs["taken"] += 4
    agent.metrics.jobs["completed"] += 3
    agent.metrics.jobs["abandoned"] += 1
    agent.metrics.answered_from_memory += 2

    body, samples, families = await scrape(metrics_server.url)
    checked = promtool_check_metrics(body)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    events = {dict(labels)["event"]: count for (name, labels), count in samples.items()
              if name == "agoramesh_jobs_total"}
    assert events == {"taken": 4, "redelivered": 0, "completed": 3, "failed": 0,
                      "deduplicated": 0, "requeued": 0, "cancelled": 0, "abandoned": 1}
    assert value(samples, "agoramesh_jobs_in_progress", agent="jobber") == 0
    assert value(samples, "agoramesh_tasks_answered_from_memory_total", agent="jobber") == 2
    # No JetStream on this server: the store's families are left out, the scrape is whole.
    assert not JOB_STORE_METRICS & families
    assert value(samples, "agoramesh_agent_up", agent="jobber") == 1


@pytest.mark.integration
async def test_job_store_gauges_are_read_once_through_the_first_agent(
        nats_server: EmbeddedServer, agent_factory: AgentFactory) -> None:
    collector = MeshCollector()
    first = await agent_factory(nats_server.client_url, "first", ["echo"])
    second = await agent_factory(nats_server.client_url, "second", ["echo"])
    answers = StoreAnswers(first.bus, queued=12)
    first.job_worker.js = answers
    second.job_worker.js = StoreAnswers(second.bus, queued=99)
    collector.add_agent(first)
    collector.add_agent(second)
    await collector.refresh(timeout=5)
    assert answers.asked == ["consumer", "KV_AGORA_RESULTS"]
    families = families_of(collector)
    assert {(s.labels["state"], s.value) for s in families["agoramesh_job_queue"].samples} == {
        ("queued", 12), ("in_progress", 2)}
    for name, expected in (("agoramesh_jobs_redelivered", 1),
                           ("agoramesh_job_results_stored", 1204),
                           ("agoramesh_job_results_bytes", 65536)):
        assert [(s.labels, s.value) for s in families[name].samples] == [({}, expected)]

    # JetStream silent: the refresh ends at its bound, and the families are left out.
    answers.hang = True
    await asyncio.wait_for(collector.refresh(timeout=0.2), 10)
    assert not JOB_STORE_METRICS & set(families_of(collector))
    assert "agoramesh_agent_up" in families_of(collector)

    # A process with no agents exports none of them.
    answers.hang = False
    await collector.refresh(timeout=5)
    assert JOB_STORE_METRICS <= set(families_of(collector))
    collector.remove_agent(first)
    collector.remove_agent(second)
    assert not JOB_STORE_METRICS & set(families_of(collector))
    await collector.refresh(timeout=5)
    assert not JOB_STORE_METRICS & set(families_of(collector))
