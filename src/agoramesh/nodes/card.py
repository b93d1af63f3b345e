"""What an agent says about itself: its identity card and its live status."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agoramesh.nodes.capability import Capability, matches

__all__ = ("AgentCard", "AgentStatus", "card_digest")


@dataclass(frozen=True, kw_only=True)
class AgentStatus:
    """Load and health, refreshed with every heartbeat (M-2.4)."""

    capacity: int = 1
    in_flight: int = 0
    avg_latency_ms: float = 0.0
    success_rate: float = 1.0
    tasks_completed: int = 0
    tasks_failed: int = 0
    tokens_used: int = 0
    cost_usd: float = 0.0
    state: str = "ready"  # ready | busy | stopping

    @property
    def load(self) -> float:
        return self.in_flight / self.capacity if self.capacity else 1.0

    def as_dict(self) -> dict[str, Any]:
        return {"capacity": self.capacity, "in_flight": self.in_flight, "load": self.load,
                "avg_latency_ms": round(self.avg_latency_ms, 3),
                "success_rate": round(self.success_rate, 4),
                "tasks_completed": self.tasks_completed, "tasks_failed": self.tasks_failed,
                "tokens_used": self.tokens_used, "cost_usd": round(self.cost_usd, 8),
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
            fields[name] = (min(max(0, int(number)), _MAX_COUNT) if kind is int
                            else max(0.0, float(number)))
        if "success_rate" in fields:
            fields["success_rate"] = min(1.0, fields["success_rate"])
        state = data.get("state")
        if isinstance(state, str | int | float) and not isinstance(state, bool):
            fields["state"] = str(state)[:32]
        return cls(**fields)


# Counts beyond what a JSON number holds exactly are clamped: load divides them as floats.
_MAX_COUNT = 2**53
_STATUS_NUMBERS: dict[str, type[int] | type[float]] = {
    "capacity": int, "in_flight": int, "avg_latency_ms": float, "success_rate": float,
    "tasks_completed": int, "tasks_failed": int, "tokens_used": int, "cost_usd": float}


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
    def from_dict(cls, data: Mapping[str, Any]) -> AgentCard:
        return cls(id=str(data["id"]), name=str(data["name"]), type=str(data["type"]),
                   version=str(data.get("version", "")), endpoint=str(data.get("endpoint", "")),
                   metadata={str(k): str(v) for k, v in (data.get("metadata") or {}).items()},
                   capabilities=tuple(Capability.from_dict(c)
                                      for c in data.get("capabilities") or ()))


def card_digest(card: Mapping[str, Any]) -> str:
    """The digest heartbeats carry instead of the card (PROTOCOL.md, presence)."""
    return hashlib.blake2b(json.dumps(card, sort_keys=True).encode(),
                           digest_size=12).hexdigest()
