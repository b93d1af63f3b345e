"""docs/PROTOCOL.md's test vectors, checked byte for byte against the code.

The vectors are the ```json blocks of the document; envelope vectors carry
``"kind": "envelope"``, encrypted ones (section 20) ``"kind": "encrypted"`` and
negative ones ``"kind": "rejection"``. The identity
tests re-implement the document's key encoding (section 3) with the standard
library only, so the document, not the code, is what they check.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from functools import partial
from pathlib import Path
from typing import Any

import msgpack
import nacl.bindings
import nacl.public
import nacl.signing
import pytest

from agoramesh.bus.e2e import E2EKeys
from agoramesh.bus.envelope import BOX_KEY, FIELDS, Guard, parse, seal
from agoramesh.bus.identity import Identity, public_key_bytes, verify
from agoramesh.bus.ingress import encode_json_error, looks_like_json
from agoramesh.config import EnvelopePolicy
from agoramesh.errors import EnvelopeError, IngressDenied, RejectReason

PROTOCOL = Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md"
_JSON_BLOCK = re.compile(r"^```json\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def _json_blocks() -> list[Any]:
    return [json.loads(block) for block in _JSON_BLOCK.findall(PROTOCOL.read_text("utf-8"))]


def _of_kind(kind: str) -> list[dict[str, Any]]:
    return [b for b in _json_blocks() if isinstance(b, dict) and b.get("kind") == kind]


VECTORS = _of_kind("envelope")
ENCRYPTED = _of_kind("encrypted")
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


# -- the document itself -----------------------------------------------------------

def test_document_has_the_required_vectors() -> None:
    assert len(VECTORS) >= 3
    assert len(ENCRYPTED) >= 1
    assert len(REJECTIONS) >= 2
    assert len(VECTORS_BY_NAME) == len(VECTORS) + len(ENCRYPTED), "vector names must be unique"
    reasons = {vector["reason"] for vector in REJECTIONS}
    assert {"bad_signature", "wrong_subject", "undecryptable"} <= reasons
    assert reasons <= {reason.value for reason in RejectReason}


def test_every_json_block_parses() -> None:
    text = PROTOCOL.read_text("utf-8")
    assert len(_JSON_BLOCK.findall(text)) == text.count("```json\n")
    assert all(block is not None for block in _json_blocks())


def test_documented_crc16_check_value() -> None:
    assert crc16_xmodem(b"123456789") == 0x31C3


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
    assert bytes(nacl.signing.SigningKey(raw_seed).verify_key) == public_key
    identity = Identity(vector["seed"])
    assert identity.agent_id == vector["agent_id"]
    assert public_key_bytes(identity.agent_id) == public_key


def test_seal_reproduces_the_documented_bytes(vector: dict[str, Any]) -> None:
    fields = vector["fields"]
    assert list(fields) == list(FIELDS)
    assert fields["from"] == vector["agent_id"]
    wire = seal(
        Identity(vector["seed"]),
        type=fields["type"],
        subject=fields["subject"],
        body=_from_doc(fields["body"]),
        to=fields["to"],
        cid=fields["cid"],
        ttl_ms=fields["exp"] - fields["ts"],
        ts=fields["ts"],
        id=fields["id"],
    )
    assert wire.hex() == vector["wire_hex"]
    assert vector["signed_hex"] + vector["signature_hex"] == vector["wire_hex"]
    assert len(bytes.fromhex(vector["signature_hex"])) == 64


def test_parse_yields_the_documented_fields(vector: dict[str, Any]) -> None:
    wire = bytes.fromhex(vector["wire_hex"])
    envelope = parse(wire)
    fields = _from_doc(vector["fields"])
    decoded = envelope.as_dict()
    assert decoded.pop("sig") == vector["signature_hex"]
    assert decoded == fields
    # == alone would accept 1 == 1.0 == True and any key order; repr shows both.
    assert repr(envelope.body) == repr(fields["body"])
    assert envelope.signed.hex() == vector["signed_hex"]
    assert envelope.signature.hex() == vector["signature_hex"]


def test_signature_verifies(vector: dict[str, Any]) -> None:
    signed = bytes.fromhex(vector["signed_hex"])
    signature = bytes.fromhex(vector["signature_hex"])
    assert verify(vector["agent_id"], signed, signature)
    assert Identity(vector["seed"]).sign(signed) == signature
    public_key = nacl.signing.VerifyKey(bytes.fromhex(vector["public_key_hex"]))
    assert public_key.verify(signed, signature) == signed
    flipped = bytes([signature[0] ^ 0x80]) + signature[1:]
    assert not verify(vector["agent_id"], signed, flipped)


def test_vector_is_admitted_on_its_subject(vector: dict[str, Any]) -> None:
    fields = vector["fields"]
    receiver = None if fields["to"] == "*" else fields["to"]
    guard = Guard(EnvelopePolicy(), agent_id=receiver)
    envelope = guard.admit(bytes.fromhex(vector["wire_hex"]), fields["subject"], now=fields["ts"])
    assert envelope.id == fields["id"]
    assert not guard.rejections


# -- negative vectors ---------------------------------------------------------------

@pytest.mark.parametrize("rejection", REJECTIONS, ids=[r["name"] for r in REJECTIONS])
def test_rejection_vector(rejection: dict[str, Any]) -> None:
    wire = bytes.fromhex(rejection["wire_hex"])
    if "flip" in rejection:
        base = bytearray.fromhex(VECTORS_BY_NAME[rejection["derived_from"]]["wire_hex"])
        base[rejection["flip"]["offset"]] ^= rejection["flip"]["mask"]
        assert bytes(base) == wire
    elif "derived_from" in rejection:
        assert rejection["derived_from"] in VECTORS_BY_NAME
    opener = None
    if "receiver_seed" in rejection:  # the receiver opens boxes addressed to it (section 20)
        receiver = Identity(rejection["receiver_seed"])
        assert receiver.agent_id == rejection["receiver"]
        opener = E2EKeys(receiver).open
    guard = Guard(EnvelopePolicy(), agent_id=rejection["receiver"], opener=opener)
    for _ in range(rejection["deliveries"] - 1):
        guard.admit(wire, rejection["arrived_on"], now=rejection["now"])
    with pytest.raises(EnvelopeError) as caught:
        guard.admit(wire, rejection["arrived_on"], now=rejection["now"])
    assert caught.value.reason == RejectReason(rejection["reason"])
    assert guard.rejections == {RejectReason(rejection["reason"]): 1}


# -- encrypted vectors (section 20) --------------------------------------------------

def doc_x25519_secret(raw_seed: bytes) -> bytes:
    """Section 20.1: the clamped first half of SHA-512(raw seed)."""
    secret = bytearray(hashlib.sha512(raw_seed).digest()[:32])
    secret[0] &= 248
    secret[31] &= 127
    secret[31] |= 64
    return bytes(secret)


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
    box = partial(E2EKeys(sender).seal_body, nonce=bytes.fromhex(encrypted["nonce_hex"]))
    wire = seal(sender, type=fields["type"], subject=fields["subject"],
                body=_from_doc(encrypted["plaintext_body"]), to=fields["to"], cid=fields["cid"],
                ttl_ms=fields["exp"] - fields["ts"], ts=fields["ts"], id=fields["id"], box=box)
    assert wire.hex() == encrypted["wire_hex"]
    assert encrypted["signed_hex"] + encrypted["signature_hex"] == encrypted["wire_hex"]
    envelope = parse(wire)
    decoded = envelope.as_dict()
    assert decoded.pop("sig") == encrypted["signature_hex"]
    assert decoded == _from_doc(fields)
    assert verify(fields["from"], envelope.signed, envelope.signature)


def test_encrypted_vector_opens_for_its_recipient_only(encrypted: dict[str, Any]) -> None:
    fields = encrypted["fields"]
    wire = bytes.fromhex(encrypted["wire_hex"])
    recipient = Identity(encrypted["recipient_seed"])
    guard = Guard(EnvelopePolicy(), agent_id=recipient.agent_id,
                  opener=E2EKeys(recipient).open)
    envelope = guard.admit(wire, fields["subject"], now=fields["ts"])
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
     (b"\x8a", False), (b"\x0b{}", False)],
)
def test_json_detection(payload: bytes, is_json: bool) -> None:
    assert looks_like_json(payload) is is_json
