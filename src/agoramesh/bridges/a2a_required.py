"""The A2A protocol's required fields checked as a2a-sdk checks them, with its rules
read once per message type.

a2a-sdk validates every request by walking the message's descriptor, reading each
field's options and ``field_behavior`` extension on every call
(``a2a.utils.proto_utils.validate_proto_required_fields``): ≈ 0.2 ms for a
``SendMessageRequest``, more than the bridge's own work on a message. The rules do
not change while the process runs, so :func:`check_required` keeps them per message
type and applies the same ones: a field marked ``REQUIRED`` must be present (a
repeated one non-empty, a scalar without presence not its default); nested messages,
repeated messages and map values are checked in turn; a violation is the SDK's
``InvalidParamsError("Validation failed", data={"errors": [...]})`` with the same
field paths and texts (``tests/bridges/test_a2a_required.py`` compares both).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from a2a.utils.errors import InvalidParamsError
from google.api.field_behavior_pb2 import REQUIRED, field_behavior
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message as ProtoMessage

__all__ = ("check_required",)

_MISSING = "Field is required."
_EMPTY = "Field must contain at least one element."

#: What to look into below a field: nothing, one message, each of a list, each map value.
_FLAT, _ONE, _EACH, _VALUES = range(4)


class _Rule(NamedTuple):
    name: str
    required: bool
    repeated: bool
    presence: bool
    default: Any
    below: int


_RULES: dict[str, tuple[_Rule, ...]] = {}


def _rules(descriptor: Descriptor) -> tuple[_Rule, ...]:
    rules = _RULES.get(descriptor.full_name)
    if rules is None:
        rules = _RULES[descriptor.full_name] = tuple(_rule(field) for field in descriptor.fields)
    return rules


def _rule(field: FieldDescriptor) -> _Rule:
    # protobuf >= 6.31 says is_repeated; before, the label did (as the SDK reads it).
    repeated = bool(field.is_repeated if hasattr(field, "is_repeated")
                    else field.label == FieldDescriptor.LABEL_REPEATED)
    below = _FLAT
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        if not repeated:
            below = _ONE
        elif field.message_type is not None and field.message_type.GetOptions().map_entry:
            below = _VALUES
        else:
            below = _EACH
    required = REQUIRED in field.GetOptions().Extensions[field_behavior]
    return _Rule(field.name, required, repeated, bool(field.has_presence),
                 None if repeated or field.has_presence else field.default_value, below)


def _errors(message: ProtoMessage) -> list[dict[str, str]]:
    errors: list[dict[str, str]] = []
    for rule in _rules(message.DESCRIPTOR):
        name = rule.name
        if rule.required:
            value = getattr(message, name)
            if rule.repeated:
                if not value:
                    errors.append({"field": name, "message": _EMPTY})
            elif rule.presence:
                if not message.HasField(name):
                    errors.append({"field": name, "message": _MISSING})
            elif value == rule.default:
                errors.append({"field": name, "message": _MISSING})
        below = rule.below
        if below == _FLAT:
            continue
        if below == _ONE:
            if message.HasField(name):
                _nested(errors, name, _errors(getattr(message, name)))
        elif below == _EACH:
            for index, item in enumerate(getattr(message, name)):
                _nested(errors, f"{name}[{index}]", _errors(item))
        else:
            for key, item in getattr(message, name).items():
                if isinstance(item, ProtoMessage):
                    _nested(errors, f"{name}[{key}]", _errors(item))
    return errors


def _nested(errors: list[dict[str, str]], prefix: str, found: list[dict[str, str]]) -> None:
    for error in found:
        field = error["field"]
        errors.append({"field": f"{prefix}.{field}" if field else prefix,
                       "message": error["message"]})


def check_required(message: ProtoMessage) -> None:
    """InvalidParamsError, as a2a-sdk raises it, if ``message`` lacks a required field."""
    errors = _errors(message)
    if errors:
        raise InvalidParamsError(message="Validation failed", data={"errors": errors})
