"""The collaboration request (M-3.4): its shape, its checks and its ``${…}`` references.

A :class:`CollaborationRequest` is the HTTP/CLI shape ``{mode, topic, agents,
rounds, requirements}`` (unknown fields are refused; ``rounds`` is for debate
only). :meth:`CollaborationRequest.from_dict` checks everything that can be
checked without the mesh; every problem is one line of
:class:`~agoramesh.errors.InvalidInput`. The mode runner,
:class:`~agoramesh.protocols.collaboration.Collaboration`, documents what each
mode does and returns.

Named agents (``agents``) are names, ids or selectors (``name:pro``, ``id:U…``,
``capability:vote``, ``type:claude``); a bare word is a name, then an id.
``${topic}``, ``${previous.output.FIELD}`` and ``${steps.NAME.output.FIELD}``
in parameters are replaced by those values (the whole value when the string is
only the reference, else its text; a number indexes a list: ``sentences.0``);
``topic`` is optional outside debate and voting. Per mode:

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
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from agoramesh.bus.subjects import validate_capability
from agoramesh.errors import InvalidInput, SubjectError

__all__ = ("CollaborationMode", "CollaborationRequest")

_SIDES = ("for", "against")
_MAX_TOPIC = 1000  # text.debate's limit
_MAX_QUESTION = 10_000  # vote's limit
_MAX_ITEMS = 1000
_MAX_AGENTS = 100
_MAX_STAGES = 50
_MAX_ROUNDS = 20
_REFERENCE = re.compile(r"\$\{([^{}]*)\}")


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
        raise InvalidInput(f"unknown mode {value!r:.60}; use one of "
                           f"{', '.join(mode.value.replace('_', '-') for mode in cls)}")


# --- validation: one-line InvalidInput messages ---------------------------------------------------

def _given(value: object, default: object) -> Any:
    return default if value is None else value


def _text(value: object, what: str, max_length: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"{what!r} must be a non-empty string")
    if len(value) > max_length:
        raise InvalidInput(f"{what!r} is longer than {max_length} characters")
    return value


def _integer(value: object, what: str, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:
        raise InvalidInput(f"{what!r} must be an integer from {low} to {high}")
    return value


def _object(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidInput(f"{what!r} must be an object, got {type(value).__name__}")
    return dict(value)


def _only(data: Mapping[str, Any], allowed: Sequence[str], what: str) -> None:
    unknown = sorted(str(key) for key in data if key not in allowed)
    if unknown:
        raise InvalidInput(f"unknown {what} field(s) {', '.join(unknown)[:200]}; "
                           f"expected {', '.join(allowed) or 'none'}")


def _capability(value: object, what: str) -> str:
    try:
        return validate_capability(value)
    except SubjectError as exc:
        raise InvalidInput(f"{what!r}: {exc}") from None


def _named(value: object, what: str = "agents", *, count: bool = False
           ) -> tuple[str, ...] | None:
    if value is None:
        return None
    if (not isinstance(value, list | tuple) or not 0 < len(value) <= _MAX_AGENTS
            or not all(isinstance(item, str) and 0 < len(item.strip()) <= 200 for item in value)):
        raise InvalidInput(f"{what!r} must be a list of 1-{_MAX_AGENTS} agent names, ids or "
                           f"selectors{' or a count' if count else ''}")
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
        raise InvalidInput("'options' must be a list of 2-100 distinct non-empty strings")
    return tuple(value)


def _positions(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(
            isinstance(key, str) and side in _SIDES for key, side in value.items()):
        raise InvalidInput("'positions' must map agent names or ids to 'for' or 'against'")
    return dict(value)


def _references(value: object) -> list[str]:
    if isinstance(value, str):
        return [match.strip() for match in _REFERENCE.findall(value)]
    if isinstance(value, dict):
        return [ref for item in value.values() for ref in _references(item)]
    if isinstance(value, list):
        return [ref for item in value for ref in _references(item)]
    return []


def _check_references(parameters: object, topic: str | None, earlier: Sequence[str] = (),
                      *, where: str = "parameters") -> None:
    """Every ``${…}`` must name the topic (when there is one) or an earlier stage's output."""
    for ref in _references(parameters):
        root, _, rest = ref.partition(".")
        if root == "topic" and not rest and topic is not None:
            continue
        if root == "previous" and earlier and (rest == "output" or rest.startswith("output.")):
            continue
        name, _, tail = rest.partition(".")
        if root == "steps" and name in earlier and (tail == "output"
                                                     or tail.startswith("output.")):
            continue
        later = ", ${previous.output.FIELD}, ${steps.NAME.output.FIELD}" if earlier else ""
        raise InvalidInput(f"${{{ref}}} in {where} names nothing; use ${{topic}}{later}")


