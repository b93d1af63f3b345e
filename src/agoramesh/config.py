"""Typed, frozen settings objects, and the one place that reads the environment.

Everything else receives these objects; nothing reads ``os.environ`` on its own
and nothing reads it at import time.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

import yaml

from agoramesh.errors import ConfigError

__all__ = (
    "DEFAULT_PREFIX",
    "MAX_MESSAGE_BYTES",
    "BusConfig",
    "EnvelopePolicy",
    "Environment",
    "JetStreamConfig",
    "JobsConfig",
    "LogFormat",
    "LogLevel",
    "ServerAuth",
    "ServerConfig",
    "ServerRole",
    "TlsConfig",
    "parse_hostport",
    "read_settings_file",
)

DEFAULT_PREFIX = "agora"
#: The largest message (envelope or plain JSON) by default: 1 MiB of body and 64 KiB
#: for the envelope around it, so a 1 MiB task or result always fits in one message.
MAX_MESSAGE_BYTES = 1024 * 1024 + 64 * 1024


@dataclass(frozen=True, kw_only=True, slots=True)
class EnvelopePolicy:
    """What a receiver accepts (and how a sender authenticates). Times are milliseconds,
    sizes bytes.

    ``sign_all``: sign every envelope, directed ones included, and accept signed
    envelopes only (a MACed one is ``SignatureRequired``): every message can then
    be shown to a third party as the sender's (non-repudiation), at the cost of
    an Ed25519 signature and verification per message. Set it mesh-wide: an agent
    with it refuses the MACed replies of agents without it.
    """

    max_bytes: int = MAX_MESSAGE_BYTES
    max_clock_skew_ms: int = 30_000
    max_ttl_ms: int = 10 * 60_000
    default_ttl_ms: int = 60_000
    replay_cache_size: int = 200_000
    sign_all: bool = False

    def __post_init__(self) -> None:
        if self.max_bytes < 128:
            raise ConfigError(f"max_bytes must be at least 128, got {self.max_bytes}")
        if not 0 < self.default_ttl_ms <= self.max_ttl_ms:
            raise ConfigError(
                f"default_ttl_ms must be in (0, max_ttl_ms={self.max_ttl_ms}], "
                f"got {self.default_ttl_ms}"
            )
        if self.max_clock_skew_ms < 0 or self.replay_cache_size < 1:
            raise ConfigError("max_clock_skew_ms must be >= 0 and replay_cache_size >= 1")


@dataclass(frozen=True, kw_only=True, slots=True)
class TlsConfig:
    """TLS files (PEM) from ``agoramesh certs``: the mesh's CA and this end's certificate.

    Servers use ``cert_file``/``key_file`` on client, route and leafnode
    links and require a certificate signed by ``ca_file`` from routes and
    leaf nodes. Clients verify the server against ``ca_file``.
    """

    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ConfigError("TLS needs both a certificate and its key, or neither")


@dataclass(frozen=True, kw_only=True, slots=True)
class ServerAuth:
    """Decentralized JWT auth for a server (docs/SECURITY.md): what ``trust`` renders.

    ``accounts`` maps account public keys to their JWTs (preloaded, no
    resolver service); ``route_password`` authenticates seeds to each other;
    ``leaf_credentials`` is the creds file a leaf server's link presents.
    """

    operator_jwt: str
    system_account: str
    account: str  # the members' account (a leaf's link binds its local clients to it)
    accounts: tuple[tuple[str, str], ...]
    route_user: str = "route"
    route_password: str = ""
    leaf_credentials: Path | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class BusConfig:
    """How a Bus connects and what it accepts.

    ``connect_timeout`` bounds the whole initial connect: a dead URL fails in
    that time instead of hanging. After a connection is made, the client
    reconnects for ever (its own embedded server may restart), every
    ``reconnect_wait`` seconds.
    """

    servers: tuple[str, ...] = ("nats://127.0.0.1:4222",)
    name: str = "agoramesh"
    prefix: str = DEFAULT_PREFIX
    connect_timeout: float = 3.0
    reconnect_wait: float = 0.25
    ping_interval: float = 5.0
    max_outstanding_pings: int = 3
    request_timeout: float = 5.0
    drain_timeout: float = 2.0
    envelope: EnvelopePolicy = field(default_factory=EnvelopePolicy)
    #: The agent's user JWT on a secured mesh (``agoramesh trust admit``); the
    #: server's nonce is signed with the Bus identity, so no seed leaves it.
    user_jwt: str | None = None
    #: A ``.creds`` file (JWT + seed), as the ``nats`` CLI uses; for clients.
    credentials: Path | None = None
    tls: TlsConfig | None = None
    #: Seal bodies addressed to one agent so only it can read them (PROTOCOL.md §20).
    encrypt: bool = True

    def __post_init__(self) -> None:
        if not self.servers:
            raise ConfigError("at least one server URL is needed")
        for url in self.servers:
            if "://" not in url:
                raise ConfigError(f"server URL needs a scheme (nats://host:port): {url!r}")
        if self.connect_timeout <= 0 or self.request_timeout <= 0:
            raise ConfigError("timeouts must be positive")


class ServerRole(StrEnum):
    """What an embedded server is in the mesh (see docs/ARCHITECTURE.md)."""

    SEED = "seed"  # joins the route cluster and accepts leaf nodes
    LEAF = "leaf"  # one leafnode remote listing every known seed


class LogFormat(StrEnum):
    """How log lines look on stderr (see agoramesh.observability.logs)."""

    HUMAN = "human"  # 2026-11-21T10:00:00.123Z WARNING agoramesh.node coder: message key=value
    JSON = "json"  # one JSON object per line, for log shippers


class LogLevel(StrEnum):
    """The log levels a user picks from (``--log-level``, ``AGORAMESH_LOG_LEVEL``)."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True, kw_only=True, slots=True)
