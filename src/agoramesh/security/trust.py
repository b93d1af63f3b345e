"""The trust store: who may join a secured mesh and what each member may publish and read.

One directory (``agoramesh trust init``) holds the keys and JWTs of the
chain nats-server verifies offline (docs/SECURITY.md)::

    trust/
      operator.nk  account.nk  system.nk   seeds, mode 0600: the authority's secrets
      operator.jwt account.jwt system.jwt  public; servers load them from their config
      route.secret                         0600: seeds' route password
      link.creds                           0600: the credential a leaf server's link uses
      users/<agent-id>.jwt                 one per admitted member (public)
      users/<agent-id>.json                what it was admitted as (role, capabilities)

Admitting an agent (``trust admit <agent-id> --capability …``) signs a user
JWT for its existing nkey: no secret moves, the agent proves its key to the
server at connect time. Its permissions follow from its capabilities
(:func:`permissions_for`). Revoking re-signs the account JWT with a
revocation entry; servers pick it up when their config is reloaded
(:meth:`EmbeddedServer.reload`, done by ``agoramesh up --secure`` on its own).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

import nkeys

from agoramesh.bus.credentials import format_creds
from agoramesh.bus.identity import Identity, is_agent_id
from agoramesh.bus.server import EmbeddedServer
from agoramesh.bus.subjects import validate_capability
from agoramesh.config import DEFAULT_PREFIX, ServerAuth
from agoramesh.errors import SubjectError, TrustError
from agoramesh.security import jwt
from agoramesh.security.jwt import Permissions

__all__ = ("Member", "MemberRole", "TrustStore", "follow_trust", "load_user_jwt", "permissions_for")

log = logging.getLogger("agoramesh.trust")

#: How many messages a member may send to the reply subject of one request it
#: received (results, streamed chunks, leases), and for how long.
RESPONSES_PER_REQUEST = 100_000
RESPONSE_TTL = 3600.0


class MemberRole(StrEnum):
    """What a member of a secured mesh is admitted as."""

    AGENT = "agent"  # serves its capabilities, bids, auctions, messages others
    CLIENT = "client"  # submits work and watches (the CLI, `nats req`); serves nothing
    OBSERVER = "observer"  # reads every subject, publishes nothing (monitoring, audits)


def permissions_for(agent_id: str, role: MemberRole, capabilities: Iterable[str] = (), *,
                    prefix: str = DEFAULT_PREFIX) -> Permissions:
    """A member's publish/subscribe permissions, derived from its role and capabilities.

    Everyone may ask anything of anyone (the agent's access policy decides
    what it answers) and reply to what it was asked. Only the agent itself may
    read its inbox (``_INBOX.<id>.>``) and direct subject, or speak for it on
    its presence, status and telemetry subjects.
    """
    if not is_agent_id(agent_id):
        raise TrustError(f"not an agent id (56-char nkey user key starting with U): "
                         f"{agent_id[:60]!r}")
    p = prefix
    inbox = f"_INBOX.{agent_id}.>"
    ask = (f"{p}.cap.>", f"{p}.task.>", f"{p}.cfp.>", f"{p}.agent.*", f"{p}.discover")
    if role is MemberRole.OBSERVER:
        # An empty allow-list would mean "no restriction": deny every publish outright.
        return Permissions(subscribe=(">",), deny_publish=(">",))
    if role is MemberRole.CLIENT:
        return Permissions(
            publish=(*ask, "$SRV.>"),
            subscribe=(inbox, f"{p}.presence.>", f"{p}.telemetry.>", f"{p}.status.>"),
            responses=RESPONSES_PER_REQUEST, response_ttl=RESPONSE_TTL)
    serve: list[str] = []
    for capability in dict.fromkeys(capabilities):
        try:
            validate_capability(capability)
        except SubjectError as exc:
            raise TrustError(str(exc)) from None
        serve += [f"{p}.cap.{capability}", f"{p}.cfp.{capability}", f"{p}.help.{capability}"]
    return Permissions(
        # $SRV.PING: an auction asks a silent agent whether it is gone (no responders).
        publish=(*ask, f"{p}.help.>", f"{p}.team.>", f"{p}.presence.{agent_id}",
                 f"{p}.status.{agent_id}", f"{p}.telemetry.{agent_id}", "$SRV.PING.>"),
        subscribe=(inbox, f"{p}.agent.{agent_id}", *serve, f"{p}.task.>",
                   f"{p}.presence.>", f"{p}.discover", f"{p}.status.>", f"{p}.team.>",
                   "$SRV.>"),
        responses=RESPONSES_PER_REQUEST, response_ttl=RESPONSE_TTL)


@dataclass(frozen=True, slots=True)
class Member:
    """One admitted identity, as recorded in the store."""

    agent_id: str
    role: MemberRole
    capabilities: tuple[str, ...]
    name: str
    issued_at: int
    expires: int | None
    jwt: str

    def as_dict(self) -> dict[str, Any]:
        return {"agent_id": self.agent_id, "role": self.role.value,
                "capabilities": list(self.capabilities), "name": self.name,
                "issued_at": self.issued_at, "expires": self.expires}


def _write_secret(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        os.fchmod(fh.fileno(), 0o600)
        fh.write(data)


def _write_public(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)  # atomic: a server reloading never reads half a file


class TrustStore:
    """The operator's trust directory; see the module docstring for its layout."""

    def __init__(self, directory: Path, *, prefix: str = DEFAULT_PREFIX) -> None:
        self.directory = directory
        self.prefix = prefix

    # -- creation ------------------------------------------------------------------

    @classmethod
    def init(cls, directory: Path, *, name: str = "agoramesh", force: bool = False,
             prefix: str = DEFAULT_PREFIX) -> TrustStore:
        """Create the operator, account and system keys and JWTs; never overwrites unless told."""
        store = cls(directory, prefix=prefix)
        if store.exists and not force:
            raise TrustError(f"a trust store already exists in {directory}; "
                             f"use --force to replace it (every member must be admitted again)")
        try:
            (directory / "users").mkdir(parents=True, exist_ok=True)
            os.chmod(directory, 0o700)
        except OSError as exc:
            raise TrustError(f"cannot create trust directory {directory}: {exc.strerror}") from None
        for old in (directory / "users").glob("*"):
            old.unlink()
        operator = bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_OPERATOR))
        account = bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_ACCOUNT))
        system = bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_ACCOUNT))
        for key, seed in (("operator", operator), ("account", account), ("system", system)):
            _write_secret(directory / f"{key}.nk", seed)
        _write_public(directory / "operator.jwt", jwt.issue_operator(
            operator, name=name, system_account=jwt.public_key(system)))
        _write_public(directory / "system.jwt",
                      jwt.issue_account(operator, jwt.public_key(system), name="SYS"))
        store._write_account({})
        _write_secret(directory / "route.secret", secrets.token_urlsafe(24).encode())
        link = Identity.generate()
        link_jwt = jwt.issue_user(account, link.agent_id,
                                  Permissions(publish=(">",), subscribe=(">",)), name="leaf-link")
        _write_secret(directory / "link.creds", format_creds(link_jwt, link.seed).encode())
        return store

    @classmethod
    def open(cls, directory: Path, *, prefix: str = DEFAULT_PREFIX) -> TrustStore:
        """An existing store; TrustError naming the fix if there is none."""
        store = cls(directory, prefix=prefix)
        if not store.exists:
            raise TrustError(f"no trust store in {directory}; create one with: "
                             f"agoramesh trust init --dir {directory}")
        return store

    @property
    def exists(self) -> bool:
        return (self.directory / "operator.jwt").is_file()

    # -- keys ----------------------------------------------------------------------

    def _seed(self, key: str) -> bytes:
        path = self.directory / f"{key}.nk"
        try:
            return path.read_bytes().strip()
        except OSError as exc:
            raise TrustError(f"cannot read {path}: {exc.strerror}") from None

    def _read(self, name: str) -> str:
        path = self.directory / name
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise TrustError(f"cannot read {path}: {exc.strerror}") from None

    @property
    def account(self) -> str:
        """The public key of the account every member belongs to."""
        return str(jwt.decode(self.account_jwt)["sub"])

    @property
    def operator(self) -> str:
        """The operator's public key (``O…``): the authority a secured mesh trusts."""
        return str(jwt.decode(self.operator_jwt)["sub"])

    @property
    def operator_jwt(self) -> str:
        return self._read("operator.jwt")

    @property
    def account_jwt(self) -> str:
        return self._read("account.jwt")

    @property
    def link_credentials(self) -> Path:
        return self.directory / "link.creds"

    def revocations(self) -> dict[str, int]:
        claims = jwt.decode(self.account_jwt)
        revoked = claims.get("nats", {}).get("revocations") or {}
        return {str(key): int(value) for key, value in revoked.items()}

    def _write_account(self, revocations: dict[str, int]) -> None:
        operator = self._seed("operator")
        account = self._seed("account")
        _write_public(self.directory / "account.jwt", jwt.issue_account(
            operator, jwt.public_key(account), name="AGORA", revocations=revocations))

    def server_auth(self) -> ServerAuth:
        """What an embedded server needs to enforce membership (see ``render_config``)."""
        system = jwt.decode(self._read("system.jwt"))["sub"]
        return ServerAuth(
            operator_jwt=self.operator_jwt, system_account=system, account=self.account,
            accounts=((self.account, self.account_jwt), (system, self._read("system.jwt"))),
            route_password=self._read("route.secret"),
            leaf_credentials=self.link_credentials)

    # -- members -------------------------------------------------------------------

    def admit(self, agent_id: str, *, capabilities: Sequence[str] = (),
              role: MemberRole = MemberRole.AGENT, name: str = "",
              ttl: float | None = None) -> Member:
        """Sign a user JWT for ``agent_id`` with permissions from its role and capabilities."""
        permissions = permissions_for(agent_id, role, capabilities, prefix=self.prefix)
        # Issued one second after any revocation of this key, so re-admission works.
        issued = max(int(time.time()), self.revocations().get(agent_id, -1) + 1)
        expires = issued + int(ttl) if ttl else None
        token = jwt.encode(self._seed("account"), agent_id, "user", permissions.claims(),
                           name=name or agent_id[:12], issued_at=issued, expires=expires)
        member = Member(agent_id, role, tuple(capabilities), name or agent_id[:12], issued,
                        expires, token)
        users = self.directory / "users"
        users.mkdir(exist_ok=True)
        _write_public(users / f"{agent_id}.jwt", token + "\n")
        _write_public(users / f"{agent_id}.json", json.dumps(member.as_dict(), indent=2) + "\n")
        return member

    def credentials(self, name: str, *, role: MemberRole = MemberRole.CLIENT,
                    capabilities: Sequence[str] = (), ttl: float | None = None,
                    out: Path | None = None) -> Path:
        """A new identity admitted as ``role``, written as a ``.creds`` file (mode 0600)."""
        identity = Identity.generate()
        member = self.admit(identity.agent_id, capabilities=capabilities, role=role,
                            name=name, ttl=ttl)
        path = out or self.directory / f"{name}.creds"
        try:
            _write_secret(path, format_creds(member.jwt, identity.seed).encode())
        except OSError as exc:
            raise TrustError(f"cannot write {path}: {exc.strerror}") from None
        return path

    def revoke(self, agent_id: str) -> None:
        """Revoke every JWT issued to ``agent_id`` until now; servers apply it on reload."""
        if not is_agent_id(agent_id):
            raise TrustError(f"not an agent id: {agent_id[:60]!r}")
        revocations = self.revocations()
        revocations[agent_id] = int(time.time())
        self._write_account(revocations)
        for suffix in (".jwt", ".json"):
            (self.directory / "users" / f"{agent_id}{suffix}").unlink(missing_ok=True)

    def members(self) -> list[Member]:
        """Every admitted, unrevoked member, oldest first."""
        found: list[Member] = []
        for path in sorted((self.directory / "users").glob("*.json")):
            try:
                record = json.loads(path.read_text())
                token = (path.with_suffix(".jwt")).read_text().strip()
                found.append(Member(record["agent_id"], MemberRole(record["role"]),
                                    tuple(record["capabilities"]), record["name"],
                                    int(record["issued_at"]), record.get("expires"), token))
            except (OSError, ValueError, KeyError, TypeError):
                continue  # half-written or foreign file: not a member
        return sorted(found, key=lambda member: member.issued_at)

    def user_jwt(self, agent_id: str) -> str:
        """The JWT issued to ``agent_id``; TrustError if it was never admitted (or revoked)."""
        path = self.directory / "users" / f"{agent_id}.jwt"
        try:
            return path.read_text().strip()
        except OSError:
            raise TrustError(f"agent {agent_id[:12]}… is not admitted; run: agoramesh trust "
                             f"admit {agent_id} --capability …") from None


