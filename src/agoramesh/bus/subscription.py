"""A Bus's subscriptions: admitted ones that run handlers, plain ones, and their confirmation.

A :class:`Subscription` admits every message before its handler sees it (an
envelope through the bus's :class:`~agoramesh.bus.admission.Guard`, plain JSON
by its ingress policy) and answers a refused request with an error reply, so
the requester fails fast instead of timing out. A :class:`Listener` is a
plain NATS subscription (reply inboxes, ``$SRV``, stored results): no
admission, its messages handed over as they arrive. Both end with their bus.
:class:`Confirmations` is how ``Bus.confirm`` learns that the server holds a
batch of subscriptions, or which of them it refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription

from agoramesh.bus.connection import bus_error
from agoramesh.bus.envelope import looks_like_envelope
from agoramesh.bus.ingress import IngressPolicy, decode_json, encode_json_error, looks_like_json
from agoramesh.bus.message import Message
from agoramesh.bus.replies import ERROR_TYPE, Delivery, Handler, error_headers
from agoramesh.bus.tracecontext import TRACEPARENT, valid_traceparent
from agoramesh.errors import (
    AgoraError,
    BusTimeout,
    EnvelopeError,
    IngressDenied,
    MalformedEnvelope,
    NotConnected,
    PermissionDenied,
    RejectReason,
    SubjectError,
    error_to_wire,
)

if TYPE_CHECKING:
    from agoramesh.bus.bus import Bus

__all__ = ("Confirmations", "Listener", "OnRejected", "Subscription", "nats_subscribe")

log = logging.getLogger("agoramesh.bus")

#: Called with a message a subscription refused and why (``Bus.subscribe(on_rejected=)``).
OnRejected = Callable[[Message, EnvelopeError], None]


async def nats_subscribe(bus: Bus, subject: str, callback: Callable[[Msg], Awaitable[None]],
                         queue: str = "") -> NatsSubscription:
    """nats-py's subscription to ``subject`` on the bus's connection, its errors ours."""
    try:
        return await bus.nats.subscribe(subject, queue=queue, cb=callback)
    except nats.errors.BadSubjectError:
        raise SubjectError(f"cannot subscribe to {subject[:80]!r} (queue {queue[:80]!r}): not "
                           f"a valid subject, pattern or queue name") from None
    except nats.errors.Error as exc:
        raise bus_error(exc, f"subscribe to {subject}") from exc


class Listener:
    """A plain NATS subscription of a bus's (no admission); ended by :meth:`stop`, or with
    the bus."""

    def __init__(self, bus: Bus, subscription: NatsSubscription) -> None:
        self.bus = bus
        #: nats-py's subscription (for the bus layer only).
        self.nats = subscription
        self._client = bus.nats

    @property
    def pending(self) -> int:
        """Messages delivered to this listener and not handled yet."""
        return int(self.nats.pending_msgs)

    @property
    def alive(self) -> bool:
        """False once the connection it was made on has closed (it is gone with it)."""
        return not self._client.is_closed

    @classmethod
    async def open(cls, bus: Bus, subject: str, callback: Callable[[Msg], Awaitable[None]],
                   queue: str = "") -> Listener:
        """Subscribe, and count the listener among the bus's until it stops."""
        listener = cls(bus, await nats_subscribe(bus, subject, callback, queue))
        bus._listeners.add(listener)
        return listener

    async def stop(self) -> None:
        """Unsubscribe; nothing to do once the connection is gone. Idempotent."""
        self.bus._listeners.discard(self)
        with contextlib.suppress(nats.errors.Error):
            await self.nats.unsubscribe()


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
        delivery = await self._admit(msg)
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
            with contextlib.suppress(AgoraError):
                await delivery.respond_error(exc)

    async def _admit(self, msg: Msg) -> Delivery | None:
        """The delivery for ``msg``, or None after counting (and answering) a rejection."""
        bus, data = self.bus, msg.data
        if looks_like_envelope(data):
            try:
                envelope = bus.guard.admit(data, msg.subject, msg.reply, verify=self.verify)
            except EnvelopeError as error:
                if self.on_rejected is not None:
                    self.on_rejected(msg, error)
                await self._answer_rejection(msg, error, as_json=False)
                return None
            bus.saw(envelope)
            return Delivery(bus, msg, envelope, envelope.body)
        policy_error: EnvelopeError
        if not looks_like_json(data):
            policy_error = MalformedEnvelope("payload is neither an envelope nor a JSON object")
        elif self.ingress is not IngressPolicy.ALLOW:
            policy_error = IngressDenied(f"plain JSON is not accepted on {msg.subject}; "
                                         f"send a signed envelope")
        else:
            try:
                body = decode_json(data, max_bytes=bus.config.envelope.max_bytes)
            except EnvelopeError as error:
                policy_error = error
            else:
                bus.received["json"] += 1
                headers = msg.headers
                if headers and TRACEPARENT in headers and \
                        not valid_traceparent(headers[TRACEPARENT]):
                    bus.guard.bad_traceparents += 1
                if bus.trace is not None:
                    bus.trace("saw", {"subject": msg.subject, "type": "json", "body": body})
                return Delivery(bus, msg, None, body)
        bus.guard.reject(policy_error)
        if self.on_rejected is not None:
            self.on_rejected(msg, policy_error)
        await self._answer_rejection(msg, policy_error, as_json=True)
        return None

    async def _answer_rejection(self, msg: Msg, error: EnvelopeError, *, as_json: bool) -> None:
        """Tell a requester why, so it fails fast instead of timing out.

        Replays are not answered: the original was, and answering again would
        let anyone replay an envelope to make us talk. Expired requests are
        answered (``ExpiredEnvelope``): with clocks apart, their requester may
        still be waiting. The answer carries the error headers.
        """
        bus = self.bus
        if not msg.reply or bus._nc is None or error.reason is RejectReason.REPLAYED:
            return
        wire_error = error_to_wire(error)
        headers = error_headers(wire_error["type"], wire_error["message"])
        with contextlib.suppress(AgoraError):  # closed meanwhile, an answer over max_bytes
            payload = (encode_json_error(error) if as_json else
                       bus.seal(msg.reply, ERROR_TYPE, wire_error, headers=headers,
                                traced=False))
            await bus.publish_raw(msg.reply, payload, headers=headers)

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


