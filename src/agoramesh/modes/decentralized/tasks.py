"""The work an agent plans: the simulator's tasks and teammates' help requests, typed.

A :class:`Task` is read from the simulator's dict (:mod:`agoramesh.sim.interface`
gives its shape) once, when the episode's tasks are listed, and keeps that dict
as ``source``: it is what a negotiation announces (PROTOCOL.md §19, ``tasks``),
so keys the agent does not read (``zone``, ``waypoint``) still reach teammates.
A :class:`HelpTask` is a teammate's ``help_request`` this agent took up, or
may; it is planned as an ``inspect`` task (:meth:`HelpTask.task`).
:class:`HelpAsked` is this agent's own open request for one of its tasks.

Reading is lenient, as the planner's was: a field of the wrong type is left
at its default, so a bad dict makes an agent wait, never crash.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ("HelpAsked", "HelpTask", "Point", "Task", "point", "read_tasks")

Point = tuple[int, int]


def _is_point(value: Any) -> bool:
    return (isinstance(value, list | tuple) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value))


def point(value: Any, default: Point = (0, 0)) -> Point:
    """``[x, y]`` (or a tuple) as a point; ``default`` for anything else."""
    return (int(value[0]), int(value[1])) if _is_point(value) else default


def _point_or_none(value: Any) -> Point | None:
    return point(value) if _is_point(value) else None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _integer(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


@dataclass(frozen=True, slots=True)
class Task:
    """One task: ``kind`` ``inspect``, ``deliver`` or ``survey``; where its work starts
    (``location``, None: where the agent is), its ``object`` and delivery ``target``."""

    task_id: str = ""
    kind: str = ""
    capability: str = ""
    priority: int = 5
    location: Point | None = None
    object: str = ""
    target: Point | None = None
    source: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def read(cls, data: Mapping[str, Any]) -> Task:
        """From a simulator's (or an announce's) task map; the capability is its
        ``required_capability``, as the map spells it."""
        return cls(task_id=str(data.get("task_id", "")), kind=_text(data.get("kind")),
                   capability=_text(data.get("required_capability")),
                   priority=_integer(data.get("priority"), 5),
                   location=_point_or_none(data.get("location")),
                   object=_text(data.get("object")), target=_point_or_none(data.get("target")),
                   source=dict(data))


def read_tasks(tasks: Iterable[Mapping[str, Any]]) -> dict[str, Task]:
    """The simulator's task list, typed, by task id."""
    return {task.task_id: task for task in map(Task.read, tasks)}


@dataclass(frozen=True, slots=True)
class HelpTask:
    """A teammate's request to inspect ``object``, needing ``capability``; ``attempt``
    counts how often it asked (a low-cooperation agent waits for the second)."""

    request_id: str
    requester: str  # its sim id
    object: str
    capability: str
    location: Point | None = None
    attempt: int = 1

    @classmethod
    def read(cls, requester: str, content: Mapping[str, Any]) -> HelpTask:
        """From a ``help_request``'s content (PROTOCOL.md §19)."""
        return cls(request_id=str(content.get("request_id", "")), requester=requester,
                   object=_text(content.get("object")),
                   capability=_text(content.get("required_capability")),
                   location=_point_or_none(content.get("location")),
                   attempt=_integer(content.get("attempt"), 1))

    def task(self) -> Task:
        return Task(task_id=self.request_id, kind="inspect", capability=self.capability,
                    location=self.location, object=self.object)


@dataclass(slots=True)
class HelpAsked:
    """This agent's open help request for one of its tasks: when it was last sent, how
    often, and the teammate that took it up (None while nobody has)."""

    request_id: str
    step: int
    attempt: int = 1
    helper: str | None = None
