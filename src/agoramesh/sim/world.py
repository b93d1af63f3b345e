"""The built-in simulator: a small deterministic grid world of tasks that need different skills.

Each agent holds one or two of three capabilities (navigation, vision,
manipulation) and each task needs one of them, so no agent can do everything:

``inspect``  (vision)        SCAN next to an object until it is identified.
``deliver``  (manipulation)  PICK an object, carry it to a zone, PLACE it there.
``survey``   (navigation)    MARK on a waypoint's cell.

Some deliver objects start unidentified with no inspect task of their own: a
manipulation agent cannot PICK them until a vision agent has SCANned them, so
the agents have to ask each other for help. Everything is generated from
``random.Random(seed)``; the same arguments always give the same world, every
free cell is reachable, and every task's capability is held by some agent, so
every world is solvable (the tests walk a scripted oracle through 40 of them).
"""

from __future__ import annotations

import random
import re
import threading
from collections import deque
from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from agoramesh.errors import InvalidInput
from agoramesh.sim.interface import ActionStatus, StepResult

__all__ = ("GridWorld",)

Cell = tuple[int, int]
TaskKind = Literal["inspect", "deliver", "survey"]

_CAPABILITIES = ("navigation", "vision", "manipulation")
_KIND_CAPABILITY: dict[TaskKind, str] = {
    "inspect": "vision", "deliver": "manipulation", "survey": "navigation"}
_OBJECT_KINDS = ("crate", "ball", "box")
_DIRECTIONS: dict[str, Cell] = {
    "north": (0, -1), "south": (0, 1), "east": (1, 0), "west": (-1, 0),
    "n": (0, -1), "s": (0, 1), "e": (1, 0), "w": (-1, 0)}
# BFS expands neighbours in this fixed order, so GOTO's path is deterministic too.
_STEPS: tuple[Cell, ...] = ((0, -1), (1, 0), (0, 1), (-1, 0))
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
_EXTRA_CAPABILITY_CHANCE = 0.35
_WALL_ATTEMPTS = 20


def _manhattan(a: Cell, b: Cell) -> int:
    return abs(a[0] - b[0]) + abs(a[1] - b[1])


def _fmt(cell: Cell) -> str:
    return f"({cell[0]}, {cell[1]})"


@dataclass
class _Agent:
    agent_id: str
    capabilities: frozenset[str]
    position: Cell
    carrying: str | None = None


@dataclass
class _Object:
    name: str
    position: Cell  # kept in step with the carrier while carried
    identified: bool
    carried_by: str | None = None


@dataclass
class _Task:
    task_id: str
    kind: TaskKind
    priority: int
    description: str
    location: Cell
    object: str | None = None
    zone: str | None = None
    target: Cell | None = None
    waypoint: str | None = None
    complete: bool = False

    def as_dict(self) -> dict[str, Any]:
        # Built afresh on every call: callers get copies they may mutate freely.
        data: dict[str, Any] = {
            "task_id": self.task_id, "kind": self.kind,
            "required_capability": _KIND_CAPABILITY[self.kind], "priority": self.priority,
            "description": self.description, "location": list(self.location)}
        extras = {"object": self.object, "zone": self.zone, "waypoint": self.waypoint,
                  "target": None if self.target is None else list(self.target)}
        return data | {key: value for key, value in extras.items() if value is not None}


