"""The signed msgpack envelope: encoding, decoding and admission.

Wire format (docs/PROTOCOL.md is normative)::

    wire = signed || signature
    signed = msgpack map {v, id, type, from, to, subject, ts, exp, cid, body}
    signature = Ed25519(sender seed, signed)          # 64 bytes

The signature covers the exact bytes sent, so no canonical re-encoding is ever
needed: a receiver verifies the bytes it got. :func:`seal` builds envelopes,
:func:`parse` checks shape and types without crypto or clocks, and
:class:`Guard` is the receiver: it adds subject, addressing, freshness, replay
and signature checks, and counts every rejection by reason.

A body addressed to one agent may travel encrypted, as ``{"$box": bin}``
(PROTOCOL.md §20): :func:`seal` takes a ``box`` function that encrypts it,
and a :class:`Guard` with an ``opener`` opens boxes addressed to its agent.
The cryptography lives in :mod:`agoramesh.bus.e2e`; this module knows only
the shape, which plaintext bodies may never take.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import os
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from heapq import heappop, heappush
from typing import Any, Final

import msgpack

from agoramesh.bus.identity import Identity, is_agent_id, verify
from agoramesh.bus.subjects import validate_subject
from agoramesh.config import MAX_MESSAGE_BYTES, EnvelopePolicy
from agoramesh.errors import (
    BadSignature,
    EnvelopeError,
    ExpiredEnvelope,
    FutureEnvelope,
    MalformedEnvelope,
    Misaddressed,
    OversizeEnvelope,
    RejectReason,
    ReplayedEnvelope,
    SchemaError,
    UndecryptableEnvelope,
    UnsupportedVersion,
    WrongSubject,
)

__all__ = (
    "BOX_KEY",
    "BROADCAST",
    "FIELDS",
    "SIGNATURE_SIZE",
    "VERSION",
    "Envelope",
    "Guard",
    "Opener",
    "is_boxed",
    "looks_like_envelope",
    "new_id",
    "now_ms",
    "parse",
    "seal",
    "unpack_body",
)

VERSION: Final = 1
BROADCAST: Final = "*"
#: The one key of an encrypted body, ``{"$box": nonce || ciphertext}`` (PROTOCOL.md §20).
BOX_KEY: Final = "$box"
SIGNATURE_SIZE: Final = 64
#: Keys of the signed map, in the order encoders write them.
FIELDS: Final = ("v", "id", "type", "from", "to", "subject", "ts", "exp", "cid", "body")
_FIELD_SET: Final = frozenset(FIELDS)
_HEADER: Final = 0x80 | len(FIELDS)  # 0x8a: the one valid first byte of version 1
_MAP_HEADERS: Final = frozenset([*range(0x80, 0x90), 0xDE, 0xDF])
_MAX_INT: Final = 2**53
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_TYPE = re.compile(r"[a-z][a-z0-9_]{0,31}(?:\.[a-z0-9_]{1,31}){0,3}")

# Ids need uniqueness per sender, not secrecy: a random per-process prefix and a
# counter from a random start are unique and ten times cheaper than a NUID.
_ID_PREFIX = ""
_ID_COUNTER = itertools.count()


def _reseed_ids() -> None:
    global _ID_PREFIX, _ID_COUNTER
    _ID_PREFIX = base64.urlsafe_b64encode(os.urandom(9)).decode("ascii")
    _ID_COUNTER = itertools.count(int.from_bytes(os.urandom(4), "big"))


_reseed_ids()
os.register_at_fork(after_in_child=_reseed_ids)  # a forked child must not repeat ids


def new_id() -> str:
    """A fresh envelope id: 12 random base64url characters and a hex counter (<= 28 chars)."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER):x}"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class Envelope:
    """A decoded envelope. ``wire`` holds the exact bytes received or sent."""

    v: int
    id: str
    type: str
    sender: str
    to: str
    subject: str
    ts: int
    exp: int
    cid: str
    body: Any
    wire: bytes

    @property
    def signed(self) -> bytes:
        """The bytes the signature covers."""
        return self.wire[:-SIGNATURE_SIZE]

    @property
    def signature(self) -> bytes:
        return self.wire[-SIGNATURE_SIZE:]

    @property
    def is_broadcast(self) -> bool:
        return self.to == BROADCAST

    def as_dict(self) -> dict[str, Any]:
        """The signed fields under their wire names, plus the signature in hex."""
        return {
            "v": self.v, "id": self.id, "type": self.type, "from": self.sender,
            "to": self.to, "subject": self.subject, "ts": self.ts, "exp": self.exp,
            "cid": self.cid, "body": self.body, "sig": self.signature.hex(),
        }


