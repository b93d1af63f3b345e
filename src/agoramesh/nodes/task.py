"""Tasks and their outcomes (M-1.4): what a requester asks and what comes back.

The wire shapes (``as_dict``/``from_dict``) are the bodies of the
``task_request`` and ``task_response`` envelopes and of plain-JSON ingress;
a task's :attr:`Task.capability` is ``task_type`` there (PROTOCOL.md §15).
A :class:`Task` checks what it is given, whatever the path it came by, so a
hostile request fails as :class:`~agoramesh.errors.InvalidInput` for its
parameters (an object nesting at most :data:`MAX_PARAMETER_DEPTH` levels: what
runs a task may recurse over them) and :class:`~agoramesh.errors.InvalidTask`
for the rest: ``priority`` is an int 0-10, ``deadline`` a number of Unix
seconds up to :data:`MAX_DEADLINE` (so arithmetic on it never overflows) and
``callback`` a subject the agent may publish the result on
(:func:`validate_callback`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from agoramesh.bus.ingress import MAX_JSON_DEPTH
from agoramesh.bus.subjects import validate_subject
from agoramesh.errors import InvalidInput, InvalidTask, SubjectError

__all__ = ("MAX_CALLBACK_LENGTH", "MAX_DEADLINE", "MAX_PARAMETER_DEPTH", "Chunk", "Completion",
           "StreamItem", "Task", "TaskResult", "TaskStatus", "Usage", "validate_callback")

#: How deep ``parameters`` may nest (the parameters object is level 1): as deep as a
#: plain-JSON request may (bus/ingress.py), so every request ingress takes fits.
MAX_PARAMETER_DEPTH = MAX_JSON_DEPTH
#: The latest ``deadline``: 9999-12-31T23:59:59Z in Unix seconds.
MAX_DEADLINE = 253_402_300_799
#: The longest ``callback`` subject, in characters.
MAX_CALLBACK_LENGTH = 256
#: Where a callback may not point: reply inboxes (a result there could pass for the
#: answer to someone else's request) and the server's own APIs (JetStream, $SYS, $SRV).
_CALLBACK_FORBIDDEN = ("_INBOX.", "$")


def validate_callback(subject: object) -> str:
    """A subject a task's result may be published on as well, or InvalidTask.

    A concrete subject (no wildcards), at most :data:`MAX_CALLBACK_LENGTH`
    characters, that is neither a reply inbox nor one of the server's. The agent
    running the task publishes there in its own name, so a requester must not be
    able to steer that into someone's pending request or an API the agent may call
    (the mesh's own subjects are refused by the agent, which knows their prefix).
    """
    if not isinstance(subject, str):
        raise InvalidTask(f"callback must be a subject string, got {type(subject).__name__}")
    if len(subject) > MAX_CALLBACK_LENGTH:
        raise InvalidTask(f"callback must be a subject of at most {MAX_CALLBACK_LENGTH} "
                          f"characters, got {len(subject)}")
    try:
        validate_subject(subject)
    except SubjectError:
        raise InvalidTask(f"callback {subject[:80]!r} is not a subject to publish on: "
                          f"dot-separated, non-empty tokens of printable ASCII, no spaces "
                          f"or wildcards (* >)") from None
    if subject.startswith(_CALLBACK_FORBIDDEN):
        raise InvalidTask(f"callback {subject[:80]!r} may not be a reply inbox (_INBOX.) "
                          f"or a server subject ($...)")
    return subject


class TaskStatus(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


@dataclass(frozen=True, kw_only=True, slots=True)
class Usage:
    """Tokens and money one call (or a sum of calls) spent."""

    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(input_tokens=self.input_tokens + other.input_tokens,
                     output_tokens=self.output_tokens + other.output_tokens,
                     cost_usd=self.cost_usd + other.cost_usd)

    def priced(self, *, input_per_1k: float, output_per_1k: float) -> Usage:
        """The same usage with ``cost_usd`` computed from per-1000-token prices."""
        cost = (self.input_tokens * input_per_1k + self.output_tokens * output_per_1k) / 1000
        return Usage(input_tokens=self.input_tokens, output_tokens=self.output_tokens,
                     cost_usd=round(cost, 8))


@dataclass(frozen=True, kw_only=True, slots=True)
class Task:
    """A task request for one ``capability``; priority is 0 (low) to 10."""

    capability: str
    parameters: dict[str, Any] = field(default_factory=dict)
    task_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    priority: int = 5
    deadline: float | None = None  # Unix seconds
    callback: str | None = None  # a subject to publish the result to as well

    def __post_init__(self) -> None:
        if not isinstance(self.capability, str) or not self.capability:
            raise InvalidTask("the capability (task_type) must be a non-empty string")
        if not isinstance(self.parameters, dict):
            raise InvalidInput("parameters must be an object")
        if _deeper_than(self.parameters, MAX_PARAMETER_DEPTH):
            raise InvalidInput(f"parameters nest more than {MAX_PARAMETER_DEPTH} levels deep")
        if type(self.priority) is not int or not 0 <= self.priority <= 10:
            raise InvalidTask(f"priority must be an integer 0-10, got {self.priority!r:.40}")
        if not isinstance(self.task_id, str) or not 0 < len(self.task_id) <= 128:
            raise InvalidTask("task_id must be a string of 1-128 characters")
        # Compared, never converted: an int past the float range (10**400) is simply too
        # large here, where math.isfinite or a subtraction from time.time() would overflow.
        if self.deadline is not None and (
                not isinstance(self.deadline, int | float) or isinstance(self.deadline, bool)
                or not 0 <= self.deadline <= MAX_DEADLINE):  # False for NaN too
            raise InvalidTask(f"deadline must be a number of Unix seconds from 0 to "
                              f"{MAX_DEADLINE}, got {self.deadline!r:.40}")
        if self.callback is not None:
            validate_callback(self.callback)

    def as_dict(self) -> dict[str, Any]:
        return {"task_id": self.task_id, "task_type": self.capability,
                "parameters": self.parameters, "priority": self.priority,
                "deadline": self.deadline, "callback": self.callback}

    @classmethod
    def from_dict(cls, data: Any, *, capability: str | None = None) -> Task:
        """A task from a request body; ``capability`` fills in for a body without ``task_type``
        (the subject named it) and must match one that has it."""
        if not isinstance(data, dict):
            raise InvalidTask(f"a task must be an object, got {type(data).__name__}")
        known = {"task_id", "task_type", "parameters", "priority", "deadline", "callback"}
        if "parameters" not in data and not data.keys() <= known:
            # `nats req agora.cap.echo '{"text": "hi"}'`: the whole body is the parameters.
            data = {"parameters": data}
        unknown = data.keys() - known
        if unknown:
            raise InvalidTask(f"unknown task fields: {sorted(map(str, unknown))[:5]}")
        fields = {"capability" if key == "task_type" else key: value
                  for key, value in data.items()}
        fields.setdefault("capability", capability)
        if capability and fields["capability"] != capability:
            raise InvalidTask(f"task_type {fields['capability']!r} was sent to {capability!r}")
        fields = {key: value for key, value in fields.items() if value is not None}
        return cls(**fields)


def _deeper_than(value: Any, limit: int) -> bool:
    """True if the lists and maps in ``value`` nest more than ``limit`` levels (no recursion)."""
    level: list[Any] = [value]
    for _ in range(limit):
        level = [child for item in level if isinstance(item, dict | list | tuple)
                 for child in (item.values() if isinstance(item, dict) else item)]
        if not level:
            return False
    return any(isinstance(item, dict | list | tuple) for item in level)


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of streamed output."""

    text: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Completion:
    """The end of a stream: the structured output and what it cost."""

    output: Any
    usage: Usage = field(default_factory=Usage)
    model: str | None = None


StreamItem = Chunk | Completion


#: Failures a second run may not repeat (TaskResult.final).
_NOT_FINAL = frozenset({"TaskCancelled", "Overloaded"})


@dataclass(frozen=True, kw_only=True, slots=True)
class TaskResult:
    """A task response (M-1.4).

    ``task_id`` is ``""`` when the request's task id could not be read; on the
    wire that is ``null`` (PROTOCOL.md §15), and ``null`` reads back as ``""``.
    """

    task_id: str
    status: TaskStatus
    result: Any = None
    error: dict[str, Any] | None = None
    execution_time_ms: float = 0.0
    tokens_used: int = 0
    cost_usd: float = 0.0
    agent_id: str | None = None

    @property
    def final(self) -> bool:
        """True unless running the task again may end otherwise: COMPLETED, or FAILED for
        any reason but a cancellation or a busy agent (TaskCancelled, Overloaded)."""
        return self.status is TaskStatus.COMPLETED or (
            self.status is TaskStatus.FAILED
            and (self.error or {}).get("type") not in _NOT_FINAL)

    def as_dict(self) -> dict[str, Any]:
        return {"task_id": self.task_id or None, "status": self.status.value,
                "result": self.result,
                "error": self.error, "execution_time_ms": round(self.execution_time_ms, 3),
                "tokens_used": self.tokens_used, "cost_usd": self.cost_usd,
                "agent_id": self.agent_id}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskResult:
        task_id = data.get("task_id")
        return cls(task_id="" if task_id is None else str(task_id),
                   status=TaskStatus(data["status"]),
                   result=data.get("result"), error=data.get("error"),
                   execution_time_ms=float(data.get("execution_time_ms") or 0.0),
                   tokens_used=int(data.get("tokens_used") or 0),
                   cost_usd=float(data.get("cost_usd") or 0.0), agent_id=data.get("agent_id"))
