"""What runs an A2A message on the mesh: a plan checked before any task exists, then the
task auctioned (or sent to the agent the path names), its progress streamed back.

:class:`MeshRequestHandler` is a2a-sdk's request handler with one step in front of
``SendMessage`` / ``message/send`` and their streaming forms: the message is
planned (:meth:`MeshExecutor.plan`: skill, parameters, timeout, target agent), so
an unknown skill or a wrong input is the protocol's error (-32602, -32005) and no
task. :class:`MeshExecutor` then runs the plan:

- the whole mesh: ``Dispatcher.submit`` by auction. A streaming client sees the
  auction's progress as ``working`` status updates (bids, the winner at work, a
  lost winner, a re-auction; the event itself in the update's metadata) and the
  winner's streamed text as chunks of a ``stream`` artifact;
- one agent (``/agents/<name or id>/``): the task sent to that agent only.

The result is a ``result`` artifact (:func:`~agoramesh.bridges.a2a_parts.result_parts`,
with the winner, the mesh task id, the time and the cost in its metadata) and a
``completed`` task (for a blocking send, made whole at its end, by the handler itself
for a new task: :class:`MeshRequestHandler`); a FAILED mesh task, or an error that left no
result (nobody bid, the deadline passed), is a ``failed`` task whose status message
is the error's one-line text. The mesh task id is the A2A task id. ``CancelTask`` stops the
auction (its winner is told to cancel) or tells the agent, and the task ends
``canceled``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.context import ServerCallContext
from a2a.server.events import Event, EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types import (
    AgentCard,
    Artifact,
    CancelTaskRequest,
    Message,
    Part,
    Role,
    SendMessageRequest,
    SubscribeToTaskRequest,
    Task,
    TaskArtifactUpdateEvent,
    TaskState,
    TaskStatus,
    TaskStatusUpdateEvent,
)
from a2a.utils.errors import InvalidParamsError, TaskNotFoundError
from a2a.utils.task import apply_history_length, validate_history_length

from agoramesh.bridges.a2a_cards import skills_of
from agoramesh.bridges.a2a_parts import choose_skill, parameters_from, result_parts, timeout_of
from agoramesh.bridges.a2a_required import check_required
from agoramesh.errors import AgoraError, TaskCancelled
from agoramesh.nodes.backends.a2a import to_python
from agoramesh.nodes.card import AgentCard as MeshCard
from agoramesh.nodes.client import cancel_task
from agoramesh.nodes.task import TaskResult
from agoramesh.nodes.task import TaskStatus as MeshStatus
from agoramesh.protocols.allocation.dispatch import Dispatcher
from agoramesh.protocols.auction.policy import Progress

__all__ = ("AGENT", "PLAN", "BoundedTaskStore", "MeshExecutor", "MeshRequestHandler", "Plan")

#: Call-context state: the agent the request's path names (None: the whole mesh).
AGENT = "agoramesh.agent"
#: Call-context state: the :class:`Plan` made of the request's message.
PLAN = "agoramesh.plan"

#: The auction events a streaming client is told of, as the status message's text.
_SHOWN: dict[str, Callable[[dict[str, Any]], str]] = {
    "bids": lambda d: f"{d.get('bids')} bid(s) from {d.get('answered')} answer(s)",
    "award": lambda d: f"awarded {'directly ' if d.get('direct') else ''}to agent "
                       f"{str(d.get('agent'))[:12]}",
    "accepted": lambda d: f"agent {str(d.get('agent'))[:12]} is working on it",
    "declined": lambda d: f"agent {str(d.get('agent'))[:12]} declined: {d.get('reason')}",
    "lost": lambda d: f"agent {str(d.get('agent'))[:12]} was lost; re-auctioning",
    "reauction": lambda d: f"re-auction #{d.get('attempt')}",
}
_STREAMING = frozenset({"SendStreamingMessage", "message/stream"})
_CANCEL_WAIT = 3.0
#: The status text of a blocking send's task whose request ended before it did.
_ABANDONED = "the request ended before the task did (the server stopped, or the client left)"


@dataclass(frozen=True, slots=True)
class Plan:
    """What a message asks of the mesh: a capability with its parameters, within
    ``timeout`` seconds, by auction (``agent_id`` None) or of one agent."""

    capability: str
    parameters: dict[str, Any]
    timeout: float
    agent_id: str | None = None


@dataclass(slots=True)
class _Job:
    """A plan at work: its submission, and whether a cancel asked for its end."""

    plan: Plan
    work: asyncio.Future[TaskResult]
    finished: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(frozen=True, slots=True)
class _Outcome:
    """How a task ends: its state, the status message's text, the result artifact."""

    state: TaskState
    text: str | None = None
    artifact: Artifact | None = None

    @classmethod
    def of(cls, result: TaskResult) -> _Outcome:
        """A mesh result's outcome: completed with its result, cancelled, or failed with
        the error's one-line text."""
        error = result.error or {}
        if result.status is MeshStatus.COMPLETED:
            return cls(TaskState.TASK_STATE_COMPLETED, artifact=Artifact(
                artifact_id=uuid.uuid4().hex, name="result", parts=result_parts(result.result),
                metadata={"agent_id": result.agent_id, "task_id": result.task_id,
                          "execution_time_ms": result.execution_time_ms,
                          "tokens_used": result.tokens_used, "cost_usd": result.cost_usd}))
        if error.get("type") == TaskCancelled.__name__:
            return cls(TaskState.TASK_STATE_CANCELED, "cancelled")
        text = " ".join(f"{error.get('type', 'Error')}: {error.get('message', '')}".split())
        return cls(TaskState.TASK_STATE_FAILED, text[:2000])

    async def report(self, updater: TaskUpdater) -> None:
        """As events on a task that exists: the artifact, then the final status."""
        if self.artifact is not None:
            artifact = self.artifact
            await updater.add_artifact(list(artifact.parts), artifact_id=artifact.artifact_id,
                                       name=artifact.name, metadata=to_python(artifact.metadata))
        message = updater.new_agent_message([Part(text=self.text)]) if self.text else None
        await updater.update_status(self.state, message)

    def task(self, task_id: str, context_id: str, asked: Message) -> Task:
        """As the whole task, in one event (a blocking send's)."""
        status = TaskStatus(state=self.state)
        status.timestamp.FromDatetime(datetime.now(UTC))
        if self.text:
            status.message.CopyFrom(Message(role=Role.ROLE_AGENT, task_id=task_id,
                                            context_id=context_id,
                                            message_id=str(uuid.uuid4()),
                                            parts=[Part(text=self.text)]))
        return Task(id=task_id, context_id=context_id, status=status,
                    history=[asked], artifacts=[self.artifact] if self.artifact else [])


