"""The NATS services protocol (``$SRV.PING/INFO/STATS``), so ``nats micro ls`` sees agents.

Requests on ``$SRV.*`` are empty and unauthenticated by design of that
protocol; they are answered with plain JSON and carry no secrets: the agent's
name, id, version, capabilities as endpoints, and request counters.

An endpoint counts every task for its capability: served, FAILED, and
refused (by the bus's admission on ``agora.cap.<capability>`` or by the
access policy), the last two as errors; ``last_error`` is the latest error's
``"<type>: <message>"``, as the reply's ``Nats-Service-Error`` header says it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

__all__ = ("EndpointStats", "ServiceInfo", "instance_subject", "service_name",
           "service_subjects")

_NAME_CHARS = re.compile(r"[^A-Za-z0-9_-]")


def service_name(name: str) -> str:
    """A micro-protocol service name (``[A-Za-z0-9_-]+``) for an agent name."""
    return _NAME_CHARS.sub("-", name) or "agent"


def service_subjects(name: str, service_id: str) -> list[str]:
    """Every ``$SRV`` subject one service instance answers on."""
    return [subject for verb in ("PING", "INFO", "STATS")
            for subject in (f"$SRV.{verb}", f"$SRV.{verb}.{name}",
                            instance_subject(verb, name, service_id))]


def instance_subject(verb: str, name: str, service_id: str) -> str:
    """The ``$SRV`` subject only one service instance answers ``verb`` on."""
    return f"$SRV.{verb}.{name}.{service_id}"


@dataclass(slots=True)
class EndpointStats:
    """Counters of one endpoint (capability), in the protocol's units (nanoseconds).

    A refused request counts as a request and an error that took no time.
    """

    num_requests: int = 0
    num_errors: int = 0
    last_error: str = ""
    processing_time: int = 0

    def record(self, elapsed_ns: int, error: str | None = None) -> None:
        self.num_requests += 1
        self.processing_time += elapsed_ns
        if error:
            self.num_errors += 1
            self.last_error = error[:500]


@dataclass(slots=True)
class ServiceInfo:
    """What the ``$SRV`` responders report about one agent."""

    name: str
    id: str
    version: str
    description: str
    endpoints: dict[str, str]  # capability → subject
    metadata: dict[str, str] = field(default_factory=dict)
    stats: dict[str, EndpointStats] = field(default_factory=dict)
    started: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    def _base(self, kind: str) -> dict[str, Any]:
        return {"type": f"io.nats.micro.v1.{kind}_response", "name": self.name, "id": self.id,
                "version": self.version, "metadata": self.metadata}

    def answer(self, subject: str) -> dict[str, Any]:
        verb = subject.split(".")[1]
        if verb == "PING":
            return self._base("ping")
        if verb == "INFO":
            return {**self._base("info"), "description": self.description,
                    "endpoints": [{"name": service_name(cap), "subject": subj,
                                   "queue_group": subj, "metadata": {"capability": cap}}
                                  for cap, subj in self.endpoints.items()]}
        endpoints = []
        for cap, subj in self.endpoints.items():
            stats = self.stats.setdefault(cap, EndpointStats())
            average = stats.processing_time // stats.num_requests if stats.num_requests else 0
            endpoints.append({"name": service_name(cap), "subject": subj, "queue_group": subj,
                              "num_requests": stats.num_requests, "num_errors": stats.num_errors,
                              "last_error": stats.last_error,
                              "processing_time": stats.processing_time,
                              "average_processing_time": average})
        return {**self._base("stats"), "started": self.started, "endpoints": endpoints}
