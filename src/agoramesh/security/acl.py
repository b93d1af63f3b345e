"""Capability access control at the agent (M-4.2): who may ask this agent for what.

Every request an agent acts on names a **resource**, one of its capabilities
(``code.review.python``), and an :class:`Action`:

- ``execute``: a task on ``agora.cap.<capability>``, a direct ``task_request``,
  or an ``award`` to run one (a denied award is declined with the reason);
- ``bid``: a call for proposals on ``agora.cfp.<capability>`` (a denied
  requester gets a ``refuse`` with the reason, never a bid);
- ``submit``: a task this node is asked to auction, on ``agora.task.<capability>``;
- ``cancel``: a ``task_cancel`` of a task running here (its capability).

The requester is the **principal**: the verified sender of the envelope (an
agent id, ``U…``), or ``json`` for a plain-JSON request, which carries no
signature and is authenticated only by the NATS server. In a policy ``*``
names every signed agent; it never names ``json``.

A policy has two layers; a request is allowed when it passes both:

1. **ACL**, per resource: the entries whose resource pattern (NATS wildcards,
   ``*`` one token, a final ``>`` the rest) matches the capability. If there
   are any, one of them must give the action (or ``*``) to the principal (its
   id, or ``*`` for a signed request).
2. **Grants**, per principal: ``resource:action`` permissions
   (``code.>:execute``, ``echo:*``) or ``admin``, which holds every
   permission. If the principal is named in ``grants`` (its id, or ``*`` for
   a signed request), one of its permissions must match, or it holds ``admin``.

A layer that says nothing about a request (no ACL entry covers the resource;
the principal is not named in the grants) defers to ``default``: ``allow``
or ``deny``. So ``default: allow`` with nothing else, the policy of an agent
given none, allows everything; under ``allow`` an ACL entry closes one
resource to all but its principals and a grant list confines one principal;
under ``deny`` a request needs both. ``admin`` is a grant: it does not open
a resource whose ACL leaves the principal out. An empty grant list
(``UBAD…: []``) holds nothing: that principal is denied everything.

Decisions are cached per (principal, resource, action): a policy is frozen,
so a decision never changes; the cache is bounded. An agent never denies
itself; that is the node's rule (:meth:`~agoramesh.nodes.node.AgentNode.check_access`).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from agoramesh.bus.identity import is_agent_id
from agoramesh.bus.subjects import tokens_match, validate_capability_pattern
from agoramesh.config import read_settings_file
from agoramesh.errors import AgoraError, ConfigError

__all__ = ("ADMIN", "ANY_AGENT", "JSON_PRINCIPAL", "AccessPolicy", "AclEntry", "Action",
           "Default", "Grants", "Permission", "load_policy")

#: The principal of plain-JSON requests (no signature; NATS authenticated them).
JSON_PRINCIPAL = "json"
#: In a policy: every signed agent (never plain JSON).
ANY_AGENT = "*"
#: The grant that holds every ``resource:action`` permission.
ADMIN = "admin"
_ANY_ACTION = "*"
_KEYS = ("default", "acl", "grants")
_CACHE_SIZE = 8192


class Action(StrEnum):
    """What a request asks of the agent's capability."""

    EXECUTE = "execute"
    BID = "bid"
    SUBMIT = "submit"
    CANCEL = "cancel"


_EVERY_ACTION = frozenset(Action)
_ACTIONS = tuple(action.value for action in Action)


class Default(StrEnum):
    """The answer of a layer that says nothing about a request."""

    ALLOW = "allow"
    DENY = "deny"


def _split(pattern: str) -> tuple[str, ...]:
    return tuple(pattern.split("."))


@dataclass(frozen=True, slots=True)
class Permission:
    """``resource:action``: the actions on the capabilities a pattern matches."""

    resource: str
    actions: frozenset[Action]
    _path: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_path", _split(validate_capability_pattern(self.resource)))

    def covers(self, resource: tuple[str, ...], action: Action) -> bool:
        return action in self.actions and tokens_match(self._path, resource)

    def __str__(self) -> str:
        actions = (_ANY_ACTION if self.actions == _EVERY_ACTION
                   else ",".join(sorted(a.value for a in self.actions)))
        return f"{self.resource}:{actions}"


