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
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import nats.errors
from nats.aio.msg import Msg

from agoramesh._version import __version__
from agoramesh.bus.bus import Bus, Delivery, Reply
from agoramesh.bus.envelope import BROADCAST
from agoramesh.bus.identity import Identity
from agoramesh.bus.ingress import IngressPolicy, encode_json
from agoramesh.bus.replies import error_headers, headers_size, reply_error
from agoramesh.bus.subscription import Subscription
from agoramesh.config import BusConfig
from agoramesh.errors import (
    AccessDenied,
    AgoraError,
    BackendBadResponse,
    BackendError,
    ConfigError,
    EnvelopeError,
    InvalidInput,
    OversizeEnvelope,
    ResultTooLarge,
    TaskCancelled,
    TaskError,
    UnknownCapability,
    error_to_wire,
)
from agoramesh.nodes.backends.base import Backend
from agoramesh.nodes.capability import Capability
from agoramesh.nodes.card import AgentCard, AgentStatus, card_digest
from agoramesh.nodes.directory import Directory
from agoramesh.nodes.host import AgentHost
from agoramesh.nodes.presence import Presence
from agoramesh.nodes.services import EndpointStats, ServiceInfo, service_name, service_subjects
from agoramesh.nodes.task import Chunk, Completion, Task, TaskResult, TaskStatus
from agoramesh.nodes.task_memory import TaskMemory, task_digest
from agoramesh.observability.logs import agent_logger
from agoramesh.observability.stats import AgentMetrics
from agoramesh.observability.trajectory import Trajectory
from agoramesh.security.acl import JSON_PRINCIPAL, AccessPolicy, Action

__all__ = ("UNREADABLE_TASK_ID", "BaseNode", "DirectHandler", "NodeConfig", "readable_task_id")

log = logging.getLogger("agoramesh.node")

DirectHandler = Callable[[Delivery], Awaitable[None]]

# A failed task's error type -> its outcome label (agoramesh_tasks_total); others: failed.
_OUTCOMES = {"TaskCancelled": "cancelled", "InvalidInput": "rejected",
             "UnknownCapability": "rejected"}
#: Appended to the error of a FAILED task_response whose request's task_id was unreadable.
UNREADABLE_TASK_ID = "; the request's task_id could not be read (task_id is null)"


def readable_task_id(body: Any) -> str | None:
    """The request's ``task_id`` if it is one (a string of 1-128 characters), else None."""
    task_id = body.get("task_id") if isinstance(body, dict) else None
    return task_id if isinstance(task_id, str) and 0 < len(task_id) <= 128 else None


