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
abstention in a vote — and the collaboration carries on; an output without
what the mode reads from it (a field, an argument, a choice) is such a failure,
:class:`BackendBadResponse`. What stops it: an invalid request
(:class:`InvalidCollaboration`), nobody offering a capability for unnamed work
(:class:`NoResponders` / :class:`NoBidders`), and the whole collaboration
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

The modes run in :mod:`~agoramesh.protocols.collaboration.pipeline` (sequential,
parallel, map-reduce) and :mod:`~agoramesh.protocols.collaboration.deliberation`
(debate, voting), on the machinery of :mod:`~agoramesh.protocols.collaboration.crew`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from agoramesh.errors import ConfigError
from agoramesh.protocols.allocation.dispatch import Dispatcher
from agoramesh.protocols.collaboration import deliberation, pipeline
from agoramesh.protocols.collaboration.crew import Crew, EventHandler
from agoramesh.protocols.collaboration.request import (
    CollaborationMode,
    CollaborationRequest,
    _Debate,
    _MapReduce,
    _Parallel,
    _Sequential,
    _Voting,
)

__all__ = ("Collaboration",)


class Collaboration:
    """Runs the collaboration modes through one :class:`Dispatcher`.

    ``timeout`` bounds a whole collaboration, ``task_timeout`` each task in it;
    ``concurrency`` bounds the tasks running at once (parallel, map, ballots).
    """

    def __init__(self, dispatcher: Dispatcher, *, timeout: float = 120.0,
                 task_timeout: float = 30.0, concurrency: int = 8,
                 on_event: EventHandler | None = None) -> None:
        if not timeout > 0 or not task_timeout > 0 or concurrency < 1:
            raise ConfigError("timeouts must be positive and concurrency at least 1")
        self.dispatcher = dispatcher
        self.timeout = timeout
        self.task_timeout = task_timeout
        self.concurrency = concurrency
        self.on_event = on_event

    async def run(self, request: CollaborationRequest | Mapping[str, Any]) -> dict[str, Any]:
        """Run the HTTP/CLI shape ``{mode, topic, agents, rounds, requirements}``.

        The request checks its input (InvalidCollaboration); the modes check only what
        needs the mesh: who the named agents are and what they offer.
        """
        if not isinstance(request, CollaborationRequest):
            request = CollaborationRequest.from_dict(request)
        crew = Crew(self.dispatcher, timeout=self.timeout, task_timeout=self.task_timeout,
                    concurrency=self.concurrency, on_event=self.on_event)
        async with crew.running(request.mode):
            match request.plan:
                case _Sequential() as sequential:
                    return await pipeline.sequential(crew, sequential)
                case _Parallel() as parallel:
                    return await pipeline.parallel(crew, parallel)
                case _MapReduce() as map_reduce:
                    return await pipeline.map_reduce(crew, map_reduce)
                case _Debate() as debate:
                    return await deliberation.debate(crew, debate)
                case _Voting() as voting:
                    return await deliberation.voting(crew, voting)

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
