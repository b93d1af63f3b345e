"""Read nats-server configuration files: the subset compose/nats/*.conf uses.

Maps (``{}``), arrays (``[]``, commas optional), ``key: value``, ``key = value``
or ``key value``, quoted or bare scalars (kept as strings), ``#`` and ``//``
comments. No includes and no variables: ``nats-server -t`` checks the rest.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ("conf_port", "parse_conf")

_TOKEN = re.compile(r'\s+|#[^\n]*|//[^\n]*|"(?:[^"\\]|\\.)*"|[{}\[\],]|[^\s{}\[\],]+')


def _tokens(text: str) -> list[str]:
    return [token for token in _TOKEN.findall(text)
            if token.strip() and not token.startswith(("#", "//"))]


def parse_conf(text: str) -> dict[str, Any]:
    """The configuration as nested dicts and lists of strings."""
    tokens = _tokens(text)
    position = 0

    def value() -> Any:
        nonlocal position
        token = tokens[position]
        position += 1
        if token == "{":
            return block("}")
        if token == "[":
            items = []
            while tokens[position] != "]":
                if tokens[position] != ",":
                    items.append(value())
                else:
                    position += 1
            position += 1
            return items
        return token[1:-1] if token.startswith('"') else token

    def block(end: str | None) -> dict[str, Any]:
        nonlocal position
        conf: dict[str, Any] = {}
        while position < len(tokens) and tokens[position] != end:
            key = tokens[position].rstrip(":=")
            position += 1
            if tokens[position] in (":", "="):
                position += 1
            conf[key] = value()
        position += 1  # past the closing brace
        return conf

    return block(None)


def conf_port(address: str) -> int:
    """The port of ``host:port`` (or of a bare port number)."""
    return int(address.rsplit(":", 1)[-1])
