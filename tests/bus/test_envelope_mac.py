"""``mac`` envelopes (PROTOCOL.md §6.2): the pair key, and every way to tamper with one.

An envelope addressed to one agent is authenticated with
``BLAKE2b-512(key = pair_key(from, to), signed)``, a key only its two agents
can derive. These tests check that the key is the documented one (derived
here independently, from libsodium and hashlib), and that a MACed envelope
altered in any way, or sent by anyone but its sender, to anyone but its
recipient, on another reply subject, twice, as a broadcast, or to an agent
that takes signed envelopes only, is refused with its own counted reason.

Identities are fixed seeds and the clock is injected, so each run checks the
same bytes.
"""

from __future__ import annotations

import base64
import hashlib
from collections import defaultdict
from typing import Any

import msgpack
import nacl.bindings
import nkeys
import pytest

from agoramesh.bus.admission import Guard
from agoramesh.bus.e2e import PAIR_LABEL, E2EKeys, pair_key
from agoramesh.bus.envelope import (
    AUTH_MAC,
    AUTH_SIG,
    BROADCAST,
    FIELDS,
    TAG_SIZE,
    Envelope,
    parse,
    seal,
)
from agoramesh.bus.identity import Identity, _encode_public, verify
from agoramesh.config import EnvelopePolicy
from agoramesh.errors import (
    BadSignature,
    EnvelopeError,
    ExpiredEnvelope,
    IdentityError,
    Misaddressed,
    RejectReason,
    ReplayedEnvelope,
    SchemaError,
    SignatureRequired,
    WrongReply,
    WrongSubject,
)

SUBJECT = "agora.agent.bob.inbox"
INBOX = "_INBOX.alice.1"
NOW = 1_700_000_000_000
POLICY = EnvelopePolicy()
SIGN_ALL = EnvelopePolicy(sign_all=True)
BODY: dict[str, Any] = {"text": "pay carol 10", "n": [1, 2.5, None], "blob": b"\x00\xff"}


def fixed(n: int) -> Identity:
    return Identity(nkeys.encode_seed(bytes([n]) * 32, nkeys.PREFIX_BYTE_USER))


ALICE, BOB, CAROL = fixed(1), fixed(2), fixed(3)
KEYS = {who.agent_id: E2EKeys(who) for who in (ALICE, BOB, CAROL)}


def keys(identity: Identity) -> E2EKeys:
    return KEYS[identity.agent_id]


def mac_wire(sender: Identity = ALICE, to: Identity = BOB, *, body: Any = BODY,
             reply: str = INBOX, **fields: Any) -> bytes:
    """A genuine MACed envelope, as a Bus seals it."""
    fields = {"ts": NOW, "ttl_ms": 60_000, **fields}
    return seal(sender, type="chat.message", subject=SUBJECT, body=body, to=to.agent_id,
                reply=reply, pair_key=keys(sender).pair_key, **fields)


def signed_fields(wire: bytes) -> dict[str, Any]:
    fields: dict[str, Any] = msgpack.unpackb(wire[:-TAG_SIZE], raw=False)
    assert list(fields) == list(FIELDS)
    return fields


def packed(fields: dict[str, Any]) -> bytes:
    signed: bytes = msgpack.packb(fields, use_bin_type=True)
    return signed


def blake2b_tag(key: bytes, signed: bytes) -> bytes:
    return hashlib.blake2b(signed, digest_size=64, key=key).digest()


def guard(identity: Identity | None = BOB, policy: EnvelopePolicy = POLICY) -> Guard:
    """``identity``'s Guard as its Bus builds it; an observer's for None."""
    if identity is None:
        return Guard(policy)
    return Guard(policy, agent_id=identity.agent_id, opener=keys(identity).open,
                 pair_key=keys(identity).pair_key)


