"""Shared output helpers: JSON for machines, aligned text for people."""

from __future__ import annotations

import json
import sys
from typing import Any

from agoramesh.bus.ingress import encode_json
from agoramesh.errors import ConfigError

__all__ = ("clip", "emit", "emit_json", "json_object", "warn")


def json_object(text: str, what: str) -> dict[str, Any]:
    """A JSON object given on the command line as ``what``, or a one-line ConfigError."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{what} is not valid JSON: {exc.msg} at column {exc.colno}"
                          ) from None
    if not isinstance(value, dict):
        raise ConfigError(f"{what} must be a JSON object, not {type(value).__name__}")
    return value


def clip(value: Any, width: int) -> str:
    """``value`` on one line (whitespace collapsed, non-strings as JSON), at most ``width``."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False,
                                                           default=str)
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 1] + "…"


def emit_json(value: Any) -> None:
    sys.stdout.write(encode_json(value).decode() + "\n")
    sys.stdout.flush()


def emit(line: str = "") -> None:
    print(line, flush=True)


def warn(line: str) -> None:
    """One line to stderr: warnings a user must see even when stdout is parsed."""
    print(line, file=sys.stderr, flush=True)
