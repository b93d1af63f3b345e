"""``agoramesh jobs``: durable jobs in the stream and results in the store (M-8).

::

    agoramesh jobs                 # counts, the jobs queued or running, the latest results
    agoramesh jobs result ID       # a job's stored result (exit 1 if FAILED or none yet)
    agoramesh jobs cancel ID       # store TaskCancelled as its result, stop whoever runs it

``agoramesh submit --durable`` puts jobs in; any node takes them.
"""

from __future__ import annotations

import argparse
import json
import sys

from agoramesh.bus.bus import Bus
from agoramesh.bus.credentials import client_identity
from agoramesh.cli.agents import add_client_options, client_config
from agoramesh.cli.output import clip, emit, emit_json
from agoramesh.config import Environment
from agoramesh.errors import JobNotFound
from agoramesh.nodes.task import TaskResult, TaskStatus
from agoramesh.protocols.jobs.jobs import Jobs

__all__ = ("print_result", "register")


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "jobs", help="durable jobs: list them, read a result, cancel one",
        description="Durable jobs live in JetStream until a node has run them; results are "
                    "kept by task id. Without a subcommand: what is queued, running and done.")
    add_client_options(parser)
    parser.add_argument("--limit", type=int, default=20,
                        help="jobs and results to list (default 20)")
    parser.set_defaults(handler=_list)
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    result = actions.add_parser("result", help="print a job's stored result")
    result.add_argument("task_id", metavar="ID")
    result.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                        help="wait this long for the result if it is not stored yet")
    _client_options_after(result, parser)
    result.set_defaults(handler=_result)
    cancel = actions.add_parser("cancel", help="cancel a job that has no result yet")
    cancel.add_argument("task_id", metavar="ID")
    _client_options_after(cancel, parser)
    cancel.set_defaults(handler=_cancel)


def _client_options_after(sub: argparse.ArgumentParser, parent: argparse.ArgumentParser) -> None:
    """The client options on a subcommand too (``jobs result ID --server URL``), without
    their defaults overriding what was given before it (``jobs --server URL result ID``)."""
    known = {action.dest for action in parent._actions}
    add_client_options(sub)
    for action in sub._actions:
        if action.dest in known and action.dest != "help":
            action.default = argparse.SUPPRESS


def print_result(result: TaskResult, *, as_json: bool) -> int:
    """A task's result on stdout (its error on stderr); the exit code: 1 unless COMPLETED."""
    if as_json:
        emit_json(result.as_dict())
    elif result.status is TaskStatus.COMPLETED:
        emit(json.dumps(result.result, indent=2, ensure_ascii=False))
    if result.status is TaskStatus.COMPLETED:
        return 0
    error = result.error or {}
    print(f"agoramesh: error: task failed: {error.get('type', 'Error')}: "
          f"{' '.join(str(error.get('message', '')).split())}", file=sys.stderr)
    return 1


async def _list(args: argparse.Namespace, env: Environment) -> int:
    config = client_config(args, env, "agoramesh-jobs")
    async with Bus(client_identity(config), config) as bus:
        status = await Jobs(bus).status(limit=max(0, args.limit))
    if args.json:
        emit_json(status.as_dict())
        return 0
    emit(f"jobs: {status.queued} queued · {status.running} running · {status.redelivered} "
         f"redelivered · {status.results} results stored ({status.results_bytes} bytes)")
    if status.jobs:
        emit("")
        emit(f"{'TASK ID':<34} {'STATE':<8} {'CAPABILITY':<24} QUEUED AT")
        for job in status.jobs:
            emit(f"{clip(job.task_id, 34):<34} {job.state:<8} {clip(job.capability, 24):<24} "
                 f"{job.queued_at[:23]}")
    if status.recent:
        emit("")
        emit(f"{'TASK ID':<34} {'STATUS':<10} {'AGENT':<14} RESULT")
        for result in status.recent:
            outcome = (result.result if result.status is TaskStatus.COMPLETED
                       else (result.error or {}).get("type"))
            emit(f"{clip(result.task_id, 34):<34} {result.status.value:<10} "
                 f"{(result.agent_id or '-')[:12]:<14} {clip(outcome, 60)}")
    return 0


async def _result(args: argparse.Namespace, env: Environment) -> int:
    config = client_config(args, env, "agoramesh-jobs")
    async with Bus(client_identity(config), config) as bus:
        jobs = Jobs(bus)
        if args.wait > 0:
            result: TaskResult | None = await jobs.wait(args.task_id, timeout=args.wait)
        else:
            result = await jobs.result(args.task_id)
    if result is None:
        raise JobNotFound(f"no result for {args.task_id} yet: it is queued, running, or was "
                          f"never submitted (`agoramesh jobs` lists the queue; --wait waits)")
    return print_result(result, as_json=args.json)


async def _cancel(args: argparse.Namespace, env: Environment) -> int:
    config = client_config(args, env, "agoramesh-jobs")
    async with Bus(client_identity(config), config) as bus:
        result = await Jobs(bus).cancel(args.task_id)
    cancelled = (result.status is TaskStatus.FAILED
                 and (result.error or {}).get("type") == "TaskCancelled")
    if args.json:
        emit_json({"task_id": args.task_id, "cancelled": cancelled, "result": result.as_dict()})
    elif cancelled:
        emit(f"cancelled {args.task_id}")
    else:
        emit(f"{args.task_id} had already finished: {result.status.value}")
    return 0 if cancelled else 1