@dataclass(frozen=True, kw_only=True, slots=True)
class Grants:
    """What one principal holds: ``admin``, or these permissions."""

    admin: bool = False
    permissions: tuple[Permission, ...] = ()

    def cover(self, resource: tuple[str, ...], action: Action) -> bool:
        return self.admin or any(p.covers(resource, action) for p in self.permissions)


@dataclass(frozen=True, kw_only=True, slots=True)
class AclEntry:
    """The principals a resource pattern admits, and for which actions."""

    resource: str
    principals: Mapping[str, frozenset[Action]]
    _path: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_path", _split(validate_capability_pattern(self.resource)))
        for principal in self.principals:
            _check_principal(principal, f"acl.{self.resource}")

    def covers(self, resource: tuple[str, ...]) -> bool:
        return tokens_match(self._path, resource)

    def admits(self, names: tuple[str, ...], action: Action) -> bool:
        return any(action in self.principals.get(name, ()) for name in names)


@dataclass(frozen=True, kw_only=True)
class AccessPolicy:
    """An agent's access policy; the default instance allows everything.

    ``acl``: entries in any order (a resource's ACL is every entry that covers
    it). ``grants``: principal (agent id, ``*`` or ``json``) → its grants.
    """

    default: Default = Default.ALLOW
    acl: tuple[AclEntry, ...] = ()
    grants: Mapping[str, Grants] = field(default_factory=dict)
    _cache: dict[tuple[str, str, Action], str | None] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "default", Default(self.default))
        for principal in self.grants:
            _check_principal(principal, "grants")

    @property
    def is_open(self) -> bool:
        """True if the policy allows every request (nothing to check, nothing to verify)."""
        return self.default is Default.ALLOW and not self.acl and not self.grants

    def allows(self, principal: str, resource: str, action: Action) -> bool:
        return self.decide(principal, resource, action) is None

    def decide(self, principal: str, resource: str, action: Action) -> str | None:
        """None if ``principal`` may do ``action`` on ``resource``, else the reason it may not.

        ``principal``: an agent id, or :data:`JSON_PRINCIPAL` for plain JSON.
        """
        if self.is_open:
            return None
        key = (principal, resource, action)
        cache = self._cache
        try:
            return cache[key]
        except KeyError:
            pass
        reason = self._decide(principal, resource, action)
        if len(cache) >= _CACHE_SIZE:  # many principals: start over rather than grow
            cache.clear()
        cache[key] = reason
        return reason

    def _decide(self, principal: str, resource: str, action: Action) -> str | None:
        signed = principal != JSON_PRINCIPAL
        names = (principal, ANY_AGENT) if signed else (JSON_PRINCIPAL,)
        who = principal if signed else "plain-JSON requests"
        have = _split(resource)
        entries = [entry for entry in self.acl if entry.covers(have)]
        if entries:
            if not any(entry.admits(names, action) for entry in entries):
                return f"the ACL of {resource} does not give {action} to {who}"
        elif self.default is Default.DENY:
            return f"no ACL entry covers {resource} and the default is deny"
        held = [grants for name in names if (grants := self.grants.get(name)) is not None]
        if held:
            if not any(grants.cover(have, action) for grants in held):
                return f"no {resource}:{action} permission is granted to {who}"
        elif self.default is Default.DENY:
            return f"no grants name {who} and the default is deny"
        return None

    # -- loading -------------------------------------------------------------------

    @classmethod
    def from_mapping(cls, raw: Any) -> AccessPolicy:
        """Check a loaded mapping (``default``, ``acl``, ``grants``); ConfigError names the key."""
        if raw is None:
            return cls()
        if not isinstance(raw, Mapping):
            raise ConfigError(f"an access policy must be a mapping with {', '.join(_KEYS)}, "
                              f"got {type(raw).__name__}")
        _known(raw, _KEYS, "")
        default = raw.get("default", Default.ALLOW.value)
        try:
            default = Default(default)
        except ValueError:
            raise ConfigError(f"default must be allow or deny, got {default!r:.40}") from None
        acl = tuple(_acl_entry(resource, principals)
                    for resource, principals in _mapping(raw, "acl").items())
        grants = {principal: _grants(principal, held)
                  for principal, held in _mapping(raw, "grants").items()}
        return cls(default=default, acl=acl, grants=grants)

    def as_dict(self) -> dict[str, Any]:
        """The policy as a file spells it (:meth:`from_mapping` reads it back)."""
        return {
            "default": self.default.value,
            "acl": {entry.resource: {principal: _action_list(actions)
                                     for principal, actions in entry.principals.items()}
                    for entry in self.acl},
            "grants": {principal: ([ADMIN] if grants.admin else [])
                       + [f"{permission.resource}:{action}"
                          for permission in grants.permissions
                          for action in _action_list(permission.actions)]
                       for principal, grants in self.grants.items()},
        }


