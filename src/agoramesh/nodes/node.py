"""BaseNode: one agent on the mesh — identity card, capabilities, presence, tasks.

The protocols (bids, auctions, the task desk, durable jobs, ballots) are added
by :class:`agoramesh.agent.AgentNode`, the class users build agents with; this
module is what they run on.

Lifecycle (nameko-style): construct (setup) → ``start()`` → ``stop(grace)``
→ and, when that is not possible, ``kill()``. ``stop`` says goodbye, stops
taking new work, lets running tasks finish within ``grace`` seconds, cancels
the rest (their requesters get a FAILED result), then closes the bus.

Subjects served here (docs/PROTOCOL.md §10): ``agora.cap.<capability>`` (queue
group, tasks, plain JSON allowed by policy), ``agora.agent.<id>`` (direct: task,
cancel, card; the protocols add award and ballot), ``agora.discover``
(scatter-gather), ``agora.presence.>`` (the directory), and ``$SRV.*`` (NATS
services protocol). A hosted agent leaves the last three to its host.

Every request the agent acts on passes ``config.access`` first
(:meth:`BaseNode.check_access`, security/acl.py): tasks and awards need
``execute``, cfps ``bid``, ``agora.task`` ``submit``, cancels ``cancel``.

A task naming a ``callback`` subject has its final result published there as
well, in kind, by the agent that ran it (:meth:`BaseNode.serve`, PROTOCOL.md §15).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agoramesh._version import __version__
from agoramesh.bus.bus import Bus, Delivery
from agoramesh.bus.identity import Identity
from agoramesh.bus.ingress import IngressPolicy
from agoramesh.bus.subscription import Subscription
from agoramesh.config import BusConfig
from agoramesh.errors import (
    AccessDenied,
    AgoraError,
    ConfigError,
)
from agoramesh.nodes.backends.base import Backend
from agoramesh.nodes.capability import Capability
from agoramesh.nodes.card import AgentCard, AgentStatus, card_digest
from agoramesh.nodes.directory import Directory
from agoramesh.nodes.execution import TaskRunner
from agoramesh.nodes.host import AgentHost
from agoramesh.nodes.presence import Presence
from agoramesh.nodes.reception import Reception
from agoramesh.nodes.services import ServiceInfo, service_name, service_subjects
from agoramesh.nodes.task import TaskResult
from agoramesh.nodes.task_memory import TaskMemory
from agoramesh.observability.logs import agent_logger
from agoramesh.observability.stats import AgentMetrics
from agoramesh.observability.trajectory import Trajectory
from agoramesh.security.acl import AccessPolicy, Action

__all__ = ("BaseNode", "NodeConfig")

log = logging.getLogger("agoramesh.node")



@dataclass(frozen=True, kw_only=True)
class NodeConfig:
    """One agent's settings; the bus settings travel separately (BusConfig)."""

    name: str
    type: str = "offline"
    capabilities: tuple[Capability, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)
    max_concurrent_tasks: int = 8
    heartbeat_interval: float = 1.0
    missed_heartbeats: int = 3
    json_ingress: bool = True  # plain JSON on agora.cap.* (authenticated by NATS only)
    task_timeout: float = 300.0
    stop_grace: float = 5.0
    #: Durable jobs this node drives at once (protocols/jobs/worker.py); 0 takes none.
    max_jobs: int = 32
    #: Who may ask this agent for what (M-4.2); the default allows everything.
    access: AccessPolicy = field(default_factory=AccessPolicy)

    def __post_init__(self) -> None:
        if not self.capabilities:
            raise ConfigError(f"agent {self.name!r} needs at least one capability")
        names = [cap.name for cap in self.capabilities]
        if len(set(names)) != len(names):
            raise ConfigError(f"agent {self.name!r} lists a capability twice: {names}")
        if self.max_concurrent_tasks < 1 or self.heartbeat_interval <= 0:
            raise ConfigError("max_concurrent_tasks must be >= 1 and heartbeat_interval > 0")
        if self.max_jobs < 0:
            raise ConfigError(f"max_jobs must be >= 0 (0 takes no durable jobs), "
                              f"got {self.max_jobs}")
        for capability in self.capabilities:
            capability.check()


