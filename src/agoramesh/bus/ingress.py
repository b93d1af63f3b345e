"""Plain-JSON ingress: requests from the standard ``nats`` CLI and other plain clients.

``nats req agora.cap.echo '{"text": "hi"}'`` sends bare JSON, not an envelope.
Such a request carries no signature; it is authenticated by the NATS server
(the connection's nkey user) and accepted only on subscriptions whose policy
allows it. Replies to JSON requests are JSON. An envelope always starts with a
msgpack map byte (0x80-0x8f, 0xde, 0xdf); JSON objects start with ``{``.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any

from agoramesh.errors import MalformedEnvelope, OversizeEnvelope, error_to_wire

__all__ = ("IngressPolicy", "decode_json", "encode_json", "encode_json_error", "looks_like_json")

_WHITESPACE = b" \t\r\n"


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
        value = json.loads(data.decode("utf-8"))  # strict: no encoded surrogates
    except UnicodeDecodeError as exc:
        raise MalformedEnvelope(f"request is not valid UTF-8: {exc.reason}") from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, int digit limit
        raise MalformedEnvelope(f"request is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise MalformedEnvelope(f"request must be a JSON object, got {type(value).__name__}")
    return value


def encode_json(value: Any) -> bytes:
    """Compact UTF-8 JSON; values JSON cannot hold (bytes, ...) become strings.

    A lone surrogate (legal in a JSON string escape) is written back as its
    ``\\uXXXX`` escape, which keeps the output valid UTF-8 and valid JSON.
    """
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=_fallback)
    return text.encode("utf-8", "backslashreplace")


def encode_json_error(error: BaseException) -> bytes:
    """The JSON error reply: ``{"error": {"type": ..., "message": ...}}``."""
    return encode_json({"error": error_to_wire(error)})


def _fallback(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return bytes(value).hex()
    return str(value)
