"""GridWorld: seeded generation, each command's outcomes, what agents see, solvable worlds."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import agoramesh.sim
from agoramesh.errors import ConfigError, InvalidWorldCall
from agoramesh.sim import ActionStatus, GridWorld, SimulationEngine

OK, FAIL, BAD = ActionStatus.SUCCESS, ActionStatus.FAILURE, ActionStatus.INVALID
POOL = ("navigation", "vision", "manipulation")

FUZZ = settings(max_examples=200, derandomize=True, database=None, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


def holder(world: GridWorld, capability: str, *, without: str | None = None) -> str:
    """The first agent with ``capability`` (and, if given, lacking ``without``)."""
    return next(a for a in world.sim_ids() if capability in world.get_agent_capabilities(a)
                and (without is None or without not in world.get_agent_capabilities(a)))


def lacking(world: GridWorld, capability: str) -> str:
    return next(a for a in world.sim_ids() if capability not in world.get_agent_capabilities(a))


def walk(world: GridWorld, agent: str, cell: list[int] | tuple[int, int]) -> None:
    """GOTO ``cell`` one step at a time; each step must bring the agent one cell closer."""
    for _ in range(world.width * world.height):
        if world.position(agent) == tuple(cell):
            return
        before = world.shortest_path_length(world.position(agent), cell)
        status, message, _ = world.process_command(agent, f"GOTO {cell[0]} {cell[1]}")
        assert status is OK, message
        assert world.shortest_path_length(world.position(agent), cell) == before - 1
    raise AssertionError(f"{agent} never reached {cell}")


def do(world: GridWorld, agent: str, command: str,
       expected: ActionStatus = OK) -> tuple[str, dict[str, Any]]:
    status, message, result = world.process_command(agent, command)
    assert status is expected, message
    assert result is not None
    return message, result


def everything(world: GridWorld, agent: str) -> dict[str, Any]:
    """What ``agent`` would see with an unlimited view (the test's window onto world state)."""
    radius, world.view_radius = world.view_radius, 1000
    try:
        return world.observe(agent)
    finally:
        world.view_radius = radius


def free_cells(world: GridWorld) -> list[tuple[int, int]]:
    rows = world.render().split("\n")
    return [(x, y) for y, row in enumerate(rows) for x, ch in enumerate(row) if ch != "#"]


def connected(cells: list[tuple[int, int]]) -> bool:
    """Whether ``cells`` form one region (an independent flood fill over the rendered map)."""
    todo, seen = [cells[0]], {cells[0]}
    members = set(cells)
    while todo:
        x, y = todo.pop()
        for near in ((x + 1, y), (x - 1, y), (x, y + 1), (x, y - 1)):
            if near in members and near not in seen:
                seen.add(near)
                todo.append(near)
    return seen == members


def solve(world: GridWorld) -> int:
    """The scripted oracle: each open task in order, by the first agent able to do it.

    Returns how often a manipulation agent needed a vision agent's help (each a failed PICK).
    """
    helped = 0
    for task in world.get_tasks():
        if world.task_status(task["task_id"]) == "complete":
            continue  # a SCAN for an earlier task identified this one's object too
        if task["kind"] == "inspect":
            seer = holder(world, "vision")
            walk(world, seer, task["location"])
            do(world, seer, "SCAN")
        elif task["kind"] == "survey":
            walker = holder(world, "navigation")
            walk(world, walker, task["location"])
            do(world, walker, "MARK")
        else:
            hand = holder(world, "manipulation")
            walk(world, hand, task["location"])
            status, message, _ = world.process_command(hand, f"PICK {task['object']}")
            if status is FAIL:  # unidentified cargo: a vision agent comes to help
                assert "SCAN it first" in message
                helped += 1
                seer = holder(world, "vision")
                walk(world, seer, task["location"])
                do(world, seer, "SCAN")
                do(world, hand, f"PICK {task['object']}")
            walk(world, hand, task["target"])
            do(world, hand, "PLACE")
        assert world.task_status(task["task_id"]) == "complete", task
    return helped


# -- generation -------------------------------------------------------------------------------


def test_a_grid_world_is_a_simulation_engine() -> None:
    assert isinstance(GridWorld(), SimulationEngine)
    assert agoramesh.sim.__all__ == tuple(sorted(agoramesh.sim.__all__))


def test_the_same_seed_gives_the_same_world_and_seeds_differ() -> None:
    def snapshot(world: GridWorld) -> tuple[object, ...]:
        return (world.render(), world.get_tasks(),
                [world.get_agent_capabilities(a) for a in world.sim_ids()],
                world.observe("agent_1"))

    assert snapshot(GridWorld(seed=7)) == snapshot(GridWorld(seed=7))
    renders = {GridWorld(seed=seed).render() for seed in range(10)}
    assert len(renders) == 10


def test_reset_regenerates_and_clears_every_counter() -> None:
    world = GridWorld(seed=3)
    fresh = (world.render(), world.get_tasks())
    do(world, "agent_1", "MOVE sideways", BAD)
    do(world, "agent_1", "DONE", FAIL)
    world.reset()
    assert (world.render(), world.get_tasks()) == fresh
    assert world.evaluate() == {
        "success": False, "done": False, "tasks_total": 6, "tasks_completed": 0,
        "completed": [], "steps": 0, "steps_by_agent": dict.fromkeys(world.sim_ids(), 0),
        "invalid_actions": 0, "failed_actions": 0}
    world.reset(seed=5)
    assert world.render() == GridWorld(seed=5).render()
    world.reset(num_agents=5)
    assert world.sim_ids() == [f"agent_{i}" for i in range(1, 6)]
    assert world.render() == GridWorld(seed=5, num_agents=5).render()
    before = (world.render(), world.sim_ids())
    with pytest.raises(ConfigError, match="num_agents"):
        world.reset(seed=9, num_agents=0)
    assert (world.render(), world.sim_ids()) == before  # a refused reset changes nothing


@pytest.mark.parametrize("kwargs", [
    {"num_agents": 0}, {"num_agents": 27}, {"width": 3}, {"width": 65}, {"height": 3},
    {"height": 65}, {"view_radius": -1}, {"num_tasks": 0}, {"obstacle_ratio": -0.1},
    {"obstacle_ratio": 0.31}, {"width": 4, "height": 4, "num_tasks": 30},
    {"width": 4, "height": 4, "num_agents": 20},
])
def test_bad_constructor_arguments_are_one_line_config_errors(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as caught:
        GridWorld(**kwargs)
    assert "\n" not in str(caught.value) and str(caught.value)


@pytest.mark.parametrize(("num_agents", "tasks"), [(1, 3), (2, 4), (3, 6), (5, 10)])
def test_the_default_task_count_is_twice_the_agents_but_at_least_three(
        num_agents: int, tasks: int) -> None:
    world = GridWorld(num_agents=num_agents)
    assert [t["task_id"] for t in world.get_tasks()] == [f"task_{i}" for i in range(1, tasks + 1)]
    assert len(GridWorld(num_tasks=1).get_tasks()) == 1


@pytest.mark.parametrize("num_agents", [1, 2, 3, 4, 6])
def test_every_required_capability_is_held_and_the_pool_is_dealt_round_robin(
        num_agents: int) -> None:
    for seed in range(30):
        world = GridWorld(num_agents=num_agents, seed=seed)
        held = set()
        for index, agent in enumerate(world.sim_ids()):
            caps = world.get_agent_capabilities(agent)
            assert POOL[index % 3] in caps and 1 <= len(caps) <= 2 and caps == sorted(caps)
            held |= set(caps)
        tasks = world.get_tasks()
        assert {t["required_capability"] for t in tasks} <= held
        if num_agents >= 3:
            assert {t["kind"] for t in tasks} == {"inspect", "deliver", "survey"}
        starts = [world.position(a) for a in world.sim_ids()]
        assert len(set(starts)) == len(starts)
        for task in tasks:
            assert 3 <= task["priority"] <= 8
            assert len(task["location"]) == 2
            assert {"task_id", "kind", "required_capability", "description"} <= task.keys()


def test_some_deliver_cargo_starts_unidentified_with_no_inspect_task() -> None:
    for seed in range(20):
        world = GridWorld(seed=seed)
        tasks = world.get_tasks()
        inspected = {t["object"] for t in tasks if t["kind"] == "inspect"}
        objects = {o["name"]: o for o in everything(world, "agent_1")["objects"]}
        cargo = [t["object"] for t in tasks if t["kind"] == "deliver"]
        assert any(not objects[name]["identified"] for name in cargo)
        assert all(not objects[name]["identified"] for name in inspected)
        assert not inspected & set(cargo)
        for task in tasks:
            if task["kind"] == "deliver":
                assert task["description"] == f"Deliver {task['object']} to {task['zone']}"
                assert task["zone"] in {"zone_A", "zone_B"} and task["target"] != task["location"]


@pytest.mark.parametrize("seed", range(10))
def test_every_free_cell_is_reachable(seed: int) -> None:
    world = GridWorld(seed=seed, width=12, height=9, obstacle_ratio=0.3)
    rows = world.render().split("\n")
    assert len(rows) == 9 and {len(row) for row in rows} == {12}
    walls = [(x, y) for y, row in enumerate(rows) for x, ch in enumerate(row) if ch == "#"]
    free = [(x, y) for y, row in enumerate(rows) for x, ch in enumerate(row) if ch != "#"]
    assert 0 < len(walls) <= round(0.3 * 12 * 9) and connected(free)
    for cell in free:
        assert world.shortest_path_length(free[0], cell) >= abs(cell[0] - free[0][0]) + abs(
            cell[1] - free[0][1])
    with pytest.raises(InvalidWorldCall):
        world.shortest_path_length(free[0], walls[0])
    with pytest.raises(InvalidWorldCall):
        world.shortest_path_length(free[0], (12, 0))


def test_a_big_crowded_grid_is_connected_and_keeps_its_walls() -> None:
    # Random 30% walls on 64x64 nearly always wall off a cell: doors are knocked in instead.
    world = GridWorld(seed=1, width=64, height=64, obstacle_ratio=0.3, num_agents=26)
    free = free_cells(world)
    assert len(free) <= 64 * 64 * 0.75 and connected(free)
    assert connected(free_cells(GridWorld(seed=1, width=64, height=64, obstacle_ratio=0.1)))


@pytest.mark.parametrize("num_agents", [1, 2, 3, 5])
@pytest.mark.parametrize("seed", range(20))
def test_a_scripted_oracle_solves_every_world(num_agents: int, seed: int) -> None:
    world = GridWorld(num_agents=num_agents, seed=seed)
    helped = solve(world)
    assert world.evaluate()["tasks_completed"] == len(world.get_tasks())
    message, result = do(world, "agent_1", "DONE: all tasks finished")
    assert result["done"] and "all" in message
    outcome = world.evaluate()
    assert outcome["success"] is True and outcome["done"] is True
    assert outcome["failed_actions"] == helped and outcome["invalid_actions"] == 0
    assert outcome["steps"] == sum(outcome["steps_by_agent"].values())


# -- commands ---------------------------------------------------------------------------------


def test_move_steps_one_cell_and_is_blocked_by_edges_and_walls() -> None:
    world = GridWorld(seed=1, obstacle_ratio=0.0)
    walk(world, "agent_1", (0, 0))
    assert do(world, "agent_1", "MOVE north", FAIL)[0].endswith("blocked")
    do(world, "agent_1", "move W", FAIL)
    _, result = do(world, "agent_1", "  Move   s ")
    assert result["position"] == [0, 1]
    do(world, "agent_1", "MOVE east")
    assert world.position("agent_1") == (1, 1)
    do(world, "agent_1", "MOVE up", BAD)
    do(world, "agent_1", "MOVE", BAD)
    do(world, "agent_1", "MOVE n n", BAD)

    walled = GridWorld(seed=2, obstacle_ratio=0.3)
    rows = walled.render().split("\n")
    wall = next((x, y) for y, row in enumerate(rows) for x, ch in enumerate(row)
                if ch == "#" and 0 < x and rows[y][x - 1] != "#")
    walk(walled, "agent_1", (wall[0] - 1, wall[1]))
    assert "blocked" in do(walled, "agent_1", "MOVE east", FAIL)[0]
    assert walled.position("agent_1") == (wall[0] - 1, wall[1])
    do(walled, "agent_1", f"GOTO {wall[0]} {wall[1]}", BAD)


def test_goto_walks_the_shortest_path_and_rejects_bad_targets() -> None:
    world = GridWorld(seed=4, obstacle_ratio=0.2)
    rows = world.render().split("\n")
    far = max(((x, y) for y, row in enumerate(rows) for x, ch in enumerate(row) if ch != "#"),
              key=lambda cell: world.shortest_path_length(world.position("agent_2"), cell))
    walk(world, "agent_2", far)
    here = world.position("agent_2")
    assert "already at" in do(world, "agent_2", f"GOTO {here[0]} {here[1]}")[0]
    for args in ("8 0", "-1 2", "0 99", "a b", "1.5 2", "1", "1 2 3", ""):
        do(world, "agent_2", f"GOTO {args}", BAD)
    assert world.position("agent_2") == here


def test_scan_needs_vision_identifies_neighbours_and_completes_inspections() -> None:
    world = GridWorld(seed=0)
    blind = lacking(world, "vision")
    assert do(world, blind, "SCAN", BAD)[0] == f"{blind} has no vision capability"
    task = next(t for t in world.get_tasks() if t["kind"] == "inspect")
    seer = holder(world, "vision")
    walk(world, seer, task["location"])
    _, result = do(world, seer, "scan")
    assert task["task_id"] in result["completed_tasks"]
    assert world.task_status(task["task_id"]) == "complete"
    assert "nothing to identify" in do(world, seer, "SCAN", FAIL)[0]
    do(world, seer, "SCAN now", BAD)


def test_pick_waits_for_a_vision_agent_then_carries_and_delivers() -> None:
    world = GridWorld(seed=0)
    objects = {o["name"]: o for o in everything(world, "agent_1")["objects"]}
    task = next(t for t in world.get_tasks()
                if t["kind"] == "deliver" and not objects[t["object"]]["identified"])
    hand, seer = holder(world, "manipulation", without="vision"), holder(world, "vision")
    blind_hands = lacking(world, "manipulation")
    message, _ = do(world, blind_hands, "PLACE", BAD)
    assert message == f"{blind_hands} has no manipulation capability"
    do(world, hand, "PICK nothing_9", BAD)
    do(world, hand, "PICK", BAD)
    assert "not at" in do(world, hand, f"PICK {task['object']}", FAIL)[0]
    do(world, hand, "PLACE", FAIL)
    walk(world, hand, task["location"])
    message, _ = do(world, hand, f"PICK {task['object']}", FAIL)
    assert message == f"{task['object']} is unidentified: a vision agent must SCAN it first"
    walk(world, seer, task["location"])
    _, result = do(world, seer, "SCAN")
    assert result["completed_tasks"] == []  # cargo has no inspect task of its own
    _, result = do(world, hand, f"PICK {task['object'].upper()}")
    assert result["carrying"] == task["object"]
    # Carried cargo moves with its carrier and stays visible to it.
    do(world, hand, f"GOTO {task['target'][0]} {task['target'][1]}")
    seen = {o["name"]: o for o in world.observe(hand)["objects"]}
    assert seen[task["object"]] == {"name": task["object"], "identified": True,
                                    "position": list(world.position(hand)), "carried_by": hand}
    other = next(t for t in world.get_tasks()
                 if t["kind"] == "deliver" and t["object"] != task["object"])
    walk(world, hand, other["location"])
    assert "already carries" in do(world, hand, f"PICK {other['object']}", FAIL)[0]
    walk(world, hand, task["target"])
    _, result = do(world, hand, "PLACE")
    assert result["completed_tasks"] == [task["task_id"]] and result["carrying"] is None


def test_place_off_the_zone_completes_nothing_and_cargo_can_be_taken_by_another() -> None:
    world = GridWorld(num_agents=6, seed=2)
    first, second, *_ = [a for a in world.sim_ids()
                         if "manipulation" in world.get_agent_capabilities(a)]
    task = next(t for t in world.get_tasks() if t["kind"] == "deliver")
    seer = holder(world, "vision")
    walk(world, seer, task["location"])
    world.process_command(seer, "SCAN")  # identified already or now: either way it may be picked
    walk(world, first, task["location"])
    walk(world, second, task["location"])
    do(world, first, f"PICK {task['object']}")
    assert f"carried by {first}" in do(world, second, f"PICK {task['object']}", FAIL)[0]
    _, result = do(world, first, "PLACE")
    assert result["completed_tasks"] == [] and world.task_status(task["task_id"]) == "open"
    do(world, second, f"PICK {task['object']}")
    walk(world, second, task["target"])
    assert do(world, second, "PLACE")[1]["completed_tasks"] == [task["task_id"]]


def test_mark_surveys_the_waypoint_underfoot() -> None:
    world = GridWorld(seed=5)
    task = next(t for t in world.get_tasks() if t["kind"] == "survey")
    walker = holder(world, "navigation")
    grounded = lacking(world, "navigation")
    assert do(world, grounded, "MARK", BAD)[0] == f"{grounded} has no navigation capability"
    if world.position(walker) != tuple(task["location"]):
        assert "no waypoint" in do(world, walker, "MARK", FAIL)[0]
    walk(world, walker, task["location"])
    assert do(world, walker, "MARK")[1]["completed_tasks"] == [task["task_id"]]
    message, result = do(world, walker, "MARK")
    assert "already surveyed" in message and result["completed_tasks"] == []


@pytest.mark.parametrize("command", [
    "", "   ", "FLY", "WAIT 3", "PLACE here", "SCAN SCAN", "GOTO", "x" * 201, "WAIT" + " " * 200,
    "MOVE\nnorth\nnow", "\u2028"])
def test_junk_is_invalid_with_a_one_line_message(command: str) -> None:
    world = GridWorld(seed=0)
    agent = holder(world, "vision")  # SCAN is a real command for this one
    message, result = do(world, agent, command, BAD)
    assert message.splitlines() == [message]
    assert result["step"] == 1 and world.evaluate()["invalid_actions"] == 1


def test_unknown_commands_name_the_valid_ones() -> None:
    message, _ = do(GridWorld(), "agent_1", "dance wildly", BAD)
    assert "unknown command 'dance'" in message
    for word in ("MOVE", "GOTO", "SCAN", "PICK", "PLACE", "MARK", "WAIT", "DONE"):
        assert word in message


def test_wait_is_a_counted_step_and_results_have_one_shape() -> None:
    world = GridWorld(seed=0)
    _, result = do(world, "agent_2", " wait ")
    assert result == {"agent_id": "agent_2", "position": list(world.position("agent_2")),
                      "carrying": None, "completed_tasks": [], "done": False, "step": 1}
    do(world, "agent_1", "MOVE nowhere", BAD)
    walk(world, "agent_3", (0, 0))  # GOTO steps: counted, all successes
    do(world, "agent_3", "PLACE", FAIL)
    outcome = world.evaluate()
    walked = outcome["steps_by_agent"]["agent_3"] - 1
    assert outcome["steps_by_agent"] == {"agent_1": 1, "agent_2": 1, "agent_3": walked + 1}
    assert outcome["steps"] == walked + 3
    assert outcome["invalid_actions"] == 1 and outcome["failed_actions"] == 1


def test_done_with_open_tasks_fails_and_the_episode_stays_over() -> None:
    world = GridWorld(seed=0)
    message, result = do(world, "agent_3", "done", FAIL)
    assert message == "episode ended with 6 of 6 tasks incomplete" and result["done"]
    assert world.is_done()
    assert do(world, "agent_1", "DONE")[0] == "the episode is over"
    assert do(world, "agent_1", "WAIT", BAD)[0] == "the episode is over"
    assert do(world, "agent_2", "x" * 500, BAD)[0] == "the episode is over"
    outcome = world.evaluate()
    assert outcome["success"] is False and outcome["done"] is True
    assert outcome["steps"] == 1 and outcome["failed_actions"] == 1  # late commands not counted
    assert world.observe("agent_1")["done"] is True


def test_a_word_done_anywhere_ends_the_episode() -> None:
    world = GridWorld(seed=0)
    do(world, "agent_1", "I think we are DONE here", FAIL)
    assert world.is_done()
    other = GridWorld(seed=0)
    do(other, "agent_1", "ABANDONED", BAD)
    assert not other.is_done()


def test_unknown_agents_are_a_programming_error() -> None:
    world = GridWorld()
    for call in (lambda: world.process_command("agent_9", "WAIT"),
                 lambda: world.observe("nobody"), lambda: world.describe("agent_0"),
                 lambda: world.supported_actions(""), lambda: world.position("x"),
                 lambda: world.get_agent_capabilities("AGENT_1")):
        with pytest.raises(InvalidWorldCall, match="unknown agent"):
            call()
    with pytest.raises(InvalidWorldCall, match="unknown task"):
        world.task_status("task_99")


# -- views ------------------------------------------------------------------------------------


@pytest.mark.parametrize("radius", [0, 1, 2, 4])
def test_observe_sees_exactly_what_lies_within_the_view_radius(radius: int) -> None:
    world = GridWorld(num_agents=5, seed=8, view_radius=radius, width=10, height=10)
    for agent in world.sim_ids():
        view, full = world.observe(agent), everything(world, agent)
        me = view["position"]

        def near(position: list[int], me: list[int] = me) -> bool:
            return abs(position[0] - me[0]) + abs(position[1] - me[1]) <= radius

        for key in ("objects", "zones", "waypoints", "agents"):
            assert view[key] == [e for e in full[key] if near(e["position"])], key
        assert all(a["agent_id"] != agent for a in view["agents"])
        assert view["capabilities"] == world.get_agent_capabilities(agent)
        assert {t["task_id"] for t in view["tasks"]} <= {t["task_id"] for t in full["tasks"]}
        assert len(full["tasks"]) == len(world.get_tasks())
        for task in world.get_tasks():
            cells = [task["location"], task.get("target", task["location"])]
            if any(near(cell) for cell in cells):
                assert {"task_id": task["task_id"], "status": "open"} in view["tasks"]


def test_get_tasks_returns_copies() -> None:
    world = GridWorld(seed=0)
    tasks = world.get_tasks()
    tasks[0]["location"][0] = 99
    tasks[0]["priority"] = 0
    tasks.clear()
    again = world.get_tasks()
    assert again == GridWorld(seed=0).get_tasks() and again[0]["priority"] >= 3


def test_describe_and_supported_actions_speak_for_the_agent() -> None:
    world = GridWorld(seed=0)
    for agent in world.sim_ids():
        caps = world.get_agent_capabilities(agent)
        text = world.describe(agent)
        assert text.startswith(f"You are {agent} at ") and all(cap in text for cap in caps)
        actions = world.supported_actions(agent).split("\n")
        words = [line.split()[0].rstrip(":") for line in actions]
        expected = {"MOVE", "GOTO", "WAIT", "DONE"}
        expected |= {"SCAN"} if "vision" in caps else set()
        expected |= {"PICK", "PLACE"} if "manipulation" in caps else set()
        expected |= {"MARK"} if "navigation" in caps else set()
        assert set(words) == expected and len(words) == len(expected)
    summary = world.task_description()
    assert "\n" not in summary and "DONE" in summary
    assert all(t["task_id"] in summary and t["description"] in summary
               for t in world.get_tasks())


def test_render_marks_agents_and_features() -> None:
    world = GridWorld(seed=0, obstacle_ratio=0.0)
    picture = world.render()
    assert "#" not in picture
    for index, agent in enumerate(world.sim_ids(), start=1):
        x, y = world.position(agent)
        assert picture.split("\n")[y][x] == str(index)
    assert {"Z", "w", "o"} <= set(picture)


# -- robustness -------------------------------------------------------------------------------

COMMANDS = st.one_of(
    st.text(max_size=220),
    st.builds(lambda word, args: " ".join([word, *args]),
              st.sampled_from(["MOVE", "goto", "SCAN", "PICK", "place", "MARK", "WAIT",
                               "Done", "move", "GOTO"]),
              st.lists(st.one_of(st.sampled_from(["n", "east", "crate_1", "ball_2", "3", "-1",
                                                 "0"]), st.text(max_size=6)), max_size=3)))


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 2), COMMANDS), min_size=1, max_size=6))
def test_no_command_text_makes_the_world_raise(plays: list[tuple[int, str]]) -> None:
    world = GridWorld(seed=0)
    agents = world.sim_ids()
    for index, command in plays:
        status, message, result = world.process_command(agents[index], command)
        assert isinstance(status, ActionStatus)
        assert isinstance(message, str) and message and message.splitlines() == [message]
        assert result is not None and result["agent_id"] == agents[index]
    counted = world.evaluate()["steps"]
    assert counted <= len(plays) and sum(world.evaluate()["steps_by_agent"].values()) == counted


def test_threads_share_a_world_and_every_step_is_counted() -> None:
    world = GridWorld(seed=0)
    errors: list[BaseException] = []

    def play(agent: str) -> None:
        try:
            for i in range(500):
                world.process_command(agent, "WAIT" if i % 2 else "MOVE east")
                world.observe(agent)
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=play, args=(a,)) for a in ("agent_1", "agent_2")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors
    outcome = world.evaluate()
    assert outcome["steps"] == 1000
    assert outcome["steps_by_agent"] == {"agent_1": 500, "agent_2": 500, "agent_3": 0}
