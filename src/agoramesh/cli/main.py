"""Entry point: parse arguments, run one command, turn failures into one-line errors.

Every command module offers ``register(subparsers)``, which adds its parser
and sets ``handler`` to an ``async def (args, env) -> int``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from agoramesh._version import __version__
from agoramesh.cli import agents, collaborate, decode, demo, keys, node, submit, up, workflow
from agoramesh.config import Environment
from agoramesh.errors import AgoraError

__all__ = ("build_parser", "main", "run")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agoramesh",
        description="Decentralized runtime for AI agents on a brokerless NATS mesh.",
    )
    parser.add_argument("--version", action="version", version=f"agoramesh {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (up, demo, node, agents, submit, collaborate, workflow, keys, decode):
        module.register(commands)
    return parser


def run(argv: Sequence[str] | None = None, env: Environment | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 failure, 2 usage, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    environment = env or Environment.read()
    try:
        return _run_async(args.handler(args, environment))
    except AgoraError as exc:
        print(f"agoramesh: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("agoramesh: interrupted", file=sys.stderr)
        return 130


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _run_async(coro: object) -> int:
    loop_factory = None
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is optional on some platforms
        pass
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return int(runner.run(coro))  # type: ignore[arg-type]


def main() -> None:
    sys.exit(run())
