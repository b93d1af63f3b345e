"""``agoramesh keys``: generate and inspect agent identities (nkey user seeds)."""

from __future__ import annotations

import argparse
from pathlib import Path

from agoramesh.bus.identity import Identity
from agoramesh.cli.output import emit, emit_json
from agoramesh.config import Environment

__all__ = ("register",)


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("keys", help="generate and inspect agent keys")
    actions = parser.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    generate = actions.add_parser(
        "generate", help="create a new identity",
        description="Create an nkey user key pair. With --out the seed goes to a file only "
                    "you can read (mode 0600) and only the agent id is printed.",
    )
    generate.add_argument("--out", type=Path, help="write the seed to this file (mode 0600)")
    generate.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    generate.add_argument("--json", action="store_true", help="machine-readable output")
    generate.set_defaults(handler=_generate)
    show = actions.add_parser("show", help="print the agent id of a seed file")
    show.add_argument("path", type=Path, help="seed file")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(handler=_show)


async def _generate(args: argparse.Namespace, env: Environment) -> int:
    identity = Identity.generate()
    if args.out:
        identity.save(args.out, overwrite=args.force)
        if args.json:
            emit_json({"agent_id": identity.agent_id, "seed_file": str(args.out)})
        else:
            emit(f"agent id: {identity.agent_id}")
            emit(f"seed written to {args.out} (mode 0600)")
        return 0
    if args.json:
        emit_json({"agent_id": identity.agent_id, "seed": identity.seed.decode()})
    else:
        emit(f"agent id: {identity.agent_id}")
        emit(f"seed:     {identity.seed.decode()}")
        emit("keep the seed secret; prefer --out FILE to store it with mode 0600")
    return 0


async def _show(args: argparse.Namespace, env: Environment) -> int:
    identity = Identity.load(args.path)
    if args.json:
        emit_json({"agent_id": identity.agent_id, "seed_file": str(args.path)})
    else:
        emit(identity.agent_id)
    return 0
