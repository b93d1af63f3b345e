"""What arrives at an agent, and who may ask for it: its direct subject, the NATS
services protocol, its capability subjects' handlers, and its access policy.

:class:`Reception` is one agent's: tasks, cancels and card requests on
``agora.agent.<id>`` (the protocols add awards and ballots to
``direct_handlers``), ``$SRV.PING|INFO|STATS`` answers, the access check every
request the agent acts on passes first (security/acl.py), and the
``$SRV.STATS`` counters of refusals and denials.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from agoramesh.bus.bus import Delivery
from agoramesh.bus.ingress import encode_json
from agoramesh.bus.message import Message
from agoramesh.errors import (
    AccessDenied,
    AgoraError,
    EnvelopeError,
    InvalidRequest,
    UnknownCapability,
    error_to_wire,
)
from agoramesh.nodes.capability import Capability
from agoramesh.nodes.execution import described, readable_task_id
from agoramesh.nodes.services import EndpointStats
from agoramesh.security.acl import JSON_PRINCIPAL, Action

if TYPE_CHECKING:
    from agoramesh.nodes.node import BaseNode

__all__ = ("DirectHandler", "Reception")

DirectHandler = Callable[[Delivery], Awaitable[None]]


class Reception:
    """The door of one agent: what it answers, to whom, and what it refused."""

    def __init__(self, node: BaseNode) -> None:
        self.node = node
        #: Handlers of the direct subject by envelope type (the protocols add theirs).
        self.direct_handlers: dict[str, DirectHandler] = {
            "task_request": self._on_direct_task, "task_cancel": self._on_cancel,
            "card_request": self._on_card_request,
        }

    async def on_service(self, msg: Message) -> None:
        if msg.reply:
            with contextlib.suppress(AgoraError):
                await self.node.bus.publish_raw(msg.reply,
                                           encode_json(self.node.service.answer(msg.subject)))

    def check_access(self, principal: str | None, capability: str,
                     action: Action) -> AccessDenied | None:
        """None if the access policy lets ``principal`` do ``action``, else the denial (counted).

        ``principal``: the requester's verified agent id; None for plain JSON.
        An agent never denies itself.
        """
        policy = self.node.config.access
        if policy.is_open or principal == self.node.agent_id:
            return None
        reason = policy.decide(principal or JSON_PRINCIPAL, capability, action)
        if reason is None:
            return None
        self.node.metrics.denied(capability, action)
        if self.node.trajectory is not None:
            self.node.trajectory.decided("deny", capability=capability, request=str(action),
                                    principal=principal or JSON_PRINCIPAL, reason=reason)
        self.node.log.info("denied %s on %s: %s", action, capability, reason)
        return AccessDenied(f"agent {self.node.config.name} refuses {action} on {capability}: "
                            f"{reason}")

    def endpoint(self, capability: str) -> EndpointStats:
        """The ``$SRV.STATS`` counters of ``capability``."""
        return self.node.service.stats.setdefault(capability, EndpointStats())

    def refusal_counter(self, capability: str) -> Callable[[Message, EnvelopeError], None]:
        """Counts a request the bus refused on ``agora.cap.<capability>`` in ``$SRV.STATS``."""
        def refused(msg: Message, error: EnvelopeError) -> None:
            self.endpoint(capability).record(0, described(error_to_wire(error)))
        return refused

    async def deny(self, delivery: Delivery, capability: str, denied: AccessDenied) -> None:
        """Answer (and count, in ``$SRV.STATS``) a task the access policy refuses."""
        self.endpoint(capability).record(0, described(error_to_wire(denied)))
        await delivery.respond_error(denied)

    def task_handler(self, capability: Capability) -> DirectHandler:
        async def handle(delivery: Delivery) -> None:
            denied = self.check_access(delivery.sender, capability.name, Action.EXECUTE)
            if denied is not None:
                await self.deny(delivery, capability.name, denied)
                return
            await self.node.serve(delivery, capability)
        return handle

    async def on_direct(self, delivery: Delivery) -> None:
        handler = self.direct_handlers.get(delivery.type or "")
        if handler is None:
            await delivery.respond_error(InvalidRequest(
                f"agent {self.node.config.name} does not handle {delivery.type!r}"))
            return
        await handler(delivery)

    async def _on_direct_task(self, delivery: Delivery) -> None:
        wanted = delivery.body.get("task_type") if isinstance(delivery.body, dict) else None
        capability = self.node.capabilities.get(str(wanted))
        if capability is None:
            await self.node.tasks.reply(delivery, self.node.tasks.failure(
                readable_task_id(delivery.body), UnknownCapability(
                    f"agent {self.node.config.name} has no capability {wanted!r}; it offers "
                    f"{', '.join(self.node.capabilities)}"), 0.0))
            return
        denied = self.check_access(delivery.sender, capability.name, Action.EXECUTE)
        if denied is not None:
            await self.deny(delivery, capability.name, denied)
            return
        await self.node.serve(delivery, capability)

    async def _on_card_request(self, delivery: Delivery) -> None:
        await delivery.respond("card", self.node.presence.body(), public=True)  # as hello says

    async def _on_cancel(self, delivery: Delivery) -> None:
        task_id = str(delivery.body.get("task_id")) if isinstance(delivery.body, dict) else ""
        running = self.node.tasks.running.get(task_id)
        if running is not None:
            denied = self.check_access(delivery.sender, running[2], Action.CANCEL)
            if denied is not None:
                await delivery.respond_error(denied)
                return
        cancelled = self.node.tasks.cancel(task_id, delivery.sender)
        await delivery.respond("task_cancel", {"task_id": task_id, "cancelled": cancelled})
