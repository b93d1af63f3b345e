"""The offline backend: real, deterministic work without network access (M-2.2).

It lets a mesh be demonstrated and tested anywhere. Each capability in
:data:`OFFLINE_CAPABILITIES` is a skill from :mod:`.offline_skills`; a task
streams a progress :class:`Chunk` or two, then a :class:`Completion` with the
skill's output. Token counts are an estimate that is the same on every run —
the whitespace-separated words of the input and of the output — priced with
the configured per-1000-token prices.

The node runtime validates parameters against each ``input_schema`` with
jsonschema; this module still checks the types it relies on, so a wrong type
is :class:`~agoramesh.errors.InvalidInput`, never a crash.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, ClassVar

from agoramesh.errors import InvalidInput, UnknownCapability
from agoramesh.nodes.backends import offline_skills as skills
from agoramesh.nodes.backends.base import Backend, ChatMessage
from agoramesh.nodes.task import Chunk, Completion, StreamItem, Task, Usage

__all__ = ("DEFAULT_MODEL", "OFFLINE_CAPABILITIES", "OfflineBackend", "estimate_tokens")

DEFAULT_MODEL = "offline"

_DRAFT = "https://json-schema.org/draft/2020-12/schema"
_MAX_TEXT = 200_000


def _object(properties: dict[str, Any], *required: str, closed: bool = True) -> dict[str, Any]:
    schema: dict[str, Any] = {"$schema": _DRAFT, "type": "object", "properties": properties,
                              "required": list(required)}
    if closed:
        schema["additionalProperties"] = False
    return schema


def _string(max_length: int = _MAX_TEXT, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "maxLength": max_length, **extra}


_ISSUE = {"type": "object", "additionalProperties": False,
          "required": ["line", "severity", "code", "message"],
          "properties": {"line": {"type": "integer", "minimum": 1},
                         "severity": {"enum": ["error", "warning", "info"]},
                         "code": {"type": "string"}, "message": {"type": "string"}}}

#: capability name → description, input and output JSON Schema (draft 2020-12).
OFFLINE_CAPABILITIES: dict[str, dict[str, Any]] = {
    "echo": {
        "description": "Return the parameters as given.",
        "input_schema": _object({"text": {}}, closed=False),
        "output_schema": _object({"echo": {"type": "object"}}, "echo"),
    },
    "math.evaluate": {
        "description": "Evaluate an arithmetic expression: numbers, + - * / // % **, "
                       "parentheses, pi, e, tau, abs, round, min, max, sqrt, log.",
        "input_schema": _object({"expression": _string(skills.MAX_EXPRESSION, minLength=1)},
                                "expression"),
        "output_schema": _object({"value": {"type": "number"}}, "value"),
    },
    "text.summarize": {
        "description": "Extractive summary: the sentences whose words are most frequent.",
        "input_schema": _object({"text": _string(),
                                 "max_sentences": {"type": "integer", "minimum": 1,
                                                   "maximum": 100, "default": 3}}, "text"),
        "output_schema": _object({"summary": {"type": "string"},
                                  "sentences": {"type": "array", "items": {"type": "string"}}},
                                 "summary", "sentences"),
    },
    "code.review.python": {
        "description": "Static review of Python code: syntax errors, risky and unclear code.",
        "input_schema": _object({"code": _string()}, "code"),
        "output_schema": _object({"issues": {"type": "array", "items": _ISSUE},
                                  "score": {"type": "integer", "minimum": 0, "maximum": 100},
                                  "summary": {"type": "string"}}, "issues", "score", "summary"),
    },
    "code.run.python": {
        "description": "Run Python code in a subprocess limited in time, memory, file size and "
                       "processes, in a temporary directory; returns its output.",
        "input_schema": _object({"code": _string(skills.MAX_CODE_BYTES),
                                 "stdin": _string(1024 * 1024),
                                 "timeout": {"type": "number", "exclusiveMinimum": 0,
                                             "maximum": skills.MAX_TIMEOUT, "default": 2}},
                                "code"),
        "output_schema": _object({"stdout": {"type": "string"}, "stderr": {"type": "string"},
                                  "exit_code": {"type": "integer"},
                                  "timed_out": {"type": "boolean"},
                                  "duration_ms": {"type": "number", "minimum": 0}},
                                 "stdout", "stderr", "exit_code", "timed_out", "duration_ms"),
    },
    "code.generate.python": {
        "description": "Generate a documented Python function from a short specification "
                       "(fibonacci, factorial, primes, reverse a string, sum of a list, fizzbuzz; "
                       "otherwise a stub).",
        "input_schema": _object({"spec": _string(10_000, minLength=1)}, "spec"),
        "output_schema": _object({"code": {"type": "string"}, "language": {"const": "python"},
                                  "intent": {"type": "string"}}, "code", "language"),
    },
    "text.debate": {
        "description": "One argument for or against a topic, for debates run offline.",
        "input_schema": _object({"topic": _string(1000, minLength=1),
                                 "position": {"enum": ["for", "against"], "default": "for"},
                                 "round": {"type": "integer", "minimum": 1, "maximum": 1000,
                                           "default": 1},
                                 "history": {"type": "array", "maxItems": 1000}}, "topic"),
        "output_schema": _object({"argument": {"type": "string"},
                                  "stance": {"enum": ["for", "against"]},
                                  "confidence": {"type": "number", "minimum": 0, "maximum": 1}},
                                 "argument", "stance", "confidence"),
    },
    "vote": {
        "description": "Choose one option: the one sharing most words with the question; ties "
                       "broken by a stable hash of question, voter and option.",
        "input_schema": _object({"question": _string(10_000),
                                 "options": {"type": "array", "minItems": 1, "maxItems": 100,
                                             "items": _string(1000)},
                                 "voter": _string(200)}, "question", "options"),
        "output_schema": _object({"choice": {"type": "string"}, "reason": {"type": "string"}},
                                 "choice", "reason"),
    },
}


def estimate_tokens(value: Any) -> int:
    """Whitespace-separated words in the strings of ``value``; one per number, key or null.

    Iterative, so any nesting is counted without touching the recursion limit.
    """
    tokens = 0
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            tokens += len(item.split())
        elif isinstance(item, dict):
            tokens += len(item)
            pending.extend(item.values())
        elif isinstance(item, list | tuple):
            pending.extend(item)
        else:
            tokens += 1
    return tokens


# --- parameters ----------------------------------------------------------------------------

def _text(params: dict[str, Any], name: str, default: str | None = None,
          max_length: int = _MAX_TEXT) -> str:
    value = params.get(name, default)
    if not isinstance(value, str):
        raise InvalidInput(f"{name!r} {'must be a string' if name in params else 'is required'}")
    if len(value) > max_length:
        raise InvalidInput(f"{name!r} is longer than {max_length} characters")
    return value


def _integer(params: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = params.get(name, default)
    if type(value) is not int or not low <= value <= high:
        raise InvalidInput(f"{name!r} must be an integer from {low} to {high}")
    return value


def _number(params: dict[str, Any], name: str, default: float, high: float) -> float:
    value = params.get(name, default)
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value <= high:
        raise InvalidInput(f"{name!r} must be a number above 0 and at most {high}")
    return float(value)


def _list(params: dict[str, Any], name: str, max_items: int = 1000) -> list[Any]:
    value = params.get(name, [])
    if not isinstance(value, list) or len(value) > max_items:
        raise InvalidInput(f"{name!r} must be a list of at most {max_items} items")
    return value


# --- skills: parameters → (progress line, output) -------------------------------------------

_Skill = Callable[[dict[str, Any]], Awaitable[tuple[str, dict[str, Any]]]]


async def _echo(params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return f"echoing {len(params)} parameter(s)", {"echo": dict(params)}


async def _evaluate(params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    value = skills.evaluate(_text(params, "expression", max_length=skills.MAX_EXPRESSION))
    return f"value = {value}", {"value": value}


async def _summarize(params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    text = _text(params, "text")
    limit = _integer(params, "max_sentences", 3, 1, 100)
    output = await asyncio.to_thread(skills.summarize, text, limit)
    return f"kept {len(output['sentences'])} sentence(s)", output


async def _review(params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    output = await asyncio.to_thread(skills.review_python, _text(params, "code"))
    return f"{output['summary']}; score {output['score']}", output


async def _run(params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    code = _text(params, "code", max_length=skills.MAX_CODE_BYTES)
    output = await skills.run_python(code, stdin=_text(params, "stdin", "", 1024 * 1024),
                                     timeout=_number(params, "timeout", 2.0, skills.MAX_TIMEOUT))
    state = "timed out" if output["timed_out"] else f"exit code {output['exit_code']}"
    return f"{state} after {output['duration_ms']} ms", output


async def _generate(params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    output = skills.generate_python(_text(params, "spec", max_length=10_000))
    return f"generated {output['intent']} ({len(output['code'].splitlines())} lines)", output


async def _debate(params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    position = params.get("position", "for")
    if position not in ("for", "against"):
        raise InvalidInput("'position' must be 'for' or 'against'")
    output = skills.debate(_text(params, "topic", max_length=1000), position,
                           _integer(params, "round", 1, 1, 1000), _list(params, "history"))
    return f"arguing {position}", output


async def _vote(params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    options = _list(params, "options", 100)
    if not options or not all(isinstance(option, str) and len(option) <= 1000
                              for option in options):
        raise InvalidInput("'options' must be a non-empty list of strings of up to 1000 "
                           "characters")
    output = skills.vote(_text(params, "question", max_length=10_000), options,
                         _text(params, "voter", "", 200))
    return f"voted {output['choice']!r}", output


_SKILLS: dict[str, _Skill] = {
    "echo": _echo, "math.evaluate": _evaluate, "text.summarize": _summarize,
    "code.review.python": _review, "code.run.python": _run, "code.generate.python": _generate,
    "text.debate": _debate, "vote": _vote,
}


class OfflineBackend(Backend):
    """Deterministic skills in-process; no network, no API key, no model download."""

    type: ClassVar[str] = "offline"
    default_model = DEFAULT_MODEL

    def usage(self, given: Any, produced: Any) -> Usage:
        return self.price(Usage(input_tokens=estimate_tokens(given),
                                output_tokens=estimate_tokens(produced)))

    async def execute(self, task: Task, context: dict[str, Any] | None = None
                      ) -> AsyncGenerator[StreamItem, None]:
        """Run the skill named by ``task.capability``: progress chunks, then the Completion."""
        skill = _SKILLS.get(task.capability)
        if skill is None:
            raise UnknownCapability(f"the offline backend has no capability {task.capability!r}; "
                                    f"it has {', '.join(_SKILLS)}")
        yield Chunk(f"{task.capability}: started\n")
        progress, output = await skill(task.parameters)
        yield Chunk(f"{task.capability}: {progress}\n")
        yield Completion(output=output, usage=self.usage(task.parameters, output),
                         model=self.model)

    async def chat(self, messages: Sequence[ChatMessage]) -> AsyncIterator[StreamItem]:
        """Reply with ``offline:`` and a two-sentence summary of the last user message."""
        said = next((message.get("content") for message in reversed(messages)
                     if isinstance(message, dict) and message.get("role") == "user"), "")
        said = said if isinstance(said, str) else json.dumps(said, default=str)
        sentences = skills.summarize(said[:_MAX_TEXT], 2)["sentences"] or ["(nothing to say)"]
        reply = "offline: " + " ".join(sentences)
        yield Chunk("offline:")
        for sentence in sentences:
            yield Chunk(" " + sentence)
        yield Completion(output=reply, usage=self.usage(said, reply), model=self.model)
