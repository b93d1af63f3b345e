"""What a grid world holds: its agents, objects, zones, waypoints and tasks, and the episode's
counters, in one place that the generator fills, commands change and views read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from agoramesh.errors import InvalidWorldCall
from agoramesh.sim.grid import Cell, Grid

__all__ = ("KIND_CAPABILITY", "Agent", "Item", "Task", "TaskKind", "WorldState")

TaskKind = Literal["inspect", "deliver", "survey"]

KIND_CAPABILITY: dict[TaskKind, str] = {
    "inspect": "vision", "deliver": "manipulation", "survey": "navigation"}


@dataclass
class Agent:
    sim_id: str
    capabilities: frozenset[str]
    position: Cell
    carrying: str | None = None


@dataclass
class Item:
    """An object of the world (crate, ball, box) that agents identify and carry."""

    name: str
    position: Cell  # kept in step with the carrier while carried
    identified: bool
    carried_by: str | None = None


@dataclass
class Task:
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
            "required_capability": KIND_CAPABILITY[self.kind], "priority": self.priority,
            "description": self.description, "location": list(self.location)}
        extras = {"object": self.object, "zone": self.zone, "waypoint": self.waypoint,
                  "target": None if self.target is None else list(self.target)}
        return data | {key: value for key, value in extras.items() if value is not None}


@dataclass
class WorldState:
    """One episode's world; a reset replaces it whole, so every counter starts at zero."""

    grid: Grid
    agents: dict[str, Agent]
    zones: dict[str, Cell] = field(default_factory=dict)
    objects: dict[str, Item] = field(default_factory=dict)
    waypoints: dict[str, Cell] = field(default_factory=dict)
    tasks: list[Task] = field(default_factory=list)
    done: bool = False
    steps: int = 0
    invalid: int = 0
    failed: int = 0
    steps_by_agent: dict[str, int] = field(default_factory=dict)

    def agent(self, sim_id: str) -> Agent:
        agent = self.agents.get(sim_id)
        if agent is None:
            raise InvalidWorldCall(f"unknown agent {sim_id!r:.40}; agents are "
                                   f"{', '.join(self.agents)}")
        return agent

    def object_at(self, task: Task) -> Cell | None:
        return None if task.object is None else self.objects[task.object].position
