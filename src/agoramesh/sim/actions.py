"""The commands agents send a grid world: parsing, capability checks and what each one does.

No command text makes the world raise: junk is an ``INVALID`` step with a
one-line message, and a command that cannot be carried out here is a
``FAILURE``, both counted.
"""

from __future__ import annotations

import re
from typing import Any

from agoramesh.sim.grid import Cell, fmt, manhattan
from agoramesh.sim.interface import ActionStatus, StepResult
from agoramesh.sim.state import Agent, TaskKind, WorldState

__all__ = ("process_command", "supported_actions")

_DIRECTIONS: dict[str, Cell] = {
    "north": (0, -1), "south": (0, 1), "east": (1, 0), "west": (-1, 0),
    "n": (0, -1), "s": (0, 1), "e": (1, 0), "w": (-1, 0)}
_MAX_COMMAND = 200
_ARITY = {"MOVE": 1, "GOTO": 2, "SCAN": 0, "PICK": 1, "PLACE": 0, "MARK": 0, "WAIT": 0}
_NEEDS = {"SCAN": "vision", "PICK": "manipulation", "PLACE": "manipulation", "MARK": "navigation"}
_ACTIONS = (  # what supported_actions lists, for the agents whose capabilities allow it
    ("MOVE", "MOVE <north|south|east|west>: step one cell (north is y-1)"),
    ("GOTO", "GOTO <x> <y>: one step along the shortest path to (x, y)"),
    ("SCAN", "SCAN: identify every object within 1 cell"),
    ("PICK", "PICK <object>: pick up an identified object on your cell"),
    ("PLACE", "PLACE: put down what you carry on your cell"),
    ("MARK", "MARK: survey the waypoint on your cell"),
    ("WAIT", "WAIT: do nothing this step"),
    ("DONE", "DONE: end the episode (when every task is complete)"))
_DONE_WORD = re.compile(r"\bDONE\b", re.IGNORECASE)
_VALID = "valid commands: MOVE <dir>, GOTO <x> <y>, SCAN, PICK <object>, PLACE, MARK, WAIT, DONE"


def supported_actions(agent: Agent) -> str:
    """One line per command ``agent``'s capabilities allow."""
    return "\n".join(line for word, line in _ACTIONS
                     if _NEEDS.get(word) in (None, *agent.capabilities))


def process_command(state: WorldState, sim_id: str, command: str) -> StepResult:
    """Carry out one step of ``sim_id``'s and count it, unless the episode is over."""
    agent = state.agent(sim_id)
    completed: list[str] = []
    if state.done:  # the episode's numbers are final: late commands are not counted
        if isinstance(command, str) and _DONE_WORD.search(command[:_MAX_COMMAND]):
            return ActionStatus.SUCCESS, "the episode is over", _result(state, agent, [])
        return ActionStatus.INVALID, "the episode is over", _result(state, agent, [])
    status, message = _dispatch(state, agent, command, completed)
    state.steps += 1
    state.steps_by_agent[sim_id] += 1
    state.invalid += status is ActionStatus.INVALID
    state.failed += status is ActionStatus.FAILURE
    return status, message, _result(state, agent, completed)


def _result(state: WorldState, agent: Agent, completed: list[str]) -> dict[str, Any]:
    return {"agent_id": agent.sim_id, "position": list(agent.position),
            "carrying": agent.carrying, "completed_tasks": completed,
            "done": state.done, "step": state.steps}


def _dispatch(state: WorldState, agent: Agent, command: str,
              completed: list[str]) -> tuple[ActionStatus, str]:
    if not isinstance(command, str) or len(command) > _MAX_COMMAND:
        return ActionStatus.INVALID, f"commands are at most {_MAX_COMMAND} characters"
    if _DONE_WORD.search(command):
        return _end_episode(state)
    parts = command.split()
    if not parts:
        return ActionStatus.INVALID, f"empty command; {_VALID}"
    word, args = parts[0].upper(), parts[1:]
    if word not in _ARITY:
        return ActionStatus.INVALID, f"unknown command {parts[0]!r:.40}; {_VALID}"
    needs = _NEEDS.get(word)
    if needs is not None and needs not in agent.capabilities:
        return ActionStatus.INVALID, f"{agent.sim_id} has no {needs} capability"
    if len(args) != _ARITY[word]:
        return ActionStatus.INVALID, (
            f"{word} takes {_ARITY[word]} argument{'' if _ARITY[word] == 1 else 's'}, "
            f"got {len(args)}; {_VALID}")
    if word == "WAIT":
        return ActionStatus.SUCCESS, f"{agent.sim_id} waits at {fmt(agent.position)}"
    if word == "MOVE":
        return _move(state, agent, args[0])
    if word == "GOTO":
        return _goto(state, agent, args[0], args[1])
    if word == "PICK":
        return _pick(state, agent, args[0])
    handler = {"SCAN": _scan, "PLACE": _place, "MARK": _mark}[word]
    return handler(state, agent, completed)


def _end_episode(state: WorldState) -> tuple[ActionStatus, str]:
    state.done = True
    open_tasks = sum(not t.complete for t in state.tasks)
    if open_tasks:
        return ActionStatus.FAILURE, (f"episode ended with {open_tasks} of "
                                      f"{len(state.tasks)} tasks incomplete")
    return ActionStatus.SUCCESS, f"episode ended with all {len(state.tasks)} tasks complete"


