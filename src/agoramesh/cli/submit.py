"""``agoramesh submit``: one task, auctioned (default) or sent direct, with live progress.

The CLI is a client, not an agent: it learns the agents with one discovery
round, then runs the auction itself (it is the initiator; there is no
central controller), printing what happens on stderr while the task runs.
The result goes to stdout; a FAILED task exits 1 with its error on one line.

``--durable`` hands the task to the mesh instead (a JetStream job, M-8): the
task id is printed at once and any node runs it, even after this process is
gone; ``--wait`` follows it to its result (``agoramesh jobs result ID`` reads it
later). The task id (``--task-id``, else a fresh one) is the idempotency key:
submitting the same id again does not run it again.

``--callback SUBJECT``: the agent that runs the task also publishes its final
result on SUBJECT (a signed ``task_response`` envelope), so a ``nats sub`` or
another program there sees it; with ``--durable``, each run that finishes it.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from agoramesh.bus.bus import Bus
from agoramesh.bus.credentials import client_identity
from agoramesh.cli.agents import add_client_options, client_config
from agoramesh.cli.jobs import print_result
from agoramesh.cli.output import emit, emit_json, json_object
from agoramesh.config import Environment
from agoramesh.errors import ConfigError
from agoramesh.nodes.task import validate_callback
from agoramesh.protocols.allocation.dispatch import Dispatcher, Strategy, client_dispatcher
from agoramesh.protocols.auction.policy import Progress
from agoramesh.protocols.jobs.jobs import Jobs

__all__ = ("progress_printer", "register")


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "submit", help="submit a task (auction or direct) and print its result",
        description="Submit one task. By default the capable agents bid for it and the best "
                    "bid wins (contract net); --strategy direct sends it to one capable agent "
                    "through the capability's queue group; --agent sends it to that agent.")
    parser.add_argument("capability", help="the task's capability, e.g. math.evaluate")
    parser.add_argument("parameters", nargs="?", default="{}",
                        help="task parameters as a JSON object (default {})")
    parser.add_argument("--strategy", choices=[s.value for s in Strategy],
                        default=Strategy.AUCTION.value, help="auction (default) or direct")
    parser.add_argument("--agent", metavar="ID", help="send to this agent id only")
    parser.add_argument("--priority", type=int, default=5, help="0 (low) to 10 (default 5)")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds for the whole task (default 60)")
    parser.add_argument("--discover-timeout", type=float, default=0.5,
                        help="seconds to learn the agents first (default 0.5)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.add_argument("--callback", metavar="SUBJECT",
                        help="the agent that runs the task also publishes its final result on "
                             "this subject (a `nats sub SUBJECT` sees it)")
    durable = parser.add_argument_group("durable jobs")
    durable.add_argument("--durable", action="store_true",
                         help="hand the task to the mesh as a durable job: print its task id "
                              "and return; any node runs it, even after this process is gone")
    durable.add_argument("--wait", action="store_true",
                         help="with --durable: wait for the job's result (up to --timeout)")
    durable.add_argument("--task-id", metavar="ID",
                         help="the job's task id, its idempotency key (default: a fresh one)")
    add_client_options(parser)
    parser.set_defaults(handler=_submit)


def progress_printer(dispatcher: Dispatcher) -> Any:
    """A Progress callback printing one human line per auction event on stderr."""
    def name(agent_id: object) -> str:
        for card in dispatcher.agents():
            if card.id == agent_id:
                return f"{card.name} ({card.id[:8]}…)"
        return f"{str(agent_id)[:8]}…"

    def show(event: Progress) -> None:
        detail = event.detail
        line = {
            "cfp": lambda: f"call for proposals #{detail.get('attempt')}: "
                           f"{detail.get('known')} capable agent(s) known",
            "bids": lambda: f"{detail.get('bids')} bid(s) from {detail.get('answered')} "
                            f"answer(s); best: "
                            + ", ".join(name(a) for a in detail.get("ranking", [])[:3]),
            "award": lambda: (f"awarded directly to {name(detail.get('agent'))}, the one "
                              f"capable agent known (no call for proposals)"
                              if detail.get("direct") else
                              f"awarded to {name(detail.get('agent'))}"
                              + (f" on its counter-offer {detail['counter']}"
                                 if detail.get("counter") else "")),
            "accepted": lambda: f"accepted by {name(detail.get('agent'))}, working…",
            "declined": lambda: f"declined by {name(detail.get('agent'))}: "
                                f"{detail.get('reason')}",
            "lost": lambda: f"lost {name(detail.get('agent'))}: no lease, re-auctioning",
            "reauction": lambda: f"re-auction #{detail.get('attempt')}",
            "result": lambda: f"result from {name(detail.get('agent'))}: {detail.get('status')}",
        }.get(event.event)
        if line is not None:
            print(f"… {line()}", file=sys.stderr, flush=True)

    return show


async def _submit(args: argparse.Namespace, env: Environment) -> int:
    parameters = json_object(args.parameters, "parameters")
    if args.callback is not None:
        validate_callback(args.callback)  # before connecting: one line, exit 1
    if args.durable or args.wait or args.task_id:
        return await _durable(args, env, parameters)
    async with client_dispatcher(client_config(args, env, "agoramesh-submit"),
                                 discover_timeout=args.discover_timeout,
                                 timeout=args.timeout) as dispatcher:
        progress = None if args.quiet or args.json else progress_printer(dispatcher)
        result = await dispatcher.submit(args.capability, parameters, agent_id=args.agent,
                                         strategy=args.strategy, priority=args.priority,
                                         timeout=args.timeout, progress=progress,
                                         callback=args.callback)
    return print_result(result, as_json=args.json)


async def _durable(args: argparse.Namespace, env: Environment, parameters: dict[str, Any]) -> int:
    if not args.durable:
        raise ConfigError("--wait and --task-id are for durable jobs: add --durable")
    if args.agent or args.strategy != Strategy.AUCTION.value:
        raise ConfigError("a durable job is auctioned by whichever node takes it: "
                          "--agent and --strategy do not apply")
    config = client_config(args, env, "agoramesh-submit")
    async with Bus(client_identity(config), config) as bus:
        jobs = Jobs(bus)
        receipt = await jobs.submit(args.capability, parameters, task_id=args.task_id,
                                    priority=args.priority, timeout=min(args.timeout, 30.0),
                                    callback=args.callback)
        if args.json and not args.wait:
            emit_json({"task_id": receipt.task_id, "seq": receipt.seq,
                       "duplicate": receipt.duplicate})
            return 0
        if not args.wait:
            emit(receipt.task_id)
            return 0
        if not (args.quiet or args.json):
            note = " (already submitted: the same job)" if receipt.duplicate else ""
            print(f"… job {receipt.task_id} stored{note}; waiting for its result",
                  file=sys.stderr, flush=True)
        result = await jobs.wait(receipt.task_id, timeout=args.timeout)
    return print_result(result, as_json=args.json)
