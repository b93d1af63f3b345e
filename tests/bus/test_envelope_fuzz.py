"""Fuzzing ``parse`` and ``Guard.admit`` (wire version 2, ``sig`` and ``mac`` envelopes).

Whatever arrives, the only exception allowed out is an ``EnvelopeError``; and
no byte sequence other than the exact one a sender signed (or MACed) is ever
admitted by an agent. An observer, which holds no pair key, may pass a
mutated ``mac`` envelope on (unchecked, PROTOCOL.md §8), never a mutated
signed one. Hypothesis runs derandomized with no example database, so CI is
repeatable.
"""

from __future__ import annotations

from typing import Any

import msgpack
import nkeys
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from agoramesh.bus.admission import Guard
from agoramesh.bus.e2e import E2EKeys
from agoramesh.bus.envelope import (
    AUTH_MAC,
    BROADCAST,
    FIELDS,
    SIGNATURE_SIZE,
    Envelope,
    mac,
    parse,
    seal,
)
from agoramesh.bus.identity import Identity, is_agent_id
from agoramesh.config import EnvelopePolicy
from agoramesh.errors import EnvelopeError, IdentityError

SUBJECT = "agora.cap.fuzz"
REPLY = "_INBOX.fuzz.1"
TS = 1_700_000_000_000
POLICY = EnvelopePolicy(max_bytes=4096)
SIGN_ALL = EnvelopePolicy(max_bytes=4096, sign_all=True)
# Fixed keys, so the envelopes below (and so every example) are the same each run.
SENDER = Identity(nkeys.encode_seed(bytes(range(32)), nkeys.PREFIX_BYTE_USER))
RECIPIENT = Identity(nkeys.encode_seed(bytes(range(32, 64)), nkeys.PREFIX_BYTE_USER))
SENDER_KEYS = E2EKeys(SENDER)
RECIPIENT_KEYS = E2EKeys(RECIPIENT)

