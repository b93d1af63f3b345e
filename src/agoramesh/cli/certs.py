"""``agoramesh certs``: a local CA and a node certificate for TLS client, route and leaf links."""

from __future__ import annotations

import argparse
from pathlib import Path

from agoramesh.cli.output import emit, emit_json
from agoramesh.config import Environment
from agoramesh.errors import ConfigError
from agoramesh.security.certs import LEAF_DAYS, issue_certificates, tls_config

__all__ = ("add_tls_option", "register", "tls_directory")


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "certs", help="create a local CA and a node certificate for TLS",
        description="Create a CA (ca.pem, ca-key.pem) and a node certificate signed by it "
                    "(node.pem, node-key.pem) in DIR, for `agoramesh up/node --tls DIR`. "
                    "An existing CA is reused; existing files are never overwritten "
                    "unless --force.")
    parser.add_argument("--dir", type=Path,
                        help="where to write them (default $AGORAMESH_HOME/tls)")
    parser.add_argument("--host", action="append", default=[], metavar="NAME_OR_IP",
                        help="a DNS name or IP address the node is reached at, besides "
                             "localhost, 127.0.0.1 and ::1 (repeatable)")
    parser.add_argument("--days", type=int, default=LEAF_DAYS,
                        help=f"validity of the node certificate (default {LEAF_DAYS}; "
                             f"a new CA is valid 10 years)")
    parser.add_argument("--ca", type=Path, metavar="CA_DIR",
                        help="sign with the CA in CA_DIR (copies its ca.pem, not its key)")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing node certificate (the CA is kept)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(handler=_certs)


def add_tls_option(parser: argparse.ArgumentParser | argparse._ArgumentGroup, *,
                   client: bool) -> None:
    """``--tls DIR``: for a server the certs directory; for a client where the CA is."""
    parser.add_argument(
        "--tls", type=Path, metavar="DIR",
        help=("trust the mesh's CA in DIR (ca.pem from agoramesh certs; default $AGORAMESH_TLS)"
              if client else
              "TLS on client, route and leaf links with the certificates in DIR "
              "(agoramesh certs; default $AGORAMESH_TLS)"))


def tls_directory(args: argparse.Namespace, env: Environment) -> Path | None:
    """The ``--tls`` directory, else ``$AGORAMESH_TLS``, else None (no TLS)."""
    directory: Path | None = args.tls or env.tls_dir
    return directory


async def _certs(args: argparse.Namespace, env: Environment) -> int:
    directory = args.dir or env.home / "tls"
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"--dir {directory} is not a directory")
    issued = issue_certificates(directory, hosts=tuple(args.host), days=args.days,
                                force=args.force, ca_dir=args.ca)
    tls_config(directory)  # what `--tls DIR` will load: check it now
    if args.json:
        emit_json({"dir": str(directory), "ca_file": str(issued.ca_file),
                   "cert_file": str(issued.cert_file), "key_file": str(issued.key_file),
                   "ca_created": issued.ca_created, "hosts": list(issued.hosts),
                   "not_after": issued.not_after.isoformat(),
                   "sha256": issued.fingerprint})
        return 0
    emit(f"{'created' if issued.ca_created else 'reused'} CA  {issued.ca_file}")
    emit(f"node certificate {issued.cert_file} (key {issued.key_file.name}, mode 0600)")
    emit(f"  hosts: {', '.join(issued.hosts)}")
    emit(f"  valid until {issued.not_after:%Y-%m-%d}; sha256 {issued.fingerprint}")
    emit(f"use it: agoramesh up --tls {directory}   (clients: --tls {directory})")
    return 0
