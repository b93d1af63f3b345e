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

While tracing is on, the auction runs in an ``agoramesh.auction`` span, a child of
the requester's (its envelope's ``traceparent``, or a plain-JSON request's header).

The winner's result reached the node in a message, but the node's reply need
not fit in one: plain JSON takes more bytes than msgpack (numbers, binary),
and the reply has its own envelope and headers. A result the reply cannot
carry is answered FAILED, ``ResultTooLarge`` (or ``BackendBadResponse`` for
one plain JSON cannot hold, such as NaN), keeping the winner's ``agent_id``,
time, tokens and cost: the work was done, only its answer is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from typing import TYPE_CHECKING

from agoramesh.bus.bus import Delivery, Reply
from agoramesh.errors import (
    AgoraError,
    BackendBadResponse,
    OversizeEnvelope,
    ResultTooLarge,
    SubjectError,
    TaskError,
    error_to_wire,
)
from agoramesh.nodes.task import Task, TaskResult, TaskStatus
from agoramesh.observability.tracing import SpanKind, span
from agoramesh.protocols.auction.policy import Progress
from agoramesh.security.acl import Action

if TYPE_CHECKING:
    from agoramesh.nodes.node import BaseNode
    from agoramesh.protocols.auction.auctioneer import Auctioneer

__all__ = ("QUEUE", "TaskDesk")

#: The queue group every node joins on ``agora.task.>``.
QUEUE = "agora.task"


class TaskDesk:
    """Takes external tasks for a node and auctions them."""

    def __init__(self, node: BaseNode, auctioneer: Auctioneer) -> None:
        """``node`` runs the checks and answers; ``auctioneer`` runs the auctions."""
        self.node = node
        self.auctioneer = auctioneer

    async def handle(self, delivery: Delivery) -> None:
        node = self.node
        capability = node.bus.subjects.capability_of(delivery.subject)
        body = dict(delivery.body) if isinstance(delivery.body, dict) else delivery.body
        stream = bool(isinstance(body, dict) and body.pop("stream", False)) and \
            not delivery.is_json and delivery.can_respond
        try:
            if capability is None or "*" in capability or ">" in capability:
                raise SubjectError(f"{delivery.subject} names no single capability")
            denied = node.check_access(delivery.sender, capability, Action.SUBMIT)
            if denied is not None:
                raise denied
            task = Task.from_dict(body, capability=capability)
        except AgoraError as exc:
            await delivery.respond_error(exc)
            return
        timeout = node.config.task_timeout
        if task.deadline is not None:
            timeout = max(0.001, min(timeout, task.deadline - time.time()))
        forward: asyncio.Queue[Progress | None] = asyncio.Queue()
        forwarder = asyncio.ensure_future(self._forward(delivery, forward)) if stream else None
        try:
            with span("agoramesh.auction", SpanKind.SERVER, parent=delivery.trace_parent,
                      attributes={"agoramesh.task_id": task.task_id,
                                  "agoramesh.capability": task.capability}):
                outcome = await self.auctioneer.run(
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
        reply = self._prepare(delivery, outcome.result)
        if reply is not None:
            await delivery.send(reply)

    def _prepare(self, delivery: Delivery, result: TaskResult) -> Reply | None:
        """The reply carrying ``result``; a FAILED one if this reply cannot carry it.

        None: nothing to send (no reply subject, or a ``max_bytes`` too small for
        even the failure, a few hundred bytes).
        """
        if not delivery.can_respond:
            return None
        body = result.as_dict()
        name = f"task {result.task_id}" if result.task_id else "the task"
        error: TaskError
        try:
            return delivery.prepare("task_response", body)
        except OversizeEnvelope:
            size = delivery.measure("task_response", body)
            limit = self.node.bus.config.envelope.max_bytes
            error = ResultTooLarge(f"the result of {name} is {size} bytes as a message, over "
                                   f"the {limit}-byte limit")
        except ValueError as exc:  # NaN, say: msgpack carried it, plain JSON cannot
            error = BackendBadResponse(f"the result of {name} cannot be answered in plain "
                                       f"JSON: {exc}")
        self.node.log.warning("could not pass on the result of %s: %s", name, error,
                              extra={"task_id": result.task_id})
        failure = dataclasses.replace(result, status=TaskStatus.FAILED, result=None,
                                      error=error_to_wire(error))
        try:
            return delivery.prepare("task_response", failure.as_dict())
        except OversizeEnvelope as exc:  # a max_bytes too small even for that (128 bytes)
            self.node.log.warning("could not answer %s: %s", name, exc,
                                  extra={"task_id": result.task_id})
            return None

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