FUZZ = settings(
    max_examples=300,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

SEED_BODIES = [
    None,
    {"text": "hello", "n": [1, 2, 3], "blob": b"\x00\x01\xff"},
    [True, -(2**63), 2**64 - 1, 1.5, "ünïcode ✓", {"deep": {"er": [[]]}}],
    "x" * 300,
]
#: Each seed wire and the reply subject it is published with: a broadcast and a
#: directed envelope, both signed, and a directed one MACed (as a Bus sends it).
SEEDS: dict[bytes, str] = {}
for n, body in enumerate(SEED_BODIES):
    for kind, to, reply, pair_key in [
        ("sig", BROADCAST, "", None),
        ("sig-to", RECIPIENT.agent_id, REPLY, None),
        ("mac", RECIPIENT.agent_id, REPLY, SENDER_KEYS.pair_key),
        ("mac-noreply", RECIPIENT.agent_id, "", SENDER_KEYS.pair_key),
    ]:
        wire = seal(SENDER, type="task.request", subject=SUBJECT, body=body, to=to, reply=reply,
                    ts=TS, id=f"fuzz-{kind}-{n}", pair_key=pair_key)
        SEEDS[wire] = reply
VALID_WIRES = list(SEEDS)
MAC_WIRES = [wire for wire in VALID_WIRES if parse(wire).auth == AUTH_MAC]


def fresh_guard(policy: EnvelopePolicy = POLICY) -> Guard:
    """The recipient's Guard, as its Bus builds it (pair keys and opener)."""
    return Guard(policy, agent_id=RECIPIENT.agent_id, opener=RECIPIENT_KEYS.open,
                 pair_key=RECIPIENT_KEYS.pair_key)


def observer() -> Guard:
    return Guard(POLICY)


def parse_or_reject(data: bytes) -> Envelope | None:
    """parse() may return or raise EnvelopeError; any other exception fails the test."""
    try:
        return parse(data, max_bytes=POLICY.max_bytes)
    except EnvelopeError:
        return None


def admit_or_reject(guard: Guard, data: bytes, subject: str = SUBJECT,
                    reply: str | None = "") -> Envelope | None:
    """admit() may return or raise EnvelopeError (counted once); nothing else."""
    before = sum(guard.rejections.values())
    try:
        envelope = guard.admit(data, subject, reply, now=TS)
    except EnvelopeError as error:
        assert guard.rejections[error.reason] >= 1
        assert sum(guard.rejections.values()) == before + 1
        return None
    assert sum(guard.rejections.values()) == before
    return envelope


def test_valid_wires_are_admitted() -> None:
    # The fuzz tests below assume their seeds are admissible as they are.
    assert len(MAC_WIRES) == 2 * len(SEED_BODIES)
    for wire, reply in SEEDS.items():
        assert fresh_guard().admit(wire, SUBJECT, reply, now=TS).wire == wire
        assert observer().admit(wire, SUBJECT, reply, now=TS).wire == wire
        if wire in MAC_WIRES:
            with pytest.raises(EnvelopeError):
                fresh_guard(SIGN_ALL).admit(wire, SUBJECT, reply, now=TS)
        else:
            assert fresh_guard(SIGN_ALL).admit(wire, SUBJECT, reply, now=TS).wire == wire


# --- (a) random bytes ---------------------------------------------------------

@FUZZ
@given(st.binary(max_size=600))
def test_random_bytes_are_rejected(data: bytes) -> None:
    parse_or_reject(data)
    for guard in (fresh_guard(), observer()):
        with pytest.raises(EnvelopeError):
            guard.admit(data, SUBJECT, now=TS)
        assert sum(guard.rejections.values()) == 1


@FUZZ
@given(st.sampled_from([0x80, 0x8A, 0x8C, 0xDE, 0xDF]), st.binary(min_size=65, max_size=600))
def test_random_bytes_behind_a_map_header_are_rejected(first: int, rest: bytes) -> None:
    data = bytes([first]) + rest
    parse_or_reject(data)
    for guard in (fresh_guard(), observer()):
        with pytest.raises(EnvelopeError):
            guard.admit(data, SUBJECT, now=TS)


# --- (b) mutated valid envelopes ----------------------------------------------

@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes] = VALID_WIRES) -> tuple[bytes, bytes]:
    """A valid wire and a copy with 1-4 random bit flips, cuts, inserts or replacements."""
    original = draw(st.sampled_from(seeds))
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "replace", "delete"]))
        position = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[position:]
        elif op == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=8))
        elif op == "replace" and data:
            data[position] = draw(st.integers(0, 255))
        elif op == "delete" and data:
            del data[position : position + draw(st.integers(1, 8))]
    return original, bytes(data)


@settings(FUZZ, max_examples=1000)
@given(mutated())
def test_mutated_envelope_is_never_admitted(case: tuple[bytes, bytes]) -> None:
    original, data = case
    assume(data != original)
    parse_or_reject(data)
    reply = SEEDS[original]
    for guard in (fresh_guard(), fresh_guard(SIGN_ALL)):
        # Admitting bytes the sender never signed (or MACed) would be a forgery.
        assert admit_or_reject(guard, data, reply=reply) is None
    # An observer checks no MAC: only a mac envelope may pass it changed.
    seen = admit_or_reject(observer(), data, reply=reply)
    assert seen is None or (seen.auth == AUTH_MAC and original in MAC_WIRES)


@settings(FUZZ, max_examples=500)
@given(mutated(MAC_WIRES))
def test_mutated_mac_envelope_is_never_admitted(case: tuple[bytes, bytes]) -> None:
    original, data = case
    assume(data != original)
    parse_or_reject(data)
    assert admit_or_reject(fresh_guard(), data, reply=SEEDS[original]) is None
    assert admit_or_reject(fresh_guard(), data, reply=None) is None


@FUZZ
@given(st.sampled_from(VALID_WIRES), st.integers(0, 10_000), st.integers(0, 7))
def test_every_single_bit_flip_is_refused(wire: bytes, index: int, bit: int) -> None:
    data = bytearray(wire)
    data[index % len(data)] ^= 1 << bit
    with pytest.raises(EnvelopeError):
        fresh_guard().admit(bytes(data), SUBJECT, SEEDS[wire], now=TS)


