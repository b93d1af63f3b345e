"""W3C trace context on the bus: the ``traceparent`` a body or a NATS header carries.

A map body MAY carry the key ``traceparent`` (PROTOCOL.md §5): the W3C
traceparent of the span that sent it, covered by the envelope's tag like the
rest of the body. The Bus adds it when it seals, and only while a trace source
is installed (:func:`install`, by ``agoramesh.observability.tracing``): with
tracing off nothing is computed or added. Admission takes it out of the body
before any handler sees it (``Guard.admit``); a plain-JSON request carries it as
the ``traceparent`` NATS header instead (§11). A value that is not a valid
traceparent is ignored (and counted by the guard), never an error.

The bus knows only the format; spans, providers and contexts are the
observability layer's.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final

__all__ = ("TRACEPARENT", "TraceSource", "current", "format_traceparent", "install",
           "parse_traceparent", "remembered", "valid_traceparent")

#: The body key (and NATS header name) that carries the trace context.
TRACEPARENT: Final = "traceparent"
#: version 00: ``00-<32 hex trace id>-<16 hex span id>-<2 hex flags>``, lowercase, 55 chars.
_FORMAT: Final = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_FLAGS: Final = tuple(f"{value:02x}" for value in range(256))
_FLAG_VALUES: Final = {text: value for value, text in enumerate(_FLAGS)}
#: How many valid traceparents :func:`parse_traceparent` remembers before it starts over.
_REMEMBERED: Final = 256

#: Returns the traceparent of the span current in this context, or None outside one.
TraceSource = Callable[[], str | None]

_source: TraceSource | None = None
#: Valid traceparents lately parsed, by value: the one admission checks is the one the
#: handler's span is then started from, parsed once for both.
_parsed: dict[str, tuple[int, int, int]] = {}


def install(source: TraceSource | None) -> None:
    """Make the Bus add ``source()``'s traceparent to the map bodies it seals (None: stop)."""
    global _source
    _source = source


def current() -> TraceSource | None:
    """The installed trace source; None while tracing is off (the Bus then adds nothing)."""
    return _source


def format_traceparent(trace_id: int, span_id: int, flags: int) -> str:
    """The version-00 traceparent of a span context (ids as integers, in range)."""
    # %-formatting: a fifth faster than an f-string of the same (this runs once a traced send).
    return "00-%032x-%016x-%s" % (trace_id, span_id, _FLAGS[flags & 0xff])  # noqa: UP031


#: (trace id, span id, flags) of a valid traceparent lately parsed, else None: the
#: lookup :func:`parse_traceparent` starts with, for callers that go on to it on None.
remembered: Final[Callable[[str], tuple[int, int, int] | None]] = _parsed.get


def parse_traceparent(value: object) -> tuple[int, int, int] | None:
    """(trace id, span id, flags) of a valid version-00 traceparent, None for anything else
    (another type or version, upper case, an all-zero id, extra characters)."""
    if type(value) is not str:
        return None
    known = _parsed.get(value)
    if known is not None:
        return known
    match = _FORMAT.fullmatch(value) if len(value) == 55 else None
    if match is None:
        return None
    trace, span, flags = match.groups()
    trace_id, span_id = int(trace, 16), int(span, 16)
    if not (trace_id and span_id):
        return None
    if len(_parsed) >= _REMEMBERED:
        _parsed.clear()
    parsed = _parsed[value] = (trace_id, span_id, _FLAG_VALUES[flags])
    return parsed


def valid_traceparent(value: object) -> bool:
    return parse_traceparent(value) is not None
