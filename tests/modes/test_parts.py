"""The decentralized mode's parts that need no mesh: typed tasks, the roster's rules, the
bidder's offers, the model's prompt and parsing, and the presence bodies a member sends."""

from __future__ import annotations

from collections import Counter

import pytest

from agoramesh.modes.decentralized.bidding import Standing, TeamBidder
from agoramesh.modes.decentralized.config import CooperationLevel
from agoramesh.modes.decentralized.llm import extract_action, is_allowed, prompt
from agoramesh.modes.decentralized.policy import Plan
from agoramesh.modes.decentralized.roster import Roster
from agoramesh.modes.decentralized.tasks import HelpTask, Task, read_tasks
from agoramesh.nodes.presence import presence_body
from agoramesh.protocols.allocation.strategies import normalize_tasks
from agoramesh.sim import GridWorld

KEY_A, KEY_B = "U" + "A" * 55, "U" + "B" * 55


def test_tasks_are_read_from_the_simulators_dicts_and_keep_them() -> None:
    world = GridWorld(num_agents=3, seed=0)
    tasks = read_tasks(world.get_tasks())
    assert list(tasks) == [t["task_id"] for t in world.get_tasks()]
    for raw in world.get_tasks():
        task = tasks[raw["task_id"]]
        assert (task.kind, task.capability, task.priority) == (
            raw["kind"], raw["required_capability"], raw["priority"])
        assert task.location == tuple(raw["location"])
        assert task.source == raw  # what a negotiation announces, extra keys included


def test_reading_a_task_or_help_request_is_lenient() -> None:
    odd = Task.read({"task_id": 7, "kind": 3, "priority": True, "location": [1, "2"],
                     "object": None, "target": (4, 5)})
    assert odd == Task(task_id="7", target=(4, 5))
    help_task = HelpTask.read("agent_3", {"request_id": "r1", "object": "crate_1",
                                          "required_capability": "vision",
                                          "location": [2, 2], "attempt": "2"})
    assert (help_task.requester, help_task.attempt) == ("agent_3", 1)
    assert help_task.task() == Task(task_id="r1", kind="inspect", capability="vision",
                                    location=(2, 2), object="crate_1")


def test_the_roster_takes_teammates_and_refuses_a_live_ones_name() -> None:
    stats: Counter[str] = Counter()
    roster = Roster("alpha", "t1", ["vision"], stats)
    assert roster.body() == {"sim_id": "alpha", "capabilities": ["vision"], "team": "t1"}
    for ignored in ({"sim_id": "beta", "team": "t2"}, {"sim_id": "alpha", "team": "t1"},
                    {"sim_id": "", "team": "t1"}, {"sim_id": "x" * 65, "team": "t1"}, "beta"):
        assert roster.read(KEY_A, ignored) is None
    beta = roster.read(KEY_A, {"sim_id": "beta", "team": "t1", "capabilities": "vision"})
    assert beta is not None and beta.capabilities == () and roster.by_agent(KEY_A) is beta
    assert roster.read(KEY_B, {"sim_id": "beta", "team": "t1"}) is None  # a live teammate's
    assert stats["roster_conflicts"] == 1 and roster["beta"].agent_id == KEY_A
    beta.lost = True  # a lost teammate's name is free again
    again = roster.read(KEY_B, {"sim_id": "beta", "team": "t1", "capabilities": ["manipulation"]})
    assert again is not None and roster["beta"] is again and again.capabilities == (
        "manipulation",)
    assert roster.by_agent(KEY_A) is None and roster.by_agent(KEY_B) is again
    assert list(roster) == ["beta"] and len(roster) == 1


def test_a_full_bidder_counter_offers_only_after_the_first_round() -> None:
    bidder = TeamBidder("agent_2", CooperationLevel.LOW, ["vision"])
    specs = normalize_tasks([
        {"task_id": "a", "required_capability": "vision", "location": [3, 0]},
        {"task_id": "b", "required_capability": "flight"},
        {"task_id": "c", "required_capability": "vision", "kind": "inspect"}])
    profile, bids = bidder.offer(specs, 1)
    assert profile.capacity == 1 and profile.priority == 98
    assert [(b["task_id"], b["action"], b["estimated_time"]) for b in bids] == [
        ("a", "bid", 4), ("c", "bid", 1)]
    bidder.standing = Standing(position=(3, 0), queued=1, excluded=frozenset({"c"}),
                               capabilities=("vision",))
    assert bidder.offer(specs, 1)[1] == []  # full: it waits for a later round
    profile, bids = bidder.offer(specs, 2)
    assert profile.capacity == 2 and [(b["task_id"], b["action"], b["estimated_time"])
                                      for b in bids] == [("a", "counter_offer", 1)]
    assert bidder.suitability({"task_id": "b", "required_capability": "flight"}) == 0.0


@pytest.mark.parametrize(("reply", "action"), [
    ("Let me look around first.\nAction: WAIT", "WAIT"),
    ("agent_1_action: GOTO 3 4.", "GOTO 3 4"),
    ("I would go north\nMOVE north", "MOVE north"),
    ("", ""),
])
def test_the_models_action_is_its_action_line_else_its_last_line(reply: str,
                                                                  action: str) -> None:
    assert extract_action(reply) == action


def test_only_a_listed_command_of_sane_length_is_allowed() -> None:
    actions = "MOVE <north|south|east|west>\nGOTO <x> <y>\nWAIT"
    assert is_allowed("move north", actions) and is_allowed("WAIT", actions)
    assert not is_allowed("FLY to the moon", actions) and not is_allowed("", actions)
    assert not is_allowed("WAIT " + "x" * 200, actions)
    text = prompt(goal="Deliver the crates", sim_id="agent_1", capabilities=["vision"],
                  situation="You are agent_1 at (0, 0).", queue=[], completed=["t1"],
                  actions=actions, plan=Plan("SCAN", note="crate_1 is next to you"))
    assert "You are agent_1; capabilities: vision." in text
    assert "Your allocated tasks: none." in text and "Known complete: t1." in text
    assert text.endswith("A planner suggests: SCAN (crate_1 is next to you).\n"
                         "Answer with one line: Action: <command>")


def test_presence_bodies_are_hello_heartbeat_and_bye_shaped() -> None:
    card, status = {"id": KEY_A}, {"capacity": 1}
    hello = presence_body("hello", card=card, status=status, interval=1.0, digest="d",
                          host=KEY_B)
    assert hello == {"card": card, "status": status, "interval": 1.0, "digest": "d",
                     "host": KEY_B}
    assert presence_body("heartbeat", card=card, status=status, interval=1.0,
                         digest="d") == {"status": status, "interval": 1.0, "digest": "d"}
    assert presence_body("bye", card=card, status=status, interval=1.0, digest="d") == {}
    assert "host" not in presence_body("hello", card=card, status=status, interval=1.0,
                                       digest="d")
