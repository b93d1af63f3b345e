"""NATS JWTs (version 2): the operator, account and user claims nats-server verifies offline.

A NATS JWT is ``base64url(header) "." base64url(claims) "." base64url(sig)``
(no padding), where the header is ``{"typ":"JWT","alg":"ed25519-nkey"}`` and
``sig`` is the issuer's nkey (Ed25519) signature over the first two parts.
The chain of trust is operator → account → user: the server trusts the
operator's JWT from its config, each account JWT must be issued by the
operator, each user JWT by its account. A user proves it holds the key of
the JWT's ``sub`` by signing the server's nonce at connect time.

We encode these few claim shapes ourselves (docs/SECURITY.md says why) and
test them against the real nats-server, which is the authority on the format.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

import nacl.bindings
import nacl.exceptions
import nkeys

from agoramesh.errors import TrustError

__all__ = (
    "Permissions",
    "decode",
    "encode",
    "issue_account",
    "issue_operator",
    "issue_user",
    "public_key",
)

_HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}
_UNLIMITED = -1
_ACCOUNT_LIMITS = {"subs": _UNLIMITED, "data": _UNLIMITED, "payload": _UNLIMITED,
                   "imports": _UNLIMITED, "exports": _UNLIMITED, "wildcards": True,
                   "conn": _UNLIMITED, "leaf": _UNLIMITED}
_PREFIXES = {"operator": "O", "account": "A", "user": "U"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def public_key(seed: bytes) -> str:
    """The public key (``O…``, ``A…``, ``U…``) of an nkey seed."""
    try:
        return str(nkeys.from_seed(bytearray(seed)).public_key.decode("ascii"))
    except (nkeys.NkeysError, ValueError, IndexError, TypeError) as exc:
        raise TrustError(f"not an nkey seed: {exc}") from None


def encode(issuer_seed: bytes, subject: str, kind: str, nats: dict[str, Any], *,
           name: str = "", issued_at: int | None = None, expires: int | None = None) -> str:
    """A signed JWT of ``kind`` for ``subject``, issued by the holder of ``issuer_seed``."""
    issuer = nkeys.from_seed(bytearray(issuer_seed))
    claims: dict[str, Any] = {"jti": "", "iat": issued_at or int(time.time()),
                              "iss": issuer.public_key.decode("ascii"), "name": name or subject,
                              "sub": subject, "nats": {**nats, "type": kind, "version": 2}}
    if expires is not None:
        claims["exp"] = expires
    # The id is a digest of the claims without it, as the Go library computes it.
    claims["jti"] = base64.b32encode(hashlib.new(
        "sha512_256", json.dumps(claims, separators=(",", ":")).encode()).digest()
    ).decode("ascii").rstrip("=")
    signing_input = (_b64(json.dumps(_HEADER, separators=(",", ":")).encode()) + "."
                     + _b64(json.dumps(claims, separators=(",", ":")).encode()))
    signature = issuer.sign(signing_input.encode("ascii"))
    return f"{signing_input}.{_b64(signature)}"


def decode(token: str, *, issuer: str | None = None) -> dict[str, Any]:
    """The claims of a JWT whose signature verifies (by ``issuer``, if given); else TrustError."""
    try:
        header_text, claims_text, signature_text = token.strip().split(".")
        header = json.loads(_unb64(header_text))
        claims = json.loads(_unb64(claims_text))
        signature = _unb64(signature_text)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise TrustError("not a NATS JWT (expected three base64url parts)") from None
    if not isinstance(header, dict) or header.get("alg") != _HEADER["alg"]:
        raise TrustError("not a NATS v2 JWT (alg must be ed25519-nkey)")
    if not isinstance(claims, dict) or not isinstance(claims.get("iss"), str):
        raise TrustError("JWT claims have no issuer")
    signer = claims["iss"]
    if issuer is not None and signer != issuer:
        raise TrustError(f"JWT issued by {signer[:12]}…, expected {issuer[:12]}…")
    try:
        nacl.bindings.crypto_sign_open(signature + f"{header_text}.{claims_text}".encode(),
                                       _raw_public(signer))
    except (nacl.exceptions.CryptoError, TrustError, ValueError, TypeError):
        raise TrustError("JWT signature does not verify") from None
    return claims


def _raw_public(key: str) -> bytes:
    """The 32-byte Ed25519 key inside an nkey public key of any kind (checksum checked)."""
    try:
        decoded = base64.b32decode(key + "=" * (-len(key) % 8))
    except (binascii.Error, ValueError):
        raise TrustError(f"not an nkey public key: {key[:60]!r}") from None
    body, crc = decoded[:-2], decoded[-2:]
    if len(body) != 33 or int(nkeys.crc16(bytearray(body))).to_bytes(2, "little") != crc:
        raise TrustError(f"not an nkey public key (bad length or checksum): {key[:60]!r}")
    return body[1:]


def issue_operator(seed: bytes, *, name: str, system_account: str) -> str:
    return encode(seed, public_key(seed), "operator", {"system_account": system_account},
                  name=name)


def issue_account(operator_seed: bytes, account: str, *, name: str,
                  revocations: dict[str, int] | None = None) -> str:
    """An account JWT; ``revocations`` maps user keys to the time before which their JWTs die."""
    nats: dict[str, Any] = {"limits": dict(_ACCOUNT_LIMITS),
                            "default_permissions": {"pub": {}, "sub": {}}}
    if revocations:
        nats["revocations"] = dict(sorted(revocations.items()))
    return encode(operator_seed, account, "account", nats, name=name)


@dataclass(frozen=True, slots=True)
class Permissions:
    """What a user may publish and subscribe to; replies to what it received are separate.

    ``responses`` lets the user publish up to that many messages to the reply
    subject of each message it receives, for ``response_ttl`` seconds: how
    results, bids and streamed chunks reach a requester's private inbox.
    """

    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()
    deny_publish: tuple[str, ...] = ()
    deny_subscribe: tuple[str, ...] = ()
    responses: int = 0
    response_ttl: float = 0.0

    def claims(self) -> dict[str, Any]:
        def rule(allow: tuple[str, ...], deny: tuple[str, ...]) -> dict[str, list[str]]:
            out: dict[str, list[str]] = {}
            if allow:
                out["allow"] = list(allow)
            if deny:
                out["deny"] = list(deny)
            return out

        nats: dict[str, Any] = {"pub": rule(self.publish, self.deny_publish),
                                "sub": rule(self.subscribe, self.deny_subscribe),
                                "subs": _UNLIMITED, "data": _UNLIMITED,
                                "payload": _UNLIMITED}
        if self.responses:
            nats["resp"] = {"max": self.responses, "ttl": int(self.response_ttl * 1e9)}
        return nats


def issue_user(account_seed: bytes, user: str, permissions: Permissions, *, name: str = "",
               expires: int | None = None) -> str:
    """A user JWT for the nkey ``user`` (an agent id), with its permissions."""
    if not user.startswith(_PREFIXES["user"]):
        raise TrustError(f"not a user public key: {user[:60]!r}")
    return encode(account_seed, user, "user", permissions.claims(), name=name,
                  expires=expires)
