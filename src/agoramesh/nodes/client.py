"""Asking agents for work: direct tasks over ``agora.cap.<capability>``, streamed or not."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from agoramesh.bus.bus import ERROR_TYPE, Bus
from agoramesh.bus.envelope import Envelope
from agoramesh.errors import AgoraError, BusTimeout, NoResponders, error_from_wire
from agoramesh.nodes.task import Chunk, Task, TaskResult
from agoramesh.observability.tracing import SpanKind, span

__all__ = ("cancel_task", "stream_task", "submit_task")


async def submit_task(bus: Bus, task: Task, *, timeout: float = 30.0,
                      agent_id: str | None = None, auction: bool = False) -> TaskResult:
    """Send ``task`` to one capable agent (queue group), or to ``agent_id`` directly.

    ``auction``: to the mesh's task desk (``agora.task.<capability>``) instead, where
    one node auctions it for us and answers with the winner's result.
    """
    if auction:
        subject = bus.subjects.task(task.capability)
    else:
        subject = bus.subjects.agent(agent_id) if agent_id else bus.subjects.cap(task.capability)
    with span("agoramesh.submit", SpanKind.CLIENT,
              attributes={"agoramesh.task_id": task.task_id,
                          "agoramesh.capability": task.capability}):
        reply = await bus.request(subject, "task_request", task.as_dict(), timeout=timeout,
                                  to=agent_id or "*")
    return TaskResult.from_dict(reply.body)


async def cancel_task(bus: Bus, agent_id: str, task_id: str, *, timeout: float = 2.0) -> bool:
    """Ask ``agent_id`` to cancel ``task_id``; True if it was running there and is cancelled."""
    reply = await bus.request(bus.subjects.agent(agent_id), "task_cancel", {"task_id": task_id},
                              to=agent_id, timeout=timeout)
    return bool(reply.body.get("cancelled"))


async def stream_task(bus: Bus, task: Task, *, timeout: float = 30.0
                      ) -> AsyncIterator[Chunk | TaskResult]:
    """Chunks as the agent produces them, then its TaskResult.

    Leaving the loop early cancels the task on the agent (best effort).
    """
    arrived: asyncio.Queue[Envelope | None] = asyncio.Queue()  # None: no responders
    inbox, listener = await bus.inbox(arrived.put_nowait)
    agent: str | None = None
    finished = False
    try:
        body: dict[str, Any] = {**task.as_dict(), "stream": True}
        await bus.publish(bus.subjects.cap(task.capability), "task_request", body, reply=inbox,
                          ttl_ms=bus.ttl_for(timeout))
        async with asyncio.timeout(timeout):
            while True:
                envelope = await arrived.get()
                if envelope is None:
                    finished = True
                    raise NoResponders(f"no agent offers {task.capability}")
                agent = envelope.sender
                if envelope.type == "task_chunk":
                    yield Chunk(str(envelope.body.get("text", "")))
                elif envelope.type == "task_response":
                    finished = True
                    yield TaskResult.from_dict(envelope.body)
                    return
                elif envelope.type == ERROR_TYPE:
                    finished = True
                    raise error_from_wire(envelope.body)
    except TimeoutError:
        raise BusTimeout(f"no result for task {task.task_id} within {timeout:g}s") from None
    finally:
        await listener.stop()
        if agent and not finished:
            with contextlib.suppress(AgoraError):
                await cancel_task(bus, agent, task.task_id, timeout=1.0)
