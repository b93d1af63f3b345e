"""End-to-end encryption of directed bodies (agoramesh.bus.e2e, PROTOCOL.md §20).

Envelopes with a defect in the box are built by hand (a ``$box`` body packed
and signed by its sender) so the signature holds and the rejection seen is the
box's: ``undecryptable`` (or ``schema``/``malformed`` for what a box hides).
Each such case runs twice: signed, and MACed with the pair key (``auth``
``mac``, PROTOCOL.md §6.2), as a Bus sends a directed envelope by default.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import msgpack
import nacl.public
import pytest

from agoramesh.bus.admission import Guard
from agoramesh.bus.bus import Bus
from agoramesh.bus.e2e import MIN_BOX_SIZE, NONCE_SIZE, E2EKeys, x25519_public_key
from agoramesh.bus.envelope import (
    AUTH_MAC,
    AUTH_SIG,
    BOX_KEY,
    BROADCAST,
    VERSION,
    is_boxed,
    mac,
    new_id,
    now_ms,
    parse,
    seal,
)
from agoramesh.bus.identity import Identity, _encode_public
from agoramesh.config import BusConfig, EnvelopePolicy
from agoramesh.errors import (
    EnvelopeError,
    IdentityError,
    Misaddressed,
    RejectReason,
    SchemaError,
    SignatureRequired,
    UndecryptableEnvelope,
)

SUBJECT = "agora.agent.x"
POLICY = EnvelopePolicy()
SECRET = "the launch code is 0000"
BODY: dict[str, Any] = {"text": SECRET, "blob": b"\x00\xff", "n": [1, 2.5, None]}


@pytest.fixture(scope="module")
def alice() -> Identity:
    return Identity.generate()


@pytest.fixture(scope="module")
def bob() -> Identity:
    return Identity.generate()


@pytest.fixture(scope="module")
def carol() -> Identity:
    return Identity.generate()


@pytest.fixture(params=[AUTH_SIG, AUTH_MAC])
def auth(request: pytest.FixtureRequest) -> str:
    """How the hand-built envelopes below are authenticated."""
    return str(request.param)


def guard_for(identity: Identity, policy: EnvelopePolicy = POLICY) -> Guard:
    keys = E2EKeys(identity)
    return Guard(policy, agent_id=identity.agent_id, opener=keys.open, pair_key=keys.pair_key)


def sealed_for(sender: Identity, recipient: Identity, body: Any = BODY, *,
               auth: str = AUTH_SIG, **kwargs: Any) -> bytes:
    """``body`` boxed for ``recipient``, signed or (``auth`` mac) MACed as a Bus does."""
    keys = E2EKeys(sender)
    return seal(sender, type="chat.message", subject=SUBJECT, body=body, to=recipient.agent_id,
                box=keys.seal_body, pair_key=keys.pair_key if auth == AUTH_MAC else None,
                **kwargs)


def signed_with_body(sender: Identity, to: str, body: Any, auth: str = AUTH_SIG) -> bytes:
    """An envelope from ``sender`` whose body is exactly ``body`` (seal would refuse it),
    signed, or MACed with the pair key (``auth``)."""
    now = now_ms()
    signed: bytes = msgpack.packb({
        "v": VERSION, "id": new_id(), "type": "chat.message", "from": sender.agent_id,
        "to": to, "subject": SUBJECT, "reply": "", "ts": now, "exp": now + 60_000,
        "cid": "conv-1", "auth": auth, "body": body}, use_bin_type=True)
    if auth == AUTH_MAC:
        return signed + mac(E2EKeys(sender).pair_key(to), signed)
    return signed + sender.sign(signed)


def assert_rejected(guard: Guard, wire: bytes, reason: RejectReason, *,
                    verify: bool = True) -> None:
    before = guard.rejections[reason]
    with pytest.raises(EnvelopeError) as caught:
        guard.admit(wire, SUBJECT, verify=verify)
    assert caught.value.reason is reason
    assert guard.rejections[reason] == before + 1


# -- round trip -----------------------------------------------------------------------

def test_round_trip_opens_for_the_recipient_only(alice: Identity, bob: Identity,
                                                 auth: str) -> None:
    wire = sealed_for(alice, bob, auth=auth)
    assert SECRET.encode() not in wire
    guard = guard_for(bob)
    envelope = guard.admit(wire, SUBJECT)
    assert envelope.body == BODY
    assert envelope.wire == wire and envelope.sender == alice.agent_id
    assert envelope.auth == auth
    assert not guard.rejections


def test_the_tag_covers_the_ciphertext(alice: Identity, bob: Identity, auth: str) -> None:
    # A changed ciphertext under the original tag fails the tag, before any opening.
    wire = sealed_for(alice, bob, auth=auth)
    sealed = msgpack.unpackb(wire[:-64], raw=False)["body"][BOX_KEY]
    at = wire.index(sealed) + NONCE_SIZE + 20
    tampered = wire[:at] + bytes([wire[at] ^ 0x01]) + wire[at + 1:]
    assert_rejected(guard_for(bob), tampered, RejectReason.BAD_SIGNATURE)


def test_wire_body_is_a_box_of_nonce_and_ciphertext(alice: Identity, bob: Identity) -> None:
    fields = msgpack.unpackb(sealed_for(alice, bob)[:-64], raw=False)
    assert list(fields["body"]) == [BOX_KEY]
    sealed = fields["body"][BOX_KEY]
    plaintext = msgpack.packb(BODY, use_bin_type=True)
    assert type(sealed) is bytes and len(sealed) == NONCE_SIZE + 16 + len(plaintext)
    # Plain libsodium crypto_box with the converted keys opens it: the wire is the spec's.
    bob_box = nacl.public.Box(E2EKeys(bob)._secret,
                              nacl.public.PublicKey(x25519_public_key(alice.agent_id)))
    assert bob_box.decrypt(sealed) == plaintext


def test_nonces_are_fresh(alice: Identity, bob: Identity) -> None:
    keys = E2EKeys(alice)
    boxes = {keys.seal_body(bob.agent_id, BODY)[BOX_KEY][:NONCE_SIZE] for _ in range(50)}
    assert len(boxes) == 50


def test_the_sender_can_open_what_it_sent(alice: Identity, bob: Identity) -> None:
    boxed = E2EKeys(alice).seal_body(bob.agent_id, BODY)
    assert E2EKeys(alice).open_body(bob.agent_id, boxed) == BODY


def test_deferred_verification_still_authenticates_the_box(alice: Identity, bob: Identity,
                                                           carol: Identity, auth: str) -> None:
    guard = guard_for(bob)
    envelope = guard.admit(sealed_for(alice, bob, auth=auth), SUBJECT, verify=False)
    assert envelope.body == BODY
    assert guard.confirm(envelope).body == BODY
    pair_key = E2EKeys(alice).pair_key if auth == AUTH_MAC else None
    forged = seal(alice, type="bid", subject=SUBJECT, body=BODY, to=bob.agent_id,
                  box=lambda to, body: E2EKeys(carol).seal_body(to, body), pair_key=pair_key)
    assert_rejected(guard, forged, RejectReason.UNDECRYPTABLE, verify=False)


def test_plain_bodies_addressed_to_us_still_pass(alice: Identity, bob: Identity) -> None:
    wire = seal(alice, type="chat.message", subject=SUBJECT, body=BODY, to=bob.agent_id)
    assert SECRET.encode() in wire
    assert guard_for(bob).admit(wire, SUBJECT).body == BODY


def test_broadcasts_are_never_encrypted(alice: Identity) -> None:
    wire = seal(alice, type="hello", subject=SUBJECT, body=BODY, box=E2EKeys(alice).seal_body)
    assert SECRET.encode() in wire
    assert Guard(POLICY).admit(wire, SUBJECT).body == BODY


# -- rejections ---------------------------------------------------------------------

def test_tampered_ciphertext_is_undecryptable(alice: Identity, bob: Identity, auth: str) -> None:
    boxed = E2EKeys(alice).seal_body(bob.agent_id, BODY)[BOX_KEY]
    for index in (0, NONCE_SIZE, len(boxed) - 1):  # nonce, tag, ciphertext
        tampered = bytearray(boxed)
        tampered[index] ^= 0x01
        wire = signed_with_body(alice, bob.agent_id, {BOX_KEY: bytes(tampered)}, auth)
        assert_rejected(guard_for(bob), wire, RejectReason.UNDECRYPTABLE)


def test_box_for_another_recipient_is_undecryptable(alice: Identity, bob: Identity,
                                                     carol: Identity, auth: str) -> None:
    # Signed (or MACed) to bob, but the box inside was made for carol.
    pair_key = E2EKeys(alice).pair_key if auth == AUTH_MAC else None
    wire = seal(alice, type="chat.message", subject=SUBJECT, body=BODY, to=bob.agent_id,
                box=lambda to, body: E2EKeys(alice).seal_body(carol.agent_id, body),
                pair_key=pair_key)
    assert_rejected(guard_for(bob), wire, RejectReason.UNDECRYPTABLE)


def test_box_from_another_sender_key_is_undecryptable(alice: Identity, bob: Identity,
                                                       carol: Identity, auth: str) -> None:
    # Signed (or MACed) by alice, but boxed with carol's key: the box names its sender.
    boxed = E2EKeys(carol).seal_body(bob.agent_id, BODY)
    wire = signed_with_body(alice, bob.agent_id, boxed, auth)
    guard = guard_for(bob)
    assert_rejected(guard, wire, RejectReason.UNDECRYPTABLE)
    assert guard.rejections == {RejectReason.UNDECRYPTABLE: 1}


def test_a_third_identity_cannot_open(alice: Identity, bob: Identity, carol: Identity,
                                      auth: str) -> None:
    wire = sealed_for(alice, bob, auth=auth)
    boxed = msgpack.unpackb(wire[:-64], raw=False)["body"]
    with pytest.raises(UndecryptableEnvelope):
        E2EKeys(carol).open_body(alice.agent_id, boxed)
    with pytest.raises(UndecryptableEnvelope):
        E2EKeys(carol).open_body(bob.agent_id, boxed)
    with pytest.raises(Misaddressed):
        guard_for(carol).admit(wire, SUBJECT)
    observed = Guard(POLICY).admit(wire, SUBJECT)  # an observer: delivered shut
    assert is_boxed(observed.body)
    # Carol's opener, handed the envelope anyway, refuses rather than tries.
    with pytest.raises(UndecryptableEnvelope, match="not to us"):
        E2EKeys(carol).open(observed)


def test_boxed_broadcast_is_undecryptable_even_for_observers(alice: Identity,
                                                             bob: Identity) -> None:
    boxed = E2EKeys(alice).seal_body(bob.agent_id, BODY)
    wire = signed_with_body(alice, BROADCAST, boxed)
    assert_rejected(guard_for(bob), wire, RejectReason.UNDECRYPTABLE)
    assert_rejected(Guard(POLICY), wire, RejectReason.UNDECRYPTABLE)
    assert_rejected(guard_for(bob), wire, RejectReason.UNDECRYPTABLE, verify=False)


@pytest.mark.parametrize("value", [b"", b"\x00" * (MIN_BOX_SIZE - 1), "text", 7, None,
                                   [b"\x00" * 64]])
def test_box_value_must_be_long_enough_bin(alice: Identity, bob: Identity, value: Any,
                                           auth: str) -> None:
    wire = signed_with_body(alice, bob.agent_id, {BOX_KEY: value}, auth)
    assert_rejected(guard_for(bob), wire, RejectReason.UNDECRYPTABLE)


def test_what_a_box_hides_is_checked_like_a_body(alice: Identity, bob: Identity,
                                                 auth: str) -> None:
    box = E2EKeys(alice).box(bob.agent_id)
    cases = {
        RejectReason.SCHEMA: msgpack.packb({BOX_KEY: b"\x00" * 64}, use_bin_type=True),
        RejectReason.MALFORMED: b"\xc1",  # never valid msgpack
    }
    timestamp = msgpack.packb({"t": msgpack.Timestamp(1, 0)}, use_bin_type=True)
    extension = msgpack.packb({"x": msgpack.ExtType(5, b"\x01")}, use_bin_type=True)
    for reason, plaintext in [*cases.items(), (RejectReason.MALFORMED, timestamp),
                              (RejectReason.MALFORMED, extension)]:
        wire = signed_with_body(alice, bob.agent_id, {BOX_KEY: bytes(box.encrypt(plaintext))},
                                auth)
        assert_rejected(guard_for(bob), wire, reason)


def test_ciphertext_that_looks_like_a_timestamp_is_opaque(alice: Identity, bob: Identity,
                                                         auth: str) -> None:
    # The timestamp gate skips a box's bytes (random, often 0xff) but not a box's other values.
    nonce = b"\xd6\xff" * (NONCE_SIZE // 2)
    wire = seal(alice, type="chat.message", subject=SUBJECT, body=BODY, to=bob.agent_id,
                box=partial(E2EKeys(alice).seal_body, nonce=nonce))
    assert guard_for(bob).admit(wire, SUBJECT).body == BODY
    stamped = signed_with_body(alice, bob.agent_id, {BOX_KEY: msgpack.Timestamp(1, 0)}, auth)
    assert_rejected(guard_for(bob), stamped, RejectReason.MALFORMED)


def test_reserved_shape_is_refused_by_the_sender(alice: Identity, bob: Identity) -> None:
    for body in ({BOX_KEY: b"\x00" * 64}, {BOX_KEY: "anything"}):
        for kwargs in ({}, {"to": bob.agent_id}, {"to": bob.agent_id,
                                                  "box": E2EKeys(alice).seal_body}):
            with pytest.raises(SchemaError, match="reserved"):
                seal(alice, type="chat.message", subject=SUBJECT, body=body, **kwargs)
    # Only exactly that shape is reserved.
    wire = sealed_for(alice, bob, {BOX_KEY: 1, "other": 2})
    assert guard_for(bob).admit(wire, SUBJECT).body == {BOX_KEY: 1, "other": 2}


def test_recipient_without_a_usable_key_cannot_be_sealed_for(alice: Identity) -> None:
    low_order = _encode_public(bytes([1]) + bytes(31))
    with pytest.raises(IdentityError, match="not a usable Ed25519 public key"):
        E2EKeys(alice).seal_body(low_order, BODY)


def test_unencodable_body_is_a_schema_error(alice: Identity, bob: Identity) -> None:
    with pytest.raises(SchemaError, match="msgpack"):
        E2EKeys(alice).seal_body(bob.agent_id, {"x": object()})


# -- the box cache --------------------------------------------------------------------

def test_box_cache_is_a_bounded_lru(alice: Identity) -> None:
    keys = E2EKeys(alice, cache_size=2)
    peers = [Identity.generate().agent_id for _ in range(3)]
    first = keys.box(peers[0])
    keys.box(peers[1])
    assert keys.box(peers[0]) is first  # a hit, and now the most recent
    keys.box(peers[2])  # evicts peers[1], the least recently used
    assert keys.peers == 2
    assert keys.box(peers[0]) is first
    for peer in peers * 20:
        keys.seal_body(peer, BODY)
    assert keys.peers == 2
    with pytest.raises(ValueError, match="at least 1"):
        E2EKeys(alice, cache_size=0)


def test_one_box_per_peer_not_per_message(alice: Identity, bob: Identity) -> None:
    keys = E2EKeys(alice)
    box = keys.box(bob.agent_id)
    for _ in range(5):
        keys.seal_body(bob.agent_id, BODY)
    assert keys.peers == 1 and keys.box(bob.agent_id) is box


# -- the Bus --------------------------------------------------------------------------

def test_bus_seals_directed_bodies_and_traces_plaintext(alice: Identity, bob: Identity) -> None:
    bus = Bus(alice, BusConfig())
    traced: list[dict[str, Any]] = []
    bus.trace = lambda kind, fields: traced.append(fields)
    directed = bus.seal(SUBJECT, "chat.message", BODY, to=bob.agent_id)
    broadcast = bus.seal(SUBJECT, "chat.message", BODY)
    assert SECRET.encode() not in directed and SECRET.encode() in broadcast
    assert [fields["body"] for fields in traced] == [BODY, BODY]
    # Directed: boxed and MACed with the pair key; a broadcast: plain and signed.
    assert (parse(directed).auth, parse(broadcast).auth) == (AUTH_MAC, AUTH_SIG)
    assert Bus(bob, BusConfig()).guard.admit(directed, SUBJECT).body == BODY
    plain = Bus(alice, BusConfig(encrypt=False)).seal(SUBJECT, "chat.message", BODY,
                                                      to=bob.agent_id)
    assert SECRET.encode() in plain and parse(plain).auth == AUTH_MAC
    with pytest.raises(SchemaError):
        bus.seal(SUBJECT, "chat.message", {BOX_KEY: b""}, to=bob.agent_id)


def test_bus_with_sign_all_signs_directed_bodies_and_refuses_macs(alice: Identity,
                                                                   bob: Identity) -> None:
    sign_all = BusConfig(envelope=EnvelopePolicy(sign_all=True))
    directed = Bus(alice, sign_all).seal(SUBJECT, "chat.message", BODY, to=bob.agent_id,
                                         reply="_INBOX.a.1")
    envelope = parse(directed)
    assert envelope.auth == AUTH_SIG and envelope.reply == "_INBOX.a.1"
    assert SECRET.encode() not in directed  # still boxed: signing is not encrypting
    receiver = Bus(bob, sign_all)
    assert receiver.guard.admit(directed, SUBJECT, "_INBOX.a.1").body == BODY
    # Either receiver takes a signed envelope; only the default one takes a MAC.
    assert Bus(bob, BusConfig()).guard.admit(directed, SUBJECT, "_INBOX.a.1").body == BODY
    maced = Bus(alice, BusConfig()).seal(SUBJECT, "chat.message", BODY, to=bob.agent_id)
    with pytest.raises(SignatureRequired):
        receiver.guard.admit(maced, SUBJECT)
    assert receiver.rejections == {RejectReason.SIGNATURE_REQUIRED: 1}


def test_bus_guard_checks_macs_with_its_pair_keys(alice: Identity, bob: Identity,
                                                  carol: Identity) -> None:
    directed = Bus(alice, BusConfig()).seal(SUBJECT, "chat.message", BODY, to=bob.agent_id)
    assert Bus(bob, BusConfig()).guard.admit(directed, SUBJECT).body == BODY
    assert Bus(bob, BusConfig()).e2e.pair_key(alice.agent_id) == E2EKeys(alice).pair_key(
        bob.agent_id)
    bystander = Bus(carol, BusConfig())
    with pytest.raises(Misaddressed):
        bystander.guard.admit(directed, SUBJECT)
    assert bystander.rejections == {RejectReason.MISADDRESSED: 1}


def test_bus_guard_counts_undecryptable(alice: Identity, bob: Identity, carol: Identity,
                                        auth: str) -> None:
    receiver = Bus(bob, BusConfig())
    wire = signed_with_body(alice, bob.agent_id, E2EKeys(carol).seal_body(bob.agent_id, BODY),
                            auth)
    with pytest.raises(UndecryptableEnvelope):
        receiver.guard.admit(wire, SUBJECT)
    assert receiver.rejections == {RejectReason.UNDECRYPTABLE: 1}


def test_fixed_nonce_is_deterministic(alice: Identity, bob: Identity) -> None:
    nonce = bytes(range(NONCE_SIZE))
    box = partial(E2EKeys(alice).seal_body, nonce=nonce)
    assert box(bob.agent_id, BODY) == box(bob.agent_id, BODY)
    assert box(bob.agent_id, BODY)[BOX_KEY][:NONCE_SIZE] == nonce
