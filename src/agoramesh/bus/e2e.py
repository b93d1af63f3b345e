"""End-to-end encryption of directed envelope bodies (docs/PROTOCOL.md §20).

A body addressed to one agent travels as a msgpack map with the single key
``"$box"``, whose bin value is ``nonce || Box(msgpack(body))``: a 24-byte
random nonce and NaCl ``crypto_box`` (X25519 + XSalsa20-Poly1305) from the
sender's key to the recipient's. The keys are the agents' nkeys: an agent id
is an Ed25519 public key, and both halves of a pair convert to X25519, so no
key exchange or key directory is needed. The body is encrypted *before* the
envelope is authenticated; relays and observers see who talks to whom, never what.
The same shared key, through a labelled BLAKE2b, is the pair's MAC key
(:meth:`E2EKeys.pair_key`, PROTOCOL.md §6.2).

:class:`E2EKeys` holds one identity's X25519 secret and a bounded LRU of
per-peer :class:`nacl.public.Box` objects, so the X25519 scalar multiplication
(and the Ed25519 → X25519 conversion of the peer's key) is paid once per peer,
not per message: after that a seal or an open costs a few microseconds.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from typing import Any, Final

import msgpack
import nacl.bindings
import nacl.exceptions
import nacl.public

from agoramesh.bus.envelope import BOX_KEY, Envelope, is_boxed, unpack_body
from agoramesh.bus.identity import Identity, public_key_bytes
from agoramesh.errors import IdentityError, SchemaError, UndecryptableEnvelope

__all__ = ("BOX_KEY", "MIN_BOX_SIZE", "NONCE_SIZE", "PAIR_LABEL", "E2EKeys", "pair_key",
           "x25519_public_key")

NONCE_SIZE: Final = nacl.public.Box.NONCE_SIZE  # 24
#: A box of an empty plaintext: the nonce and the 16-byte Poly1305 tag.
MIN_BOX_SIZE: Final = NONCE_SIZE + 16
#: The domain label of the pair-key derivation (PROTOCOL.md §6.2).
PAIR_LABEL: Final = b"agoramesh/2 pair key"


def pair_key(shared: bytes, a: str, b: str) -> bytes:
    """The MAC key of agents ``a`` and ``b`` from their ``crypto_box_beforenm`` key:
    ``BLAKE2b-256(key=shared, PAIR_LABEL || 0x00 || lower id || higher id)`` (PROTOCOL.md §6.2).
    """
    low, high = sorted((a, b))
    return hashlib.blake2b(PAIR_LABEL + b"\x00" + low.encode("ascii") + high.encode("ascii"),
                           digest_size=32, key=shared).digest()


def x25519_public_key(agent_id: str) -> bytes:
    """The X25519 public key of an agent (its Ed25519 key, converted); IdentityError if none."""
    try:
        return bytes(nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(
            public_key_bytes(agent_id)))
    except nacl.exceptions.CryptoError as exc:  # a small-order or off-curve point
        raise IdentityError(f"agent id {agent_id} is not a usable Ed25519 public key") from exc


class E2EKeys:
    """One identity's encryption keys and its per-peer boxes.

    ``seal_body`` encrypts a body for a recipient; ``open`` is a
    :class:`~agoramesh.bus.admission.Guard` opener. ``cache_size`` bounds the
    peers whose Box is kept (least recently used dropped first).
    """

    __slots__ = ("_boxes", "_macs", "_secret", "agent_id", "cache_size")

    def __init__(self, identity: Identity, *, cache_size: int = 4096) -> None:
        if cache_size < 1:
            raise ValueError("cache_size must be at least 1")
        self.agent_id = identity.agent_id
        self.cache_size = cache_size
        self._secret = nacl.public.PrivateKey(
            nacl.bindings.crypto_sign_ed25519_sk_to_curve25519(identity._secret))
        self._boxes: OrderedDict[str, nacl.public.Box] = OrderedDict()
        self._macs: OrderedDict[str, bytes] = OrderedDict()

    @property
    def public_key(self) -> bytes:
        """Our X25519 public key."""
        return bytes(self._secret.public_key)

    @property
    def peers(self) -> int:
        """How many peers' boxes are cached now (at most ``cache_size``)."""
        return len(self._boxes)

    def box(self, peer: str) -> nacl.public.Box:
        """The Box shared with ``peer`` (cached); IdentityError for a key that cannot be one."""
        boxes = self._boxes
        box = boxes.get(peer)
        if box is not None:
            boxes.move_to_end(peer)
            return box
        try:
            box = nacl.public.Box(self._secret, nacl.public.PublicKey(x25519_public_key(peer)))
        except nacl.exceptions.CryptoError as exc:  # X25519 gave the all-zero secret
            raise IdentityError(f"no shared key with {peer}: a low-order public key") from exc
        boxes[peer] = box
        if len(boxes) > self.cache_size:
            boxes.popitem(last=False)
        return box

    def pair_key(self, peer: str) -> bytes:
        """The MAC key we share with ``peer`` (cached, as its Box is): PROTOCOL.md §6.2.
        IdentityError for a peer id that has no X25519 key."""
        macs = self._macs
        key = macs.get(peer)
        if key is not None:
            macs.move_to_end(peer)
            return key
        key = pair_key(self.box(peer).shared_key(), self.agent_id, peer)
        macs[peer] = key
        if len(macs) > self.cache_size:
            macs.popitem(last=False)
        return key

    def seal_body(self, recipient: str, body: Any, *, nonce: bytes | None = None
                  ) -> dict[str, bytes]:
        """``{"$box": nonce || Box(msgpack(body))}`` for ``recipient``.

        ``nonce`` is random unless given (only test vectors give one: a nonce
        must never be reused with the same pair of keys).
        """
        try:
            plaintext = msgpack.packb(body, use_bin_type=True)
        except (TypeError, ValueError, OverflowError) as exc:
            raise SchemaError(f"envelope body cannot be encoded as msgpack: {exc}") from exc
        shared = self.box(recipient).shared_key()
        nonce = os.urandom(NONCE_SIZE) if nonce is None else nonce
        # libsodium directly, as identity.py does: Box.encrypt's wrapping costs ~1 us more.
        return {BOX_KEY: nonce + nacl.bindings.crypto_box_afternm(plaintext, nonce, shared)}

    def open_body(self, peer: str, body: Any) -> Any:
        """The plaintext of a boxed body shared with ``peer``; UndecryptableEnvelope if none.

        ``peer`` is the other party: the sender for a recipient, and the
        recipient for a sender (a Box opens for both ends).
        """
        sealed = body.get(BOX_KEY) if isinstance(body, dict) else None
        if type(sealed) is not bytes or len(sealed) < MIN_BOX_SIZE:
            raise UndecryptableEnvelope(f"an encrypted body must be bin of at least "
                                        f"{MIN_BOX_SIZE} bytes")
        try:
            plaintext = nacl.bindings.crypto_box_open_afternm(
                sealed[NONCE_SIZE:], sealed[:NONCE_SIZE], self.box(peer).shared_key())
        except (nacl.exceptions.CryptoError, IdentityError):
            raise UndecryptableEnvelope(f"encrypted body from {peer} does not open "
                                        f"with our key") from None
        opened = unpack_body(plaintext)
        if is_boxed(opened):
            raise SchemaError("an encrypted body holds another encrypted body")
        return opened

    def open(self, envelope: Envelope) -> Envelope:
        """``envelope`` with its boxed body opened (``wire`` unchanged): a Guard opener."""
        if envelope.to != self.agent_id:
            raise UndecryptableEnvelope(f"encrypted body is addressed to {envelope.to}, "
                                        f"not to us")
        return envelope.with_body(self.open_body(envelope.sender, envelope.body))

    def __repr__(self) -> str:
        return f"E2EKeys({self.agent_id}, peers={len(self._boxes)})"
