"""Allocation strategies on fixed scenarios: the allocations the module docstring promises.

The scenario, three agents (suitability from the formula in strategies.py)::

    agent    capabilities  priority  capacity  in flight  load  suitability
    agent-a  code, review  1         2         0          0.0   0.9152, 0.7652 with one task
    agent-b  code          5         1         0          0.0   0.9773
    agent-c  review, math  3         2         1          0.5   0.5750 (room for one task)

Tasks by priority: t5 design (9), t1 code (8), t2 review (5), t3 code (5),
t4 math (2), t6 code (1). Nobody does design; code has room for three tasks.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from agoramesh.errors import ConfigError, InvalidAllocation, InvalidBallot
from agoramesh.nodes.capability import Capability
from agoramesh.nodes.card import AgentCard, AgentStatus
from agoramesh.protocols.allocation.negotiation import (
    handle_conflict_resolution,
    negotiate_task_allocation,
    resolve_conflict,
)
from agoramesh.protocols.allocation.strategies import (
    AgentProfile,
    NegotiationStrategy,
    TaskSpec,
    allocate,
    evaluate_task_suitability,
    normalize_tasks,
)
from agoramesh.protocols.auction.scoring import suitability_scorer

A = AgentProfile(agent_id="agent-a", name="alpha", capabilities=("code", "review"), priority=1,
                 capacity=2, success_rate=0.9, latency_ms=200, cost_usd=0.001)
B = AgentProfile(agent_id="agent-b", name="bravo", capabilities=("code",), priority=5,
                 capacity=1, success_rate=1.0, latency_ms=100)
C = AgentProfile(agent_id="agent-c", name="charlie", capabilities=("review", "math"),
                 priority=3, capacity=2, in_flight=1, load=0.5, success_rate=0.8,
                 latency_ms=1000, cost_usd=0.01)
AGENTS = [A, B, C]


def tasks() -> list[dict[str, Any]]:
    return [{"task_id": "t1", "required_capability": "code", "priority": 8},
            {"task_id": "t2", "capability": "review", "priority": 5, "description": "look"},
            {"id": "t3", "task_type": "code", "priority": 5},
            {"task_id": "t4", "required_capability": "math", "priority": 2},
            {"task_id": "t5", "required_capability": "design", "priority": 9},
            {"task_id": "t6", "required_capability": "code", "priority": 1}]


# -- suitability ---------------------------------------------------------------------


def test_suitability_follows_the_documented_formula() -> None:
    expected_a = 0.30 + 0.25 / 1.2 + 0.20 / 1.1 + 0.25 * 0.9
    assert evaluate_task_suitability(A, {"task_id": "x", "capability": "code"}) == (
        pytest.approx(expected_a))
    assert evaluate_task_suitability(C, {"task_id": "x", "capability": "math"}) == (
        pytest.approx(0.15 + 0.125 + 0.10 + 0.20))
    assert evaluate_task_suitability(B, {"task_id": "x", "capability": "math"}) == 0.0


def test_suitability_matches_capability_patterns() -> None:
    coder = AgentProfile(agent_id="coder", capabilities=("code.review.python",))
    assert evaluate_task_suitability(coder, {"id": 1, "capability": "code.>"}) == 1.0
    assert evaluate_task_suitability(coder, {"id": 1, "capability": "code.*"}) == 0.0


def test_a_scorer_with_other_weights_is_scaled_to_one() -> None:
    score = suitability_scorer({"load": 1.0, "latency": 0.0, "cost": 0.0, "success": 1.0})
    assert score([B.as_bid(), C.as_bid()]) == [1.0, pytest.approx((0.5 + 0.8) / 2)]
    with pytest.raises(ConfigError, match="positive sum"):
        suitability_scorer({"load": 0.0})


# -- the three strategies on the scenario ------------------------------------------------


def test_auction_gives_each_task_in_priority_order_to_the_best_agent_with_room() -> None:
    allocation = allocate(tasks(), AGENTS, NegotiationStrategy.AUCTION_BASED)
    # t1: b beats a; t2: a beats c; t3: b is full, a still has room; t4: only c.
    assert allocation.assignments == {"t1": "agent-b", "t2": "agent-a", "t3": "agent-a",
                                      "t4": "agent-c"}
    assert allocation.unassigned == ["t5", "t6"]
    assert allocation.reasons["t5"] == "no capable agent for 'design'"
    assert allocation.reasons["t6"].startswith("no capacity: all 2 agent(s)")
    assert allocation.scores["t3"] == pytest.approx(0.7652, abs=1e-4)  # a already had t2
    assert allocation.tasks_for("agent-a") == ["t2", "t3"]


def test_priority_based_agents_choose_in_turns_by_priority() -> None:
    allocation = allocate(tasks(), AGENTS, "priority_based")
    # Round 1: b (5) takes t1, c (3) takes t2, a (1) takes t3; round 2: a takes t6.
    assert allocation.assignments == {"t1": "agent-b", "t2": "agent-c", "t3": "agent-a",
                                      "t6": "agent-a"}
    assert allocation.unassigned == ["t5", "t4"]  # task order: priority 9 before 2
    assert allocation.reasons["t6"] == "priority: chosen by alpha (priority 1) in round 2"
    assert allocation.reasons["t4"].startswith("no capacity")  # c spent its room on t2


def test_consensus_with_computed_ballots_agrees_with_the_auction() -> None:
    allocation = allocate(tasks(), AGENTS, NegotiationStrategy.CONSENSUS)
    assert allocation.assignments == {"t1": "agent-b", "t2": "agent-a", "t3": "agent-a",
                                      "t4": "agent-c"}
    assert allocation.tallies["t1"].counts == {"agent-b": 3}
    assert allocation.reasons["t1"] == "consensus: agent-b won with 3 of 3 valid vote(s) " \
                                       "(2 needed)"


def test_consensus_follows_the_votes_given() -> None:
    votes = {"t1": {"agent-a": "agent-a", "agent-b": "agent-b", "agent-c": "agent-a"}}
    allocation = allocate(tasks(), AGENTS, "consensus", votes=votes)
    # a wins t1 by 2 of 3, keeps room for t2 only; b, still free, gets t3.
    assert allocation.assignments == {"t1": "agent-a", "t2": "agent-a", "t3": "agent-b",
                                      "t4": "agent-c"}
    assert allocation.unassigned == ["t5", "t6"]


def test_consensus_without_a_quorum_leaves_the_task() -> None:
    votes = {"t1": {"agent-a": "agent-a", "agent-b": "agent-b", "agent-c": "agent-c"}}
    allocation = allocate(tasks(), AGENTS, "consensus", votes=votes)
    assert "t1" not in allocation.assignments
    assert allocation.reasons["t1"] == "no quorum: agent-b has 1 of 2 valid vote(s), 2 needed"
    assert allocation.tallies["t1"].invalid == 1  # c cannot code: not an option
    assert allocation.assignments["t3"] == "agent-b"


def test_consensus_tie_goes_to_suitability_then_agent_id() -> None:
    votes = {"t1": {"agent-a": "agent-a", "agent-b": "agent-b"}}
    allocation = allocate(tasks(), AGENTS, "consensus", votes=votes, quorum=0.0)
    assert allocation.assignments["t1"] == "agent-b"  # 0.9773 beats 0.9152
    twin = AgentProfile(agent_id="agent-0", capabilities=("code",), success_rate=1.0,
                        latency_ms=100)  # the same numbers as b
    votes = {"t1": {"agent-0": "agent-b", "agent-b": "agent-0"}}
    allocation = allocate(tasks()[:1], [twin, B], "consensus", votes=votes, quorum=0.0)
    assert allocation.assignments == {"t1": "agent-0"}
    assert "tie with agent-b" in allocation.reasons["t1"]


def test_auction_tie_goes_to_the_lower_agent_id() -> None:
    twins = [AgentProfile(agent_id=name, capabilities=("code",)) for name in ("z", "y", "x")]
    allocation = allocate([{"id": "only", "capability": "code"}], twins)
    assert allocation.assignments == {"only": "x"}


def test_capacity_limits_the_auction() -> None:
    solo = AgentProfile(agent_id="solo", capabilities=("code",), capacity=2, in_flight=1)
    work = [{"id": f"w{n}", "capability": "code", "priority": n} for n in range(3)]
    allocation = allocate(work, [solo])
    assert allocation.assignments == {"w2": "solo"}  # the highest priority goes first
    assert allocation.unassigned == ["w1", "w0"]
    full = AgentProfile(agent_id="full", capabilities=("code",), capacity=0)
    assert allocate(work, [full]).reasons["w0"].startswith("no capacity")


def test_no_agents_or_no_tasks() -> None:
    assert allocate(tasks(), []).unassigned == ["t5", "t1", "t2", "t3", "t4", "t6"]
    assert allocate([], AGENTS).assignments == {}


# -- negotiate_task_allocation ---------------------------------------------------------


def test_negotiate_returns_the_seed_shape_from_one_agents_view() -> None:
    given = tasks()
    answer = negotiate_task_allocation(A, [B, C], given, NegotiationStrategy.AUCTION_BASED)
    assert list(answer) == ["accepted_tasks", "rejected_tasks", "proposals"]
    assert answer["accepted_tasks"] == [given[1], given[2]]  # t2 and t3, as given
    assert [t.get("task_id") for t in answer["rejected_tasks"]] == ["t1", "t4", "t5", "t6"]
    reasons = {t["task_id"]: t["reason"] for t in answer["rejected_tasks"]}
    assert reasons == {
        "t1": "bravo is better suited (0.9773 vs my 0.9152)",
        "t4": "I cannot do 'math'; charlie can (0.5750)",
        "t5": "no capable agent for 'design'",
        "t6": "no capacity: all 2 agent(s) able to do 'code' are full"}
    assert answer["proposals"] == [
        {"task_id": "t1", "proposed_agent": "agent-b", "score": 0.9773,
         "reason": "bravo is better suited (0.9773 vs my 0.9152)"},
        {"task_id": "t4", "proposed_agent": "agent-c", "score": 0.575,
         "reason": "I cannot do 'math'; charlie can (0.5750)"}]
    assert "reason" not in given[0]  # the caller's dicts are not touched


def test_negotiate_by_priority_names_the_agent_that_chose_first() -> None:
    answer = negotiate_task_allocation(A, [A, B, C], tasks(), "priority_based")  # self skipped
    assert [t["task_id"] if "task_id" in t else t["id"] for t in answer["accepted_tasks"]] == [
        "t3", "t6"]
    assert [t["task_id"] for t in answer["rejected_tasks"]] == ["t1", "t2", "t4", "t5"]
    assert answer["proposals"] == [
        {"task_id": "t1", "proposed_agent": "agent-b", "score": 0.9773,
         "reason": "bravo is better suited (0.9773 vs my 0.9152)"},
        # c is the worse fit for t2 but chose it first: the proposal says so
        {"task_id": "t2", "proposed_agent": "agent-c", "score": 0.575,
         "reason": "allocated to charlie (priority_based): priority: chosen by charlie "
                   "(priority 3) in round 1"}]
    assert answer["rejected_tasks"][2]["reason"].startswith("no capacity")  # t4: no proposal


def test_negotiate_keeps_integer_ids() -> None:
    answer = negotiate_task_allocation(C, [B], [{"id": 7, "task_type": "code"}])
    assert answer["proposals"][0]["task_id"] == 7
    assert answer["rejected_tasks"] == [{"id": 7, "task_type": "code",
                                         "reason": "I cannot do 'code'; bravo can (0.9773)"}]


# -- conflicts ---------------------------------------------------------------------------


@pytest.mark.parametrize(("claims", "winner", "reason"), [
    ([{"agent_id": "b", "score": 0.9}, {"agent_id": "a", "score": 0.4}], "b",
     "highest score 0.9"),
    ([{"agent_id": "b", "score": 0.5, "claimed_at": 10.0},
      {"agent_id": "a", "score": 0.5, "claimed_at": 12.5}], "b",
     "equal score, earliest claim at 10.000"),
    ([{"agent_id": "b", "score": 0.5}, {"agent_id": "a", "score": 0.5}], "a",
     "equal score and claim time: lowest agent id"),
    ([{"agent_id": "a"}, {"agent_id": "b", "score": 0.1}], "b", "highest score 0.1"),
    (["b", "a"], "a", "equal score and claim time: lowest agent id"),
    ([{"agent_id": "a", "score": 0.2}], "a", "uncontested claim"),
])
def test_resolve_conflict(claims: list[Any], winner: str, reason: str) -> None:
    outcome = resolve_conflict({"task_id": "t1", "claims": claims})
    assert outcome == {"task_id": "t1", "winner": winner, "reason": reason,
                       "losers": [c if isinstance(c, str) else c["agent_id"] for c in claims
                                  if (c if isinstance(c, str) else c["agent_id"]) != winner]}


def test_an_agent_claiming_twice_keeps_its_best_claim() -> None:
    outcome = handle_conflict_resolution({"task_id": 3, "agents": [
        {"agent_id": "a", "score": 0.1}, {"agent_id": "b", "score": 0.5},
        {"agent_id": "a", "score": 0.7}]})
    assert outcome == {"task_id": 3, "winner": "a", "losers": ["b"],
                       "reason": "highest score 0.7"}


@pytest.mark.parametrize(("conflict", "message"), [
    ([], "a conflict must be an object"),
    ({"claims": ["a"]}, "needs the task_id"),
    ({"task_id": "t", "claims": []}, "claims must be a non-empty list"),
    ({"task_id": "t", "claims": "a"}, "claims must be a non-empty list"),
    ({"task_id": "t", "claims": [{"score": 1}]}, "each claim needs an agent_id"),
    ({"task_id": "t", "claims": [{"agent_id": "a", "score": math.nan}]}, "score must be"),
    ({"task_id": "t", "claims": [{"agent_id": "a", "claimed_at": "now"}]}, "claimed_at"),
])
def test_bad_conflicts(conflict: Any, message: str) -> None:
    with pytest.raises(InvalidAllocation, match=message):
        resolve_conflict(conflict)


# -- input checking ------------------------------------------------------------------------


@pytest.mark.parametrize(("bad", "message"), [
    ({"task_id": "x", "capability": "code"}, "tasks must be a list of task objects"),
    ([["code"]], "a task must be an object, got list"),
    ([{"capability": "code"}], "a task needs a task_id"),
    ([{"task_id": True, "capability": "code"}], "a task needs a task_id"),
    ([{"task_id": "x"}], "task 'x' needs a capability as one of required_capability"),
    ([{"task_id": "x", "capability": "no spaces"}], "invalid capability pattern"),
    ([{"task_id": "x", "capability": "code", "priority": 11}], "priority must be an integer"),
    ([{"task_id": "x", "capability": "code", "priority": "high"}], "priority must be"),
    ([{"task_id": "x", "capability": "code", "description": 5}], "description must be"),
    ([{"task_id": "x", "capability": "a"}, {"id": "x", "capability": "b"}], "repeated: x"),
])
def test_bad_tasks_are_rejected_clearly(bad: Any, message: str) -> None:
    with pytest.raises(InvalidAllocation, match=message):
        normalize_tasks(bad)


def test_bad_profiles_and_strategies() -> None:
    with pytest.raises(InvalidAllocation, match="capacity must be a non-negative integer"):
        AgentProfile(agent_id="a", capacity=-1)
    with pytest.raises(InvalidAllocation, match="latency_ms must be a non-negative finite"):
        AgentProfile(agent_id="a", latency_ms=math.inf)
    with pytest.raises(InvalidAllocation, match="capabilities must be a list"):
        AgentProfile(agent_id="a", capabilities="code")  # type: ignore[arg-type]
    with pytest.raises(InvalidAllocation, match="invalid capability"):
        AgentProfile(agent_id="a", capabilities=("code.*",))
    with pytest.raises(InvalidAllocation, match="non-empty agent_id"):
        AgentProfile(agent_id="")
    with pytest.raises(InvalidAllocation, match="listed twice"):
        allocate(tasks(), [A, A])
    with pytest.raises(InvalidAllocation, match="unknown negotiation strategy 'fastest'; use "
                                                "one of auction_based, consensus, priority_based"):
        allocate(tasks(), AGENTS, "fastest")
    with pytest.raises(InvalidBallot, match="quorum"):
        allocate([], AGENTS, "consensus", quorum=2)


def test_profile_from_card_and_status() -> None:
    card = AgentCard(id="U" + "A" * 55, name="n", type="offline", version="1", endpoint="e",
                     capabilities=(Capability(name="vote"), Capability(name="text.summarize")),
                     metadata={"priority": "7"})
    status = AgentStatus(capacity=4, in_flight=1, avg_latency_ms=250.0, success_rate=0.5,
                         tasks_completed=3, tasks_failed=1, total_cost_usd=0.02)
    profile = AgentProfile.from_card(card, status)
    assert profile == AgentProfile(agent_id=card.id, name="n",
                                   capabilities=("vote", "text.summarize"), load=0.25,
                                   capacity=4, in_flight=1, priority=7, success_rate=0.5,
                                   latency_ms=250.0, cost_usd=0.005)
    odd = AgentCard(id="x", name="n", type="t", version="", endpoint="",
                    metadata={"priority": "high"})
    assert AgentProfile.from_card(odd).priority == 0
    assert TaskSpec(task_id="t", capability="c").as_dict() == {
        "task_id": "t", "priority": 5, "required_capability": "c"}
