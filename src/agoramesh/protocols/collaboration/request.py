"""The collaboration request (M-3.4): its shape, its checks and its ``${…}`` references.

A :class:`CollaborationRequest` is the HTTP/CLI shape ``{mode, topic, agents,
rounds, requirements}`` (unknown fields are refused; ``rounds`` is for debate
only). Making one — :meth:`CollaborationRequest.from_dict` or the constructor
— checks everything that can be checked without the mesh, once: every problem
is one line of :class:`~agoramesh.errors.InvalidCollaboration`, and the checked
settings are kept in ``plan`` for the mode runner,
:class:`~agoramesh.protocols.collaboration.collaboration.Collaboration`, which documents
what each mode does and returns (and checks only what needs the mesh).

Named agents (``agents``) are names, ids or selectors (``name:pro``, ``id:U…``,
``capability:vote``, ``type:claude``); a bare word is a name, then an id.
``topic`` is optional outside debate and voting.

References in parameters are ``${topic}``, ``${previous.output[.FIELD…]}``
and ``${steps.NAME.output[.FIELD…]}`` (a number indexes a list:
``sentences.0``), with the rules workflows use
(:mod:`~agoramesh.protocols.references`): a string that is exactly one
reference becomes the value with its type; references inside longer text are
stringified, strings as they are and anything else as compact JSON;
``$${`` writes a literal ``${``. A malformed reference, or one that names
nothing (no topic, no earlier stage of that name), is refused with the
request; a FIELD missing from an output fails that stage. Per mode:

- ``sequential``: requirements ``{stages: [{capability, agent?, parameters?,
  name?}]}`` (``name`` defaults to the stage number; ``agent`` is a selector,
  the least loaded match runs the stage).
- ``parallel``: requirements ``{capability, parameters?}``; ``agents`` is a
  list of selectors, a count (the least loaded capable agents) or null (every
  capable agent).
- ``map-reduce`` (or ``map_reduce``): requirements ``{items, map?, reduce?,
  item_field?, collect?, reduce_field?, map_parameters?, reduce_parameters?}``;
  each item becomes one map task (an object item is merged into
  ``map_parameters``, anything else is put in ``item_field``, default
  ``text``); field ``collect`` (default ``summary``; null = the whole output)
  of every map output goes in ``reduce_field`` (default ``text``) of one
  reduce task. ``map`` and ``reduce`` default to ``text.summarize``: a summary
  of summaries.
- ``debate``: ``topic``, ``rounds`` (default 2, 1 to 20), ``agents`` (default:
  every agent offering ``text.debate``; at least 2), requirements ``{voters?,
  positions?: {name: for|against}}``.
- ``voting``: ``topic`` is the question, requirements ``{options}`` (2 to 100
  distinct strings), ``agents`` (default every agent offering ``vote``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from agoramesh.bus.subjects import validate_capability
from agoramesh.errors import InvalidCollaboration, SubjectError
from agoramesh.protocols.references import Syntax, follow

__all__ = ("CollaborationMode", "CollaborationRequest")

_SIDES = ("for", "against")
_MAX_TOPIC = 1000  # text.debate's limit
_MAX_QUESTION = 10_000  # vote's limit
_MAX_ITEMS = 1000
_MAX_AGENTS = 100
_MAX_STAGES = 50
_MAX_ROUNDS = 20


class CollaborationMode(StrEnum):
    SEQUENTIAL = "sequential"
    PARALLEL = "parallel"
    MAP_REDUCE = "map_reduce"
    DEBATE = "debate"
    VOTING = "voting"

    @classmethod
    def parse(cls, value: object) -> CollaborationMode:
        """A mode by name; ``map-reduce`` is accepted for ``map_reduce``."""
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return cls(value.strip().lower().replace("-", "_"))
        raise InvalidCollaboration(f"unknown mode {value!r:.60}; use one of "
                                   f"{', '.join(mode.value.replace('_', '-') for mode in cls)}")


# --- validation: one-line InvalidCollaboration messages -------------------------------------------

def _given(value: object, default: object) -> Any:
    return default if value is None else value


def _text(value: object, what: str, max_length: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidCollaboration(f"{what!r} must be a non-empty string")
    if len(value) > max_length:
        raise InvalidCollaboration(f"{what!r} is longer than {max_length} characters")
    return value


def _integer(value: object, what: str, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:
        raise InvalidCollaboration(f"{what!r} must be an integer from {low} to {high}")
    return value


def _object(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidCollaboration(f"{what!r} must be an object, got {type(value).__name__}")
    return dict(value)


def _only(data: Mapping[str, Any], allowed: Sequence[str], what: str) -> None:
    unknown = sorted(str(key) for key in data if key not in allowed)
    if unknown:
        raise InvalidCollaboration(f"unknown {what} field(s) {', '.join(unknown)[:200]}; "
                                   f"expected {', '.join(allowed) or 'none'}")


def _capability(value: object, what: str) -> str:
    try:
        return validate_capability(value)
    except SubjectError as exc:
        raise InvalidCollaboration(f"{what!r}: {exc}") from None


def _named(value: object, what: str = "agents", *, count: bool = False
           ) -> tuple[str, ...] | None:
    if value is None:
        return None
    if (not isinstance(value, list | tuple) or not 0 < len(value) <= _MAX_AGENTS
            or not all(isinstance(item, str) and 0 < len(item.strip()) <= 200 for item in value)):
        raise InvalidCollaboration(f"{what!r} must be a list of 1-{_MAX_AGENTS} agent names, "
                                   f"ids or selectors{' or a count' if count else ''}")
    return tuple(item.strip() for item in value)


def _agents(value: object, *, count: bool) -> tuple[str, ...] | int | None:
    """``agents``: names, ids or selectors; a count of agents too where ``count``."""
    if count and type(value) is int:
        return _integer(value, "agents", 1, _MAX_AGENTS)
    return _named(value, count=count)


def _options(value: object) -> tuple[str, ...]:
    if (not isinstance(value, list | tuple) or not 2 <= len(value) <= 100
            or not all(isinstance(item, str) and 0 < len(item) <= 1000 for item in value)
            or len(set(value)) != len(value)):
        raise InvalidCollaboration("'options' must be a list of 2-100 distinct non-empty strings")
    return tuple(value)


def _positions(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(
            isinstance(key, str) and side in _SIDES for key, side in value.items()):
        raise InvalidCollaboration("'positions' must map agent names or ids to 'for' or 'against'")
    return dict(value)


def _items(value: object) -> list[Any]:
    if not isinstance(value, list | tuple) or not 0 < len(value) <= _MAX_ITEMS:
        raise InvalidCollaboration(f"'items' must be a list of 1-{_MAX_ITEMS} items")
    return list(value)


# --- references: ${…} in parameters ---------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Ref:
    """One ``${…}`` in parameters: ``root`` is ``topic``, ``previous`` or ``steps``."""

    root: str
    stage: str  # the stage ${steps.NAME…} reads, else ""
    path: tuple[str, ...]
    text: str


def _read(parts: list[str], text: str) -> _Ref | None:
    root, rest = parts[0], parts[1:]
    if root == "topic" and not rest:
        return _Ref("topic", "", (), text)
    if root == "previous" and rest[:1] == ["output"]:
        return _Ref("previous", "", tuple(rest[1:]), text)
    if root == "steps" and rest[1:2] == ["output"]:
        return _Ref("steps", rest[0], tuple(rest[2:]), text)
    return None


_SYNTAX = Syntax(_read, error=InvalidCollaboration,
                 usage="use ${topic}, ${previous.output[.FIELD…]} or ${steps.NAME.output[.FIELD…]}")


def _check_references(parameters: dict[str, Any], topic: str | None, earlier: Sequence[str] = (),
                      *, where: str = "parameters") -> None:
    """Every ``${…}`` must be well formed and name the topic or an earlier stage's output."""
    try:
        refs = _SYNTAX.references(parameters)
    except InvalidCollaboration as exc:
        raise InvalidCollaboration(f"{where}: {exc}") from None
    for ref in refs:
        if ref.root == "topic" and topic is None:
            missing = "there is no topic"
        elif ref.root == "previous" and not earlier:
            missing = "there is no earlier stage"
        elif ref.root == "steps" and ref.stage not in earlier:
            missing = f"there is no earlier stage {ref.stage!r}"
        else:
            continue
        raise InvalidCollaboration(f"{where}: {ref.text} names nothing: {missing}")


