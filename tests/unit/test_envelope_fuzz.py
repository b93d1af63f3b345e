"""Fuzzing ``parse`` and ``Guard.admit``.

Whatever arrives, the only exception allowed out is an ``EnvelopeError``; and
no byte sequence other than the exact one a sender signed is ever admitted.
Hypothesis runs derandomized with no example database, so CI is repeatable.
"""

from __future__ import annotations

from typing import Any

import msgpack
import nkeys
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from agoramesh.bus.envelope import FIELDS, SIGNATURE_SIZE, Envelope, Guard, parse, seal
from agoramesh.bus.identity import Identity
from agoramesh.config import EnvelopePolicy
from agoramesh.errors import EnvelopeError

SUBJECT = "agora.cap.fuzz"
TS = 1_700_000_000_000
POLICY = EnvelopePolicy(max_bytes=4096)
# A fixed key, so the envelopes below (and so every example) are the same each run.
SENDER = Identity(nkeys.encode_seed(bytes(range(32)), nkeys.PREFIX_BYTE_USER))

FUZZ = settings(
    max_examples=300,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

VALID_WIRES = [
    seal(SENDER, type="task.request", subject=SUBJECT, body=body, ts=TS, id=f"fuzz-{n}")
    for n, body in enumerate(
        [
            None,
            {"text": "hello", "n": [1, 2, 3], "blob": b"\x00\x01\xff"},
            [True, -(2**63), 2**64 - 1, 1.5, "ünïcode ✓", {"deep": {"er": [[]]}}],
            "x" * 300,
        ]
    )
]


def fresh_guard() -> Guard:
    return Guard(POLICY, agent_id=SENDER.agent_id)


def parse_or_reject(data: bytes) -> Envelope | None:
    """parse() may return or raise EnvelopeError; any other exception fails the test."""
    try:
        return parse(data, max_bytes=POLICY.max_bytes)
    except EnvelopeError:
        return None


def admit_or_reject(guard: Guard, data: bytes, subject: str = SUBJECT) -> Envelope | None:
    before = sum(guard.rejections.values())
    try:
        envelope = guard.admit(data, subject, now=TS)
    except EnvelopeError as error:
        assert guard.rejections[error.reason] >= 1
        assert sum(guard.rejections.values()) == before + 1
        return None
    assert sum(guard.rejections.values()) == before
    return envelope


def test_valid_wires_are_admitted() -> None:
    # The fuzz tests below assume their seeds are admissible as they are.
    for wire in VALID_WIRES:
        assert fresh_guard().admit(wire, SUBJECT, now=TS).wire == wire


# --- (a) random bytes ---------------------------------------------------------

@FUZZ
@given(st.binary(max_size=600))
def test_random_bytes_are_rejected(data: bytes) -> None:
    parse_or_reject(data)
    guard = fresh_guard()
    with pytest.raises(EnvelopeError):
        guard.admit(data, SUBJECT, now=TS)
    assert sum(guard.rejections.values()) == 1


@FUZZ
@given(st.sampled_from([0x80, 0x8A, 0xDE, 0xDF]), st.binary(min_size=65, max_size=600))
def test_random_bytes_behind_a_map_header_are_rejected(first: int, rest: bytes) -> None:
    data = bytes([first]) + rest
    parse_or_reject(data)
    with pytest.raises(EnvelopeError):
        fresh_guard().admit(data, SUBJECT, now=TS)


# --- (b) mutated valid envelopes ----------------------------------------------

@st.composite
def mutated(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """A valid wire and a copy with 1-4 random bit flips, cuts, inserts or replacements."""
    original = draw(st.sampled_from(VALID_WIRES))
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
    envelope = admit_or_reject(fresh_guard(), data)
    # Admitting bytes the sender never signed would be a forgery.
    assert envelope is None or envelope.wire == original


@FUZZ
@given(st.sampled_from(VALID_WIRES), st.integers(0, 10_000), st.integers(0, 7))
def test_every_single_bit_flip_is_refused(wire: bytes, index: int, bit: int) -> None:
    data = bytearray(wire)
    data[index % len(data)] ^= 1 << bit
    with pytest.raises(EnvelopeError):
        fresh_guard().admit(bytes(data), SUBJECT, now=TS)


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
valid_fields = {
    "v": st.just(1),
    "id": ids,
    "type": st.sampled_from(["task.request", "bid", "a.b_c.d"]),
    "from": st.just(SENDER.agent_id),
    "to": st.sampled_from(["*", SENDER.agent_id]),
    "subject": st.just(SUBJECT),
    "ts": st.integers(TS - 50_000, TS + 40_000),
    "exp": st.integers(TS - 100_000, TS + 1_000_000),
    "cid": ids,
    "body": bodies,
}
broken_fields = {
    "v": st.sampled_from([2, 0, True, 1.0, "1"]) | values,
    "id": st.sampled_from(["", "a b", "x" * 65]) | values,
    "type": st.sampled_from(["Bad", "a..b", ""]) | values,
    "from": st.sampled_from(["*", "U" * 56, SENDER.agent_id.lower()]) | values,
    "to": st.sampled_from(["x", "U" * 56, ""]) | values,
    "subject": st.sampled_from(["agora.>", "", "agora.cap.other", "a b"]) | values,
    "ts": st.sampled_from([-1, 2**53, True, 1.5]) | values,
    "exp": st.sampled_from([-1, 2**53, TS, True]) | values,
    "cid": st.sampled_from(["", "a.b"]) | values,
    "body": values,
}


rarely = st.sampled_from([False] * 9 + [True])


@st.composite
def envelope_like(draw: st.DrawFn) -> dict[Any, Any]:
    """An envelope map, each field valid 90% of the time, so every check is reached."""
    fields: dict[Any, Any] = {}
    for name in FIELDS:
        fields[name] = draw((broken_fields if draw(rarely) else valid_fields)[name])
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
@given(envelope_like(), st.binary(min_size=SIGNATURE_SIZE, max_size=SIGNATURE_SIZE))
def test_random_envelope_maps_with_random_signature_are_rejected(
    fields: dict[Any, Any], tail: bytes
) -> None:
    data = packed(fields) + tail
    parse_or_reject(data)
    with pytest.raises(EnvelopeError):
        fresh_guard().admit(data, SUBJECT, now=TS)


@FUZZ
@given(envelope_like())
def test_random_envelope_maps_signed_by_sender_never_escape(fields: dict[Any, Any]) -> None:
    # Properly signed: everything now depends on the checks before the signature.
    signed = packed(fields)
    data = signed + SENDER.sign(signed)
    envelope = admit_or_reject(fresh_guard(), data)
    if envelope is not None:
        # Anything admitted must be exactly what was signed, field for field.
        assert envelope.wire == data
        # (compared packed: NaN != NaN, but packs to the same bytes)
        admitted = {k: packed(v) for k, v in envelope.as_dict().items() if k != "sig"}
        assert admitted == {k: packed(v) for k, v in fields.items()}


@FUZZ
@given(values)
def test_random_body_round_trips_or_is_refused_cleanly(body: Any) -> None:
    try:
        wire = seal(SENDER, type="t", subject=SUBJECT, body=body, ts=TS)
    except EnvelopeError:
        return
    envelope = admit_or_reject(fresh_guard(), wire)
    if envelope is not None:
        assert packed(envelope.body) == packed(body)
