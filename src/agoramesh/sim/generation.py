"""A world drawn from ``random.Random(seed)``: the same arguments always give the same world.

Capabilities are dealt round robin (with a chance of a second one), tasks only
ask for capabilities some agent holds, and some deliver cargo starts
unidentified, so a manipulation agent needs a vision agent's help.
"""

from __future__ import annotations

import random

from agoramesh.errors import ConfigError
from agoramesh.sim.grid import Cell, Grid, make_walls
from agoramesh.sim.state import KIND_CAPABILITY, Agent, Item, Task, TaskKind, WorldState

__all__ = ("generate",)

_CAPABILITIES = ("navigation", "vision", "manipulation")
_OBJECT_KINDS = ("crate", "ball", "box")
_EXTRA_CAPABILITY_CHANCE = 0.35


def generate(*, width: int, height: int, obstacle_ratio: float, num_tasks: int | None,
             seed: int, num_agents: int) -> WorldState:
    """A fresh world; ``num_tasks`` None means twice the agents, at least three."""
    n = num_agents
    if not 1 <= n <= 26:
        raise ConfigError(f"num_agents must be 1..26, got {n}")
    task_count = num_tasks or max(3, 2 * n)
    area = width * height
    free_cells = area - round(obstacle_ratio * area)  # walls only ever get fewer
    if n > free_cells or task_count + 2 > free_cells:
        raise ConfigError(f"{n} agents and {task_count} tasks do not fit a "
                          f"{width}x{height} grid with {free_cells} free cells")
    rng = random.Random(seed)
    caps: list[frozenset[str]] = []
    for i in range(n):
        own = {_CAPABILITIES[i % len(_CAPABILITIES)]}
        if rng.random() < _EXTRA_CAPABILITY_CHANCE:
            own.add(rng.choice([c for c in _CAPABILITIES if c not in own]))
        caps.append(frozenset(own))
    held = frozenset().union(*caps)
    grid = Grid(width, height, make_walls(width, height, obstacle_ratio, rng))
    free = grid.free_cells()
    starts = rng.sample(free, n)
    state = WorldState(grid, {f"agent_{i + 1}": Agent(f"agent_{i + 1}", caps[i], starts[i])
                              for i in range(n)})
    spots = rng.sample(free, len(free))  # features take distinct cells, in this order
    state.zones = {f"zone_{chr(ord('A') + i)}": spots.pop() for i in range(rng.randint(1, 2))}
    state.tasks = [_make_task(state, f"task_{i + 1}", kind, rng, spots)
                   for i, kind in enumerate(_task_kinds(task_count, held, rng))]
    delivers = [t for t in state.tasks if t.kind == "deliver" and t.object is not None]
    if "vision" in held and delivers:
        # Unidentified cargo is what makes a manipulation agent ask a vision agent for help.
        for task in delivers:
            if rng.random() < 1 / 3:
                state.objects[str(task.object)].identified = False
        if task_count >= 3 and all(state.objects[str(t.object)].identified for t in delivers):
            state.objects[str(delivers[0].object)].identified = False
    state.steps_by_agent = dict.fromkeys(state.agents, 0)
    return state


def _task_kinds(count: int, held: frozenset[str], rng: random.Random) -> list[TaskKind]:
    kinds: list[TaskKind] = [k for k in ("inspect", "deliver", "survey")
                             if KIND_CAPABILITY[k] in held]
    if count < len(kinds):
        return rng.sample(kinds, count)
    chosen = kinds + [rng.choice(kinds) for _ in range(count - len(kinds))]
    rng.shuffle(chosen)
    return chosen


def _make_task(state: WorldState, task_id: str, kind: TaskKind, rng: random.Random,
               spots: list[Cell]) -> Task:
    priority = rng.randint(3, 8)
    cell = spots.pop()
    if kind == "survey":
        name = f"wp_{len(state.waypoints) + 1}"
        state.waypoints[name] = cell
        return Task(task_id, kind, priority, f"Survey {name}", cell, waypoint=name)
    name = f"{rng.choice(_OBJECT_KINDS)}_{len(state.objects) + 1}"
    state.objects[name] = Item(name, cell, identified=kind == "deliver")
    if kind == "inspect":
        return Task(task_id, kind, priority, f"Inspect {name}", cell, object=name)
    zone = rng.choice(sorted(state.zones))
    return Task(task_id, kind, priority, f"Deliver {name} to {zone}", cell,
                object=name, zone=zone, target=state.zones[zone])
