"""A JSON-lines record of one simulated episode: every step, message, negotiation and LLM call.

One line per event, appended as it happens::

    {"ts": 1795000000.120, "event": "episode_start", "seed": 3, "agents": ["agent_1", …]}
    {"ts": 1795000000.123, "event": "step", "agent_id": "agent_1", "step": 1,
     "action": "GOTO 2 3", "status": "SUCCESS", "message": "…", "result": {…}}
    {"ts": …, "event": "episode_end", "success": true, "steps": 42}

A record's ``agent_id`` (and the ``agent_id`` keyword of the ``record_*``
methods that write it) is the agent's sim id, its name in the simulator: the
field keeps the name the recorder interface has always given it.

The file is line-buffered and every line is written under a lock, so a crash
loses at most the line being written and agents recording from several
threads never interleave; :func:`read_trajectory` skips a torn last line.
Anything that is not JSON (a Path, an object) is written as its ``repr`` rather
than refused: a recorder must never be the reason an episode fails.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import Counter
from enum import Enum
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal, Self

from agoramesh.errors import AgoraError, InvalidWorldCall

__all__ = ("TrajectoryRecorder", "event_counts", "read_trajectory")

_RESERVED = ("ts", "event")
_MAX_DEPTH = 32  # deeper (or cyclic) structures are written as repr


def _jsonable(value: Any, depth: int = 0) -> Any:
    """``value`` as plain JSON types: enums by value, tuples and sets as lists, the rest repr."""
    if isinstance(value, Enum):
        value = value.value
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)  # NaN is not JSON
    if depth >= _MAX_DEPTH:
        return repr(value)
    if isinstance(value, dict):
        return {_key(k): _jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, set | frozenset):
        items = [_jsonable(v, depth + 1) for v in value]
        try:
            return sorted(items)  # a stable order when the members allow one
        except TypeError:
            return items
    if isinstance(value, list | tuple):
        return [_jsonable(v, depth + 1) for v in value]
    return repr(value)


def _key(key: Any) -> str:
    if isinstance(key, Enum):
        key = key.value
    return key if isinstance(key, str) else repr(key)


class TrajectoryRecorder:
    """Appends one episode's events to a JSON-lines file; safe to share between threads."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._lines = 0
        self._file: IO[str] | None = self.path.open("a", buffering=1, encoding="utf-8")

    @property
    def lines(self) -> int:
        """How many lines this recorder has written (not counting what the file held before)."""
        return self._lines

    @property
    def closed(self) -> bool:
        return self._file is None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the file; closing again does nothing."""
        with self._lock:
            file, self._file = self._file, None
        if file is not None:
            file.close()

    def record(self, event: str, /, **fields: Any) -> None:
        """Append one ``event`` line; the keys ``ts`` and ``event`` are the recorder's own."""
        line = _jsonable({"ts": 0, "event": event, **fields})
        line["ts"], line["event"] = round(time.time(), 3), str(event)
        encoded = json.dumps(line, separators=(",", ":")) + "\n"
        with self._lock:
            if self._file is None:
                raise AgoraError(f"trajectory {self.path} is closed")
            self._file.write(encoded)
            self._lines += 1

    def start_episode(self, **info: Any) -> None:
        self.record("episode_start", **info)

    def record_step(self, *, agent_id: str, step: int, action: str, status: Any, message: str,
                    result: dict[str, Any] | None) -> None:
        self.record("step", agent_id=agent_id, step=step, action=action, status=status,
                    message=message, result=result)

    def record_message(self, *, agent_id: str, direction: Literal["sent", "received"],
                       message: dict[str, Any]) -> None:
        if direction not in ("sent", "received"):
            raise InvalidWorldCall(f"direction must be 'sent' or 'received', got {direction!r:.40}")
        self.record("message", agent_id=agent_id, direction=direction, message=message)

    def record_negotiation(self, *, agent_id: str, result: dict[str, Any]) -> None:
        self.record("negotiation", agent_id=agent_id, result=result)

    def record_llm_interaction(self, **fields: Any) -> None:
        """One prompt and its answer; LLM agents pass ``task_index``, ``prompt``, ``response``,
        ``tokens_used``, ``response_time_ms``, ``extracted_action`` and whatever else they have."""
        self.record("llm", **fields)

    def end_episode(self, **summary: Any) -> None:
        self.record("episode_end", **summary)


def read_trajectory(path: str | Path) -> list[dict[str, Any]]:
    """Every event of a trajectory, in order; a torn last line (a crash mid-write) is skipped."""
    text = Path(path).read_text(encoding="utf-8")
    lines = text.split("\n")
    torn = lines.pop()  # "" when the file ends with a newline, as every whole line does
    records: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise AgoraError(f"{path}:{number}: not a JSON line") from None
        if not isinstance(record, dict):
            raise AgoraError(f"{path}:{number}: not a JSON object")
        records.append(record)
    return records if not torn.strip() else records + _whole(torn)


def _whole(line: str) -> list[dict[str, Any]]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return []
    return [record] if isinstance(record, dict) else []


def event_counts(records: list[dict[str, Any]]) -> dict[str, int]:
    """How many records of each event, e.g. ``{"step": 40, "message": 6}``."""
    return dict(Counter(str(record.get("event")) for record in records))
