"""What an agent says about itself: its identity card and its live status."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agoramesh.errors import SchemaError, SubjectError
from agoramesh.nodes.capability import ANY_OBJECT, Capability, matches

__all__ = ("AgentCard", "AgentStatus", "card_digest", "presence_interval")


@dataclass(frozen=True, kw_only=True)
class AgentStatus:
    """Load and health, refreshed with every heartbeat (M-2.4).

    The counts and ``total_cost_usd`` are running totals since the agent
    started; on the wire the total is ``cost_usd`` (PROTOCOL.md §15, presence).
    """

    capacity: int = 1
    in_flight: int = 0
    avg_latency_ms: float = 0.0
    success_rate: float = 1.0
    tasks_completed: int = 0
    tasks_failed: int = 0
    tokens_used: int = 0
    total_cost_usd: float = 0.0
    state: str = "ready"  # ready | busy | stopping

    @property
    def load(self) -> float:
        return self.in_flight / self.capacity if self.capacity else 1.0

    def as_dict(self) -> dict[str, Any]:
        return {"capacity": self.capacity, "in_flight": self.in_flight, "load": self.load,
                "avg_latency_ms": round(self.avg_latency_ms, 3),
                "success_rate": round(self.success_rate, 4),
                "tasks_completed": self.tasks_completed, "tasks_failed": self.tasks_failed,
                "tokens_used": self.tokens_used, "cost_usd": round(self.total_cost_usd, 8),
                "state": self.state}

    @classmethod
    def from_dict(cls, data: Any) -> AgentStatus:
        """Read a peer's status defensively: it comes from the network and reaches scoring.

        A field of the wrong type or not finite is left at its default; a
        negative number, a count past 2**53 or a success rate outside [0, 1] is
        clamped. Nothing raises.
        """
        if not isinstance(data, Mapping):
            return cls()
        fields: dict[str, Any] = {}
        for name, kind in _STATUS_NUMBERS.items():
            value = data.get(name)
            if value is None or isinstance(value, bool):
                continue
            try:
                number = value if isinstance(value, int) and kind is int else float(value)
            except (TypeError, ValueError, OverflowError):
                continue
            if isinstance(number, float) and not math.isfinite(number):
                continue
            fields[_STATUS_FIELDS.get(name, name)] = (
                min(max(0, int(number)), _MAX_COUNT) if kind is int else max(0.0, float(number)))
        if "success_rate" in fields:
            fields["success_rate"] = min(1.0, fields["success_rate"])
        state = data.get("state")
        if _printable(state) and not isinstance(state, bool):
            fields["state"] = str(state)[:32]
        return cls(**fields)


# Counts beyond what a JSON number holds exactly are clamped: load divides them as floats.
_MAX_COUNT = 2**53
_STATUS_NUMBERS: dict[str, type[int] | type[float]] = {
    "capacity": int, "in_flight": int, "avg_latency_ms": float, "success_rate": float,
    "tasks_completed": int, "tasks_failed": int, "tokens_used": int, "cost_usd": float}
#: Wire names that differ from the field's: the status's ``cost_usd`` is a running total.
_STATUS_FIELDS = {"cost_usd": "total_cost_usd"}


@dataclass(frozen=True, kw_only=True)
class AgentCard:
    """The identity card (M-2.1): ``id`` is the agent's nkey public key."""

    id: str
    name: str
    type: str
    version: str
    endpoint: str
    capabilities: tuple[Capability, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def public_key(self) -> str:
        return self.id  # the agent id IS the public key (nkey encoding)

    def capability(self, name: str) -> Capability | None:
        return next((cap for cap in self.capabilities if cap.name == name), None)

    def offers(self, pattern: str) -> bool:
        return any(matches(pattern, cap.name) for cap in self.capabilities)

    def answers(self, query: Mapping[str, Any]) -> bool:
        """Whether a discovery query (optional ``capability`` pattern, ``type``, ``name``)
        names this agent; a bad pattern raises SubjectError."""
        pattern, kind, name = query.get("capability"), query.get("type"), query.get("name")
        if pattern and not self.offers(str(pattern)):
            return False
        return not (kind and kind != self.type) and not (name and name != self.name)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "type": self.type, "version": self.version,
                "public_key": self.public_key, "endpoint": self.endpoint,
                "metadata": dict(self.metadata),
                "capabilities": [cap.as_dict() for cap in self.capabilities]}

    @classmethod
    def from_dict(cls, data: object) -> AgentCard:
        """Read a peer's card (PROTOCOL.md §15): whatever arrives, the only error is SchemaError.

        ``id``, ``name`` and ``type`` are strings; ``version`` and ``endpoint``
        strings when present; ``metadata`` a map from strings to strings (a
        number or boolean is written as text); ``capabilities`` a list of
        capability maps (:func:`_capability`). Whether ``id`` is the signer is
        the receiver's check.
        """
        card = _map(data, "card")
        metadata = {_key(key, "card.metadata"): _scalar_text(value, f"card.metadata.{key[:40]}")
                    for key, value in _map(_get(card, "metadata", {}), "card.metadata").items()}
        capabilities = _list(_get(card, "capabilities", ()), "card.capabilities")
        return cls(id=_text(card, "id", "card", required=True),
                   name=_text(card, "name", "card", required=True),
                   type=_text(card, "type", "card", required=True),
                   version=_text(card, "version", "card"),
                   endpoint=_text(card, "endpoint", "card"), metadata=metadata,
                   capabilities=tuple(_capability(item, f"card.capabilities[{index}]")
                                      for index, item in enumerate(capabilities)))


