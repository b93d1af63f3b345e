"""``negotiate_task_allocation`` across a team on a real mesh (M-3.2, M-7).

Every agent of a team is asked to negotiate the same task list; the first
one asked negotiates over NATS (announce, bids, allocation, awards) and the
others answer from the allocation it awarded them. The allocation must have
no duplicates and no gaps, and every agent must tell the same story.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from decentralized_support import Team, make_config, run_episode

from agoramesh.modes.decentralized.autonomous_agent import AutonomousAgent
from agoramesh.modes.decentralized.policy import estimated_steps
from agoramesh.modes.decentralized.tasks import Task
from agoramesh.sim import GridWorld

pytestmark = pytest.mark.integration

STRATEGIES = ("auction_based", "consensus", "priority_based")
PROTOCOLS = ("direct", "broadcast", "gossip")
#: A world where some tasks have more than one capable agent (agent_1 and agent_2 both
#: have vision; agent_2 and agent_3 both manipulation), so bids really compete.
CONTESTED_SEED = 1
FLIGHT = {"task_id": "task_fly", "kind": "survey", "required_capability": "flight",
          "priority": 9, "description": "Fly over the warehouse", "location": [0, 0]}


def build(team: Team, world: GridWorld, strategy: str, protocol: str = "direct",
          cooperation: str = "high") -> list[AutonomousAgent]:
    config = make_config(agent_config={"negotiation_strategy": strategy,
                                       "cooperation_level": cooperation,
                                       "num_agents": len(world.sim_ids())},
                         communication_config={"protocol": protocol})
    return team.agents_for(world, config)


def negotiate_everywhere(agents: Sequence[AutonomousAgent], tasks: list[dict[str, Any]]
                         ) -> dict[str, dict[str, Any]]:
    return {agent.sim_id: agent.negotiate_task_allocation(tasks) for agent in agents}


def check_allocation(world: GridWorld, agents: Sequence[AutonomousAgent],
                     tasks: list[dict[str, Any]], results: Mapping[str, dict[str, Any]]) -> None:
    """No duplicates, no gaps, and one story told by every agent."""
    ids = [task["task_id"] for task in tasks]
    caps = {agent.sim_id: set(world.get_agent_capabilities(agent.sim_id))
            for agent in agents}
    doable = {task["task_id"] for task in tasks
              if any(task["required_capability"] in held for held in caps.values())}
    accepted = {sim_id: result["accepted_tasks"] for sim_id, result in results.items()}
    # No gaps: every task some agent can do is accepted by someone...
    assert set().union(*map(set, accepted.values())) == doable
    # ...and no duplicates: by exactly one agent.
    assert sum(len(tasks_) for tasks_ in accepted.values()) == len(doable)
    owner = {task: sim_id for sim_id, tasks_ in accepted.items() for task in tasks_}
    for sim_id, result in results.items():
        assert len(set(result["accepted_tasks"])) == len(result["accepted_tasks"])
        # The rejected tasks are exactly the others, in the order given.
        assert result["rejected_tasks"] == [t for t in ids if t not in result["accepted_tasks"]]
        assert result["accepted_tasks"] == [t for t in ids if t in result["accepted_tasks"]]
        for task in result["accepted_tasks"]:  # nobody is given what it cannot do
            spec = next(t for t in tasks if t["task_id"] == task)
            assert spec["required_capability"] in caps[sim_id]
        # A proposal names the agent that accepted the task, for each task someone else took.
        proposed = {p["task_id"]: p["agent_id"] for p in result["proposals"]}
        assert len(proposed) == len(result["proposals"])
        assert proposed == {t: owner[t] for t in result["rejected_tasks"] if t in owner}
        for proposal in result["proposals"]:
            assert proposal["agent_id"] != sim_id
            assert 0.0 <= proposal["score"] <= 1.0
        assert result["allocation"] == owner
        assert result["unassigned"] == [t for t in ids if t not in doable]
    # Every agent holds the same negotiation.
    for key in ("negotiation_id", "initiator", "strategy", "rounds", "allocation"):
        assert len({repr(result[key]) for result in results.values()}) == 1, key


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_agent_gets_the_same_allocation_without_gaps_or_duplicates(
        team: Team, strategy: str, protocol: str) -> None:
    world = GridWorld(num_agents=3, seed=CONTESTED_SEED)
    agents = build(team, world, strategy, protocol)
    tasks = world.get_tasks()
    results = negotiate_everywhere(agents, tasks)
    check_allocation(world, agents, tasks, results)
    first, *others = agents
    assert results[first.sim_id]["initiator"] == first.sim_id
    assert results[first.sim_id]["strategy"] == strategy
    # The first negotiated over the mesh; the others bid and were awarded, not re-negotiating.
    assert first.negotiator.counts["negotiations"] == 1
    for other in others:
        assert other.negotiator.counts["negotiations"] == 0
        assert other.negotiator.counts["bids_sent"] >= 1
        assert other.negotiator.counts["awards_received"] == 1
        assert other.negotiator.owners() == results[first.sim_id]["allocation"]
    # The strategy named is the one that decided.
    label = {"auction_based": "auction:", "consensus": "consensus:",
             "priority_based": "priority:"}[strategy]
    proposals = [p for result in results.values() for p in result["proposals"]]
    assert proposals and all(label in p["reason"] for p in proposals)
    # Consensus puts each task to a vote of the team over the bus; the others do not.
    ballots = [other.comm.member.bus.received["ballot"] for other in others
               if other.comm.member.bus is not None]
    if strategy == "consensus":
        assert all(count >= 1 for count in ballots)
    else:
        assert ballots == [0] * len(others)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_task_nobody_can_do_is_rejected_everywhere_and_unassigned(
        team: Team, strategy: str) -> None:
    world = GridWorld(num_agents=3, seed=CONTESTED_SEED)
    agents = build(team, world, strategy)
    tasks = [*world.get_tasks(), dict(FLIGHT)]
    results = negotiate_everywhere(agents, tasks)
    check_allocation(world, agents, tasks, results)
    for result in results.values():
        assert "task_fly" in result["rejected_tasks"]
        assert "task_fly" not in result["accepted_tasks"]
        assert all(p["task_id"] != "task_fly" for p in result["proposals"])
        assert result["unassigned"] == ["task_fly"]
        assert "task_fly" not in result["allocation"]
        # It stayed open through every round the config allows.
        assert result["rounds"] == agents[0].settings.execution.negotiation_rounds


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_big_low_cooperation_team_fills_every_task_over_several_rounds(
        team: Team, strategy: str) -> None:
    world = GridWorld(num_agents=5, seed=3)
    tasks = world.get_tasks()
    # More tasks than the first round can take: under "low" each agent takes one per round.
    assert len(tasks) > len(world.sim_ids())
    agents = build(team, world, strategy, cooperation="low")
    results = negotiate_everywhere(agents, tasks)
    check_allocation(world, agents, tasks, results)
    assert results["agent_1"]["rounds"] > 1
    assert results["agent_1"]["unassigned"] == []


def test_a_full_agents_counter_offer_fills_a_later_round(team: Team) -> None:
    """Under "low" an agent with a full queue bids no more in round 1, but counter-offers
    later; when it is the only agent able to do a task, that counter-offer must win."""
    world = GridWorld(num_agents=3, seed=0)  # one capability each: nobody can stand in
    assert all(len(world.get_agent_capabilities(a)) == 1 for a in world.sim_ids())
    agents = build(team, world, "auction_based", cooperation="low")
    tasks = world.get_tasks()
    task_description = world.task_description()
    for agent in agents:
        agent.set_task(task_description)
    first = negotiate_everywhere(agents, tasks)
    check_allocation(world, agents, tasks, first)
    for agent in agents:
        assert first[agent.sim_id]["accepted_tasks"], "each agent has work queued"
        agent.decide_action()  # it takes stock of its queue: full under "low"
    deliver = next(task for task in tasks if task["required_capability"] == "manipulation")
    extra = [{**deliver, "task_id": "extra_delivery"}]
    results = negotiate_everywhere(agents, extra)
    # The one manipulation agent counter-offered (it had no room in round 1)...
    bids = [bid for direction, message in agents[0].comm.history
            if direction == "received" and message["message_type"] == "task_negotiation"
            and message["content"].get("negotiation_id") == results["agent_1"]["negotiation_id"]
            for bid in message["content"].get("bids", ())]
    assert bids and {bid["action"] for bid in bids} == {"counter_offer"}
    assert {bid["task_id"] for bid in bids} == {"extra_delivery"}
    for bid in bids:
        assert set(bid) >= {"task_id", "action", "capabilities", "estimated_time",
                            "bid_value"}
    assert results["agent_1"]["rounds"] > 1
    # ...and no task is left with nobody while an able agent offered to take it.
    check_allocation(world, agents, extra, results)


@pytest.mark.parametrize("when", ["first episode", "after reset"])
def test_bids_estimate_from_where_each_bidder_is(team: Team, when: str) -> None:
    """A teammate's bid carries estimated_time from its own position in this world, even
    when the negotiation starts before it has acted (M-7's loop: agent_1 decides first)."""
    world = GridWorld(num_agents=3, seed=CONTESTED_SEED)
    agents = build(team, world, "auction_based")
    if when == "after reset":
        run_episode(world, agents, 200)
        assert world.evaluate()["success"] is True
        for agent in agents:
            agent.reset()
        world.reset(seed=CONTESTED_SEED + 1)
    task_description = world.task_description()
    for agent in agents:
        agent.set_task(task_description)
    tasks = {task["task_id"]: task for task in world.get_tasks()}
    result = agents[0].negotiate_task_allocation(list(tasks.values()))
    bids = [(message["sender_id"], bid) for direction, message in agents[0].comm.history
            if direction == "received" and message["message_type"] == "task_negotiation"
            and message["content"].get("negotiation_id") == result["negotiation_id"]
            and message["content"].get("round") == 1
            for bid in message["content"].get("bids", ())]
    assert {sender for sender, _ in bids} == {"agent_2", "agent_3"}
    wrong = {(sender, bid["task_id"]): (bid["estimated_time"],
                                        estimated_steps(world.position(sender),
                                                        Task.read(tasks[bid["task_id"]])))
             for sender, bid in bids
             if bid["estimated_time"] != estimated_steps(world.position(sender),
                                                         Task.read(tasks[bid["task_id"]]))}
    assert wrong == {}, f"(bidder, task): (estimated_time bid, from its position) {wrong}"


def test_negotiating_again_answers_from_the_allocation_held(team: Team) -> None:
    world = GridWorld(num_agents=3, seed=CONTESTED_SEED)
    agents = build(team, world, "auction_based")
    tasks = world.get_tasks()
    once = agents[1].negotiate_task_allocation(tasks)
    again = negotiate_everywhere(agents, list(reversed(tasks)))  # same tasks, other order
    assert {r["negotiation_id"] for r in again.values()} == {once["negotiation_id"]}
    assert all(a.negotiator.counts["negotiations"] == (a is agents[1]) for a in agents)
    assert again["agent_2"]["accepted_tasks"] == [t for t in reversed(once["accepted_tasks"])]


def test_an_empty_task_list_allocates_nothing(team: Team) -> None:
    world = GridWorld(num_agents=3, seed=CONTESTED_SEED)
    agents = build(team, world, "auction_based")
    result = agents[0].negotiate_task_allocation([])
    assert (result["accepted_tasks"], result["rejected_tasks"], result["proposals"]) == (
        [], [], [])
    assert agents[0].negotiator.counts["negotiations"] == 0