class MeshExecutor(AgentExecutor):
    """Runs planned messages on ``dispatcher``'s mesh; ``task_timeout`` caps each task."""

    def __init__(self, dispatcher: Dispatcher, *, task_timeout: float) -> None:
        self.dispatcher = dispatcher
        self.task_timeout = task_timeout
        self._jobs: dict[str, _Job] = {}
        self._leftovers: set[asyncio.Future[TaskResult]] = set()

    def agent(self, ref: str) -> MeshCard | None:
        """The agent a path names: by id, else the one agent of that name."""
        card = self.dispatcher.card(ref)
        if card is not None:
            return card
        named = [card for card in self.dispatcher.agents() if card.name == ref]
        return named[0] if len(named) == 1 else None

    def plan(self, message: Message, agent_ref: str | None) -> Plan:
        """The plan for ``message`` sent to the mesh (``agent_ref`` None) or to one agent;
        the protocol's error when it asks for what is not there or sends a wrong input."""
        target = None
        if agent_ref is None:
            cards = self.dispatcher.agents()
        else:
            target = self.agent(agent_ref)
            if target is None:
                raise InvalidParamsError(message=f"no single agent named or with id "
                                                 f"{agent_ref[:80]!r} on the mesh")
            cards = [target]
        metadata = to_python(message.metadata)
        capability = choose_skill(metadata, skills_of(cards))
        return Plan(capability=capability.name,
                    parameters=parameters_from(message, capability),
                    timeout=timeout_of(metadata, self.task_timeout),
                    agent_id=target.id if target is not None else None)

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        call = context.call_context
        task_id, context_id = context.task_id or "", context.context_id or ""
        message = context.message
        plan = call.state.get(PLAN) if call is not None else None
        if not isinstance(plan, Plan) or message is None:  # a request the handler did not plan
            raise InvalidParamsError(message="no message to run")
        streaming = call is not None and call.state.get("method") in _STREAMING
        # A blocking send sees nothing but the end, so the task is made once, at the end: the
        # SDK then saves and relays one event instead of three, none of them mid-auction.
        quiet = context.current_task is None and not streaming and not (
            context.configuration is not None and context.configuration.return_immediately)
        updater = TaskUpdater(event_queue, task_id, context_id)
        if context.current_task is None and not quiet:
            state = TaskState.TASK_STATE_SUBMITTED if streaming else TaskState.TASK_STATE_WORKING
            await event_queue.enqueue_event(Task(id=task_id, context_id=context_id,
                                                 status=TaskStatus(state=state),
                                                 history=[message]))
        relay = ((lambda progress, work: self._relay(progress, work, updater, task_id))
                 if streaming else None)
        outcome, job = await self._run(plan, task_id, relay)
        try:
            if quiet:
                await event_queue.enqueue_event(outcome.task(task_id, context_id, message))
            else:
                await outcome.report(updater)
        finally:
            job.finished.set()

    async def run_blocking(self, plan: Plan, message: Message, task_id: str,
                           context_id: str) -> Task:
        """``plan`` run to its end as the whole task a blocking send answers with, outside
        the SDK's task machinery (:meth:`MeshRequestHandler.on_message_send`)."""
        outcome, job = await self._run(plan, task_id, None)
        try:
            return outcome.task(task_id, context_id, message)
        finally:
            job.finished.set()

    async def _run(self, plan: Plan, task_id: str,
                   relay: Callable[[asyncio.Queue[Progress], asyncio.Future[TaskResult]],
                                   Awaitable[None]] | None) -> tuple[_Outcome, _Job]:
        """Submit ``plan`` as mesh task ``task_id`` (its progress to ``relay``, if any) and
        return how it ended, with its job (whose ``finished`` the caller sets once the end
        is told: :meth:`cancel` waits for that)."""
        progress: asyncio.Queue[Progress] = asyncio.Queue()
        work = asyncio.ensure_future(self.dispatcher.submit(
            plan.capability, plan.parameters, agent_id=plan.agent_id, timeout=plan.timeout,
            task_id=task_id, stream=relay is not None,
            progress=progress.put_nowait if relay is not None else None))
        job = self._jobs[task_id] = _Job(plan, work)
        try:
            if relay is not None:
                await relay(progress, work)
            outcome = _Outcome.of(await asyncio.shield(work))  # cut off: _interrupt, below
        except (TaskCancelled, asyncio.CancelledError):
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                job.finished.set()
                raise
            outcome = _Outcome(TaskState.TASK_STATE_CANCELED, "cancelled")
        except AgoraError as exc:
            outcome = _Outcome(TaskState.TASK_STATE_FAILED, _one_line(exc))
        finally:
            self._jobs.pop(task_id, None)
            if not work.done():  # the SDK stopped us (shutdown): the mesh task stops too
                self._interrupt(job, task_id)
        return outcome, job

    async def _relay(self, progress: asyncio.Queue[Progress], work: asyncio.Future[TaskResult],
                     updater: TaskUpdater, task_id: str) -> None:
        """Pass the auction's progress on until ``work`` ends."""
        chunks = 0
        while not work.done():
            getter = asyncio.ensure_future(progress.get())
            try:
                await asyncio.wait((getter, work), return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not getter.done():
                    getter.cancel()
            if not getter.done() or getter.cancelled():  # the work ended first
                return
            event = getter.result()
            if event.event == "chunk":
                text = str(event.detail.get("text", ""))
                await updater.add_artifact([Part(text=text)], artifact_id=f"{task_id}-stream",
                                           name="stream", append=chunks > 0)
                chunks += 1
            elif event.event in _SHOWN:
                await updater.update_status(
                    TaskState.TASK_STATE_WORKING,
                    updater.new_agent_message([Part(text=_SHOWN[event.event](event.detail))]),
                    metadata={"agoramesh": _json(event.as_dict())})

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        """Stop the task's auction (or tell its agent) and wait, bounded, for it to end
        ``canceled``; a task no longer running here is the SDK's to close."""
        await self.stop(context.task_id or "")

    async def stop(self, task_id: str) -> None:
        """:meth:`cancel` for the task with id ``task_id``."""
        job = self._jobs.get(task_id)
        if job is None:
            return
        if job.plan.agent_id is not None:
            with contextlib.suppress(AgoraError):
                if not await cancel_task(self.dispatcher.bus, job.plan.agent_id, task_id):
                    job.work.cancel()
        elif not self.dispatcher.auctioneer.cancel(task_id):
            job.work.cancel()  # no auction open yet (or any more): stop the submission itself
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_CANCEL_WAIT):
                await job.finished.wait()

    def _interrupt(self, job: _Job, task_id: str) -> None:
        """Stop ``job``'s mesh task without waiting: the auction tells its winner."""
        if job.plan.agent_id is not None or not self.dispatcher.auctioneer.cancel(task_id):
            job.work.cancel()
        self._leftovers.add(job.work)  # finishing in the background: kept from the collector
        job.work.add_done_callback(self._leftovers.discard)
        job.work.add_done_callback(lambda done: done.cancelled() or done.exception())


