"""The Bus: authenticated messaging over NATS for one agent identity.

Outgoing messages are sealed with the agent's identity (msgpack, then an
Ed25519 signature, or for an envelope addressed to one agent a MAC under the
pair key, PROTOCOL.md §6), bodies addressed to one agent encrypted for it
first (``BusConfig.encrypt``, §20); incoming ones pass the agent's
:class:`~agoramesh.bus.admission.Guard`, which opens boxes addressed to us,
before a handler sees them. Handlers receive a
:class:`~agoramesh.bus.replies.Delivery` and answer with ``respond`` (replies
and their error headers: :mod:`agoramesh.bus.replies`). Requests and their
replies are :mod:`agoramesh.bus.requests`'s; subscriptions, the admission of
what they receive and their confirmation, :mod:`agoramesh.bus.subscription`'s.

For the code above it the Bus is the one door to nats-py (docs/ARCHITECTURE.md,
"Layers"): what fails comes out as agoramesh's errors (``NotConnected``,
``BusTimeout``, ``NoResponders``, ``BusError``), and plain subscriptions
(:meth:`Bus.listen`) hand over :class:`~agoramesh.bus.message.Message` objects.

Every wait is bounded: connecting (``connect_timeout``), requests and
scatter-gather (their ``timeout``), handlers at close (``drain_timeout``).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from typing import Any

import nats.errors
from nats.aio.client import Client as NatsClient

from agoramesh.bus.admission import Guard
from agoramesh.bus.connection import Connection, bus_error
from agoramesh.bus.e2e import E2EKeys
from agoramesh.bus.envelope import BROADCAST, Envelope, seal
from agoramesh.bus.identity import Identity
from agoramesh.bus.ingress import IngressPolicy
from agoramesh.bus.message import Message, MessageHandler
from agoramesh.bus.replies import (
    ERROR_CODE_HEADER,
    ERROR_HEADER,
    ERROR_TYPE,
    MAX_ERROR_DESCRIPTION,
    Delivery,
    Handler,
    Reply,
    error_headers,
    headers_size,
    reply_error,
)
from agoramesh.bus.requests import Requests
from agoramesh.bus.subjects import Subjects, validate_subject
from agoramesh.bus.subscription import (
    Confirmations,
    Listener,
    OnRejected,
    Subscription,
    nats_subscribe,
)
from agoramesh.bus.tracecontext import TRACEPARENT, current
from agoramesh.config import BusConfig
from agoramesh.errors import BusTimeout, NotConnected, OversizeEnvelope

__all__ = ("ERROR_CODE_HEADER", "ERROR_HEADER", "ERROR_TYPE", "MAX_ERROR_DESCRIPTION", "Bus",
           "Delivery", "Handler", "Reply", "error_headers", "headers_size", "reply_error")


class Bus:
    """Signed publish, request, scatter-gather and subscribe for one identity."""

    def __init__(self, identity: Identity, config: BusConfig, *,
                 connection: Connection | None = None) -> None:
        """``connection``: share it (agents hosted in one process) instead of opening one."""
        self.identity = identity
        #: Our agent id (the identity's public key): an attribute, read on every message.
        self.agent_id = identity.agent_id
        self.config = config
        #: The NATS connection this bus uses: its own, or one it shares.
        self.connection = connection or Connection(config, identity)
        self._shared = connection is not None
        #: Plain NATS subscriptions of ours (reply inbox, ``$SRV``, auction inboxes):
        #: ended with a connection of our own, unsubscribed from a shared one.
        self._listeners: set[Listener] = set()
        self.subjects = Subjects(config.prefix)
        #: Our encryption keys: every boxed body addressed to us is opened on admission.
        self.e2e = E2EKeys(identity)
        self.guard = Guard(config.envelope, agent_id=identity.agent_id, opener=self.e2e.open,
                           pair_key=self.e2e.pair_key)
        #: Envelopes refused, by reason (the guard's counts).
        self.rejections = self.guard.rejections
        self._box = self.e2e.seal_body if config.encrypt else None
        #: Directed envelopes are MACed with the pair key, unless every one is to be signed.
        self._pair_key = None if config.envelope.sign_all else self.e2e.pair_key
        self._requests = Requests(self)
        self.sent: Counter[str] = Counter()
        self.received: Counter[str] = Counter()
        #: Called with ("sent" | "saw", fields) for every envelope; None costs nothing.
        #: A node's trajectory recorder (observability/trajectory.py) sets it.
        self.trace: Callable[[str, dict[str, Any]], None] | None = None
        self._confirmations = Confirmations()
        #: The server's permission refusals (newest last, at most 100).
        self.permission_denials = self._confirmations.denials
        self._nc: NatsClient | None = None
        self._closing = False
        self._subscriptions: set[Subscription] = set()

    @property
    def nats(self) -> NatsClient:
        if self._nc is None or self._nc.is_closed:
            raise NotConnected("the bus is not connected (call connect first, or it was closed)")
        return self._nc

    @property
    def is_connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    # -- connection ----------------------------------------------------------------

    @classmethod
    async def connect(cls, identity: Identity, config: BusConfig) -> Bus:
        bus = cls(identity, config)
        await bus.start()
        return bus

    async def start(self) -> None:
        """Connect (or join the shared connection); NotConnected within ``connect_timeout``
        if no server answers."""
        self._nc = await self.connection.acquire(self, self._confirmations.denied)
        self._requests.reset()

    def new_inbox(self) -> str:
        """A fresh reply subject of ours, ``_INBOX.<agent-id>.<nuid>``."""
        return self.connection.new_inbox(self.agent_id)

    async def listen(self, subject: str, callback: MessageHandler, *,
                     queue: str = "") -> Listener:
        """A plain NATS subscription (no admission): ``callback`` gets each message on
        ``subject`` as it arrives, until ``stop()`` or this bus closes. Returns at once:
        ``flush()`` (or the next ``confirm()``) waits for the server to have it."""
        return await Listener.open(self, subject, callback, queue)

    async def close(self, timeout: float | None = None) -> None:
        """Stop subscriptions (running handlers get ``timeout``), flush, close. Idempotent.

        Running handlers can still publish (and reply) until their subscription
        has stopped; after that the bus raises NotConnected.
        """
        nc = self._nc
        if nc is None or self._closing:
            return
        self._closing = True
        budget = self.config.drain_timeout if timeout is None else timeout
        try:
            await asyncio.gather(*(subscription.stop(budget)
                                   for subscription in list(self._subscriptions)))
        finally:
            self._nc = None
            self._closing = False
            self._requests.close()
        listeners, self._listeners = self._listeners, set()
        if self._shared:  # the connection outlives us: take our interest off it
            for listener in listeners:
                await listener.stop()
        await self.connection.release(self, budget)

    async def __aenter__(self) -> Bus:
        if self._nc is None:
            await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def saw(self, envelope: Envelope) -> None:
        """Count (and trace) an admitted envelope."""
        self.received[envelope.type] += 1
        if self.trace is not None:
            self.trace("saw", {"subject": envelope.subject, "type": envelope.type,
                               "from": envelope.sender, "id": envelope.id,
                               "cid": envelope.cid, "body": envelope.body})

    # -- sending -------------------------------------------------------------------

    def wire(self, subject: str, type: str, body: Any, *, to: str = BROADCAST,
             cid: str | None = None, ttl_ms: int | None = None, reply: str = "",
             traced: bool = True) -> bytes:
        """Envelope bytes for ``subject``, whatever their size; nothing is counted or traced.

        While tracing is on (a trace source is installed) a map body sent inside a
        span carries that span's ``traceparent`` (PROTOCOL.md §5), unless it has one
        or is not ``traced``: an answer (a reply, a bid), whose receiver is in the
        trace already.
        """
        source = current()
        if (source is not None and traced and isinstance(body, dict)
                and TRACEPARENT not in body):
            traceparent = source()
            if traceparent is not None:
                body = {**body, TRACEPARENT: traceparent}
        return seal(self.identity, type=type, subject=subject, body=body, to=to, cid=cid,
                    reply=reply, ttl_ms=ttl_ms or self.config.envelope.default_ttl_ms,
                    box=self._box, pair_key=self._pair_key)

    def seal(self, subject: str, type: str, body: Any, *, to: str = BROADCAST,
             cid: str | None = None, ttl_ms: int | None = None, reply: str = "",
             headers: Mapping[str, str] | None = None, traced: bool = True) -> bytes:
        """Envelope bytes for ``subject`` (to be published with reply subject ``reply``);
        OversizeEnvelope if they would be rejected.

        A body addressed to one agent is encrypted for it (``config.encrypt``) and
        MACed with the key we share with it (unless ``sign_all``); everything else
        is signed. ``trace`` still records the plaintext. ``headers``: those it will
        be sent with, which count towards ``max_bytes`` (servers count them in
        ``max_payload``). ``traced``: as for :meth:`wire`.
        """
        wire = self.wire(subject, type, body, to=to, cid=cid, ttl_ms=ttl_ms, reply=reply,
                         traced=traced)
        size = len(wire) + headers_size(headers)
        if size > self.config.envelope.max_bytes:
            raise OversizeEnvelope(f"envelope of {size} bytes exceeds the "
                                   f"{self.config.envelope.max_bytes}-byte limit")
        self.sent[type] += 1
        if self.trace is not None:
            self.trace("sent", {"subject": subject, "type": type, "to": to, "cid": cid,
                                "body": body})
        return wire

    async def publish(self, subject: str, type: str, body: Any, *, to: str = BROADCAST,
                      cid: str | None = None, ttl_ms: int | None = None,
                      reply: str = "", headers: dict[str, str] | None = None,
                      traced: bool = True) -> None:
        """Seal and publish one envelope (with NATS ``headers``, if given); ``traced``: as
        for :meth:`wire`."""
        wire = self.seal(subject, type, body, to=to, cid=cid, ttl_ms=ttl_ms, reply=reply,
                         headers=headers, traced=traced)
        await self.publish_raw(subject, wire, reply=reply, headers=headers)

    async def publish_raw(self, subject: str, payload: bytes, *, reply: str = "",
                          headers: dict[str, str] | None = None) -> None:
        """Publish bytes as they are (plain-JSON replies, relays), with ``headers`` if given."""
        try:
            await self.nats.publish(subject, payload, reply=reply, headers=headers)
        except nats.errors.BadSubjectError as exc:
            validate_subject(subject)
            if reply:
                validate_subject(reply)
            raise bus_error(exc, f"publish on {subject}") from exc
        except nats.errors.Error as exc:
            raise bus_error(exc, f"publish on {subject}") from exc

    def ttl_for(self, timeout: float) -> int:
        """An envelope ttl (ms) that outlives a wait of ``timeout`` seconds, within policy."""
        return min(max(1, int(timeout * 1000)), self.config.envelope.max_ttl_ms)

    # -- requests (agoramesh.bus.requests) -----------------------------------------

    async def request(self, subject: str, type: str, body: Any, *, to: str = BROADCAST,
                      cid: str | None = None, timeout: float | None = None) -> Envelope:
        """Send an authenticated request and return the verified reply envelope.

        The request names the reply subject it is sent with (its ``reply``
        field), so a copy published with another one is refused by the responder.
        An ``error`` reply is raised as the error it carries (see errors.py).
        """
        return await self._requests.request(subject, type, body, to=to, cid=cid,
                                            timeout=timeout)

    def take_reply(self, msg: Message) -> Envelope | None:
        """The admitted envelope a reply ``msg`` carries (counted as seen), or None for the
        server's "no responders" status (unsigned, as NATS sends it); EnvelopeError
        (counted) for anything else."""
        return self._requests.take_reply(msg)

    async def inbox(self, callback: Callable[[Envelope | None], object], *,
                    verify: bool = True) -> tuple[str, Listener]:
        """A fresh inbox of ours to publish requests with, and its subscription (``stop()``
        it when done): ``callback`` is called with each admitted reply that arrives there,
        None for the server's "no responders"; anything refused is counted and dropped.
        ``verify=False``: as for :meth:`gather`."""
        return await self._requests.inbox(callback, verify=verify)

    async def request_json(self, subject: str, body: dict[str, Any], *,
                           timeout: float | None = None) -> Any:
        """A plain-JSON request, as the ``nats`` CLI sends it; returns the decoded JSON reply."""
        return await self._requests.request_json(subject, body, timeout=timeout)

    async def gather(self, subject: str, type: str, body: Any, *, timeout: float,
                     expected: int | None = None, expected_from: Collection[str] | None = None,
                     to: str = BROADCAST, cid: str | None = None,
                     verify: bool = True,
                     each: Callable[[Envelope], object] | None = None) -> list[Envelope]:
        """Scatter-gather: publish once, collect replies until enough came or ``timeout``.

        Enough: ``expected`` replies from anyone, and a reply from each agent
        in ``expected_from`` (when given; both when both are). Without either
        it collects until ``timeout``. Returns what arrived (possibly nothing)
        in arrival order, anyone's; never raises on a short count. With
        ``verify=False`` signatures are left for ``guard.confirm`` on the
        replies the caller acts on, and a forged sender can close the gather
        early on ``expected_from``. ``each`` is called with every admitted reply as
        it arrives (a directory learning the mesh need not wait for the deadline).
        """
        return await self._requests.gather(subject, type, body, timeout=timeout,
                                           expected=expected, expected_from=expected_from,
                                           to=to, cid=cid, verify=verify, each=each)

    # -- receiving (agoramesh.bus.subscription) ------------------------------------

    async def subscribe(self, subject: str, handler: Handler, *, queue: str | None = None,
                        ingress: IngressPolicy = IngressPolicy.DENY,
                        concurrency: int = 1, verify: bool = True,
                        on_rejected: OnRejected | None = None,
                        confirm: bool = True) -> Subscription:
        """Deliver admitted messages on ``subject`` (wildcards allowed) to ``handler``.

        Returns once our server has registered the interest (with ``confirm=False``
        at once: :meth:`confirm` then waits for every such subscription in one
        go, as an agent starting with many subjects does). ``concurrency``
        > 1 runs up to that many handlers at once; 1 runs them in arrival
        order. Handler errors are logged and, for requests, sent back to the
        requester as an error reply. ``verify=False`` admits envelopes without
        their signature check (everything else is checked): for messages the
        handler does not act on until a verified one follows, such as calls for
        proposals (an award, verified, is what an agent acts on). ``on_rejected``
        is called with every message the subscription refuses (each is counted
        in ``rejections`` too) and the error it was refused with.
        """
        subscription = Subscription(self, subject, handler, queue=queue, ingress=ingress,
                                    concurrency=concurrency, verify=verify,
                                    on_rejected=on_rejected)
        self._confirmations.opening()
        subscription._nats = await nats_subscribe(self, subject, subscription._on_message,
                                                  queue or "")
        self._subscriptions.add(subscription)
        self._confirmations.opened(subscription)
        if confirm:
            await self.confirm()
        return subscription

    async def confirm(self) -> None:
        """Return once our server has every subscription made so far (one flush for all);
        PermissionDenied (those refused stopped) if it refused any."""
        await self._confirmations.confirm(self.flush)

    async def flush(self, timeout: float | None = None) -> None:
        """Return once our server has processed everything this bus sent before the call.

        Two round trips: nats-py writes a flush's PING straight to the socket,
        ahead of commands (a SUB) still queued for its writer task, so the
        first PONG can come back before the server has seen them; the second
        PING is written after them. BusTimeout if a PONG takes over ``timeout``
        (default: the request timeout).
        """
        wait = max(1, round(timeout or self.config.request_timeout))
        _ = self.nats  # NotConnected once closed
        try:
            await self.connection.flush(wait)
        except nats.errors.TimeoutError:
            raise BusTimeout(f"the server did not answer a flush within {wait}s") from None
        except nats.errors.Error as exc:
            raise bus_error(exc, "flush") from exc