def rejects(receiver: Guard, data: bytes, error: type[EnvelopeError], *,
            reply: str | None = INBOX, subject: str = SUBJECT, now: int = NOW,
            verify: bool = True) -> EnvelopeError:
    """``admit`` raises exactly ``error``, counted once under its reason."""
    before = receiver.rejections.copy()
    with pytest.raises(EnvelopeError) as caught:
        receiver.admit(data, subject, reply, now=now, verify=verify)
    assert type(caught.value) is error, f"{type(caught.value).__name__}: {caught.value}"
    before[error.reason] += 1
    assert receiver.rejections == before
    return caught.value


# --- the pair key, derived independently ------------------------------------------

def ed25519_keypair(identity: Identity) -> tuple[bytes, bytes]:
    """(public, libsodium secret) from the raw seed inside the nkey seed."""
    prefix, seed = nkeys.decode_seed(bytearray(identity.seed))
    assert prefix == nkeys.PREFIX_BYTE_USER
    public, secret = nacl.bindings.crypto_sign_seed_keypair(bytes(seed))
    return bytes(public), bytes(secret)


def documented_pair_key(own: Identity, peer_id: str) -> bytes:
    """PROTOCOL.md §6.2 from its parts: libsodium's beforenm key, then keyed BLAKE2b-256."""
    _, secret = ed25519_keypair(own)
    decoded = base64.b32decode(peer_id)  # prefix byte, 32-byte key, CRC16
    peer_public = decoded[1:33]
    k = nacl.bindings.crypto_box_beforenm(
        nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(peer_public),
        nacl.bindings.crypto_sign_ed25519_sk_to_curve25519(secret),
    )
    low, high = sorted([own.agent_id.encode("ascii"), peer_id.encode("ascii")])
    message = b"agoramesh/2 pair key" + b"\x00" + low + high
    return hashlib.blake2b(message, digest_size=32, key=k).digest()


def test_independent_derivation_uses_the_right_keys() -> None:
    # The helper's own inputs: the seed's public key is the agent id's.
    public, _ = ed25519_keypair(ALICE)
    assert _encode_public(public) == ALICE.agent_id
    assert base64.b32decode(ALICE.agent_id)[1:33] == public


def test_pair_key_matches_the_documented_derivation() -> None:
    for own, peer in [(ALICE, BOB), (BOB, ALICE), (ALICE, CAROL), (CAROL, BOB), (BOB, BOB)]:
        expected = documented_pair_key(own, peer.agent_id)
        assert len(expected) == 32
        assert keys(own).pair_key(peer.agent_id) == expected
        shared = keys(own).box(peer.agent_id).shared_key()
        assert pair_key(shared, own.agent_id, peer.agent_id) == expected
        assert shared != expected  # the Box key itself is never used as the MAC key


def test_pair_key_is_symmetric() -> None:
    for a, b in [(ALICE, BOB), (ALICE, CAROL), (BOB, CAROL)]:
        assert keys(a).pair_key(b.agent_id) == keys(b).pair_key(a.agent_id)
        assert documented_pair_key(a, b.agent_id) == documented_pair_key(b, a.agent_id)
        shared = keys(a).box(b.agent_id).shared_key()
        assert shared == keys(b).box(a.agent_id).shared_key()
        assert pair_key(shared, a.agent_id, b.agent_id) == pair_key(shared, b.agent_id,
                                                                     a.agent_id)
        # Fresh key objects (no cache) derive the same.
        assert E2EKeys(a).pair_key(b.agent_id) == E2EKeys(b).pair_key(a.agent_id)


def test_pair_key_differs_per_pair() -> None:
    pairs = [(ALICE, BOB), (ALICE, CAROL), (BOB, CAROL), (ALICE, ALICE), (BOB, BOB)]
    derived = {keys(a).pair_key(b.agent_id) for a, b in pairs}
    assert len(derived) == len(pairs)
    # ... and per id order: the label binds the two ids, not only the shared secret.
    shared = keys(ALICE).box(BOB.agent_id).shared_key()
    assert pair_key(shared, ALICE.agent_id, BOB.agent_id) != pair_key(
        shared, ALICE.agent_id, CAROL.agent_id)
    assert PAIR_LABEL == b"agoramesh/2 pair key" and len(PAIR_LABEL) == 20


