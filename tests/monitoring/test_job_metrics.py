"""Durable jobs as /metrics and ``agoramesh watch`` show them, on a real 3-seed JetStream mesh."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agoramesh.bus.bus import Bus
from agoramesh.bus.identity import Identity
from agoramesh.bus.jetstream import JetStream
from agoramesh.bus.server import EmbeddedServer
from agoramesh.config import BusConfig, JetStreamConfig, JobsConfig, ServerConfig
from agoramesh.monitoring.http import MetricsServer
from agoramesh.monitoring.mesh_view import MeshView
from agoramesh.monitoring.screen import render
from agoramesh.monitoring.watcher import MeshWatcher
from agoramesh.nodes.task import TaskStatus
from agoramesh.protocols.jobs.jobs import Jobs
from agoramesh.testing import wait_until
from agoramesh.testing.plugin import AgentFactory, BusFactory, MeshFactory
from agoramesh.testing.prometheus import promtool_check_metrics
from agoramesh.testing.workers import WORK, Worker

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(url: str) -> tuple[bytes, Samples]:
    async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as response:
        assert response.status == 200
        body = await response.read()
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[sample.name, frozenset(sample.labels.items())] = sample.value
    return body, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_jobs_run_queued_and_stored_show_in_metrics_and_watch(
        mesh_factory: MeshFactory, agent_factory: AgentFactory, bus_factory: BusFactory,
        tmp_path: Path) -> None:
    mesh = await mesh_factory(seeds=3, leaves=1, template=ServerConfig(
        name="template", data_dir=tmp_path / "js", jetstream=JetStreamConfig()))
    async with Bus(Identity.generate(), BusConfig(servers=(mesh.url,))) as bus:
        await JetStream(bus, JobsConfig(replicas=3)).ensure()
    # One job at a time: while it runs a long one, a new job stays queued.
    worker = await agent_factory(mesh.seeds[1].client_url, "worker", [WORK],
                                 backend=Worker("worker"), max_jobs=1)
    client = await bus_factory(mesh.leaves[0].client_url)
    jobs = Jobs(client)
    for n in (1, 2):
        result = await jobs.run("work.do", {"n": n}, timeout=30)
        assert result.status is TaskStatus.COMPLETED
    await jobs.submit("work.do", {"n": 3, "seconds": 60})  # holds the worker's one slot
    await wait_until(lambda: worker.job_worker.running == 1, timeout=10)
    await jobs.submit("nobody.offers.this", {})

    async with MetricsServer(port=0) as endpoint:
        endpoint.collector.add_agent(worker)

        async def queued() -> bool:
            _, samples = await scrape(endpoint.url)
            return value(samples, "agoramesh_job_queue", state="queued") >= 1

        await wait_until(queued, timeout=10, interval=0.1)
        body, samples = await scrape(endpoint.url)
    checked = promtool_check_metrics(body)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert value(samples, "agoramesh_jobs_total", agent="worker", event="completed") >= 1
    assert value(samples, "agoramesh_jobs_total", agent="worker", event="taken") >= 3
    assert value(samples, "agoramesh_jobs_in_progress", agent="worker") == 1
    assert value(samples, "agoramesh_job_queue", state="queued") >= 1
    assert value(samples, "agoramesh_job_queue", state="in_progress") >= 1
    assert value(samples, "agoramesh_job_results_stored") >= 2
    assert value(samples, "agoramesh_job_results_bytes") > 0
    assert ("agoramesh_jobs_redelivered", frozenset()) in samples

    # The watcher reads the same store, once a second, and shows it under the rejections.
    view = MeshView(server=mesh.url)
    watcher = MeshWatcher(client, view)
    await watcher.start()
    try:
        await wait_until(lambda: view.jobs is not None, timeout=10)
    finally:
        await watcher.stop()
    assert view.jobs is not None
    assert view.jobs.queued >= 1 and view.jobs.running >= 1 and view.jobs.results >= 2
    frame = render(view, 120, 30, view.started)
    assert f"jobs       {view.jobs.queued} queued · {view.jobs.running} running · " in frame
    assert view.snapshot(view.started)["jobs"]["results"] == view.jobs.results
    assert watcher._jobs is None  # nothing left running


async def test_a_watcher_without_jetstream_shows_no_jobs_line(
        nats_server: EmbeddedServer, bus_factory: BusFactory) -> None:
    view = MeshView(server=nats_server.client_url)
    watcher = MeshWatcher(await bus_factory(nats_server.client_url), view, jobs_every=0.1)
    reads = 0
    set_jobs = view.set_jobs

    def counted(queue: object) -> None:
        nonlocal reads
        reads += 1
        set_jobs(queue)  # type: ignore[arg-type]

    view.set_jobs = counted  # type: ignore[method-assign]
    await watcher.start()
    try:
        await wait_until(lambda: reads >= 2, timeout=10)  # asked, and asked again
    finally:
        await watcher.stop()
    assert view.jobs is None
    assert "jobs " not in render(view, 120, 20, view.started)
    assert view.snapshot(view.started)["jobs"] is None
