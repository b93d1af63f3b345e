"""One step of a workflow (M-3.5): an agent selector, a task, and when and how to run it.

See :mod:`agoramesh.protocols.workflow.workflow` for the format. A Step checks itself
when it is built (names, selector, capability, JSON parameters, references,
condition, retries, timeout) and, given a :class:`Dispatcher`, against the
agents it knows (:meth:`Step.check_agents`): some known agent must match the
selector and offer the capability, and its input schema must accept the
parameter names. Every problem is one line of
:class:`~agoramesh.errors.WorkflowInvalid` that names the step.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

from agoramesh.errors import AgoraError, WorkflowInvalid
from agoramesh.nodes.capability import matches
from agoramesh.nodes.card import AgentCard
from agoramesh.protocols.allocation.dispatch import Dispatcher, parse_selector
from agoramesh.protocols.workflow.expr import NAME_PATTERN, Condition, Reference, references

__all__ = ("MAX_RETRIES", "STEP_FIELDS", "Step")

MAX_RETRIES = 10
STEP_FIELDS = ("name", "agent", "capability", "parameters", "depends_on", "when", "retries",
               "timeout")
_WILDCARDS = ("*", ">")


def _invalid(where: str, problem: object) -> WorkflowInvalid:
    return WorkflowInvalid(f"{where}: {problem}")


def _did_you_mean(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_json(value: Any, where: str) -> None:
    """Parameters travel as msgpack/JSON: no dates, sets or other YAML extras."""
    if value is None or isinstance(value, str | bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _invalid(where, "numbers must be finite")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise _invalid(where, f"keys must be strings, got {key!r}")
            _check_json(item, f"{where}.{key}")
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_json(item, f"{where}.{index}")
        return
    raise _invalid(where, f"{type(value).__name__} is not a JSON value (quote it)")


def _positive(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
            math.isfinite(value) and value > 0):
        raise _invalid(where, f"timeout must be a positive number of seconds, got {value!r}")
    return float(value)



@dataclass(frozen=True)
class Step:
    """One task of a workflow; see the module docstring for the fields."""

    name: str
    _: KW_ONLY
    agent: str | None = None
    capability: str | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)
    depends_on: Sequence[str] = ()
    when: str | bool | None = None
    retries: int = 0
    timeout: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not NAME_PATTERN.fullmatch(self.name):
            raise WorkflowInvalid(f"step name {self.name!r} must be a letter or _ followed by "
                                  f"letters, digits, _ or -")
        where = f"step {self.name!r}"
        if self.agent is None and self.capability is None:
            raise _invalid(where, "needs an agent selector (agent: capability:…) or a capability")
        try:
            kind, value = parse_selector(self.agent or f"capability:{self.capability}")
            if self.capability is not None:
                parse_selector(f"capability:{self.capability}")
        except AgoraError as exc:
            raise _invalid(where, exc) from None
        if self.capability is not None and any(w in self.capability for w in _WILDCARDS):
            raise _invalid(where, f"capability {self.capability!r} must be one capability, "
                                  f"not a pattern")
        if kind == "capability" and any(w in value.split(".") for w in _WILDCARDS):
            if self.capability is None:
                raise _invalid(where, f"selector {self.agent!r} is a pattern: name the "
                                      f"capability to send (capability: …)")
            if not matches(value, self.capability):
                raise _invalid(where, f"capability {self.capability!r} does not match the "
                                      f"selector {self.agent!r}")
        elif kind == "capability" and self.capability not in (None, value):
            raise _invalid(where, f"capability {self.capability!r} contradicts the selector "
                                  f"{self.agent!r}")
        elif kind != "capability" and self.capability is None:
            raise _invalid(where, f"selector {self.agent!r} picks agents, not a task: add "
                                  f"capability: <name>")
        if not isinstance(self.parameters, Mapping):
            raise _invalid(where, "parameters must be a mapping")
        _check_json(self.parameters, f"{where}: parameters")
        depends = (self.depends_on,) if isinstance(self.depends_on, str) else self.depends_on
        if not isinstance(depends, Sequence) or not all(isinstance(d, str) for d in depends):
            raise _invalid(where, "depends_on must be a step name or a list of step names")
        object.__setattr__(self, "depends_on", tuple(depends))
        if type(self.retries) is not int or not 0 <= self.retries <= MAX_RETRIES:
            raise _invalid(where, f"retries must be an integer from 0 to {MAX_RETRIES}, "
                                  f"got {self.retries!r}")
        object.__setattr__(self, "timeout", _positive(self.timeout, where))
        try:
            object.__setattr__(self, "_references", tuple(references(self.parameters)))
            condition = None if self.when is None else Condition.parse(self.when)
        except WorkflowInvalid as exc:
            raise _invalid(where, exc) from None
        object.__setattr__(self, "_condition", condition)

    @property
    def selector(self) -> str:
        return self.agent or f"capability:{self.capability}"

    @property
    def task_capability(self) -> str:
        """The capability the step's task is sent as."""
        return self.capability or parse_selector(self.selector)[1]

    @property
    def condition(self) -> Condition | None:
        return self.__dict__["_condition"]  # type: ignore[no-any-return]

    @property
    def references(self) -> tuple[Reference, ...]:
        """References in parameters, then in ``when``."""
        refs: tuple[Reference, ...] = self.__dict__["_references"]
        return refs + (self.condition.references if self.condition else ())

    @property
    def needs(self) -> frozenset[str]:
        """Every step this one waits for: ``depends_on`` and the steps it refers to."""
        return frozenset(self.depends_on) | {r.name for r in self.references if r.step}

    @property
    def decides_on(self) -> frozenset[str]:
        """Steps whose status ``when`` reads: their skip does not propagate here."""
        refs = self.condition.references if self.condition else ()
        return frozenset(r.name for r in refs if r.step and r.attribute == "status")

    def candidates(self, dispatcher: Dispatcher) -> list[AgentCard]:
        """Known agents the selector picks that offer the step's capability."""
        capability = self.task_capability
        return [card for card in dispatcher.select(self.selector)
                if card.capability(capability) is not None]

    def check_agents(self, dispatcher: Dispatcher) -> None:
        """WorkflowInvalid unless a known agent can take the task as written."""
        capability = self.task_capability
        candidates = self.candidates(dispatcher)
        if not candidates:
            known = len(dispatcher.agents())
            agents = f"{known} agent{'s' if known != 1 else ''} known"
            selected = dispatcher.select(self.selector)
            if parse_selector(self.selector)[0] == "capability":
                raise _invalid(self._where, f"no known agent offers capability {capability!r} "
                                            f"({agents})")
            if not selected:
                raise _invalid(self._where, f"no known agent matches {self.selector!r} "
                                            f"({agents})")
            listed = ", ".join(card.name for card in selected[:5])
            raise _invalid(self._where, f"the agents matching {self.selector!r} ({listed}) do "
                                        f"not offer capability {capability!r}")
        names = set(self.parameters)
        problems: list[str] = []
        for card in candidates:  # one whose input schema accepts the parameter names will do
            offered = card.capability(capability)
            schema = offered.input_schema if offered else {}
            allowed = _closed_properties(schema)
            required = [str(r) for r in schema.get("required") or () if r not in names]
            extra = sorted(names - allowed) if allowed is not None else []
            if not required and not extra:
                return
            problems.append(f"missing parameter {required[0]!r}" if required else
                            f"unknown parameter {extra[0]!r}"
                            f"{_did_you_mean(extra[0], allowed or ())}")
        raise _invalid(self._where, f"{capability}: {problems[0]}")

    def output_fields(self, dispatcher: Dispatcher) -> set[str] | None:
        """The output fields the step's candidates declare; None if any field may come."""
        fields: set[str] = set()
        for card in self.candidates(dispatcher):
            offered = card.capability(self.task_capability)
            allowed = _closed_properties(offered.output_schema if offered else {})
            if allowed is None:
                return None
            fields |= allowed
        return fields or None

    @property
    def _where(self) -> str:
        return f"step {self.name!r}"

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name}
        for key in ("agent", "capability"):
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
        data["parameters"] = dict(self.parameters)
        if self.depends_on:
            data["depends_on"] = list(self.depends_on)
        for key in ("when", "retries", "timeout"):
            if getattr(self, key) not in (None, 0):
                data[key] = getattr(self, key)
        return data

    @classmethod
    def from_dict(cls, data: Any, name: str | None = None) -> Step:
        """A step from a YAML mapping; ``name`` is its key when steps are a mapping."""
        given = data.get("name") if isinstance(data, Mapping) else None
        label = f"step {name or given!r}" if name or isinstance(given, str) else "a step"
        if not isinstance(data, Mapping):
            raise _invalid(label, f"must be a mapping of fields, got {type(data).__name__}")
        unknown = sorted(str(key) for key in data if key not in STEP_FIELDS)
        if unknown:
            raise _invalid(label, f"unknown field {unknown[0]!r}"
                                  f"{_did_you_mean(unknown[0], STEP_FIELDS)}; fields are "
                                  f"{', '.join(STEP_FIELDS)}")
        fields = dict(data)
        if name is not None:
            if fields.setdefault("name", name) != name:
                raise _invalid(label, f"is also called {fields['name']!r}")
        elif "name" not in fields:
            raise WorkflowInvalid("every step needs a name")
        if fields.get("parameters") is None:
            fields.pop("parameters", None)
        return cls(**fields)


def _closed_properties(schema: Mapping[str, Any]) -> set[str] | None:
    """The property names of a closed object schema; None if any name may pass."""
    if schema.get("additionalProperties", True) is not False:
        return None
    properties = schema.get("properties")
    return set(properties) if isinstance(properties, Mapping) else set()