def test_the_tag_is_keyed_blake2b_512_of_the_signed_bytes() -> None:
    wire = mac_wire()
    envelope = parse(wire)
    assert (envelope.auth, envelope.to, envelope.reply) == (AUTH_MAC, BOB.agent_id, INBOX)
    key = documented_pair_key(BOB, ALICE.agent_id)
    assert envelope.tag == blake2b_tag(key, envelope.signed)
    assert len(envelope.tag) == TAG_SIZE
    # Not a signature: nobody but Alice and Bob can check it.
    assert not verify(ALICE.agent_id, envelope.signed, envelope.tag)


def test_pair_key_cache_is_a_bounded_lru() -> None:
    own = E2EKeys(ALICE, cache_size=2)
    peers = [fixed(10 + n).agent_id for n in range(3)]
    first = own.pair_key(peers[0])
    own.pair_key(peers[1])
    assert own.pair_key(peers[0]) is first  # a hit, and now the most recent
    own.pair_key(peers[2])  # evicts peers[1]
    assert list(own._macs) == [peers[0], peers[2]]
    assert own.pair_key(peers[1]) == documented_pair_key(ALICE, peers[1])


def test_a_peer_without_a_usable_key_has_no_pair_key() -> None:
    low_order = _encode_public(bytes([1]) + bytes(31))
    with pytest.raises(IdentityError):
        keys(ALICE).pair_key(low_order)


# --- admission: what passes ---------------------------------------------------------

def test_a_mac_envelope_is_admitted_by_its_recipient() -> None:
    wire = mac_wire()
    receiver = guard(BOB)
    envelope = receiver.admit(wire, SUBJECT, INBOX, now=NOW)
    assert envelope.body == BODY and envelope.sender == ALICE.agent_id
    assert envelope.auth == AUTH_MAC and envelope.wire == wire
    assert not receiver.rejections
    # Both directions: Bob's answer to Alice, under the same pair key.
    answer = mac_wire(BOB, ALICE, body="done", reply="")
    assert guard(ALICE).admit(answer, SUBJECT, "", now=NOW).body == "done"


def test_an_agent_may_mac_an_envelope_to_itself() -> None:
    wire = mac_wire(ALICE, ALICE)
    assert guard(ALICE).admit(wire, SUBJECT, INBOX, now=NOW).to == ALICE.agent_id


def test_a_mac_envelope_with_a_boxed_body_opens() -> None:
    wire = seal(ALICE, type="chat.message", subject=SUBJECT, body=BODY, to=BOB.agent_id,
                ts=NOW, box=keys(ALICE).seal_body, pair_key=keys(ALICE).pair_key)
    assert b"pay carol" not in wire and parse(wire).auth == AUTH_MAC
    assert guard(BOB).admit(wire, SUBJECT, now=NOW).body == BODY


def test_an_observer_passes_a_mac_envelope_unchecked() -> None:
    # No agent id, no keys: it cannot check the MAC, and acts on nothing (PROTOCOL.md §8).
    wire = mac_wire()
    observer = guard(None)
    assert observer.admit(wire, SUBJECT, INBOX, now=NOW).wire == wire
    zero_tag = wire[:-TAG_SIZE] + bytes(TAG_SIZE)
    assert guard(None).admit(zero_tag, SUBJECT, INBOX, now=NOW).auth == AUTH_MAC
    assert not observer.rejections
    # Every check but the tag still applies to it.
    rejects(guard(None), wire, WrongReply, reply="")
    rejects(guard(None), wire, WrongSubject, subject="agora.agent.carol.inbox")
    rejects(guard(None), wire, ExpiredEnvelope, now=NOW + 60_000)
    rejects(guard(None), mac_wire(ttl_ms=600_001), SchemaError)


