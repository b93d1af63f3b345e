"""Capabilities: what an agent can do, with the JSON schemas its inputs must meet."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from agoramesh.bus.subjects import tokens_match, validate_capability, validate_capability_pattern
from agoramesh.errors import ConfigError, InvalidInput

__all__ = ("ANY_OBJECT", "Capability", "matches")

ANY_OBJECT: Mapping[str, Any] = {"type": "object"}


@dataclass(frozen=True, kw_only=True)
class Capability:
    """One capability of an agent (M-2.1). ``cost_per_token`` is USD per token."""

    name: str
    description: str = ""
    input_schema: Mapping[str, Any] = field(default_factory=lambda: dict(ANY_OBJECT))
    output_schema: Mapping[str, Any] = field(default_factory=lambda: dict(ANY_OBJECT))
    cost_per_token: float = 0.0
    max_context: int = 0
    languages: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        validate_capability(self.name)

    def check(self) -> None:
        """ConfigError if a schema is not valid JSON Schema.

        Only an agent's own capabilities need this (NodeConfig calls it): a
        peer's card is read for routing and never validates anything, and
        checking schemas costs ~1 ms a card. A capability that passed is not
        checked again (agents of one process share the offline capabilities).
        """
        if self.__dict__.get("_checked"):
            return
        try:
            for schema in (self.input_schema, self.output_schema):
                jsonschema.validators.validator_for(schema).check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise ConfigError(f"capability {self.name}: invalid JSON schema: "
                              f"{exc.message}") from None
        object.__setattr__(self, "_checked", True)  # frozen, and its schemas are never mutated

    def validate_input(self, parameters: Any) -> None:
        """InvalidInput naming the first problem, e.g. ``parameters.code: 3 is not 'string'``."""
        validator = self.__dict__.get("_validator")
        if validator is None:  # built on first use, kept for the capability's life
            validator = jsonschema.validators.validator_for(self.input_schema)(self.input_schema)
            object.__setattr__(self, "_validator", validator)
        error = jsonschema.exceptions.best_match(validator.iter_errors(parameters))
        if error is not None:
            where = ".".join(str(part) for part in error.absolute_path)
            location = f"parameters.{where}" if where else "parameters"
            raise InvalidInput(f"{self.name}: {location}: {error.message}")

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description,
                "input_schema": dict(self.input_schema),
                "output_schema": dict(self.output_schema),
                "cost_per_token": self.cost_per_token, "max_context": self.max_context,
                "languages": list(self.languages)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Capability:
        return cls(name=data["name"], description=str(data.get("description", "")),
                   input_schema=data.get("input_schema") or dict(ANY_OBJECT),
                   output_schema=data.get("output_schema") or dict(ANY_OBJECT),
                   cost_per_token=float(data.get("cost_per_token") or 0.0),
                   max_context=int(data.get("max_context") or 0),
                   languages=tuple(data.get("languages") or ()))


def matches(pattern: str, capability: str) -> bool:
    """NATS-style match of a dotted capability: ``*`` is one token, a final ``>`` the rest."""
    validate_capability_pattern(pattern)
    return tokens_match(pattern.split("."), capability.split("."))
