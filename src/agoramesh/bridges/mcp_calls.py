"""What a tool call of the MCP server does on the mesh, with its progress and its cancellation.

Each call is a :class:`Run`: the work (a coroutine that ends in an
:class:`Answer`) and how the mesh is told to stop it when the MCP client
cancels the call. A task is auctioned (the server is its initiator) and
cancelled through its auction, whose winner is told to stop; sent direct, its
stream is closed, which cancels it on the agent that took it; sent to a named
agent, that agent is asked to cancel it; a durable job is cancelled in the job
store (its result becomes a cancellation unless it has one). A collaboration
or a workflow is stopped where it is. What happens meanwhile goes to ``note``
as one line of text: the auction's events, the agent's streamed chunks,
workflow steps, collaboration events; the server sends them as progress
notifications. With no ``note`` (the client asked for no progress) a task is
not streamed: a direct one is one request, as :func:`submit_task` sends it,
saving the stream's reply subscription.

An answer is the task's result (or the mode's, or the run's) as structured
content, and text for the model: a task's output itself (as JSON unless it is
a string). A FAILED task, a failed workflow and every agoramesh error are an
error answer whose text is the error's type and its one line.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from agoramesh.bridges.mesh_client import MeshClient
from agoramesh.bus.jetstream import valid_task_id
from agoramesh.bus.subjects import validate_capability
from agoramesh.errors import AgoraError, BusTimeout, InvalidRequest, JobNotFound
from agoramesh.nodes.card import AgentCard
from agoramesh.nodes.client import cancel_task, stream_task, submit_task
from agoramesh.nodes.task import Chunk, Task, TaskResult, TaskStatus, validate_callback
from agoramesh.protocols.allocation.dispatch import Strategy
from agoramesh.protocols.auction.policy import Progress
from agoramesh.protocols.collaboration.collaboration import Collaboration
from agoramesh.protocols.workflow.engine import WorkflowEvent, run_workflow
from agoramesh.protocols.workflow.workflow import Workflow

__all__ = ("Answer", "MeshCalls", "Note", "Run", "failure")

Note = Callable[[str], None]


def _ignore(_: str) -> None:
    """The note of a call that asked for no progress."""
_NOTE_WIDTH = 300


@dataclass(frozen=True, slots=True)
class Answer:
    """What a tool call returns: text for the model, structured content, whether it failed."""

    text: str
    structured: dict[str, Any] | None = None
    error: bool = False


def _cancel(task: asyncio.Task[Answer]) -> None:
    task.cancel()


@dataclass(slots=True)
class Run:
    """One call's work on the mesh, and ``cancel(task)``: what stops it there once the work
    runs as ``task`` (default: cancelling ``task``)."""

    work: Coroutine[Any, Any, Answer]
    cancel: Callable[[asyncio.Task[Answer]], None] = _cancel


def _one_line(text: str, width: int = 2000) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 1] + "…"


def failure(error: BaseException) -> Answer:
    """The error answer for ``error`` raised by the mesh (or a check before it)."""
    message = _one_line(str(error))
    return Answer(f"{type(error).__name__}: {message}" if message else type(error).__name__,
                  {"error": {"type": type(error).__name__, "message": message}}, error=True)


def _task_answer(result: TaskResult) -> Answer:
    """A task's result: its output, or the FAILED task's error."""
    record = result.as_dict()
    if result.status is TaskStatus.COMPLETED:
        output = result.result
        text = output if isinstance(output, str) else json.dumps(output, ensure_ascii=False,
                                                                   default=str)
        return Answer(text, record)
    error = result.error or {}
    kind = str(error.get("type") or "TaskFailed")
    return Answer(f"{kind}: {_one_line(str(error.get('message') or 'the task failed'))}",
                  record, error=True)


def _clip(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False,
                                                           default=str)
    return _one_line(text, _NOTE_WIDTH)


class MeshCalls:
    """The tool calls of one MCP server over one :class:`MeshClient`.

    ``task_timeout``: how long a task (or a collaboration, a workflow) may take
    unless the call says otherwise.
    """

    def __init__(self, mesh: MeshClient, *, task_timeout: float = 120.0) -> None:
        self.mesh = mesh
        self.task_timeout = task_timeout

    # -- agents ------------------------------------------------------------------------

    def agents(self, arguments: Mapping[str, Any]) -> Answer:
        """``mesh_agents``: the agents known now, filtered."""
        dispatcher = self.mesh.dispatcher
        pattern, kind, name = (arguments.get(key) for key in ("capability", "type", "name"))
        cards = (dispatcher.select(f"capability:{pattern}") if pattern
                 else dispatcher.agents())
        listed = []
        for card in cards:
            if (kind and card.type != kind) or (name and card.name != name):
                continue
            entry = dispatcher.directory.get(card.id)
            listed.append({"id": card.id, "name": card.name, "type": card.type,
                           "capabilities": [{"name": cap.name, "description": cap.description}
                                            for cap in card.capabilities],
                           "status": entry.status.as_dict() if entry else None})
        body = {"agents": listed}
        return Answer(json.dumps(body, ensure_ascii=False), body)

    # -- tasks -------------------------------------------------------------------------

    def capability(self, capability: str, parameters: dict[str, Any], note: Note | None) -> Run:
        """A capability tool: the task auctioned with the server's timeout."""
        return self._auction(self._task(capability, parameters, self.task_timeout, 5), note)

    def submit(self, arguments: Mapping[str, Any], note: Note | None) -> Run:
        """``mesh_submit``: auctioned, direct, to a named agent, or durable."""
        try:
            capability = validate_capability(arguments["capability"])
        except AgoraError as exc:
            raise InvalidRequest(f"mesh_submit: arguments.capability: {exc}") from None
        parameters = dict(arguments.get("parameters") or {})
        timeout = float(arguments.get("timeout") or self.task_timeout)
        priority = int(arguments.get("priority", 5))
        strategy = Strategy(arguments.get("strategy", Strategy.AUCTION))
        agent = arguments.get("agent")
        callback = arguments.get("callback")
        if callback is not None:
            try:
                validate_callback(callback)
            except AgoraError as exc:
                raise InvalidRequest(f"mesh_submit: arguments.callback: {exc}") from None
        if arguments.get("durable") or "task_id" in arguments or "wait" in arguments:
            if agent is not None or "strategy" in arguments:
                raise InvalidRequest("mesh_submit: 'strategy' and 'agent' do not apply to a "
                                   "durable job: the node that takes it auctions it")
            if arguments.get("durable") is False:
                raise InvalidRequest("mesh_submit: 'task_id' and 'wait' are for durable jobs, "
                                   "and 'durable' is false")
            task_id = valid_task_id(arguments.get("task_id") or uuid.uuid4().hex)
            return self._durable(capability, parameters, task_id=task_id, priority=priority,
                                 timeout=timeout, wait=bool(arguments.get("wait", True)),
                                 note=note or _ignore, callback=callback)
        task = self._task(capability, parameters, timeout, priority, callback)
        if agent is not None:
            return self._to_agent(task, self._agent_id(str(agent)), timeout, note or _ignore)
        if strategy is Strategy.DIRECT:
            return Run(self._sent(task, timeout) if note is None
                       else self._streamed(task, timeout, note))
        return self._auction(task, note)

    @staticmethod
    def _task(capability: str, parameters: dict[str, Any], timeout: float,
              priority: int, callback: str | None = None) -> Task:
        return Task(capability=capability, parameters=parameters, priority=priority,
                    deadline=time.time() + timeout, callback=callback)

    def _agent_id(self, agent: str) -> str:
        """The id of the agent named (or identified by) ``agent``."""
        dispatcher = self.mesh.dispatcher
        if dispatcher.card(agent) is not None:
            return agent
        named = [card.id for card in dispatcher.agents() if card.name == agent]
        if len(named) == 1:
            return named[0]
        if named:
            raise InvalidRequest(f"mesh_submit: {len(named)} agents are named {agent!r}; give "
                               f"its id (mesh_agents lists them)")
        raise InvalidRequest(f"mesh_submit: no agent named {agent!r} on the mesh (mesh_agents "
                           f"lists them)")

    def _auction(self, task: Task, note: Note | None) -> Run:
        auctioneer = self.mesh.dispatcher.auctioneer
        timeout = max(0.0, (task.deadline or 0) - time.time())

        async def work() -> Answer:
            outcome = await auctioneer.run(
                task, timeout=timeout, stream=note is not None,
                progress=None if note is None else self._auction_notes(note))
            return _task_answer(outcome.result)

        def cancel(running: asyncio.Task[Answer]) -> None:
            # The auction tells its winner to stop, then ends; a run not yet open is cancelled.
            if not auctioneer.cancel(task.task_id):
                running.cancel()

        return Run(work(), cancel)

    async def _sent(self, task: Task, timeout: float) -> Answer:
        """Direct through the capability's queue group, one request (cancelled: see
        :meth:`_streamed`)."""
        try:
            return _task_answer(await submit_task(self.mesh.bus, task, timeout=timeout))
        except asyncio.CancelledError:
            # Nobody says which agent took it: ask every capable one to let it go.
            for card in self.mesh.dispatcher.select(f"capability:{task.capability}"):
                self.mesh.run(cancel_task(self.mesh.bus, card.id, task.task_id),
                              f"cancel {task.task_id}")
            raise

    async def _streamed(self, task: Task, timeout: float, note: Note) -> Answer:
        """Direct through the capability's queue group; leaving the stream early (a cancel)
        cancels the task on the agent that took it."""
        async for item in stream_task(self.mesh.bus, task, timeout=timeout):
            if isinstance(item, Chunk):
                note(item.text)
            else:
                return _task_answer(item)
        raise AgoraError(f"task {task.task_id}: the stream ended without a result")

    def _to_agent(self, task: Task, agent_id: str, timeout: float, note: Note) -> Run:
        bus = self.mesh.bus

        async def work() -> Answer:
            note(f"sent to {self._name(agent_id)}")
            return _task_answer(await submit_task(bus, task, timeout=timeout, agent_id=agent_id))

        def cancel(running: asyncio.Task[Answer]) -> None:
            running.cancel()
            self.mesh.run(cancel_task(bus, agent_id, task.task_id), f"cancel {task.task_id}")

        return Run(work(), cancel)

    def _durable(self, capability: str, parameters: dict[str, Any], *, task_id: str,
                 priority: int, timeout: float, wait: bool, note: Note,
                 callback: str | None) -> Run:
        jobs = self.mesh.jobs

        async def work() -> Answer:
            receipt = await jobs.submit(capability, parameters, task_id=task_id,
                                        priority=priority, timeout=min(timeout, 10.0),
                                        deadline=time.time() + timeout, callback=callback)
            pending = {"task_id": receipt.task_id, "status": "PENDING",
                       "duplicate": receipt.duplicate}
            if not wait:
                return Answer(json.dumps(pending), pending)
            note(f"stored as durable job {receipt.task_id}"
                 + (" (submitted before: the same job)" if receipt.duplicate else ""))
            return _task_answer(await jobs.wait(receipt.task_id, timeout=timeout))

        def cancel(running: asyncio.Task[Answer]) -> None:
            running.cancel()
            if wait:
                self.mesh.run(jobs.cancel(task_id), f"cancel job {task_id}")

        return Run(work(), cancel)

    def result(self, arguments: Mapping[str, Any], note: Note | None) -> Run:
        """``mesh_result``: a durable job's stored result, waited for up to ``wait`` seconds."""
        say = note or _ignore
        task_id = valid_task_id(arguments["task_id"])
        wait = float(arguments.get("wait") or 0)
        jobs = self.mesh.jobs

        async def work() -> Answer:
            await jobs.js.ensure(timeout=10.0)
            result = await jobs.result(task_id)
            if result is None and wait > 0:
                say(f"waiting up to {wait:g}s for the result of {task_id}")
                try:
                    result = await jobs.wait(task_id, timeout=wait)
                except BusTimeout:
                    result = None
            if result is None:
                raise JobNotFound(f"no result for task {task_id} yet: it is queued, running or "
                                  f"unknown, or its result expired")
            return _task_answer(result)

        return Run(work())

    # -- collaborations and workflows ---------------------------------------------------

    def collaborate(self, arguments: Mapping[str, Any], note: Note | None) -> Run:
        """``mesh_collaborate``: the request as the HTTP API takes it, run from here."""
        say = note or _ignore

        def event(record: dict[str, Any]) -> None:
            kind = record.get("event")
            rest = {key: value for key, value in record.items() if key not in ("event", "mode")}
            say(f"{kind}: {_clip(rest)}" if rest else str(kind))

        collaboration = Collaboration(self.mesh.dispatcher, timeout=self.task_timeout,
                                      task_timeout=self.task_timeout, on_event=event)

        async def work() -> Answer:
            result = await collaboration.run(dict(arguments))
            return Answer(json.dumps(result, ensure_ascii=False, default=str), result)

        return Run(work())

    def workflow(self, arguments: Mapping[str, Any], note: Note | None) -> Run:
        """``mesh_workflow``: the workflow (a mapping or YAML text) checked, then run here."""
        say = note or _ignore
        given = arguments["workflow"]
        flow = (Workflow.from_yaml(given, name="workflow") if isinstance(given, str)
                else Workflow.from_dict(given, name="workflow"))
        timeout = arguments.get("timeout")

        def event(step: WorkflowEvent) -> None:
            record = step.as_dict()
            detail = record.get("detail") or record.get("status") or ""
            who = f" ({record['agent_name']})" if record.get("agent_name") else ""
            say(_one_line(f"{record['step']}: {record['event']}{who} {detail}", _NOTE_WIDTH))

        async def work() -> Answer:
            result = await run_workflow(
                flow, self.mesh.dispatcher, inputs=arguments.get("inputs") or {},
                on_event=event, strategy=arguments.get("strategy", Strategy.AUCTION),
                timeout=None if timeout is None else float(timeout), check=False)
            record = result.as_dict()
            if result.error is not None:
                return Answer(failure(result.error).text, record, error=True)
            return Answer(json.dumps(result.outputs, ensure_ascii=False, default=str), record)

        return Run(work())

    # -- progress ----------------------------------------------------------------------

    def _name(self, agent_id: object) -> str:
        card: AgentCard | None = (self.mesh.dispatcher.card(agent_id)
                                  if isinstance(agent_id, str) else None)
        return card.name if card is not None else f"{str(agent_id)[:8]}…"

    def _auction_notes(self, note: Note) -> Callable[[Progress], None]:
        """An auction's events as lines of text (its streamed chunks as they are)."""
        def show(event: Progress) -> None:
            detail = event.detail
            line = {
                "cfp": lambda: f"call for proposals #{detail.get('attempt')} to "
                               f"{detail.get('known')} known capable agent(s)",
                "bids": lambda: f"{detail.get('bids')} bid(s); best: " + ", ".join(
                    self._name(agent) for agent in detail.get("ranking", [])[:3]),
                "waiting": lambda: f"every capable agent is busy; calling again in "
                                   f"{detail.get('seconds')}s",
                "award": lambda: f"awarded {'directly ' if detail.get('direct') else ''}"
                                 f"to {self._name(detail.get('agent'))}"
                                 + (" (the one agent known to offer it)"
                                    if detail.get("direct") else ""),
                "accepted": lambda: f"{self._name(detail.get('agent'))} is working on it",
                "declined": lambda: f"{self._name(detail.get('agent'))} declined: "
                                    f"{detail.get('reason')}",
                "lost": lambda: f"lost {self._name(detail.get('agent'))}; re-auctioning",
                "reauction": lambda: f"re-auction #{detail.get('attempt')}",
                "chunk": lambda: str(detail.get("text", "")),
                "result": lambda: f"result from {self._name(detail.get('agent'))}: "
                                  f"{detail.get('status')}",
            }.get(event.event)
            if line is not None:
                note(line())

        return show
