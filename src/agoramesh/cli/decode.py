"""``agoramesh decode``: show what an envelope says and whether its signature holds."""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import UTC, datetime
from pathlib import Path

from agoramesh.bus.envelope import Envelope, now_ms, parse
from agoramesh.bus.identity import verify
from agoramesh.bus.ingress import encode_json
from agoramesh.cli.output import emit, emit_json
from agoramesh.config import Environment
from agoramesh.errors import BadSignature, ConfigError, WrongSubject

__all__ = ("read_envelope_bytes", "register")

_HEX_TEXT = re.compile(rb"[0-9a-fA-F\s]+")


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "decode", help="decode and verify an envelope",
        description="Decode an envelope (raw bytes, or hex text) from FILE or stdin, print "
                    "its fields and check its signature. Exits 1 if it is malformed or the "
                    "signature does not hold.",
    )
    parser.add_argument("file", nargs="?", default="-", help="envelope file, '-' for stdin")
    parser.add_argument("--subject", help="also check it was signed for this subject")
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
    valid = verify(envelope.sender, envelope.signed, envelope.signature)
    if args.json:
        emit_json({**envelope.as_dict(), "size": len(envelope.wire), "signature_valid": valid})
    else:
        _print(envelope, valid)
    if not valid:
        raise BadSignature(f"signature does not match sender {envelope.sender}")
    if args.subject and args.subject != envelope.subject:
        raise WrongSubject(f"envelope was signed for {envelope.subject!r}, not {args.subject!r}")
    return 0


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")


def _print(envelope: Envelope, valid: bool) -> None:
    left = (envelope.exp - now_ms()) / 1000
    expiry = f"in {left:.1f}s" if left > 0 else f"expired {-left:.1f}s ago"
    to = "* (broadcast)" if envelope.is_broadcast else envelope.to
    emit(f"envelope v{envelope.v}  type={envelope.type}  id={envelope.id}  cid={envelope.cid}")
    emit(f"from:      {envelope.sender}")
    emit(f"to:        {to}")
    emit(f"subject:   {envelope.subject}")
    emit(f"sent:      {_when(envelope.ts)}")
    emit(f"expires:   {_when(envelope.exp)} ({expiry})")
    emit(f"size:      {len(envelope.wire)} bytes")
    emit(f"signature: {'valid' if valid else 'INVALID'}")
    body = json.loads(encode_json(envelope.body))
    emit("body:")
    for line in json.dumps(body, indent=2, ensure_ascii=False).splitlines():
        emit(f"  {line}")