def test_the_sign_all_observer_refuses_a_mac_envelope() -> None:
    rejects(guard(None, SIGN_ALL), mac_wire(), SignatureRequired)


def test_an_unchecked_mac_does_not_poison_an_observers_replay_cache() -> None:
    # Carol claims Alice's envelope id "x", with a tag nobody can check at an observer.
    fields = signed_fields(mac_wire(CAROL, BOB, id="x", body="evil"))
    fields["from"] = ALICE.agent_id
    forged = packed(fields) + bytes(TAG_SIZE)
    observer = guard(None)
    assert observer.admit(forged, SUBJECT, INBOX, now=NOW).body == "evil"
    genuine = seal(ALICE, type="chat.message", subject=SUBJECT, body="good", id="x", ts=NOW)
    assert observer.admit(genuine, SUBJECT, now=NOW).body == "good"


# --- admission: what is refused -------------------------------------------------

def test_an_agent_without_pair_keys_cannot_check_a_mac() -> None:
    receiver = Guard(POLICY, agent_id=BOB.agent_id)
    error = rejects(receiver, mac_wire(), BadSignature)
    assert "no keys" in str(error)


def test_a_sender_without_a_usable_key_is_bad_signature() -> None:
    # A well-formed agent id (checksum fine) that is a low-order point: no pair key exists.
    low_order = _encode_public(bytes([1]) + bytes(31))
    fields = signed_fields(mac_wire())
    fields["from"] = low_order
    forged = packed(fields) + bytes(TAG_SIZE)
    error = rejects(guard(BOB), forged, BadSignature)
    assert "no pair key" in str(error)


def test_a_mac_under_a_third_agents_key_is_bad_signature() -> None:
    genuine = signed_fields(mac_wire(id="third"))
    signed = packed(genuine)
    third_party_keys = {
        "carol-bob": keys(CAROL).pair_key(BOB.agent_id),  # Carol's own key with Bob
        "carol-alice": keys(CAROL).pair_key(ALICE.agent_id),  # Carol's own key with Alice
        "alice-carol": keys(ALICE).pair_key(CAROL.agent_id),  # Alice's key, the wrong peer
        "bob-bob": keys(BOB).pair_key(BOB.agent_id),
        "box-key": keys(ALICE).box(BOB.agent_id).shared_key(),  # the unhashed shared key
    }
    receiver = guard(BOB)
    for name, key in third_party_keys.items():
        error = rejects(receiver, signed + blake2b_tag(key, signed), BadSignature)
        assert ALICE.agent_id in str(error), name
    assert receiver.rejections == {RejectReason.BAD_SIGNATURE: len(third_party_keys)}
    # The right key passes, on the same Guard: none of the forgeries used the id up.
    right = keys(ALICE).pair_key(BOB.agent_id)
    assert receiver.admit(signed + blake2b_tag(right, signed), SUBJECT, INBOX, now=NOW)


def test_carol_cannot_speak_for_alice_to_bob() -> None:
    # Carol's genuine envelope to Bob passes; relabelled as Alice's, it does not.
    carols = mac_wire(CAROL, BOB, id="c1")
    assert guard(BOB).admit(carols, SUBJECT, INBOX, now=NOW).sender == CAROL.agent_id
    fields = signed_fields(carols)
    fields["from"] = ALICE.agent_id
    signed = packed(fields)
    for tag in (blake2b_tag(keys(CAROL).pair_key(BOB.agent_id), signed), carols[-TAG_SIZE:]):
        rejects(guard(BOB), signed + tag, BadSignature)