def seal(
    identity: Identity,
    *,
    type: str,
    subject: str,
    body: Any,
    to: str = BROADCAST,
    cid: str | None = None,
    ttl_ms: int = 60_000,
    ts: int | None = None,
    id: str | None = None,
    box: Callable[[str, Any], Any] | None = None,
) -> bytes:
    """Encode and sign an envelope; returns the exact bytes to send.

    Fields are not re-validated on this hot path beyond what msgpack needs:
    the Bus builds them from checked parts, and every receiver checks them.
    ``box(to, body)`` encrypts a body addressed to one agent (not a broadcast)
    before it is signed; a plaintext body shaped like a box is refused.
    """
    if is_boxed(body):
        raise SchemaError(f"a body that is a map with the single key {BOX_KEY!r} is reserved "
                          f"for encrypted bodies")
    if box is not None and to != BROADCAST:
        body = box(to, body)
    envelope_id = id or new_id()
    sent_at = now_ms() if ts is None else ts
    try:
        signed: bytes = msgpack.packb(
            {
                "v": VERSION,
                "id": envelope_id,
                "type": type,
                "from": identity.agent_id,
                "to": to,
                "subject": subject,
                "ts": sent_at,
                "exp": sent_at + ttl_ms,
                "cid": cid or envelope_id,
                "body": body,
            },
            use_bin_type=True,
        )
    except (TypeError, ValueError, OverflowError) as exc:
        raise SchemaError(f"envelope body cannot be encoded as msgpack: {exc}") from exc
    return signed + identity.sign(signed)


def _reject_ext(code: int, data: bytes) -> Any:
    raise MalformedEnvelope(f"msgpack extension type {code} is not allowed")


# Any extension header (fixext 1-16, ext 8/16/32) with type -1 (timestamp),
# which msgpack decodes itself without calling ext_hook. A byte scan gates the
# walk over the body; false positives only cost the walk.
_TIMESTAMP_MARKER: Final = re.compile(
    rb"[\xd4-\xd8]\xff|\xc7.\xff|\xc8..\xff|\xc9....\xff", re.DOTALL)


def _has_timestamp(value: Any) -> bool:
    if isinstance(value, msgpack.Timestamp):
        return True
    if isinstance(value, dict):
        return any(_has_timestamp(item) for item in value.values())
    if isinstance(value, list):
        return any(_has_timestamp(item) for item in value)
    return False


_TYPED_FIELDS: Final = FIELDS[:-1]  # all but body
_FIELD_TYPES: Final = (int, str, str, str, str, str, int, int, str)


def _wrong_type(values: tuple[Any, ...]) -> SchemaError:
    for name, value, kind in zip(_TYPED_FIELDS, values, _FIELD_TYPES, strict=True):
        if type(value) is not kind:
            return SchemaError(f"field {name!r} must be {kind.__name__}, "
                               f"got {type(value).__name__}")
    return SchemaError("field types are wrong")  # pragma: no cover - caller checked


def looks_like_envelope(data: bytes) -> bool:
    """True if ``data`` starts as a msgpack map, as every envelope does (cheap pre-check)."""
    return bool(data) and data[0] in _MAP_HEADERS


def is_boxed(body: Any) -> bool:
    """True for an encrypted body: a map whose one key is ``"$box"`` (whatever its value)."""
    return isinstance(body, dict) and len(body) == 1 and BOX_KEY in body


