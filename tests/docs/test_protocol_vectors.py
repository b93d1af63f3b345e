"""docs/PROTOCOL.md's test vectors, checked byte for byte against the code.

The vectors are the ```json blocks of the document: envelope vectors carry
``"kind": "envelope"`` (``sig`` and ``mac``), encrypted ones (section 20)
``"kind": "encrypted"``, the pair-key derivation (section 6.2) ``"kind":
"pair_key"`` and negative ones ``"kind": "rejection"``; the annotated hex dumps
(```text blocks) are checked against the vector before them. The ``doc_*``
functions re-implement the document's key encoding (section 3), X25519
conversion (section 20.1), pair key and tags (section 6) with the standard
library and ``nacl.bindings`` only, so the document, not the code, is what they
check; each vector is then also checked against the reference code.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from functools import partial
from pathlib import Path
from typing import Any

import msgpack
import nacl.bindings
import nacl.exceptions
import pytest

from agoramesh.bus import e2e
from agoramesh.bus.admission import Guard
from agoramesh.bus.e2e import E2EKeys
from agoramesh.bus.envelope import BOX_KEY, FIELDS, parse, seal
from agoramesh.bus.identity import Identity, public_key_bytes, verify
from agoramesh.bus.ingress import encode_json_error, looks_like_json
from agoramesh.config import EnvelopePolicy
from agoramesh.errors import EnvelopeError, IngressDenied, RejectReason

PROTOCOL = Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md"
_JSON_BLOCK = re.compile(r"^```json\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_FENCED = re.compile(r"^```(json|text)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
KINDS = frozenset({"envelope", "encrypted", "pair_key", "rejection"})
TAG_SIZE = 64
#: Section 6.2: the label of the pair-key input, 20 ASCII bytes, then a zero byte.
DOC_PAIR_LABEL = b"agoramesh/2 pair key"
#: Every receiver setting a rejection vector states (receiver_seed and the rest are optional).
REJECTION_SETTINGS = ("receiver", "arrived_on", "arrived_reply", "now", "sign_all",
                      "deliveries", "reason", "wire_hex")


def _json_blocks() -> list[Any]:
    return [json.loads(block) for block in _JSON_BLOCK.findall(PROTOCOL.read_text("utf-8"))]


def _of_kind(kind: str) -> list[dict[str, Any]]:
    return [b for b in _json_blocks() if isinstance(b, dict) and b.get("kind") == kind]


VECTORS = _of_kind("envelope")
ENCRYPTED = _of_kind("encrypted")
PAIR_KEYS = _of_kind("pair_key")
REJECTIONS = _of_kind("rejection")
VECTORS_BY_NAME = {vector["name"]: vector for vector in VECTORS + ENCRYPTED}


def _from_doc(value: Any) -> Any:
    """A vector's JSON value as the msgpack value it stands for (``{"$bin": hex}`` → bytes)."""
    if isinstance(value, dict):
        if value.keys() == {"$bin"}:
            return bytes.fromhex(value["$bin"])
        return {key: _from_doc(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_from_doc(item) for item in value]
    return value


# -- the document's identity rules (section 3), standard library only --------------

def crc16_xmodem(data: bytes) -> int:
    """CRC-16/XMODEM exactly as PROTOCOL.md section 3.4 writes it."""
    crc = 0x0000
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def doc_agent_id(public_key: bytes) -> str:
    body = bytes([0xA0]) + public_key
    return base64.b32encode(body + crc16_xmodem(body).to_bytes(2, "little")).decode("ascii")


def doc_public_key(agent_id: str) -> bytes:
    assert re.fullmatch(r"[A-Z2-7]{56}", agent_id)
    decoded = base64.b32decode(agent_id)
    assert len(decoded) == 35
    assert decoded[0] == 0xA0
    assert decoded[33:] == crc16_xmodem(decoded[:33]).to_bytes(2, "little")
    return decoded[1:33]


def doc_seed(raw_seed: bytes) -> str:
    raw = bytes([0x90 | (0xA0 >> 5), (0xA0 & 0x1F) << 3]) + raw_seed
    encoded = base64.b32encode(raw + crc16_xmodem(raw).to_bytes(2, "little"))
    return encoded.rstrip(b"=").decode("ascii")


def doc_raw_seed(seed: str) -> bytes:
    decoded = base64.b32decode(seed.strip() + "======")
    assert len(decoded) == 36
    assert decoded[34:] == crc16_xmodem(decoded[:34]).to_bytes(2, "little")
    b0, b1 = decoded[0], decoded[1]
    assert b0 >> 3 == 18
    assert ((b0 & 7) << 5) | (b1 >> 3) == 0xA0
    return decoded[2:34]


def doc_verify(agent_id: str, signed: bytes, signature: bytes) -> bool:
    """Section 6.1: pure Ed25519 over ``signed`` with the key inside the agent id."""
    try:
        nacl.bindings.crypto_sign_open(signature + signed, doc_public_key(agent_id))
    except nacl.exceptions.BadSignatureError:
        return False
    return True


# -- the document's key conversion, pair key and MAC (sections 20.1 and 6.2) ----------

_P = 2**255 - 19


def doc_x25519_secret(raw_seed: bytes) -> bytes:
    """Section 20.1: the clamped first half of SHA-512(raw seed)."""
    secret = bytearray(hashlib.sha512(raw_seed).digest()[:32])
    secret[0] &= 248
    secret[31] &= 127
    secret[31] |= 64
    return bytes(secret)


def doc_x25519_public(agent_id: str) -> bytes:
    """Section 20.1: u = (1 + y) / (1 - y) mod 2^255 - 19, y the Ed25519 key, sign bit cleared."""
    y = int.from_bytes(doc_public_key(agent_id), "little") & ((1 << 255) - 1)
    u = (1 + y) * pow(1 - y, _P - 2, _P) % _P
    return u.to_bytes(32, "little")


def doc_shared_key(own_seed: str, peer: str) -> bytes:
    """``k`` of section 6.2 / 20.1: crypto_box_beforenm(peer's X25519 public, own X25519 secret)."""
    return bytes(nacl.bindings.crypto_box_beforenm(
        doc_x25519_public(peer), doc_x25519_secret(doc_raw_seed(own_seed))))


def doc_pair_key_input(a: str, b: str) -> bytes:
    low, high = sorted((a.encode("ascii"), b.encode("ascii")))
    return DOC_PAIR_LABEL + b"\x00" + low + high


def doc_pair_key(k: bytes, a: str, b: str) -> bytes:
    """Section 6.2: BLAKE2b-256 keyed with k over label || 0x00 || lower id || higher id."""
    return hashlib.blake2b(doc_pair_key_input(a, b), digest_size=32, key=k).digest()


def doc_mac(pair_key: bytes, signed: bytes) -> bytes:
    """Section 6.2: the tag of an ``auth: "mac"`` envelope, BLAKE2b-512 keyed with the pair key."""
    return hashlib.blake2b(signed, digest_size=64, key=pair_key).digest()


def doc_tag_is_valid(wire: bytes, receiver: str, receiver_seed: str | None) -> bool:
    """The tag of ``wire`` checked as section 6 says, whatever else is wrong with it."""
    signed, tag = wire[:-TAG_SIZE], wire[-TAG_SIZE:]
    fields = msgpack.unpackb(signed, raw=False)
    if fields.get("auth", "sig") == "sig":  # a version 1 map has no auth: it was signed
        return doc_verify(fields["from"], signed, tag)
    assert receiver_seed is not None, "a mac tag is checked with the receiver's keys"
    k = doc_shared_key(receiver_seed, fields["from"])
    return hmac.compare_digest(doc_mac(doc_pair_key(k, fields["from"], receiver), signed), tag)


def _guard_for(policy: EnvelopePolicy, agent_id: str | None, seed: str | None) -> Guard:
    """A receiver as the document describes it: with its keys when its seed is given."""
    if seed is None:
        return Guard(policy, agent_id=agent_id)
    keys = E2EKeys(Identity(seed))
    assert keys.agent_id == agent_id
    return Guard(policy, agent_id=agent_id, opener=keys.open, pair_key=keys.pair_key)


# -- the document itself -----------------------------------------------------------

def test_document_has_the_required_vectors() -> None:
    assert len(VECTORS) >= 6
    assert len(ENCRYPTED) >= 1
    assert len(PAIR_KEYS) >= 1
    assert len(REJECTIONS) >= 15
    names = [b["name"] for b in VECTORS + ENCRYPTED + PAIR_KEYS + REJECTIONS]
    assert len(set(names)) == len(names), "vector names must be unique"
    auths = {vector["fields"]["auth"] for vector in VECTORS}
    assert auths == {"sig", "mac"}
    assert any(vector["fields"]["reply"] for vector in VECTORS), "a vector with a reply"
    assert any(not vector["fields"]["reply"] for vector in VECTORS)
    assert any(vector["fields"]["to"] != "*" and vector["fields"]["auth"] == "mac"
               and vector["fields"]["reply"] == "" for vector in VECTORS), "a MACed reply"
    reasons = {vector["reason"] for vector in REJECTIONS}
    assert {"bad_signature", "wrong_subject", "wrong_reply", "misaddressed", "expired",
            "future", "replayed", "schema", "unsupported_version", "signature_required",
            "undecryptable"} <= reasons
    assert reasons <= {reason.value for reason in RejectReason}
    assert any(r["sign_all"] for r in REJECTIONS)
    assert any(r.get("fields", {}).get("v") == 1 for r in REJECTIONS), "a version 1 envelope"


def test_every_json_block_parses() -> None:
    text = PROTOCOL.read_text("utf-8")
    assert len(_JSON_BLOCK.findall(text)) == text.count("```json\n")
    blocks = _json_blocks()
    assert all(block is not None for block in blocks)
    kinds = {b["kind"] for b in blocks if isinstance(b, dict) and "kind" in b}
    assert kinds == KINDS


def test_documented_crc16_check_value() -> None:
    assert crc16_xmodem(b"123456789") == 0x31C3


def test_documented_pair_label_is_the_code_s() -> None:
    assert e2e.PAIR_LABEL == DOC_PAIR_LABEL and len(DOC_PAIR_LABEL) == 20


# -- annotated hex dumps -------------------------------------------------------------

_DUMP_LINE = re.compile(r"([0-9a-f]{4}) +((?:[0-9a-f]{2} )*[0-9a-f]{2})(?:  .*)?")
_DUMP_MORE = re.compile(r" {6,}((?:[0-9a-f]{2} )*[0-9a-f]{2})(?:  .*)?")


def _annotated_dumps() -> list[tuple[dict[str, Any], int, bytes]]:
    """(vector before it, first offset, bytes) of every ```text hex dump of the document."""
    dumps = []
    last: dict[str, Any] | None = None
    for lang, block in _FENCED.findall(PROTOCOL.read_text("utf-8")):
        if lang == "json":
            value = json.loads(block)
            if isinstance(value, dict) and value.get("kind") in KINDS:
                last = value
            continue
        lines = block.splitlines()
        if not lines or not _DUMP_LINE.fullmatch(lines[0]):
            continue
        assert last is not None
        start = int(lines[0][:4], 16)
        data = bytearray()
        for line in lines:
            if match := _DUMP_LINE.fullmatch(line):
                assert int(match[1], 16) == start + len(data), f"offset of {line!r}"
                data += bytes.fromhex(match[2])
            else:
                more = _DUMP_MORE.fullmatch(line)
                assert more, f"not a hex dump line: {line!r}"
                data += bytes.fromhex(more[1])
        dumps.append((last, start, bytes(data)))
    return dumps


def test_annotated_dumps_are_the_vectors_bytes() -> None:
    dumps = _annotated_dumps()
    assert len(dumps) >= 5
    for vector, start, data in dumps:
        candidates = [bytes.fromhex(vector[key]) for key in
                      ("signed_hex", "plaintext_hex", "pair_key_input_hex") if key in vector]
        assert any(c[start:start + len(data)] == data for c in candidates), vector["name"]
        # A dump runs to the end of what it annotates.
        assert any(len(c) == start + len(data) for c in candidates), vector["name"]


# -- envelope vectors ---------------------------------------------------------------

@pytest.fixture(params=VECTORS, ids=[vector["name"] for vector in VECTORS])
def vector(request: pytest.FixtureRequest) -> dict[str, Any]:
    return dict(request.param)


def test_identity_follows_the_documented_encoding(vector: dict[str, Any]) -> None:
    raw_seed = bytes.fromhex(vector["seed_raw_hex"])
    public_key = bytes.fromhex(vector["public_key_hex"])
    assert len(raw_seed) == 32
    assert doc_seed(raw_seed) == vector["seed"]
    assert doc_raw_seed(vector["seed"]) == raw_seed
    assert doc_agent_id(public_key) == vector["agent_id"]
    assert doc_public_key(vector["agent_id"]) == public_key
    assert vector["agent_id"][0] == "U" and vector["agent_id"][1] in "ABCD"
    # ... and the documented values are what the code and RFC 8032 derive.
    assert nacl.bindings.crypto_sign_seed_keypair(raw_seed)[0] == public_key
    identity = Identity(vector["seed"])
    assert identity.agent_id == vector["agent_id"]
    assert public_key_bytes(identity.agent_id) == public_key


def test_seal_reproduces_the_documented_bytes(vector: dict[str, Any]) -> None:
    fields = vector["fields"]
    assert list(fields) == list(FIELDS)
    assert fields["v"] == 2
    assert fields["from"] == vector["agent_id"]
    identity = Identity(vector["seed"])
    wire = seal(
        identity,
        type=fields["type"],
        subject=fields["subject"],
        body=_from_doc(fields["body"]),
        to=fields["to"],
        reply=fields["reply"],
        cid=fields["cid"],
        ttl_ms=fields["exp"] - fields["ts"],
        ts=fields["ts"],
        id=fields["id"],
        pair_key=E2EKeys(identity).pair_key if fields["auth"] == "mac" else None,
    )
    assert wire.hex() == vector["wire_hex"]
    assert vector["signed_hex"] + vector["tag_hex"] == vector["wire_hex"]
    assert len(bytes.fromhex(vector["tag_hex"])) == TAG_SIZE
    # signed is exactly the msgpack of the documented fields, in their order.
    assert msgpack.packb(_from_doc(fields), use_bin_type=True).hex() == vector["signed_hex"]
    assert vector["signed_hex"].startswith("8c")


def test_parse_yields_the_documented_fields(vector: dict[str, Any]) -> None:
    wire = bytes.fromhex(vector["wire_hex"])
    envelope = parse(wire)
    fields = _from_doc(vector["fields"])
    decoded = envelope.as_dict()
    assert decoded.pop("tag") == vector["tag_hex"]
    assert decoded == fields
    assert list(decoded) == list(fields)
    # == alone would accept 1 == 1.0 == True and any key order; repr shows both.
    assert repr(envelope.body) == repr(fields["body"])
    assert envelope.signed.hex() == vector["signed_hex"]
    assert envelope.tag.hex() == vector["tag_hex"]


def test_tag_follows_the_document(vector: dict[str, Any]) -> None:
    fields = vector["fields"]
    signed = bytes.fromhex(vector["signed_hex"])
    tag = bytes.fromhex(vector["tag_hex"])
    mac_keys = {"recipient_seed", "shared_key_hex", "pair_key_hex"}
    if fields["auth"] == "sig":
        assert not mac_keys & vector.keys()
        assert doc_verify(vector["agent_id"], signed, tag)
        assert verify(vector["agent_id"], signed, tag)
        assert Identity(vector["seed"]).sign(signed) == tag
        flipped = bytes([tag[0] ^ 0x80]) + tag[1:]
        assert not doc_verify(vector["agent_id"], signed, flipped)
        assert not verify(vector["agent_id"], signed, flipped)
        return
    assert fields["auth"] == "mac" and mac_keys <= vector.keys()
    sender, recipient = fields["from"], fields["to"]
    assert recipient != "*"
    assert doc_agent_id(nacl.bindings.crypto_sign_seed_keypair(
        doc_raw_seed(vector["recipient_seed"]))[0]) == recipient
    # k from either end (section 6.2), then the pair key, then the MAC: standard library only.
    k = bytes.fromhex(vector["shared_key_hex"])
    assert doc_shared_key(vector["seed"], recipient) == k
    assert doc_shared_key(vector["recipient_seed"], sender) == k
    pair_key = bytes.fromhex(vector["pair_key_hex"])
    assert doc_pair_key(k, sender, recipient) == pair_key == doc_pair_key(k, recipient, sender)
    assert doc_mac(pair_key, signed) == tag
    # ... and the code derives the same keys, from both ends.
    assert e2e.pair_key(k, sender, recipient) == pair_key
    assert E2EKeys(Identity(vector["seed"])).pair_key(recipient) == pair_key
    assert E2EKeys(Identity(vector["recipient_seed"])).pair_key(sender) == pair_key
    # A signature check of a MAC fails: the tag is no signature.
    assert not doc_verify(sender, signed, tag)


def test_vector_is_admitted_on_its_subject_and_reply(vector: dict[str, Any]) -> None:
    fields = vector["fields"]
    wire = bytes.fromhex(vector["wire_hex"])
    receiver = None if fields["to"] == "*" else fields["to"]
    guard = _guard_for(EnvelopePolicy(), receiver, vector.get("recipient_seed"))
    envelope = guard.admit(wire, fields["subject"], fields["reply"], now=fields["ts"])
    assert envelope.id == fields["id"] and envelope.auth == fields["auth"]
    assert envelope.reply == fields["reply"]
    assert not guard.rejections
    # The same bytes with a changed tag are refused, for either kind of tag.
    tampered = wire[:-1] + bytes([wire[-1] ^ 1])
    with pytest.raises(EnvelopeError) as caught:
        _guard_for(EnvelopePolicy(), receiver, vector.get("recipient_seed")).admit(
            tampered, fields["subject"], fields["reply"], now=fields["ts"])
    assert caught.value.reason is RejectReason.BAD_SIGNATURE


# -- the pair key alone (section 6.2) ------------------------------------------------

@pytest.mark.parametrize("derivation", PAIR_KEYS, ids=[v["name"] for v in PAIR_KEYS])
def test_pair_key_derivation(derivation: dict[str, Any]) -> None:
    first, second = derivation["agents"]
    for agent in (first, second):
        raw_seed = bytes.fromhex(agent["seed_raw_hex"])
        assert doc_seed(raw_seed) == agent["seed"]
        assert doc_agent_id(nacl.bindings.crypto_sign_seed_keypair(raw_seed)[0]) == \
            agent["agent_id"]
        secret = bytes.fromhex(agent["x25519_secret_hex"])
        public = bytes.fromhex(agent["x25519_public_hex"])
        assert doc_x25519_secret(raw_seed) == secret
        assert doc_x25519_public(agent["agent_id"]) == public
        assert nacl.bindings.crypto_scalarmult_base(secret) == public
        assert E2EKeys(Identity(agent["seed"])).public_key == public
    k = bytes.fromhex(derivation["shared_key_hex"])
    assert doc_shared_key(first["seed"], second["agent_id"]) == k
    assert doc_shared_key(second["seed"], first["agent_id"]) == k
    # k is HSalsa20 over the X25519 output, not the X25519 output itself.
    assert nacl.bindings.crypto_scalarmult(
        bytes.fromhex(first["x25519_secret_hex"]), bytes.fromhex(second["x25519_public_hex"])
    ) != k
    data = bytes.fromhex(derivation["pair_key_input_hex"])
    low, high = sorted((first["agent_id"], second["agent_id"]))
    assert data == DOC_PAIR_LABEL + b"\x00" + low.encode("ascii") + high.encode("ascii")
    assert data == doc_pair_key_input(first["agent_id"], second["agent_id"])
    assert len(data) == 20 + 1 + 56 + 56
    pair_key = bytes.fromhex(derivation["pair_key_hex"])
    assert hashlib.blake2b(data, digest_size=32, key=k).digest() == pair_key
    # ... and the code agrees, from both ends.
    assert e2e.pair_key(k, first["agent_id"], second["agent_id"]) == pair_key
    assert e2e.pair_key(k, second["agent_id"], first["agent_id"]) == pair_key
    assert E2EKeys(Identity(first["seed"])).pair_key(second["agent_id"]) == pair_key
    assert E2EKeys(Identity(second["seed"])).pair_key(first["agent_id"]) == pair_key


# -- negative vectors ---------------------------------------------------------------

@pytest.mark.parametrize("rejection", REJECTIONS, ids=[r["name"] for r in REJECTIONS])
def test_rejection_vector(rejection: dict[str, Any]) -> None:
    assert set(REJECTION_SETTINGS) <= rejection.keys()
    wire = bytes.fromhex(rejection["wire_hex"])
    if "flip" in rejection:
        base = bytearray.fromhex(VECTORS_BY_NAME[rejection["derived_from"]]["wire_hex"])
        base[rejection["flip"]["offset"]] ^= rejection["flip"]["mask"]
        assert bytes(base) == wire
    elif "derived_from" in rejection:
        assert rejection["derived_from"] in VECTORS_BY_NAME
    if "fields" in rejection:  # signed is exactly the msgpack of the documented fields
        fields = _from_doc(rejection["fields"])
        assert msgpack.packb(fields, use_bin_type=True) == wire[:-TAG_SIZE]
    # The tag is good unless the tag is the point: nothing else explains the rejection.
    tag_ok = doc_tag_is_valid(wire, rejection["receiver"], rejection.get("receiver_seed"))
    assert tag_ok is (rejection["reason"] != "bad_signature")
    guard = _guard_for(EnvelopePolicy(sign_all=rejection["sign_all"]), rejection["receiver"],
                       rejection.get("receiver_seed"))
    for _ in range(rejection["deliveries"] - 1):
        guard.admit(wire, rejection["arrived_on"], rejection["arrived_reply"],
                    now=rejection["now"])
    with pytest.raises(EnvelopeError) as caught:
        guard.admit(wire, rejection["arrived_on"], rejection["arrived_reply"],
                    now=rejection["now"])
    assert caught.value.reason == RejectReason(rejection["reason"])
    assert guard.rejections == {RejectReason(rejection["reason"]): 1}


# -- encrypted vectors (section 20) --------------------------------------------------

@pytest.fixture(params=ENCRYPTED, ids=[vector["name"] for vector in ENCRYPTED])
def encrypted(request: pytest.FixtureRequest) -> dict[str, Any]:
    return dict(request.param)


def test_encryption_keys_follow_the_documented_conversion(encrypted: dict[str, Any]) -> None:
    for end in ("sender", "recipient"):
        seed, agent_id = encrypted[f"{end}_seed"], encrypted[f"{end}_agent_id"]
        secret = bytes.fromhex(encrypted[f"{end}_x25519_secret_hex"])
        public = bytes.fromhex(encrypted[f"{end}_x25519_public_hex"])
        assert Identity(seed).agent_id == agent_id
        assert doc_x25519_secret(doc_raw_seed(seed)) == secret
        assert doc_x25519_public(agent_id) == public
        assert nacl.bindings.crypto_scalarmult_base(secret) == public
        assert nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(
            doc_public_key(agent_id)) == public
        assert E2EKeys(Identity(seed)).public_key == public
    shared = bytes.fromhex(encrypted["shared_key_hex"])
    sender_secret = bytes.fromhex(encrypted["sender_x25519_secret_hex"])
    recipient_secret = bytes.fromhex(encrypted["recipient_x25519_secret_hex"])
    sender_public = bytes.fromhex(encrypted["sender_x25519_public_hex"])
    recipient_public = bytes.fromhex(encrypted["recipient_x25519_public_hex"])
    assert nacl.bindings.crypto_box_beforenm(recipient_public, sender_secret) == shared
    assert nacl.bindings.crypto_box_beforenm(sender_public, recipient_secret) == shared
    if "pair_key_hex" in encrypted:  # the same k keys the MAC (section 6.2)
        assert doc_pair_key(shared, encrypted["sender_agent_id"],
                            encrypted["recipient_agent_id"]).hex() == encrypted["pair_key_hex"]


def test_box_follows_the_documented_construction(encrypted: dict[str, Any]) -> None:
    plaintext = bytes.fromhex(encrypted["plaintext_hex"])
    nonce = bytes.fromhex(encrypted["nonce_hex"])
    box = bytes.fromhex(encrypted["box_hex"])
    assert msgpack.packb(_from_doc(encrypted["plaintext_body"]), use_bin_type=True) == plaintext
    assert len(nonce) == 24 and len(box) == 24 + 16 + len(plaintext)
    # libsodium crypto_box (the "easy" layout: tag || encrypted bytes) from the documented keys.
    sealed = nacl.bindings.crypto_box(
        plaintext, nonce, bytes.fromhex(encrypted["recipient_x25519_public_hex"]),
        bytes.fromhex(encrypted["sender_x25519_secret_hex"]))
    assert nonce + sealed == box
    shared = bytes.fromhex(encrypted["shared_key_hex"])
    assert nacl.bindings.crypto_box_open_afternm(box[24:], nonce, shared) == plaintext
    assert _from_doc(encrypted["fields"]["body"]) == {BOX_KEY: box}


def test_encrypted_vector_is_sealed_byte_for_byte(encrypted: dict[str, Any]) -> None:
    fields = encrypted["fields"]
    assert list(fields) == list(FIELDS)
    assert (fields["from"], fields["to"]) == (encrypted["sender_agent_id"],
                                              encrypted["recipient_agent_id"])
    sender = Identity(encrypted["sender_seed"])
    keys = E2EKeys(sender)
    box = partial(keys.seal_body, nonce=bytes.fromhex(encrypted["nonce_hex"]))
    wire = seal(sender, type=fields["type"], subject=fields["subject"],
                body=_from_doc(encrypted["plaintext_body"]), to=fields["to"],
                reply=fields["reply"], cid=fields["cid"], ttl_ms=fields["exp"] - fields["ts"],
                ts=fields["ts"], id=fields["id"], box=box,
                pair_key=keys.pair_key if fields["auth"] == "mac" else None)
    assert wire.hex() == encrypted["wire_hex"]
    assert encrypted["signed_hex"] + encrypted["tag_hex"] == encrypted["wire_hex"]
    assert msgpack.packb(_from_doc(fields), use_bin_type=True).hex() == encrypted["signed_hex"]
    envelope = parse(wire)
    decoded = envelope.as_dict()
    assert decoded.pop("tag") == encrypted["tag_hex"]
    assert decoded == _from_doc(fields)
    if fields["auth"] == "mac":
        pair_key = bytes.fromhex(encrypted["pair_key_hex"])
        assert doc_mac(pair_key, envelope.signed) == envelope.tag
    else:
        assert doc_verify(fields["from"], envelope.signed, envelope.tag)


def test_encrypted_vector_opens_for_its_recipient_only(encrypted: dict[str, Any]) -> None:
    fields = encrypted["fields"]
    wire = bytes.fromhex(encrypted["wire_hex"])
    recipient = Identity(encrypted["recipient_seed"])
    guard = _guard_for(EnvelopePolicy(), recipient.agent_id, encrypted["recipient_seed"])
    envelope = guard.admit(wire, fields["subject"], fields["reply"], now=fields["ts"])
    plaintext = _from_doc(encrypted["plaintext_body"])
    assert envelope.body == plaintext and repr(envelope.body) == repr(plaintext)
    assert envelope.wire == wire and not guard.rejections
    # Either end holds the pair's key; any other key opens nothing.
    sender = Identity(encrypted["sender_seed"])
    boxed = _from_doc(fields["body"])
    assert E2EKeys(sender).open_body(recipient.agent_id, boxed) == plaintext
    with pytest.raises(EnvelopeError) as caught:
        E2EKeys(Identity.generate()).open_body(sender.agent_id, boxed)
    assert caught.value.reason is RejectReason.UNDECRYPTABLE


# -- plain-JSON ingress shapes (section 11) ------------------------------------------

def test_json_error_shape() -> None:
    assert json.loads(encode_json_error(IngressDenied("no"))) == {
        "error": {"type": "IngressDenied", "message": "no"}
    }


@pytest.mark.parametrize(
    ("payload", "is_json"),
    [(b'{"a":1}', True), (b' \t\r\n{}', True), (b"[1]", False), (b"", False),
     (b"\x8c", False), (b"\x0b{}", False)],
)
def test_json_detection(payload: bytes, is_json: bool) -> None:
    assert looks_like_json(payload) is is_json
