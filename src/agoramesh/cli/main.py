"""Entry point: parse arguments, run one command, turn failures into one-line errors.

Every command module offers ``register(subparsers)``, which adds its parser
and sets ``handler`` to an ``async def (args, env) -> int``.

Logging options (``--log-format``, ``--log-level``, ``-v``) are accepted before
the command and after it (``agoramesh node --name x --log-format json``); logs go
to stderr so ``--json`` output on stdout stays machine-readable.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from agoramesh._version import __version__
from agoramesh.cli import (
    a2a,
    agents,
    certs,
    collaborate,
    decode,
    demo,
    episode,
    jobs,
    keys,
    mcp,
    node,
    submit,
    trust,
    up,
    watch,
    workflow,
)
from agoramesh.config import Environment, LogFormat, LogLevel
from agoramesh.errors import AgoraError
from agoramesh.observability.logs import configure_logging

__all__ = ("build_parser", "main", "run")


def build_parser(env: Environment | None = None) -> argparse.ArgumentParser:
    """The whole CLI; logging defaults come from ``env`` (AGORAMESH_LOG_FORMAT/_LEVEL)."""
    parser = argparse.ArgumentParser(
        prog="agoramesh",
        description="Decentralized runtime for AI agents on a brokerless NATS mesh.",
    )
    parser.add_argument("--version", action="version", version=f"agoramesh {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (up, demo, node, agents, submit, jobs, collaborate, workflow, watch, mcp,
                   a2a, episode, keys, trust, certs, decode):
        module.register(commands)
    _add_log_options(parser, env or Environment())
    return parser


def _add_log_options(parser: argparse.ArgumentParser, env: Environment | None) -> None:
    """Add the logging options to ``parser`` and, recursively, to every subcommand.

    Only the top parser has defaults (``env`` is None below it): a subcommand
    sets ``log_format``/``log_level`` only when the option is given after it.
    """
    group = parser.add_argument_group("logging (to stderr)")
    group.add_argument("--log-format", type=str.lower, choices=[f.value for f in LogFormat],
                       default=env.log_format if env else argparse.SUPPRESS,
                       help="human-readable lines or JSON lines (default $AGORAMESH_LOG_FORMAT "
                            "or human)")
    group.add_argument("--log-level", type=str.lower, choices=[lv.value for lv in LogLevel],
                       default=env.log_level if env else argparse.SUPPRESS,
                       help="least severe level logged (default $AGORAMESH_LOG_LEVEL or warning)")
    group.add_argument("-v", "--verbose", dest="log_level", action="store_const",
                       const=LogLevel.DEBUG, default=argparse.SUPPRESS,
                       help="same as --log-level debug")
    seen: set[int] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                if id(sub) not in seen:  # aliases map several names to one parser
                    seen.add(id(sub))
                    _add_log_options(sub, None)


def run(argv: Sequence[str] | None = None, env: Environment | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 failure, 2 usage, 130 interrupted)."""
    try:
        environment = env or Environment.read()
    except AgoraError as exc:  # a bad AGORAMESH_* variable: a usage error, like a bad flag
        print(f"agoramesh: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    args = build_parser(environment).parse_args(argv)
    configure_logging(args.log_level, args.log_format)
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
