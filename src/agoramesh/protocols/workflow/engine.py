"""Running a workflow (M-3.5): the node that submits it drives it — no central controller.

:func:`run_workflow` checks the workflow first (:meth:`Workflow.validate`
with the dispatcher: nothing is sent if a selector, reference or input is
wrong), then starts one asyncio task per step in a TaskGroup. A step waits
for the steps it needs and starts the moment they are done, so independent
steps run concurrently. Then, for each step:

1. if a step it needs was SKIPPED (and its ``when`` does not read that step's
   status), it is SKIPPED too; if its ``when`` is false, it is SKIPPED;
2. its parameters are rendered from the inputs and earlier outputs (a missing
   field fails the step, naming the path);
3. the task goes out through the :class:`Dispatcher`. ``capability:``
   selectors go to ``submit(capability)`` with the run's strategy (an auction
   by default). ``type:``/``name:``/``id:`` selectors resolve to the known
   agents they pick that offer the capability: one agent gets the task
   directly; several hold an auction with every other capable agent excluded
   (with the ``direct`` strategy, the least loaded of them gets it directly);
4. a FAILED result, no bidders/responders or a timeout is retried up to
   ``retries`` times after a short pause (0.1 s doubling, at most 1 s),
   avoiding the agent that just failed when another can do it. Parameters
   rejected by the agent (InvalidInput), a task request it refuses
   (InvalidTask) and refused credentials are not retried: the same input
   fails the same way.

A step that still fails ends the run at once: the steps running are cancelled
(CANCELLED; an agent already working finishes its task, and the result is
dropped), the steps not started are NOT_RUN, and :class:`StepFailed` is
raised — or, with ``check=False``, returned in a FAILED
:class:`WorkflowResult` with everything that did finish. Every wait is
bounded: each attempt by the step's ``timeout`` (default: the dispatcher's),
the run by ``timeout`` (default: the workflow's; with neither, by the sum
of its steps' attempts).

``on_event`` sees a :class:`WorkflowEvent` as things happen: a step started,
an auction event (award, declined, lost, reauction), a retry, a skip, a step
finished. It runs inline and must be quick; an exception in it is logged and
ignored, so progress reporting cannot break a run.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from agoramesh.errors import (
    AgoraError,
    NegotiationError,
    NoBidders,
    NoResponders,
    StepFailed,
    WorkflowError,
)
from agoramesh.nodes.task import TaskResult, TaskStatus
from agoramesh.observability.tracing import span
from agoramesh.protocols.allocation.dispatch import Dispatcher, Strategy, parse_selector
from agoramesh.protocols.workflow.expr import Reference, render
from agoramesh.protocols.workflow.workflow import Step, Workflow

if TYPE_CHECKING:
    from agoramesh.protocols.auction.policy import Progress

__all__ = ("EventKind", "StepResult", "StepStatus", "WorkflowEvent", "WorkflowResult",
           "WorkflowStatus", "run_workflow")

log = logging.getLogger("agoramesh.workflow")

RETRY_PAUSE = 0.1  # seconds before the first retry; doubles each time
MAX_RETRY_PAUSE = 1.0
ATTEMPT_GRACE = 1.0  # our own bound on an attempt, beyond the timeout given to the dispatcher
_NOT_RETRIED = frozenset({"InvalidInput", "InvalidTask", "BackendAuthError",
                          "UnknownCapability"})
_AUCTION_EVENTS = frozenset({"award", "declined", "lost", "reauction"})


class StepStatus(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"
    CANCELLED = "CANCELLED"  # was running when the run failed or timed out
    NOT_RUN = "NOT_RUN"  # never started: the run ended first


class WorkflowStatus(StrEnum):
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


class EventKind(StrEnum):
    STARTED = "started"
    PROGRESS = "progress"  # an auction event; ``detail`` names it
    RETRYING = "retrying"
    SKIPPED = "skipped"
    FINISHED = "finished"  # COMPLETED or FAILED


@dataclass(frozen=True, kw_only=True)
class WorkflowEvent:
    """Something that happened to a step; ``at`` is seconds since the run started."""

    kind: EventKind
    step: str
    at: float
    selector: str = ""
    attempt: int = 1
    status: StepStatus | None = None
    agent_id: str | None = None
    agent_name: str | None = None
    elapsed_ms: float | None = None
    detail: str | None = None  # why it was skipped or retried, the failure, the auction event

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"event": self.kind.value, "step": self.step,
                                "at": round(self.at, 3), "selector": self.selector,
                                "attempt": self.attempt}
        optional = {"status": self.status.value if self.status else None,
                    "agent_id": self.agent_id, "agent_name": self.agent_name,
                    "elapsed_ms": None if self.elapsed_ms is None else round(self.elapsed_ms, 1),
                    "detail": self.detail}
        return data | {key: value for key, value in optional.items() if value is not None}


@dataclass(kw_only=True)
class StepResult:
    """What became of one step (filled in as the run goes)."""

    name: str
    status: StepStatus = StepStatus.PENDING
    output: Any = None
    agent_id: str | None = None
    agent_name: str | None = None
    attempts: int = 0
    task_id: str | None = None
    started_at: float | None = None  # seconds after the run started
    elapsed_ms: float = 0.0  # from the first attempt to the end, pauses included
    tokens_used: int = 0
    cost_usd: float = 0.0
    error: str | None = None  # FAILED: the last failure
    reason: str | None = None  # SKIPPED: why

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status.value, "output": self.output,
                "agent_id": self.agent_id, "agent_name": self.agent_name,
                "attempts": self.attempts, "task_id": self.task_id,
                "started_at": None if self.started_at is None else round(self.started_at, 3),
                "elapsed_ms": round(self.elapsed_ms, 1), "tokens_used": self.tokens_used,
                "cost_usd": self.cost_usd, "error": self.error, "reason": self.reason}


@dataclass(frozen=True, kw_only=True)
class WorkflowResult:
    """A finished run: per-step results in declaration order, and the outputs.

    ``outputs`` are the workflow's declared ``outputs`` (references to steps
    that did not complete, or to missing fields, give null), or else every
    completed step's output by step name.
    """

    workflow: str
    status: WorkflowStatus
    steps: Mapping[str, StepResult]
    outputs: dict[str, Any]
    inputs: dict[str, Any] = field(default_factory=dict)
    elapsed_ms: float = 0.0
    error: WorkflowError | None = None

    @property
    def ok(self) -> bool:
        return self.status is WorkflowStatus.COMPLETED

    def raise_for_status(self) -> WorkflowResult:
        """The result itself if it completed; its error (StepFailed, WorkflowError) if not."""
        if self.error is not None:
            raise self.error
        return self

    def as_dict(self) -> dict[str, Any]:
        return {"workflow": self.workflow, "status": self.status.value,
                "elapsed_ms": round(self.elapsed_ms, 1), "inputs": self.inputs,
                "outputs": self.outputs,
                "steps": {name: step.as_dict() for name, step in self.steps.items()},
                "error": None if self.error is None else str(self.error)}


async def run_workflow(workflow: Workflow, dispatcher: Dispatcher, *,
                       inputs: Mapping[str, Any] | None = None,
                       on_event: Callable[[WorkflowEvent], None] | None = None,
                       strategy: Strategy | str = Strategy.AUCTION,
                       timeout: float | None = None, check: bool = True) -> WorkflowResult:
    """Check ``workflow`` against the agents ``dispatcher`` knows, then run it here.

    Raises WorkflowInvalid before anything is sent; StepFailed when a step
    fails after its retries and WorkflowError when ``timeout`` passes — unless
    ``check=False``, which returns those as a FAILED result instead.
    """
    values = workflow.validate(dispatcher, inputs)
    run = _Run(workflow, dispatcher, values, on_event, Strategy(strategy))
    with span("agoramesh.workflow", attributes={"agoramesh.workflow": workflow.name}) as traced:
        result = await run.run(timeout if timeout is not None else workflow.timeout)
        traced.set_attribute("agoramesh.status", result.status.value)
    return result.raise_for_status() if check else result


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _Run:
    """The state of one run; ``run`` is called once."""

    def __init__(self, workflow: Workflow, dispatcher: Dispatcher, inputs: dict[str, Any],
                 on_event: Callable[[WorkflowEvent], None] | None, strategy: Strategy) -> None:
        self.workflow = workflow
        self.dispatcher = dispatcher
        self.inputs = inputs
        self.on_event = on_event
        self.strategy = strategy
        self.results = {step.name: StepResult(name=step.name) for step in workflow.steps}
        self.done = {step.name: asyncio.Event() for step in workflow.steps}
        self.failing = False  # a step failed: the run is ending, nothing new starts
        self.started = time.perf_counter()

    def _now(self) -> float:
        return time.perf_counter() - self.started

    async def run(self, timeout: float | None) -> WorkflowResult:
        error: WorkflowError | None = None
        try:
            async with asyncio.timeout(timeout):
                error = await self._run_steps()
        except TimeoutError:
            running = [name for name, r in self.results.items() if r.status is StepStatus.RUNNING]
            error = WorkflowError(f"workflow {self.workflow.name!r} did not finish within "
                                  f"{timeout:g}s" + (f" (still running: {', '.join(running)})"
                                                     if running else ""))
        for result in self.results.values():
            if result.status is StepStatus.RUNNING:
                result.status = StepStatus.CANCELLED
            elif result.status is StepStatus.PENDING:
                result.status = StepStatus.NOT_RUN
        return WorkflowResult(
            workflow=self.workflow.name,
            status=WorkflowStatus.FAILED if error else WorkflowStatus.COMPLETED,
            steps=dict(self.results), outputs=self._outputs(), inputs=self.inputs,
            elapsed_ms=self._now() * 1000, error=error)

    async def _run_steps(self) -> StepFailed | None:
        """None when every step completed or was skipped; else the first failure."""
        failures: list[StepFailed] = []
        try:
            async with asyncio.TaskGroup() as group:
                for name in self.workflow.order:
                    group.create_task(self._drive(self.workflow.step(name)),
                                      name=f"workflow-{self.workflow.name}-{name}")
        except* StepFailed as group:
            failures += [exc for exc in group.exceptions if isinstance(exc, StepFailed)]
        return failures[0] if failures else None

    # -- one step ------------------------------------------------------------------

    async def _drive(self, step: Step) -> None:
        for name in sorted(step.needs):
            await self.done[name].wait()  # set only for COMPLETED or SKIPPED steps
        if self.failing:
            return  # another step failed and the group is being cancelled: start nothing
        skipped = sorted(name for name in step.needs - step.decides_on
                         if self.results[name].status is StepStatus.SKIPPED)
        if skipped:
            self._skip(step, f"{'steps' if len(skipped) > 1 else 'step'} "
                             f"{', '.join(skipped)} skipped")
            return
        if step.condition is not None:
            try:
                go = step.condition.evaluate(self._lookup)
            except (LookupError, TypeError, ValueError) as exc:
                raise self._fail(step, f"condition {step.condition.text!r} cannot be "
                                       f"evaluated: {exc}") from None
            if not go:
                self._skip(step, f"condition is false: {step.condition.text}")
                return
        try:
            parameters = render(step.parameters, self._lookup)
        except LookupError as exc:
            raise self._fail(step, f"parameters: {exc}") from None
        await self._execute(step, parameters)
        self.done[step.name].set()

    def _lookup(self, ref: Reference) -> Any:
        if ref.source == "inputs":
            return ref.follow(self.inputs[ref.name])
        result = self.results[ref.name]
        if ref.attribute == "status":
            return result.status.value
        if result.status is not StepStatus.COMPLETED:
            raise LookupError(f"{ref.text}: step {ref.name!r} is {result.status.value}, "
                              f"it has no output")
        return ref.follow(result.output)

    def _outputs(self) -> dict[str, Any]:
        if not self.workflow.outputs:
            return {name: r.output for name, r in self.results.items()
                    if r.status is StepStatus.COMPLETED}

        def lenient(ref: Reference) -> Any:
            try:
                return self._lookup(ref)
            except LookupError:
                return None

        return {name: render(value, lenient) for name, value in self.workflow.outputs.items()}

    async def _execute(self, step: Step, parameters: dict[str, Any]) -> None:
        with span("agoramesh.workflow.step",
                  attributes={"agoramesh.step": step.name,
                              "agoramesh.capability": step.task_capability}):
            await self._attempts(step, parameters)

    async def _attempts(self, step: Step, parameters: dict[str, Any]) -> None:
        result = self.results[step.name]
        result.status, result.started_at = StepStatus.RUNNING, self._now()
        avoid: set[str] = set()  # agents that failed this step: others first on a retry
        problem = "no attempt made"
        for attempt in range(1, step.retries + 2):
            result.attempts = attempt
            if attempt == 1:
                self._emit(EventKind.STARTED, step)
            else:
                self._emit(EventKind.RETRYING, step, attempt=attempt, detail=problem)
                await asyncio.sleep(min(MAX_RETRY_PAUSE, RETRY_PAUSE * 2 ** (attempt - 2)))
            try:
                outcome = await self._attempt(step, parameters, avoid)
            except (NegotiationError, NoResponders, TimeoutError) as exc:  # BusTimeout too
                problem = _one_line(exc)
                continue
            except AgoraError as exc:
                problem = _one_line(exc)
                break
            if outcome.status is TaskStatus.COMPLETED:
                self._complete(step, outcome)
                return
            error = outcome.error or {}
            problem = f"{error.get('type', 'Error')}: {error.get('message', '')}".strip()
            result.agent_id, result.task_id = outcome.agent_id, outcome.task_id
            if outcome.agent_id:
                avoid.add(outcome.agent_id)
            if error.get("type") in _NOT_RETRIED:
                break
        raise self._fail(step, problem)

    async def _attempt(self, step: Step, parameters: dict[str, Any],
                       avoid: set[str]) -> TaskResult:
        capability = step.task_capability
        wait = step.timeout or self.dispatcher.timeout
        submit = self.dispatcher.submit

        def progress(event: Progress) -> None:
            if event.event in _AUCTION_EVENTS:
                agent = event.detail.get("agent") or event.detail.get("lost") or event.detail.get(
                    "failed")
                self._emit(EventKind.PROGRESS, step, attempt=self.results[step.name].attempts,
                           agent_id=agent if isinstance(agent, str) else None,
                           detail=event.event)

        async with asyncio.timeout(wait + ATTEMPT_GRACE):
            capable = self.dispatcher.auctioneer.known_bidders(capability)
            if parse_selector(step.selector)[0] == "capability":
                exclude = avoid & capable if capable - avoid else set()
                return await submit(capability, parameters, strategy=self.strategy,
                                    timeout=wait, exclude=exclude, progress=progress)
            chosen = step.candidates(self.dispatcher)
            if not chosen:
                raise NoBidders(f"no known agent matches {step.selector!r} and offers "
                                f"{capability!r}")
            preferred = [card for card in chosen if card.id not in avoid] or chosen
            if len(preferred) == 1 or self.strategy is Strategy.DIRECT:
                target = min(preferred, key=self.dispatcher.load_order)
                return await submit(capability, parameters, agent_id=target.id, timeout=wait)
            others = capable - {card.id for card in preferred}
            return await submit(capability, parameters, strategy=Strategy.AUCTION, timeout=wait,
                                exclude=others, progress=progress)

    # -- outcomes and events -------------------------------------------------------------

    def _complete(self, step: Step, outcome: TaskResult) -> None:
        result = self.results[step.name]
        result.status, result.output = StepStatus.COMPLETED, outcome.result
        result.agent_id, result.task_id = outcome.agent_id, outcome.task_id
        result.agent_name = self._agent_name(outcome.agent_id)
        result.tokens_used, result.cost_usd = outcome.tokens_used, outcome.cost_usd
        result.elapsed_ms = (self._now() - (result.started_at or 0.0)) * 1000
        self._emit(EventKind.FINISHED, step, attempt=result.attempts,
                   status=StepStatus.COMPLETED, agent_id=outcome.agent_id,
                   elapsed_ms=result.elapsed_ms)

    def _fail(self, step: Step, problem: str) -> StepFailed:
        self.failing = True
        result = self.results[step.name]
        if result.started_at is not None:
            result.elapsed_ms = (self._now() - result.started_at) * 1000
        result.status, result.error = StepStatus.FAILED, problem
        result.agent_name = self._agent_name(result.agent_id)
        self._emit(EventKind.FINISHED, step, attempt=max(result.attempts, 1),
                   status=StepStatus.FAILED, agent_id=result.agent_id,
                   elapsed_ms=result.elapsed_ms, detail=problem)
        after = (f" after {result.attempts} attempt{'s' if result.attempts > 1 else ''}"
                 if result.attempts else "")
        return StepFailed(f"workflow {self.workflow.name!r}: step {step.name!r} failed{after}: "
                          f"{problem}")

    def _skip(self, step: Step, reason: str) -> None:
        result = self.results[step.name]
        result.status, result.reason = StepStatus.SKIPPED, reason
        self._emit(EventKind.SKIPPED, step, status=StepStatus.SKIPPED, detail=reason)
        self.done[step.name].set()

    def _agent_name(self, agent_id: str | None) -> str | None:
        card = self.dispatcher.card(agent_id) if agent_id is not None else None
        return card.name if card is not None else None

    def _emit(self, kind: EventKind, step: Step, *, attempt: int = 1,
              status: StepStatus | None = None, agent_id: str | None = None,
              elapsed_ms: float | None = None, detail: str | None = None) -> None:
        if self.on_event is None:
            return
        event = WorkflowEvent(kind=kind, step=step.name, at=self._now(), selector=step.selector,
                              attempt=attempt, status=status, agent_id=agent_id,
                              agent_name=self._agent_name(agent_id), elapsed_ms=elapsed_ms,
                              detail=detail)
        try:
            self.on_event(event)
        except Exception:
            log.exception("workflow %s: the on_event callback failed on %s", self.workflow.name,
                          event)
