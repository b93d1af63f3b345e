"""The authenticated msgpack envelope: its format, encoding and decoding.

Wire format, version 2 (docs/PROTOCOL.md is normative)::

    wire = signed || tag                                  # tag: 64 bytes
    signed = msgpack map {v, id, type, from, to, subject, reply, ts, exp, cid, auth, body}
    tag = Ed25519(sender seed, signed)                    # auth "sig": anyone can check
        | BLAKE2b-512(key=pair key of from and to, signed)  # auth "mac": only `to` can

Signatures are for what many read (broadcasts, calls for proposals, requests to
a queue group); a directed envelope is authenticated with a key only its two
agents can derive (PROTOCOL.md §6), at a hundredth of the cost. ``reply`` is
the reply subject the sender published with, so a copy sent with another one is
refused. The tag covers the exact bytes sent, so no canonical re-encoding is ever
needed: a receiver checks the bytes it got. :func:`seal` builds envelopes and
:func:`parse` checks shape and types without crypto or clocks; the receiver's
subject, reply, addressing, freshness, replay and tag checks are
:class:`~agoramesh.bus.admission.Guard`'s.

A body addressed to one agent may travel encrypted, as ``{"$box": bin}``
(PROTOCOL.md §20): :func:`seal` takes a ``box`` function that encrypts it,
and a Guard with an ``opener`` opens boxes addressed to its agent.
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
from collections.abc import Callable
from typing import Any, Final, NamedTuple

import msgpack

from agoramesh.bus.identity import Identity, is_agent_id
from agoramesh.bus.subjects import validate_subject
from agoramesh.config import MAX_MESSAGE_BYTES
from agoramesh.errors import (
    EnvelopeError,
    MalformedEnvelope,
    OversizeEnvelope,
    SchemaError,
    UnsupportedVersion,
)

__all__ = (
    "AUTH_MAC",
    "AUTH_SIG",
    "BOX_KEY",
    "BROADCAST",
    "FIELDS",
    "SIGNATURE_SIZE",
    "TAG_SIZE",
    "VERSION",
    "Envelope",
    "PairKeys",
    "is_boxed",
    "looks_like_envelope",
    "mac",
    "new_id",
    "now_ms",
    "parse",
    "seal",
    "unpack_body",
)

VERSION: Final = 2
BROADCAST: Final = "*"
#: The one key of an encrypted body, ``{"$box": nonce || ciphertext}`` (PROTOCOL.md §20).
BOX_KEY: Final = "$box"
#: Every envelope ends with a 64-byte tag: an Ed25519 signature or a BLAKE2b-512 MAC.
TAG_SIZE: Final = 64
SIGNATURE_SIZE: Final = TAG_SIZE
#: ``auth`` values: signed by the sender's key; or MACed with the sender's and recipient's.
AUTH_SIG: Final = "sig"
AUTH_MAC: Final = "mac"
_AUTHS: Final = frozenset((AUTH_SIG, AUTH_MAC))
#: Keys of the signed map, in the order encoders write them.
FIELDS: Final = ("v", "id", "type", "from", "to", "subject", "reply", "ts", "exp", "cid",
                 "auth", "body")
_FIELD_SET: Final = frozenset(FIELDS)
_HEADER: Final = 0x80 | len(FIELDS)  # 0x8c: the one valid first byte of version 2
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


#: The key shared by this process's agent and a peer (PROTOCOL.md §6.2): ``pair_key(peer)``.
#: IdentityError for a peer whose id is no usable key.
PairKeys = Callable[[str], bytes]


class Envelope(NamedTuple):
    """A decoded envelope. ``wire`` holds the exact bytes received or sent.

    A named tuple, not a frozen dataclass: every message builds one, and a tuple
    is built six times faster (≈ 0.4 µs against 2.7 for these 13 fields).
    ``traceparent``: the trace context admission took out of the body (PROTOCOL.md §5),
    "" for none; it is not a field of the format, and ``wire`` still holds it.
    """

    v: int
    id: str
    type: str
    sender: str
    to: str
    subject: str
    reply: str
    ts: int
    exp: int
    cid: str
    auth: str
    body: Any
    wire: bytes
    traceparent: str = ""

    @property
    def signed(self) -> bytes:
        """The bytes the tag covers."""
        return self.wire[:-TAG_SIZE]

    @property
    def tag(self) -> bytes:
        """The signature (auth ``sig``) or MAC (auth ``mac``)."""
        return self.wire[-TAG_SIZE:]

    @property
    def signature(self) -> bytes:
        return self.wire[-TAG_SIZE:]

    @property
    def is_broadcast(self) -> bool:
        return self.to == BROADCAST

    def with_body(self, body: Any) -> Envelope:
        """The same envelope (same ``wire``) with ``body``: an opened box."""
        return self._replace(body=body)

    def as_dict(self) -> dict[str, Any]:
        """The fields under their wire names, plus the tag in hex."""
        return {
            "v": self.v, "id": self.id, "type": self.type, "from": self.sender,
            "to": self.to, "subject": self.subject, "reply": self.reply, "ts": self.ts,
            "exp": self.exp, "cid": self.cid, "auth": self.auth, "body": self.body,
            "tag": self.tag.hex(),
        }


def mac(key: bytes, signed: bytes) -> bytes:
    """The 64-byte tag of an ``auth: "mac"`` envelope: keyed BLAKE2b-512 (RFC 7693)."""
    return hashlib.blake2b(signed, digest_size=TAG_SIZE, key=key).digest()


def seal(
    identity: Identity,
    *,
    type: str,
    subject: str,
    body: Any,
    to: str = BROADCAST,
    reply: str = "",
    cid: str | None = None,
    ttl_ms: int = 60_000,
    ts: int | None = None,
    id: str | None = None,
    box: Callable[[str, Any], Any] | None = None,
    pair_key: PairKeys | None = None,
) -> bytes:
    """Encode and authenticate an envelope; returns the exact bytes to send.

    ``reply``: the reply subject it will be published with ("" for none).
    With ``pair_key`` an envelope addressed to one agent is MACed with the key
    it shares with that agent (auth ``mac``); everything else is signed.
    Fields are not re-validated on this hot path beyond what msgpack needs:
    the Bus builds them from checked parts, and every receiver checks them.
    ``box(to, body)`` encrypts a body addressed to one agent (not a broadcast)
    before it is authenticated; a plaintext body shaped like a box is refused.
    """
    if is_boxed(body):
        raise SchemaError(f"a body that is a map with the single key {BOX_KEY!r} is reserved "
                          f"for encrypted bodies")
    directed = to != BROADCAST
    if box is not None and directed:
        body = box(to, body)
    key = pair_key(to) if pair_key is not None and directed else None
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
                "reply": reply,
                "ts": sent_at,
                "exp": sent_at + ttl_ms,
                "cid": cid or envelope_id,
                "auth": AUTH_SIG if key is None else AUTH_MAC,
                "body": body,
            },
            use_bin_type=True,
        )
    except (TypeError, ValueError, OverflowError) as exc:
        raise SchemaError(f"envelope body cannot be encoded as msgpack: {exc}") from exc
    return signed + (identity.sign(signed) if key is None else mac(key, signed))


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
_FIELD_TYPES: Final = (int, str, str, str, str, str, str, int, int, str, str)


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
    if size <= TAG_SIZE + 1:
        raise MalformedEnvelope(f"envelope of {size} bytes is too short to be authenticated")
    wire = data if type(data) is bytes else bytes(data)
    if not looks_like_envelope(wire):
        raise MalformedEnvelope("envelope does not start with a msgpack map")
    try:
        fields = msgpack.unpackb(
            memoryview(wire)[:-TAG_SIZE],
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
    if wire[0] != _HEADER:  # the same 12 keys under a map16/map32 header
        raise MalformedEnvelope("envelope map header must be 0x8c (fixmap of 12 entries)")
    values = (version, fields["id"], fields["type"], fields["from"], fields["to"],
              fields["subject"], fields["reply"], fields["ts"], fields["exp"], fields["cid"],
              fields["auth"])
    # Exact types: bool is an int subclass, and never a valid int field.
    if tuple(map(type, values)) != _FIELD_TYPES:
        raise _wrong_type(values)
    _, envelope_id, kind, sender, to, subject, reply, ts, exp, cid, auth = values
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
    for field, value in (("subject", subject), ("reply", reply)):
        if value or field == "subject":  # reply: "" (none) or a subject
            try:
                validate_subject(value)
            except ValueError as exc:
                raise SchemaError(f"field {field!r}: {exc}") from None
    if not 0 <= ts < exp < _MAX_INT:
        raise SchemaError("fields 'ts' and 'exp' must satisfy 0 <= ts < exp < 2**53")
    if auth not in _AUTHS:
        raise SchemaError(f"field 'auth' must be 'sig' or 'mac', got {auth[:40]!r}")
    if auth == AUTH_MAC and to == BROADCAST:
        raise SchemaError("a broadcast (to '*') cannot be MACed: auth must be 'sig'")
    body = fields["body"]
    if (wire.find(b"\xff", 0, size - TAG_SIZE) >= 0  # memchr first: the regex is slow
            # A box's bin is opaque (no extension inside), and random: it often holds 0xff.
            and not (is_boxed(body) and type(body[BOX_KEY]) is bytes)
            and _TIMESTAMP_MARKER.search(wire, 0, size - TAG_SIZE)
            and _has_timestamp(body)):
        raise MalformedEnvelope("msgpack extension type -1 (timestamp) is not allowed")
    return Envelope(VERSION, envelope_id, kind, sender, to, subject, reply, ts, exp, cid, auth,
                    body, wire)
