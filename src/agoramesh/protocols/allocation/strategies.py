"""Task allocation strategies (M-3.2): who does which task, without a controller.

All but :func:`consensus_allocation` is pure and deterministic, so every node
computing an allocation from the same tasks and profiles gets the same one.

Tasks are mappings, as JSON brings them: ``task_id`` or ``id`` (a string or
an integer); the capability (a name or a pattern such as ``code.*``; in
Python, :attr:`TaskSpec.capability`) under the first of three keys present,
the spellings task maps come in: ``required_capability`` (the decentralized
mode's task maps, PROTOCOL.md §19), ``capability`` or ``task_type`` (as a §15
task body names it); ``priority`` 0-10 (default 5); an optional
``description``; other keys ride along. A bad task
raises InvalidAllocation naming it. An agent can do a task when one of its
capabilities matches (:func:`~agoramesh.nodes.capability.matches`).

Suitability (:func:`evaluate_task_suitability`) is 0 for an agent that cannot
do the task, else M-3.1's weighted score with absolute terms
(:func:`~agoramesh.protocols.auction.scoring.suitability_scorer`; one agent has
nobody to be min-max normalised against), load and success rate clipped to
[0, 1]; one second of latency or one cent of cost halves its term::

    0.30 (1 - load) + 0.25 / (1 + latency_ms/1000) + 0.20 / (1 + 100 cost_usd)
                    + 0.25 success_rate

While allocating, an agent's load counts what it got so far, ``load +
assigned/capacity``, and it has room while ``capacity - in_flight - assigned >
0``. *Task order*: priority high to low, then task id (as text). *Agent
order*: agent priority high to low, then agent id.

- ``auction_based``: each task in task order goes to the capable agent with
  room and the best suitability; ties go to the lower agent id.
- ``priority_based``: agents take turns in agent order, round after round;
  each turn an agent with room takes the first remaining task in task order
  it can do (its suitability is the same for all its tasks, so it breaks no
  ties). It ends when a whole round takes nothing.
- ``consensus``: each task in task order is put to a vote among the capable
  agents with room. Every agent votes for the one it ranks best by
  suitability; ``votes[task_id]`` (ballots from the bus, or given) replaces
  the computed ballots of that task. The winner (:func:`~.voting.tally`)
  needs more than ``quorum`` (default 0.5: a strict majority) of the valid
  votes; ties go to the higher suitability, then the lower agent id; without
  a quorum the task stays unassigned, its reason starting ``no quorum``.

*Per-task bids* (``task_bids``: task id → {agent id: :class:`~.scoring.Bid`})
let agents price each task on its own, for example with the time they need to
reach it as ``latency_ms``. A task with an entry is open only to the capable
agents that bid on it, each scored on its own bid (its load still grows with
what it got so far), and in ``priority_based`` an agent takes the remaining
task its bids score best rather than the first in task order. Tasks without
an entry use the profiles as above.

Tasks nobody took are unassigned as ``no capable agent for …``, ``no bid
for …`` or ``no capacity: …``. An allocation becomes one agent's answer, and
agents claiming one task are settled, in :mod:`~agoramesh.protocols.allocation.negotiation`.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from agoramesh.bus.subjects import validate_capability, validate_capability_pattern
from agoramesh.errors import AgoraError, InvalidAllocation
from agoramesh.nodes.capability import matches
from agoramesh.nodes.card import AgentStatus
from agoramesh.protocols.allocation.voting import Tally, allocation_ballot, collect_votes, tally
from agoramesh.protocols.auction.scoring import SUITABILITY, Bid, rank

if TYPE_CHECKING:
    from agoramesh.bus.bus import Bus
    from agoramesh.nodes.card import AgentCard

__all__ = ("AgentProfile", "Allocation", "NegotiationStrategy", "TaskSpec", "allocate",
           "consensus_allocation", "evaluate_task_suitability", "non_negative",
           "normalize_tasks")

_ID_KEYS = ("task_id", "id")
#: Where a task map may hold its capability, first found first (module docstring).
_CAPABILITY_KEYS = ("required_capability", "capability", "task_type")


class NegotiationStrategy(StrEnum):
    AUCTION_BASED = "auction_based"
    CONSENSUS = "consensus"
    PRIORITY_BASED = "priority_based"


def non_negative(value: Any, what: str, *, integer: bool = False) -> float:
    """``value`` as a float, or InvalidAllocation naming ``what`` if it is not a non-negative
    number."""
    if (isinstance(value, bool) or not isinstance(value, int if integer else int | float)
            or not math.isfinite(value) or value < 0):
        noun = "integer" if integer else "finite number"
        raise InvalidAllocation(f"{what} must be a non-negative {noun}, got {value!r:.40}")
    return float(value)


@dataclass(frozen=True, kw_only=True, slots=True)
class AgentProfile:
    """What is known of one agent for allocation: capabilities, load, priority, record."""

    agent_id: str
    name: str = ""
    capabilities: tuple[str, ...] = ()
    load: float = 0.0
    capacity: int = 1
    in_flight: int = 0
    priority: int = 0  # higher chooses first (priority_based)
    success_rate: float = 1.0
    latency_ms: float = 0.0
    cost_usd: float = 0.0  # expected cost of one task

    def __post_init__(self) -> None:
        who = f"agent {self.agent_id!r:.60}"
        if not isinstance(self.agent_id, str) or not self.agent_id:
            raise InvalidAllocation(f"an agent profile needs a non-empty agent_id, not {who[6:]}")
        names: object = self.capabilities
        if isinstance(names, str) or not isinstance(names, Iterable):
            raise InvalidAllocation(f"{who}: capabilities must be a list of names")
        try:
            object.__setattr__(self, "capabilities", tuple(map(validate_capability, names)))
        except AgoraError as exc:
            raise InvalidAllocation(f"{who}: {exc}") from None
        non_negative(self.capacity, f"{who}: capacity", integer=True)
        non_negative(self.in_flight, f"{who}: in_flight", integer=True)
        if type(self.priority) is not int:
            raise InvalidAllocation(f"{who}: priority must be an integer, "
                                    f"got {self.priority!r:.40}")
        for name in ("load", "success_rate", "latency_ms", "cost_usd"):
            non_negative(getattr(self, name), f"{who}: {name}")

    def can_do(self, capability: str) -> bool:
        """Whether one of our capabilities matches ``capability`` (a name or pattern)."""
        return any(matches(capability, name) for name in self.capabilities)

    def as_bid(self, *, assigned: int = 0) -> Bid:
        """Our bid, with ``assigned`` more tasks than we are running added to the load."""
        extra = assigned / self.capacity if self.capacity else 1.0
        return Bid(agent_id=self.agent_id, load=min(1.0, self.load + extra),
                   latency_ms=self.latency_ms, cost_usd=self.cost_usd,
                   success_rate=min(1.0, self.success_rate), capacity=self.capacity,
                   in_flight=self.in_flight + assigned, priority=self.priority)

    @classmethod
    def from_card(cls, card: AgentCard, status: AgentStatus | None = None) -> AgentProfile:
        """From a card and live status; priority is ``metadata["priority"]`` if an integer."""
        raw = str(card.metadata.get("priority", "0")).strip()
        priority = int(raw) if raw.lstrip("+-").isdigit() else 0
        status = status or AgentStatus()
        finished = status.tasks_completed + status.tasks_failed
        return cls(agent_id=card.id, name=card.name, priority=priority,
                   capabilities=tuple(cap.name for cap in card.capabilities),
                   load=min(1.0, max(0.0, status.load)), capacity=max(0, status.capacity),
                   in_flight=max(0, status.in_flight), success_rate=status.success_rate,
                   latency_ms=status.avg_latency_ms,
                   # a bid wants the cost of one task; the status has the total so far
                   cost_usd=status.total_cost_usd / finished if finished else 0.0)


@dataclass(frozen=True, kw_only=True, slots=True)
class TaskSpec:
    """One task to allocate; ``source`` is the mapping it came from, echoed back to callers."""

    task_id: str
    capability: str
    priority: int = 5
    description: str = ""
    source: Mapping[str, Any] = field(default_factory=dict)

    @property
    def wire_id(self) -> str | int:
        """The id as the caller spelled it (an integer stays an integer)."""
        return next((self.source[key] for key in _ID_KEYS if key in self.source), self.task_id)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.source) or {"task_id": self.task_id, "priority": self.priority,
                                     "required_capability": self.capability}

    @classmethod
    def from_dict(cls, data: Any) -> TaskSpec:
        if not isinstance(data, Mapping):
            raise InvalidAllocation(f"a task must be an object, got {type(data).__name__}")
        raw_id = next((data[key] for key in _ID_KEYS if key in data), None)
        if (isinstance(raw_id, bool) or not isinstance(raw_id, str | int)
                or not 0 < len(str(raw_id)) <= 128):
            raise InvalidAllocation(f"a task needs a task_id (or id): a string of 1-128 characters "
                                    f"or an integer, got {raw_id!r:.60}")
        task_id = str(raw_id)
        try:
            capability = validate_capability_pattern(
                next((data[key] for key in _CAPABILITY_KEYS if key in data), None))
        except AgoraError as exc:
            raise InvalidAllocation(f"task {task_id!r} needs a capability as one of "
                                    f"{', '.join(_CAPABILITY_KEYS)}: {exc}") from None
        priority = data.get("priority", 5)
        if type(priority) is not int or not 0 <= priority <= 10:
            raise InvalidAllocation(f"task {task_id!r}: priority must be an integer 0-10, "
                                    f"got {priority!r:.40}")
        description = data.get("description", "")
        if not isinstance(description, str):
            raise InvalidAllocation(f"task {task_id!r}: description must be a string")
        return cls(task_id=task_id, capability=capability, priority=priority,
                   description=description, source=dict(data))


def normalize_tasks(tasks: Iterable[Mapping[str, Any] | TaskSpec]) -> list[TaskSpec]:
    """Task specs in the order given; InvalidAllocation on a bad task or a repeated id."""
    if isinstance(tasks, Mapping | str) or not isinstance(tasks, Iterable):
        raise InvalidAllocation(f"tasks must be a list of task objects, got {type(tasks).__name__}")
    specs = [task if isinstance(task, TaskSpec) else TaskSpec.from_dict(task) for task in tasks]
    repeated = sorted(tid for tid, n in Counter(s.task_id for s in specs).items() if n > 1)
    if repeated:
        raise InvalidAllocation(f"task ids must be unique; repeated: {', '.join(repeated[:5])}")
    return specs


def evaluate_task_suitability(profile: AgentProfile, task: Mapping[str, Any] | TaskSpec) -> float:
    """How well ``profile`` suits ``task``, in [0, 1]; 0 when it lacks the capability."""
    spec = task if isinstance(task, TaskSpec) else TaskSpec.from_dict(task)
    return SUITABILITY([profile.as_bid()])[0] if profile.can_do(spec.capability) else 0.0


@dataclass(frozen=True, kw_only=True)
class Allocation:
    """Who does what: ``scores`` holds each winner's suitability when it won."""

    strategy: NegotiationStrategy
    assignments: dict[str, str] = field(default_factory=dict)
    unassigned: list[str] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)
    tallies: dict[str, Tally] = field(default_factory=dict)  # consensus only

    def tasks_for(self, agent_id: str) -> list[str]:
        return [task for task, agent in self.assignments.items() if agent == agent_id]