def test_a_forged_mac_does_not_poison_the_replay_cache() -> None:
    fields = signed_fields(mac_wire(CAROL, BOB, id="x", body="evil"))
    fields["from"] = ALICE.agent_id
    signed = packed(fields)
    forged = signed + blake2b_tag(keys(CAROL).pair_key(BOB.agent_id), signed)
    receiver = guard(BOB)
    rejects(receiver, forged, BadSignature)
    rejects(receiver, forged, BadSignature)  # not "replayed" either
    genuine = mac_wire(id="x", body="good")
    assert receiver.admit(genuine, SUBJECT, INBOX, now=NOW).body == "good"
    assert receiver.rejections == {RejectReason.BAD_SIGNATURE: 2}


def test_a_reflected_envelope_is_misaddressed() -> None:
    # Alice -> Bob, sent back to Alice: she holds the same pair key, but it is not for her.
    wire = mac_wire()
    error = rejects(guard(ALICE), wire, Misaddressed)
    assert BOB.agent_id in str(error)
    # Rewriting 'to' (or swapping 'from' and 'to') breaks the MAC, which covers both.
    for swap in ({"to": ALICE.agent_id}, {"to": ALICE.agent_id, "from": BOB.agent_id}):
        fields = {**signed_fields(wire), **swap}
        rejects(guard(ALICE), packed(fields) + wire[-TAG_SIZE:], BadSignature)


def test_a_mac_envelope_for_another_agent_is_misaddressed_before_its_tag_is_checked() -> None:
    # Carol holds no key for Alice-Bob: the address alone refuses it.
    rejects(guard(CAROL), mac_wire(), Misaddressed)
    rejects(guard(CAROL), mac_wire()[:-TAG_SIZE] + bytes(TAG_SIZE), Misaddressed)


def test_a_replayed_mac_envelope_is_replayed() -> None:
    wire = mac_wire()
    receiver = guard(BOB)
    receiver.admit(wire, SUBJECT, INBOX, now=NOW)
    error = rejects(receiver, wire, ReplayedEnvelope, now=NOW + 1_000)
    assert "already received" in str(error)
    # Same id, new bytes (a new body, correctly MACed): still the same envelope id.
    rejects(receiver, mac_wire(id=parse(wire).id, body="other"), ReplayedEnvelope)
    # Deferred: admitted unchecked, then refused on confirm.
    deferred = receiver.admit(mac_wire(id="later"), SUBJECT, INBOX, verify=False, now=NOW)
    receiver.confirm(deferred, now=NOW)
    with pytest.raises(ReplayedEnvelope):
        receiver.confirm(deferred, now=NOW)
    assert receiver.rejections == {RejectReason.REPLAYED: 3}


@pytest.mark.parametrize(
    ("made_for", "arrived_with"),
    [(INBOX, ""), (INBOX, "_INBOX.mallory.1"), ("", INBOX), (INBOX, INBOX + ".x")],
    ids=["dropped", "redirected", "added", "longer"],
)
def test_a_mac_envelope_on_another_reply_subject_is_wrong_reply(
    made_for: str, arrived_with: str
) -> None:
    wire = mac_wire(reply=made_for)
    receiver = guard(BOB)
    error = rejects(receiver, wire, WrongReply, reply=arrived_with)
    assert arrived_with in str(error)
    # The copy, rejected, does not use up the original's id.
    assert receiver.admit(wire, SUBJECT, made_for, now=NOW).reply == made_for
    # The reply field is covered by the MAC: rewriting it to match is bad_signature.
    fields = {**signed_fields(wire), "reply": arrived_with}
    rejects(guard(BOB), packed(fields) + wire[-TAG_SIZE:], BadSignature, reply=arrived_with)


def test_a_mac_on_a_broadcast_is_schema() -> None:
    fields = {**signed_fields(mac_wire()), "to": BROADCAST}
    signed = packed(fields)
    for key in (keys(ALICE).pair_key(BOB.agent_id), bytes(32)):
        wire = signed + blake2b_tag(key, signed)
        with pytest.raises(SchemaError, match="broadcast"):
            parse(wire)
        for receiver in (guard(BOB), guard(None), guard(BOB, SIGN_ALL)):
            rejects(receiver, wire, SchemaError)
    # seal never makes one: a broadcast is signed even when pair keys are at hand.
    broadcast = seal(ALICE, type="t", subject=SUBJECT, body=1, ts=NOW,
                     pair_key=keys(ALICE).pair_key)
    assert parse(broadcast).auth == AUTH_SIG


