"""Admission: what a receiving agent checks before an envelope reaches a handler.

:func:`~agoramesh.bus.envelope.parse` knows the format; a :class:`Guard`
knows the receiver: the subject and reply subject an envelope arrived with,
whom it is addressed to, the receiver's clock, the envelopes it has already
taken, and the keys that check a tag. Cheap checks run first and crypto last,
so a forged envelope costs little and never enters the replay cache (where it
could pre-empt the genuine one). Every rejection is counted by reason.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import Counter
from collections.abc import Callable
from heapq import heappop, heappush

from agoramesh.bus.envelope import (
    AUTH_MAC,
    BROADCAST,
    Envelope,
    PairKeys,
    is_boxed,
    mac,
    now_ms,
    parse,
)
from agoramesh.bus.identity import verify
from agoramesh.bus.tracecontext import TRACEPARENT, parse_traceparent
from agoramesh.config import EnvelopePolicy
from agoramesh.errors import (
    BadSignature,
    EnvelopeError,
    ExpiredEnvelope,
    FutureEnvelope,
    IdentityError,
    Misaddressed,
    RejectReason,
    ReplayedEnvelope,
    SchemaError,
    SignatureRequired,
    UndecryptableEnvelope,
    WrongReply,
    WrongSubject,
)

__all__ = ("Guard", "Opener")


def _clip(subject: str) -> str:
    """A subject for an error message: whole up to 100 characters, else its two ends (an
    inbox differs from another in its last tokens)."""
    return subject if len(subject) <= 100 else f"{subject[:40]}…{subject[-59:]}"


class _VerifiedCache:
    """Envelopes whose signature already verified in this process.

    Keyed by the signature plus a digest of the signed bytes, so a valid
    signature reused on other bytes never hits. Several local agents receiving
    one broadcast pay for one verification.
    """

    def __init__(self, capacity: int = 16384) -> None:
        self._capacity = capacity
        self._keys: dict[bytes, None] = {}

    @staticmethod
    def key(envelope: Envelope) -> bytes:
        digest = hashlib.blake2b(envelope.signed, digest_size=16).digest()
        return envelope.signature + digest

    def __contains__(self, key: bytes) -> bool:
        return key in self._keys

    def add(self, key: bytes) -> None:
        keys = self._keys
        keys[key] = None
        if len(keys) > self._capacity:
            del keys[next(iter(keys))]


_verified = _VerifiedCache()


#: Opens the boxed body of an envelope addressed to us: the same envelope (same
#: ``wire``) with the plaintext ``body``, or UndecryptableEnvelope.
Opener = Callable[[Envelope], Envelope]


class Guard:
    """Admission control for one receiving agent.

    ``admit`` runs every check and returns the envelope or raises a typed
    :class:`EnvelopeError`; rejections are counted in :attr:`rejections` and
    reported to ``on_reject`` hooks. With ``verify=False`` the tag check and
    replay insert are deferred to :meth:`confirm`, for envelopes that may never
    be acted on (an auctioneer verifies only the bid it awards).

    ``pair_key`` (:meth:`agoramesh.bus.e2e.E2EKeys.pair_key`) checks ``mac``
    envelopes addressed to ``agent_id``; without it (an observer) a MACed
    envelope cannot be checked and is passed on as unauthenticated, which only
    an observer may do. ``opener`` (:meth:`agoramesh.bus.e2e.E2EKeys.open`)
    opens boxed bodies addressed to ``agent_id``: admitted envelopes then carry
    the plaintext body. A boxed body on a broadcast is always rejected; without
    an opener (an observer) a directed box is passed on shut. A map body's
    ``traceparent`` is taken out of it onto the envelope (PROTOCOL.md §5); one that
    is not valid is dropped and counted in :attr:`bad_traceparents`.
    """

    def __init__(self, policy: EnvelopePolicy, *, agent_id: str | None = None,
                 opener: Opener | None = None, pair_key: PairKeys | None = None) -> None:
        self.policy = policy
        self.agent_id = agent_id
        self.opener = opener
        self.pair_key = pair_key
        self.rejections: Counter[RejectReason] = Counter()
        #: Bodies (and plain-JSON headers) whose ``traceparent`` was invalid, so ignored.
        self.bad_traceparents = 0
        self.on_reject: list[Callable[[RejectReason], None]] = []
        self._seen: dict[tuple[str, str], int] = {}
        self._expiry: list[tuple[int, str, str]] = []

    def reject(self, error: EnvelopeError) -> EnvelopeError:
        """Count a rejection and return the error to raise."""
        self.rejections[error.reason] += 1
        for hook in self.on_reject:
            hook(error.reason)
        return error

    def admit(
        self, data: bytes, subject: str, reply: str | None = "", *, verify: bool = True,
        now: int | None = None, stored: bool = False,
    ) -> Envelope:
        """Every check for ``data`` that arrived on ``subject`` with NATS reply subject
        ``reply`` ("" for none; None: not checked, for a message read back from a store,
        whose reply subject is the store's own).

        ``stored``: ``data`` was read back from a store (a durable job, PROTOCOL.md
        §21), ``now`` is when the store took it, and the replay cache is left
        alone: a store redelivers on purpose, and the task id keeps it harmless.
        """
        try:
            envelope = parse(data, max_bytes=self.policy.max_bytes)
            now = now_ms() if now is None else now
            self._check(envelope, subject, reply, now, replay=not stored)
            checked = verify and self._verify(envelope)
            if is_boxed(envelope.body):
                envelope = self._open(envelope)
            body = envelope.body
            if type(body) is dict and TRACEPARENT in body:
                # Taken out of the freshly decoded body in place; parsed once here, for
                # the handler's span too (tracecontext remembers it).
                traceparent = body.pop(TRACEPARENT)
                if parse_traceparent(traceparent) is None:
                    self.bad_traceparents += 1
                else:  # Envelope._make without its Python frame
                    envelope = tuple.__new__(Envelope, (*envelope[:-1], traceparent))
            if checked and not stored:
                self._remember(envelope, now)
        except EnvelopeError as error:
            raise self.reject(error) from None
        return envelope

    def confirm(self, envelope: Envelope, *, now: int | None = None) -> Envelope:
        """Finish a deferred admission: expiry, replay and tag."""
        try:
            now = now_ms() if now is None else now
            self._fresh(envelope, now)
            self._not_replayed(envelope)
            self._verify_and_remember(envelope, now)
        except EnvelopeError as error:
            raise self.reject(error) from None
        return envelope

    def _check(self, envelope: Envelope, subject: str, reply: str | None, now: int, *,
               replay: bool = True) -> None:
        if envelope.subject != subject:
            raise WrongSubject(
                f"envelope made for {_clip(envelope.subject)!r} arrived on {_clip(subject)!r}"
            )
        if reply is not None and envelope.reply != reply:
            raise WrongReply(
                f"envelope made for reply subject {_clip(envelope.reply)!r} arrived with "
                f"{_clip(reply)!r}" if envelope.reply else
                f"envelope made for no reply arrived with reply subject {_clip(reply)!r}")
        if envelope.to != BROADCAST and self.agent_id and envelope.to != self.agent_id:
            raise Misaddressed(f"envelope is addressed to {envelope.to}, not to us")
        self._fresh(envelope, now)
        if envelope.exp - envelope.ts > self.policy.max_ttl_ms:
            raise SchemaError(
                f"envelope lifetime {envelope.exp - envelope.ts} ms exceeds the "
                f"{self.policy.max_ttl_ms} ms limit"
            )
        if replay:
            self._not_replayed(envelope)

    def _fresh(self, envelope: Envelope, now: int) -> None:
        if envelope.exp <= now:
            raise ExpiredEnvelope(f"envelope expired {now - envelope.exp} ms ago")
        if envelope.ts > now + self.policy.max_clock_skew_ms:
            raise FutureEnvelope(
                f"envelope timestamp is {envelope.ts - now} ms ahead of our clock "
                f"(limit {self.policy.max_clock_skew_ms} ms)"
            )

    def _not_replayed(self, envelope: Envelope) -> None:
        if (envelope.sender, envelope.id) in self._seen:
            raise ReplayedEnvelope(f"envelope {envelope.id} was already received")

    def _open(self, envelope: Envelope) -> Envelope:
        if envelope.to == BROADCAST:
            raise UndecryptableEnvelope("a broadcast envelope cannot carry an encrypted body")
        return envelope if self.opener is None else self.opener(envelope)

    def _verify_and_remember(self, envelope: Envelope, now: int) -> None:
        if self._verify(envelope):
            self._remember(envelope, now)

    def _verify(self, envelope: Envelope) -> bool:
        """Check the tag; False if it could not be (a MAC, at an observer)."""
        if envelope.auth == AUTH_MAC:
            return self._verify_mac(envelope)
        key = _VerifiedCache.key(envelope)
        if key not in _verified:
            if not verify(envelope.sender, envelope.signed, envelope.signature):
                raise BadSignature(f"signature does not match sender {envelope.sender}")
            _verified.add(key)
        return True

    def _verify_mac(self, envelope: Envelope) -> bool:
        if self.policy.sign_all:
            raise SignatureRequired(f"a MACed envelope from {envelope.sender}: this agent "
                                    f"accepts signed envelopes only")
        if self.pair_key is None:
            if self.agent_id is None:
                # An observer cannot check a MAC (and acts on nothing): passed on unchecked,
                # and not remembered, so a forgery cannot make the genuine one a "replay".
                return False
            raise BadSignature("a MACed envelope, and this receiver has no keys to check it")
        try:
            key = self.pair_key(envelope.sender)
        except IdentityError:
            raise BadSignature(f"no pair key with sender {envelope.sender}") from None
        if not hmac.compare_digest(mac(key, envelope.signed), envelope.tag):
            raise BadSignature(f"MAC does not match sender {envelope.sender} and us")
        return True

    def _remember(self, envelope: Envelope, now: int) -> None:
        """Keep (sender, id) until the envelope expires; after that expiry rejects it."""
        seen, expiry = self._seen, self._expiry
        while expiry and (expiry[0][0] <= now or len(seen) >= self.policy.replay_cache_size):
            _, sender, envelope_id = heappop(expiry)
            seen.pop((sender, envelope_id), None)
        seen[(envelope.sender, envelope.id)] = envelope.exp
        heappush(expiry, (envelope.exp, envelope.sender, envelope.id))