def unpack_body(data: bytes) -> Any:
    """Decode a msgpack body (an opened box) under the envelope's rules: no extension types."""
    try:
        body = msgpack.unpackb(data, raw=False, strict_map_key=True, ext_hook=_reject_ext)
    except EnvelopeError:
        raise
    except Exception as exc:  # msgpack raises many types (ValueError, StackError, ...)
        raise MalformedEnvelope(f"encrypted body is not valid msgpack: "
                                f"{type(exc).__name__}") from exc
    if data.find(b"\xff") >= 0 and _TIMESTAMP_MARKER.search(data) and _has_timestamp(body):
        raise MalformedEnvelope("msgpack extension type -1 (timestamp) is not allowed")
    return body


def parse(data: bytes, *, max_bytes: int = MAX_MESSAGE_BYTES) -> Envelope:
    """Decode and type-check an envelope; no signature, clock or replay checks."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedEnvelope(f"envelope must be bytes, got {type(data).__name__}")
    size = len(data)
    if size > max_bytes:
        raise OversizeEnvelope(f"envelope of {size} bytes exceeds the {max_bytes}-byte limit")
    if size <= SIGNATURE_SIZE + 1:
        raise MalformedEnvelope(f"envelope of {size} bytes is too short to be signed")
    wire = data if type(data) is bytes else bytes(data)
    if not looks_like_envelope(wire):
        raise MalformedEnvelope("envelope does not start with a msgpack map")
    try:
        fields = msgpack.unpackb(
            memoryview(wire)[:-SIGNATURE_SIZE],
            raw=False,
            strict_map_key=True,
            ext_hook=_reject_ext,
        )
    except EnvelopeError:
        raise
    except Exception as exc:  # msgpack raises many types (ValueError, StackError, ...)
        raise MalformedEnvelope(f"envelope is not valid msgpack: {type(exc).__name__}") from exc
    if not isinstance(fields, dict):
        raise MalformedEnvelope("envelope is not a msgpack map")
    version = fields.get("v")
    if type(version) is int and version != VERSION:
        raise UnsupportedVersion(f"envelope version {version} is not supported (want {VERSION})")
    if wire[0] == _HEADER and len(fields) < len(FIELDS):
        raise MalformedEnvelope("envelope map repeats a key")
    if fields.keys() != _FIELD_SET:
        missing = sorted(_FIELD_SET - fields.keys())
        extra = sorted(str(k)[:40] for k in fields.keys() - _FIELD_SET)
        raise SchemaError(f"envelope fields wrong: missing {missing}, unexpected {extra}")
    if wire[0] != _HEADER:  # the same 10 keys under a map16/map32 header
        raise MalformedEnvelope("envelope map header must be 0x8a (fixmap of 10 entries)")
    values = (version, fields["id"], fields["type"], fields["from"], fields["to"],
              fields["subject"], fields["ts"], fields["exp"], fields["cid"])
    # Exact types: bool is an int subclass, and never a valid int field.
    if tuple(map(type, values)) != _FIELD_TYPES:
        raise _wrong_type(values)
    _, envelope_id, kind, sender, to, subject, ts, exp, cid = values
    if not _ID.fullmatch(envelope_id):
        raise SchemaError("field 'id' must be 1-64 characters of [A-Za-z0-9_-]")
    if not _ID.fullmatch(cid):
        raise SchemaError("field 'cid' must be 1-64 characters of [A-Za-z0-9_-]")
    if not _TYPE.fullmatch(kind):
        raise SchemaError(f"field 'type' is not a valid message type: {kind[:40]!r}")
    if not is_agent_id(sender):
        raise SchemaError("field 'from' is not an agent id (nkey user public key)")
    if to != BROADCAST and not is_agent_id(to):
        raise SchemaError("field 'to' must be '*' or an agent id")
    try:
        validate_subject(subject)
    except ValueError as exc:
        raise SchemaError(f"field 'subject': {exc}") from None
    if not 0 <= ts < exp < _MAX_INT:
        raise SchemaError("fields 'ts' and 'exp' must satisfy 0 <= ts < exp < 2**53")
    body = fields["body"]
    if (wire.find(b"\xff", 0, size - SIGNATURE_SIZE) >= 0  # memchr first: the regex is slow
            # A box's bin is opaque (no extension inside), and random: it often holds 0xff.
            and not (is_boxed(body) and type(body[BOX_KEY]) is bytes)
            and _TIMESTAMP_MARKER.search(wire, 0, size - SIGNATURE_SIZE)
            and _has_timestamp(body)):
        raise MalformedEnvelope("msgpack extension type -1 (timestamp) is not allowed")
    return Envelope(VERSION, envelope_id, kind, sender, to, subject, ts, exp, cid, body, wire)


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
    reported to ``on_reject`` hooks. With ``verify=False`` the signature and
    replay insert are deferred to :meth:`confirm`, for envelopes that may never
    be acted on (an auctioneer verifies only the bid it awards).

    ``opener`` (:meth:`agoramesh.bus.e2e.E2EKeys.open`) opens boxed bodies
    addressed to ``agent_id``: admitted envelopes then carry the plaintext
    body. A boxed body on a broadcast is always rejected; without an opener
    (an observer) a directed box is passed on shut.
    """

    def __init__(self, policy: EnvelopePolicy, *, agent_id: str | None = None,
                 opener: Opener | None = None) -> None:
        self.policy = policy
        self.agent_id = agent_id
        self.opener = opener
        self.rejections: Counter[RejectReason] = Counter()
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
        self, data: bytes, subject: str, *, verify: bool = True, now: int | None = None,
        stored: bool = False,
    ) -> Envelope:
        """Every check for ``data`` that arrived on ``subject``.

        ``stored``: ``data`` was read back from a store (a durable job, PROTOCOL.md
        §21), ``now`` is when the store took it, and the replay cache is left
        alone: a store redelivers on purpose, and the task id keeps it harmless.
        """
        try:
            envelope = parse(data, max_bytes=self.policy.max_bytes)
            now = now_ms() if now is None else now
            self._check(envelope, subject, now, replay=not stored)
            if verify:
                self._verify(envelope)
            if is_boxed(envelope.body):
                envelope = self._open(envelope)
            if verify and not stored:
                self._remember(envelope, now)
        except EnvelopeError as error:
            raise self.reject(error) from None
        return envelope

    def confirm(self, envelope: Envelope, *, now: int | None = None) -> Envelope:
        """Finish a deferred admission: expiry, replay and signature."""
        try:
            now = now_ms() if now is None else now
            self._fresh(envelope, now)
            self._not_replayed(envelope)
            self._verify_and_remember(envelope, now)
        except EnvelopeError as error:
            raise self.reject(error) from None
        return envelope

    def _check(self, envelope: Envelope, subject: str, now: int, *, replay: bool = True) -> None:
        if envelope.subject != subject:
            raise WrongSubject(
                f"envelope signed for {envelope.subject[:80]!r} arrived on {subject[:80]!r}"
            )
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
        self._verify(envelope)
        self._remember(envelope, now)

    def _verify(self, envelope: Envelope) -> None:
        key = _VerifiedCache.key(envelope)
        if key not in _verified:
            if not verify(envelope.sender, envelope.signed, envelope.signature):
                raise BadSignature(f"signature does not match sender {envelope.sender}")
            _verified.add(key)

    def _remember(self, envelope: Envelope, now: int) -> None:
        """Keep (sender, id) until the envelope expires; after that expiry rejects it."""
        seen, expiry = self._seen, self._expiry
        while expiry and (expiry[0][0] <= now or len(seen) >= self.policy.replay_cache_size):
            _, sender, envelope_id = heappop(expiry)
            seen.pop((sender, envelope_id), None)
        seen[(envelope.sender, envelope.id)] = envelope.exp
        heappush(expiry, (envelope.exp, envelope.sender, envelope.id))