class JetStreamConfig:
    """A seed's JetStream store: where it lives and how much it may hold (bytes).

    ``store_dir`` defaults to ``<data_dir>/jetstream``, so a node or mesh
    started again from the same directory finds its jobs and results.
    Past ``max_file`` (or ``max_memory``) the server refuses new messages:
    a publish then fails with a clear StoreFull, it never blocks.
    """

    store_dir: Path | None = None
    #: Leaf clients reach the seeds' JetStream as ``$JS.<domain>.API`` (nats-server
    #: denies the plain ``$JS.API`` across leaf links); every seed names the same one.
    domain: str = "agora"
    max_memory: int = 64 * 1024 * 1024
    max_file: int = 2 * 1024 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.max_memory < 1024 * 1024 or self.max_file < 1024 * 1024:
            raise ConfigError("JetStream limits must be at least 1 MiB each "
                              f"(max_memory={self.max_memory}, max_file={self.max_file})")


@dataclass(frozen=True, kw_only=True, slots=True)
class JobsConfig:
    """Durable jobs: the job stream, the result store, and how nodes take jobs.

    Times are seconds, sizes bytes. ``replicas`` None: as many as there are
    JetStream servers, at most 3. The stream and the bucket are created with
    these limits by the first node or client that finds them missing; an
    existing stream keeps its own.
    """

    domain: str = "agora"  # the seeds' JetStream domain (JetStreamConfig.domain)
    replicas: int | None = None
    max_bytes: int = 1024 * 1024 * 1024  # of queued jobs; past it a submit is StoreFull
    max_jobs: int = 1_000_000  # queued jobs
    max_age: float = 7 * 24 * 3600.0  # a job nobody could take is dropped after this
    duplicate_window: float = 120.0  # a task id submitted again within it is not stored again
    results_ttl: float = 24 * 3600.0  # results are kept this long
    results_max_bytes: int = 1024 * 1024 * 1024
    ack_wait: float = 10.0  # a node silent this long about a job loses it to another node
    max_deliveries: int = 20  # deliveries that lost their node (or winner) before FAILED
    api_timeout: float = 5.0

    def __post_init__(self) -> None:
        if self.replicas is not None and not 1 <= self.replicas <= 5:
            raise ConfigError(f"replicas must be 1 to 5, got {self.replicas}")
        if min(self.max_age, self.duplicate_window, self.results_ttl, self.ack_wait,
               self.api_timeout) <= 0:
            raise ConfigError("job times must be positive")
        if self.ack_wait < 1.0:
            raise ConfigError(f"ack_wait must be at least 1 s, got {self.ack_wait:g}")
        if min(self.max_bytes, self.results_max_bytes) < 1024 * 1024 or self.max_jobs < 1 \
                or self.max_deliveries < 1:
            raise ConfigError("job store limits must be at least 1 MiB and 1 job")


