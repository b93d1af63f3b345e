"""Plain-JSON ingress: requests from the standard ``nats`` CLI and other plain clients.

``nats req agora.cap.echo '{"text": "hi"}'`` sends bare JSON, not an envelope.
Such a request carries no signature; it is authenticated by the NATS server
(the connection's nkey user) and accepted only on subscriptions whose policy
allows it. Replies to JSON requests are JSON. An envelope always starts with a
msgpack map byte (0x80-0x8f, 0xde, 0xdf); JSON objects start with ``{``.

Only strict RFC 8259 JSON passes, both ways: a request with ``NaN``,
``Infinity`` or a number too large for a float (``1e400``) is malformed, and
so is one nesting arrays and objects more than :data:`MAX_JSON_DEPTH` levels
deep (measured without recursion, before parsing, so no request can exhaust
the stack of the node or of the code its handlers run). A reply that JSON
cannot carry is refused with a ``ValueError`` rather than written as
``NaN``.
"""

from __future__ import annotations

import json
import math
import re
from enum import StrEnum
from itertools import accumulate
from typing import Any

from agoramesh.errors import MalformedEnvelope, OversizeEnvelope, error_to_wire

__all__ = ("MAX_JSON_DEPTH", "IngressPolicy", "decode_json", "encode_json", "encode_json_error",
           "looks_like_json")

#: How deep arrays and objects may nest in a JSON request; the request object is level 1.
MAX_JSON_DEPTH = 64

_WHITESPACE = b" \t\r\n"
# A JSON string. Every byte of a multi-byte UTF-8 character is >= 0x80, so the bytes
# can be scanned as they are: none is a quote, a backslash or a bracket.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(byte for byte in range(256) if byte not in b"[]{}")
_STEP = tuple(1 if byte in b"[{" else -1 if byte in b"]}" else 0 for byte in range(256))


class IngressPolicy(StrEnum):
    """Whether a subscription takes plain-JSON requests."""

    DENY = "deny"
    ALLOW = "allow"


def looks_like_json(data: bytes) -> bool:
    """True if ``data`` is meant as a JSON object (first non-blank byte is ``{``)."""
    stripped = data.lstrip(_WHITESPACE)
    return stripped[:1] == b"{"


def decode_json(data: bytes, *, max_bytes: int) -> dict[str, Any]:
    """A JSON object from plain ingress bytes, or MalformedEnvelope with a clear reason."""
    if len(data) > max_bytes:
        raise OversizeEnvelope(f"request of {len(data)} bytes exceeds the {max_bytes}-byte limit")
    try:
        text = data.decode("utf-8")  # strict: no encoded surrogates
    except UnicodeDecodeError as exc:
        raise MalformedEnvelope(f"request is not valid UTF-8: {exc.reason}") from None
    # At most one level per opening bracket: most requests need no scan at all.
    if data.count(b"[") + data.count(b"{") > MAX_JSON_DEPTH:
        depth = _nesting(data)
        if depth > MAX_JSON_DEPTH:
            raise MalformedEnvelope(f"request nests arrays and objects {depth} levels deep; "
                                    f"at most {MAX_JSON_DEPTH} are allowed")
    try:
        value = json.loads(text, parse_float=_finite_float, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, int digit limit, NaN
        raise MalformedEnvelope(f"request is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise MalformedEnvelope(f"request must be a JSON object, got {type(value).__name__}")
    return value


def encode_json(value: Any) -> bytes:
    """Compact UTF-8 JSON; values JSON cannot hold (bytes, ...) become strings.

    A lone surrogate (legal in a JSON string escape) is written back as its
    ``\\uXXXX`` escape, which keeps the output valid UTF-8 and valid JSON.
    Never writes ``NaN`` or ``Infinity`` (not JSON, RFC 8259): a value holding
    one, nested too deeply for the encoder, or with keys JSON cannot have is a
    ``ValueError`` saying so, for the caller to answer with instead.
    """
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False,
                          default=_fallback)
    except (ValueError, TypeError, RecursionError) as exc:
        raise ValueError(f"value cannot be written as JSON (RFC 8259): {exc}") from None
    return text.encode("utf-8", "backslashreplace")


def encode_json_error(error: BaseException) -> bytes:
    """The JSON error reply: ``{"error": {"type": ..., "message": ...}}``."""
    return encode_json({"error": error_to_wire(error)})


def _nesting(data: bytes) -> int:
    """How deep the arrays and objects of JSON ``data`` nest, brackets in strings skipped.

    Iterative and linear; for invalid JSON the answer may be off, but such a
    request is malformed either way.
    """
    brackets = _STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400: json.loads would make it inf
        raise ValueError(f"number {text[:40]} is out of range for a float")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _fallback(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return bytes(value).hex()
    return str(value)
