"""The durable-job store's counts, for ``agoramesh watch`` and the metrics endpoint.

The job store is not heard but asked: :func:`read_job_queue` reads its
counts (one consumer-info and one stream-info request, bounded); the watcher
hands them to :meth:`~agoramesh.monitoring.mesh_view.MeshView.set_jobs` at
most once a second, and :class:`~agoramesh.monitoring.metrics.MeshCollector`
makes the same reading before each scrape.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agoramesh.bus.jetstream import JetStream
from agoramesh.errors import AgoraError

__all__ = ("JobQueue", "read_job_queue")


@dataclass(frozen=True, slots=True)
class JobQueue:
    """The durable-job store's counts, from its consumer and its result stream."""

    queued: int  # not yet delivered to any node
    running: int  # delivered, not yet acknowledged
    redelivered: int  # delivered more than once, not yet acknowledged
    results: int  # results stored (within their ttl)
    results_bytes: int

    @classmethod
    def from_info(cls, consumer: Mapping[str, Any], results: Mapping[str, Any]) -> JobQueue:
        """From JetStream's consumer info (of the job consumer) and stream info (of the
        result stream)."""
        state = results.get("state")
        state = state if isinstance(state, Mapping) else {}
        return cls(queued=_count(consumer.get("num_pending")),
                   running=_count(consumer.get("num_ack_pending")),
                   redelivered=_count(consumer.get("num_redelivered")),
                   results=_count(state.get("messages")),
                   results_bytes=_count(state.get("bytes")))

    def as_dict(self) -> dict[str, int]:
        return {"queued": self.queued, "running": self.running,
                "redelivered": self.redelivered, "results": self.results,
                "results_bytes": self.results_bytes}


async def read_job_queue(js: JetStream, timeout: float = 1.0) -> JobQueue | None:
    """The job store's counts, or None if JetStream does not answer within ``timeout``
    (none runs, the store is not created yet, a leader is being elected). Never raises
    for the store's sake: an observer carries on without it (the JetStream wrapper raises
    transport failures as AgoraErrors)."""
    try:
        async with asyncio.timeout(timeout):
            consumer = await js.consumer_info()
            results = await js.stream_info(js.names.kv_stream)
    except (AgoraError, TimeoutError, OSError, ValueError):
        return None
    return JobQueue.from_info(consumer, results)


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