# --- (c) random msgpack structures --------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
keys = st.text(max_size=8) | st.integers(-5, 5) | st.binary(max_size=4) | st.sampled_from(FIELDS)
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(keys, children, max_size=5),
    max_leaves=20,
)

# Bodies as a sender would send them: maps keyed by str (or bytes).
bodies = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=8) | st.binary(max_size=4), children, max_size=5),
    max_leaves=20,
)
ids = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)
REPLIES = ["", REPLY]
valid_fields = {
    "v": st.just(2),
    "id": ids,
    "type": st.sampled_from(["task.request", "bid", "a.b_c.d"]),
    "from": st.just(SENDER.agent_id),
    "to": st.sampled_from(["*", RECIPIENT.agent_id, RECIPIENT.agent_id, SENDER.agent_id]),
    "subject": st.just(SUBJECT),
    "reply": st.sampled_from(REPLIES),
    "ts": st.integers(TS - 50_000, TS + 40_000),
    "exp": st.integers(TS - 100_000, TS + 1_000_000),
    "cid": ids,
    "auth": st.sampled_from(["sig", "mac"]),
    "body": bodies,
}
broken_fields = {
    "v": st.sampled_from([1, 3, 0, True, 2.0, "2"]) | values,
    "id": st.sampled_from(["", "a b", "x" * 65]) | values,
    "type": st.sampled_from(["Bad", "a..b", ""]) | values,
    "from": st.sampled_from(["*", "U" * 56, SENDER.agent_id.lower(), RECIPIENT.agent_id])
    | values,
    "to": st.sampled_from(["x", "U" * 56, ""]) | values,
    "subject": st.sampled_from(["agora.>", "", "agora.cap.other", "a b"]) | values,
    "reply": st.sampled_from(["_INBOX.>", "a b", ".x", "_INBOX.other", SUBJECT]) | values,
    "ts": st.sampled_from([-1, 2**53, True, 1.5]) | values,
    "exp": st.sampled_from([-1, 2**53, TS, True]) | values,
    "cid": st.sampled_from(["", "a.b"]) | values,
    "auth": st.sampled_from(["", "MAC", "sig ", "none", b"sig"]) | values,
    "body": values,
}


rarely = st.sampled_from([False] * 9 + [True])
# Twelve fields: each broken one time in twenty, so over half the maps have none.
per_field = st.sampled_from([False] * 19 + [True])


@st.composite
def envelope_like(draw: st.DrawFn) -> dict[Any, Any]:
    """An envelope map, each field valid 95% of the time, so every check is reached."""
    fields: dict[Any, Any] = {}
    for name in FIELDS:
        fields[name] = draw((broken_fields if draw(per_field) else valid_fields)[name])
    if type(fields["ts"]) is int and type(fields["exp"]) is int and not draw(rarely):
        fields["exp"] = fields["ts"] + draw(st.integers(1, 600_000))
    if draw(rarely):
        for name in draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=2)):
            fields.pop(name, None)
    if draw(rarely):
        fields.update(draw(st.dictionaries(keys, values, min_size=1, max_size=2)))
    return fields


