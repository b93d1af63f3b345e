"""The deterministic policy: the next command for one task, from what the agent knows.

Pure functions over plain data, so they are easy to test and the same on
every run. Tasks are the simulator's dicts (``kind`` ``inspect``,
``deliver`` or ``survey``; ``location``, ``object``, ``target``); objects
are what observations and teammates' status updates said of them. A task
the agent cannot move on alone (a delivery of an object nobody has
identified, by an agent without vision) is *blocked*, and the agent asks
for help.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ("Plan", "distance", "estimated_steps", "goto", "plan_task", "point")

Point = tuple[int, int]


@dataclass(frozen=True, slots=True)
class Plan:
    """The next command for a task; ``needs`` names the capability it waits for, if any."""

    command: str
    needs: str | None = None
    note: str = ""


def point(value: Any, default: Point = (0, 0)) -> Point:
    if (isinstance(value, list | tuple) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        return int(value[0]), int(value[1])
    return default


def distance(a: Point, b: Point) -> int:
    return abs(a[0] - b[0]) + abs(a[1] - b[1])


def goto(target: Point) -> str:
    return f"GOTO {target[0]} {target[1]}"


def estimated_steps(start: Point, task: Mapping[str, Any]) -> int:
    """Steps to do ``task`` from ``start`` on an open grid (walls make it a lower bound)."""
    where = point(task.get("location"), start)
    steps = distance(start, where)
    if task.get("kind") == "deliver":
        steps += distance(where, point(task.get("target"), where)) + 2  # PICK, PLACE
    else:
        steps += 1  # SCAN or MARK
    return steps


def plan_task(task: Mapping[str, Any], *, position: Point, capabilities: Sequence[str],
              carrying: str | None, objects: Mapping[str, Mapping[str, Any]]) -> Plan:
    """The next command toward ``task`` (a help task has ``kind`` ``inspect``)."""
    kind = task.get("kind")
    name = str(task.get("object") or "")
    seen = objects.get(name, {})
    where = point(seen.get("position"), point(task.get("location"), position))
    if kind == "survey":
        spot = point(task.get("location"), position)
        return Plan("MARK") if position == spot else Plan(goto(spot))
    if kind == "inspect":
        if seen.get("identified"):
            return Plan("WAIT", note=f"{name} is identified already")
        return Plan("SCAN") if distance(position, where) <= 1 else Plan(goto(where))
    if kind == "deliver":
        target = point(task.get("target"), position)
        if carrying == name:
            return Plan("PLACE") if position == target else Plan(goto(target))
        if carrying:  # something else in hand: put it down first
            return Plan("PLACE", note=f"drop {carrying} to free the hands")
        if seen.get("identified"):
            return Plan(f"PICK {name}") if position == where else Plan(goto(where))
        if "vision" in capabilities:
            return Plan("SCAN") if distance(position, where) <= 1 else Plan(goto(where))
        if "identified" in seen:  # seen, and not identified: only a vision agent can help
            return Plan("WAIT" if position == where else goto(where), needs="vision",
                        note=f"{name} must be identified before it can be picked up")
        return Plan(goto(where))  # not seen yet: go and look
    return Plan("WAIT", note=f"unknown task kind {kind!r:.40}")