def _step_to(state: WorldState, agent: Agent, cell: Cell) -> None:
    agent.position = cell
    if agent.carrying is not None:
        state.objects[agent.carrying].position = cell


def _move(state: WorldState, agent: Agent, direction: str) -> tuple[ActionStatus, str]:
    delta = _DIRECTIONS.get(direction.lower())
    if delta is None:
        return ActionStatus.INVALID, (f"unknown direction {direction!r:.20}; use north, "
                                      "south, east, west (or n, s, e, w)")
    x, y = agent.position
    target = (x + delta[0], y + delta[1])
    if not state.grid.is_open(target):
        return ActionStatus.FAILURE, (f"{agent.sim_id} cannot move {direction.lower()} "
                                      f"from {fmt(agent.position)}: blocked")
    _step_to(state, agent, target)
    return ActionStatus.SUCCESS, f"{agent.sim_id} moved to {fmt(target)}"


def _goto(state: WorldState, agent: Agent, x_text: str,
          y_text: str) -> tuple[ActionStatus, str]:
    try:
        goal = (int(x_text), int(y_text))
    except ValueError:
        return ActionStatus.INVALID, f"GOTO needs integers, got {x_text!r:.20} {y_text!r:.20}"
    if not state.grid.is_open(goal):
        return ActionStatus.INVALID, f"{fmt(goal)} is a wall or outside the grid"
    if goal == agent.position:
        return ActionStatus.SUCCESS, f"{agent.sim_id} is already at {fmt(goal)}"
    path = state.grid.path(agent.position, goal)
    _step_to(state, agent, path[1])
    return ActionStatus.SUCCESS, (f"{agent.sim_id} moved to {fmt(path[1])}, "
                                  f"{len(path) - 2} steps from {fmt(goal)}")


def _complete(state: WorldState, kind: TaskKind, completed: list[str], *,
              name: str | None = None, waypoint: str | None = None,
              cell: Cell | None = None) -> None:
    for task in state.tasks:
        if (not task.complete and task.kind == kind and task.object == name
                and task.waypoint == waypoint and (kind != "deliver" or task.target == cell)):
            task.complete = True
            completed.append(task.task_id)


def _scan(state: WorldState, agent: Agent, completed: list[str]) -> tuple[ActionStatus, str]:
    found = [o for o in state.objects.values()
             if not o.identified and manhattan(o.position, agent.position) <= 1]
    if not found:
        return ActionStatus.FAILURE, f"nothing to identify next to {fmt(agent.position)}"
    for obj in found:
        obj.identified = True
        _complete(state, "inspect", completed, name=obj.name)
    names = ", ".join(o.name for o in found)
    return ActionStatus.SUCCESS, f"{agent.sim_id} identified {names}{_note(completed)}"


def _pick(state: WorldState, agent: Agent, name: str) -> tuple[ActionStatus, str]:
    obj = state.objects.get(name.lower())
    if obj is None:
        return ActionStatus.INVALID, (f"no object named {name!r:.30}; objects are "
                                      f"{', '.join(state.objects) or 'none'}")
    if agent.carrying is not None:
        return ActionStatus.FAILURE, f"{agent.sim_id} already carries {agent.carrying}"
    if obj.carried_by is not None:
        return ActionStatus.FAILURE, f"{obj.name} is carried by {obj.carried_by}"
    if obj.position != agent.position:
        return ActionStatus.FAILURE, (f"{obj.name} is at {fmt(obj.position)}, not at "
                                      f"{fmt(agent.position)}")
    if not obj.identified:
        return ActionStatus.FAILURE, (f"{obj.name} is unidentified: a vision agent must "
                                      "SCAN it first")
    obj.carried_by, agent.carrying = agent.sim_id, obj.name
    return ActionStatus.SUCCESS, f"{agent.sim_id} picked up {obj.name}"


def _place(state: WorldState, agent: Agent, completed: list[str]) -> tuple[ActionStatus, str]:
    if agent.carrying is None:
        return ActionStatus.FAILURE, f"{agent.sim_id} carries nothing"
    obj = state.objects[agent.carrying]
    obj.carried_by, agent.carrying = None, None
    _complete(state, "deliver", completed, name=obj.name, cell=agent.position)
    return ActionStatus.SUCCESS, (f"{agent.sim_id} placed {obj.name} at "
                                  f"{fmt(agent.position)}{_note(completed)}")


def _mark(state: WorldState, agent: Agent, completed: list[str]) -> tuple[ActionStatus, str]:
    here = [name for name, cell in state.waypoints.items() if cell == agent.position]
    if not here:
        return ActionStatus.FAILURE, f"no waypoint at {fmt(agent.position)}"
    _complete(state, "survey", completed, waypoint=here[0])
    if not completed:
        return ActionStatus.SUCCESS, f"{here[0]} was already surveyed"
    return ActionStatus.SUCCESS, f"{agent.sim_id} surveyed {here[0]}{_note(completed)}"


def _note(completed: list[str]) -> str:
    return f"; {', '.join(completed)} complete" if completed else ""
