"""One agent's side of an allocation (M-3.2, M-7): its answer, and claims settled.

:func:`negotiate_task_allocation` turns an allocation of
:mod:`~agoramesh.protocols.allocation.strategies` into one agent's answer
(accepted, rejected, proposals); :func:`resolve_conflict` settles agents claiming one
task, the same way on every agent.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from agoramesh.errors import InvalidAllocation
from agoramesh.protocols.allocation.strategies import (
    AgentProfile,
    NegotiationStrategy,
    TaskSpec,
    allocate,
    evaluate_task_suitability,
    non_negative,
    normalize_tasks,
)
from agoramesh.protocols.auction.scoring import Bid

__all__ = ("handle_conflict_resolution", "negotiate_task_allocation", "resolve_conflict")


def negotiate_task_allocation(
        me: AgentProfile, peers: Sequence[AgentProfile],
        tasks: Iterable[Mapping[str, Any] | TaskSpec],
        strategy: NegotiationStrategy | str = NegotiationStrategy.AUCTION_BASED, *,
        votes: Mapping[str, Mapping[str, object]] | None = None,
        quorum: float = 0.5,
        task_bids: Mapping[str, Mapping[str, Bid]] | None = None
        ) -> dict[str, list[dict[str, Any]]]:
    """Agent ``me``'s answer: ``{accepted_tasks, rejected_tasks, proposals}``.

    The tasks are allocated among ``me`` and ``peers`` (a peer with my id is
    skipped). Tasks given to me are accepted as given; the rest are rejected,
    each with an added ``reason``. A rejected task given to another agent gets
    a proposal ``{task_id, proposed_agent, reason, score}`` naming that agent
    with its suitability for the task; a task nobody got has no proposal.
    Lists follow the input order of the tasks.
    """
    specs = normalize_tasks(tasks)
    agents = [me, *(peer for peer in peers if peer.agent_id != me.agent_id)]
    allocation = allocate(specs, agents, strategy, votes=votes, quorum=quorum,
                          task_bids=task_bids)
    by_id = {agent.agent_id: agent for agent in agents}
    answer: dict[str, list[dict[str, Any]]] = {
        "accepted_tasks": [], "rejected_tasks": [], "proposals": []}
    for spec in specs:
        owner = allocation.assignments.get(spec.task_id)
        if owner == me.agent_id:
            answer["accepted_tasks"].append(spec.as_dict())
            continue
        reason = allocation.reasons[spec.task_id]
        if owner is not None:
            theirs, mine = (evaluate_task_suitability(by_id[owner], spec),
                            evaluate_task_suitability(me, spec))
            label = by_id[owner].name or owner
            if not me.can_do(spec.capability):
                reason = f"I cannot do {spec.capability!r}; {label} can ({theirs:.4f})"
            elif theirs > mine:
                reason = f"{label} is better suited ({theirs:.4f} vs my {mine:.4f})"
            else:
                reason = f"allocated to {label} ({allocation.strategy}): {reason}"
            answer["proposals"].append({"task_id": spec.wire_id, "proposed_agent": owner,
                                        "reason": reason, "score": round(theirs, 4)})
        answer["rejected_tasks"].append({**spec.as_dict(), "reason": reason})
    return answer


def _claim(raw: Any, task_id: Any) -> tuple[float, float, str]:
    """A claim's sort key: best first, so missing score or time (inf) ranks last."""
    raw = {"agent_id": raw} if isinstance(raw, str) else raw
    agent = raw.get("agent_id") if isinstance(raw, Mapping) else None
    if not isinstance(agent, str) or not agent:
        raise InvalidAllocation(f"task {task_id!r}: each claim needs an agent_id (or is one)")
    score, at = raw.get("score"), raw.get("claimed_at")
    return (math.inf if score is None else -non_negative(score, f"claim of {agent!r:.60}: score"),
            math.inf if at is None else non_negative(at, f"claim of {agent!r:.60}: claimed_at"),
            agent)


def resolve_conflict(conflict: Mapping[str, Any]) -> dict[str, Any]:
    """Settle agents claiming one task: ``{task_id, winner, losers, reason}``.

    ``conflict`` is ``{"task_id", "claims": [{"agent_id", "score"?, "claimed_at"?}]}``
    (``agents`` is accepted for ``claims``, and a bare agent id as a claim).
    The winner has the higher score, then the earlier ``claimed_at`` (Unix
    seconds), then the lower agent id; a claim without a score or a time
    ranks after those with one. An agent claiming twice keeps its best claim.
    ``losers`` are the other agents, best first.
    """
    if not isinstance(conflict, Mapping):
        raise InvalidAllocation(f"a conflict must be an object, got {type(conflict).__name__}")
    task_id = conflict.get("task_id", conflict.get("id"))
    if isinstance(task_id, bool) or not isinstance(task_id, str | int) or task_id == "":
        raise InvalidAllocation("a conflict needs the task_id that is claimed")
    raw = conflict.get("claims", conflict.get("agents"))
    if isinstance(raw, str | Mapping) or not isinstance(raw, Sequence) or not raw:
        raise InvalidAllocation(f"task {task_id!r}: claims must be a non-empty list")
    best: dict[str, tuple[float, float, str]] = {}
    for claim in sorted(_claim(item, task_id) for item in raw):
        best.setdefault(claim[2], claim)
    first, *rest = best.values()  # dicts keep insertion order: best claim first
    if not rest:
        reason = "uncontested claim"
    elif first[0] != rest[0][0]:
        reason = f"highest score {-first[0]:g}"
    elif first[1] != rest[0][1]:
        reason = f"equal score, earliest claim at {first[1]:.3f}"
    else:
        reason = "equal score and claim time: lowest agent id"
    return {"task_id": task_id, "winner": first[2], "losers": [c[2] for c in rest],
            "reason": reason}


#: The name the decentralized-mode API (M-7) knows this by.
handle_conflict_resolution = resolve_conflict
