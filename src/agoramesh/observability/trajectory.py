"""Per-agent trajectories: JSON lines of what an agent saw, decided and sent.

One line per event, appended as it happens; each run of the agent begins with
a ``start`` line carrying its id::

    {"ts": 1795000000.120, "agent": "coder", "event": "start", "agent_id": "UAX…"}
    {"ts": 1795000000.123, "agent": "coder", "event": "saw", "type": "cfp",
     "subject": "agora.cfp.code.review.python", "from": "UAB…", "body": {…}}
    {"ts": …, "agent": "coder", "event": "decided", "action": "bid", "auction_id": "…",
     "capability": "code.review.python", "cost": 0.0, "estimated_time": 0.05}
    {"ts": …, "agent": "coder", "event": "sent", "type": "bid", "subject": "_INBOX.…", …}

``saw`` and ``sent`` come from the agent's Bus (every envelope it admitted or
signed); ``decided`` from the protocols (bid or refuse, accept or decline an
award, award an auction, a task's outcome). Bodies larger than
``max_body_bytes`` once encoded are replaced by their size, so a trajectory
stays readable and bounded per line. The file is line-buffered: what was
recorded survives a crash of the process.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import IO, Any

__all__ = ("Trajectory", "read_trajectory")


def _default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return {"bytes": len(value)}
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return repr(value)


def _dumps(value: Any) -> str:
    return json.dumps(value, default=_default, separators=(",", ":"))


class Trajectory:
    """An append-only JSON-lines file for one agent."""

    def __init__(self, path: Path, *, agent: str, agent_id: str = "",
                 max_body_bytes: int = 2048) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.agent = agent
        self.agent_id = agent_id
        self.max_body_bytes = max_body_bytes
        self._file: IO[str] | None = path.open("a", buffering=1, encoding="utf-8")
        self.record("start", {"agent_id": agent_id or None})  # one per run of the agent

    def record(self, event: str, fields: dict[str, Any]) -> None:
        """Append one event; after :meth:`close` this does nothing."""
        if self._file is None:
            return
        line: dict[str, Any] = {"ts": round(time.time(), 6), "agent": self.agent,
                                "event": event}
        body = ""
        for key, value in fields.items():
            if value is None:
                continue
            if key == "body":  # encoded once: its size decides whether it is written
                body = _dumps(value)
                if len(body) > self.max_body_bytes:
                    line["body_bytes"] = len(body)
                    body = ""
                continue
            line[key] = value
        encoded = _dumps(line)
        if body:
            encoded = f'{encoded[:-1]},"body":{body}}}'
        self._file.write(encoded + "\n")

    def decided(self, action: str, **fields: Any) -> None:
        self.record("decided", {"action": action, **fields})

    def close(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            file.close()


def read_trajectory(path: Path) -> list[dict[str, Any]]:
    """Every event of a trajectory file, in order (for tests and tools)."""
    with path.open(encoding="utf-8") as file:
        return [json.loads(line) for line in file if line.strip()]