class BaseNode:
    """An agent on the mesh without negotiation: a Bus, a backend, its capabilities, its
    presence and its view of the mesh, and the tasks it runs.

    :class:`agoramesh.agent.AgentNode` adds the protocols (bids, auctions, the task
    desk, durable jobs, ballots) through the hooks :meth:`_start_protocols`,
    :meth:`_retire`, :meth:`_drain` and :meth:`_abandon`.
    """

    def __init__(self, identity: Identity, config: NodeConfig, backend: Backend,
                 bus_config: BusConfig, *, directory: Directory | None = None,
                 trajectory: Trajectory | None = None, host: AgentHost | None = None) -> None:
        """``host``: run as one of many agents in this process (nodes/host.py): share the
        host's connection (when this agent has no credentials of its own), directory,
        presence, discovery and ``$SRV`` subscriptions, and beat in its batches.

        ``directory``: share another local agent's directory instead of keeping one
        (without a host): that agent listens to presence for all of them.
        ``trajectory`` records what the agent saw, decided and sent (closed when
        the agent stops).
        """
        if host is not None and directory is not None:
            raise ConfigError("an agent with a host uses the host's directory: pass one of "
                              "host= and directory=")
        self.identity = identity
        self.config = config
        self.backend = backend
        self.host = host
        self.bus = Bus(identity, bus_config,
                       connection=host.connection_for(bus_config) if host else None)
        self.metrics = AgentMetrics()
        #: This agent's logger: every record carries ``agent`` and ``agent_id``.
        self.log = agent_logger(log, config.name, identity.agent_id)
        self.trajectory = trajectory
        if trajectory is not None:
            self.bus.trace = trajectory.record
        self._owns_directory = directory is None and host is None
        if host is not None:
            directory = host.directory
        self.directory = directory if directory is not None else Directory(
            missed=config.missed_heartbeats)
        self.capabilities = {cap.name: cap for cap in config.capabilities}
        subjects = self.bus.subjects
        self.card = AgentCard(id=identity.agent_id, name=config.name, type=config.type,
                              version=__version__, endpoint=subjects.agent(identity.agent_id),
                              capabilities=config.capabilities, metadata=config.metadata)
        self.card_dict = self.card.as_dict()  # sent with every hello, discovery and card
        # Heartbeats carry this digest instead of the card; peers fetch a card they lack.
        self.card_digest = card_digest(self.card_dict)
        self.presence = (Presence(self) if host is None else
                         Presence(self, host=host.agent_id, interval=host.interval))
        #: What arrives at this agent and who may ask (nodes/reception.py).
        self.reception = Reception(self)
        #: Handlers of the direct subject by envelope type (the protocols add theirs).
        self.direct_handlers = self.reception.direct_handlers
        self.service = ServiceInfo(
            name=service_name(config.name), id=identity.agent_id, version=__version__,
            description=f"agoramesh {config.type} agent {config.name}",
            endpoints={cap.name: subjects.cap(cap.name) for cap in config.capabilities},
            metadata={"agent_type": config.type})
        #: The tasks it runs, has just run, and their counts (nodes/execution.py).
        self.tasks = TaskRunner(self)
        self._task_subscriptions: list[Subscription] = []
        self._background: set[asyncio.Task[None]] = set()
        self._state = "created"
        self._status_key: tuple[object, ...] = ()
        self._status_map: dict[str, Any] = {}
        #: Stores a durable job's final result (the first stored wins; AgoraError if it
        #: could not); None: this node has no result store.
        self.result_store: Callable[[TaskResult], Awaitable[None]] | None = None

    @property
    def owns_directory(self) -> bool:
        """True when this agent keeps (and listens for) its directory itself."""
        return self._owns_directory

    @property
    def agent_id(self) -> str:
        return self.identity.agent_id

    @property
    def running_tasks(self) -> frozenset[str]:
        """Ids of the tasks running on this agent now."""
        return frozenset(self.tasks.running)

    @property
    def memory(self) -> TaskMemory:
        """Running tasks and recent results by task id (a task asked again is not rerun)."""
        return self.tasks.memory

    @property
    def callbacks(self) -> Counter[str]:
        """Results published on tasks' callback subjects: "published", "failed"."""
        return self.tasks.callbacks

    @property
    def status(self) -> AgentStatus:
        tasks = self.tasks
        done = tasks.completed + tasks.failed
        return AgentStatus(
            capacity=self.config.max_concurrent_tasks, in_flight=len(tasks.running),
            avg_latency_ms=tasks.latency_ms,
            success_rate=tasks.completed / done if done else 1.0,
            tasks_completed=tasks.completed, tasks_failed=tasks.failed,
            tokens_used=tasks.tokens, total_cost_usd=tasks.total_cost_usd,
            state="busy" if len(tasks.running) >= self.config.max_concurrent_tasks
            else ("ready" if self._state == "running" else self._state))

    def status_dict(self) -> dict[str, Any]:
        """``status.as_dict()``, made again only when something in it changed: an idle
        agent's beat (a thousand of them a second in one host) reuses the last one."""
        tasks = self.tasks
        key = (len(tasks.running), tasks.completed, tasks.failed, tasks.tokens,
               tasks.total_cost_usd, tasks.latency_ms, self._state)
        if key != self._status_key:
            self._status_key, self._status_map = key, self.status.as_dict()
        return self._status_map

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Connect, serve every subject, announce ourselves, start heartbeats."""
        if self._state != "created":
            raise AgoraError(f"agent {self.config.name} was already started")
        try:
            await self._start()
        except BaseException:
            # Half started (a subscription refused, a cancel): nothing may outlive us,
            # not even our place at the bid desk agents sharing our directory use (it
            # may hold their cfp subscription, on our bus).
            self._state = "starting"
            with contextlib.suppress(Exception):
                await asyncio.shield(self._retire())
            await asyncio.shield(self.kill())
            raise

    async def _start(self) -> None:
        if self.host is not None and not self.host.is_running:
            raise AgoraError(f"the host of agent {self.config.name} is not running: "
                             f"start it before its agents")
        await self.bus.start()
        subjects = self.bus.subjects
        ingress = IngressPolicy.ALLOW if self.config.json_ingress else IngressPolicy.DENY
        for capability in self.config.capabilities:
            subject = subjects.cap(capability.name)
            self._task_subscriptions.append(await self.bus.subscribe(
                subject, self.reception.task_handler(capability), queue=subject, ingress=ingress,
                concurrency=self.config.max_concurrent_tasks,
                on_rejected=self.reception.refusal_counter(capability.name), confirm=False))
        await self.bus.subscribe(subjects.agent(self.agent_id), self.reception.on_direct,
                                 concurrency=self.config.max_concurrent_tasks + 4,
                                 confirm=False)
        await self._start_protocols(ingress)
        if self.host is None:  # a host listens, answers discovery and $SRV for its agents
            await self.bus.subscribe(subjects.discover, self.presence.on_discover,
                                     ingress=IngressPolicy.ALLOW, confirm=False)
            if self._owns_directory:
                await self.bus.subscribe(subjects.presence_all, self.presence.on_presence,
                                         confirm=False)
            for subject in service_subjects(self.service.name, self.service.id):
                # Plain NATS: the protocol's requests are empty.
                await self.bus.listen(subject, self.reception.on_service)
        self.directory.add_local(self.card)  # siblings sharing the directory see us
        await self.bus.confirm()  # one flush for all of them: the server has our interest
        self._state = "running"
        await self.presence.announce("hello")
        if self.host is not None:
            self.host.add(self)  # after our hello: its batches speak for a known agent
        else:
            self.spawn(self.presence.beat(self._owns_directory), "heartbeats")

    @property
    def is_running(self) -> bool:
        return self._state == "running"

    def spawn(self, coro: Awaitable[None], name: str) -> None:
        """Run ``coro`` in the background until it ends or the agent stops (it is cancelled)."""
        task = asyncio.ensure_future(coro)
        task.set_name(f"{self.config.name}-{name}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def stop(self, grace: float | None = None, *, say_bye: bool = True) -> None:
        """Say bye, stop taking work, finish running tasks within ``grace``, close.

        ``say_bye=False``: no bye of our own (our host's bye spoke for us).
        """
        if self._state in ("stopped", "created"):
            self._close_trajectory()
            self._state = "stopped"
            return
        self._state = "stopping"
        if self.host is not None:
            self.host.remove(self)
        budget = self.config.stop_grace if grace is None else grace
        if say_bye:
            with contextlib.suppress(AgoraError):
                await self.presence.announce("bye")
        self.directory.remove_local(self.agent_id)
        await self._retire()
        # All at once: draining one by one would leave the others taking queue-group
        # work meanwhile, and the grace would add up. Each waits for its running
        # tasks and cancels them after the budget; unfinished jobs go back to the stream.
        await asyncio.gather(*self._drain(budget),
                             *(subscription.stop(budget)
                               for subscription in self._task_subscriptions))
        await self._cancel_background()
        await self.bus.close(timeout=min(budget, 2.0))
        await self.backend.aclose()
        self._close_trajectory()
        self._state = "stopped"

    async def kill(self) -> None:
        """Stop at once: no goodbye, running tasks cancelled."""
        self._state = "stopping"
        if self.host is not None:
            self.host.remove(self)
        self.directory.remove_local(self.agent_id)
        await self._abandon()
        for task, *_ in list(self.tasks.running.values()):
            task.cancel()
        await self._cancel_background()
        await self.bus.close(timeout=0.1)
        await self.backend.aclose()
        self._close_trajectory()
        self._state = "stopped"

    # -- what the protocols add (agoramesh.agent.AgentNode) ---------------------------

    async def _start_protocols(self, ingress: IngressPolicy) -> None:
        """Subscribe what the protocols serve (unconfirmed: ``start`` confirms them all)."""

    async def _retire(self) -> None:
        """Stop taking part in negotiations (first thing on stop; and on a failed start)."""

    def _drain(self, budget: float) -> list[Awaitable[None]]:
        """What to wait for, besides running tasks, while stopping within ``budget``."""
        return []

    async def _abandon(self) -> None:
        """Drop everything at once (kill): nothing is handed back."""

    def _close_trajectory(self) -> None:
        if self.trajectory is not None:
            self.bus.trace = None
            self.trajectory.close()

    async def _cancel_background(self) -> None:
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.wait(list(self._background), timeout=2.0)

    async def __aenter__(self) -> BaseNode:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- presence, discovery and telemetry ------------------------------------------

    async def find_agents_by_capability(self, pattern: str, *, timeout: float = 1.0
                                        ) -> list[AgentCard]:
        """Discovery by scatter-gather on ``agora.discover`` (see :meth:`Presence.find`)."""
        return await self.presence.find(pattern, timeout=timeout)

    def check_access(self, principal: str | None, capability: str,
                     action: Action) -> AccessDenied | None:
        """None if the access policy lets ``principal`` do ``action``, else the denial
        (counted); see :meth:`Reception.check_access`."""
        return self.reception.check_access(principal, capability, action)

    async def serve(self, delivery: Delivery, capability: Capability, *,
                    durable: bool = False) -> None:
        """Run the task in ``delivery.body`` and answer with its result (or failure);
        see :meth:`TaskRunner.serve`."""
        await self.tasks.serve(delivery, capability, durable=durable)