@dataclass(frozen=True, kw_only=True, slots=True)
class ServerConfig:
    """One embedded nats-server. Port ``-1`` lets the server pick a free port.

    ``bootstrap`` names seeds' cluster (route) addresses ``host:port``;
    ``hubs`` names seeds' leafnode addresses. A seed with no bootstrap starts
    a new cluster; a leaf needs at least one hub.

    ``jetstream`` runs JetStream on a seed (leaves use their hubs' through
    the link): clustered with the other seeds, which needs two seeds for a
    quorum, or alone on a ``standalone`` seed. A standalone seed has no route
    listener: it takes leaf nodes but no other seeds (a one-seed mesh).
    """

    name: str
    role: ServerRole = ServerRole.SEED
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = -1
    cluster_port: int = -1
    leaf_port: int = -1
    http_port: int = -1
    cluster_name: str = "agora"
    bootstrap: tuple[str, ...] = ()
    hubs: tuple[str, ...] = ()
    leaf_reconnect_ms: int = 250
    max_payload: int = MAX_MESSAGE_BYTES  # at least every receiver's max_bytes
    ready_timeout: float = 10.0
    stop_grace: float = 5.0
    binary: Path | None = None
    debug: bool = False
    tls: TlsConfig | None = None
    auth: ServerAuth | None = None
    jetstream: JetStreamConfig | None = None
    standalone: bool = False

    def __post_init__(self) -> None:
        if self.role is ServerRole.LEAF and (self.jetstream is not None or self.standalone):
            raise ConfigError("a leaf server uses its hubs' JetStream: jetstream and "
                              "standalone are for seeds")
        if self.standalone and self.bootstrap:
            raise ConfigError("a standalone seed takes no routes: drop --bootstrap")
        if not self.name or not all(c.isalnum() or c in "-_." for c in self.name):
            raise ConfigError(f"server name must be letters, digits, '-_.': {self.name!r}")
        if self.role is ServerRole.LEAF and not self.hubs:
            raise ConfigError("a leaf server needs at least one hub (--leaf host:port)")
        if self.role is ServerRole.LEAF and self.bootstrap:
            raise ConfigError("a leaf server joins through hubs, not --bootstrap routes")
        for addr in (*self.bootstrap, *self.hubs):
            parse_hostport(addr)
        for port in (self.port, self.cluster_port, self.leaf_port, self.http_port):
            if not -1 <= port <= 65535:
                raise ConfigError(f"port out of range: {port}")


def read_settings_file(path: Path, what: str = "") -> Any:
    """A settings file, parsed: JSON for ``*.json``, else YAML; a one-line ConfigError
    naming ``what`` and the file for anything unreadable."""
    name = f"{what} {path}".strip()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {name}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{name} is not UTF-8 text") from None
    try:
        return json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON at line {exc.lineno}: {exc.msg}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(f"{path} is not valid YAML{where}: {problem}") from None


def parse_hostport(addr: str) -> tuple[str, int]:
    """``host:port`` (an optional ``scheme://`` is ignored) → (host, port)."""
    rest = addr.split("://", 1)[-1].rstrip("/")
    host, sep, port_text = rest.rpartition(":")
    valid_port = port_text.isascii() and port_text.isdigit() and 0 < int(port_text) < 65536
    if not sep or not host or not valid_port:
        raise ConfigError(f"expected host:port, got {addr!r}")
    return host.strip("[]"), int(port_text)


