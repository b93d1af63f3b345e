"""``agora.task.<capability>``: any node auctions a task on a client's behalf (M-3.1, M-6).

Every agent subscribes to ``agora.task.>`` in one queue group, so each task
is taken by exactly one node, which runs the contract-net auction with its
own directory and answers with the negotiated result. A client needs no
directory, no auction logic, not even agoramesh::

    nats req agora.task.math.evaluate '{"expression": "6*7"}'

Plain JSON (where the node's policy allows) gets a JSON ``task_response``;
a signed ``task_request`` gets a signed one. A signed request with
``"stream": true`` also receives the auction's progress as ``progress``
envelopes and the winner's output as ``task_chunk`` envelopes, in order,
before the ``task_response``. Failures (no bidder, every bidder declined,
timeout, bad task) are error replies, and so is a requester the node's access
policy does not let ``submit`` the capability (``AccessDenied``). The node
auctions as itself: bidders' policies see this node as the initiator.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING

from agoramesh.bus.bus import Delivery
from agoramesh.errors import AgoraError, InvalidInput
from agoramesh.nodes.task import Task
from agoramesh.protocols.contract_net import Progress
from agoramesh.security.acl import Action

if TYPE_CHECKING:
    from agoramesh.nodes.node import AgentNode

__all__ = ("QUEUE", "TaskDesk")

#: The queue group every node joins on ``agora.task.>``.
QUEUE = "agora.task"


class TaskDesk:
    """Takes external tasks for a node and auctions them."""

    def __init__(self, node: AgentNode) -> None:
        self.node = node

    async def handle(self, delivery: Delivery) -> None:
        node = self.node
        capability = node.bus.subjects.capability_of(delivery.subject)
        body = dict(delivery.body) if isinstance(delivery.body, dict) else delivery.body
        stream = bool(isinstance(body, dict) and body.pop("stream", False)) and \
            not delivery.is_json and delivery.can_respond
        try:
            if capability is None or "*" in capability or ">" in capability:
                raise InvalidInput(f"{delivery.subject} names no single capability")
            denied = node.check_access(delivery.sender, capability, Action.SUBMIT)
            if denied is not None:
                raise denied
            task = Task.from_dict(body, task_type=capability)
        except AgoraError as exc:
            await delivery.respond_error(exc)
            return
        timeout = node.config.task_timeout
        if task.deadline is not None:
            timeout = max(0.001, min(timeout, task.deadline - time.time()))
        forward: asyncio.Queue[Progress | None] = asyncio.Queue()
        forwarder = asyncio.ensure_future(self._forward(delivery, forward)) if stream else None
        try:
            outcome = await node.auctioneer.run(
                task, timeout=timeout, stream=stream,
                progress=forward.put_nowait if stream else None)
        except AgoraError as exc:
            await self._finish(forwarder, forward)
            await delivery.respond_error(exc)
            return
        except BaseException:
            if forwarder is not None:
                forwarder.cancel()
            raise
        await self._finish(forwarder, forward)
        await delivery.respond("task_response", outcome.result.as_dict())

    async def _finish(self, forwarder: asyncio.Future[None] | None,
                      forward: asyncio.Queue[Progress | None]) -> None:
        if forwarder is None:
            return
        forward.put_nowait(None)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(forwarder, timeout=2.0)

    async def _forward(self, delivery: Delivery, forward: asyncio.Queue[Progress | None]
                       ) -> None:
        """Progress and chunks to the requester, in the order they happened."""
        while (item := await forward.get()) is not None:
            kind, body = "progress", item.as_dict()
            if item.event == "chunk":
                kind = "task_chunk"
                body = {"task_id": item.task_id, "text": item.detail.get("text", ""),
                        "agent_id": item.detail.get("agent")}
            try:
                await delivery.respond(kind, body)
            except AgoraError:
                return
