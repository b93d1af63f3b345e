"""``agoramesh trust``: who may join a secured mesh, and as what (docs/SECURITY.md).

``init`` creates the operator's trust store; ``admit`` signs a member's JWT
for an existing agent key with permissions from its capabilities; ``creds``
makes a new client (or observer) identity with a ``.creds`` file for the CLI
and ``nats --creds``; ``revoke`` ends a member's access; ``list`` shows who
is admitted.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from agoramesh.bus.identity import is_agent_id
from agoramesh.cli.output import emit, emit_json
from agoramesh.config import Environment
from agoramesh.errors import ConfigError, TrustError
from agoramesh.security.trust import MemberRole, TrustStore

__all__ = ("parse_duration", "register", "trust_dir")

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """``90``, ``30s``, ``15m``, ``12h``, ``30d``, ``2w`` → seconds."""
    match = _DURATION.fullmatch(text.strip())
    if not match or float(match[1]) <= 0:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 3600, 12h, 30d)")
    return float(match[1]) * _UNITS[match[2]]


def trust_dir(args: argparse.Namespace, env: Environment) -> Path:
    """``--dir``, else $AGORAMESH_TRUST, else <home>/trust."""
    return args.dir or env.trust_dir or env.home / "trust"


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "trust", help="manage who may join a secured mesh",
        description="Manage the trust store of a secured mesh: servers admit only members "
                    "whose JWT this store signed, with publish/subscribe permissions derived "
                    "from their capabilities.")
    actions = parser.add_subparsers(dest="trust_command", metavar="ACTION", required=True)

    def action(name: str, help: str, description: str) -> argparse.ArgumentParser:
        sub = actions.add_parser(name, help=help, description=description)
        sub.add_argument("--dir", type=Path, metavar="DIR",
                         help="trust store (default $AGORAMESH_TRUST or <home>/trust)")
        sub.add_argument("--json", action="store_true", help="machine-readable output")
        return sub

    init = action("init", "create the trust store (operator, account, keys)",
                  "Create the operator and account keys and JWTs, the route secret and the "
                  "leaf link credential. Keep *.nk files secret: they sign memberships.")
    init.add_argument("--name", default="agoramesh", help="operator name (default agoramesh)")
    init.add_argument("--force", action="store_true",
                      help="replace an existing store (every member must be admitted again)")
    init.set_defaults(handler=_init)

    admit = action("admit", "admit an agent by its id",
                   "Sign a JWT for an existing agent key (from `agoramesh keys generate`). "
                   "The agent may serve only the capabilities named here.")
    admit.add_argument("agent_id", help="the agent's id (U…, from `agoramesh keys show`)")
    admit.add_argument("--capability", action="append", default=[], metavar="NAME",
                       help="a capability the agent serves (repeat)")
    admit.add_argument("--role", choices=[role.value for role in MemberRole],
                       default=MemberRole.AGENT.value,
                       help="agent (default), client or observer")
    admit.add_argument("--name", default="", help="a label for `trust list`")
    admit.add_argument("--expires", type=parse_duration, metavar="DURATION",
                       help="JWT lifetime (e.g. 12h, 30d); default: until revoked")
    admit.add_argument("--out", type=Path, help="also write the JWT to this file")
    admit.set_defaults(handler=_admit)

    creds = action("creds", "create a client identity and its .creds file",
                   "Create a new identity admitted as a client (or observer) and write its "
                   ".creds file (mode 0600) for `agoramesh … --creds` and `nats --creds`.")
    creds.add_argument("name", help="a label, also the file name <dir>/<name>.creds")
    creds.add_argument("--role", choices=[MemberRole.CLIENT.value, MemberRole.OBSERVER.value],
                       default=MemberRole.CLIENT.value, help="client (default) or observer")
    creds.add_argument("--expires", type=parse_duration, metavar="DURATION",
                       help="JWT lifetime (e.g. 12h); default: until revoked")
    creds.add_argument("--out", type=Path, help="write the .creds file here instead")
    creds.set_defaults(handler=_creds)

    revoke = action("revoke", "revoke an agent's membership",
                    "Revoke every JWT issued to the agent so far. Servers apply it when they "
                    "reload their config; `agoramesh up --secure` does that by itself.")
    revoke.add_argument("agent_id", help="the agent's id (U…)")
    revoke.set_defaults(handler=_revoke)

    listing = action("list", "list the admitted members", "List the admitted members.")
    listing.set_defaults(handler=_list)


async def _init(args: argparse.Namespace, env: Environment) -> int:
    directory = trust_dir(args, env)
    store = TrustStore.init(directory, name=args.name, force=args.force, prefix=env.prefix)
    if args.json:
        emit_json({"dir": str(directory), "account": store.account})
    else:
        emit(f"trust store created in {directory}")
        emit(f"account: {store.account}")
        emit("keep operator.nk, account.nk and system.nk secret; servers need only the "
             "*.jwt files, route.secret and link.creds")
    return 0


def _check_id(agent_id: str) -> str:
    if not is_agent_id(agent_id):
        raise ConfigError(f"not an agent id: {agent_id[:60]!r} (expected the 56-character key "
                          f"starting with U that `agoramesh keys show` prints)")
    return agent_id


async def _admit(args: argparse.Namespace, env: Environment) -> int:
    agent_id = _check_id(args.agent_id)
    store = TrustStore.open(trust_dir(args, env), prefix=env.prefix)
    role = MemberRole(args.role)
    if role is MemberRole.AGENT and not args.capability:
        raise ConfigError("an agent needs at least one --capability (or use --role client)")
    member = store.admit(agent_id, capabilities=args.capability, role=role,
                         name=args.name, ttl=args.expires)
    path = store.directory / "users" / f"{member.agent_id}.jwt"
    if args.out:
        try:
            args.out.write_text(member.jwt + "\n")
        except OSError as exc:
            raise TrustError(f"cannot write {args.out}: {exc.strerror}") from None
        path = args.out
    if args.json:
        emit_json({**member.as_dict(), "jwt_file": str(path), "jwt": member.jwt})
    else:
        emit(f"admitted {member.agent_id} as {role.value}"
             + (f" serving {', '.join(member.capabilities)}" if member.capabilities else ""))
        emit(f"jwt: {path}  (run the agent with: agoramesh node --jwt {path} …)")
    return 0


async def _creds(args: argparse.Namespace, env: Environment) -> int:
    store = TrustStore.open(trust_dir(args, env), prefix=env.prefix)
    path = store.credentials(args.name, role=MemberRole(args.role), ttl=args.expires, out=args.out)
    if args.json:
        emit_json({"name": args.name, "role": args.role, "creds_file": str(path)})
    else:
        emit(f"credentials for {args.name} ({args.role}) written to {path} (mode 0600)")
        emit(f"use them with: agoramesh agents --creds {path}  or  nats --creds {path}")
    return 0


async def _revoke(args: argparse.Namespace, env: Environment) -> int:
    store = TrustStore.open(trust_dir(args, env), prefix=env.prefix)
    store.revoke(_check_id(args.agent_id))
    if args.json:
        emit_json({"revoked": args.agent_id})
    else:
        emit(f"revoked {args.agent_id}")
        emit(f"servers apply it on reload: ship {store.directory / 'account.jwt'} to every "
             f"server (`agoramesh up --secure` reloads its own within a second)")
    return 0


async def _list(args: argparse.Namespace, env: Environment) -> int:
    store = TrustStore.open(trust_dir(args, env), prefix=env.prefix)
    members = store.members()
    if args.json:
        emit_json({"members": [member.as_dict() for member in members],
                   "revoked": sorted(store.revocations())})
        return 0
    if not members:
        emit("no members admitted yet")
    for member in members:
        emit(f"{member.agent_id}  {member.role.value:<8} {member.name:<16} "
             f"{', '.join(member.capabilities) or '-'}")
    return 0