def _render(parameters: dict[str, Any], *, topic: str | None, previous: Any = None,
            outputs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``parameters`` with every reference replaced (each checked by the request).

    ``previous`` is the last stage's output, ``outputs`` every earlier stage's
    by name; LookupError names a FIELD an output does not have.
    """
    def lookup(ref: _Ref) -> Any:
        if ref.root == "topic":
            return topic
        output = previous if ref.root == "previous" else (outputs or {})[ref.stage]
        return follow(output, ref.path, text=ref.text, root="output")

    rendered: dict[str, Any] = _SYNTAX.render(parameters, lookup)
    return rendered


# --- the checked settings of each mode: CollaborationRequest.plan ---------------------------------

@dataclass(frozen=True, kw_only=True, slots=True)
class _Stage:
    name: str
    capability: str
    agent: str | None
    parameters: dict[str, Any]


@dataclass(frozen=True, kw_only=True, slots=True)
class _Sequential:
    topic: str | None
    stages: tuple[_Stage, ...]


@dataclass(frozen=True, kw_only=True, slots=True)
class _Parallel:
    topic: str | None
    capability: str
    parameters: dict[str, Any]
    agents: tuple[str, ...] | int | None


@dataclass(frozen=True, kw_only=True, slots=True)
class _MapReduce:
    topic: str | None
    items: list[Any]
    map_capability: str
    reduce_capability: str
    item_field: str
    collect: str | None
    reduce_field: str
    map_parameters: dict[str, Any]
    reduce_parameters: dict[str, Any]
    agents: tuple[str, ...] | None


@dataclass(frozen=True, kw_only=True, slots=True)
class _Debate:
    topic: str
    agents: tuple[str, ...] | None
    rounds: int
    voters: tuple[str, ...] | None
    positions: dict[str, str]


@dataclass(frozen=True, kw_only=True, slots=True)
class _Voting:
    question: str
    options: tuple[str, ...]
    agents: tuple[str, ...] | None


_Plan = _Sequential | _Parallel | _MapReduce | _Debate | _Voting

# Each takes the keyword arguments of its mode's method (CollaborationRequest.arguments(), topic
# and agents already checked) and checks the rest.


def _sequential_plan(stages: object, topic: str | None) -> _Sequential:
    if not isinstance(stages, list | tuple) or not 0 < len(stages) <= _MAX_STAGES:
        raise InvalidCollaboration(f"'stages' must be a list of 1-{_MAX_STAGES} stage objects")
    plan: list[_Stage] = []
    for number, raw in enumerate(stages, 1):
        where = f"stages[{number}]"
        stage = _object(raw, where)
        _only(stage, ("name", "capability", "agent", "parameters"), where)
        name = _text(stage.get("name", str(number)), f"{where}.name", 100)
        if name in (earlier := [s.name for s in plan]):
            raise InvalidCollaboration(f"{where}: the stage name {name!r} is used twice")
        agent = stage.get("agent")
        parameters = _object(stage.get("parameters", {}), f"{where}.parameters")
        _check_references(parameters, topic, earlier, where=f"{where}.parameters")
        plan.append(_Stage(name=name, capability=_capability(stage.get("capability"),
                                                               f"{where}.capability"),
                           agent=None if agent is None else _text(agent, f"{where}.agent", 200),
                           parameters=parameters))
    return _Sequential(topic=topic, stages=tuple(plan))


def _parallel_plan(capability: object, parameters: object, agents: tuple[str, ...] | int | None,
                   topic: str | None) -> _Parallel:
    checked = _object(_given(parameters, {}), "parameters")
    _check_references(checked, topic)
    return _Parallel(topic=topic, capability=_capability(capability, "capability"),
                     parameters=checked, agents=agents)


def _map_reduce_plan(items: object, *, agents: tuple[str, ...] | None, topic: str | None,
                     map_capability: object = None, reduce_capability: object = None,
                     item_field: object = None, collect: object = "summary",
                     reduce_field: object = None, map_parameters: object = None,
                     reduce_parameters: object = None) -> _MapReduce:
    mapper = _capability(_given(map_capability, "text.summarize"), "map")
    plan = _MapReduce(
        topic=topic, agents=agents, items=_items(items), map_capability=mapper,
        reduce_capability=_capability(_given(reduce_capability, mapper), "reduce"),
        item_field=_text(_given(item_field, "text"), "item_field", 100),
        collect=None if collect is None else _text(collect, "collect", 100),
        reduce_field=_text(_given(reduce_field, "text"), "reduce_field", 100),
        map_parameters=_object(_given(map_parameters, {}), "map_parameters"),
        reduce_parameters=_object(_given(reduce_parameters, {}), "reduce_parameters"))
    _check_references(plan.map_parameters, topic, where="map_parameters")
    _check_references(plan.reduce_parameters, topic, where="reduce_parameters")
    return plan


def _debate_plan(topic: str, agents: tuple[str, ...] | None, rounds: object, *,
                 voters: object, positions: object) -> _Debate:
    return _Debate(topic=topic, agents=agents, rounds=_integer(rounds, "rounds", 1, _MAX_ROUNDS),
                   voters=_named(voters, "voters"), positions=_positions(positions))


def _voting_plan(question: str, options: object, agents: tuple[str, ...] | None) -> _Voting:
    return _Voting(question=question, options=_options(options), agents=agents)


_PLANS: dict[CollaborationMode, Callable[..., _Plan]] = {
    CollaborationMode.SEQUENTIAL: _sequential_plan,
    CollaborationMode.PARALLEL: _parallel_plan,
    CollaborationMode.MAP_REDUCE: _map_reduce_plan,
    CollaborationMode.DEBATE: _debate_plan,
    CollaborationMode.VOTING: _voting_plan,
}
_REQUIREMENTS: dict[CollaborationMode, tuple[str, ...]] = {
    CollaborationMode.SEQUENTIAL: ("stages",),
    CollaborationMode.PARALLEL: ("capability", "parameters"),
    CollaborationMode.MAP_REDUCE: ("items", "map", "reduce", "item_field", "collect",
                                   "reduce_field", "map_parameters", "reduce_parameters"),
    CollaborationMode.DEBATE: ("voters", "positions"),
    CollaborationMode.VOTING: ("options",),
}


@dataclass(frozen=True, kw_only=True)
class CollaborationRequest:
    """A checked ``{mode, topic, agents, rounds, requirements}`` request (see the module doc).

    Made, it has been checked (InvalidCollaboration otherwise): ``mode`` is a
    :class:`CollaborationMode`, ``agents`` a tuple of stripped names or a
    count, ``requirements`` a dict, and ``plan`` the mode's checked settings.
    """

    mode: CollaborationMode
    topic: str | None = None
    agents: tuple[str, ...] | int | None = None
    rounds: int | None = None
    requirements: Mapping[str, Any] | None = None
    plan: _Plan = field(init=False, repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: object) -> CollaborationRequest:
        """The request in its HTTP/CLI shape, checked; InvalidCollaboration if wrong."""
        if not isinstance(data, Mapping):
            raise InvalidCollaboration(f"a collaboration request must be an object, "
                                       f"got {type(data).__name__}")
        _only(data, ("mode", "topic", "agents", "rounds", "requirements"), "request")
        if data.get("mode") is None:
            raise InvalidCollaboration("'mode' is required: sequential, parallel, map-reduce, "
                                       "debate or voting")
        return cls(mode=data["mode"], topic=data.get("topic"), agents=data.get("agents"),
                   rounds=data.get("rounds"), requirements=data.get("requirements"))

    def __post_init__(self) -> None:
        # Everything that can be checked without the mesh, here and only here.
        mode = CollaborationMode.parse(self.mode)
        if self.topic is not None:
            _text(self.topic, "topic", _MAX_QUESTION if mode is CollaborationMode.VOTING
                  else _MAX_TOPIC)
        elif mode in (CollaborationMode.DEBATE, CollaborationMode.VOTING):
            raise InvalidCollaboration(f"'topic' is required for {mode}")
        if self.rounds is not None and mode is not CollaborationMode.DEBATE:
            raise InvalidCollaboration("'rounds' applies to debate only")
        if self.agents is not None and mode is CollaborationMode.SEQUENTIAL:
            raise InvalidCollaboration("'agents' does not apply to sequential; name an agent "
                                       "per stage")
        requirements = {} if self.requirements is None else _object(self.requirements,
                                                                     "requirements")
        _only(requirements, _REQUIREMENTS[mode], f"{mode} requirements")
        object.__setattr__(self, "mode", mode)
        object.__setattr__(self, "requirements", requirements)
        object.__setattr__(self, "agents", _agents(self.agents,
                                                   count=mode is CollaborationMode.PARALLEL))
        object.__setattr__(self, "plan", _PLANS[mode](**self.arguments()))

    def arguments(self) -> dict[str, Any]:
        """The keyword arguments of the mode's method in
        :class:`~agoramesh.protocols.collaboration.collaboration.Collaboration` (and of the
        function that checks them into ``plan``)."""
        req: Mapping[str, Any] = self.requirements or {}
        mode = self.mode
        if mode is CollaborationMode.DEBATE:
            return {"topic": self.topic, "agents": self.agents,
                    "rounds": 2 if self.rounds is None else self.rounds,
                    "voters": req.get("voters"), "positions": req.get("positions")}
        if mode is CollaborationMode.VOTING:
            return {"question": self.topic, "options": req.get("options"), "agents": self.agents}
        if mode is CollaborationMode.PARALLEL:
            if req.get("capability") is None:
                raise InvalidCollaboration("parallel needs requirements.capability")
            return {"capability": req["capability"], "parameters": req.get("parameters"),
                    "agents": self.agents, "topic": self.topic}
        if mode is CollaborationMode.MAP_REDUCE:
            if req.get("items") is None:
                raise InvalidCollaboration("map-reduce needs requirements.items")
            names = {"map": "map_capability", "reduce": "reduce_capability"}
            return {"items": req["items"], "agents": self.agents, "topic": self.topic,
                    **{names.get(key, key): value for key, value in req.items()
                       if key != "items"}}
        if req.get("stages") is None:
            raise InvalidCollaboration("sequential needs requirements.stages")
        return {"stages": req["stages"], "topic": self.topic}
