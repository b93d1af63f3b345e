"""The deterministic policy (policy.py): the next command for each task kind and state.

Pure functions, no servers. Worlds below are written out by hand; the last
tests walk the policy through a real GridWorld to check that its commands
actually finish each kind of task.
"""

from __future__ import annotations

from typing import Any

import pytest

from agoramesh.modes.decentralized.policy import Plan, distance, estimated_steps, plan_task
from agoramesh.modes.decentralized.tasks import Task, point
from agoramesh.sim import ActionStatus, GridWorld

SURVEY = {"task_id": "t1", "kind": "survey", "location": [3, 4], "waypoint": "wp_1"}
INSPECT = {"task_id": "t2", "kind": "inspect", "location": [5, 5], "object": "crate_1"}
DELIVER = {"task_id": "t3", "kind": "deliver", "location": [1, 1], "object": "ball_2",
           "target": [6, 2]}

NAV = ("navigation",)
VISION = ("vision",)
MANIP = ("manipulation",)


def plan(task: dict[str, Any], position: tuple[int, int], capabilities: tuple[str, ...] = (),
         carrying: str | None = None, objects: dict[str, dict[str, Any]] | None = None) -> Plan:
    return plan_task(Task.read(task), position=position, capabilities=capabilities,
                     carrying=carrying, objects=objects or {})


# -- survey -------------------------------------------------------------------------------

def test_survey_goes_to_the_waypoint_then_marks() -> None:
    assert plan(SURVEY, (0, 0), NAV) == Plan("GOTO 3 4")
    assert plan(SURVEY, (3, 4), NAV) == Plan("MARK")


# -- inspect ------------------------------------------------------------------------------

def test_inspect_goes_to_the_object_then_scans() -> None:
    assert plan(INSPECT, (0, 0), VISION) == Plan("GOTO 5 5")
    assert plan(INSPECT, (5, 4), VISION).command == "SCAN"  # next to it is enough
    assert plan(INSPECT, (5, 5), VISION).command == "SCAN"


def test_inspect_follows_where_the_object_was_seen() -> None:
    seen = {"crate_1": {"position": [2, 7], "identified": False}}
    assert plan(INSPECT, (0, 0), VISION, objects=seen).command == "GOTO 2 7"
    assert plan(INSPECT, (2, 6), VISION, objects=seen).command == "SCAN"


def test_inspect_of_an_identified_object_waits() -> None:
    done = plan(INSPECT, (5, 5), VISION, objects={"crate_1": {"identified": True}})
    assert done.command == "WAIT"
    assert "identified already" in done.note


# -- deliver ------------------------------------------------------------------------------

def test_deliver_of_an_identified_object_goes_picks_carries_places() -> None:
    ok = {"ball_2": {"position": [1, 1], "identified": True}}
    assert plan(DELIVER, (4, 4), MANIP, objects=ok) == Plan("GOTO 1 1")
    assert plan(DELIVER, (1, 1), MANIP, objects=ok) == Plan("PICK ball_2")
    assert plan(DELIVER, (1, 1), MANIP, carrying="ball_2", objects=ok) == Plan("GOTO 6 2")
    assert plan(DELIVER, (6, 2), MANIP, carrying="ball_2", objects=ok) == Plan("PLACE")


def test_deliver_while_carrying_something_else_drops_it_first() -> None:
    dropped = plan(DELIVER, (3, 3), MANIP, carrying="box_9")
    assert dropped.command == "PLACE"
    assert "box_9" in dropped.note


def test_deliver_of_an_object_not_seen_yet_goes_to_look() -> None:
    assert plan(DELIVER, (4, 4), MANIP) == Plan("GOTO 1 1")


def test_deliver_of_an_unidentified_object_without_vision_needs_help() -> None:
    unseen_id = {"ball_2": {"position": [1, 1], "identified": False}}
    far = plan(DELIVER, (4, 4), MANIP, objects=unseen_id)
    assert (far.command, far.needs) == ("GOTO 1 1", "vision")
    there = plan(DELIVER, (1, 1), MANIP, objects=unseen_id)
    assert (there.command, there.needs) == ("WAIT", "vision")
    assert "identified" in there.note


