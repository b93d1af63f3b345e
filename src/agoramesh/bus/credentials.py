"""How a client proves itself to its server: TLS trust, and a member's JWT on a secured mesh.

A member's JWT goes with a signature of the server's nonce made by the Bus
identity itself (no seed leaves it); a ``.creds`` file (JWT + seed, as the
``nats`` CLI uses) carries the identity a client must then connect as
(:func:`client_identity`). docs/SECURITY.md has the model.
"""

from __future__ import annotations

import base64
import logging
import ssl
from pathlib import Path
from typing import Any

from agoramesh.bus.identity import Identity
from agoramesh.config import BusConfig, TlsConfig
from agoramesh.errors import ConfigError, IdentityError, TrustError

__all__ = ("client_identity", "client_ssl_context", "connect_options", "format_creds",
           "parse_creds", "read_credentials", "tls_hint")


def read_credentials(path: Path) -> tuple[str, Identity]:
    """The user JWT and the identity in a ``.creds`` file; TrustError if unreadable."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise TrustError(f"cannot read credentials {path}: {exc.strerror}") from None
    token, seed = parse_creds(text)
    try:
        return token, Identity(seed)
    except IdentityError as exc:
        raise TrustError(f"credentials {path}: {exc}") from None


def client_identity(config: BusConfig) -> Identity:
    """The identity a client connects as: its credentials' one, else a fresh one."""
    if config.credentials is not None:
        return read_credentials(config.credentials)[1]
    return Identity.generate()


def client_ssl_context(tls: TlsConfig) -> ssl.SSLContext:
    """A client TLS context trusting the mesh's CA (and presenting our cert, if any)."""
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca_file))
        if tls.cert_file is not None and tls.key_file is not None:
            context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load TLS files ({tls.ca_file}): {exc}") from None
    asyncio_log = logging.getLogger("asyncio")
    if not any(isinstance(f, _TlsEofNoise) for f in asyncio_log.filters):
        asyncio_log.addFilter(_TlsEofNoise())
    return context


class _TlsEofNoise(logging.Filter):
    """Drops asyncio's "returning true from eof_received() has no effect when using ssl".

    nats-py upgrades its stream to TLS under a protocol that still believes it
    is plaintext (nats.py issue #574), so every TLS connection logs that
    warning once the server closes it; it means nothing for us.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("returning true from eof_received()")


def tls_hint(cause: BaseException, tls: TlsConfig | None) -> str:
    """Why a TLS connection failed, in the user's terms; "" for other failures."""
    if not isinstance(cause, ssl.SSLCertVerificationError):
        return ""
    if tls is None:
        return " (the server uses TLS: pass its CA with --tls DIR or $AGORAMESH_TLS)"
    return f" (the server's certificate is not signed by {tls.ca_file}, or not for this host)"



def connect_options(config: BusConfig, identity: Identity) -> dict[str, Any]:
    """nats-py connect options for TLS and JWT auth, from ``config``, signing as ``identity``."""
    options: dict[str, Any] = {}
    if config.tls is not None:
        options["tls"] = client_ssl_context(config.tls)
    user_jwt = config.user_jwt
    if config.credentials is not None:
        user_jwt, holder = read_credentials(config.credentials)
        if holder.agent_id != identity.agent_id:
            raise TrustError(f"credentials {config.credentials} are for agent "
                             f"{holder.agent_id[:12]}…, but this bus signs as "
                             f"{identity.agent_id[:12]}… (use client_identity(config))")
    if user_jwt is not None:
        jwt = user_jwt.encode("ascii")
        options["user_jwt_cb"] = lambda: jwt
        options["signature_cb"] = lambda nonce: base64.b64encode(
            identity.sign(nonce.encode() if isinstance(nonce, str) else nonce))
    return options


def format_creds(user_jwt: str, user_seed: bytes) -> str:
    """A ``.creds`` file (the JWT and the seed), as the ``nats`` CLI and nats-py read it."""
    return (
        "-----BEGIN NATS USER JWT-----\n"
        f"{user_jwt}\n"
        "------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n"
        "NKEYs are sensitive and should be treated as secrets.\n\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{user_seed.decode('ascii')}\n"
        "------END USER NKEY SEED------\n\n"
        "*************************************************************\n"
    )


def parse_creds(text: str) -> tuple[str, bytes]:
    """(jwt, seed) from a ``.creds`` file's text; TrustError if it is not one."""
    blocks: list[str] = []
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if line.startswith("-----BEGIN ") and index + 1 < len(lines):
            blocks.append(lines[index + 1].strip())
    if len(blocks) != 2 or not blocks[1].startswith("SU"):
        raise TrustError("not a NATS .creds file (expected a user JWT and a user seed)")
    return blocks[0], blocks[1].encode("ascii")