@dataclass(frozen=True, kw_only=True, slots=True)
class _Stage:
    name: str
    capability: str
    agent: str | None
    parameters: dict[str, Any]


def _stages(value: object, topic: str | None) -> list[_Stage]:
    if not isinstance(value, list | tuple) or not 0 < len(value) <= _MAX_STAGES:
        raise InvalidInput(f"'stages' must be a list of 1-{_MAX_STAGES} stage objects")
    stages: list[_Stage] = []
    for number, raw in enumerate(value, 1):
        where = f"stages[{number}]"
        stage = _object(raw, where)
        _only(stage, ("name", "capability", "agent", "parameters"), where)
        name = _text(stage.get("name", str(number)), f"{where}.name", 100)
        if name in (earlier := [s.name for s in stages]):
            raise InvalidInput(f"{where}: the stage name {name!r} is used twice")
        agent = stage.get("agent")
        parameters = _object(stage.get("parameters", {}), f"{where}.parameters")
        _check_references(parameters, topic, earlier, where=where)
        stages.append(_Stage(name=name, capability=_capability(stage.get("capability"),
                                                                 f"{where}.capability"),
                             agent=None if agent is None else _text(agent, f"{where}.agent", 200),
                             parameters=parameters))
    return stages


def _items(value: object) -> list[Any]:
    if not isinstance(value, list | tuple) or not 0 < len(value) <= _MAX_ITEMS:
        raise InvalidInput(f"'items' must be a list of 1-{_MAX_ITEMS} items")
    return list(value)


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
    """A checked ``{mode, topic, agents, rounds, requirements}`` request (see the module doc)."""

    mode: CollaborationMode
    topic: str | None = None
    agents: tuple[str, ...] | int | None = None
    rounds: int | None = None
    requirements: Mapping[str, Any] | None = None

    @classmethod
    def from_dict(cls, data: object) -> CollaborationRequest:
        """Check everything that can be checked without the mesh; InvalidInput if wrong."""
        if not isinstance(data, Mapping):
            raise InvalidInput(f"a collaboration request must be an object, "
                               f"got {type(data).__name__}")
        _only(data, ("mode", "topic", "agents", "rounds", "requirements"), "request")
        if data.get("mode") is None:
            raise InvalidInput("'mode' is required: sequential, parallel, map-reduce, debate "
                               "or voting")
        mode = CollaborationMode.parse(data["mode"])
        topic = data.get("topic")
        if topic is not None:
            topic = _text(topic, "topic", _MAX_QUESTION if mode is CollaborationMode.VOTING
                          else _MAX_TOPIC)
        elif mode in (CollaborationMode.DEBATE, CollaborationMode.VOTING):
            raise InvalidInput(f"'topic' is required for {mode}")
        if data.get("rounds") is not None and mode is not CollaborationMode.DEBATE:
            raise InvalidInput("'rounds' applies to debate only")
        if data.get("agents") is not None and mode is CollaborationMode.SEQUENTIAL:
            raise InvalidInput("'agents' does not apply to sequential; name an agent per stage")
        raw = data.get("requirements")
        requirements = {} if raw is None else _object(raw, "requirements")
        _only(requirements, _REQUIREMENTS[mode], f"{mode} requirements")
        request = cls(mode=mode, topic=topic,
                      agents=_agents(data.get("agents"), count=mode is CollaborationMode.PARALLEL),
                      rounds=data.get("rounds"), requirements=requirements)
        _check_mode_arguments(request)
        return request

    def arguments(self) -> dict[str, Any]:
        """The keyword arguments of the mode's method in
        :class:`~agoramesh.protocols.collaboration.Collaboration`."""
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
                raise InvalidInput("parallel needs requirements.capability")
            return {"capability": req["capability"], "parameters": req.get("parameters"),
                    "agents": self.agents, "topic": self.topic}
        if mode is CollaborationMode.MAP_REDUCE:
            if req.get("items") is None:
                raise InvalidInput("map-reduce needs requirements.items")
            names = {"map": "map_capability", "reduce": "reduce_capability"}
            return {"items": req["items"], "agents": self.agents, "topic": self.topic,
                    **{names.get(key, key): value for key, value in req.items()
                       if key != "items"}}
        if req.get("stages") is None:
            raise InvalidInput("sequential needs requirements.stages")
        return {"stages": req["stages"], "topic": self.topic}