def test_sign_all_refuses_a_mac_envelope() -> None:
    receiver = guard(BOB, SIGN_ALL)
    error = rejects(receiver, mac_wire(), SignatureRequired)
    assert error.reason is RejectReason.SIGNATURE_REQUIRED
    assert ALICE.agent_id in str(error)
    # Before the tag is looked at (check 11 before 12): a bad MAC is refused the same way.
    rejects(receiver, mac_wire(id="bad")[:-TAG_SIZE] + bytes(TAG_SIZE), SignatureRequired)
    # Deferred to confirm, like the tag check.
    deferred = receiver.admit(mac_wire(id="deferred"), SUBJECT, INBOX, verify=False, now=NOW)
    with pytest.raises(SignatureRequired):
        receiver.confirm(deferred, now=NOW)
    assert receiver.rejections == {RejectReason.SIGNATURE_REQUIRED: 3}
    # The same envelope signed passes, and the refused id was not used up.
    signed = seal(ALICE, type="chat.message", subject=SUBJECT, body=BODY, to=BOB.agent_id,
                  reply=INBOX, ts=NOW, id=parse(mac_wire()).id)
    assert receiver.admit(signed, SUBJECT, INBOX, now=NOW).auth == AUTH_SIG


def test_relabelling_auth_is_bad_signature() -> None:
    # A MAC presented as a signature, and a signature presented as a MAC.
    mac = mac_wire(id="m")
    as_sig = packed({**signed_fields(mac), "auth": AUTH_SIG}) + mac[-TAG_SIZE:]
    rejects(guard(BOB), as_sig, BadSignature)
    sig = seal(ALICE, type="chat.message", subject=SUBJECT, body=BODY, to=BOB.agent_id,
               reply=INBOX, ts=NOW, id="s")
    assert parse(sig).auth == AUTH_SIG
    as_mac = packed({**signed_fields(sig), "auth": AUTH_MAC}) + sig[-TAG_SIZE:]
    rejects(guard(BOB), as_mac, BadSignature)
    # Re-MACing the relabelled signed envelope needs the pair key: with it, it is genuine.
    relabelled = packed({**signed_fields(sig), "auth": AUTH_MAC})
    remaced = relabelled + blake2b_tag(keys(ALICE).pair_key(BOB.agent_id), relabelled)
    assert guard(BOB).admit(remaced, SUBJECT, INBOX, now=NOW).auth == AUTH_MAC


# --- every bit of a mac envelope ----------------------------------------------------

def layout(wire: bytes) -> list[str]:
    """The class of every byte: "header", "key:<field>", "value:<field>" or "tag"."""
    fields = signed_fields(wire)
    classes = ["header"]
    for name, value in fields.items():
        classes += [f"key:{name}"] * len(msgpack.packb(name))
        classes += [f"value:{name}"] * len(msgpack.packb(value, use_bin_type=True))
    assert len(classes) == len(wire) - TAG_SIZE  # the map is exactly its entries
    return classes + ["tag"] * TAG_SIZE


def expected_reason(data: bytes, receiver: Guard) -> RejectReason:
    """What admission must say, from the documented order of checks (PROTOCOL.md §8)."""
    try:
        envelope: Envelope = parse(data)
    except EnvelopeError as error:
        return error.reason
    policy = receiver.policy
    if envelope.subject != SUBJECT:
        return RejectReason.WRONG_SUBJECT
    if envelope.reply != INBOX:
        return RejectReason.WRONG_REPLY
    if envelope.to not in (BROADCAST, receiver.agent_id):
        return RejectReason.MISADDRESSED
    if envelope.exp <= NOW:
        return RejectReason.EXPIRED
    if envelope.ts > NOW + policy.max_clock_skew_ms:
        return RejectReason.FUTURE
    if envelope.exp - envelope.ts > policy.max_ttl_ms:
        return RejectReason.SCHEMA
    # Fresh Guard, so no replay; every other change leaves bytes the tag does not cover.
    return RejectReason.BAD_SIGNATURE