def _described(error: Mapping[str, Any] | None) -> str | None:
    """``"<type>: <message>"`` of a wire error (``$SRV.STATS`` last_error), None for none."""
    if not error:
        return None
    return f"{error.get('type')}: {error.get('message')}"


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
        self.direct_handlers: dict[str, DirectHandler] = {
            "task_request": self._on_direct_task, "task_cancel": self._on_cancel,
            "card_request": self._on_card_request,
        }
        self._capabilities = {cap.name: cap for cap in config.capabilities}
        subjects = self.bus.subjects
        self.card = AgentCard(id=identity.agent_id, name=config.name, type=config.type,
                              version=__version__, endpoint=subjects.agent(identity.agent_id),
                              capabilities=config.capabilities, metadata=config.metadata)
        self.card_dict = self.card.as_dict()  # sent with every hello, discovery and card
        # Heartbeats carry this digest instead of the card; peers fetch a card they lack.
        self.card_digest = card_digest(self.card_dict)
        self.presence = (Presence(self) if host is None else
                         Presence(self, host=host.agent_id, interval=host.interval))
        self.service = ServiceInfo(
            name=service_name(config.name), id=identity.agent_id, version=__version__,
            description=f"agoramesh {config.type} agent {config.name}",
            endpoints={cap.name: subjects.cap(cap.name) for cap in config.capabilities},
            metadata={"agent_type": config.type})
        # task id -> (its runner, its requester (None: plain JSON), its capability)
        self._running: dict[str, tuple[asyncio.Task[Any], str | None, str]] = {}
        self._cancel_requested: set[str] = set()
        #: Running tasks and recent results by task id: a task asked again is not run again.
        self.memory = TaskMemory()
        #: Results published on tasks' callback subjects: "published", and "failed" (logged).
        self.callbacks: Counter[str] = Counter()
        self._task_subscriptions: list[Subscription] = []
        self._background: set[asyncio.Task[None]] = set()
        self._completed = self._failed = self._tokens = 0
        self._cost = 0.0
        self._latency_ms = 0.0
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
        return frozenset(self._running)

    @property
    def status(self) -> AgentStatus:
        done = self._completed + self._failed
        return AgentStatus(
            capacity=self.config.max_concurrent_tasks, in_flight=len(self._running),
            avg_latency_ms=self._latency_ms,
            success_rate=self._completed / done if done else 1.0,
            tasks_completed=self._completed, tasks_failed=self._failed,
            tokens_used=self._tokens, cost_usd=self._cost,
            state="busy" if len(self._running) >= self.config.max_concurrent_tasks
            else ("ready" if self._state == "running" else self._state))

    def status_dict(self) -> dict[str, Any]:
        """``status.as_dict()``, made again only when something in it changed: an idle
        agent's beat (a thousand of them a second in one host) reuses the last one."""
        key = (len(self._running), self._completed, self._failed, self._tokens, self._cost,
               self._latency_ms, self._state)
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
                subject, self._task_handler(capability), queue=subject, ingress=ingress,
                concurrency=self.config.max_concurrent_tasks,
                on_rejected=self._refusal_counter(capability.name), confirm=False))
        await self.bus.subscribe(subjects.agent(self.agent_id), self._on_direct,
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
                await self.bus.subscribe_raw(subject, self._on_service)
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
            with contextlib.suppress(AgoraError, nats.errors.Error):
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
        for task, *_ in list(self._running.values()):
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

    def telemetry(self) -> dict[str, Any]:
        """The body of this agent's telemetry beat (PROTOCOL.md §18); drains recent events."""
        return {"name": self.config.name, "type": self.config.type,
                "status": self.status_dict(), **self.metrics.totals(),
                "rejections": {str(reason): count
                               for reason, count in self.bus.rejections.items()},
                "denied": self.metrics.denials(),
                "recent": self.metrics.take_recent()}

    async def publish_telemetry(self) -> None:
        # Nobody but `agoramesh watch` subscribes: with no interest, servers drop it.
        await self.bus.publish(self.bus.subjects.telemetry(self.agent_id), "telemetry",
                               self.telemetry(), ttl_ms=self.presence.ttl_ms)

    # -- services protocol -------------------------------------------------------

    async def _on_service(self, msg: Msg) -> None:
        if msg.reply:
            with contextlib.suppress(nats.errors.Error):
                answer = encode_json(self.service.answer(msg.subject))
                await self.bus.nats.publish(msg.reply, answer)

    # -- tasks -------------------------------------------------------------------

    def check_access(self, principal: str | None, capability: str,
                     action: Action) -> AccessDenied | None:
        """None if the access policy lets ``principal`` do ``action``, else the denial (counted).

        ``principal``: the requester's verified agent id; None for plain JSON.
        An agent never denies itself.
        """
        policy = self.config.access
        if policy.is_open or principal == self.agent_id:
            return None
        reason = policy.decide(principal or JSON_PRINCIPAL, capability, action)
        if reason is None:
            return None
        self.metrics.denied(capability, action)
        if self.trajectory is not None:
            self.trajectory.decided("deny", capability=capability, request=str(action),
                                    principal=principal or JSON_PRINCIPAL, reason=reason)
        self.log.info("denied %s on %s: %s", action, capability, reason)
        return AccessDenied(f"agent {self.config.name} refuses {action} on {capability}: "
                            f"{reason}")

    def _endpoint(self, capability: str) -> EndpointStats:
        return self.service.stats.setdefault(capability, EndpointStats())

    def _refusal_counter(self, capability: str) -> Callable[[Msg, EnvelopeError], None]:
        """Counts a request the bus refused on ``agora.cap.<capability>`` in ``$SRV.STATS``."""
        def refused(msg: Msg, error: EnvelopeError) -> None:
            self._endpoint(capability).record(0, _described(error_to_wire(error)))
        return refused

    async def _deny(self, delivery: Delivery, capability: str, denied: AccessDenied) -> None:
        """Answer (and count, in ``$SRV.STATS``) a task the access policy refuses."""
        self._endpoint(capability).record(0, _described(error_to_wire(denied)))
        await delivery.respond_error(denied)

    def _task_handler(self, capability: Capability) -> DirectHandler:
        async def handle(delivery: Delivery) -> None:
            denied = self.check_access(delivery.sender, capability.name, Action.EXECUTE)
            if denied is not None:
                await self._deny(delivery, capability.name, denied)
                return
            await self.serve(delivery, capability)
        return handle

    async def _on_direct(self, delivery: Delivery) -> None:
        handler = self.direct_handlers.get(delivery.type or "")
        if handler is None:
            await delivery.respond_error(
                InvalidInput(f"agent {self.config.name} does not handle {delivery.type!r}"))
            return
        await handler(delivery)

    async def _on_direct_task(self, delivery: Delivery) -> None:
        task_type = delivery.body.get("task_type") if isinstance(delivery.body, dict) else None
        capability = self._capabilities.get(str(task_type))
        if capability is None:
            await self._reply(delivery, self._failure(
                readable_task_id(delivery.body), UnknownCapability(
                    f"agent {self.config.name} has no capability {task_type!r}; it offers "
                    f"{', '.join(self._capabilities)}"), 0.0))
            return
        denied = self.check_access(delivery.sender, capability.name, Action.EXECUTE)
        if denied is not None:
            await self._deny(delivery, capability.name, denied)
            return
        await self.serve(delivery, capability)

    async def _on_card_request(self, delivery: Delivery) -> None:
        await delivery.respond("card", self.presence.body(), public=True)  # as hello says

    async def _on_cancel(self, delivery: Delivery) -> None:
        task_id = str(delivery.body.get("task_id")) if isinstance(delivery.body, dict) else ""
        running = self._running.get(task_id)
        if running is not None:
            denied = self.check_access(delivery.sender, running[2], Action.CANCEL)
            if denied is not None:
                await delivery.respond_error(denied)
                return
        allowed = running is not None and running[1] in (None, delivery.sender)
        if running is not None and allowed:
            self._cancel_requested.add(task_id)
            running[0].cancel()
        await delivery.respond("task_cancel", {"task_id": task_id, "cancelled": allowed})

    async def serve(self, delivery: Delivery, capability: Capability, *,
                    durable: bool = False) -> None:
        """Run the task in ``delivery.body`` and answer with its result (or failure).

        A result that does not fit in one message is answered FAILED with
        ``ResultTooLarge`` instead (and counted as a failed task). A task id this
        agent is running or has just finished is answered from that run, not run
        again (:class:`TaskMemory`). ``durable`` (an award of a durable job): the
        final result is stored in the result store before the answer, which
        says ``stored``. A task with a ``callback`` has its final result published
        there too, after the answer, unless it was answered from an earlier run
        (:meth:`_publish_callback`).
        """
        started = time.perf_counter()
        body = dict(delivery.body) if isinstance(delivery.body, dict) else delivery.body
        stream = bool(isinstance(body, dict) and body.pop("stream", False)) and not delivery.is_json
        task_id = readable_task_id(body)  # None until known: answered as null
        task: Task | None = None
        callback: str | None = None
        fresh = True  # False: answered from an earlier (or still running) run of this task
        try:
            task = Task.from_dict(body, task_type=capability.name)
            task_id = task.task_id
            callback = self._callback_of(task)
            capability.validate_input(task.parameters)
            result, fresh = await self._run_once(task, delivery, stream, started)
        except TaskError as error:
            result = self._failure(task_id, error, started)
        except asyncio.CancelledError:  # the node is stopping: tell the requester, then go
            failure = self._failure(task_id, TaskCancelled(
                f"agent {self.config.name} stopped before task {task_id} finished"), started)
            self._finished(capability.name, failure, time.perf_counter() - started)
            await asyncio.shield(self._reply(delivery, failure))
            raise
        except Exception as exc:  # a bug in a backend (or below): still a task_response
            self.log.exception("task %s failed unexpectedly", task_id,
                               extra={"task_id": task_id})
            result = self._failure(task_id, BackendError(
                f"{self.config.type} backend failed: {type(exc).__name__}: {exc}"[:1000]),
                started)
        store = durable and task is not None and result.final
        result, reply = self._prepare(delivery, result, started, stored=store)
        if store and not await self._store(result) and reply is not None:
            reply = self._response(delivery, result, stored=False)  # rare: sealed again
        elapsed = time.perf_counter() - started
        self._endpoint(capability.name).record(int(elapsed * 1e9), _described(result.error))
        if fresh:
            self._finished(capability.name, result, elapsed)
        if reply is not None:
            await self._send(delivery, result, reply)
        if callback is not None and fresh and result.final:
            await self._publish_callback(delivery, callback, result)

    def _callback_of(self, task: Task) -> str | None:
        """The task's callback subject; InvalidInput for one of the mesh's own subjects,
        where agents would take the result, published in our name, for a request."""
        callback, prefix = task.callback, self.bus.subjects.prefix
        if callback is not None and (callback == prefix or callback.startswith(prefix + ".")):
            raise InvalidInput(f"callback {callback[:80]!r} is one of the mesh's own subjects "
                               f"({prefix}.>): name a subject outside them")
        return callback

    async def _publish_callback(self, delivery: Delivery, subject: str,
                                result: TaskResult) -> None:
        """Publish ``result`` on the task's callback subject, as the reply carries it.

        To an envelope: a ``task_response`` addressed to ``*``, so signed and never
        encrypted (who reads the callback is not known), with the request's cid. To
        plain JSON: the JSON of the reply. A FAILED result has the error headers.
        A failure (too large, disconnected) is logged and counted, and is not the
        task's; the server's refusal of a subject we may not publish on comes later,
        as every permission refusal does (logged, ``Bus.permission_denials``).
        """
        body = result.as_dict()
        error = reply_error("task_response", body)
        headers = error_headers(*error) if error else None
        try:
            if delivery.envelope is None:
                payload = encode_json(body)
                limit = self.bus.config.envelope.max_bytes
                size = len(payload) + headers_size(headers)
                if size > limit:
                    raise OversizeEnvelope(f"{size} bytes exceed the {limit}-byte limit")
                await self.bus.publish_raw(subject, payload, headers=headers)
            else:
                await self.bus.publish(subject, "task_response", body, to=BROADCAST,
                                       cid=delivery.envelope.cid, headers=headers)
        except (AgoraError, ValueError, nats.errors.Error) as exc:
            self.callbacks["failed"] += 1
            self.log.warning("could not publish the result of %s on its callback %s: %s",
                             result.task_id, subject, exc, extra={"task_id": result.task_id})
            return
        self.callbacks["published"] += 1

    async def _run_once(self, task: Task, delivery: Delivery, stream: bool,
                        started: float) -> tuple[TaskResult, bool]:
        """The task's result, from this run or from the run of it already made here."""
        known = self.memory.recall(task)
        if known is not None:
            if known.digest != task_digest(task):
                raise InvalidInput(f"task id {task.task_id} was used here for another task; "
                                   f"a task id names one task")
            self.metrics.answered_from_memory += 1
            if known.done is not None:
                return known.done, False
            assert known.running is not None
            return await asyncio.shield(known.running), False
        self.memory.begin(task)
        result: TaskResult | None = None
        try:
            result = await self._run(task, delivery, stream, started)
        except TaskError as error:
            result = self._failure(task.task_id, error, started)
        finally:
            self.memory.finish(task, result or TaskResult(
                task_id=task.task_id, status=TaskStatus.FAILED, agent_id=self.agent_id,
                error={"type": "TaskCancelled", "message": f"task {task.task_id} stopped"}))
        return result, True

    async def _store(self, result: TaskResult) -> bool:
        """Store a durable job's final result (``result_store``): True once it is in;
        False (logged) if it is not, and the initiator then stores it."""
        if self.result_store is None:
            return False
        try:
            await self.result_store(result)
        except AgoraError as exc:  # the initiator stores it then
            self.log.warning("could not store the result of %s: %s", result.task_id, exc,
                             extra={"task_id": result.task_id})
            return False
        return True

    @staticmethod
    def _response(delivery: Delivery, result: TaskResult, *, stored: bool) -> Reply:
        """The task_response, saying ``stored`` when asked to and it still fits."""
        body = result.as_dict()
        if stored:
            with contextlib.suppress(OversizeEnvelope):  # else the initiator finds it stored
                return delivery.prepare("task_response", {**body, "stored": True})
        return delivery.prepare("task_response", body)

    def _prepare(self, delivery: Delivery, result: TaskResult, started: float, *,
                 stored: bool = False) -> tuple[TaskResult, Reply | None]:
        """The result and its reply; a FAILED ResultTooLarge one if it does not fit.

        Nothing to send (None) when the request has no reply subject (or when not
        even the failure fits, with a ``max_bytes`` of a few hundred bytes).
        """
        if not delivery.can_respond:
            return result, None
        try:
            return result, self._response(delivery, result, stored=stored)
        except OversizeEnvelope:
            size = delivery.measure("task_response", result.as_dict())
        if result.status is TaskStatus.COMPLETED:
            self._completed -= 1  # counted as done in _run; it fails now
        name = f"task {result.task_id}" if result.task_id else "the task"
        self.log.warning("the result of %s is too large to send (%d bytes)", name, size,
                         extra={"task_id": result.task_id})
        failure = self._failure(result.task_id or None, ResultTooLarge(
            f"the result of {name} is {size} bytes as a message, over the "
            f"{self.bus.config.envelope.max_bytes}-byte limit"), started)
        try:
            return failure, self._response(delivery, failure, stored=stored)
        except OversizeEnvelope as exc:  # a max_bytes too small even for that (128 bytes)
            self.log.warning("could not send the result of %s: %s", name, exc,
                             extra={"task_id": result.task_id})
            return failure, None

    def _finished(self, capability: str, result: TaskResult, seconds: float) -> None:
        if result.status is TaskStatus.COMPLETED:
            outcome = "completed"
        else:
            outcome = _OUTCOMES.get(str((result.error or {}).get("type")), "failed")
        self.metrics.task_finished(capability, outcome, seconds, result.task_id)
        if self.trajectory is not None:
            self.trajectory.decided("finish", task_id=result.task_id, capability=capability,
                                    outcome=outcome, ms=round(seconds * 1000, 3))

    async def _run(self, task: Task, delivery: Delivery, stream: bool,
                   started: float) -> TaskResult:
        runner = asyncio.ensure_future(self._execute(task, delivery, stream))
        self._running[task.task_id] = (runner, delivery.sender, task.task_type)
        try:
            completion = await runner
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.task_id in self._cancel_requested and not (current and current.cancelling()):
                raise TaskCancelled(f"task {task.task_id} was cancelled") from None
            raise
        finally:
            self._running.pop(task.task_id, None)
            self._cancel_requested.discard(task.task_id)
            if not runner.done():
                runner.cancel()
        elapsed = (time.perf_counter() - started) * 1000
        usage = completion.usage
        self.metrics.spent(self.config.type, completion.model or self.backend.model,
                           usage)
        self._completed += 1
        self._tokens += usage.total_tokens
        self._cost += usage.cost_usd
        # Exponentially weighted: recent tasks count most for routing and bids.
        previous = self._latency_ms if self._completed > 1 else elapsed
        self._latency_ms = 0.8 * previous + 0.2 * elapsed
        return TaskResult(task_id=task.task_id, status=TaskStatus.COMPLETED,
                          result=completion.output, execution_time_ms=elapsed,
                          tokens_used=usage.total_tokens, cost_usd=usage.cost_usd,
                          agent_id=self.agent_id)

    async def _execute(self, task: Task, delivery: Delivery, stream: bool) -> Completion:
        limit = self.config.task_timeout
        if task.deadline is not None:
            limit = min(limit, task.deadline - time.time())
            if limit <= 0:  # the requester has stopped waiting: not even a quick start
                raise TaskError(f"task {task.task_id} was past its deadline before it ran")
        completion: Completion | None = None
        sequence = 0
        try:
            async with asyncio.timeout(max(0.0, limit)):
                # aclosing: a timeout or cancel landing mid-stream closes the backend's stream.
                async with contextlib.aclosing(
                        self.backend.execute(task, {"agent": self.card})) as items:
                    async for item in items:
                        if isinstance(item, Completion):
                            completion = item
                        elif isinstance(item, Chunk) and stream and delivery.msg.reply:
                            sequence += 1
                            await self.bus.publish(
                                delivery.msg.reply, "task_chunk",
                                {"task_id": task.task_id, "seq": sequence, "text": item.text},
                                to=delivery.sender or "*",
                                cid=delivery.envelope.cid if delivery.envelope else None)
        except TimeoutError:
            raise TaskError(f"task {task.task_id} exceeded its {limit:.1f}s time limit") from None
        if completion is None:
            raise BackendBadResponse(f"{self.config.type} backend ended without a result")
        if delivery.is_json:  # NaN, say: fail the task now rather than the reply later
            try:
                encode_json(completion.output)
            except ValueError as exc:
                raise BackendBadResponse(f"{self.config.type} backend's result cannot be "
                                         f"answered in plain JSON: {exc}") from None
        return completion

    def _failure(self, task_id: str | None, error: BaseException, started: float
                 ) -> TaskResult:
        """A FAILED result; ``task_id`` None: the request's was unreadable (answered null)."""
        self._failed += 1
        elapsed = (time.perf_counter() - started) * 1000 if started else 0.0
        wire = error_to_wire(error)
        if task_id is None:
            wire["message"] += UNREADABLE_TASK_ID
        return TaskResult(task_id=task_id or "", status=TaskStatus.FAILED, error=wire,
                          execution_time_ms=elapsed, agent_id=self.agent_id)

    async def _reply(self, delivery: Delivery, result: TaskResult) -> None:
        """Answer with a result known to fit (a failure); errors are logged."""
        if not delivery.can_respond:
            return
        try:
            reply = delivery.prepare("task_response", result.as_dict())
        except (EnvelopeError, AgoraError) as exc:
            self.log.warning("could not send the result of %s: %s", result.task_id, exc,
                             extra={"task_id": result.task_id})
            return
        await self._send(delivery, result, reply)

    async def _send(self, delivery: Delivery, result: TaskResult, reply: Reply) -> None:
        try:
            await delivery.send(reply)
        except (EnvelopeError, nats.errors.Error, AgoraError) as exc:
            self.log.warning("could not send the result of %s: %s", result.task_id, exc,
                             extra={"task_id": result.task_id})