class GridWorld:
    """A seeded grid world that satisfies :class:`~agoramesh.sim.interface.SimulationEngine`.

    Coordinates are ``(x, y)`` with ``(0, 0)`` top left; north is ``y - 1``.
    Every public method holds one re-entrant lock, so agents on several threads
    may share a world.
    """

    def __init__(self, *, num_agents: int = 3, seed: int = 0, width: int = 8, height: int = 8,
                 view_radius: int = 2, num_tasks: int | None = None,
                 obstacle_ratio: float = 0.1) -> None:
        if not 4 <= width <= 64 or not 4 <= height <= 64:
            raise InvalidInput(f"width and height must be 4..64, got {width}x{height}")
        if view_radius < 0:
            raise InvalidInput(f"view_radius must be >= 0, got {view_radius}")
        if num_tasks is not None and num_tasks < 1:
            raise InvalidInput(f"num_tasks must be >= 1 or None, got {num_tasks}")
        if not 0.0 <= obstacle_ratio <= 0.3:
            raise InvalidInput(f"obstacle_ratio must be 0..0.3, got {obstacle_ratio}")
        self.width, self.height = width, height
        self.view_radius, self.obstacle_ratio = view_radius, obstacle_ratio
        self._requested_tasks = num_tasks
        self._lock = threading.RLock()
        self._generate(seed, num_agents)

    # -- generation ---------------------------------------------------------------------------

    def reset(self, seed: int | None = None, num_agents: int | None = None) -> None:
        """Regenerate the world (same seed and agents unless given) and clear every counter."""
        with self._lock:
            self._generate(self._seed if seed is None else seed,
                           len(self._agents) if num_agents is None else num_agents)

    def _generate(self, seed: int, n: int) -> None:
        if not 1 <= n <= 26:
            raise InvalidInput(f"num_agents must be 1..26, got {n}")
        num_tasks = self._requested_tasks or max(3, 2 * n)
        area = self.width * self.height
        free_cells = area - round(self.obstacle_ratio * area)  # walls only ever get fewer
        if n > free_cells or num_tasks + 2 > free_cells:
            raise InvalidInput(f"{n} agents and {num_tasks} tasks do not fit a "
                               f"{self.width}x{self.height} grid with {free_cells} free cells")
        self._seed, rng = seed, random.Random(seed)  # validated first: a bad reset changes nothing
        caps: list[frozenset[str]] = []
        for i in range(n):
            own = {_CAPABILITIES[i % len(_CAPABILITIES)]}
            if rng.random() < _EXTRA_CAPABILITY_CHANCE:
                own.add(rng.choice([c for c in _CAPABILITIES if c not in own]))
            caps.append(frozenset(own))
        held = frozenset().union(*caps)
        self._walls = self._make_walls(rng)
        free = [(x, y) for y in range(self.height) for x in range(self.width)
                if (x, y) not in self._walls]
        starts = rng.sample(free, n)
        self._agents = {f"agent_{i + 1}": _Agent(f"agent_{i + 1}", caps[i], starts[i])
                        for i in range(n)}
        spots = rng.sample(free, len(free))  # features take distinct cells, in this order
        self._zones = {f"zone_{chr(ord('A') + i)}": spots.pop() for i in range(rng.randint(1, 2))}
        self._objects: dict[str, _Object] = {}
        self._waypoints: dict[str, Cell] = {}
        self._tasks = [self._make_task(f"task_{i + 1}", kind, rng, spots)
                       for i, kind in enumerate(self._task_kinds(num_tasks, held, rng))]
        delivers = [t for t in self._tasks if t.kind == "deliver" and t.object is not None]
        if "vision" in held and delivers:
            # Unidentified cargo is what makes a manipulation agent ask a vision agent for help.
            for task in delivers:
                if rng.random() < 1 / 3:
                    self._objects[str(task.object)].identified = False
            if num_tasks >= 3 and all(self._objects[str(t.object)].identified for t in delivers):
                self._objects[str(delivers[0].object)].identified = False
        self._done = False
        self._steps = self._invalid = self._failed = 0
        self._steps_by_agent = dict.fromkeys(self._agents, 0)

    def _make_walls(self, rng: random.Random) -> frozenset[Cell]:
        cells = [(x, y) for y in range(self.height) for x in range(self.width)]
        walls = frozenset[Cell]()
        for _ in range(_WALL_ATTEMPTS):
            walls = frozenset(rng.sample(cells, round(self.obstacle_ratio * len(cells))))
            if self._split(walls) is None:
                return walls
        # Big crowded grids are almost never connected by chance: knock doors into the last
        # layout instead, which keeps the wall count close to the ratio asked for.
        while (split := self._split(walls)) is not None:
            walls -= self._tunnel(*split)
        return walls

    def _split(self, walls: frozenset[Cell]) -> tuple[Cell, dict[Cell, Cell]] | None:
        """A free cell that the first free cell cannot reach, and what it does reach."""
        free = [(x, y) for y in range(self.height) for x in range(self.width)
                if (x, y) not in walls]
        reached = self._distances(free[0], walls)
        return next(((cell, reached) for cell in free if cell not in reached), None)

    def _tunnel(self, start: Cell, reached: dict[Cell, Cell]) -> set[Cell]:
        """The cells of a shortest route from ``start`` into ``reached``, walls ignored."""
        came_from = self._distances(start, frozenset(), until=reached)
        cell = next(c for c in came_from if c in reached)
        route = set()
        while cell != start:
            route.add(cell)
            cell = came_from[cell]
        return route

    def _task_kinds(self, count: int, held: frozenset[str],
                    rng: random.Random) -> list[TaskKind]:
        kinds: list[TaskKind] = [k for k in ("inspect", "deliver", "survey")
                                 if _KIND_CAPABILITY[k] in held]
        if count < len(kinds):
            return rng.sample(kinds, count)
        chosen = kinds + [rng.choice(kinds) for _ in range(count - len(kinds))]
        rng.shuffle(chosen)
        return chosen

    def _make_task(self, task_id: str, kind: TaskKind, rng: random.Random,
                   spots: list[Cell]) -> _Task:
        priority = rng.randint(3, 8)
        cell = spots.pop()
        if kind == "survey":
            name = f"wp_{len(self._waypoints) + 1}"
            self._waypoints[name] = cell
            return _Task(task_id, kind, priority, f"Survey {name}", cell, waypoint=name)
        name = f"{rng.choice(_OBJECT_KINDS)}_{len(self._objects) + 1}"
        self._objects[name] = _Object(name, cell, identified=kind == "deliver")
        if kind == "inspect":
            return _Task(task_id, kind, priority, f"Inspect {name}", cell, object=name)
        zone = rng.choice(sorted(self._zones))
        return _Task(task_id, kind, priority, f"Deliver {name} to {zone}", cell,
                     object=name, zone=zone, target=self._zones[zone])

    # -- geometry -----------------------------------------------------------------------------

    def _open(self, cell: Cell, walls: frozenset[Cell] | None = None) -> bool:
        x, y = cell
        return 0 <= x < self.width and 0 <= y < self.height and cell not in (
            self._walls if walls is None else walls)

    def _distances(self, start: Cell, walls: frozenset[Cell] | None = None,
                   until: Container[Cell] = ()) -> dict[Cell, Cell]:
        """BFS from ``start``: each reachable cell mapped to the cell it was reached from;
        it stops early once it expands a cell in ``until``."""
        came_from = {start: start}
        queue = deque([start])
        while queue:
            x, y = queue.popleft()
            if (x, y) in until:
                break
            for dx, dy in _STEPS:
                nxt = (x + dx, y + dy)
                if nxt not in came_from and self._open(nxt, walls):
                    came_from[nxt] = (x, y)
                    queue.append(nxt)
        return came_from

    def _path(self, start: Cell, goal: Cell) -> list[Cell]:
        came_from = self._distances(goal)  # from the goal, so parents lead from start to it
        path = [start]
        while path[-1] != goal:
            path.append(came_from[path[-1]])
        return path

    def shortest_path_length(self, start: Sequence[int], goal: Sequence[int]) -> int:
        """Steps on the shortest walk around walls, for agents estimating how long a task takes."""
        with self._lock:
            a, b = self._cell(start), self._cell(goal)
            return len(self._path(a, b)) - 1

    def _cell(self, value: Sequence[int]) -> Cell:
        cell = (int(value[0]), int(value[1])) if len(value) == 2 else None
        if cell is None or not self._open(cell):
            raise InvalidInput(f"{list(value)!r:.60} is not a free cell of the "
                               f"{self.width}x{self.height} grid")
        return cell

    # -- read-only views ----------------------------------------------------------------------

    def _agent(self, agent_id: str) -> _Agent:
        agent = self._agents.get(agent_id)
        if agent is None:
            raise InvalidInput(f"unknown agent {agent_id!r:.40}; agents are "
                               f"{', '.join(self._agents)}")
        return agent

    def agent_ids(self) -> list[str]:
        with self._lock:
            return list(self._agents)

    def get_agent_capabilities(self, agent_id: str) -> list[str]:
        with self._lock:
            return sorted(self._agent(agent_id).capabilities)

    def position(self, agent_id: str) -> tuple[int, int]:
        with self._lock:
            return self._agent(agent_id).position

    def get_tasks(self) -> list[dict[str, Any]]:
        with self._lock:
            return [task.as_dict() for task in self._tasks]

    def task_status(self, task_id: str) -> str:
        """``"complete"`` or ``"open"``; an unknown task id is an :class:`InvalidInput`."""
        with self._lock:
            for task in self._tasks:
                if task.task_id == task_id:
                    return "complete" if task.complete else "open"
            raise InvalidInput(f"unknown task {task_id!r:.40}")

    def is_done(self) -> bool:
        with self._lock:
            return self._done

    def task_description(self) -> str:
        with self._lock:
            listed = "; ".join(
                f"{t.task_id} {t.description} ("
                f"{'at ' if t.target is None else 'from '}{_fmt(t.location)}"
                f"{'' if t.target is None else ' to ' + _fmt(t.target)}, "
                f"needs {_KIND_CAPABILITY[t.kind]})" for t in self._tasks)
            return (f"The team ({', '.join(self._agents)}) shares a grid world of "
                    f"{self.width}x{self.height} cells and must complete all "
                    f"{len(self._tasks)} tasks: {listed}. "
                    "Objects must be identified by a vision agent (SCAN) before anyone can "
                    "PICK them. When every task is complete, one agent says DONE.")

    def evaluate(self) -> dict[str, Any]:
        with self._lock:
            completed = [t.task_id for t in self._tasks if t.complete]
            return {
                "success": self._done and len(completed) == len(self._tasks),
                "done": self._done, "tasks_total": len(self._tasks),
                "tasks_completed": len(completed), "completed": completed,
                "steps": self._steps, "steps_by_agent": dict(self._steps_by_agent),
                "invalid_actions": self._invalid, "failed_actions": self._failed}

    def observe(self, agent_id: str) -> dict[str, Any]:
        with self._lock:
            agent = self._agent(agent_id)

            def seen(cells: Iterable[Cell | None]) -> bool:
                return any(c is not None and _manhattan(c, agent.position) <= self.view_radius
                           for c in cells)

            return {
                "agent_id": agent_id, "position": list(agent.position),
                "capabilities": sorted(agent.capabilities), "carrying": agent.carrying,
                "step": self._steps, "done": self._done,
                "objects": [{"name": o.name, "position": list(o.position),
                             "identified": o.identified, "carried_by": o.carried_by}
                            for o in self._objects.values()
                            if o.carried_by == agent_id or seen([o.position])],
                "zones": [{"name": n, "position": list(c)}
                          for n, c in self._zones.items() if seen([c])],
                "waypoints": [{"name": n, "position": list(c)}
                              for n, c in self._waypoints.items() if seen([c])],
                "agents": [{"agent_id": a.agent_id, "position": list(a.position)}
                           for a in self._agents.values()
                           if a.agent_id != agent_id and seen([a.position])],
                "tasks": [{"task_id": t.task_id, "status": "complete" if t.complete else "open"}
                          for t in self._tasks if seen([t.location, t.target, self._object_at(t)])]}

    def _object_at(self, task: _Task) -> Cell | None:
        return None if task.object is None else self._objects[task.object].position

    def describe(self, agent_id: str) -> str:
        with self._lock:
            view = self.observe(agent_id)
            things = [f"{o['name']} at {_fmt(o['position'])} "
                      f"({'identified' if o['identified'] else 'unidentified'}"
                      f"{', carried by ' + o['carried_by'] if o['carried_by'] else ''})"
                      for o in view["objects"]]
            things += [f"{z['name']} at {_fmt(z['position'])}" for z in view["zones"]]
            things += [f"waypoint {w['name']} at {_fmt(w['position'])}"
                       for w in view["waypoints"]]
            things += [f"{a['agent_id']} at {_fmt(a['position'])}" for a in view["agents"]]
            tasks = [f"{t['task_id']} ({t['status']})" for t in view["tasks"]]
            done = sum(t.complete for t in self._tasks)
            return "\n".join([
                f"You are {agent_id} at {_fmt(view['position'])} with capabilities: "
                f"{', '.join(view['capabilities'])}.",
                f"You carry {view['carrying'] or 'nothing'}. Step {view['step']}; "
                f"{done} of {len(self._tasks)} tasks complete"
                f"{'; the episode is over' if view['done'] else ''}.",
                f"Within {self.view_radius} cells you see: {'; '.join(things) or 'nothing'}.",
                f"Tasks in view: {', '.join(tasks) or 'none'}."])

    def supported_actions(self, agent_id: str) -> str:
        with self._lock:
            caps = self._agent(agent_id).capabilities
            return "\n".join(line for word, line in _ACTIONS
                             if _NEEDS.get(word) in (None, *caps))

    def render(self) -> str:
        """An ASCII map: ``#`` wall, ``.`` free, ``1``-``9`` agents (``@`` beyond), ``o``
        object, ``Z`` zone, ``w`` waypoint; the first that applies to a cell wins."""
        with self._lock:
            marks: dict[Cell, str] = {c: "w" for c in self._waypoints.values()}
            marks.update({c: "Z" for c in self._zones.values()})
            marks.update({o.position: "o" for o in self._objects.values()})
            for index, agent in enumerate(self._agents.values(), start=1):
                marks[agent.position] = str(index) if index <= 9 else "@"
            return "\n".join(
                "".join("#" if (x, y) in self._walls else marks.get((x, y), ".")
                        for x in range(self.width)) for y in range(self.height))

    # -- commands -----------------------------------------------------------------------------

    def process_command(self, agent_id: str, command: str) -> StepResult:
        with self._lock:
            agent = self._agent(agent_id)
            completed: list[str] = []
            if self._done:  # the episode's numbers are final: late commands are not counted
                if isinstance(command, str) and _DONE_WORD.search(command[:_MAX_COMMAND]):
                    return ActionStatus.SUCCESS, "the episode is over", self._result(agent, [])
                return ActionStatus.INVALID, "the episode is over", self._result(agent, [])
            status, message = self._dispatch(agent, command, completed)
            self._steps += 1
            self._steps_by_agent[agent_id] += 1
            self._invalid += status is ActionStatus.INVALID
            self._failed += status is ActionStatus.FAILURE
            return status, message, self._result(agent, completed)

    def _result(self, agent: _Agent, completed: list[str]) -> dict[str, Any]:
        return {"agent_id": agent.agent_id, "position": list(agent.position),
                "carrying": agent.carrying, "completed_tasks": completed,
                "done": self._done, "step": self._steps}

    def _dispatch(self, agent: _Agent, command: str,
                  completed: list[str]) -> tuple[ActionStatus, str]:
        if not isinstance(command, str) or len(command) > _MAX_COMMAND:
            return ActionStatus.INVALID, f"commands are at most {_MAX_COMMAND} characters"
        if _DONE_WORD.search(command):
            return self._end_episode()
        parts = command.split()
        if not parts:
            return ActionStatus.INVALID, f"empty command; {_VALID}"
        word, args = parts[0].upper(), parts[1:]
        if word not in _ARITY:
            return ActionStatus.INVALID, f"unknown command {parts[0]!r:.40}; {_VALID}"
        needs = _NEEDS.get(word)
        if needs is not None and needs not in agent.capabilities:
            return ActionStatus.INVALID, f"{agent.agent_id} has no {needs} capability"
        if len(args) != _ARITY[word]:
            return ActionStatus.INVALID, (
                f"{word} takes {_ARITY[word]} argument{'' if _ARITY[word] == 1 else 's'}, "
                f"got {len(args)}; {_VALID}")
        if word == "WAIT":
            return ActionStatus.SUCCESS, f"{agent.agent_id} waits at {_fmt(agent.position)}"
        if word == "MOVE":
            return self._move(agent, args[0])
        if word == "GOTO":
            return self._goto(agent, args[0], args[1])
        if word == "PICK":
            return self._pick(agent, args[0])
        handler = {"SCAN": self._scan, "PLACE": self._place, "MARK": self._mark}[word]
        return handler(agent, completed)

    def _end_episode(self) -> tuple[ActionStatus, str]:
        self._done = True
        open_tasks = sum(not t.complete for t in self._tasks)
        if open_tasks:
            return ActionStatus.FAILURE, (f"episode ended with {open_tasks} of "
                                          f"{len(self._tasks)} tasks incomplete")
        return ActionStatus.SUCCESS, f"episode ended with all {len(self._tasks)} tasks complete"

    def _step_to(self, agent: _Agent, cell: Cell) -> None:
        agent.position = cell
        if agent.carrying is not None:
            self._objects[agent.carrying].position = cell

    def _move(self, agent: _Agent, direction: str) -> tuple[ActionStatus, str]:
        delta = _DIRECTIONS.get(direction.lower())
        if delta is None:
            return ActionStatus.INVALID, (f"unknown direction {direction!r:.20}; use north, "
                                          "south, east, west (or n, s, e, w)")
        x, y = agent.position
        target = (x + delta[0], y + delta[1])
        if not self._open(target):
            return ActionStatus.FAILURE, (f"{agent.agent_id} cannot move {direction.lower()} "
                                          f"from {_fmt(agent.position)}: blocked")
        self._step_to(agent, target)
        return ActionStatus.SUCCESS, f"{agent.agent_id} moved to {_fmt(target)}"

    def _goto(self, agent: _Agent, x_text: str, y_text: str) -> tuple[ActionStatus, str]:
        try:
            goal = (int(x_text), int(y_text))
        except ValueError:
            return ActionStatus.INVALID, f"GOTO needs integers, got {x_text!r:.20} {y_text!r:.20}"
        if not self._open(goal):
            return ActionStatus.INVALID, f"{_fmt(goal)} is a wall or outside the grid"
        if goal == agent.position:
            return ActionStatus.SUCCESS, f"{agent.agent_id} is already at {_fmt(goal)}"
        path = self._path(agent.position, goal)
        self._step_to(agent, path[1])
        return ActionStatus.SUCCESS, (f"{agent.agent_id} moved to {_fmt(path[1])}, "
                                      f"{len(path) - 2} steps from {_fmt(goal)}")

    def _complete(self, kind: TaskKind, completed: list[str], *, name: str | None = None,
                  waypoint: str | None = None, cell: Cell | None = None) -> None:
        for task in self._tasks:
            if (not task.complete and task.kind == kind and task.object == name
                    and task.waypoint == waypoint and (kind != "deliver" or task.target == cell)):
                task.complete = True
                completed.append(task.task_id)

    def _scan(self, agent: _Agent, completed: list[str]) -> tuple[ActionStatus, str]:
        found = [o for o in self._objects.values()
                 if not o.identified and _manhattan(o.position, agent.position) <= 1]
        if not found:
            return ActionStatus.FAILURE, f"nothing to identify next to {_fmt(agent.position)}"
        for obj in found:
            obj.identified = True
            self._complete("inspect", completed, name=obj.name)
        names = ", ".join(o.name for o in found)
        return ActionStatus.SUCCESS, f"{agent.agent_id} identified {names}{self._note(completed)}"

    def _pick(self, agent: _Agent, name: str) -> tuple[ActionStatus, str]:
        obj = self._objects.get(name.lower())
        if obj is None:
            return ActionStatus.INVALID, (f"no object named {name!r:.30}; objects are "
                                          f"{', '.join(self._objects) or 'none'}")
        if agent.carrying is not None:
            return ActionStatus.FAILURE, f"{agent.agent_id} already carries {agent.carrying}"
        if obj.carried_by is not None:
            return ActionStatus.FAILURE, f"{obj.name} is carried by {obj.carried_by}"
        if obj.position != agent.position:
            return ActionStatus.FAILURE, (f"{obj.name} is at {_fmt(obj.position)}, not at "
                                          f"{_fmt(agent.position)}")
        if not obj.identified:
            return ActionStatus.FAILURE, (f"{obj.name} is unidentified: a vision agent must "
                                          "SCAN it first")
        obj.carried_by, agent.carrying = agent.agent_id, obj.name
        return ActionStatus.SUCCESS, f"{agent.agent_id} picked up {obj.name}"

    def _place(self, agent: _Agent, completed: list[str]) -> tuple[ActionStatus, str]:
        if agent.carrying is None:
            return ActionStatus.FAILURE, f"{agent.agent_id} carries nothing"
        obj = self._objects[agent.carrying]
        obj.carried_by, agent.carrying = None, None
        self._complete("deliver", completed, name=obj.name, cell=agent.position)
        return ActionStatus.SUCCESS, (f"{agent.agent_id} placed {obj.name} at "
                                      f"{_fmt(agent.position)}{self._note(completed)}")

    def _mark(self, agent: _Agent, completed: list[str]) -> tuple[ActionStatus, str]:
        here = [name for name, cell in self._waypoints.items() if cell == agent.position]
        if not here:
            return ActionStatus.FAILURE, f"no waypoint at {_fmt(agent.position)}"
        self._complete("survey", completed, waypoint=here[0])
        if not completed:
            return ActionStatus.SUCCESS, f"{here[0]} was already surveyed"
        return ActionStatus.SUCCESS, f"{agent.agent_id} surveyed {here[0]}{self._note(completed)}"

    @staticmethod
    def _note(completed: list[str]) -> str:
        return f"; {', '.join(completed)} complete" if completed else ""
