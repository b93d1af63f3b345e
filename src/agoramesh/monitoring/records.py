"""What a :class:`~agoramesh.monitoring.mesh_view.MeshView` keeps and answers with.

One :class:`AgentRecord` per agent heard of (its card, status, cumulative
counts and the samples its rates are computed from), a :class:`MeshEvent`
for each recent task, auction, arrival or departure, and the :class:`Rates`
over the view's window. Plain data: the view decides what goes in.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple

from agoramesh.nodes.card import AgentStatus

__all__ = ("AgentRecord", "MeshEvent", "Presence", "Rates", "Sample")


class Presence(StrEnum):
    LIVE = "live"
    LEFT = "left"  # said bye
    LOST = "lost"  # missed its heartbeats


class Sample(NamedTuple):
    t: float
    tasks: int  # completed + failed, from the status
    auctions: int | None  # run by the agent, every outcome; None before its first telemetry
    bids: int | None  # sent by the agent; None before its first telemetry


@dataclass(frozen=True, slots=True)
class MeshEvent:
    """A task or auction an agent reported, or an agent joining or leaving."""

    ts: float
    kind: str  # task | auction | agent
    agent: str  # the reporting agent's id
    capability: str = ""
    outcome: str = ""  # task/auction outcome, or joined | left | lost
    ms: float | None = None
    task_id: str = ""
    bids: int | None = None
    winner: str | None = None

    def as_dict(self, names: Mapping[str, str]) -> dict[str, Any]:
        data: dict[str, Any] = {"ts": round(self.ts, 3), "kind": self.kind,
                                "agent": self.agent, "agent_name": names.get(self.agent, "")}
        if self.kind != "agent":
            data |= {"capability": self.capability, "task_id": self.task_id, "ms": self.ms}
        data["outcome"] = self.outcome
        if self.kind == "auction":
            data |= {"bids": self.bids, "winner": self.winner,
                     "winner_name": names.get(self.winner or "", "")}
        return data


@dataclass(slots=True)
class AgentRecord:
    """One agent as last heard of."""

    id: str
    first_seen: float
    last_seen: float
    name: str = ""
    type: str = ""
    capabilities: tuple[str, ...] = ()
    has_card: bool = False
    has_telemetry: bool = False
    status: AgentStatus = field(default_factory=AgentStatus)
    interval: float = 1.0  # its heartbeat interval, seconds
    host: str = ""  # the host its own card body named: whose batches speak for it
    server: tuple[str, str] = ("", "")  # (id, name) of the server its telemetry named
    left_at: float | None = None
    lost_reported: bool = False
    auctions: dict[str, int] = field(default_factory=dict)
    bids: dict[str, int] = field(default_factory=dict)
    rejections: dict[str, int] = field(default_factory=dict)
    samples: deque[Sample] = field(default_factory=deque)

    @property
    def label(self) -> str:
        return self.name or self.id[:8] + "…"

    def presence(self, now: float, missed: int) -> Presence:
        if self.left_at is not None:
            return Presence.LEFT
        if now - self.last_seen > missed * self.interval:
            return Presence.LOST
        return Presence.LIVE

    def gone_since(self, missed: int) -> float:
        return self.left_at if self.left_at is not None else (
            self.last_seen + missed * self.interval)

    def sample(self, now: float) -> Sample:
        tasks = self.status.tasks_completed + self.status.tasks_failed
        if not self.has_telemetry:  # unknown is not zero: no jump when the first one comes
            return Sample(now, tasks, None, None)
        return Sample(now, tasks, sum(self.auctions.values()), self.bids.get("bid", 0))

    def as_dict(self, now: float, missed: int) -> dict[str, Any]:
        presence = self.presence(now, missed)
        return {"id": self.id, "name": self.name, "type": self.type,
                "state": self.status.state if presence is Presence.LIVE else str(presence),
                "presence": str(presence), "capabilities": list(self.capabilities),
                "status": self.status.as_dict(), "auctions": dict(self.auctions),
                "bids": dict(self.bids), "rejections": dict(self.rejections),
                "last_seen_s": round(now - self.last_seen, 3)}


@dataclass(frozen=True, slots=True)
class Rates:
    auctions_per_s: float
    tasks_per_s: float
    bids_per_s: float

    def as_dict(self) -> dict[str, float]:
        return {"auctions_per_s": round(self.auctions_per_s, 3),
                "tasks_per_s": round(self.tasks_per_s, 3),
                "bids_per_s": round(self.bids_per_s, 3)}
