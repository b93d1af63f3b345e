"""What every collaboration mode runs on: a crew of tasks through one dispatcher.

A :class:`Crew` is one collaboration's machinery: its deadline (``timeout``
over the whole run, ``task_timeout`` per task), its progress events, tasks
submitted as *records*, bounded concurrency, ballots, and the participants
that agent selectors name. The modes are in
:mod:`~agoramesh.protocols.collaboration.pipeline` and
:mod:`~agoramesh.protocols.collaboration.deliberation`; the module docstring
of :mod:`~agoramesh.protocols.collaboration.collaboration` says what each does.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from agoramesh.errors import (
    AgoraError,
    BackendBadResponse,
    BusTimeout,
    InvalidCollaboration,
    NoBidders,
    NoResponders,
    SubjectError,
    error_to_wire,
)
from agoramesh.nodes.card import AgentCard
from agoramesh.nodes.task import TaskStatus
from agoramesh.observability.tracing import span
from agoramesh.protocols.allocation.dispatch import Dispatcher
from agoramesh.protocols.collaboration.request import CollaborationMode

__all__ = ("COMPLETED", "DEBATE_CAPABILITY", "VOTE_CAPABILITY", "Crew", "EventHandler",
           "failure")

log = logging.getLogger("agoramesh.collaboration")

DEBATE_CAPABILITY = "text.debate"
VOTE_CAPABILITY = "vote"

#: Receives every progress event; exceptions it raises are logged and ignored.
EventHandler = Callable[[dict[str, Any]], None]

COMPLETED = TaskStatus.COMPLETED.value
_T = TypeVar("_T")


def failure(card: AgentCard | None, capability: str, error: BaseException) -> dict[str, Any]:
    """The record of a task that failed before or instead of its result."""
    return {"agent": card.name if card else None, "agent_id": card.id if card else None,
            "capability": capability, "status": TaskStatus.FAILED.value, "output": None,
            "error": error_to_wire(error)}


@dataclass(frozen=True, slots=True)
class _Run:
    mode: CollaborationMode
    deadline: float  # loop time


_RUN: contextvars.ContextVar[_Run | None] = contextvars.ContextVar("agoramesh_collaboration",
                                                                   default=None)


class Crew:
    """One collaboration's machinery: tasks as records, under its deadline, with its events."""

    def __init__(self, dispatcher: Dispatcher, *, timeout: float, task_timeout: float,
                 concurrency: int, on_event: EventHandler | None) -> None:
        self.dispatcher = dispatcher
        self.timeout = timeout
        self.task_timeout = task_timeout
        self.concurrency = concurrency
        self.on_event = on_event

    @contextlib.asynccontextmanager
    async def running(self, mode: CollaborationMode) -> AsyncIterator[None]:
        token = _RUN.set(_Run(mode, asyncio.get_running_loop().time() + self.timeout))
        try:
            with span("agoramesh.collaboration", attributes={"agoramesh.mode": mode.value}):
                async with asyncio.timeout(self.timeout):
                    yield
        except TimeoutError as exc:
            if isinstance(exc, BusTimeout):
                raise
            raise BusTimeout(f"the {mode.value} collaboration did not finish within "
                             f"{self.timeout:g}s") from None
        finally:
            _RUN.reset(token)

    def emit(self, event: str, **fields: Any) -> None:
        if self.on_event is None:
            return
        run = _RUN.get()
        try:
            self.on_event({"event": event, "mode": run.mode.value if run else None, **fields})
        except Exception:  # a progress display must not break the work it displays
            log.exception("the collaboration event handler failed on %r", event)

    def _task_timeout(self) -> float:
        run = _RUN.get()
        if run is None:
            return self.task_timeout
        left = run.deadline - asyncio.get_running_loop().time()
        return max(0.05, min(self.task_timeout, left))

    async def submit(self, capability: str, parameters: dict[str, Any],
                      card: AgentCard | None) -> dict[str, Any]:
        """One task as a record; only "nobody offers it" for unnamed work is raised."""
        try:
            with span("agoramesh.collaboration.step",
                      attributes={"agoramesh.capability": capability,
                                  "agoramesh.agent_id": card.id if card else ""}):
                result = await self.dispatcher.submit(capability, parameters,
                                                      agent_id=card.id if card else None,
                                                      timeout=self._task_timeout())
        except (NoResponders, NoBidders):
            if card is None:
                raise
            return failure(card, capability, NoResponders(f"agent {card.name} did not answer"))
        except AgoraError as exc:
            return failure(card, capability, exc)
        agent_id = result.agent_id or (card.id if card else None)
        known = card or (self.dispatcher.card(agent_id) if agent_id else None)
        name = known.name if known else None
        completed = result.status is TaskStatus.COMPLETED
        return {"agent": name, "agent_id": agent_id, "capability": capability,
                "status": result.status.value, "output": result.result if completed else None,
                "error": None if completed else result.error or {"type": "TaskError",
                                                                 "message": "failed"}}

    async def each(self, jobs: Sequence[Callable[[], Awaitable[_T]]]) -> list[_T]:
        """Run ``jobs`` concurrently, at most ``concurrency`` at once; results in order."""
        gate = asyncio.Semaphore(self.concurrency)

        async def bounded(job: Callable[[], Awaitable[_T]]) -> _T:
            async with gate:
                return await job()

        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(bounded(job)) for job in jobs]
        except BaseExceptionGroup as failure:
            raise failure.exceptions[0] from None
        return [task.result() for task in tasks]

    async def ballots(self, question: str, options: Sequence[str], voters: list[AgentCard]
                       ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        async def cast(card: AgentCard) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
            record = await self.submit(VOTE_CAPABILITY, {
                "question": question, "options": list(options), "voter": card.name[:200]}, card)
            output = record["output"]
            seat = {"agent": card.name, "agent_id": card.id}
            if record["status"] == COMPLETED and isinstance(output, dict) \
                    and isinstance(output.get("choice"), str) and output["choice"] in options:
                ballot = {**seat, "choice": output["choice"],
                          "reason": str(output.get("reason") or "")}
                self.emit("vote", **ballot)
                return ballot, None
            missing = {**seat, "error": record["error"] or error_to_wire(
                BackendBadResponse(f"the ballot names none of the options: {output!r:.100}"))}
            self.emit("abstain", **missing)
            return None, missing

        cast_ballots = await self.each([functools.partial(cast, card) for card in voters])
        return ([ballot for ballot, _ in cast_ballots if ballot is not None],
                [missing for _, missing in cast_ballots if missing is not None])

    def least_loaded(self, cards: list[AgentCard]) -> AgentCard:
        return min(cards, key=self.dispatcher.load_order)

    def _resolve(self, spec: str) -> list[AgentCard]:
        if ":" in spec:
            try:
                return self.dispatcher.select(spec)
            except SubjectError as exc:
                raise InvalidCollaboration(str(exc)) from None
        return self.dispatcher.select(f"name:{spec}") or self.dispatcher.select(f"id:{spec}")

    def participants(self, specs: Sequence[str] | None, capability: str, *,
                      minimum: int = 1) -> list[AgentCard]:
        """The agents ``specs`` name (all that offer ``capability`` when None), in order."""
        if specs is None:
            cards = self.dispatcher.select(capability)
            if len(cards) < minimum:
                raise NoResponders(f"{len(cards)} known agent(s) offer {capability}; at least "
                                   f"{minimum} needed")
            return cards
        chosen: dict[str, AgentCard] = {}
        for spec in specs:
            matched = self._resolve(spec)
            capable = [card for card in matched if card.offers(capability)]
            if not capable:
                known = ", ".join(card.name for card in self.dispatcher.agents()[:10]) or "none"
                raise InvalidCollaboration(
                    f"agent {spec!r} does not offer {capability}" if matched
                    else f"no known agent matches {spec!r} (known: {known})")
            for card in capable:
                chosen.setdefault(card.id, card)
        if len(chosen) < minimum:
            raise InvalidCollaboration(f"at least {minimum} agents offering {capability} are "
                                       f"needed, {len(chosen)} named")
        return list(chosen.values())