async def follow_trust(store: TrustStore, servers: Callable[[], Iterable[EmbeddedServer]], *,
                       interval: float = 0.5) -> None:
    """Keep ``servers`` on the store's current trust (revocations): runs until cancelled.

    Every ``interval`` the store's account JWT file is read (the rest of the
    trust, with its signature checks, only when that changed) and compared with
    what each running server was configured with; a server behind is reloaded.
    One that fails to reload is logged and retried on the next round.
    """
    seen: str | None = None
    auth: ServerAuth | None = None
    while True:
        try:
            current = store.account_jwt
            if current != seen:
                auth, seen = store.server_auth(), current
        except TrustError as exc:
            log.warning("trust store cannot be read: %s", exc)
        behind = [] if auth is None else [
            server for server in servers()
            if server.pid is not None and not server.crashed.is_set()
            and server.config.auth is not None and server.config.auth != auth]
        if behind:
            results = await asyncio.gather(
                *(server.reload(replace(server.config, auth=auth)) for server in behind),
                return_exceptions=True)
            for server, result in zip(behind, results, strict=True):
                if isinstance(result, BaseException):
                    log.warning("server %s did not take the new trust: %s", server.config.name,
                                result)
            log.info("trust reloaded on %d server(s)", len(behind))
        await asyncio.sleep(interval)


def load_user_jwt(path: Path, identity: Identity) -> str:
    """A user JWT file for ``identity`` (``agoramesh node --jwt``), checked against its key."""
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise TrustError(f"cannot read JWT file {path}: {exc.strerror}") from None
    claims = jwt.decode(token)
    if claims.get("sub") != identity.agent_id:
        raise TrustError(f"JWT {path} was issued to {str(claims.get('sub'))[:12]}…, not to "
                         f"this agent ({identity.agent_id[:12]}…)")
    expires = claims.get("exp")
    if isinstance(expires, int) and expires <= time.time():
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(expires))
        raise TrustError(f"JWT {path} expired at {when} UTC; admit the agent again")
    return token
