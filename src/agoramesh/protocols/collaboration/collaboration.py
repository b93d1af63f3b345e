"""Collaboration modes (M-3.4): sequential, parallel, map-reduce, debate, voting.

A :class:`Collaboration` drives several tasks through a :class:`Dispatcher`
from the node or client that asks for it (no central controller).
``run(request)`` takes a
:class:`~agoramesh.protocols.collaboration.request.CollaborationRequest` or
its HTTP/CLI shape ``{mode, topic, agents, rounds, requirements}`` (the
fields, the ``agents`` selectors and the ``${…}`` references are documented
there); each mode is also a method, which makes that request. The request
checks the input, once; a mode checks only what needs the mesh (the named
agents exist, offer the capability, and ``positions`` names participants).
Work for no named agent goes by the dispatcher's default route (an auction).

Failures: the failure of one agent (a FAILED result, a timeout, an agent that
left) is *recorded* in the result — ``status``/``error`` of that record, an
abstention in a vote — and the collaboration carries on. What stops it:
invalid input (:class:`InvalidInput`), nobody offering a capability for unnamed
work (:class:`NoResponders` / :class:`NoBidders`), and the whole collaboration
overrunning ``timeout`` (:class:`BusTimeout`). Every task waits at most
``task_timeout``.

A *record* is ``{agent, agent_id, capability, status, output, error}``
(``status`` COMPLETED or FAILED, ``error`` ``{type, message}`` or null).
Per mode, what happens → the result:

- ``sequential``: the stages run in order → ``{mode, steps: [{stage, name,
  …record}], output, completed}``. It stops at the first failed stage
  (``output`` null, ``completed`` false).
- ``parallel``: the same task to every chosen agent at once → ``{mode,
  capability, results: [record], failed: [record]}``.
- ``map-reduce``: the map tasks run at most ``concurrency`` at a time, spread
  over ``agents`` if named; the collected map outputs, in item order, joined
  by newlines when all are strings (else a list), feed the one reduce task →
  ``{mode, map: [{index, …record}], failed: [{index, …record}], reduce: record
  | null, output}``.
- ``debate``: participant *i* in the given order (or by name) argues ``for``
  when *i* is even, ``against`` when odd, unless ``positions`` says otherwise.
  Each round every participant in turn argues (``text.debate``) given the last
  50 arguments. Then every participant offering ``vote`` (or the named
  ``voters``; or, when no participant votes, every agent offering ``vote``)
  votes on ``["for", "against"]`` with the history as the question. Majority
  wins; a tie goes to the side whose arguments had the higher summed
  confidence, then to ``for`` → ``{mode, topic, rounds, participants: [{agent,
  agent_id, position}], debate_history: [{round, agent, agent_id, position,
  argument, confidence}], failed: [{round, agent, agent_id, position, error}],
  consensus: {position, votes: {for, against}, support: {for, against} (summed
  confidence), decided_by: majority|confidence|order, ballots: [{agent,
  agent_id, choice, reason}], abstained: [{agent, agent_id, error}],
  summary}}``.
- ``voting``: every voter picks one of ``options`` → ``{mode, question,
  options, votes: [{agent, agent_id, choice, reason}], abstained: [{agent,
  agent_id, error}], tally: {option: n}, winner, tied}``; the top option wins,
  ties go to the earliest in ``options``; a ballot that fails or names no
  option is an abstention; no valid ballot: winner null.

Progress events (``on_event``) are dicts with ``event`` and ``mode``:
``started``, ``step`` (a sequential stage, a parallel or map task, the
reduce), ``argument``, ``failed`` (a debate turn), ``vote``, ``abstain``,
``consensus`` and ``finished``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from agoramesh.errors import (
    AgoraError,
    BusTimeout,
    InvalidInput,
    NoBidders,
    NoResponders,
    SubjectError,
    error_to_wire,
)
from agoramesh.nodes.card import AgentCard
from agoramesh.nodes.task import TaskStatus
from agoramesh.protocols.allocation.dispatch import Dispatcher
from agoramesh.protocols.collaboration.request import (
    _MAX_QUESTION,
    _SIDES,
    CollaborationMode,
    CollaborationRequest,
    _Debate,
    _MapReduce,
    _Parallel,
    _render,
    _Sequential,
    _Voting,
)

__all__ = ("DEBATE_CAPABILITY", "VOTE_CAPABILITY", "Collaboration", "EventHandler")

log = logging.getLogger("agoramesh.collaboration")

DEBATE_CAPABILITY = "text.debate"
VOTE_CAPABILITY = "vote"

#: Receives every progress event; exceptions it raises are logged and ignored.
EventHandler = Callable[[dict[str, Any]], None]

_T = TypeVar("_T")
_COMPLETED = TaskStatus.COMPLETED.value
_HISTORY_SENT = 50  # arguments a debater is shown: bounds the envelope, keeps the thread


# --- records and the debate's outcome -------------------------------------------------------------

def _failure(card: AgentCard | None, capability: str, error: BaseException) -> dict[str, Any]:
    return {"agent": card.name if card else None, "agent_id": card.id if card else None,
            "capability": capability, "status": TaskStatus.FAILED.value, "output": None,
            "error": error_to_wire(error)}


def _confidence(value: object) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1:
        return float(value)
    return 0.0


def _debate_question(topic: str, history: Sequence[Mapping[str, Any]]) -> str:
    """The ballot question: the topic, then as many of the latest arguments as fit."""
    head = (f"Debate: {topic}\nAfter {len(history)} argument(s), which position is better "
            f"supported: for or against?")
    lines: list[str] = []
    room = _MAX_QUESTION - len(head)
    for entry in reversed(history):
        line = f"\n[round {entry['round']}] {entry['agent']} ({entry['position']}): " \
               f"{entry['argument']}"
        if len(line) > room:
            break
        lines.append(line)
        room -= len(line)
    return head + "".join(reversed(lines))


def _consensus(topic: str, rounds: int, history: Sequence[Mapping[str, Any]],
               ballots: list[dict[str, Any]], abstained: list[dict[str, Any]]
               ) -> dict[str, Any]:
    votes = {side: sum(1 for ballot in ballots if ballot["choice"] == side) for side in _SIDES}
    support = {side: round(sum(entry["confidence"] for entry in history
                               if entry["position"] == side), 4) for side in _SIDES}
    if votes["for"] != votes["against"]:
        position, decided_by = max(_SIDES, key=lambda side: votes[side]), "majority"
    elif support["for"] != support["against"]:
        position, decided_by = max(_SIDES, key=lambda side: support[side]), "confidence"
    else:
        position, decided_by = "for", "order"
    summary = (f"{position} carries the debate on {topic!r}: {votes['for']} vote(s) for, "
               f"{votes['against']} against, decided by {decided_by} after {rounds} round(s).")
    best = max((entry for entry in history if entry["position"] == position),
               key=lambda entry: entry["confidence"], default=None)
    if best is not None:
        summary += (f" Strongest argument ({best['agent']}, round {best['round']}): "
                    f"{best['argument']}")
    return {"position": position, "votes": votes, "support": support, "decided_by": decided_by,
            "ballots": ballots, "abstained": abstained, "summary": summary}


@dataclass(frozen=True, slots=True)
class _Run:
    mode: CollaborationMode
    deadline: float  # loop time


_RUN: contextvars.ContextVar[_Run | None] = contextvars.ContextVar("agoramesh_collaboration",
                                                                   default=None)


class Collaboration:
    """Runs the collaboration modes through one :class:`Dispatcher`.

    ``timeout`` bounds a whole collaboration, ``task_timeout`` each task in it;
    ``concurrency`` bounds the tasks running at once (parallel, map, ballots).
    """

    def __init__(self, dispatcher: Dispatcher, *, timeout: float = 120.0,
                 task_timeout: float = 30.0, concurrency: int = 8,
                 on_event: EventHandler | None = None) -> None:
        if not timeout > 0 or not task_timeout > 0 or concurrency < 1:
            raise InvalidInput("timeouts must be positive and concurrency at least 1")
        self.dispatcher = dispatcher
        self.timeout = timeout
        self.task_timeout = task_timeout
        self.concurrency = concurrency
        self.on_event = on_event

    async def run(self, request: CollaborationRequest | Mapping[str, Any]) -> dict[str, Any]:
        """Run the HTTP/CLI shape ``{mode, topic, agents, rounds, requirements}``.

        The request checks its input (InvalidInput); the modes check only what
        needs the mesh: who the named agents are and what they offer.
        """
        if not isinstance(request, CollaborationRequest):
            request = CollaborationRequest.from_dict(request)
        async with self._running(request.mode):
            match request.plan:
                case _Sequential() as sequential:
                    return await self._sequential(sequential)
                case _Parallel() as parallel:
                    return await self._parallel(parallel)
                case _MapReduce() as map_reduce:
                    return await self._map_reduce(map_reduce)
                case _Debate() as debate:
                    return await self._debate(debate)
                case _Voting() as voting:
                    return await self._voting(voting)

    # --- the modes, as methods ----------------------------------------------------------------

    async def sequential(self, stages: Sequence[Mapping[str, Any]], *,
                         topic: str | None = None) -> dict[str, Any]:
        """Each stage's output feeds the next through ``${previous.output…}`` references."""
        return await self.run({"mode": CollaborationMode.SEQUENTIAL, "topic": topic,
                               "requirements": {"stages": stages}})

    async def parallel(self, capability: str, parameters: Mapping[str, Any] | None = None,
                       agents: Sequence[str] | int | None = None, *,
                       topic: str | None = None) -> dict[str, Any]:
        """The same task to several agents at once (see the module docstring for ``agents``)."""
        return await self.run({"mode": CollaborationMode.PARALLEL, "topic": topic,
                               "agents": agents, "requirements": {
                                   "capability": capability, "parameters": parameters}})

    async def map_reduce(self, items: Sequence[Any], *, map_capability: str | None = None,
                         reduce_capability: str | None = None, item_field: str | None = None,
                         collect: str | None = "summary", reduce_field: str | None = None,
                         map_parameters: Mapping[str, Any] | None = None,
                         reduce_parameters: Mapping[str, Any] | None = None,
                         agents: Sequence[str] | None = None,
                         topic: str | None = None) -> dict[str, Any]:
        """Map every item concurrently, then reduce the collected outputs in one task."""
        return await self.run({"mode": CollaborationMode.MAP_REDUCE, "topic": topic,
                               "agents": agents, "requirements": {
                                   "items": items, "map": map_capability,
                                   "reduce": reduce_capability, "item_field": item_field,
                                   "collect": collect, "reduce_field": reduce_field,
                                   "map_parameters": map_parameters,
                                   "reduce_parameters": reduce_parameters}})

    async def debate(self, topic: str, agents: Sequence[str] | None = None, rounds: int = 2, *,
                     voters: Sequence[str] | None = None,
                     positions: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Rounds of arguments for and against ``topic``, then a vote for the consensus."""
        return await self.run({"mode": CollaborationMode.DEBATE, "topic": topic,
                               "agents": agents, "rounds": rounds,
                               "requirements": {"voters": voters, "positions": positions}})

    async def voting(self, question: str, options: Sequence[str],
                     agents: Sequence[str] | None = None) -> dict[str, Any]:
        """Every voter picks one option; the most votes win (ties: the earliest option)."""
        return await self.run({"mode": CollaborationMode.VOTING, "topic": question,
                               "agents": agents, "requirements": {"options": options}})

    # --- the modes, run from their checked plans (inside _running) -----------------------------

    async def _sequential(self, plan: _Sequential) -> dict[str, Any]:
        cards = [None if stage.agent is None else
                 self._least_loaded(self._participants([stage.agent], stage.capability))
                 for stage in plan.stages]
        self._emit("started", stages=[stage.name for stage in plan.stages])
        steps: list[dict[str, Any]] = []
        outputs: dict[str, Any] = {}
        previous: Any = None
        for number, (stage, card) in enumerate(zip(plan.stages, cards, strict=True), 1):
            try:
                parameters = _render(stage.parameters, topic=plan.topic, previous=previous,
                                     outputs=outputs)
            except LookupError as exc:  # a FIELD the earlier output does not have
                record = _failure(card, stage.capability, InvalidInput(str(exc)))
            else:
                record = await self._submit(stage.capability, parameters, card)
            steps.append({"stage": number, "name": stage.name, **record})
            self._emit("step", **steps[-1])
            if record["status"] != _COMPLETED:
                break
            previous = outputs[stage.name] = record["output"]
        completed = len(outputs) == len(plan.stages)
        self._emit("finished", completed=completed)
        return {"mode": CollaborationMode.SEQUENTIAL.value, "steps": steps,
                "output": previous if completed else None, "completed": completed}

    async def _parallel(self, plan: _Parallel) -> dict[str, Any]:
        capability = plan.capability
        if isinstance(plan.agents, int):
            capable = sorted(self.dispatcher.select(capability), key=self.dispatcher.load_order)
            if len(capable) < plan.agents:
                raise NoResponders(f"{plan.agents} agents asked for, but only {len(capable)} "
                                   f"known agent(s) offer {capability}")
            cards = capable[:plan.agents]
        else:
            cards = self._participants(plan.agents, capability)
        parameters = _render(plan.parameters, topic=plan.topic)
        self._emit("started", capability=capability, agents=[card.name for card in cards])

        async def one(card: AgentCard) -> dict[str, Any]:
            record = await self._submit(capability, parameters, card)
            self._emit("step", **record)
            return record

        records = await self._each([functools.partial(one, card) for card in cards])
        results = [record for record in records if record["status"] == _COMPLETED]
        failed = [record for record in records if record["status"] != _COMPLETED]
        self._emit("finished", completed=len(results), failed=len(failed))
        return {"mode": CollaborationMode.PARALLEL.value, "capability": capability,
                "results": results, "failed": failed}

    async def _map_reduce(self, plan: _MapReduce) -> dict[str, Any]:
        cards = [] if plan.agents is None else self._participants(plan.agents,
                                                                  plan.map_capability)
        base = _render(plan.map_parameters, topic=plan.topic)
        self._emit("started", items=len(plan.items), map=plan.map_capability,
                   reduce=plan.reduce_capability)

        async def one(index: int, item: Any) -> dict[str, Any]:
            parameters = ({**base, **item} if isinstance(item, dict)
                          else {**base, plan.item_field: item})
            card = cards[index % len(cards)] if cards else None
            record = {"index": index, **await self._submit(plan.map_capability, parameters,
                                                            card)}
            output = record["output"]
            if record["status"] == _COMPLETED and plan.collect is not None and not (
                    isinstance(output, dict) and plan.collect in output):
                record |= {"status": TaskStatus.FAILED.value, "error": error_to_wire(
                    InvalidInput(f"the map output has no field {plan.collect!r}"))}
            self._emit("step", phase="map", **record)
            return record

        records = await self._each([functools.partial(one, index, item)
                                    for index, item in enumerate(plan.items)])
        mapped = [record for record in records if record["status"] == _COMPLETED]
        reduced: dict[str, Any] | None = None
        if mapped:
            values = [record["output"] if plan.collect is None
                      else record["output"][plan.collect] for record in mapped]
            combined: Any = ("\n".join(values) if all(isinstance(v, str) for v in values)
                             else values)
            parameters = {**_render(plan.reduce_parameters, topic=plan.topic),
                          plan.reduce_field: combined}
            reduced = await self._submit(plan.reduce_capability, parameters, None)
            self._emit("step", phase="reduce", **reduced)
        self._emit("finished", mapped=len(mapped), failed=len(records) - len(mapped))
        return {"mode": CollaborationMode.MAP_REDUCE.value, "map": mapped,
                "failed": [record for record in records if record["status"] != _COMPLETED],
                "reduce": reduced, "output": reduced["output"] if reduced else None}

    async def _debate(self, plan: _Debate) -> dict[str, Any]:
        topic, rounds, sides = plan.topic, plan.rounds, plan.positions
        cards = self._participants(plan.agents, DEBATE_CAPABILITY, minimum=2)
        # Only the mesh knows who takes part: the request could not check this.
        unknown = set(sides) - {card.name for card in cards} - {card.id for card in cards}
        if unknown:
            raise InvalidInput(f"'positions' names no participant: {sorted(unknown)[0]!r}")
        seats = [(card, sides.get(card.name) or sides.get(card.id) or _SIDES[index % 2])
                 for index, card in enumerate(cards)]
        participants = [{"agent": card.name, "agent_id": card.id, "position": position}
                        for card, position in seats]
        self._emit("started", topic=topic, rounds=rounds, participants=participants)
        history: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        for round_ in range(1, rounds + 1):
            for card, position in seats:
                shown = [{key: entry[key] for key in ("round", "agent", "position", "argument")}
                         for entry in history[-_HISTORY_SENT:]]
                record = await self._submit(DEBATE_CAPABILITY, {
                    "topic": topic, "position": position, "round": round_,
                    "history": shown}, card)
                turn = {"round": round_, "agent": card.name, "agent_id": card.id,
                        "position": position}
                output = record["output"]
                if record["status"] == _COMPLETED and isinstance(output, dict) \
                        and isinstance(output.get("argument"), str):
                    history.append({**turn, "argument": output["argument"],
                                    "confidence": _confidence(output.get("confidence"))})
                    self._emit("argument", **history[-1])
                else:
                    failed.append({**turn, "error": record["error"] or error_to_wire(
                        InvalidInput("the answer has no argument"))})
                    self._emit("failed", **failed[-1])
        if plan.voters is not None:
            electorate = self._participants(plan.voters, VOTE_CAPABILITY)
        else:
            electorate = ([card for card in cards if card.offers(VOTE_CAPABILITY)]
                          or self.dispatcher.select(VOTE_CAPABILITY))
        ballots, abstained = await self._ballots(_debate_question(topic, history), _SIDES,
                                                 electorate)
        consensus = _consensus(topic, rounds, history, ballots, abstained)
        self._emit("consensus", position=consensus["position"], votes=consensus["votes"],
                   decided_by=consensus["decided_by"], summary=consensus["summary"])
        self._emit("finished")
        return {"mode": CollaborationMode.DEBATE.value, "topic": topic, "rounds": rounds,
                "participants": participants, "debate_history": history, "failed": failed,
                "consensus": consensus}

    async def _voting(self, plan: _Voting) -> dict[str, Any]:
        question, choices = plan.question, plan.options
        voters = self._participants(plan.agents, VOTE_CAPABILITY)
        self._emit("started", question=question, options=list(choices),
                   voters=[card.name for card in voters])
        ballots, abstained = await self._ballots(question, choices, voters)
        tally = {option: sum(1 for ballot in ballots if ballot["choice"] == option)
                 for option in choices}
        top = max(tally.values())
        tied = [option for option in choices if tally[option] == top] if ballots else []
        winner = tied[0] if tied else None
        self._emit("finished", winner=winner, tally=tally)
        return {"mode": CollaborationMode.VOTING.value, "question": question,
                "options": list(choices), "votes": ballots, "abstained": abstained,
                "tally": tally, "winner": winner, "tied": tied if len(tied) > 1 else []}

    # --- machinery ----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _running(self, mode: CollaborationMode) -> AsyncIterator[None]:
        token = _RUN.set(_Run(mode, asyncio.get_running_loop().time() + self.timeout))
        try:
            async with asyncio.timeout(self.timeout):
                yield
        except TimeoutError as exc:
            if isinstance(exc, BusTimeout):
                raise
            raise BusTimeout(f"the {mode.value} collaboration did not finish within "
                             f"{self.timeout:g}s") from None
        finally:
            _RUN.reset(token)

    def _emit(self, event: str, **fields: Any) -> None:
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

    async def _submit(self, capability: str, parameters: dict[str, Any],
                      card: AgentCard | None) -> dict[str, Any]:
        """One task as a record; only "nobody offers it" for unnamed work is raised."""
        try:
            result = await self.dispatcher.submit(capability, parameters,
                                                  agent_id=card.id if card else None,
                                                  timeout=self._task_timeout())
        except (NoResponders, NoBidders):
            if card is None:
                raise
            return _failure(card, capability, NoResponders(f"agent {card.name} did not answer"))
        except AgoraError as exc:
            return _failure(card, capability, exc)
        agent_id = result.agent_id or (card.id if card else None)
        known = card or (self.dispatcher.card(agent_id) if agent_id else None)
        name = known.name if known else None
        completed = result.status is TaskStatus.COMPLETED
        return {"agent": name, "agent_id": agent_id, "capability": capability,
                "status": result.status.value, "output": result.result if completed else None,
                "error": None if completed else result.error or {"type": "TaskError",
                                                                 "message": "failed"}}

    async def _each(self, jobs: Sequence[Callable[[], Awaitable[_T]]]) -> list[_T]:
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

    async def _ballots(self, question: str, options: Sequence[str], voters: list[AgentCard]
                       ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        async def cast(card: AgentCard) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
            record = await self._submit(VOTE_CAPABILITY, {
                "question": question, "options": list(options), "voter": card.name[:200]}, card)
            output = record["output"]
            seat = {"agent": card.name, "agent_id": card.id}
            if record["status"] == _COMPLETED and isinstance(output, dict) \
                    and isinstance(output.get("choice"), str) and output["choice"] in options:
                ballot = {**seat, "choice": output["choice"],
                          "reason": str(output.get("reason") or "")}
                self._emit("vote", **ballot)
                return ballot, None
            missing = {**seat, "error": record["error"] or error_to_wire(
                InvalidInput(f"the ballot names none of the options: {output!r:.100}"))}
            self._emit("abstain", **missing)
            return None, missing

        cast_ballots = await self._each([functools.partial(cast, card) for card in voters])
        return ([ballot for ballot, _ in cast_ballots if ballot is not None],
                [missing for _, missing in cast_ballots if missing is not None])

    def _least_loaded(self, cards: list[AgentCard]) -> AgentCard:
        return min(cards, key=self.dispatcher.load_order)

    def _resolve(self, spec: str) -> list[AgentCard]:
        if ":" in spec:
            try:
                return self.dispatcher.select(spec)
            except SubjectError as exc:
                raise InvalidInput(str(exc)) from None
        return self.dispatcher.select(f"name:{spec}") or self.dispatcher.select(f"id:{spec}")

    def _participants(self, specs: Sequence[str] | None, capability: str, *,
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
                raise InvalidInput(f"agent {spec!r} does not offer {capability}" if matched
                                   else f"no known agent matches {spec!r} (known: {known})")
            for card in capable:
                chosen.setdefault(card.id, card)
        if len(chosen) < minimum:
            raise InvalidInput(f"at least {minimum} agents offering {capability} are needed, "
                               f"{len(chosen)} named")
        return list(chosen.values())
