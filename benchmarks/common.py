"""Helpers the benchmark scripts share (imported as a sibling: run them as scripts)."""

from __future__ import annotations

import logging
import math
from collections import Counter

__all__ = ("Warnings", "WrongAnswer", "percentile")


class WrongAnswer(Exception):
    """A reply that is not the expected result."""


class Warnings(logging.Handler):
    """Counts the runtime's log warnings (shown as a number, not hundreds of lines)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.seen[str(record.msg).split("%")[0].strip()[:60]] += 1


def percentile(values: list[int], q: float) -> float:
    """Nearest-rank percentile of nanosecond samples, in milliseconds (0 for none)."""
    ordered = sorted(values) or [0]
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))] / 1e6
