"""A2A messages to mesh tasks and mesh results to A2A parts, with the protocol's errors.

What a message must say (docs/OPERATIONS.md, "A2A"):

- **the skill**: ``metadata.skill`` names the capability (``{"skill": "math.evaluate"}``);
  a card with one skill needs none. A skill not on the card is ``InvalidParamsError``
  (-32602) listing what is.
- **the parameters**: one data part holding a JSON object is the parameters. Without
  one, the text parts (joined by newlines) become the one string parameter the
  capability's input schema points at: its only required property, else ``text``
  when it has one, else its only property, else ``text``. File and URL parts are
  ``ContentTypeNotSupportedError`` (-32005); parameters that fail the input schema,
  or nest too deep for a task, are ``InvalidParamsError`` with the first problem.
- ``metadata.timeout`` (seconds, optional) bounds the task, at most the server's limit.

A result becomes an artifact: a string as one text part; anything else as one data
part, preceded by a text part when it is an object with a ``text`` string (so a
text-only client reads an LLM's answer as text).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from a2a.types import Message, Part
from a2a.utils.errors import ContentTypeNotSupportedError, InvalidParamsError

from agoramesh.errors import InvalidInput
from agoramesh.nodes.backends.a2a import SKILL_KEY, to_python, to_value
from agoramesh.nodes.capability import Capability
from agoramesh.nodes.task import Task

__all__ = ("TIMEOUT_KEY", "choose_skill", "parameters_from", "result_parts", "timeout_of")

#: The message metadata key bounding the task, in seconds.
TIMEOUT_KEY = "timeout"


def choose_skill(metadata: Mapping[str, Any], skills: Mapping[str, Capability]) -> Capability:
    """The capability a message asks for (``metadata.skill``, or the only one)."""
    name = metadata.get(SKILL_KEY)
    if name is None:
        if len(skills) == 1:
            return next(iter(skills.values()))
        offered = ", ".join(skills) or "none right now"
        raise InvalidParamsError(message=f"name the skill in the message metadata "
                                         f"({{\"{SKILL_KEY}\": <id>}}); skills: {offered}")
    skill = skills.get(name) if isinstance(name, str) else None
    if skill is None:
        offered = ", ".join(skills) or "none right now"
        raise InvalidParamsError(message=f"no skill {str(name)[:100]!r} here; skills: {offered}")
    return skill


def timeout_of(metadata: Mapping[str, Any], limit: float) -> float:
    """``metadata.timeout`` within (0, ``limit``], or ``limit`` when there is none."""
    value = metadata.get(TIMEOUT_KEY)
    if value is None:
        return limit
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
            math.isfinite(value) and value > 0):
        raise InvalidParamsError(message=f"metadata.{TIMEOUT_KEY} must be a number of "
                                         f"seconds > 0, got {str(value)[:40]!r}")
    return min(float(value), limit)


def parameters_from(message: Message, capability: Capability) -> dict[str, Any]:
    """The task parameters ``message`` carries for ``capability``, checked against its
    input schema and the task's own limits."""
    data, text = [], []
    for part in message.parts:
        kind = part.WhichOneof("content")
        if kind == "data":
            data.append(to_python(part.data))
        elif kind == "text":
            text.append(part.text)
        else:
            raise ContentTypeNotSupportedError(
                message=f"a {kind or 'empty'} part: send the parameters as a data part (a "
                        f"JSON object) or as text")
    objects = [value for value in data if isinstance(value, dict)]
    if len(objects) > 1 or (data and not objects):
        raise InvalidParamsError(message="send the parameters as one data part holding a "
                                         "JSON object")
    parameters = objects[0] if objects else {_text_parameter(capability): "\n".join(text)}
    try:
        capability.validate_input(parameters)
        Task(capability=capability.name, parameters=parameters)
    except InvalidInput as exc:
        raise InvalidParamsError(message=str(exc)) from None
    return parameters


def _text_parameter(capability: Capability) -> str:
    """The parameter a text message fills for ``capability`` (see the module docstring)."""
    schema = capability.input_schema
    properties = schema.get("properties")
    names = list(properties) if isinstance(properties, Mapping) else []
    required = schema.get("required")
    if isinstance(required, list) and len(required) == 1 and isinstance(required[0], str):
        return required[0]
    if "text" in names or len(names) != 1:
        return "text"
    return str(names[0])


def result_parts(result: Any) -> list[Part]:
    """A mesh result as the parts of an A2A artifact (see the module docstring)."""
    if isinstance(result, str):
        return [Part(text=result)]
    parts = []
    if isinstance(result, dict) and isinstance(result.get("text"), str):
        parts.append(Part(text=result["text"]))
    parts.append(Part(data=to_value(result)))
    return parts