def _check_mode_arguments(request: CollaborationRequest) -> None:
    arguments = request.arguments()
    match request.mode:
        case CollaborationMode.DEBATE:
            _text(arguments["topic"], "topic", _MAX_TOPIC)
            _integer(arguments["rounds"], "rounds", 1, _MAX_ROUNDS)
            _named(arguments["voters"], "voters")
            _positions(arguments["positions"])
        case CollaborationMode.VOTING:
            _text(arguments["question"], "topic", _MAX_QUESTION)
            _options(arguments["options"])
        case CollaborationMode.PARALLEL:
            _capability(arguments["capability"], "capability")
            _check_references(_object(_given(arguments["parameters"], {}), "parameters"),
                              request.topic)
        case CollaborationMode.MAP_REDUCE:
            _map_reduce_settings(**{key: value for key, value in arguments.items()
                                    if key != "agents"})
        case CollaborationMode.SEQUENTIAL:
            _stages(arguments["stages"], request.topic)


@dataclass(frozen=True, kw_only=True, slots=True)
class _MapReduce:
    items: list[Any]
    map_capability: str
    reduce_capability: str
    item_field: str
    collect: str | None
    reduce_field: str
    map_parameters: dict[str, Any]
    reduce_parameters: dict[str, Any]


def _map_reduce_settings(items: object, *, topic: str | None = None,
                         map_capability: object = None, reduce_capability: object = None,
                         item_field: object = None, collect: object = "summary",
                         reduce_field: object = None, map_parameters: object = None,
                         reduce_parameters: object = None) -> _MapReduce:
    mapper = _capability(_given(map_capability, "text.summarize"), "map")
    settings = _MapReduce(
        items=_items(items), map_capability=mapper,
        reduce_capability=_capability(_given(reduce_capability, mapper), "reduce"),
        item_field=_text(_given(item_field, "text"), "item_field", 100),
        collect=None if collect is None else _text(collect, "collect", 100),
        reduce_field=_text(_given(reduce_field, "text"), "reduce_field", 100),
        map_parameters=_object(_given(map_parameters, {}), "map_parameters"),
        reduce_parameters=_object(_given(reduce_parameters, {}), "reduce_parameters"))
    _check_references(settings.map_parameters, topic, where="map_parameters")
    _check_references(settings.reduce_parameters, topic, where="reduce_parameters")
    return settings


# --- references: ${…} in parameters ---------------------------------------------------------------

def _lookup(scope: Mapping[str, Any], path: str) -> Any:
    current: Any = scope
    for part in path.strip().split("."):
        if isinstance(current, Mapping) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            raise InvalidInput(f"${{{path.strip()}}} names nothing: there is no {part!r}")
    return current


def _substitute(value: Any, scope: Mapping[str, Any]) -> Any:
    """``value`` with every ``${path}`` replaced from ``scope`` (see the module docstring)."""
    if isinstance(value, str):
        if whole := _REFERENCE.fullmatch(value):
            return _lookup(scope, whole.group(1))
        return _REFERENCE.sub(lambda match: _as_text(_lookup(scope, match.group(1))), value)
    if isinstance(value, dict):
        return {key: _substitute(item, scope) for key, item in value.items()}
    if isinstance(value, list):
        return [_substitute(item, scope) for item in value]
    return value


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False,
                                                             default=str)
