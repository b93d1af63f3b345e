"""The Bus: authenticated messaging over NATS for one agent identity.

Outgoing messages are sealed with the agent's identity (msgpack, then an
Ed25519 signature, or for an envelope addressed to one agent a MAC under the
pair key, PROTOCOL.md §6), bodies addressed to one agent encrypted for it
first (``BusConfig.encrypt``, §20); incoming ones pass the agent's
:class:`Guard`, which opens boxes addressed to us, before a handler sees them.
Handlers receive a :class:`~agoramesh.bus.replies.Delivery` and answer with
``respond`` (replies and their error headers: :mod:`agoramesh.bus.replies`).

Every wait is bounded: connecting (``connect_timeout``), requests and
scatter-gather (their ``timeout``), handlers at close (``drain_timeout``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription

from agoramesh.bus.connection import Connection
from agoramesh.bus.e2e import E2EKeys
from agoramesh.bus.envelope import BROADCAST, Envelope, Guard, looks_like_envelope, seal
from agoramesh.bus.identity import Identity
from agoramesh.bus.ingress import (
    IngressPolicy,
    decode_json,
    encode_json,
    encode_json_error,
    looks_like_json,
)
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
from agoramesh.bus.subjects import Subjects, validate_subject
from agoramesh.config import BusConfig
from agoramesh.errors import (
    AgoraError,
    BusTimeout,
    EnvelopeError,
    IngressDenied,
    MalformedEnvelope,
    NoResponders,
    NotConnected,
    OversizeEnvelope,
    PermissionDenied,
    RejectReason,
    error_from_wire,
    error_to_wire,
)

__all__ = ("ERROR_CODE_HEADER", "ERROR_HEADER", "ERROR_TYPE", "MAX_ERROR_DESCRIPTION", "Bus",
           "Delivery", "Handler", "OnRejected", "Reply", "Subscription", "error_headers",
           "headers_size", "reply_error")

log = logging.getLogger("agoramesh.bus")

#: Called with a message a subscription refused and why (``Bus.subscribe(on_rejected=)``).
OnRejected = Callable[[Msg, EnvelopeError], None]


class Subscription:
    """A Bus subscription; handlers already running finish (bounded) on ``stop``."""

    def __init__(self, bus: Bus, subject: str, handler: Handler, *, queue: str | None,
                 ingress: IngressPolicy, concurrency: int, verify: bool = True,
                 on_rejected: OnRejected | None = None) -> None:
        self.bus = bus
        self.subject = subject
        self.queue = queue
        self.handler = handler
        self.ingress = ingress
        self.verify = verify
        #: Called for every message this subscription refuses (counted by the guard).
        self.on_rejected = on_rejected
        # Concurrency 1 runs handlers inline in nats-py's callback task, in
        # arrival order and without a task per message (under bursts, a task per
        # message queues every handler behind the whole loop). unsubscribe()
        # cancels that task, so stop() first lets the running handler finish.
        self._slots = asyncio.Semaphore(concurrency) if concurrency > 1 else None
        self._tasks: set[asyncio.Task[None]] = set()
        self._inline: asyncio.Future[None] | None = None  # the inline handler running now
        self._stopping = False
        self._nats: NatsSubscription | None = None

    async def _on_message(self, msg: Msg) -> None:
        delivery = await self.bus._admit(msg, self.ingress, verify=self.verify,
                                         on_rejected=self.on_rejected)
        if delivery is None:
            return
        if self._slots is None:
            if self._stopping:
                return  # arrived while stop() waits for the running handler
            running = self._inline = asyncio.get_running_loop().create_future()
            try:
                await self._run(delivery)
            finally:
                running.set_result(None)
                self._inline = None
            return
        await self._slots.acquire()
        task = asyncio.create_task(self._run(delivery))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        assert self._slots is not None
        self._slots.release()

    async def _run(self, delivery: Delivery) -> None:
        try:
            await self.handler(delivery)
        except NotConnected as exc:  # the bus closed under a running handler: nothing to tell
            log.debug("handler for %s stopped: %s", self.subject, exc)
        except Exception as exc:
            log.warning("handler for %s failed: %s: %s", self.subject, type(exc).__name__, exc,
                        exc_info=not isinstance(exc, AgoraError))
            with contextlib.suppress(AgoraError, nats.errors.Error):
                await delivery.respond_error(exc)

    async def stop(self, timeout: float | None = None) -> None:
        """Unsubscribe, then wait up to ``timeout`` for running handlers, cancelling the rest."""
        wait = self.bus.config.drain_timeout if timeout is None else timeout
        self._stopping = True
        if self._inline is not None:  # unsubscribing would cancel it: let it finish first
            await asyncio.wait({self._inline}, timeout=wait)
        if self._nats is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._nats.unsubscribe()
            self._nats = None
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=wait)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        self.bus._subscriptions.discard(self)


class Bus:
    """Signed publish, request, scatter-gather and subscribe for one identity."""

    def __init__(self, identity: Identity, config: BusConfig, *,
                 connection: Connection | None = None) -> None:
        """``connection``: share it (agents hosted in one process) instead of opening one."""
        self.identity = identity
        self.config = config
        self._connection = connection or Connection(config, identity)
        self._shared = connection is not None
        #: Plain NATS subscriptions of ours (reply inbox, ``$SRV``, auction inboxes):
        #: ended with a connection of our own, unsubscribed from a shared one.
        self._raw: list[NatsSubscription] = []
        self.subjects = Subjects(config.prefix)
        #: Our encryption keys: every boxed body addressed to us is opened on admission.
        self.e2e = E2EKeys(identity)
        self.guard = Guard(config.envelope, agent_id=identity.agent_id, opener=self.e2e.open,
                           pair_key=self.e2e.pair_key)
        self._box = self.e2e.seal_body if config.encrypt else None
        #: Directed envelopes are MACed with the pair key, unless every one is to be signed.
        self._pair_key = None if config.envelope.sign_all else self.e2e.pair_key
        #: Our requests' replies: one wildcard subscription, a future per request.
        self._reply_prefix = ""
        self._replies: dict[str, asyncio.Future[Envelope | None]] = {}
        self._reply_ids = itertools.count()
        self.sent: Counter[str] = Counter()
        self.received: Counter[str] = Counter()
        #: Called with ("sent" | "saw", fields) for every envelope; None costs nothing.
        #: A node's trajectory recorder (observability/trajectory.py) sets it.
        self.trace: Callable[[str, dict[str, Any]], None] | None = None
        #: The server's permission refusals (newest last, at most 100).
        self.permission_denials: list[str] = []
        self._denials_seen = 0
        self._denials_mark = 0  # _denials_seen when the first unconfirmed subscription was made
        self._unconfirmed: list[Subscription] = []
        self._nc: NatsClient | None = None
        self._closing = False
        self._subscriptions: set[Subscription] = set()

    @property
    def agent_id(self) -> str:
        return self.identity.agent_id

    @property
    def rejections(self) -> Counter[RejectReason]:
        return self.guard.rejections

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

    @property
    def connection(self) -> Connection:
        """The NATS connection this bus uses: its own, or one it shares."""
        return self._connection

    async def start(self) -> None:
        """Connect (or join the shared connection); NotConnected within ``connect_timeout``
        if no server answers."""
        self._nc = await self._connection.acquire(self, self._denied)
        self._reply_prefix = ""  # a new connection: our reply subscription is made on it anew

    def _denied(self, text: str) -> None:
        """The server refused a publish or subscribe on our connection."""
        self.permission_denials.append(text)
        self._denials_seen += 1
        del self.permission_denials[:-100]

    def new_inbox(self) -> str:
        """A fresh reply subject of ours, ``_INBOX.<agent-id>.<nuid>``."""
        return self._connection.new_inbox(self.agent_id)

    async def subscribe_raw(self, subject: str, cb: Callable[[Msg], Awaitable[None]], *,
                            queue: str = "") -> NatsSubscription:
        """A plain NATS subscription (no admission), ended when this bus closes."""
        subscription = await self.nats.subscribe(subject, queue=queue, cb=cb)
        self._raw.append(subscription)
        return subscription

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
            for future in self._replies.values():  # requests still waiting fail now
                if not future.done():
                    future.set_exception(NotConnected("the bus closed before the reply came"))
        raw, self._raw = self._raw, []
        if self._shared:  # the connection outlives us: take our interest off it
            for subscription in raw:
                with contextlib.suppress(nats.errors.Error):
                    await subscription.unsubscribe()
        await self._connection.release(self, budget)

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
             cid: str | None = None, ttl_ms: int | None = None, reply: str = "") -> bytes:
        """Envelope bytes for ``subject``, whatever their size; nothing is counted or traced."""
        return seal(self.identity, type=type, subject=subject, body=body, to=to, cid=cid,
                    reply=reply, ttl_ms=ttl_ms or self.config.envelope.default_ttl_ms,
                    box=self._box, pair_key=self._pair_key)

    def seal(self, subject: str, type: str, body: Any, *, to: str = BROADCAST,
             cid: str | None = None, ttl_ms: int | None = None, reply: str = "",
             headers: Mapping[str, str] | None = None) -> bytes:
        """Envelope bytes for ``subject`` (to be published with reply subject ``reply``);
        OversizeEnvelope if they would be rejected.

        A body addressed to one agent is encrypted for it (``config.encrypt``) and
        MACed with the key we share with it (unless ``sign_all``); everything else
        is signed. ``trace`` still records the plaintext. ``headers``: those it will
        be sent with, which count towards ``max_bytes`` (servers count them in
        ``max_payload``).
        """
        wire = self.wire(subject, type, body, to=to, cid=cid, ttl_ms=ttl_ms, reply=reply)
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
                      reply: str = "", headers: dict[str, str] | None = None) -> None:
        """Seal and publish one envelope (with NATS ``headers``, if given)."""
        wire = self.seal(subject, type, body, to=to, cid=cid, ttl_ms=ttl_ms, reply=reply,
                         headers=headers)
        await self.publish_raw(subject, wire, reply=reply, headers=headers)

    async def publish_raw(self, subject: str, payload: bytes, *, reply: str = "",
                          headers: dict[str, str] | None = None) -> None:
        """Publish bytes as they are (plain-JSON replies, relays), with ``headers`` if given."""
        try:
            await self.nats.publish(subject, payload, reply=reply, headers=headers)
        except nats.errors.ConnectionClosedError as exc:
            raise NotConnected(f"cannot publish on {subject}: connection closed") from exc
        except nats.errors.BadSubjectError as exc:
            validate_subject(subject)
            raise exc

    def ttl_for(self, timeout: float) -> int:
        """An envelope ttl (ms) that outlives a wait of ``timeout`` seconds, within policy."""
        return min(max(1, int(timeout * 1000)), self.config.envelope.max_ttl_ms)

    async def _request(self, subject: str, payload: bytes, wait: float) -> Msg:
        """One NATS request, its failures mapped to ours."""
        try:
            return await self.nats.request(subject, payload, timeout=wait)
        except nats.errors.NoRespondersError:
            raise NoResponders(f"no agent is listening on {subject}") from None
        except nats.errors.TimeoutError:
            raise BusTimeout(f"no reply on {subject} within {wait:g}s") from None
        except nats.errors.ConnectionClosedError as exc:
            raise NotConnected(f"cannot request on {subject}: connection closed") from exc

    async def request(self, subject: str, type: str, body: Any, *, to: str = BROADCAST,
                      cid: str | None = None, timeout: float | None = None) -> Envelope:
        """Send an authenticated request and return the verified reply envelope.

        The request names the reply subject it is sent with (its ``reply``
        field), so a copy published with another one is refused by the responder.
        An ``error`` reply is raised as the error it carries (see errors.py).
        """
        wait = timeout or self.config.request_timeout
        inbox, future = await self._reply_to()
        try:
            wire = self.seal(subject, type, body, to=to, cid=cid, ttl_ms=self.ttl_for(wait),
                             reply=inbox)
            await self.publish_raw(subject, wire, reply=inbox)
            try:
                async with asyncio.timeout(wait):
                    reply = await future
            except TimeoutError:
                raise BusTimeout(f"no reply on {subject} within {wait:g}s") from None
        finally:
            self._replies.pop(inbox, None)
        if reply is None:
            raise NoResponders(f"no agent is listening on {subject}")
        if reply.type == ERROR_TYPE:
            raise error_from_wire(reply.body)
        return reply

    async def _reply_to(self) -> tuple[str, asyncio.Future[Envelope | None]]:
        """A fresh reply subject under our one reply subscription, and the future of its
        reply: the first admitted envelope (None: the server said nobody listens)."""
        if not self._reply_prefix:
            self._reply_prefix = prefix = f"{self.new_inbox()}."
            try:  # its SUB is queued before the first request's PUB: the server sees it first
                await self.subscribe_raw(f"{prefix}*", self._on_reply)
            except BaseException:
                self._reply_prefix = ""
                raise
        inbox = f"{self._reply_prefix}{next(self._reply_ids):x}"
        future: asyncio.Future[Envelope | None] = asyncio.get_running_loop().create_future()
        self._replies[inbox] = future
        return inbox, future

    async def _on_reply(self, msg: Msg) -> None:
        """Admit a reply before it answers its request: anything refused (junk, a forgery,
        a reply made for another inbox, counted) leaves the request waiting for its own."""
        future = self._replies.get(msg.subject)
        if future is None or future.done():
            return
        with contextlib.suppress(EnvelopeError):
            future.set_result(self.take_reply(msg))

    def take_reply(self, msg: Msg) -> Envelope | None:
        """The admitted envelope a reply ``msg`` carries (counted as seen), or None for the
        server's "no responders" status (unsigned, as NATS sends it); EnvelopeError
        (counted) for anything else."""
        if not msg.data and msg.headers and msg.headers.get("Status") == "503":
            return None
        reply = self.guard.admit(msg.data, msg.subject, msg.reply)
        self.saw(reply)
        return reply

    async def request_json(self, subject: str, body: dict[str, Any], *,
                           timeout: float | None = None) -> Any:
        """A plain-JSON request, as the ``nats`` CLI sends it; returns the decoded JSON reply."""
        wait = timeout or self.config.request_timeout
        msg = await self._request(subject, encode_json(body), wait)
        return decode_json(msg.data, max_bytes=self.config.envelope.max_bytes)

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
        nc = self.nats
        inbox = self.new_inbox()
        replies: list[Envelope] = []
        waiting = None if expected_from is None else set(expected_from)
        enough = asyncio.Event()

        def check() -> None:
            if expected is None and waiting is None:
                return  # collect until the timeout
            if (expected is None or len(replies) >= expected) and not waiting:
                enough.set()

        async def collect(msg: Msg) -> None:
            try:
                envelope = self.guard.admit(msg.data, msg.subject, msg.reply, verify=verify)
            except EnvelopeError:
                return
            self.saw(envelope)
            replies.append(envelope)
            if each is not None:
                each(envelope)
            if waiting is not None:
                waiting.discard(envelope.sender)
            check()

        check()

        sub = await nc.subscribe(inbox, cb=collect)
        try:
            await self.publish(subject, type, body, to=to, cid=cid,
                               ttl_ms=self.ttl_for(timeout), reply=inbox)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await enough.wait()
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        return replies

    # -- receiving -----------------------------------------------------------------

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
        nc = self.nats
        if not self._unconfirmed:
            self._denials_mark = self._denials_seen
        subscription._nats = await nc.subscribe(subject, queue=queue or "",
                                                cb=subscription._on_message)
        self._subscriptions.add(subscription)
        self._unconfirmed.append(subscription)
        if confirm:
            await self.confirm()
        return subscription

    async def confirm(self) -> None:
        """Return once our server has every subscription made so far (one flush for all);
        PermissionDenied (those refused stopped) if it refused any."""
        # The mark is this batch's: a subscribe made while we flush starts the next batch.
        pending, mark, self._unconfirmed = self._unconfirmed, self._denials_mark, []
        if not pending:
            return
        try:
            await self.flush()
        except BusTimeout:
            subjects = ", ".join(subscription.subject for subscription in pending[:3])
            raise BusTimeout(f"server did not confirm the subscription to {subjects}") from None
        seen = self._denials_seen - mark
        if not seen:
            return
        denials = self.permission_denials[-seen:]
        # The server answers a forbidden SUB with -ERR before our PING's PONG.
        refused = [subscription for subscription in pending
                   if any(f'subscription to "{subscription.subject.lower()}"' in text
                          for text in denials)]
        for subscription in refused:
            await subscription.stop(0)
        if refused:
            raise PermissionDenied(f"the server refused the subscription to "
                                   f"{refused[0].subject}: this member's credentials do not "
                                   f"allow it")

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
            await self._connection.flush(wait)
        except nats.errors.TimeoutError:
            raise BusTimeout(f"the server did not answer a flush within {wait}s") from None

    async def _admit(self, msg: Msg, ingress: IngressPolicy, *, verify: bool = True,
                     on_rejected: OnRejected | None = None) -> Delivery | None:
        """The delivery for ``msg``, or None after counting (and answering) a rejection."""
        data = msg.data
        if looks_like_envelope(data):
            try:
                envelope = self.guard.admit(data, msg.subject, msg.reply, verify=verify)
            except EnvelopeError as error:
                if on_rejected is not None:
                    on_rejected(msg, error)
                await self._answer_rejection(msg, error, as_json=False)
                return None
            self.saw(envelope)
            return Delivery(self, msg, envelope, envelope.body)
        policy_error: EnvelopeError
        if not looks_like_json(data):
            policy_error = MalformedEnvelope("payload is neither an envelope nor a JSON object")
        elif ingress is not IngressPolicy.ALLOW:
            policy_error = IngressDenied(f"plain JSON is not accepted on {msg.subject}; "
                                         f"send a signed envelope")
        else:
            try:
                body = decode_json(data, max_bytes=self.config.envelope.max_bytes)
            except EnvelopeError as error:
                policy_error = error
            else:
                self.received["json"] += 1
                if self.trace is not None:
                    self.trace("saw", {"subject": msg.subject, "type": "json", "body": body})
                return Delivery(self, msg, None, body)
        self.guard.reject(policy_error)
        if on_rejected is not None:
            on_rejected(msg, policy_error)
        await self._answer_rejection(msg, policy_error, as_json=True)
        return None

    async def _answer_rejection(self, msg: Msg, error: EnvelopeError, *, as_json: bool) -> None:
        """Tell a requester why, so it fails fast instead of timing out.

        Replays are not answered: the original was, and answering again would
        let anyone replay an envelope to make us talk. Expired requests are
        answered (``ExpiredEnvelope``): with clocks apart, their requester may
        still be waiting. The answer carries the error headers.
        """
        if not msg.reply or self._nc is None or error.reason is RejectReason.REPLAYED:
            return
        wire_error = error_to_wire(error)
        headers = error_headers(wire_error["type"], wire_error["message"])
        with contextlib.suppress(nats.errors.Error, EnvelopeError):  # an answer over max_bytes
            payload = (encode_json_error(error) if as_json else
                       self.seal(msg.reply, ERROR_TYPE, wire_error, headers=headers))
            await self._nc.publish(msg.reply, payload, headers=headers)