def test_every_flipped_bit_is_refused_with_its_reason() -> None:
    # Sealed 5 minutes ago for 10: one flipped bit of ts or exp can make it future or
    # expired (bit 19, 524288 ms, is 0 in ts and 1 in exp), or too long-lived.
    wire = mac_wire(body={"text": "pay carol 10", "n": 7}, ts=NOW - 300_000, ttl_ms=600_000)
    envelope = parse(wire)
    assert (envelope.ts >> 19) & 1 == 0 and (envelope.exp >> 19) & 1 == 1
    classes = layout(wire)
    seen: dict[str, set[RejectReason]] = defaultdict(set)
    for index, where in enumerate(classes):
        for bit in range(8):
            data = bytearray(wire)
            data[index] ^= 1 << bit
            receiver = guard(BOB)
            expected = expected_reason(bytes(data), receiver)
            with pytest.raises(EnvelopeError) as caught:
                receiver.admit(bytes(data), SUBJECT, INBOX, now=NOW)
            assert caught.value.reason is expected, (index, bit, where, caught.value)
            assert receiver.rejections == {expected: 1}, (index, bit, where)
            seen[where].add(expected)

    assert set(seen) == {"header", "tag", *(f"{p}:{f}" for f in FIELDS for p in ("key",
                                                                                 "value"))}
    # The tag covers everything: any flip the other checks let through is a bad MAC...
    assert seen["tag"] == {RejectReason.BAD_SIGNATURE}
    for name in ("id", "type", "ts", "exp", "cid", "body"):
        assert RejectReason.BAD_SIGNATURE in seen[f"value:{name}"], name
    # ... and the fields that name where and how it goes are refused for what they say.
    assert RejectReason.WRONG_SUBJECT in seen["value:subject"]
    assert RejectReason.WRONG_REPLY in seen["value:reply"]
    assert RejectReason.UNSUPPORTED_VERSION in seen["value:v"]
    assert seen["value:auth"] <= {RejectReason.SCHEMA, RejectReason.MALFORMED}
    assert RejectReason.SCHEMA in seen["value:to"] and RejectReason.SCHEMA in seen["value:from"]
    assert {RejectReason.EXPIRED, RejectReason.SCHEMA, RejectReason.BAD_SIGNATURE} <= seen[
        "value:exp"]
    assert {RejectReason.FUTURE, RejectReason.SCHEMA, RejectReason.BAD_SIGNATURE} <= seen[
        "value:ts"]
    for name in FIELDS:  # a renamed key: a field missing (or its text no longer UTF-8)
        assert seen[f"key:{name}"] <= {RejectReason.SCHEMA, RejectReason.MALFORMED}, name
    assert seen["header"] <= {RejectReason.SCHEMA, RejectReason.MALFORMED,
                              RejectReason.UNSUPPORTED_VERSION}


@pytest.mark.parametrize("cut", [1, TAG_SIZE // 2, TAG_SIZE])
def test_a_truncated_or_extended_mac_envelope_is_refused(cut: int) -> None:
    wire = mac_wire()
    # Cutting the tag short shifts the split: the signed part loses its end.
    with pytest.raises(EnvelopeError):
        guard(BOB).admit(wire[:-cut], SUBJECT, INBOX, now=NOW)
    # Bytes after the tag: they become the tag's end, and the map gains a tail.
    with pytest.raises(EnvelopeError):
        guard(BOB).admit(wire + bytes(cut), SUBJECT, INBOX, now=NOW)