class _Plan:
    """An allocation being built: who got what so far, and who still has room."""

    def __init__(self, profiles: Iterable[AgentProfile],
                 task_bids: Mapping[str, Mapping[str, Bid]] | None = None) -> None:
        self.task_bids = {str(task): dict(bids) for task, bids in (task_bids or {}).items()}
        self.profiles: dict[str, AgentProfile] = {}
        for profile in profiles:
            if profile.agent_id in self.profiles:
                raise InvalidAllocation(f"agent {profile.agent_id!r} is listed twice")
            self.profiles[profile.agent_id] = profile
        self.assigned: Counter[str] = Counter()
        self.assignments: dict[str, str] = {}
        self.reasons: dict[str, str] = {}
        self.scores: dict[str, float] = {}

    def free(self, profile: AgentProfile) -> int:
        return profile.capacity - profile.in_flight - self.assigned[profile.agent_id]

    def bid(self, profile: AgentProfile, task: TaskSpec) -> Bid | None:
        """``profile``'s bid for ``task`` with what it got so far added to its load."""
        assigned = self.assigned[profile.agent_id]
        own = self.task_bids.get(task.task_id)
        if own is None:
            return profile.as_bid(assigned=assigned)
        bid = own.get(profile.agent_id)
        if bid is None:
            return None
        extra = assigned / profile.capacity if profile.capacity else 1.0
        return replace(bid, load=min(1.0, bid.load + extra), in_flight=bid.in_flight + assigned)

    def options(self, task: TaskSpec) -> list[AgentProfile]:
        """Capable agents with room; with none, the task is left with the reason why."""
        capable = [p for p in self.profiles.values() if p.can_do(task.capability)]
        if task.task_id in self.task_bids and capable:
            bidders = [p for p in capable if p.agent_id in self.task_bids[task.task_id]]
            if not bidders:
                self.reasons[task.task_id] = (f"no bid for {task.task_id!r} from the "
                                              f"{len(capable)} agent(s) able to do it")
                return []
            capable = bidders
        room = [p for p in capable if self.free(p) > 0]
        if not capable:
            self.reasons[task.task_id] = f"no capable agent for {task.capability!r}"
        elif not room:
            self.reasons[task.task_id] = (f"no capacity: all {len(capable)} agent(s) able to do "
                                          f"{task.capability!r} are full")
        return room

    def scored(self, agents: Iterable[AgentProfile], task: TaskSpec
               ) -> list[tuple[float, Bid]]:
        bids = [bid for p in agents if (bid := self.bid(p, task)) is not None]
        return rank(bids, SUITABILITY)

    def contests(self, order: Sequence[TaskSpec]
                 ) -> Iterator[tuple[TaskSpec, list[tuple[float, Bid]], dict[str, float]]]:
        """Each task some agent can take: its bids ranked best first, and their scores.

        Lazy on purpose: a task is scored only once the ones before it are settled,
        so the loads it sees include their assignments.
        """
        for task in order:
            ranked = self.scored(self.options(task), task)
            if ranked:
                yield task, ranked, {bid.agent_id: score for score, bid in ranked}

    def give(self, task: TaskSpec, agent_id: str, score: float, reason: str) -> None:
        self.assignments[task.task_id] = agent_id
        self.assigned[agent_id] += 1
        self.scores[task.task_id] = score
        self.reasons[task.task_id] = reason

    def result(self, strategy: NegotiationStrategy, order: Sequence[TaskSpec],
               tallies: dict[str, Tally] | None = None) -> Allocation:
        for task in order:  # a task nobody took says why (priority_based decides late)
            if task.task_id not in self.assignments and task.task_id not in self.reasons:
                self.options(task)
        return Allocation(
            strategy=strategy,
            assignments={t.task_id: self.assignments[t.task_id] for t in order
                         if t.task_id in self.assignments},
            unassigned=[t.task_id for t in order if t.task_id not in self.assignments],
            reasons={t.task_id: self.reasons[t.task_id] for t in order},
            scores={t.task_id: self.scores[t.task_id] for t in order if t.task_id in self.scores},
            tallies=tallies or {})