class Confirmations:
    """What ``Bus.confirm`` waits for: the subscriptions made since the last confirmation,
    and the server's permission refusals heard meanwhile.

    A server refuses a SUB with an ``-ERR`` line that names its subject, before
    the PONG of a later PING: a flush after a batch of subscriptions therefore
    tells which of them, if any, were refused.
    """

    def __init__(self) -> None:
        #: The server's permission refusals (newest last, at most 100).
        self.denials: list[str] = []
        self._seen = 0
        self._mark = 0  # _seen when the first unconfirmed subscription was made
        self._pending: list[Subscription] = []

    def denied(self, text: str) -> None:
        """The server refused a publish or subscribe on our connection."""
        self.denials.append(text)
        self._seen += 1
        del self.denials[:-100]

    def opening(self) -> None:
        """A subscription is about to be made: refusals from now on may be about it."""
        if not self._pending:
            self._mark = self._seen

    def opened(self, subscription: Subscription) -> None:
        """``subscription`` was made: the next :meth:`confirm` waits for it."""
        self._pending.append(subscription)

    async def confirm(self, flush: Callable[[], Awaitable[None]]) -> None:
        """Return once ``flush`` did for every subscription made so far; PermissionDenied
        (those refused stopped) if the server refused any."""
        # The mark is this batch's: a subscribe made while we flush starts the next batch.
        pending, mark, self._pending = self._pending, self._mark, []
        if not pending:
            return
        try:
            await flush()
        except BusTimeout:
            subjects = ", ".join(subscription.subject for subscription in pending[:3])
            raise BusTimeout(f"server did not confirm the subscription to {subjects}") from None
        seen = self._seen - mark
        if not seen:
            return
        denials = self.denials[-seen:]
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