def load_policy(path: str | Path) -> AccessPolicy:
    """Read and check a policy file (YAML, or JSON for ``*.json``); one-line ConfigError."""
    file = Path(path)
    raw = read_settings_file(file, "access policy")
    try:
        return AccessPolicy.from_mapping(raw)
    except ConfigError as exc:
        raise ConfigError(f"{file}: {exc}") from None


# -- checks ------------------------------------------------------------------------


def _suggest(value: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(value.lower(), list(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def _known(raw: Mapping[Any, Any], known: tuple[str, ...], where: str) -> None:
    for key in raw:
        if key not in known:
            hint = _suggest(key, known) if isinstance(key, str) else ""
            raise ConfigError(f"unknown key {where}{key!r:.40}{hint} "
                              f"(known: {', '.join(known)})")


def _mapping(raw: Mapping[str, Any], key: str) -> Mapping[Any, Any]:
    value = raw.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key} must be a mapping, got {type(value).__name__}")
    return value


def _check_principal(principal: object, where: str) -> str:
    if principal in (ANY_AGENT, JSON_PRINCIPAL) or is_agent_id(principal):
        return str(principal)
    hint = _suggest(principal, (JSON_PRINCIPAL,)) if isinstance(principal, str) else ""
    raise ConfigError(f"{where}: {principal!r:.70} is not a principal: use an agent id "
                      f"(U…, 56 characters), '*' (any signed agent) or 'json' (plain-JSON "
                      f"requests){hint}")


def _action(value: object, where: str) -> frozenset[Action]:
    if value == _ANY_ACTION:
        return _EVERY_ACTION
    if isinstance(value, str) and value in _ACTIONS:
        return frozenset((Action(value),))
    hint = _suggest(value, _ACTIONS) if isinstance(value, str) else ""
    raise ConfigError(f"{where}: unknown action {value!r:.40}{hint} (actions: "
                      f"{', '.join(Action)}, or * for all)")


def _action_list(actions: frozenset[Action]) -> list[str]:
    return [_ANY_ACTION] if actions == _EVERY_ACTION else sorted(a.value for a in actions)


def _strings(value: object, where: str) -> list[object]:
    """A list of entries; one string is a list of one."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise ConfigError(f"{where} must be a list, got {type(value).__name__}")
    return value


def _acl_entry(resource: object, principals: object) -> AclEntry:
    where = f"acl.{resource}"
    try:
        validate_capability_pattern(resource)
    except AgoraError as exc:
        raise ConfigError(f"acl: {exc}") from None
    if principals is None:
        principals = {}
    if not isinstance(principals, Mapping):
        raise ConfigError(f"{where} must map principals to actions, "
                          f"got {type(principals).__name__}")
    admitted: dict[str, frozenset[Action]] = {}
    for principal, actions in principals.items():
        name = _check_principal(principal, where)
        admitted[name] = frozenset().union(*(_action(action, f"{where}.{name}")
                                             for action in _strings(actions, f"{where}.{name}")))
    return AclEntry(resource=str(resource), principals=admitted)


def _grants(principal: object, held: object) -> Grants:
    name = _check_principal(principal, "grants")
    where = f"grants.{name}"
    if held is None:
        held = []
    admin = False
    permissions: list[Permission] = []
    for item in _strings(held, where):
        if item == ADMIN:
            admin = True
            continue
        if not isinstance(item, str) or ":" not in item:
            hint = _suggest(item, (ADMIN,)) if isinstance(item, str) else ""
            raise ConfigError(f"{where}: {item!r:.60} must be resource:action (like "
                              f"code.>:execute) or admin{hint}")
        resource, _, action = item.rpartition(":")
        try:
            permissions.append(Permission(resource, _action(action, where)))
        except AgoraError as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"{where}: {exc}") from None
    return Grants(admin=admin, permissions=tuple(permissions))