def _task_order(specs: Iterable[TaskSpec]) -> list[TaskSpec]:
    return sorted(specs, key=lambda task: (-task.priority, task.task_id))


def _auction(plan: _Plan, order: Sequence[TaskSpec]) -> None:
    for task in order:
        room = plan.options(task)
        if room:
            score, best = plan.scored(room, task)[0]
            plan.give(task, best.agent_id, score, f"auction: best suitability {score:.4f} of "
                                                  f"{len(room)} capable agent(s) with capacity")


def _priority(plan: _Plan, order: Sequence[TaskSpec]) -> None:
    agents = sorted(plan.profiles.values(), key=lambda p: (-p.priority, p.agent_id))
    remaining = list(order)
    for round_ in itertools.count(1):
        took = False
        for agent in agents:
            if plan.free(agent) <= 0:
                continue
            # Its best task by its own bids; without per-task bids all score the
            # same and the first in task order wins (max keeps the first of equals).
            choices = [(scored[0][0], -index, task) for index, task in enumerate(remaining)
                       if agent.can_do(task.capability)
                       and (scored := plan.scored([agent], task))]
            if not choices:
                continue
            score, _, task = max(choices, key=lambda choice: (round(choice[0], 9), choice[1]))
            remaining.remove(task)
            plan.give(task, agent.agent_id, score,
                      f"priority: chosen by {agent.name or agent.agent_id} "
                      f"(priority {agent.priority}) in round {round_}")
            took = True
        if not took or not remaining:
            return


