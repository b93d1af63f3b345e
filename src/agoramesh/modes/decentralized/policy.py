"""The deterministic policy: the next command for one task, from what the agent knows.

Pure functions over plain data, so they are easy to test and the same on
every run. Tasks are typed (:class:`~.tasks.Task`: ``kind`` ``inspect``,
``deliver`` or ``survey``); objects are what observations and teammates'
status updates said of them. A task the agent cannot move on alone (a
delivery of an object nobody has identified, by an agent without vision) is
*blocked*, and the agent asks for help.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agoramesh.modes.decentralized.tasks import Point, Task, point

__all__ = ("Plan", "distance", "estimated_steps", "goto", "plan_task")


@dataclass(frozen=True, slots=True)
class Plan:
    """The next command for a task; ``needs`` names the capability it waits for, if any."""

    command: str
    needs: str | None = None
    note: str = ""


def distance(a: Point, b: Point) -> int:
    return abs(a[0] - b[0]) + abs(a[1] - b[1])


def goto(target: Point) -> str:
    return f"GOTO {target[0]} {target[1]}"


def estimated_steps(start: Point, task: Task) -> int:
    """Steps to do ``task`` from ``start`` on an open grid (walls make it a lower bound)."""
    where = task.location or start
    steps = distance(start, where)
    if task.kind == "deliver":
        steps += distance(where, task.target or where) + 2  # PICK, PLACE
    else:
        steps += 1  # SCAN or MARK
    return steps


def plan_task(task: Task, *, position: Point, capabilities: Sequence[str],
              carrying: str | None, objects: Mapping[str, Mapping[str, Any]]) -> Plan:
    """The next command toward ``task`` (a help task is an ``inspect``)."""
    kind, name = task.kind, task.object
    seen = objects.get(name, {})
    where = point(seen.get("position"), task.location or position)
    if kind == "survey":
        spot = task.location or position
        return Plan("MARK") if position == spot else Plan(goto(spot))
    if kind == "inspect":
        if seen.get("identified"):
            return Plan("WAIT", note=f"{name} is identified already")
        return Plan("SCAN") if distance(position, where) <= 1 else Plan(goto(where))
    if kind == "deliver":
        target = task.target or position
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
