"""``${…}`` references in strings: one syntax and one substitution rule for every caller.

Workflows (:mod:`.workflow.expr`: ``${steps.NAME.output.FIELD}``,
``${inputs.NAME}``) and collaborations (:mod:`.collaboration.request`:
``${topic}``, ``${previous.output.FIELD}``, ``${steps.NAME.output.FIELD}``)
share everything here; each brings only its namespace, as a :class:`Syntax`.

Syntax
    ``${…}`` is a reference: dot-separated segments, none empty or holding
    white space, ``$``, ``{`` or ``}`` (spaces around the whole are ignored:
    ``${ topic }``). ``$${`` writes a literal ``${``. A ``${`` without its
    ``}``, or with another ``{`` before it, is an error, as is a reference
    the namespace does not know.

Substitution (:meth:`Syntax.render`)
    A string that is exactly one reference becomes the referenced value with
    its type (a list stays a list); references inside a longer string are
    rendered as text — strings as they are, anything else as compact JSON
    (``[{"line":4}]``, ``true``, ``null``). Mappings, lists and tuples are
    rendered item by item, anything else is kept.

Errors
    Malformed text raises the namespace's error type with one line;
    :func:`follow`, reading a path inside a value, raises ``LookupError``
    naming what is missing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

__all__ = ("Syntax", "describe", "follow", "stringify")

R = TypeVar("R")

# `$${` is an escaped `${`; `${…}` a reference; a lone `${` is unterminated.
_TOKEN = re.compile(r"\$\$\{|\$\{([^{}]*)\}|\$\{")
_SEGMENT = re.compile(r"[^.\s${}]+")
_SHOWN = 80  # characters of a malformed text shown in an error


def _shown(text: str) -> str:
    """``text`` as an error shows it: as written when short and printable, else quoted."""
    return text if len(text) <= _SHOWN and text.isprintable() else f"{text!r:.{_SHOWN}}"


@dataclass(frozen=True, slots=True)
class Syntax(Generic[R]):
    """One namespace of references.

    ``read(segments, text)`` makes the namespace's reference (never a plain
    ``str``) from the segments of one well-formed ``${…}`` (``text`` is it as
    written, spaces trimmed), or returns None when it names nothing the
    namespace knows; ``error`` is the type raised for malformed text,
    ``usage`` ends that message (``use ${topic} or …``).
    """

    read: Callable[[list[str], str], R | None]
    error: type[ValueError]
    usage: str

    def parse(self, inner: str) -> R:
        """The reference written ``${inner}``; ``error`` when it is malformed or unknown."""
        segments = inner.strip().split(".")
        text = "${" + inner.strip() + "}"
        if all(_SEGMENT.fullmatch(segment) for segment in segments):
            reference = self.read(segments, text)
            if reference is not None:
                return reference
        raise self.error(f"bad reference {_shown('${' + inner + '}')}: {self.usage}")

    def tokens(self, text: str) -> Iterator[str | R]:
        """Literal text and references, in order; ``error`` for a malformed ``${``."""
        position = 0
        for match in _TOKEN.finditer(text):
            if match.start() > position:
                yield text[position:match.start()]
            if match.group(0) == "$${":
                yield "${"
            elif match.group(1) is None:
                raise self.error(f"unterminated or nested reference in {text!r:.{_SHOWN}}")
            else:
                yield self.parse(match.group(1))
            position = match.end()
        if position < len(text):
            yield text[position:]

    def references(self, value: Any) -> list[R]:
        """Every reference in the strings of ``value`` (nested lists and mappings too)."""
        if isinstance(value, str):
            return [token for token in self.tokens(value) if not isinstance(token, str)]
        if isinstance(value, Mapping):
            return [ref for item in value.values() for ref in self.references(item)]
        if isinstance(value, list | tuple):
            return [ref for item in value for ref in self.references(item)]
        return []

    def render(self, value: Any, lookup: Callable[[R], Any]) -> Any:
        """``value`` with every reference replaced by ``lookup(reference)`` (module doc)."""
        if isinstance(value, str):
            tokens = list(self.tokens(value))
            if len(tokens) == 1 and not isinstance(tokens[0], str):
                return lookup(tokens[0])  # exactly one reference: keep the value's type
            return "".join(token if isinstance(token, str) else stringify(lookup(token))
                           for token in tokens)
        if isinstance(value, Mapping):
            return {key: self.render(item, lookup) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [self.render(item, lookup) for item in value]
        return value


def stringify(value: Any) -> str:
    """A referenced value inside a longer string: a string as it is, else compact JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def describe(value: Any) -> str:
    """``null``, ``a list``, ``a str``…: what a value is, for messages."""
    return "null" if value is None else f"a {type(value).__name__}"


def follow(value: Any, path: Sequence[str], *, text: str, root: str) -> Any:
    """The value at ``path`` inside ``value`` (a number indexes a list).

    LookupError names what is missing; ``text`` is the reference as written,
    ``root`` what ``value`` is called in the message (``output``, an input).
    """
    for depth, segment in enumerate(path):
        where = ".".join(path[:depth]) or root
        if isinstance(value, Mapping):
            if segment not in value:
                fields = ", ".join(map(str, list(value)[:10])) or "none"
                raise LookupError(f"{text}: no field {segment!r} in {where} (fields: {fields})")
            value = value[segment]
        elif isinstance(value, list) and segment.isdigit():
            if int(segment) >= len(value):
                raise LookupError(f"{text}: {where} has only {len(value)} item(s)")
            value = value[int(segment)]
        else:
            raise LookupError(f"{text}: {where} is {describe(value)}, "
                              f"not an object with field {segment!r}")
    return value