def _settle(plan: _Plan, task: TaskSpec, result: Tally, scores: Mapping[str, float]) -> Tally:
    if result.winner is not None:
        plan.give(task, result.winner, scores[result.winner], f"consensus: {result.reason}")
    else:
        plan.reasons[task.task_id] = result.reason
    return result


def _by_score(scores: Mapping[str, float]) -> Callable[[str], tuple[float, str]]:
    return lambda agent: (-scores[agent], agent)


def _consensus(plan: _Plan, order: Sequence[TaskSpec],
               votes: Mapping[str, Mapping[str, object]] | None, quorum: float
               ) -> dict[str, Tally]:
    tally({}, quorum=quorum)  # a bad quorum fails even when no task comes to a vote
    given = {str(task_id): ballots for task_id, ballots in (votes or {}).items()}
    tallies: dict[str, Tally] = {}
    for task, ranked, scores in plan.contests(order):
        # One shared view of suitability: computed ballots all name the best option.
        ballots = (given[task.task_id] if task.task_id in given
                   else dict.fromkeys(plan.profiles, ranked[0][1].agent_id))
        tallies[task.task_id] = _settle(plan, task, tally(
            ballots, options=scores, quorum=quorum, tie_break=_by_score(scores)), scores)
    return tallies


def allocate(tasks: Iterable[Mapping[str, Any] | TaskSpec], profiles: Iterable[AgentProfile],
             strategy: NegotiationStrategy | str = NegotiationStrategy.AUCTION_BASED, *,
             votes: Mapping[str, Mapping[str, object]] | None = None,
             quorum: float = 0.5,
             task_bids: Mapping[str, Mapping[str, Bid]] | None = None) -> Allocation:
    """Allocate ``tasks`` among ``profiles`` by ``strategy`` (rules: module docstring).

    ``votes`` (consensus only) maps a task id to ``{voter id: chosen agent id}``;
    ``task_bids`` maps a task id to the per-task bids of the agents bidding on it.
    """
    try:
        chosen = NegotiationStrategy(strategy)
    except ValueError:
        raise InvalidAllocation(f"unknown negotiation strategy {strategy!r:.40}; use one of "
                                f"{', '.join(s.value for s in NegotiationStrategy)}") from None
    order = _task_order(normalize_tasks(tasks))
    plan = _Plan(profiles, task_bids)
    if chosen is NegotiationStrategy.CONSENSUS:
        return plan.result(chosen, order, _consensus(plan, order, votes, quorum))
    (_auction if chosen is NegotiationStrategy.AUCTION_BASED else _priority)(plan, order)
    return plan.result(chosen, order)


async def consensus_allocation(bus: Bus, tasks: Iterable[Mapping[str, Any] | TaskSpec],
                               profiles: Iterable[AgentProfile], voters: Sequence[str], *,
                               timeout: float, quorum: float = 0.5,
                               task_bids: Mapping[str, Mapping[str, Bid]] | None = None
                               ) -> Allocation:
    """The consensus strategy with ballots put to ``voters`` over the bus.

    One ballot per task in task order, to all voters at once, each waiting at
    most ``timeout``. Options and bids are the pure strategy's, so voters using
    :func:`~.voting.default_chooser` reach the allocation :func:`allocate` makes.
    """
    order = _task_order(normalize_tasks(tasks))
    plan = _Plan(profiles, task_bids)
    tallies: dict[str, Tally] = {}
    for task, ranked, scores in plan.contests(order):
        ballot = allocation_ballot(
            {"task_id": task.task_id, "capability": task.capability,
             "priority": task.priority, "description": task.description},
            [bid for _, bid in ranked])
        tallies[task.task_id] = _settle(plan, task, await collect_votes(
            bus, voters, ballot, timeout=timeout, quorum=quorum,
            tie_break=_by_score(scores)), scores)
    return plan.result(NegotiationStrategy.CONSENSUS, order, tallies)
