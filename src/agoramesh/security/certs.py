"""A local certificate authority for the mesh's TLS links (``agoramesh certs``).

One directory holds the CA (``ca.pem``, ``ca-key.pem``) and a node
certificate it signed (``node.pem``, ``node-key.pem``). The node certificate
serves both ends of every link (EKU serverAuth + clientAuth): a seed presents
it to clients, to the seeds it routes to and to the leaves that attach, and a
leaf presents it to its hub. Keys are ECDSA P-256, written with mode 0600.

Existing files are never replaced unless asked (``force``), and an existing
CA is never replaced at all: every certificate already handed out trusts it,
so a new CA would split the mesh. A CA kept in another directory (``ca_dir``)
issues certificates for other machines without its key leaving that directory.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agoramesh.config import TlsConfig
from agoramesh.errors import ConfigError

__all__ = ("CA_CERT", "CA_DAYS", "CA_KEY", "LEAF_DAYS", "LOOPBACK_NAMES", "NODE_CERT",
           "NODE_KEY", "CertificateSet", "issue_certificates", "tls_config")

CA_CERT, CA_KEY = "ca.pem", "ca-key.pem"
NODE_CERT, NODE_KEY = "node.pem", "node-key.pem"
CA_DAYS = 3650  # the CA outlives many node certificates: re-issuing those is cheap
LEAF_DAYS = 365
#: Names every node certificate carries: the mesh's links on one machine use loopback.
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
_CLOCK_SKEW = dt.timedelta(minutes=5)  # valid a little before "now" on a slow peer clock


@dataclass(frozen=True, kw_only=True, slots=True)
class CertificateSet:
    """What :func:`issue_certificates` wrote (or reused) in ``directory``."""

    directory: Path
    ca_file: Path
    cert_file: Path
    key_file: Path
    ca_created: bool
    hosts: tuple[str, ...]
    not_after: dt.datetime
    fingerprint: str  # SHA-256 of the node certificate, hex

    @property
    def tls(self) -> TlsConfig:
        return TlsConfig(ca_file=self.ca_file, cert_file=self.cert_file, key_file=self.key_file)


def issue_certificates(directory: Path, *, hosts: tuple[str, ...] = (), days: int = LEAF_DAYS,
                       force: bool = False, ca_dir: Path | None = None) -> CertificateSet:
    """Write a node certificate (and, if there is none yet, a CA) into ``directory``.

    ``hosts`` are extra DNS names or IP addresses for the certificate, besides
    :data:`LOOPBACK_NAMES`. ``ca_dir``: sign with the CA kept there (its
    ``ca.pem`` is copied into ``directory``, its key is not). Refuses to
    replace an existing node certificate unless ``force``.
    """
    if days < 1:
        raise ConfigError(f"--days must be at least 1, got {days}")
    extra = tuple(host.strip() for host in hosts)
    if not all(extra):
        raise ConfigError("--host must not be empty")
    names = _unique((*LOOPBACK_NAMES, *extra))
    common_name = extra[0] if extra else names[0]  # informative only: peers check the SANs
    cert_file, key_file = directory / NODE_CERT, directory / NODE_KEY
    if not force:
        for path in (cert_file, key_file):
            if path.exists():
                raise ConfigError(f"{path} exists; refusing to overwrite it (use --force)")
    elsewhere = ca_dir is not None and ca_dir.resolve() != directory.resolve()
    if elsewhere and (directory / CA_KEY).exists():
        raise ConfigError(f"{directory} has a CA of its own; issue from it, or use another "
                          f"directory with --ca {ca_dir}")
    _make_directory(directory)
    ca_cert, ca_key, ca_created = _load_or_create_ca(ca_dir or directory,
                                                     create=ca_dir is None)
    if elsewhere:
        _write(directory / CA_CERT, ca_cert.public_bytes(serialization.Encoding.PEM),
               mode=0o644, overwrite=True)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    not_after = now + dt.timedelta(days=days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "agoramesh"),
                                 x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(min(not_after, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_encipherment=False, content_commitment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                              ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]),
                       critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    # The key first: a certificate without its key is useless, a key alone harmless.
    _write(key_file, _private_pem(key), mode=0o600, overwrite=force)
    _write(cert_file, cert.public_bytes(serialization.Encoding.PEM), mode=0o644,
           overwrite=force)
    return CertificateSet(directory=directory, ca_file=directory / CA_CERT, cert_file=cert_file,
                          key_file=key_file, ca_created=ca_created, hosts=names,
                          not_after=cert.not_valid_after_utc,
                          fingerprint=cert.fingerprint(hashes.SHA256()).hex())


def tls_config(directory: Path, *, client: bool = False) -> TlsConfig:
    """The :class:`TlsConfig` of a directory written by ``agoramesh certs``.

    A server needs the CA and the node certificate with its key; a ``client``
    needs only the CA (``ca.pem``) to verify the servers it connects to.
    """
    if not directory.is_dir():
        raise ConfigError(f"TLS directory {directory} does not exist (create it with "
                          f"agoramesh certs --dir {directory})")
    needed = (CA_CERT,) if client else (CA_CERT, NODE_CERT, NODE_KEY)
    missing = [name for name in needed if not (directory / name).is_file()]
    if missing:
        raise ConfigError(f"TLS directory {directory} lacks {', '.join(missing)} (create them "
                          f"with agoramesh certs --dir {directory})")
    if client:
        return TlsConfig(ca_file=directory / CA_CERT)
    return TlsConfig(ca_file=directory / CA_CERT, cert_file=directory / NODE_CERT,
                     key_file=directory / NODE_KEY)


# -- the CA ---------------------------------------------------------------------------

def _load_or_create_ca(directory: Path, *, create: bool
                       ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, bool]:
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    have_cert, have_key = cert_path.exists(), key_path.exists()
    if have_cert and have_key:
        cert, key = _load_ca(cert_path, key_path)
        return cert, key, False
    if not create:
        raise ConfigError(f"no CA in {directory} (it needs {CA_CERT} and {CA_KEY})")
    if have_cert:  # a directory that can verify but not issue
        raise ConfigError(f"{cert_path} has no {CA_KEY} beside it: issue certificates where the "
                          f"CA key is (--ca DIR)")
    if have_key:
        raise ConfigError(f"{key_path} exists without {CA_CERT}; restore it or remove the key")
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "agoramesh"),
                      x509.NameAttribute(NameOID.COMMON_NAME, "agoramesh mesh CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, key_encipherment=False, content_commitment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(key_path, _private_pem(key), mode=0o600, overwrite=False)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644,
           overwrite=False)
    return cert, key, True


def _load_ca(cert_path: Path, key_path: Path
             ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"cannot read the CA in {cert_path.parent}: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{key_path} is not an ECDSA key")
    if cert.public_key() != key.public_key():
        raise ConfigError(f"{key_path} is not the key of {cert_path}")
    if cert.not_valid_after_utc <= dt.datetime.now(dt.UTC):
        raise ConfigError(f"the CA {cert_path} expired on {cert.not_valid_after_utc:%Y-%m-%d}")
    return cert, key


# -- helpers --------------------------------------------------------------------------

def _unique(names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(names))


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name.strip("[]")))
    except ValueError:
        return x509.DNSName(name)


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _make_directory(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise ConfigError(f"cannot create directory {directory}: "
                          f"{exc.strerror or exc}") from None
    if not directory.is_dir():
        raise ConfigError(f"{directory} is not a directory")


def _write(path: Path, data: bytes, *, mode: int, overwrite: bool) -> None:
    """Write ``data`` with ``mode`` from the first byte; replace atomically or never."""
    try:
        if not overwrite:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            with os.fdopen(fd, "wb") as fh:
                os.fchmod(fh.fileno(), mode)
                fh.write(data)
            return
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as fh:
                os.fchmod(fh.fileno(), mode)
                fh.write(data)
            os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
    except FileExistsError:
        raise ConfigError(f"{path} exists; refusing to overwrite it (use --force)") from None
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None
