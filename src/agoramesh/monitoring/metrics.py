"""The Prometheus view of a process's agents and embedded servers.

One :class:`MeshCollector` per process, registered in its own registry with
prometheus_client's process, platform and GC collectors. Agents and servers
are attached to it; every scrape reads their live counters (the Bus's
envelope counts, :class:`~agoramesh.observability.stats.AgentMetrics`, the
directory) and builds the families then, so recording stays a dict
increment. Every agent series carries ``agent`` (the agent's name; an id
prefix is appended when two hosted agents share a name). Metric names follow
Prometheus conventions: base units in the name, ``_total`` counters, and are
listed in :data:`METRICS` (docs/OPERATIONS.md has the table).

The durable-job store (queue, results) is the mesh's, not an agent's: it is
exported once per process, read through the first connected agent's bus
before each scrape (:data:`JOB_STORE_METRICS`; omitted when JetStream does
not answer in time, or when the process hosts no agent).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from agoramesh._version import __version__
from agoramesh.errors import ServerError
from agoramesh.monitoring.job_queue import JobQueue, read_job_queue
from agoramesh.observability.stats import JOB_EVENTS, Histogram

if TYPE_CHECKING:
    from agoramesh.agent import AgentNode
    from agoramesh.bus.server import EmbeddedServer

__all__ = ("JOB_STORE_METRICS", "METRICS", "Guarded", "MeshCollector", "new_registry")


class Guarded(Protocol):
    """A server behind the bearer token (the HTTP API, the A2A server): its refusals."""

    @property
    def unauthorized(self) -> int: ...

#: name -> (type, help). Counters are listed with their ``_total`` suffix.
METRICS: dict[str, tuple[str, str]] = {
    "agoramesh_build_info": ("gauge", "agoramesh version of this process (always 1)"),
    "agoramesh_agent_info": ("gauge", "A hosted agent's id, type and version (always 1)"),
    "agoramesh_agent_up": ("gauge", "1 if the agent is running and its bus is connected"),
    "agoramesh_envelopes_sent_total": ("counter", "Envelopes sent (signed or MACed), by type"),
    "agoramesh_envelopes_received_total": (
        "counter", "Envelopes (and plain-JSON requests, type json) admitted, by type"),
    "agoramesh_envelopes_rejected_total": ("counter", "Incoming messages rejected, by reason"),
    "agoramesh_auctions_total": ("counter", "Auctions this agent ran, by outcome"),
    "agoramesh_auction_duration_seconds": (
        "histogram", "Time from call for proposals to result (or failure)"),
    "agoramesh_auction_bids_received_total": ("counter", "Bids received in this agent's auctions"),
    "agoramesh_auctions_in_flight": ("gauge", "Auctions this agent is running now"),
    "agoramesh_bids_total": ("counter", "Answers to calls for proposals: bid or refuse"),
    "agoramesh_awards_total": ("counter", "Awards received: accepted or declined"),
    "agoramesh_access_denied_total": (
        "counter", "Requests this agent's access policy refused, by capability and action"),
    "agoramesh_tasks_total": ("counter", "Tasks this agent served, by outcome"),
    "agoramesh_task_duration_seconds": ("histogram", "Time to serve a task, by capability"),
    "agoramesh_tasks_in_flight": ("gauge", "Tasks running on this agent now"),
    "agoramesh_task_capacity": ("gauge", "Tasks this agent runs at once at most"),
    "agoramesh_tokens_total": ("counter", "Tokens used, by backend, model and kind"),
    "agoramesh_cost_usd_total": ("counter", "Money spent on backends, US dollars"),
    "agoramesh_peers": ("gauge", "Peers in this agent's directory"),
    "agoramesh_jobs_total": ("counter", "Durable jobs this agent's node took, by what became "
                                        "of them"),
    "agoramesh_jobs_in_progress": ("gauge", "Durable jobs this agent's node drives now"),
    "agoramesh_tasks_answered_from_memory_total": (
        "counter", "Tasks asked again and answered from the run already made, not run again"),
    "agoramesh_job_queue": ("gauge", "Durable jobs in the mesh's job store: queued (not yet "
                                     "taken) or in_progress (taken, not yet acknowledged)"),
    "agoramesh_jobs_redelivered": (
        "gauge", "Durable jobs delivered more than once and not yet acknowledged"),
    "agoramesh_job_results_stored": ("gauge", "Job results the mesh's result store holds"),
    "agoramesh_job_results_bytes": ("gauge", "Bytes of the mesh's result store"),
    "agoramesh_http_unauthorized_total": (
        "counter", "Requests refused for a missing or wrong bearer token, by API served "
                   "(http: the HTTP API, a2a: the A2A server)"),
    "agoramesh_server_up": ("gauge", "1 if the embedded nats-server answers /healthz"),
    "agoramesh_server_connections": ("gauge", "Client connections of the embedded server"),
    "agoramesh_server_routes": ("gauge", "Routes of the embedded server"),
    "agoramesh_server_leafnodes": ("gauge", "Leafnode links of the embedded server"),
    "agoramesh_server_slow_consumers_total": (
        "counter", "Slow consumers the embedded server disconnected"),
}

#: The job store's families: exported once per process, only when JetStream answers.
JOB_STORE_METRICS = frozenset({"agoramesh_job_queue", "agoramesh_jobs_redelivered",
                               "agoramesh_job_results_stored", "agoramesh_job_results_bytes"})


def _family(name: str, labels: Iterable[str]) -> Any:
    kind, documentation = METRICS[name]
    if kind == "counter":
        return CounterMetricFamily(name.removesuffix("_total"), documentation,
                                   labels=list(labels))
    if kind == "histogram":
        return HistogramMetricFamily(name, documentation, labels=list(labels))
    return GaugeMetricFamily(name, documentation, labels=list(labels))


def _histogram(family: Any, labels: list[str], histogram: Histogram) -> None:
    family.add_metric(labels, histogram.cumulative(), histogram.sum)


class MeshCollector(Collector):
    """Reads every attached agent and server at scrape time."""

    def __init__(self) -> None:
        self._agents: dict[str, AgentNode] = {}
        self._servers: dict[str, EmbeddedServer] = {}
        self._apis: dict[tuple[str, str], Guarded] = {}
        self._server_stats: dict[str, dict[str, Any]] = {}
        self._job_queue: JobQueue | None = None

    # -- membership ----------------------------------------------------------------

    def add_agent(self, node: AgentNode) -> None:
        self._agents[node.agent_id] = node

    def remove_agent(self, node: AgentNode) -> None:
        self._agents.pop(node.agent_id, None)

    def add_server(self, server: EmbeddedServer) -> None:
        self._servers[server.config.name] = server

    def add_api(self, api: Guarded, *, agent: str, kind: str = "http") -> None:
        """Count ``api``'s refusals under the name of the agent serving it and the kind
        of API (``http``, ``a2a``)."""
        self._apis[agent, kind] = api

    # -- embedded servers (async: their monitoring port is HTTP) --------------------

    async def refresh(self, timeout: float = 1.0) -> None:
        """Poll every server's ``/healthz`` and ``/varz``, and the job store; call before
        :meth:`collect`. Each is bounded by ``timeout``; none fails the refresh."""
        names = list(self._servers)
        polled, self._job_queue = await asyncio.gather(
            asyncio.gather(*(self._poll(self._servers[name], timeout) for name in names)),
            self._poll_jobs(timeout))
        self._server_stats = dict(zip(names, polled, strict=True))

    async def _poll_jobs(self, timeout: float) -> JobQueue | None:
        """The job store's counts, asked through the first connected agent's bus."""
        node = next((node for node in list(self._agents.values()) if node.bus.is_connected),
                    None)
        if node is None:
            return None
        return await read_job_queue(node.job_worker.js, timeout)

    @staticmethod
    async def _poll(server: EmbeddedServer, timeout: float) -> dict[str, Any]:
        stats: dict[str, Any] = {"up": 0, "role": server.config.role.value}
        monitor = server.monitor
        if monitor is None or server.crashed.is_set():
            stats["problem"] = "crashed" if server.crashed.is_set() else "not started"
            return stats
        with contextlib.suppress(OSError, TimeoutError, TypeError, ServerError):
            async with asyncio.timeout(timeout):
                if not await monitor.healthy():
                    stats["problem"] = "/healthz is not ok"
                    return stats
                varz = await monitor.varz()
                stats.update(up=1, connections=varz.get("connections", 0),
                             routes=varz.get("routes", 0), leafnodes=varz.get("leafnodes", 0),
                             slow_consumers=varz.get("slow_consumers", 0))
                return stats
        stats["problem"] = "monitoring port does not answer"
        return stats

    # -- health --------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """``{"status": "ok"|"unhealthy", "agents": …, "servers": …, "problems": […]}``."""
        problems: list[str] = []
        agents: dict[str, str] = {}
        for label, node in self._labelled():
            state = node.status.state
            if not node.bus.is_connected:
                state = "disconnected" if state in ("ready", "busy") else state
            agents[label] = state
            if state not in ("ready", "busy"):
                problems.append(f"agent {label} is {state}")
        servers: dict[str, str] = {}
        for name, stats in self._server_stats.items():
            servers[name] = "ok" if stats.get("up") else str(stats.get("problem", "down"))
            if not stats.get("up"):
                problems.append(f"server {name}: {servers[name]}")
        return {"status": "unhealthy" if problems else "ok", "agents": agents,
                "servers": servers, "problems": problems}

    # -- the scrape ----------------------------------------------------------------

    def _labelled(self) -> list[tuple[str, AgentNode]]:
        nodes = list(self._agents.values())
        uses = Counter(node.config.name for node in nodes)
        return [(node.config.name if uses[node.config.name] == 1
                 else f"{node.config.name}-{node.agent_id[:8]}", node) for node in nodes]

    def collect(self) -> Iterator[Metric]:
        build = _family("agoramesh_build_info", ["version"])
        build.add_metric([__version__], 1)
        yield build
        yield from self._agent_families(self._labelled())
        refused = _family("agoramesh_http_unauthorized_total", ["agent", "api"])
        for (agent, kind), api in list(self._apis.items()):
            refused.add_metric([agent, kind], api.unauthorized)
        yield refused
        yield from self._server_families()
        yield from self._job_store_families(self._job_queue if self._agents else None)

    def _agent_families(self, agents: list[tuple[str, AgentNode]]) -> Iterator[Metric]:
        info = _family("agoramesh_agent_info", ["agent", "agent_id", "type", "version"])
        up = _family("agoramesh_agent_up", ["agent"])
        sent = _family("agoramesh_envelopes_sent_total", ["agent", "type"])
        received = _family("agoramesh_envelopes_received_total", ["agent", "type"])
        rejected = _family("agoramesh_envelopes_rejected_total", ["agent", "reason"])
        auctions = _family("agoramesh_auctions_total", ["agent", "capability", "outcome"])
        auction_time = _family("agoramesh_auction_duration_seconds", ["agent", "capability"])
        bids_in = _family("agoramesh_auction_bids_received_total", ["agent", "capability"])
        auctions_open = _family("agoramesh_auctions_in_flight", ["agent"])
        bids = _family("agoramesh_bids_total", ["agent", "capability", "decision"])
        awards = _family("agoramesh_awards_total", ["agent", "capability", "decision"])
        denied = _family("agoramesh_access_denied_total", ["agent", "capability", "action"])
        tasks = _family("agoramesh_tasks_total", ["agent", "capability", "outcome"])
        task_time = _family("agoramesh_task_duration_seconds", ["agent", "capability"])
        in_flight = _family("agoramesh_tasks_in_flight", ["agent"])
        capacity = _family("agoramesh_task_capacity", ["agent"])
        tokens = _family("agoramesh_tokens_total", ["agent", "backend", "model", "kind"])
        cost = _family("agoramesh_cost_usd_total", ["agent", "backend", "model"])
        peers = _family("agoramesh_peers", ["agent"])
        jobs = _family("agoramesh_jobs_total", ["agent", "event"])
        jobs_running = _family("agoramesh_jobs_in_progress", ["agent"])
        remembered = _family("agoramesh_tasks_answered_from_memory_total", ["agent"])
        for agent, node in agents:
            bus, stats = node.bus, node.metrics
            status = node.status
            info.add_metric([agent, node.agent_id, node.config.type, node.card.version], 1)
            up.add_metric([agent], int(status.state in ("ready", "busy") and bus.is_connected))
            for kind, count in list(bus.sent.items()):
                sent.add_metric([agent, kind], count)
            for kind, count in list(bus.received.items()):
                received.add_metric([agent, kind], count)
            for reason, count in list(bus.rejections.items()):
                rejected.add_metric([agent, str(reason)], count)
            for (capability, outcome), count in list(stats.auctions.items()):
                auctions.add_metric([agent, capability, outcome], count)
            for capability, histogram in list(stats.auction_seconds.items()):
                _histogram(auction_time, [agent, capability], histogram)
            for capability, count in list(stats.auction_bids.items()):
                bids_in.add_metric([agent, capability], count)
            auctions_open.add_metric([agent], stats.auctions_open)
            for (capability, decision), count in list(stats.bids.items()):
                bids.add_metric([agent, capability, decision], count)
            for (capability, decision), count in list(stats.awards.items()):
                awards.add_metric([agent, capability, decision], count)
            for (capability, action), count in list(stats.access_denied.items()):
                denied.add_metric([agent, capability, action], count)
            for (capability, outcome), count in list(stats.tasks.items()):
                tasks.add_metric([agent, capability, outcome], count)
            for capability, histogram in list(stats.task_seconds.items()):
                _histogram(task_time, [agent, capability], histogram)
            in_flight.add_metric([agent], status.in_flight)
            capacity.add_metric([agent], status.capacity)
            for (backend, model, kind), count in list(stats.tokens.items()):
                tokens.add_metric([agent, backend, model, kind], count)
            for (backend, model), usd in list(stats.total_cost_usd.items()):
                cost.add_metric([agent, backend, model], usd)
            peers.add_metric([agent], len(node.directory))
            counted = stats.jobs.copy()
            for event in dict.fromkeys((*JOB_EVENTS, *counted)):  # every event, even at 0
                jobs.add_metric([agent, event], counted[event])
            jobs_running.add_metric([agent], node.job_worker.running)
            remembered.add_metric([agent], stats.answered_from_memory)
        yield from (info, up, sent, received, rejected, auctions, auction_time, bids_in,
                    auctions_open, bids, awards, denied, tasks, task_time, in_flight, capacity,
                    tokens, cost, peers, jobs, jobs_running, remembered)

    def _server_families(self) -> Iterator[Metric]:
        up = _family("agoramesh_server_up", ["server", "role"])
        connections = _family("agoramesh_server_connections", ["server"])
        routes = _family("agoramesh_server_routes", ["server"])
        leafnodes = _family("agoramesh_server_leafnodes", ["server"])
        slow = _family("agoramesh_server_slow_consumers_total", ["server"])
        for name, stats in self._server_stats.items():
            up.add_metric([name, stats["role"]], stats["up"])
            if stats["up"]:
                connections.add_metric([name], stats["connections"])
                routes.add_metric([name], stats["routes"])
                leafnodes.add_metric([name], stats["leafnodes"])
                slow.add_metric([name], stats["slow_consumers"])
        yield from (up, connections, routes, leafnodes, slow)

    @staticmethod
    def _job_store_families(queue: JobQueue | None) -> Iterator[Metric]:
        if queue is None:
            return
        states = _family("agoramesh_job_queue", ["state"])
        states.add_metric(["queued"], queue.queued)
        states.add_metric(["in_progress"], queue.running)
        redelivered = _family("agoramesh_jobs_redelivered", [])
        redelivered.add_metric([], queue.redelivered)
        stored = _family("agoramesh_job_results_stored", [])
        stored.add_metric([], queue.results)
        size = _family("agoramesh_job_results_bytes", [])
        size.add_metric([], queue.results_bytes)
        yield from (states, redelivered, stored, size)


def new_registry(collector: MeshCollector) -> CollectorRegistry:
    """A registry with ``collector`` and the process, platform and GC collectors."""
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    registry.register(collector)
    return registry