def _capability(data: object, where: str) -> Capability:
    """One capability of a peer's card; SchemaError unless every field has its type.

    ``name`` is a capability name; ``description`` a string; the schemas maps
    (missing or empty: any object); ``cost_per_token`` a finite number >= 0;
    ``max_context`` a whole number >= 0; ``languages`` a list of strings. The
    schemas are not checked as JSON Schema: a peer's card only routes.
    """
    capability = _map(data, where)
    languages = _list(_get(capability, "languages", ()), f"{where}.languages")
    try:
        return Capability(
            name=_text(capability, "name", where, required=True),
            description=_text(capability, "description", where),
            input_schema=_map(_get(capability, "input_schema", {}),
                              f"{where}.input_schema") or dict(ANY_OBJECT),
            output_schema=_map(_get(capability, "output_schema", {}),
                               f"{where}.output_schema") or dict(ANY_OBJECT),
            cost_per_token=_price(_get(capability, "cost_per_token", 0.0),
                                  f"{where}.cost_per_token"),
            max_context=_whole(_get(capability, "max_context", 0), f"{where}.max_context"),
            languages=tuple(_key(language, f"{where}.languages") for language in languages))
    except SubjectError as exc:  # the name is no capability
        raise SchemaError(f"{where}.name: {exc}") from None


def presence_interval(value: object, default: float) -> float:
    """A presence body's ``interval``: a finite number of seconds > 0, ``default`` if absent.

    SchemaError otherwise: an infinite or NaN interval would keep a silent
    peer in the directory for ever.
    """
    if value is None:
        return default
    interval = _price(value, "interval")
    if not interval:
        raise SchemaError("interval must be more than 0 seconds")
    return interval


# Readers of one field each: the type is checked before anything converts it.

def _get(data: Mapping[str, Any], name: str, default: object) -> object:
    value = data.get(name)
    return default if value is None else value


def _map(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise SchemaError(f"{where} must be a map, got {type(value).__name__}")
    return value


def _list(value: object, where: str) -> list[Any] | tuple[Any, ...]:
    if not isinstance(value, list | tuple):
        raise SchemaError(f"{where} must be a list, got {type(value).__name__}")
    return value


def _text(data: Mapping[str, Any], name: str, where: str, *, required: bool = False) -> str:
    value = data.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise SchemaError(f"{where}.{name} must be a string, got {type(value).__name__}")
    return value


def _key(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise SchemaError(f"{where} must hold strings, got {type(value).__name__}")
    return value


def _printable(value: object) -> bool:
    """A string or a number that ``str`` prints (an int past 2**64 cannot come off the
    wire, and one of thousands of digits does not print)."""
    return isinstance(value, str | float) or (isinstance(value, int) and abs(value) < 2**64)


def _scalar_text(value: object, where: str) -> str:
    if _printable(value):
        return str(value)
    raise SchemaError(f"{where} must be a string, got {type(value).__name__}")


def _price(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SchemaError(f"{where} must be a number, got {type(value).__name__}")
    number = float(value) if isinstance(value, float) or abs(value) <= _MAX_COUNT else math.inf
    if not math.isfinite(number) or number < 0:
        raise SchemaError(f"{where} must be a finite number >= 0")
    return number


def _whole(value: object, where: str) -> int:
    if isinstance(value, float) and value.is_integer():  # not inf, not NaN
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SchemaError(f"{where} must be a whole number >= 0")
    return value


def card_digest(card: Mapping[str, Any]) -> str:
    """The digest heartbeats carry instead of the card (PROTOCOL.md, presence)."""
    return hashlib.blake2b(json.dumps(card, sort_keys=True).encode(),
                           digest_size=12).hexdigest()
