"""Envelope sealing, parsing and admission (agoramesh.bus.envelope), wire version 2.

Malformed and wrong-type envelopes are built by hand (``msgpack.packb`` of a
map, signed with :meth:`Identity.sign`) so each case carries exactly one
defect and a valid signature: the rejection seen is the one under test.

The admission tests (from "size" on) run twice, through the ``policy``
fixture: with the default policy, where an envelope to one agent is MACed
with the pair key, and with ``sign_all``, where every envelope is signed and a
MAC is refused: the sign-everything setting passes the same suite. The
``mac`` envelope itself is tested in test_envelope_mac.py.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import msgpack
import nkeys
import pytest

from agoramesh.bus.admission import Guard
from agoramesh.bus.e2e import E2EKeys
from agoramesh.bus.envelope import (
    AUTH_MAC,
    AUTH_SIG,
    BROADCAST,
    FIELDS,
    SIGNATURE_SIZE,
    TAG_SIZE,
    VERSION,
    Envelope,
    new_id,
    now_ms,
    parse,
    seal,
)
from agoramesh.bus.identity import Identity
from agoramesh.config import EnvelopePolicy
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
    UnsupportedVersion,
    WrongReply,
    WrongSubject,
)

SUBJECT = "agora.cap.echo"
INBOX = "_INBOX.req.7"
POLICY = EnvelopePolicy()
_DROP = object()


@pytest.fixture(scope="module")
def alice() -> Identity:
    return Identity.generate()


@pytest.fixture(scope="module")
def bob() -> Identity:
    return Identity.generate()


@pytest.fixture(params=[False, True], ids=["default", "sign_all"])
def policy(request: pytest.FixtureRequest) -> EnvelopePolicy:
    """The receiving (and sending) policy: default, or every envelope signed."""
    return EnvelopePolicy(sign_all=request.param)


def sealer(policy: EnvelopePolicy, identity: Identity) -> Callable[..., bytes]:
    """``seal`` as a Bus under ``policy`` calls it: a directed envelope is MACed
    with the pair key, unless ``sign_all``."""
    pair_key = None if policy.sign_all else E2EKeys(identity).pair_key

    def sealed(**fields: Any) -> bytes:
        return seal(identity, pair_key=pair_key, **fields)

    return sealed


def guard_for(policy: EnvelopePolicy, identity: Identity | None = None) -> Guard:
    """The Guard of ``identity``'s Bus under ``policy`` (an observer's for None)."""
    if identity is None:
        return Guard(policy)
    return Guard(policy, agent_id=identity.agent_id, pair_key=E2EKeys(identity).pair_key)


@pytest.fixture
def now() -> int:
    # Real time, so the tests hold whichever clock the replay cache purges by.
    return now_ms()


def envelope_map(identity: Identity, now: int, **overrides: Any) -> dict[str, Any]:
    """A valid signed-map for ``identity``; ``field=_DROP`` removes a field."""
    fields: dict[str, Any] = {
        "v": VERSION,
        "id": "env-1",
        "type": "task.request",
        "from": identity.agent_id,
        "to": BROADCAST,
        "subject": SUBJECT,
        "reply": "",
        "ts": now,
        "exp": now + 60_000,
        "cid": "conv-1",
        "auth": AUTH_SIG,
        "body": {"text": "hi"},
    }
    for key, value in overrides.items():
        name = "from" if key == "from_" else key
        if value is _DROP:
            del fields[name]
        else:
            fields[name] = value
    return fields


def sign_raw(identity: Identity, signed: bytes) -> bytes:
    return signed + identity.sign(signed)


def sign_map(identity: Identity, fields: Any) -> bytes:
    return sign_raw(identity, msgpack.packb(fields, use_bin_type=True))


def flip_bit(data: bytes, index: int, bit: int = 0) -> bytes:
    mutable = bytearray(data)
    mutable[index] ^= 1 << bit
    return bytes(mutable)


class Recorded:
    """A Guard plus the reasons its on_reject hook saw."""

    def __init__(self, policy: EnvelopePolicy = POLICY, agent_id: str | None = None, *,
                 identity: Identity | None = None) -> None:
        """An observer's Guard, or ``agent_id``'s, or (``identity``) one with its pair keys."""
        self.guard = (guard_for(policy, identity) if identity is not None
                      else Guard(policy, agent_id=agent_id))
        self.hooked: list[RejectReason] = []
        self.guard.on_reject.append(self.hooked.append)

    def rejects(
        self,
        data: Any,
        error: type[EnvelopeError],
        *,
        subject: str = SUBJECT,
        reply: str | None = "",
        now: int,
        previous: int = 0,
    ) -> EnvelopeError:
        """Admit must raise exactly ``error`` and count it once (after ``previous``)."""
        with pytest.raises(EnvelopeError) as info:
            self.guard.admit(data, subject, reply, now=now)
        assert type(info.value) is error, f"{type(info.value).__name__}: {info.value}"
        assert info.value.reason is error.reason
        assert self.guard.rejections[error.reason] == previous + 1
        assert sum(self.guard.rejections.values()) == previous + 1
        assert self.hooked[-1] is error.reason
        assert len(self.hooked) == previous + 1
        return info.value


# --- round trip -------------------------------------------------------------

BODIES = [
    pytest.param({"a": {"b": [1, 2, {"c": None}]}, "d": {}}, id="nested-maps"),
    pytest.param([1, "two", b"three", [4.5, [], [[True, False]]]], id="lists"),
    pytest.param(b"\x00\xff" * 100, id="bytes"),
    pytest.param("héllo ✓ 日本語 🎉 \u0000 \U0010ffff", id="unicode"),
    pytest.param({"ключ": "значение", "🔑": ["🎉"]}, id="unicode-keys"),
    pytest.param({"bin": b"\x00", "k": b""}, id="bytes-in-map"),
    pytest.param(0, id="zero"),
    pytest.param(-1, id="minus-one"),
    pytest.param(2**63 - 1, id="int64-max"),
    pytest.param(-(2**63), id="int64-min"),
    pytest.param(2**64 - 1, id="uint64-max"),
    pytest.param(None, id="none"),
    pytest.param(True, id="bool"),
    pytest.param(-0.5, id="float"),
    pytest.param("", id="empty-str"),
    pytest.param([], id="empty-list"),
]


@pytest.mark.parametrize("body", BODIES)
def test_seal_then_admit_round_trips_body(
    alice: Identity, now: int, body: Any, policy: EnvelopePolicy
) -> None:
    wire = seal(alice, type="task.request", subject=SUBJECT, body=body, ts=now, ttl_ms=5_000)
    guard = guard_for(policy, alice)

    envelope = guard.admit(wire, SUBJECT, now=now)

    assert envelope.body == body
    assert type(envelope.body) is type(body)
    assert envelope.wire == wire
    assert envelope.sender == alice.agent_id
    assert envelope.subject == SUBJECT
    assert envelope.type == "task.request"
    assert envelope.v == VERSION
    assert (envelope.ts, envelope.exp) == (now, now + 5_000)
    assert envelope.to == BROADCAST and envelope.is_broadcast
    assert envelope.cid == envelope.id  # cid defaults to the envelope id
    assert (envelope.reply, envelope.auth) == ("", AUTH_SIG)  # a broadcast is always signed
    assert envelope.signed + envelope.signature == wire
    assert envelope.tag == envelope.signature
    assert len(envelope.signature) == SIGNATURE_SIZE == TAG_SIZE
    assert not guard.rejections


def test_seal_honours_explicit_fields(
    alice: Identity, bob: Identity, now: int, policy: EnvelopePolicy
) -> None:
    wire = sealer(policy, alice)(
        type="award", subject=SUBJECT, body=1, to=bob.agent_id, reply=INBOX,
        cid="conversation_7", ts=now, ttl_ms=1234, id="my-id",
    )
    envelope = guard_for(policy, bob).admit(wire, SUBJECT, INBOX, now=now)
    assert (envelope.id, envelope.cid, envelope.to) == ("my-id", "conversation_7", bob.agent_id)
    assert envelope.reply == INBOX
    assert envelope.auth == (AUTH_SIG if policy.sign_all else AUTH_MAC)
    assert envelope.exp - envelope.ts == 1234
    assert not envelope.is_broadcast


def test_seal_signs_a_broadcast_even_with_pair_keys(alice: Identity, now: int) -> None:
    # A MAC convinces one recipient; a broadcast has many, so it is always signed.
    wire = seal(alice, type="t", subject=SUBJECT, body=1, ts=now,
                pair_key=E2EKeys(alice).pair_key)
    assert parse(wire).auth == AUTH_SIG
    assert Guard(POLICY).admit(wire, SUBJECT, now=now).sender == alice.agent_id


def test_seal_writes_the_twelve_fields_in_order(alice: Identity, bob: Identity, now: int) -> None:
    wire = seal(alice, type="t", subject=SUBJECT, body=None, to=bob.agent_id, reply=INBOX,
                ts=now, id="i", cid="c", pair_key=E2EKeys(alice).pair_key)
    assert wire[0] == 0x8C  # fixmap of 12 entries
    assert len(FIELDS) == 12
    assert list(msgpack.unpackb(wire[:-TAG_SIZE])) == list(FIELDS)
    assert msgpack.unpackb(wire[:-TAG_SIZE]) == {
        "v": 2, "id": "i", "type": "t", "from": alice.agent_id, "to": bob.agent_id,
        "subject": SUBJECT, "reply": INBOX, "ts": now, "exp": now + 60_000, "cid": "c",
        "auth": "mac", "body": None,
    }


def test_seal_default_ts_is_now_and_ids_are_fresh(alice: Identity) -> None:
    before = now_ms()
    first = parse(seal(alice, type="t", subject=SUBJECT, body=None))
    second = parse(seal(alice, type="t", subject=SUBJECT, body=None))
    after = now_ms()
    assert before <= first.ts <= after
    assert first.exp - first.ts == 60_000
    assert first.id != second.id
    ids = {new_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{1,64}", envelope_id) for envelope_id in ids)


def test_seal_rejects_unencodable_body(alice: Identity) -> None:
    with pytest.raises(SchemaError, match="cannot be encoded"):
        seal(alice, type="t", subject=SUBJECT, body=object())
    with pytest.raises(SchemaError, match="cannot be encoded"):
        seal(alice, type="t", subject=SUBJECT, body=2**64)


def test_as_dict_uses_wire_names_and_hex_signature(alice: Identity, now: int) -> None:
    wire = seal(alice, type="t", subject=SUBJECT, body={"x": [1]}, ts=now, id="abc", cid="c")
    envelope = parse(wire)

    as_dict = envelope.as_dict()

    assert list(as_dict) == [*FIELDS, "tag"]
    assert as_dict == {
        "v": 2, "id": "abc", "type": "t", "from": alice.agent_id, "to": "*",
        "subject": SUBJECT, "reply": "", "ts": now, "exp": now + 60_000, "cid": "c",
        "auth": "sig", "body": {"x": [1]}, "tag": wire[-64:].hex(),
    }
    assert bytes.fromhex(as_dict["tag"]) == envelope.signature == envelope.tag


def test_parse_accepts_bytearray_and_memoryview(alice: Identity, now: int) -> None:
    wire = seal(alice, type="t", subject=SUBJECT, body="x", ts=now)
    for data in (bytearray(wire), memoryview(wire)):
        envelope = parse(data)
        assert isinstance(envelope, Envelope)
        assert type(envelope.wire) is bytes and envelope.wire == wire


# --- malformed --------------------------------------------------------------

def _malformed_cases(alice: Identity, now: int) -> dict[str, bytes]:
    valid = sign_map(alice, envelope_map(alice, now))
    signed = valid[:-SIGNATURE_SIZE]
    rng = random.Random(1234)
    garbage = bytes([0x00]) + rng.randbytes(199)
    json_bytes = (
        b'{"v": 2, "id": "x", "type": "t", "from": "U", "to": "*", "subject": "a.b",'
        b' "reply": "", "ts": 1, "exp": 2, "cid": "x", "auth": "sig", "body": null}'
    )
    as_array = list(envelope_map(alice, now).values())
    return {
        "random-bytes": garbage,
        "random-bytes-map-start": bytes([0x8C]) + rng.randbytes(199),
        "json": json_bytes,
        "truncated-by-one": valid[:-1],
        "truncated-half": valid[: len(valid) // 2],
        "signature-only": valid[-SIGNATURE_SIZE - 2 :],
        "msgpack-array": sign_map(alice, as_array),
        "trailing-byte-in-signed": sign_raw(alice, signed + b"\xc0"),
        "trailing-map-in-signed": sign_raw(alice, signed + signed),
        "too-short-65": b"\x80" * (SIGNATURE_SIZE + 1),
        "too-short-1": b"\x80",
        "empty": b"",
        "ext-type-in-body": sign_map(
            alice, envelope_map(alice, now, body=msgpack.ExtType(5, b"x"))
        ),
        "int-key": sign_map(alice, {**envelope_map(alice, now), 7: "x"}),
        "int-key-in-body": sign_map(alice, envelope_map(alice, now, body={1: "x"})),
        "reserved-byte": sign_raw(alice, bytes([0x81, 0xA1, 0x76, 0xC1])),
        "deeply-nested-body": sign_raw(
            alice,
            msgpack.packb(envelope_map(alice, now, body=None))[:-1] + b"\x91" * 5000 + b"\xc0",
        ),
    }


MALFORMED_NAMES = [
    "random-bytes", "random-bytes-map-start", "json", "truncated-by-one", "truncated-half",
    "signature-only", "msgpack-array", "trailing-byte-in-signed", "trailing-map-in-signed",
    "too-short-65", "too-short-1", "empty", "ext-type-in-body", "int-key", "int-key-in-body",
    "reserved-byte", "deeply-nested-body",
]


@pytest.mark.parametrize("name", MALFORMED_NAMES)
def test_malformed_is_rejected(alice: Identity, now: int, name: str) -> None:
    data = _malformed_cases(alice, now)[name]
    with pytest.raises(MalformedEnvelope):
        parse(data)
    Recorded().rejects(data, MalformedEnvelope, now=now)


def test_malformed_case_list_is_complete(alice: Identity, now: int) -> None:
    assert sorted(_malformed_cases(alice, now)) == sorted(MALFORMED_NAMES)


@pytest.mark.parametrize("data", ["a string", 12345, None, ["list"]])
def test_non_bytes_is_malformed(data: Any, now: int) -> None:
    with pytest.raises(MalformedEnvelope, match="must be bytes"):
        parse(data)
    Recorded().rejects(data, MalformedEnvelope, now=now)


def test_malformed_error_names_the_problem(alice: Identity, now: int) -> None:
    cases = _malformed_cases(alice, now)
    with pytest.raises(MalformedEnvelope, match="too short"):
        parse(cases["too-short-65"])
    with pytest.raises(MalformedEnvelope, match="does not start with a msgpack map"):
        parse(cases["msgpack-array"])
    with pytest.raises(MalformedEnvelope, match="not valid msgpack"):
        parse(cases["trailing-byte-in-signed"])
    with pytest.raises(MalformedEnvelope, match="extension type 5"):
        parse(cases["ext-type-in-body"])


def _with_body_bytes(identity: Identity, now: int, body: bytes) -> bytes:
    """A signed envelope whose body is the raw msgpack ``body`` (body is the last field)."""
    signed = msgpack.packb(envelope_map(identity, now, body=None))
    assert signed.endswith(b"\xc0")
    return sign_raw(identity, signed[:-1] + body)


TIMESTAMPS = [
    pytest.param(msgpack.packb(msgpack.Timestamp(1, 0)), id="fixext4"),
    pytest.param(msgpack.packb(msgpack.Timestamp(1, 5)), id="fixext8"),
    pytest.param(msgpack.packb(msgpack.Timestamp(2**40, 5)), id="ext8-12"),
    pytest.param(msgpack.packb([1, {"t": msgpack.Timestamp(1, 0)}]), id="nested"),
]
NON_CANONICAL_TIMESTAMPS = [
    pytest.param(b"\xc7\x04\xff" + bytes(4), id="ext8-4"),
    pytest.param(b"\xc8\x00\x04\xff" + bytes(4), id="ext16-4"),
    pytest.param(b"\xc9\x00\x00\x00\x08\xff" + bytes(8), id="ext32-8"),
]


@pytest.mark.parametrize("body", TIMESTAMPS)
def test_timestamp_extension_in_body_is_malformed(alice: Identity, now: int, body: bytes) -> None:
    data = _with_body_bytes(alice, now, body)
    with pytest.raises(MalformedEnvelope, match="timestamp"):
        parse(data)
    Recorded().rejects(data, MalformedEnvelope, now=now)


@pytest.mark.parametrize("body", NON_CANONICAL_TIMESTAMPS)
def test_non_canonical_timestamp_in_body_is_malformed(
    alice: Identity, now: int, body: bytes
) -> None:
    assert isinstance(msgpack.unpackb(body), msgpack.Timestamp)
    Recorded().rejects(_with_body_bytes(alice, now, body), MalformedEnvelope, now=now)


def test_duplicate_key_in_thirteen_entry_map_is_malformed(
    alice: Identity, bob: Identity, now: int
) -> None:
    # 13 entries, 'to' twice: a last-wins decoder and a first-wins one would disagree.
    fields = envelope_map(alice, now)
    signed = bytes([0x80 | 13]) + b"".join(
        msgpack.packb(key) + msgpack.packb(value, use_bin_type=True)
        for key, value in [("to", bob.agent_id), *fields.items()]
    )
    Recorded().rejects(sign_raw(alice, signed), MalformedEnvelope, now=now)


def test_duplicate_key_in_twelve_entry_map_is_malformed(alice: Identity, now: int) -> None:
    # The right header (0x8c) and count, but 'id' twice and no 'cid': 11 distinct keys.
    fields = envelope_map(alice, now)
    pairs = [(k, v) for k, v in fields.items() if k != "cid"] + [("id", "other")]
    signed = bytes([0x8C]) + b"".join(
        msgpack.packb(key) + msgpack.packb(value, use_bin_type=True) for key, value in pairs
    )
    Recorded().rejects(sign_raw(alice, signed), MalformedEnvelope, now=now)


@pytest.mark.parametrize("header", [b"\xde\x00\x0c", b"\xdf\x00\x00\x00\x0c"])
def test_non_fixmap_header_is_malformed(alice: Identity, now: int, header: bytes) -> None:
    signed = msgpack.packb(envelope_map(alice, now))
    assert signed[0] == 0x8C
    data = sign_raw(alice, header + signed[1:])
    assert msgpack.unpackb(data[:-SIGNATURE_SIZE]) == envelope_map(alice, now)
    Recorded().rejects(data, MalformedEnvelope, now=now)


# --- schema -----------------------------------------------------------------

@pytest.mark.parametrize("field", FIELDS)
def test_missing_field_is_schema_error(alice: Identity, now: int, field: str) -> None:
    data = sign_map(alice, envelope_map(alice, now, **{field: _DROP}))
    error = Recorded().rejects(data, SchemaError, now=now)
    assert f"missing ['{field}']" in str(error)


@pytest.mark.parametrize("extra", ["sig", "V", "", "body2"])
def test_extra_field_is_schema_error(alice: Identity, now: int, extra: str) -> None:
    data = sign_map(alice, {**envelope_map(alice, now), extra: 1})
    error = Recorded().rejects(data, SchemaError, now=now)
    assert "unexpected" in str(error) and repr(extra) in str(error)


def test_bytes_key_instead_of_str_is_schema_error(alice: Identity, now: int) -> None:
    fields: dict[Any, Any] = envelope_map(alice, now)
    fields[b"v"] = fields.pop("v")
    data = sign_map(alice, fields)
    error = Recorded().rejects(data, SchemaError, now=now)
    assert "missing ['v']" in str(error)


WRONG_TYPES = [
    ("v", "1"), ("v", True), ("v", 1.0), ("v", None), ("v", [1]),
    ("id", 1), ("id", b"env-1"), ("id", None), ("id", True),
    ("type", 1), ("type", b"task"), ("type", ["task"]),
    ("from", b"U" * 56), ("from", 1), ("from", None),
    ("to", None), ("to", b"*"), ("to", 0),
    ("subject", b"agora.cap.echo"), ("subject", ["agora"]), ("subject", None),
    ("reply", None), ("reply", b""), ("reply", b"_INBOX.x"), ("reply", 0), ("reply", False),
    ("ts", True), ("ts", 1.5), ("ts", "1"), ("ts", None),
    ("exp", True), ("exp", 2.0e12), ("exp", "2"), ("exp", None),
    ("cid", 1), ("cid", b"c"), ("cid", {}),
    ("auth", None), ("auth", b"sig"), ("auth", 1), ("auth", ["sig"]), ("auth", True),
]


@pytest.mark.parametrize(
    ("field", "value"), WRONG_TYPES, ids=[f"{f}={v!r}" for f, v in WRONG_TYPES]
)
def test_wrong_type_is_schema_error(alice: Identity, now: int, field: str, value: Any) -> None:
    data = sign_map(alice, envelope_map(alice, now, **{field: value}))
    error = Recorded().rejects(data, SchemaError, now=now)
    assert repr(field) in str(error)


ACCOUNT_ID = nkeys.from_seed(
    bytearray(nkeys.encode_seed(bytes(32), nkeys.PREFIX_BYTE_ACCOUNT))
).public_key.decode()


def _bad_agent_ids(agent_id: str) -> list[str]:
    last = "A" if agent_id[-1] != "A" else "B"
    return [
        "", "U", "not-an-agent", "U" * 56, agent_id.lower(), agent_id[:-1],
        agent_id + "A", agent_id[:-1] + last, ACCOUNT_ID, "é" * 56,
    ]


def test_bad_from_is_schema_error(alice: Identity, now: int) -> None:
    for bad in [*_bad_agent_ids(alice.agent_id), BROADCAST]:
        data = sign_map(alice, envelope_map(alice, now, from_=bad))
        error = Recorded().rejects(data, SchemaError, now=now)
        assert "'from'" in str(error)


def test_bad_to_is_schema_error(alice: Identity, bob: Identity, now: int) -> None:
    for bad in [*_bad_agent_ids(bob.agent_id), "**", " *"]:
        data = sign_map(alice, envelope_map(alice, now, to=bad))
        error = Recorded().rejects(data, SchemaError, now=now)
        assert "'to'" in str(error)


@pytest.mark.parametrize(
    "bad", ["", "a" * 65, "has space", "dot.ted", "slash/", "é", "tab\t", "a+b"]
)
@pytest.mark.parametrize("field", ["id", "cid"])
def test_bad_id_and_cid_are_schema_errors(alice: Identity, now: int, field: str, bad: str) -> None:
    data = sign_map(alice, envelope_map(alice, now, **{field: bad}))
    error = Recorded().rejects(data, SchemaError, now=now)
    assert f"'{field}'" in str(error)


@pytest.mark.parametrize("good", ["a", "A-z_09", "x" * 64])
def test_id_limits_accepted(alice: Identity, now: int, good: str) -> None:
    data = sign_map(alice, envelope_map(alice, now, id=good, cid=good))
    envelope = Guard(POLICY).admit(data, SUBJECT, now=now)
    assert envelope.id == envelope.cid == good


@pytest.mark.parametrize(
    "bad",
    ["", "Task", "1task", "_task", "task..request", "task.", ".task", "a.b.c.d.e",
     "a" * 33, "a." + "b" * 32, "with-dash", "task request", "tâche"],
)
def test_bad_type_is_schema_error(alice: Identity, now: int, bad: str) -> None:
    data = sign_map(alice, envelope_map(alice, now, type=bad))
    error = Recorded().rejects(data, SchemaError, now=now)
    assert "'type'" in str(error)


@pytest.mark.parametrize("good", ["a", "a" * 32, "a.b.c.d", "bid_v2.x_1", "a.1"])
def test_type_limits_accepted(alice: Identity, now: int, good: str) -> None:
    data = sign_map(alice, envelope_map(alice, now, type=good))
    assert Guard(POLICY).admit(data, SUBJECT, now=now).type == good


@pytest.mark.parametrize(
    "bad", ["", "a..b", ".a", "a.", "a b", "agora.cap.*", "agora.>", "agora.cap.e*",
            "a" * 513, "agora.cap.é", "tab\tsubject"],
)
def test_bad_subject_is_schema_error(alice: Identity, now: int, bad: str) -> None:
    data = sign_map(alice, envelope_map(alice, now, subject=bad))
    error = Recorded().rejects(data, SchemaError, subject=bad, now=now)
    assert "'subject'" in str(error)


@pytest.mark.parametrize(
    "bad", ["a..b", ".a", "a.", "a b", "_INBOX.*", "_INBOX.>", " ", "a" * 513, "_INBOX.é",
            "tab\tsubject"],
)
def test_bad_reply_is_schema_error(alice: Identity, now: int, bad: str) -> None:
    # The reply subject follows the subject rule; "" (no reply) is the one exception.
    data = sign_map(alice, envelope_map(alice, now, reply=bad))
    error = Recorded().rejects(data, SchemaError, reply=bad, now=now)
    assert "'reply'" in str(error)


@pytest.mark.parametrize("good", ["", "_INBOX.abc.1", "a", "x" * 512, "agora.reply.U1.2"])
def test_reply_limits_accepted(alice: Identity, now: int, good: str) -> None:
    data = sign_map(alice, envelope_map(alice, now, reply=good))
    assert Guard(POLICY).admit(data, SUBJECT, good, now=now).reply == good


@pytest.mark.parametrize("bad", ["", "SIG", "Mac", "sig ", "ed25519", "hmac", "none", "é"])
def test_bad_auth_is_schema_error(alice: Identity, now: int, bad: str) -> None:
    data = sign_map(alice, envelope_map(alice, now, auth=bad))
    error = Recorded().rejects(data, SchemaError, now=now)
    assert "'auth'" in str(error)


def test_mac_on_a_broadcast_is_schema_error(alice: Identity, now: int) -> None:
    # Whatever the tag: a MAC convinces one recipient, and '*' is not one.
    data = sign_map(alice, envelope_map(alice, now, auth=AUTH_MAC, to=BROADCAST))
    with pytest.raises(SchemaError, match="broadcast"):
        parse(data)
    Recorded().rejects(data, SchemaError, now=now)


@pytest.mark.parametrize(
    ("ts_offset", "exp_offset"), [(0, 0), (10, 0), (0, -1)], ids=["equal", "after", "before"]
)
def test_ts_not_before_exp_is_schema_error(
    alice: Identity, now: int, ts_offset: int, exp_offset: int
) -> None:
    data = sign_map(alice, envelope_map(alice, now, ts=now + ts_offset, exp=now + exp_offset))
    error = Recorded().rejects(data, SchemaError, now=now)
    assert "'ts' and 'exp'" in str(error)


@pytest.mark.parametrize(("ts", "exp"), [(-1, 10), (0, 2**53), (2**53 - 2, 2**64 - 1)])
def test_ts_exp_range_is_schema_error(alice: Identity, now: int, ts: int, exp: int) -> None:
    data = sign_map(alice, envelope_map(alice, now, ts=ts, exp=exp))
    with pytest.raises(SchemaError, match="2\\*\\*53"):
        parse(data)
    Recorded().rejects(data, SchemaError, now=now)


@pytest.mark.parametrize("version", [0, 1, 3, 255, -1, 2**40])
def test_unsupported_version(alice: Identity, now: int, version: int) -> None:
    data = sign_map(alice, envelope_map(alice, now, v=version))
    with pytest.raises(UnsupportedVersion, match=f"version {version} "):
        parse(data)
    Recorded().rejects(data, UnsupportedVersion, now=now)


def test_unsupported_version_wins_over_a_different_field_set(alice: Identity, now: int) -> None:
    # A future version may change the fields; the receiver should say "version", not "schema".
    fields = {**envelope_map(alice, now, v=3, cid=_DROP), "new_field": [1]}
    Recorded().rejects(sign_map(alice, fields), UnsupportedVersion, now=now)


def test_a_version_1_envelope_is_unsupported(alice: Identity, now: int) -> None:
    # Exactly what a version 1 sender sent: 10 keys (no reply, no auth), header 0x8a, signed.
    fields = envelope_map(alice, now, v=1, reply=_DROP, auth=_DROP)
    data = sign_map(alice, fields)
    assert data[0] == 0x8A and list(fields) == [f for f in FIELDS if f not in ("reply", "auth")]
    with pytest.raises(UnsupportedVersion, match="version 1 is not supported"):
        parse(data)
    Recorded().rejects(data, UnsupportedVersion, now=now)


def test_version_2_fields_under_an_older_count_are_schema_errors(
    alice: Identity, now: int
) -> None:
    # v = 2 but a field short (a v1 layout relabelled): the key set decides, not the header.
    for dropped in ("reply", "auth"):
        data = sign_map(alice, envelope_map(alice, now, **{dropped: _DROP}))
        error = Recorded().rejects(data, SchemaError, now=now)
        assert f"missing ['{dropped}']" in str(error)


# --- admission under both policies --------------------------------------------
#
# From here on every test takes ``policy`` (default and sign_all), and those
# taking ``to`` run for a broadcast and for an envelope addressed to Bob: that
# one is MACed under the default policy and signed under sign_all, as a Bus
# sends it, and Bob's Guard (with his pair keys) receives both.

@pytest.fixture(params=["broadcast", "directed"])
def to(request: pytest.FixtureRequest, bob: Identity) -> str:
    return BROADCAST if request.param == "broadcast" else bob.agent_id


def expected_auth(policy: EnvelopePolicy, to: str) -> str:
    return AUTH_SIG if policy.sign_all or to == BROADCAST else AUTH_MAC


def test_the_policy_decides_how_a_directed_envelope_is_authenticated(
    alice: Identity, now: int, policy: EnvelopePolicy, to: str
) -> None:
    wire = sealer(policy, alice)(type="t", subject=SUBJECT, body=1, to=to, ts=now)
    assert parse(wire).auth == expected_auth(policy, to)


# --- size -------------------------------------------------------------------

def test_oversize_is_checked_before_parsing(
    alice: Identity, bob: Identity, now: int, policy: EnvelopePolicy, to: str
) -> None:
    small = replace(policy, max_bytes=256)
    big_valid = sealer(policy, alice)(type="t", subject=SUBJECT, body="x" * 300, to=to, ts=now)
    Recorded(small, identity=bob).rejects(big_valid, OversizeEnvelope, now=now)
    # Not msgpack at all, but the size check comes first.
    error = Recorded(small, identity=bob).rejects(b"\x00" * 257, OversizeEnvelope, now=now)
    assert "257 bytes exceeds the 256-byte limit" in str(error)
    with pytest.raises(OversizeEnvelope):
        parse(b"\xff" * 1000, max_bytes=999)


def test_envelope_of_exactly_max_bytes_is_accepted(
    alice: Identity, bob: Identity, now: int, policy: EnvelopePolicy, to: str
) -> None:
    limited = replace(policy, max_bytes=400)
    send = sealer(policy, alice)
    base = len(send(type="t", subject=SUBJECT, body="x" * 40, to=to, ts=now, id="i"))
    wire = send(type="t", subject=SUBJECT, body="x" * (40 + 400 - base), to=to, ts=now, id="i")
    assert len(wire) == 400
    assert guard_for(limited, bob).admit(wire, SUBJECT, now=now).wire == wire
    longer = send(type="t", subject=SUBJECT, body="x" * (41 + 400 - base), to=to, ts=now,
                  id="j")
    assert len(longer) == 401
    Recorded(limited, identity=bob).rejects(longer, OversizeEnvelope, now=now)


# --- signature (the tag) ------------------------------------------------------

def test_flipped_signature_bit_is_bad_signature(
    alice: Identity, bob: Identity, now: int, policy: EnvelopePolicy, to: str
) -> None:
    wire = sealer(policy, alice)(type="t", subject=SUBJECT, body="hello", to=to, ts=now)
    for index in (-1, -SIGNATURE_SIZE, -32):
        error = Recorded(policy, identity=bob).rejects(flip_bit(wire, index, 3), BadSignature,
                                                       now=now)
        assert alice.agent_id in str(error)


def test_zero_signature_is_bad_signature(
    alice: Identity, bob: Identity, now: int, policy: EnvelopePolicy, to: str
) -> None:
    wire = sealer(policy, alice)(type="t", subject=SUBJECT, body="hello", to=to, ts=now)
    Recorded(policy, identity=bob).rejects(
        wire[:-SIGNATURE_SIZE] + bytes(SIGNATURE_SIZE), BadSignature, now=now)


def test_tampered_body_with_old_signature_is_bad_signature(
    alice: Identity, bob: Identity, now: int, policy: EnvelopePolicy, to: str
) -> None:
    wire = sealer(policy, alice)(type="t", subject=SUBJECT, body="hello world", to=to, ts=now)
    assert wire.count(b"hello world") == 1
    tampered = wire.replace(b"hello world", b"jello world")
    assert parse(tampered).body == "jello world"  # still well-formed: only the signature is off
    Recorded(policy, identity=bob).rejects(tampered, BadSignature, now=now)


def test_tampered_header_field_is_bad_signature(
    alice: Identity, bob: Identity, now: int, policy: EnvelopePolicy, to: str
) -> None:
    wire = sealer(policy, alice)(type="task.request", subject=SUBJECT, body=1, to=to, ts=now)
    tampered = wire.replace(b"task.request", b"task.rejects")
    assert parse(tampered).type == "task.rejects"
    Recorded(policy, identity=bob).rejects(tampered, BadSignature, now=now)


def test_envelope_claiming_another_sender_is_bad_signature(
    alice: Identity, bob: Identity, now: int, policy: EnvelopePolicy
) -> None:
    # Alice signs a well-formed envelope whose 'from' says Bob.
    forged = sign_map(alice, envelope_map(alice, now, from_=bob.agent_id))
    assert parse(forged).sender == bob.agent_id
    error = Recorded(policy).rejects(forged, BadSignature, now=now)
    assert bob.agent_id in str(error)


def test_signature_from_another_envelope_is_bad_signature(
    alice: Identity, bob: Identity, now: int, policy: EnvelopePolicy, to: str
) -> None:
    send = sealer(policy, alice)
    first = send(type="t", subject=SUBJECT, body=1, to=to, ts=now)
    second = send(type="t", subject=SUBJECT, body=2, to=to, ts=now)
    spliced = second[:-SIGNATURE_SIZE] + first[-SIGNATURE_SIZE:]
    Recorded(policy, identity=bob).rejects(spliced, BadSignature, now=now)


# --- freshness --------------------------------------------------------------

def test_expired(
    alice: Identity, bob: Identity, now: int, policy: EnvelopePolicy, to: str
) -> None:
    wire = sealer(policy, alice)(type="t", subject=SUBJECT, body=1, to=to, ts=now - 2_000,
                                 ttl_ms=1_000)
    error = Recorded(policy, identity=bob).rejects(wire, ExpiredEnvelope, now=now)
    assert "expired 1000 ms ago" in str(error)


def test_expiry_boundary(
    alice: Identity, bob: Identity, now: int, policy: EnvelopePolicy, to: str
) -> None:
    wire = sealer(policy, alice)(type="t", subject=SUBJECT, body=1, to=to, ts=now - 1_000,
                                 ttl_ms=1_000)
    Recorded(policy, identity=bob).rejects(wire, ExpiredEnvelope, now=now)  # exp == now
    assert guard_for(policy, bob).admit(wire, SUBJECT, now=now - 1).exp == now


def test_future(
    alice: Identity, bob: Identity, now: int, policy: EnvelopePolicy, to: str
) -> None:
    skewed = replace(policy, max_clock_skew_ms=5_000)
    send = sealer(policy, alice)
    ahead = send(type="t", subject=SUBJECT, body=1, to=to, ts=now + 5_001)
    error = Recorded(skewed, identity=bob).rejects(ahead, FutureEnvelope, now=now)
    assert "5001 ms ahead" in str(error)
    at_limit = send(type="t", subject=SUBJECT, body=1, to=to, ts=now + 5_000)
    assert guard_for(skewed, bob).admit(at_limit, SUBJECT, now=now).ts == now + 5_000


def test_zero_skew_rejects_any_future_timestamp(
    alice: Identity, bob: Identity, now: int, policy: EnvelopePolicy, to: str
) -> None:
    strict = replace(policy, max_clock_skew_ms=0)
    Recorded(strict, identity=bob).rejects(
        sealer(policy, alice)(type="t", subject=SUBJECT, body=1, to=to, ts=now + 1),
        FutureEnvelope, now=now,
    )


def test_lifetime_over_max_ttl_is_schema_error(
    alice: Identity, bob: Identity, now: int, policy: EnvelopePolicy, to: str
) -> None:
    short = replace(policy, max_ttl_ms=10_000, default_ttl_ms=1_000)
    send = sealer(policy, alice)
    too_long = send(type="t", subject=SUBJECT, body=1, to=to, ts=now, ttl_ms=10_001)
    error = Recorded(short, identity=bob).rejects(too_long, SchemaError, now=now)
    assert "10001 ms exceeds the 10000 ms limit" in str(error)
    limit = send(type="t", subject=SUBJECT, body=1, to=to, ts=now, ttl_ms=10_000)
    assert guard_for(short, bob).admit(limit, SUBJECT, now=now).exp == now + 10_000


# --- replay -----------------------------------------------------------------

def test_same_bytes_twice_is_replayed(
    alice: Identity, bob: Identity, now: int, policy: EnvelopePolicy, to: str
) -> None:
    wire = sealer(policy, alice)(type="t", subject=SUBJECT, body=1, to=to, ts=now)
    recorded = Recorded(policy, identity=bob)
    assert recorded.guard.admit(wire, SUBJECT, now=now).body == 1
    error = recorded.rejects(wire, ReplayedEnvelope, now=now)
    assert "already received" in str(error)


def test_same_id_different_bytes_is_replayed(
    alice: Identity, bob: Identity, now: int, policy: EnvelopePolicy, to: str
) -> None:
    send = sealer(policy, alice)
    recorded = Recorded(policy, identity=bob)
    recorded.guard.admit(send(type="t", subject=SUBJECT, body=1, to=to, ts=now, id="x"),
                         SUBJECT, now=now)
    again = send(type="t", subject=SUBJECT, body=2, to=to, ts=now, id="x")
    recorded.rejects(again, ReplayedEnvelope, now=now)


def test_same_id_from_other_sender_is_not_a_replay(
    alice: Identity, bob: Identity, now: int, policy: EnvelopePolicy, to: str
) -> None:
    guard = guard_for(policy, bob)
    guard.admit(sealer(policy, alice)(type="t", subject=SUBJECT, body=1, to=to, ts=now, id="x"),
                SUBJECT, now=now)
    envelope = guard.admit(
        sealer(policy, bob)(type="t", subject=SUBJECT, body=1, to=to, ts=now, id="x"),
        SUBJECT, now=now,
    )
    assert envelope.sender == bob.agent_id


def test_replay_is_per_guard(
    alice: Identity, bob: Identity, now: int, policy: EnvelopePolicy, to: str
) -> None:
    wire = sealer(policy, alice)(type="t", subject=SUBJECT, body=1, to=to, ts=now)
    assert guard_for(policy, bob).admit(wire, SUBJECT, now=now).wire == wire
    assert guard_for(policy, bob).admit(wire, SUBJECT, now=now).wire == wire


def test_forged_envelope_does_not_poison_replay_cache(
    alice: Identity, bob: Identity, now: int, policy: EnvelopePolicy
) -> None:
    recorded = Recorded(policy)
    # Bob signs an envelope claiming to be Alice's message "x".
    forged = sign_map(bob, envelope_map(alice, now, id="x", body="evil"))
    recorded.rejects(forged, BadSignature, now=now)
    recorded.rejects(forged, BadSignature, now=now, previous=1)  # not "replayed" either

    genuine = sign_map(alice, envelope_map(alice, now, id="x", body="good"))
    envelope = recorded.guard.admit(genuine, SUBJECT, now=now)

    assert envelope.body == "good"
    assert recorded.guard.rejections == {RejectReason.BAD_SIGNATURE: 2}


def test_rejected_for_other_reasons_does_not_poison_replay_cache(
    alice: Identity, bob: Identity, now: int, policy: EnvelopePolicy, to: str
) -> None:
    guard = guard_for(policy, bob)
    wire = sealer(policy, alice)(type="t", subject=SUBJECT, body=1, to=to, ts=now)
    with pytest.raises(WrongSubject):
        guard.admit(wire, "agora.cap.other", now=now)
    with pytest.raises(WrongReply):
        guard.admit(wire, SUBJECT, INBOX, now=now)
    assert guard.admit(wire, SUBJECT, now=now).wire == wire


# --- subject, reply subject and addressing ------------------------------------

def test_wrong_subject(
    alice: Identity, bob: Identity, now: int, policy: EnvelopePolicy, to: str
) -> None:
    wire = sealer(policy, alice)(type="t", subject=SUBJECT, body=1, to=to, ts=now)
    error = Recorded(policy, identity=bob).rejects(wire, WrongSubject, subject="agora.cap.other",
                                                   now=now)
    assert "agora.cap.echo" in str(error) and "agora.cap.other" in str(error)


def test_wrong_subject_is_exact_not_prefix(
    alice: Identity, bob: Identity, now: int, policy: EnvelopePolicy, to: str
) -> None:
    wire = sealer(policy, alice)(type="t", subject=SUBJECT, body=1, to=to, ts=now)
    Recorded(policy, identity=bob).rejects(wire, WrongSubject, subject=SUBJECT + ".x", now=now)
    Recorded(policy, identity=bob).rejects(wire, WrongSubject, subject="agora.cap.ech", now=now)


@pytest.mark.parametrize(
    ("made_for", "arrived_with"),
    [(INBOX, ""), ("", INBOX), (INBOX, INBOX + ".1"), (INBOX, "_INBOX.req"),
     (INBOX, INBOX.upper()), (INBOX + ".1", INBOX)],
    ids=["dropped", "added", "longer", "prefix", "case", "shorter"],
)
def test_wrong_reply(
    alice: Identity, bob: Identity, now: int, policy: EnvelopePolicy, to: str,
    made_for: str, arrived_with: str,
) -> None:
    # A copy published with another reply subject (the answer would go elsewhere).
    wire = sealer(policy, alice)(type="t", subject=SUBJECT, body=1, to=to, reply=made_for,
                                 ts=now)
    recorded = Recorded(policy, identity=bob)
    error = recorded.rejects(wire, WrongReply, reply=arrived_with, now=now)
    assert (made_for or "no reply") in str(error) and arrived_with in str(error)
    # Rejected before the replay cache: the original still passes.
    assert recorded.guard.admit(wire, SUBJECT, made_for, now=now).reply == made_for


def test_wrong_subject_is_checked_before_wrong_reply(
    alice: Identity, bob: Identity, now: int, policy: EnvelopePolicy, to: str
) -> None:
    wire = sealer(policy, alice)(type="t", subject=SUBJECT, body=1, to=to, reply=INBOX, ts=now)
    Recorded(policy, identity=bob).rejects(wire, WrongSubject, subject="agora.x", reply="",
                                           now=now)


def test_reply_none_is_not_checked(
    alice: Identity, bob: Identity, now: int, policy: EnvelopePolicy, to: str
) -> None:
    # A message read back from a store arrives with the store's own reply subject.
    wire = sealer(policy, alice)(type="t", subject=SUBJECT, body=1, to=to, reply=INBOX, ts=now)
    assert guard_for(policy, bob).admit(wire, SUBJECT, None, now=now).reply == INBOX


def test_misaddressed(
    alice: Identity, bob: Identity, now: int, policy: EnvelopePolicy
) -> None:
    carol = Identity.generate()
    wire = sealer(policy, alice)(type="t", subject=SUBJECT, body=1, to=carol.agent_id, ts=now)
    error = Recorded(policy, identity=bob).rejects(wire, Misaddressed, now=now)
    assert carol.agent_id in str(error)
    # An agent id alone (no pair keys) is enough to refuse it the same way.
    Recorded(policy, agent_id=bob.agent_id).rejects(wire, Misaddressed, now=now)


def test_misaddressed_is_checked_before_freshness(
    alice: Identity, bob: Identity, now: int, policy: EnvelopePolicy
) -> None:
    wire = sealer(policy, alice)(type="t", subject=SUBJECT, body=1, to=alice.agent_id,
                                 ts=now - 10_000, ttl_ms=1_000)
    Recorded(policy, identity=bob).rejects(wire, Misaddressed, now=now)


def test_broadcast_and_own_id_are_accepted(
    alice: Identity, bob: Identity, now: int, policy: EnvelopePolicy
) -> None:
    guard = guard_for(policy, bob)
    send = sealer(policy, alice)
    broadcast = send(type="t", subject=SUBJECT, body=1, ts=now)
    direct = send(type="t", subject=SUBJECT, body=2, to=bob.agent_id, ts=now)
    assert guard.admit(broadcast, SUBJECT, now=now).is_broadcast
    assert guard.admit(direct, SUBJECT, now=now).to == bob.agent_id
    assert not guard.rejections


def test_guard_without_agent_id_accepts_any_addressee(
    alice: Identity, bob: Identity, now: int, policy: EnvelopePolicy
) -> None:
    wire = sealer(policy, alice)(type="t", subject=SUBJECT, body=1, to=bob.agent_id, ts=now)
    assert guard_for(policy).admit(wire, SUBJECT, now=now).to == bob.agent_id


# --- counting ---------------------------------------------------------------

def test_rejections_accumulate_by_reason_and_every_hook_runs(
    alice: Identity, bob: Identity, now: int, policy: EnvelopePolicy, to: str
) -> None:
    guard = guard_for(policy, bob)
    first: list[RejectReason] = []
    second: list[RejectReason] = []
    guard.on_reject.extend([first.append, second.append])
    wire = sealer(policy, alice)(type="t", subject=SUBJECT, body=1, to=to, ts=now)
    attempts: list[tuple[bytes, str, str]] = [
        (b"junk", SUBJECT, ""), (b"more junk", SUBJECT, ""), (wire, "agora.cap.x", ""),
        (wire, SUBJECT, INBOX), (wire, SUBJECT, ""), (wire, SUBJECT, ""),
    ]
    for data, subject, reply in attempts[:4]:
        with pytest.raises(EnvelopeError):
            guard.admit(data, subject, reply, now=now)
    guard.admit(*attempts[4], now=now)
    with pytest.raises(ReplayedEnvelope):
        guard.admit(*attempts[5], now=now)
    expected = [RejectReason.MALFORMED] * 2 + [
        RejectReason.WRONG_SUBJECT, RejectReason.WRONG_REPLY, RejectReason.REPLAYED]
    assert first == second == expected
    assert guard.rejections == {
        RejectReason.MALFORMED: 2, RejectReason.WRONG_SUBJECT: 1, RejectReason.WRONG_REPLY: 1,
        RejectReason.REPLAYED: 1,
    }


def test_reject_counts_and_returns_the_error(policy: EnvelopePolicy) -> None:
    guard = Guard(policy)
    error = ExpiredEnvelope("late")
    assert guard.reject(error) is error
    assert guard.rejections == {RejectReason.EXPIRED: 1}


def test_admit_raises_without_exception_chain(now: int, policy: EnvelopePolicy) -> None:
    with pytest.raises(MalformedEnvelope) as info:
        Guard(policy).admit(b"\x00" * 100, SUBJECT, now=now)
    assert info.value.__suppress_context__


# --- deferred verification --------------------------------------------------

def test_deferred_admit_then_confirm(
    alice: Identity, bob: Identity, now: int, policy: EnvelopePolicy, to: str
) -> None:
    guard = guard_for(policy, bob)
    wire = sealer(policy, alice)(type="bid", subject=SUBJECT, body={"price": 3}, to=to, ts=now)

    envelope = guard.admit(wire, SUBJECT, verify=False, now=now)
    assert guard.confirm(envelope, now=now) is envelope

    with pytest.raises(ReplayedEnvelope):
        guard.admit(wire, SUBJECT, now=now)
    with pytest.raises(ReplayedEnvelope):
        guard.confirm(envelope, now=now)
    assert guard.rejections == {RejectReason.REPLAYED: 2}


def test_deferred_admit_does_not_remember_until_confirmed(
    alice: Identity, bob: Identity, now: int, policy: EnvelopePolicy, to: str
) -> None:
    guard = guard_for(policy, bob)
    wire = sealer(policy, alice)(type="bid", subject=SUBJECT, body=1, to=to, ts=now)
    first = guard.admit(wire, SUBJECT, verify=False, now=now)
    second = guard.admit(wire, SUBJECT, verify=False, now=now)
    assert first.wire == second.wire
    guard.confirm(second, now=now)
    with pytest.raises(ReplayedEnvelope):
        guard.confirm(first, now=now)


def test_confirm_rejects_a_forged_envelope(
    alice: Identity, bob: Identity, now: int, policy: EnvelopePolicy
) -> None:
    recorded = Recorded(policy)
    forged = sign_map(bob, envelope_map(alice, now, body="evil"))
    envelope = recorded.guard.admit(forged, SUBJECT, verify=False, now=now)  # not checked yet
    assert not recorded.guard.rejections

    with pytest.raises(BadSignature):
        recorded.guard.confirm(envelope, now=now)

    assert recorded.guard.rejections == {RejectReason.BAD_SIGNATURE: 1}
    assert recorded.hooked == [RejectReason.BAD_SIGNATURE]
    genuine = sign_map(alice, envelope_map(alice, now, body="good"))
    assert recorded.guard.admit(genuine, SUBJECT, now=now).body == "good"


def test_confirm_rejects_an_envelope_that_expired_meanwhile(
    alice: Identity, bob: Identity, now: int, policy: EnvelopePolicy, to: str
) -> None:
    guard = guard_for(policy, bob)
    wire = sealer(policy, alice)(type="bid", subject=SUBJECT, body=1, to=to, ts=now,
                                 ttl_ms=1_000)
    envelope = guard.admit(wire, SUBJECT, verify=False, now=now)
    with pytest.raises(ExpiredEnvelope):
        guard.confirm(envelope, now=now + 1_000)
    assert guard.rejections == {RejectReason.EXPIRED: 1}


def test_deferred_admit_still_checks_everything_but_the_signature(
    alice: Identity, bob: Identity, now: int, policy: EnvelopePolicy
) -> None:
    guard = guard_for(policy, alice)
    wire = sealer(policy, alice)(type="bid", subject=SUBJECT, body=1, to=bob.agent_id,
                                 reply=INBOX, ts=now)
    with pytest.raises(Misaddressed):
        guard.admit(wire, SUBJECT, INBOX, verify=False, now=now)
    with pytest.raises(WrongSubject):
        guard.admit(wire, "agora.x", INBOX, verify=False, now=now)
    with pytest.raises(WrongReply):
        guard.admit(wire, SUBJECT, "", verify=False, now=now)
    with pytest.raises(MalformedEnvelope):
        guard.admit(b"\x00" * 80, SUBJECT, verify=False, now=now)


# --- process-wide verification cache ----------------------------------------

def test_verification_cache_does_not_cover_tampered_bytes(
    alice: Identity, now: int, policy: EnvelopePolicy
) -> None:
    wire = seal(alice, type="t", subject=SUBJECT, body="pay 10", ts=now)
    first = Guard(policy)
    assert first.admit(wire, SUBJECT, now=now).body == "pay 10"  # signature now cached

    tampered = wire.replace(b"pay 10", b"pay 99")
    second = Recorded(policy)
    second.rejects(tampered, BadSignature, now=now)
    # The genuine bytes still pass for the second guard (cache hit or not).
    assert second.guard.admit(wire, SUBJECT, now=now).body == "pay 10"


def test_verification_cache_does_not_cover_another_sender(
    alice: Identity, bob: Identity, now: int, policy: EnvelopePolicy
) -> None:
    genuine = sign_map(alice, envelope_map(alice, now, id="y"))
    assert Guard(policy).admit(genuine, SUBJECT, now=now).sender == alice.agent_id
    # Same signature appended to a map claiming Bob: different signed bytes.
    claimed = msgpack.packb(envelope_map(alice, now, id="y", from_=bob.agent_id))
    Recorded(policy).rejects(claimed + genuine[-SIGNATURE_SIZE:], BadSignature, now=now)


# --- replay cache bounds and expiry ------------------------------------------

def test_replay_cache_is_bounded(
    alice: Identity, bob: Identity, now: int, policy: EnvelopePolicy, to: str
) -> None:
    guard = guard_for(replace(policy, replay_cache_size=3), bob)
    send = sealer(policy, alice)
    wires = [
        send(type="t", subject=SUBJECT, body=n, to=to, ts=now, ttl_ms=10_000 + n)
        for n in range(10)
    ]
    for wire in wires:
        guard.admit(wire, SUBJECT, now=now)
        assert len(guard._seen) <= 3
        assert len(guard._expiry) <= 3
    # The newest is remembered; the earliest-expiring were evicted.
    newest = parse(wires[-1])
    assert (newest.sender, newest.id) in guard._seen
    assert (parse(wires[0]).sender, parse(wires[0]).id) not in guard._seen
    with pytest.raises(ReplayedEnvelope):
        guard.admit(wires[-1], SUBJECT, now=now)


def test_replay_cache_size_one(
    alice: Identity, bob: Identity, now: int, policy: EnvelopePolicy, to: str
) -> None:
    guard = guard_for(replace(policy, replay_cache_size=1), bob)
    for n in range(3):
        wire = sealer(policy, alice)(type="t", subject=SUBJECT, body=n, to=to, ts=now)
        guard.admit(wire, SUBJECT, now=now)
        with pytest.raises(ReplayedEnvelope):
            guard.admit(wire, SUBJECT, now=now)
        assert len(guard._seen) == 1


def test_replay_cache_entries_expire(
    alice: Identity, bob: Identity, policy: EnvelopePolicy, to: str
) -> None:
    guard = guard_for(policy, bob)
    send = sealer(policy, alice)
    old = send(type="t", subject=SUBJECT, body=1, to=to, ts=1_000, ttl_ms=1_000)
    later = send(type="t", subject=SUBJECT, body=2, to=to, ts=2_500, ttl_ms=60_000)
    old_key = (alice.agent_id, parse(old).id)

    guard.admit(old, SUBJECT, now=1_500)
    assert old_key in guard._seen
    guard.admit(later, SUBJECT, now=3_000)  # old expired at 2_000: purged on this insert

    assert old_key not in guard._seen
    assert len(guard._expiry) == 1
    # Past its expiry the envelope is refused as expired, so forgetting it is safe.
    with pytest.raises(ExpiredEnvelope):
        guard.admit(old, SUBJECT, now=3_000)


def test_replay_rejected_under_injected_clock(
    alice: Identity, bob: Identity, policy: EnvelopePolicy, to: str
) -> None:
    guard = guard_for(policy, bob)
    send = sealer(policy, alice)
    first = send(type="t", subject=SUBJECT, body=1, to=to, ts=1_000, ttl_ms=60_000)
    second = send(type="t", subject=SUBJECT, body=2, to=to, ts=1_000, ttl_ms=60_000)
    guard.admit(first, SUBJECT, now=1_500)
    guard.admit(second, SUBJECT, now=1_500)
    with pytest.raises(ReplayedEnvelope):
        guard.admit(first, SUBJECT, now=1_600)


def test_random_valid_envelopes_round_trip(
    alice: Identity, bob: Identity, now: int, policy: EnvelopePolicy, to: str
) -> None:
    rng = random.Random(7)
    guard = guard_for(policy, bob)
    send = sealer(policy, alice)
    make: list[Callable[[], Any]] = [
        lambda: rng.randint(-(2**63), 2**64 - 1),
        lambda: os.urandom(rng.randint(0, 50)),
        lambda: "".join(chr(rng.randint(32, 0x2FFF)) for _ in range(rng.randint(0, 20))),
        lambda: [rng.random() for _ in range(rng.randint(0, 5))],
    ]
    for _ in range(50):
        body = {f"k{i}": rng.choice(make)() for i in range(rng.randint(0, 6))}
        reply = rng.choice(["", INBOX, f"_INBOX.r.{rng.randint(0, 99)}"])
        wire = send(type="t", subject=SUBJECT, body=body, to=to, reply=reply, ts=now)
        envelope = guard.admit(wire, SUBJECT, reply, now=now)
        assert envelope.body == body
        assert envelope.auth == expected_auth(policy, to)
    assert not guard.rejections