class MeshRequestHandler(DefaultRequestHandler):
    """a2a-sdk's request handler, planning each message before a task is made of it.

    A blocking send of a new task (no ``task_id``, no ``return_immediately``, no push
    configuration: what most clients send) is run without the SDK's task machinery,
    whose producer, consumer and event queue cost more than the auction itself
    (benchmarks/RESULTS.md, "A2A through the mesh"): its task is saved ``working``
    (so GetTask, ListTasks and CancelTask find it), run on the mesh, and saved whole
    at its end, the answer. Everything else is the SDK's.
    """

    def __init__(self, executor: MeshExecutor, card: AgentCard, *, max_tasks: int) -> None:
        self._tasks = BoundedTaskStore(max_tasks)
        super().__init__(agent_executor=executor, task_store=self._tasks, agent_card=card)
        self._planner = executor
        #: Blocking sends at work, by task id: set once their task is saved whole.
        self._blocking: dict[str, asyncio.Event] = {}

    def _plan(self, params: SendMessageRequest, context: ServerCallContext) -> None:
        context.state[PLAN] = self._planner.plan(params.message, context.state.get(AGENT))

    async def on_message_send(self, params: SendMessageRequest, context: ServerCallContext
                              ) -> Message | Task:
        self._plan(params, context)
        configuration = params.configuration
        if not (params.message.task_id or configuration.return_immediately
                or configuration.HasField("task_push_notification_config")):
            return await self._send_blocking(params, context)
        answer: Message | Task = await super().on_message_send(params, context)
        return answer

    async def _send_blocking(self, params: SendMessageRequest,
                             context: ServerCallContext) -> Task:
        check_required(params)  # what the SDK's handler checks first
        validate_history_length(params.configuration)
        plan = context.state[PLAN]
        message = params.message
        message.task_id = task_id = str(uuid.uuid4())
        message.context_id = context_id = message.context_id or str(uuid.uuid4())
        done = self._blocking[task_id] = asyncio.Event()
        try:
            await self._tasks.save(Task(
                id=task_id, context_id=context_id,
                status=TaskStatus(state=TaskState.TASK_STATE_WORKING), history=[message]),
                context)
            task = await self._planner.run_blocking(plan, message, task_id, context_id)
            await self._tasks.save(task, context)
        except asyncio.CancelledError:
            # The server stops (past its grace) or the request was dropped: the mesh task
            # was stopped, and the task must not be left working in the store.
            ended = _Outcome(TaskState.TASK_STATE_CANCELED, _ABANDONED).task(
                task_id, context_id, message)
            with contextlib.suppress(Exception):
                await asyncio.shield(self._tasks.save(ended, context))
            raise
        finally:
            del self._blocking[task_id]
            done.set()
        return apply_history_length(task, params.configuration)

    async def on_cancel_task(self, params: CancelTaskRequest,
                             context: ServerCallContext) -> Task | None:
        """A blocking send at work is cancelled here (the mesh task stopped, its end
        awaited, bounded); any other task as the SDK cancels it."""
        done = self._blocking.get(params.id)
        if done is None:
            cancelled: Task | None = await super().on_cancel_task(params, context)
            return cancelled
        if await self._tasks.get(params.id, context) is None:  # another owner's
            raise TaskNotFoundError
        await self._planner.stop(params.id)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_CANCEL_WAIT):
                await done.wait()
        return await self._tasks.get(params.id, context)

    async def on_subscribe_to_task(self, params: SubscribeToTaskRequest,
                                   context: ServerCallContext) -> AsyncGenerator[Event, None]:
        """A blocking send at work is followed here: the task as it is, then its artifacts
        and its final status once it ends (the run relays no progress: it is not streamed).
        Any other task as the SDK follows it."""
        done = self._blocking.get(params.id)
        if done is None:
            async with contextlib.aclosing(super().on_subscribe_to_task(params, context)
                                           ) as events:
                async for event in events:
                    yield event
            return
        task = await self._tasks.get(params.id, context)
        if task is None:  # another owner's
            raise TaskNotFoundError
        yield task
        await done.wait()  # as long as the send: bounded by the task's timeout
        ended = await self._tasks.get(params.id, context)
        if ended is None:  # forgotten meanwhile (the store keeps the newest max_tasks)
            return
        for artifact in ended.artifacts:
            yield TaskArtifactUpdateEvent(task_id=ended.id, context_id=ended.context_id,
                                          artifact=artifact, last_chunk=True)
        yield TaskStatusUpdateEvent(task_id=ended.id, context_id=ended.context_id,
                                    status=ended.status)

    async def on_message_send_stream(self, params: SendMessageRequest,
                                     context: ServerCallContext) -> AsyncGenerator[Event, None]:
        self._plan(params, context)
        async with contextlib.aclosing(super().on_message_send_stream(params, context)) as events:
            async for event in events:
                yield event


class BoundedTaskStore(InMemoryTaskStore):
    """The SDK's in-memory task store, forgetting its oldest tasks beyond ``max_tasks``
    (``GetTask`` on one of those is ``TaskNotFoundError``), so a long-running bridge
    does not grow without bound."""

    def __init__(self, max_tasks: int) -> None:
        super().__init__()
        self.max_tasks = max_tasks
        self._order: collections.OrderedDict[str, ServerCallContext] = collections.OrderedDict()

    async def save(self, task: Task, context: ServerCallContext) -> None:
        await super().save(task, context)
        if task.id not in self._order:
            self._order[task.id] = context
            while len(self._order) > self.max_tasks:
                oldest, owner = self._order.popitem(last=False)
                await super().delete(oldest, owner)

    async def delete(self, task_id: str, context: ServerCallContext) -> None:
        self._order.pop(task_id, None)
        await super().delete(task_id, context)


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:2000]


def _json(value: Mapping[str, Any]) -> dict[str, Any]:
    """``value`` as plain JSON (what a protobuf Struct holds)."""
    plain: dict[str, Any] = json.loads(json.dumps(value, default=str))
    return plain
