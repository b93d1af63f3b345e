"""Agent identities: NATS nkey *user* key pairs (Ed25519).

An agent id is its public key in nkey form (``U…``, 56 characters). Seeds are
kept in a file only the owner can read; :meth:`Identity.load` refuses a seed
file that others can read, as ssh does.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import stat
from functools import lru_cache
from pathlib import Path

import nacl.bindings
import nacl.exceptions
import nacl.signing
import nkeys

from agoramesh.errors import IdentityError

__all__ = ("AGENT_ID_LENGTH", "Identity", "is_agent_id", "public_key_bytes", "verify")

AGENT_ID_LENGTH = 56
_USER_PREFIX = nkeys.PREFIX_BYTE_USER
_AGENT_ID = re.compile(r"U[A-Z2-7]{55}")  # base32 of 35 bytes: no '=' padding


def _crc16(data: bytes) -> bytes:
    return int(nkeys.crc16(bytearray(data))).to_bytes(2, "little")


def _encode_public(raw: bytes) -> str:
    body = bytes([_USER_PREFIX]) + raw
    return base64.b32encode(body + _crc16(body)).decode("ascii")


@lru_cache(maxsize=65536)
def public_key_bytes(agent_id: str) -> bytes:
    """The raw 32-byte Ed25519 key inside a ``U…`` agent id (checksum checked)."""
    if not isinstance(agent_id, str) or not _AGENT_ID.fullmatch(agent_id):
        raise IdentityError(f"not an agent id (56-char nkey user key starting with U): "
                            f"{agent_id[:60]!r}")
    try:
        decoded = base64.b32decode(agent_id)
    except (binascii.Error, ValueError) as exc:
        raise IdentityError(f"agent id is not base32: {agent_id!r}") from exc
    body, crc = decoded[:-2], decoded[-2:]
    if body[0] != _USER_PREFIX or _crc16(body) != crc:
        raise IdentityError(f"agent id has a bad prefix or checksum: {agent_id!r}")
    return body[1:]


def is_agent_id(value: object) -> bool:
    """True for a well-formed ``U…`` nkey user public key."""
    if not isinstance(value, str):
        return False
    try:
        public_key_bytes(value)
    except IdentityError:
        return False
    return True


def verify(agent_id: str, data: bytes, signature: bytes) -> bool:
    """Check an Ed25519 signature with nothing but the signer's agent id."""
    if not isinstance(signature, bytes | bytearray) or len(signature) != 64:
        return False
    try:
        # The libsodium binding directly: the VerifyKey wrapper costs ~7 us more per call.
        nacl.bindings.crypto_sign_open(signature + data, public_key_bytes(agent_id))
    except (nacl.exceptions.CryptoError, IdentityError, TypeError, ValueError):
        return False
    return True


class Identity:
    """An agent's key pair. ``agent_id`` is the public key; ``seed`` is secret."""

    __slots__ = ("_secret", "agent_id", "seed")

    def __init__(self, seed: bytes | str) -> None:
        try:
            seed_bytes = (seed.encode("ascii") if isinstance(seed, str) else bytes(seed)).strip()
            prefix, raw = nkeys.decode_seed(bytearray(seed_bytes))
        except (nkeys.NkeysError, ValueError, IndexError, TypeError) as exc:
            raise IdentityError("not an nkey seed (expected 58 characters starting 'SU')") from exc
        if prefix != _USER_PREFIX or len(raw) != 32:
            raise IdentityError("not an nkey *user* seed (expected one starting 'SU')")
        # decode_seed does not check the CRC; a corrupted seed must not load.
        full = base64.b32decode(seed_bytes + b"=" * (-len(seed_bytes) % 8))
        if _crc16(full[:-2]) != full[-2:]:
            raise IdentityError("nkey seed checksum mismatch (corrupted key?)")
        self.seed = seed_bytes
        signing_key = nacl.signing.SigningKey(bytes(raw[:32]))
        self._secret = bytes(signing_key._signing_key)  # libsodium's 64-byte secret key
        self.agent_id = _encode_public(bytes(signing_key.verify_key))

    @classmethod
    def generate(cls) -> Identity:
        raw = os.urandom(32)
        return cls(bytes(nkeys.encode_seed(raw, _USER_PREFIX)))

    @classmethod
    def load(cls, path: Path) -> Identity:
        """Read a seed file; it must exist and be readable by its owner only."""
        try:
            st = path.stat()
            data = path.read_bytes()
        except OSError as exc:
            raise IdentityError(f"cannot read key file {path}: {exc.strerror}") from exc
        if os.name == "posix" and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise IdentityError(
                f"key file {path} is accessible by others (mode {stat.S_IMODE(st.st_mode):o}); "
                f"run: chmod 600 {path}"
            )
        return cls(data)

    @classmethod
    def load_or_create(cls, path: Path) -> Identity:
        """The identity stored at ``path``, generating and saving one the first time."""
        if path.exists():
            return cls.load(path)
        identity = cls.generate()
        identity.save(path)
        return identity

    def save(self, path: Path, *, overwrite: bool = False) -> None:
        """Write the seed with mode 0600, created atomically; never overwrites by default."""
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise IdentityError(f"cannot create directory {path.parent}: {exc.strerror}") from exc
        try:
            fd = os.open(path, flags, 0o600)
        except FileExistsError as exc:
            raise IdentityError(f"key file {path} exists; refusing to overwrite it") from exc
        except OSError as exc:
            raise IdentityError(f"cannot write key file {path}: {exc.strerror}") from exc
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o600)
            fh.write(self.seed + b"\n")

    def sign(self, data: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``data``."""
        return bytes(nacl.bindings.crypto_sign(data, self._secret)[:64])

    def __repr__(self) -> str:
        return f"Identity({self.agent_id})"