def packed(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


@FUZZ
@given(values, st.none() | st.binary(min_size=SIGNATURE_SIZE, max_size=SIGNATURE_SIZE))
def test_random_msgpack_is_rejected(value: Any, tail: bytes | None) -> None:
    data = packed(value) + (tail or b"")
    parse_or_reject(data)
    with pytest.raises(EnvelopeError):
        fresh_guard().admit(data, SUBJECT, now=TS)


@FUZZ
@given(envelope_like(), st.binary(min_size=SIGNATURE_SIZE, max_size=SIGNATURE_SIZE),
       st.sampled_from(REPLIES))
def test_random_envelope_maps_with_random_signature_are_rejected(
    fields: dict[Any, Any], tail: bytes, reply: str
) -> None:
    data = packed(fields) + tail
    parse_or_reject(data)
    for guard in (fresh_guard(), fresh_guard(SIGN_ALL)):
        with pytest.raises(EnvelopeError):
            guard.admit(data, SUBJECT, reply, now=TS)
    # An observer may pass a mac envelope (it cannot check it), never a signed one.
    seen = admit_or_reject(observer(), data, reply=reply)
    assert seen is None or seen.auth == AUTH_MAC


def genuine_tag(fields: dict[Any, Any], signed: bytes) -> bytes:
    """The tag the sender would put on ``signed``: a MAC if it says so (and can), else a
    signature, so that every check before the tag decides."""
    to = fields.get("to")
    if fields.get("auth") == AUTH_MAC and type(to) is str and is_agent_id(to):
        try:
            return mac(SENDER_KEYS.pair_key(to), signed)
        except IdentityError:
            pass
    return SENDER.sign(signed)


def arrival_reply(data: st.DataObject, fields: dict[Any, Any]) -> str:
    """The reply subject it arrives with: mostly the one it names, so the tag is reached."""
    named = fields.get("reply")
    if type(named) is str and not data.draw(rarely):
        return named
    return data.draw(st.sampled_from(REPLIES))


def guard_name(guard: Guard) -> str:
    return "sign_all" if guard.policy.sign_all else "agent" if guard.agent_id else "observer"


@FUZZ
@given(envelope_like(), st.data())
def test_random_envelope_maps_signed_by_sender_never_escape(
    fields: dict[Any, Any], data: st.DataObject
) -> None:
    # Properly signed (or MACed): everything now depends on the checks before the tag.
    signed = packed(fields)
    wire = signed + genuine_tag(fields, signed)
    reply = arrival_reply(data, fields)
    for guard in (fresh_guard(), fresh_guard(SIGN_ALL), observer()):
        envelope = admit_or_reject(guard, wire, reply=reply)
        event(f"{guard_name(guard)}: {f'admitted {envelope.auth}' if envelope else 'rejected'}")
        if envelope is not None:
            # Anything admitted must be exactly what was sent, field for field.
            assert envelope.wire == wire
            assert envelope.reply == reply
            assert not (guard.policy.sign_all and envelope.auth == AUTH_MAC)
            # (compared packed: NaN != NaN, but packs to the same bytes)
            admitted = {k: packed(v) for k, v in envelope.as_dict().items() if k != "tag"}
            assert admitted == {k: packed(v) for k, v in fields.items()}


@settings(FUZZ, max_examples=150)
@given(envelope_like(), st.binary(min_size=0, max_size=64), st.sampled_from(REPLIES))
def test_mac_under_any_other_key_is_rejected(
    fields: dict[Any, Any], key: bytes, reply: str
) -> None:
    # A MAC under a key that is not the pair key of 'from' and the recipient (random,
    # empty, or another pair's).
    fields = {**fields, "auth": AUTH_MAC}
    sender = fields.get("from")
    genuine = None
    if type(sender) is str and is_agent_id(sender):
        try:
            genuine = RECIPIENT_KEYS.pair_key(sender)
        except IdentityError:
            pass
    signed = packed(fields)
    others = {key, SENDER_KEYS.pair_key(SENDER.agent_id),
              RECIPIENT_KEYS.pair_key(RECIPIENT.agent_id),
              SENDER_KEYS.pair_key(RECIPIENT.agent_id)} - {genuine}
    for tag in (mac(other, signed) for other in others):
        parse_or_reject(signed + tag)
        for guard in (fresh_guard(), fresh_guard(SIGN_ALL)):
            with pytest.raises(EnvelopeError):
                guard.admit(signed + tag, SUBJECT, reply, now=TS)


@FUZZ
@given(values)
def test_random_body_round_trips_or_is_refused_cleanly(body: Any) -> None:
    try:
        wire = seal(SENDER, type="t", subject=SUBJECT, body=body, ts=TS)
        directed = seal(SENDER, type="t", subject=SUBJECT, body=body, ts=TS,
                        to=RECIPIENT.agent_id, reply=REPLY, pair_key=SENDER_KEYS.pair_key,
                        box=SENDER_KEYS.seal_body)
    except EnvelopeError:
        return
    envelope = admit_or_reject(fresh_guard(), wire)
    if envelope is not None:
        assert packed(envelope.body) == packed(body)
    envelope = admit_or_reject(fresh_guard(), directed, reply=REPLY)
    if envelope is not None:
        assert envelope.auth == AUTH_MAC
        assert packed(envelope.body) == packed(body)
