"""Shared output helpers: JSON for machines, aligned text for people."""

from __future__ import annotations

import sys
from typing import Any

from agoramesh.bus.ingress import encode_json

__all__ = ("emit", "emit_json")


def emit_json(value: Any) -> None:
    sys.stdout.write(encode_json(value).decode() + "\n")
    sys.stdout.flush()


def emit(line: str = "") -> None:
    print(line, flush=True)