def test_deliver_of_an_unidentified_object_with_vision_scans_it_itself() -> None:
    unseen_id = {"ball_2": {"position": [1, 1], "identified": False}}
    both = ("manipulation", "vision")
    assert plan(DELIVER, (4, 4), both, objects=unseen_id) == Plan("GOTO 1 1")
    assert plan(DELIVER, (1, 2), both, objects=unseen_id) == Plan("SCAN")


def test_a_teammates_report_unblocks_a_delivery() -> None:
    reported = {"ball_2": {"identified": True}}  # from a status_update: no position
    assert plan(DELIVER, (1, 1), MANIP, objects=reported) == Plan("PICK ball_2")


def test_an_unknown_task_kind_waits_and_says_why() -> None:
    odd = plan({"kind": "juggle", "location": [0, 0]}, (0, 0))
    assert odd.command == "WAIT"
    assert "juggle" in odd.note


# -- estimates and geometry ------------------------------------------------------------------

@pytest.mark.parametrize(("start", "task", "steps"), [
    ((0, 0), SURVEY, 3 + 4 + 1),
    ((3, 4), SURVEY, 1),
    ((5, 3), INSPECT, 2 + 1),
    ((0, 0), DELIVER, (1 + 1) + (5 + 1) + 2),
    ((1, 1), DELIVER, 6 + 2),
    ((2, 2), {"kind": "inspect"}, 1),  # no location: the work is here
])
def test_estimated_steps(start: tuple[int, int], task: dict[str, Any], steps: int) -> None:
    assert estimated_steps(start, Task.read(task)) == steps


def test_distance_and_point() -> None:
    assert distance((1, 2), (4, 0)) == distance((4, 0), (1, 2)) == 5
    assert point([3, 4]) == (3, 4)
    assert point((3, 4)) == (3, 4)
    for bad in (None, [1], [1, 2, 3], ["1", 2], [True, 2], "12"):
        assert point(bad, (9, 9)) == (9, 9)


# -- against the world ---------------------------------------------------------------------

def walk(world: GridWorld, sim_id: str, task: dict[str, Any], limit: int = 80) -> list[str]:
    """Follow the policy for one task in ``world``; the commands sent."""
    sent: list[str] = []
    caps = tuple(world.get_agent_capabilities(sim_id))
    while world.task_status(task["task_id"]) != "complete":
        assert len(sent) < limit, f"no progress on {task['task_id']}: {sent[-5:]}"
        seen = world.observe(sim_id)
        objects = {o["name"]: o for o in seen["objects"]}
        next_plan = plan_task(Task.read(task), position=tuple(seen["position"]),
                              capabilities=caps, carrying=seen["carrying"], objects=objects)
        assert next_plan.needs is None, f"{sim_id} is blocked: {next_plan}"
        status, message, _ = world.process_command(sim_id, next_plan.command)
        assert status is ActionStatus.SUCCESS, message
        sent.append(next_plan.command)
    return sent


@pytest.mark.parametrize("seed", range(4))
def test_the_policy_finishes_every_task_its_agent_can_do_alone(seed: int) -> None:
    world = GridWorld(num_agents=3, seed=seed, obstacle_ratio=0.0)
    vision = next(a for a in world.sim_ids() if "vision" in world.get_agent_capabilities(a))
    for task in world.get_tasks():
        doers = [a for a in world.sim_ids()
                 if task["required_capability"] in world.get_agent_capabilities(a)]
        assert doers, "every task of a GridWorld is someone's"
        if task["kind"] == "deliver" and "vision" not in world.get_agent_capabilities(doers[0]):
            # Make the object pickable the way a teammate's help would: a vision agent SCANs.
            scan_for = {"task_id": task["task_id"], "kind": "inspect",
                        "object": task["object"], "location": task["location"]}
            caps = tuple(world.get_agent_capabilities(vision))
            for _ in range(80):
                seen = world.observe(vision)
                objects = {o["name"]: o for o in seen["objects"]}
                step = plan_task(Task.read(scan_for), position=tuple(seen["position"]),
                                 capabilities=caps, carrying=seen["carrying"], objects=objects)
                if step.command == "WAIT" and objects.get(task["object"], {}).get("identified"):
                    break
                status, message, _ = world.process_command(vision, step.command)
                if step.command == "SCAN" and status is ActionStatus.FAILURE:
                    break  # it was identified already: nothing left to scan
                assert status is ActionStatus.SUCCESS, message
        walk(world, doers[0], task)
    assert world.evaluate()["tasks_completed"] == len(world.get_tasks())
