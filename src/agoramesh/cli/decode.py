"""``agoramesh decode``: show what an envelope says and whether its tag holds.

A signed envelope (auth ``sig``) is checked with nothing but itself. A MACed
one (auth ``mac``, PROTOCOL.md §6.2) and an encrypted body (§20) need
``--key FILE``: the recipient's seed file, or the sender's (both ends share
the pair key and the box).
"""

from __future__ import annotations

import argparse
import hmac
import json
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agoramesh.bus.e2e import E2EKeys
from agoramesh.bus.envelope import AUTH_MAC, BOX_KEY, Envelope, is_boxed, mac, now_ms, parse
from agoramesh.bus.identity import Identity, verify
from agoramesh.bus.ingress import encode_json
from agoramesh.cli.output import emit, emit_json
from agoramesh.config import Environment
from agoramesh.errors import (
    BadSignature,
    ConfigError,
    EnvelopeError,
    UndecryptableEnvelope,
    WrongSubject,
)

__all__ = ("read_envelope_bytes", "register")

_HEX_TEXT = re.compile(rb"[0-9a-fA-F\s]+")


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "decode", help="decode and verify an envelope",
        description="Decode an envelope (raw bytes, or hex text) from FILE or stdin, print "
                    "its fields and check its signature or MAC. A MAC and an encrypted "
                    "body need --key. Exits 1 if it is malformed, the tag does not hold "
                    "or the body does not open.",
    )
    parser.add_argument("file", nargs="?", default="-", help="envelope file, '-' for stdin")
    parser.add_argument("--subject", help="also check it was made for this subject")
    parser.add_argument("--key", type=Path, metavar="FILE",
                        help="seed file of the recipient (or the sender), to check a MAC "
                             "and open an encrypted body")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(handler=_decode)


def read_envelope_bytes(source: str) -> bytes:
    """Bytes from a file or stdin; hex text (as ``xxd -p`` prints) is decoded."""
    try:
        data = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {source}: {exc.strerror}") from None
    if data and _HEX_TEXT.fullmatch(data):
        try:
            return bytes.fromhex(data.decode("ascii"))
        except ValueError:
            raise ConfigError(f"{source} looks like hex but is not valid hex") from None
    return data


async def _decode(args: argparse.Namespace, env: Environment) -> int:
    envelope = parse(read_envelope_bytes(args.file), max_bytes=64 * 1024 * 1024)
    keys = E2EKeys(Identity.load(args.key)) if args.key else None  # a bad key file fails here
    valid: bool | None = None  # None: a MAC, and no key to check it with
    if envelope.auth != AUTH_MAC:
        valid = verify(envelope.sender, envelope.signed, envelope.signature)
    elif keys is not None:
        peer = _peer(envelope, keys.agent_id, args.key)
        valid = hmac.compare_digest(mac(keys.pair_key(peer), envelope.signed), envelope.tag)
    encrypted = is_boxed(envelope.body)
    opened: tuple[Any] | None = None  # the plaintext body, once opened (it may be None)
    failure: EnvelopeError | None = None  # reported after the fields are shown
    if encrypted and envelope.is_broadcast:
        failure = UndecryptableEnvelope("a broadcast envelope cannot carry an encrypted body")
    elif encrypted and keys is not None:
        try:
            opened = (keys.open_body(_peer(envelope, keys.agent_id, args.key), envelope.body),)
        except EnvelopeError as exc:
            failure = exc
    if args.json:
        fields = envelope.as_dict()
        if opened is not None:
            fields["body"] = opened[0]
        emit_json({**fields, "size": len(envelope.wire), "tag_valid": valid,
                   "encrypted": encrypted, "opened": opened is not None})
    else:
        _print(envelope, valid, encrypted, opened)
    if valid is False:
        raise BadSignature(f"{'MAC' if envelope.auth == AUTH_MAC else 'signature'} does not "
                           f"match sender {envelope.sender}")
    if failure is not None:
        raise failure
    if args.subject and args.subject != envelope.subject:
        raise WrongSubject(f"envelope was made for {envelope.subject!r}, not {args.subject!r}")
    return 0


def _peer(envelope: Envelope, agent_id: str, key_file: Path) -> str:
    """The other end of the box for the key's agent: a box opens for both of its ends."""
    if agent_id == envelope.to:
        return envelope.sender
    if agent_id == envelope.sender:
        return envelope.to
    raise UndecryptableEnvelope(f"key {key_file} is agent {agent_id}, neither the recipient "
                                f"{envelope.to} nor the sender")


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")


def _print(envelope: Envelope, valid: bool | None, encrypted: bool,
           opened: tuple[Any] | None) -> None:
    left = (envelope.exp - now_ms()) / 1000
    expiry = f"in {left:.1f}s" if left > 0 else f"expired {-left:.1f}s ago"
    to = "* (broadcast)" if envelope.is_broadcast else envelope.to
    emit(f"envelope v{envelope.v}  type={envelope.type}  id={envelope.id}  cid={envelope.cid}")
    emit(f"from:      {envelope.sender}")
    emit(f"to:        {to}")
    emit(f"subject:   {envelope.subject}")
    emit(f"reply:     {envelope.reply or '(none)'}")
    emit(f"sent:      {_when(envelope.ts)}")
    emit(f"expires:   {_when(envelope.exp)} ({expiry})")
    emit(f"size:      {len(envelope.wire)} bytes")
    if envelope.auth == AUTH_MAC:
        emit("mac:       " + ("not checked (--key FILE, the recipient's or the sender's seed "
                              "file, checks it)" if valid is None
                              else "valid" if valid else "INVALID"))
    else:
        emit(f"signature: {'valid' if valid else 'INVALID'}")
    if encrypted:
        sealed = envelope.body[BOX_KEY]
        size = f"{len(sealed)} bytes" if isinstance(sealed, bytes) else "not bin"
        emit(f"encrypted: yes ($box, {size}); "
             + ("opened with --key" if opened is not None
                else "not opened (--key FILE, the recipient's seed file, opens it)"))
        if opened is None:
            return
    body = json.loads(encode_json(envelope.body if opened is None else opened[0]))
    emit("body:")
    for line in json.dumps(body, indent=2, ensure_ascii=False).splitlines():
        emit(f"  {line}")
