"""``AutonomousAgent`` end to end: M-7's loop, help and status traffic, reset,
the BaseAgent contract and trajectories, over a real mesh (M-7).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from decentralized_support import (
    BASELINE,
    TIMEOUT,
    Team,
    make_config,
    nats_children,
    run_episode,
)

from agoramesh.errors import (
    AgoraError,
    ConfigError,
    InvalidAllocation,
    InvalidRequest,
    InvalidWorldCall,
)
from agoramesh.modes.decentralized.autonomous_agent import AutonomousAgent
from agoramesh.modes.decentralized.base import BaseAgent
from agoramesh.sim import ActionStatus, GridWorld, TrajectoryRecorder, read_trajectory

pytestmark = pytest.mark.integration

MESSAGE_TYPES = {"task_negotiation", "status_update", "help_request"}
#: A world whose only manipulation agent (agent_3) has no vision and must deliver an
#: object that starts unidentified; agent_2 is the only vision agent (checked below).
HELP_SEED = 0
MAX_ROUNDS = 200


class RecordingWorld(GridWorld):
    """A GridWorld that notes which completed tasks each agent saw for itself."""

    def __init__(self, **kwargs: Any) -> None:
        self.seen_complete: dict[str, set[str]] = {}
        super().__init__(**kwargs)

    def observe(self, sim_id: str) -> dict[str, Any]:
        view = super().observe(sim_id)
        self.seen_complete.setdefault(sim_id, set()).update(
            t["task_id"] for t in view["tasks"] if t["status"] == "complete")
        return view

    def process_command(self, sim_id: str, command: str) -> Any:
        status, message, result = super().process_command(sim_id, command)
        if result:
            self.seen_complete.setdefault(sim_id, set()).update(result["completed_tasks"])
        return status, message, result


def unidentified_deliveries(world: GridWorld) -> dict[str, str]:
    """Deliver task id → object, for objects that start unidentified (the world's own state:
    nothing public lists objects out of every agent's view)."""
    return {t["task_id"]: t["object"] for t in world.get_tasks()
            if t["kind"] == "deliver" and not world._state.objects[t["object"]].identified}


@dataclasses.dataclass
class Episode:
    world: RecordingWorld
    agents: list[AutonomousAgent]
    rounds: int
    help_round: int | None  # the round in which the requester heard that help was coming
    unidentified: dict[str, str]
    evaluation: dict[str, Any]
    trajectory: Path


@pytest.fixture(scope="module")
def played(module_team: Team, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[dict[str, Episode]]:
    """The HELP_SEED world played once under cooperation "high" and once under "low"."""
    episodes: dict[str, Episode] = {}
    recorders: list[TrajectoryRecorder] = []
    try:
        for level in ("high", "low"):
            world = RecordingWorld(num_agents=3, seed=HELP_SEED)
            unidentified = unidentified_deliveries(world)
            agents = module_team.agents_for(world, make_config(
                agent_config={"cooperation_level": level}))
            path = tmp_path_factory.mktemp(level) / "t.jsonl"
            recorder = TrajectoryRecorder(path)
            recorders.append(recorder)
            for agent in agents:
                agent.set_trajectory_recorder(recorder)
            requester = agents[2]
            arrival: list[int] = []

            def note_help(step: int, requester: AutonomousAgent = requester,
                          arrival: list[int] = arrival) -> None:
                if requester.counts["help_received"] and not arrival:
                    arrival.append(step + 1)

            rounds = run_episode(world, agents, MAX_ROUNDS, on_round=note_help)
            episodes[level] = Episode(world, agents, rounds, arrival[0] if arrival else None,
                                      unidentified, world.evaluate(), path)
        yield episodes
    finally:
        for recorder in recorders:
            recorder.close()


# -- 1. M-7's usage example ----------------------------------------------------------------

def test_the_specifications_usage_example_runs_as_written(team: Team) -> None:
    config = yaml.safe_load(BASELINE.read_text(encoding="utf-8"))  # the dict, as M-7's loop has it
    simulator = GridWorld(num_agents=config["agent_config"]["num_agents"], seed=HELP_SEED)
    max_steps = config["execution"]["max_total_steps"]

    agents = []
    for i in range(3):
        agent_id = f"agent_{i+1}"
        agent = AutonomousAgent(simulator, agent_id, config)
        agents.append(agent)
        team.adopt(agent)  # closed after the test
    for agent in agents:
        peers = [a for a in agents if a != agent]
        agent.set_peer_agents(peers)
    task_description = simulator.task_description()
    for agent in agents:
        agent.set_task(task_description)
    for step in range(max_steps):  # noqa: B007 - M-7's loop, verbatim
        for agent in agents:
            action = agent.decide_action()
            status, message, result = agent.step()
            if "DONE" in action:
                break
    outcome = simulator.evaluate()
    stats = [dict(agent.comm.stats) for agent in agents]
    servers = [agent.comm.member.server for agent in agents]
    for agent in agents:
        agent.reset()

    assert outcome["success"] is True
    assert outcome["tasks_completed"] == outcome["tasks_total"] == len(simulator.get_tasks())
    assert simulator.is_done()
    assert step == max_steps - 1  # M-7's break only left the inner loop
    assert "DONE" in action and status is ActionStatus.SUCCESS  # later DONEs are harmless
    assert message == "the episode is over" and result is not None and result["done"] is True
    # Messages really crossed NATS: every agent sent and received, each through its own
    # embedded server, and the servers are distinct processes routed into one cluster.
    for counters in stats:
        assert counters["sent"] > 0 and counters["received"] > 0
    assert all(server is not None and server.pid is not None for server in servers)
    assert len({server.pid for server in servers if server}) == 3
    assert len({server.client_url for server in servers if server}) == 3
    rosters = [{mate.agent_id for mate in agent.comm.member.roster.values()}
               for agent in agents]
    keys = [agent.comm.member.agent_id for agent in agents]
    for index, roster in enumerate(rosters):
        assert roster == set(keys) - {keys[index]}


# -- 3. help requests and status updates ----------------------------------------------------

def test_the_help_world_needs_help(played: dict[str, Episode]) -> None:
    """The scenario's premises, read from the world itself."""
    world = played["high"].world
    caps = {a: world.get_agent_capabilities(a) for a in world.sim_ids()}
    assert caps["agent_3"] == ["manipulation"]
    assert [a for a, held in caps.items() if "vision" in held] == ["agent_2"]
    assert played["high"].unidentified, "some delivery starts with an unidentified object"


def test_a_blocked_agent_asks_for_help_and_a_vision_agent_gives_it(
        played: dict[str, Episode]) -> None:
    episode = played["high"]
    assert episode.evaluation["success"] is True
    by_id = {agent.sim_id: agent for agent in episode.agents}
    requester, helper = by_id["agent_3"], by_id["agent_2"]
    assert requester.counts["help_requests_sent"] >= 1
    assert helper.counts["help_given"] >= 1
    assert requester.counts["help_received"] >= 1
    # It asked about deliveries it owned whose objects were unidentified.
    owners = requester.negotiator.owners()
    assert requester.help.asked
    for task_id, asked in requester.help.asked.items():
        assert task_id in episode.unidentified
        assert owners[task_id] == "agent_3"
        assert asked.helper == "agent_2"
    # And the deliveries were made: the objects got identified (PICK needs that).
    completed = set(episode.evaluation["completed"])
    assert set(episode.unidentified) <= completed
    # Over the wire: the request reached the helper, its acceptance reached the requester.
    got_requests = [m for d, m in helper.comm.history
                    if d == "received" and m["message_type"] == "help_request"]
    assert any(m["sender_id"] == "agent_3" and m["content"]["required_capability"] == "vision"
               and {"problem_type", "current_situation", "requested_help"} <= set(m["content"])
               for m in got_requests)
    accepts = [m for d, m in requester.comm.history if d == "received"
               and m["message_type"] == "task_negotiation"
               and m["content"].get("help_request_id")]
    assert accepts and accepts[0]["sender_id"] == "agent_2"
    assert accepts[0]["content"]["action"] == "accept"
    # The helper carried it out: it scanned, which only it could do.
    assert any(step["action"] == "SCAN" and step["status"] == "SUCCESS"
               for step in helper.history)


def test_low_cooperation_helps_later_than_high(played: dict[str, Episode]) -> None:
    high, low = played["high"], played["low"]
    assert high.evaluation["success"] is True and low.evaluation["success"] is True
    requester = {level: played[level].agents[2] for level in ("high", "low")}
    # Under "low" the helper takes a request up only when asked a second time...
    assert (requester["low"].counts["help_requests_sent"]
            > requester["high"].counts["help_requests_sent"])
    # ...so help arrives later, and the episode takes longer.
    assert high.help_round is not None and low.help_round is not None
    assert low.help_round > high.help_round
    assert low.rounds > high.rounds
    assert low.evaluation["steps"] > high.evaluation["steps"]


def test_status_updates_reach_every_teammate(played: dict[str, Episode]) -> None:
    for episode in played.values():
        for agent in episode.agents:
            teammates = {a.sim_id for a in episode.agents} - {agent.sim_id}
            assert set(agent.peer_status) == teammates
            for content in agent.peer_status.values():
                assert {"agent_status", "current_task", "progress",
                        "available_capacity"} <= set(content)
                assert 0.0 <= content["progress"] <= 1.0
                assert 0.0 <= content["available_capacity"] <= 1.0
            assert agent.counts["status_updates_sent"] >= 1


def test_agents_learn_completions_from_teammates_status_updates(
        played: dict[str, Episode]) -> None:
    episode = played["high"]
    every_task = {t["task_id"] for t in episode.world.get_tasks()}
    learnt_somewhere = False
    for agent in episode.agents:
        seen = episode.world.seen_complete.get(agent.sim_id, set())
        reported = {str(t) for d, m in agent.comm.history
                    if d == "received" and m["message_type"] == "status_update"
                    for t in m["content"].get("completed_tasks", ())}
        # What it believes complete it saw itself or was told by a teammate...
        assert agent.completed <= seen | reported
        # ...and whatever it did not see, it was told.
        learnt = agent.completed - seen
        assert learnt <= reported
        learnt_somewhere = learnt_somewhere or bool(learnt)
    assert learnt_somewhere, "some agent knew of a completion it never observed"
    # Whoever said DONE knew every task was complete.
    done_by = [a for a in episode.agents if a.history and a.history[-1]["action"] == "DONE"]
    assert done_by and done_by[0].completed == every_task


# -- 9. trajectories ------------------------------------------------------------------------

def test_the_trajectory_records_steps_messages_and_negotiations(
        played: dict[str, Episode]) -> None:
    episode = played["high"]
    records = read_trajectory(episode.trajectory)
    steps = [r for r in records if r["event"] == "step"]
    messages = [r for r in records if r["event"] == "message"]
    negotiations = [r for r in records if r["event"] == "negotiation"]
    assert len(steps) == episode.evaluation["steps"]
    assert {r["agent_id"] for r in steps} == {a.sim_id for a in episode.agents}
    for agent in episode.agents:
        mine = [r["step"] for r in steps if r["agent_id"] == agent.sim_id]
        assert mine == list(range(1, agent.step_count + 1))
    assert {r["direction"] for r in messages} == {"sent", "received"}
    assert {r["message"]["message_type"] for r in messages} == MESSAGE_TYPES
    sent_ids = {r["message"]["message_id"] for r in messages if r["direction"] == "sent"}
    received_ids = {r["message"]["message_id"] for r in messages if r["direction"] == "received"}
    assert sent_ids & received_ids  # the same messages, seen from both ends
    assert negotiations
    every_task = {t["task_id"] for t in episode.world.get_tasks()}
    assert set(negotiations[0]["result"]["allocation"]) == every_task


def test_the_trajectory_shows_every_received_message_being_sent(
        played: dict[str, Episode]) -> None:
    """Each agent records what it sends as well as what it receives, negotiation included."""
    records = read_trajectory(played["high"].trajectory)
    messages = [r for r in records if r["event"] == "message"]
    sent = {(r["agent_id"], r["message"]["message_id"]) for r in messages
            if r["direction"] == "sent"}
    unsent = sorted({(r["message"]["sender_id"], r["message"]["message_type"],
                      str(r["message"]["content"].get("action", "")))
                     for r in messages if r["direction"] == "received"
                     and (r["message"]["sender_id"], r["message"]["message_id"]) not in sent})
    assert unsent == [], f"received but never recorded as sent (sender, type, action): {unsent}"


# -- 4. reset -------------------------------------------------------------------------------

def seed_with(capabilities: dict[str, list[str]], *, same: bool, not_seed: int) -> int:
    """A GridWorld seed whose agents' capabilities are (or are not) ``capabilities``."""
    for seed in range(200):
        world = GridWorld(num_agents=3, seed=seed)
        caps = {a: world.get_agent_capabilities(a) for a in world.sim_ids()}
        if seed != not_seed and (caps == capabilities) == same:
            return seed
    raise AssertionError("no such seed")


def assert_clean(agent: AutonomousAgent) -> None:
    assert list(agent.comm.history) == []
    assert agent.comm.receive_messages() == []
    assert agent.negotiator.commitments == {}
    assert agent.negotiator.owners() == {}
    assert set(agent.negotiator.counts.values()) == {0}
    assert agent.history == []
    assert agent.step_count == 0
    assert agent.task_description == ""
    assert agent.tasks == {} and agent.completed == set() and agent.peer_status == {}
    assert agent.help.asked == {} and agent.help.given == {} and agent.help.deferred == {}
    assert set(agent.counts.values()) == {0}


@pytest.mark.parametrize("capabilities", ["same", "different"])
def test_reset_clears_the_episode_and_the_team_plays_another(
        team: Team, capabilities: str) -> None:
    first_seed = 1
    world = GridWorld(num_agents=3, seed=first_seed)
    agents = team.agents_for(world, make_config())
    run_episode(world, agents, MAX_ROUNDS)
    assert world.evaluate()["success"] is True
    assert all(agent.comm.history and agent.negotiator.commitments for agent in agents)
    for agent in agents:
        agent.reset()
    for agent in agents:
        assert_clean(agent)
    caps = {a: world.get_agent_capabilities(a) for a in world.sim_ids()}
    other = seed_with(caps, same=capabilities == "same", not_seed=first_seed)
    world.reset(seed=other)
    run_episode(world, agents, MAX_ROUNDS)
    outcome = world.evaluate()
    assert outcome["invalid_actions"] == 0, (
        f"agents acted on stale capabilities: they have "
        f"{[a.get_agent_capabilities() for a in agents]}, the world says "
        f"{[world.get_agent_capabilities(a.sim_id) for a in agents]}")
    assert outcome["success"] is True


# -- 8. the BaseAgent contract ------------------------------------------------------------------

class Scripted(BaseAgent):
    """A BaseAgent whose decisions are a script: what BaseAgent itself guarantees."""

    def __init__(self, simulator: Any, sim_id: str, script: list[str]) -> None:
        super().__init__(simulator, sim_id, {})
        self.script = list(script)
        self.decisions = 0

    def decide_action(self) -> str:
        self.decisions += 1
        return self._decided(self.script.pop(0))

    def get_mode_name(self) -> str:
        return "scripted"


def test_base_agent_step_decides_itself_and_never_repeats_an_action() -> None:
    world = GridWorld(num_agents=3, seed=HELP_SEED)
    agent = Scripted(world, "agent_1", ["WAIT", "MOVE north", "WAIT", "WAIT"])
    status, _, result = agent.step()  # nothing decided: it decides first
    assert agent.decisions == 1 and status is ActionStatus.SUCCESS and result is not None
    assert agent.history[-1]["action"] == "WAIT"
    action = agent.decide_action()
    assert action == "MOVE north"
    agent.step()
    assert agent.decisions == 2  # step carried out the decided action, no new decision
    assert [h["action"] for h in agent.history] == ["WAIT", "MOVE north"]
    agent.step()  # the decided action is spent: the next step decides again
    assert agent.decisions == 3
    assert world.evaluate()["steps_by_agent"]["agent_1"] == agent.step_count == 3
    agent.decide_action()
    agent.reset()  # a pending action does not survive reset
    assert (agent.history, agent.step_count, agent._pending) == ([], 0, None)


@pytest.fixture(scope="module")
def trio(module_team: Team) -> tuple[GridWorld, list[AutonomousAgent]]:
    world = GridWorld(num_agents=3, seed=1)
    return world, module_team.agents_for(world, make_config())


@pytest.fixture
def fresh(trio: tuple[GridWorld, list[AutonomousAgent]]
          ) -> tuple[GridWorld, list[AutonomousAgent]]:
    world, agents = trio
    world.reset()
    for agent in agents:
        agent.reset()
    return world, agents


def test_decide_then_step_carries_out_exactly_that_action_once(
        fresh: tuple[GridWorld, list[AutonomousAgent]]) -> None:
    world, agents = fresh
    agent = agents[0]
    for agent_ in agents:
        agent_.set_task(world.task_description())
    action = agent.decide_action()
    assert isinstance(action, str) and action
    before = world.evaluate()["steps_by_agent"][agent.sim_id]
    status, message, result = agent.step()
    assert isinstance(status, ActionStatus) and isinstance(message, str)
    assert isinstance(result, dict)
    assert agent.history[-1]["action"] == action
    assert world.evaluate()["steps_by_agent"][agent.sim_id] == before + 1
    assert agent.step_count == 1


def test_step_without_decide_action_decides_itself(
        fresh: tuple[GridWorld, list[AutonomousAgent]]) -> None:
    world, agents = fresh
    for agent in agents:
        agent.set_task(world.task_description())
    agent = agents[1]
    agent.step()
    assert agent.step_count == 1
    assert world.evaluate()["steps_by_agent"][agent.sim_id] == 1
    assert agent.history[-1]["action"] == agent.last_plan.command  # what it decided
    assert agent.negotiator.owners(), "deciding negotiated the tasks first"


def test_mode_name_capabilities_suitability_and_conflicts(
        fresh: tuple[GridWorld, list[AutonomousAgent]]) -> None:
    world, agents = fresh
    for agent in agents:
        assert agent.get_mode_name() == "decentralized"
        caps = agent.get_agent_capabilities()
        assert caps == world.get_agent_capabilities(agent.sim_id)
        caps.append("flight")  # a copy
        assert "flight" not in agent.get_agent_capabilities()
        for task in world.get_tasks():
            score = agent.evaluate_task_suitability(task)
            if task["required_capability"] in caps:
                assert 0.0 < score <= 1.0
            else:
                assert score == 0.0
        flight = {"task_id": "fly", "required_capability": "flight", "priority": 5}
        assert agent.evaluate_task_suitability(flight) == 0.0
    conflict = {"task_id": "task_1", "claims": [{"agent_id": "agent_2", "score": 0.4},
                                                {"agent_id": "agent_1", "score": 0.9}]}
    verdicts = {agent.sim_id: agent.handle_conflict_resolution(conflict) for agent in agents}
    for sim_id, verdict in verdicts.items():
        assert verdict["task_id"] == "task_1"
        assert verdict["winner"] == "agent_1"
        assert verdict["losers"] == ["agent_2"]
        assert isinstance(verdict["reason"], str) and verdict["reason"]
        assert verdict["keep"] is (sim_id == "agent_1")
    with pytest.raises(InvalidAllocation):
        agents[0].handle_conflict_resolution({"task_id": "task_1", "claims": []})


def test_communicate_with_peers_one_and_all(
        fresh: tuple[GridWorld, list[AutonomousAgent]]) -> None:
    _, agents = fresh
    one, two, three = agents
    sent = one.communicate_with_peers({"receiver_id": "agent_2", "message_type": "help_request",
                                       "content": {"problem_type": "stuck"}})
    assert sent["success"] is True and sent["delivered_to"] == ["agent_2"]
    assert [m["content"] for m in two.comm.receive_messages()] == [{"problem_type": "stuck"}]
    assert three.comm.receive_messages() == []
    everyone = one.communicate_with_peers({"message_type": "status_update",
                                           "content": {"agent_status": "idle"}})
    assert everyone["success"] is True
    assert sorted(everyone["delivered_to"]) == ["agent_2", "agent_3"]
    for peer in (two, three):
        [got] = peer.comm.receive_messages()
        assert (got["sender_id"], got["receiver_id"]) == ("agent_1", "broadcast")
    with pytest.raises(InvalidRequest):
        one.communicate_with_peers("hello")  # type: ignore[arg-type]


def test_set_task_and_set_peer_agents_check_their_input(
        fresh: tuple[GridWorld, list[AutonomousAgent]]) -> None:
    _, agents = fresh
    with pytest.raises(InvalidRequest):
        agents[0].set_task(42)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        agents[0].set_peer_agents([agents[1], 5])
    agents[0].set_peer_agents(["agent_2", "agent_3"])  # ids work as well as agents
    assert agents[0].comm.peers == ["agent_2", "agent_3"]
    started = time.monotonic()
    with pytest.raises(AgoraError, match="agent_7"):
        agents[0].set_peer_agents(["agent_2", "agent_7"])  # nobody of that name
    assert time.monotonic() - started < TIMEOUT + 1.0  # waited, boundedly
    agents[0].set_peer_agents(agents[1:])
    assert agents[0].comm.peers == ["agent_2", "agent_3"]


def test_a_bad_simulator_or_sim_id_is_refused_before_joining() -> None:
    before = set(nats_children())
    world = GridWorld(num_agents=3, seed=HELP_SEED)
    with pytest.raises(ConfigError, match="SimulationEngine"):
        AutonomousAgent(object(), "agent_1", make_config())  # type: ignore[arg-type]
    with pytest.raises(InvalidWorldCall, match="no agent 'agent_9'"):
        AutonomousAgent(world, "agent_9", make_config())
    assert set(nats_children()) == before  # no server was started for them