@dataclass(frozen=True, kw_only=True, slots=True)
class Environment:
    """The environment variables agoramesh honours, read once by :meth:`read`."""

    nats_server: Path | None = None  # AGORAMESH_NATS_SERVER: nats-server binary
    server_url: str | None = None  # AGORAMESH_SERVER: default --server for clients
    home: Path = Path(".agoramesh")  # AGORAMESH_HOME: keys and node data
    tls_dir: Path | None = None  # AGORAMESH_TLS: certificates from `agoramesh certs`
    prefix: str = DEFAULT_PREFIX  # AGORAMESH_PREFIX: subject prefix
    log_format: LogFormat = LogFormat.HUMAN  # AGORAMESH_LOG_FORMAT: human or json
    log_level: LogLevel = LogLevel.WARNING  # AGORAMESH_LOG_LEVEL: debug, info, warning, error
    credentials: Path | None = None  # AGORAMESH_CREDS: clients' .creds file on a secured mesh
    trust_dir: Path | None = None  # AGORAMESH_TRUST: the trust store (default <home>/trust)
    # AGORAMESH_API_TOKEN: default --api-token of the HTTP API; a secret, so not in repr.
    api_token: str | None = field(default=None, repr=False)
    # Provider keys by agent type, from OPENAI_API_KEY / ANTHROPIC_API_KEY (and the bearer
    # tokens of the A2A and MCP backends from AGORAMESH_A2A_TOKEN / AGORAMESH_MCP_TOKEN);
    # secrets, not in repr.
    api_keys: Mapping[str, str] = field(default_factory=dict, repr=False)
    # AGORAMESH_SIGN_ALL=1: sign every envelope and accept signed ones only (mesh-wide).
    sign_all: bool = False
    # AGORAMESH_TRACE_CAPTURE: tests: the file a node or up writes its finished spans to.
    trace_capture: Path | None = None

    @property
    def envelope(self) -> EnvelopePolicy:
        """The envelope policy of this process's buses."""
        return EnvelopePolicy(sign_all=self.sign_all)

    @classmethod
    def read(cls, environ: Mapping[str, str] | None = None) -> Environment:
        env = os.environ if environ is None else environ
        binary = env.get("AGORAMESH_NATS_SERVER")
        return cls(
            nats_server=Path(binary) if binary else None,
            server_url=env.get("AGORAMESH_SERVER") or None,
            home=Path(env.get("AGORAMESH_HOME") or ".agoramesh"),
            tls_dir=Path(env["AGORAMESH_TLS"]) if env.get("AGORAMESH_TLS") else None,
            prefix=env.get("AGORAMESH_PREFIX") or DEFAULT_PREFIX,
            log_format=_choice(LogFormat, env, "AGORAMESH_LOG_FORMAT", LogFormat.HUMAN),
            log_level=_choice(LogLevel, env, "AGORAMESH_LOG_LEVEL", LogLevel.WARNING),
            credentials=Path(env["AGORAMESH_CREDS"]) if env.get("AGORAMESH_CREDS") else None,
            trust_dir=Path(env["AGORAMESH_TRUST"]) if env.get("AGORAMESH_TRUST") else None,
            api_token=env.get("AGORAMESH_API_TOKEN") or None,
            api_keys={kind: env[var] for kind, var in _KEY_VARIABLES.items() if env.get(var)},
            sign_all=_flag(env, "AGORAMESH_SIGN_ALL"),
            trace_capture=(Path(env["AGORAMESH_TRACE_CAPTURE"])
                           if env.get("AGORAMESH_TRACE_CAPTURE") else None),
        )


def _flag(env: Mapping[str, str], name: str) -> bool:
    text = (env.get(name) or "").strip().lower()
    if text in ("", "0", "false", "no", "off"):
        return False
    if text in ("1", "true", "yes", "on"):
        return True
    raise ConfigError(f"{name} must be 1/true/yes/on or 0/false/no/off, got {env[name]!r}")


_E = TypeVar("_E", bound=StrEnum)


def _choice(kind: type[_E], env: Mapping[str, str], name: str, default: _E) -> _E:
    text = (env.get(name) or "").strip().lower()
    if not text:
        return default
    try:
        return kind(text)
    except ValueError:
        choices = ", ".join(member.value for member in kind)
        raise ConfigError(f"{name} must be one of {choices}, got {env[name]!r}") from None


_KEY_VARIABLES = {"openai": "OPENAI_API_KEY", "codex": "OPENAI_API_KEY",
                  "anthropic": "ANTHROPIC_API_KEY", "claude": "ANTHROPIC_API_KEY",
                  "claude-code": "ANTHROPIC_API_KEY", "a2a": "AGORAMESH_A2A_TOKEN",
                  "mcp": "AGORAMESH_MCP_TOKEN"}
