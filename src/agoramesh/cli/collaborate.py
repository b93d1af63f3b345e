"""``agoramesh collaborate``: run a collaboration mode from this client, showing progress.

The request (``--mode``, ``--topic``, ``--agents``, ``--rounds`` and the
mode's requirements) is checked before connecting, so bad input fails at once
with one line. Then the client learns the agents by one discovery round
(``--discover-timeout``) and drives the collaboration itself — there is no
central controller — printing one line per event on stdout (each argument,
vote, stage, task), then a summary. ``--json`` prints only the result object
(the shapes of :mod:`agoramesh.protocols.collaboration.collaboration`).

Requirements come from ``--requirements JSON`` and, for convenience, from
``--option`` (voting), ``--item`` (map-reduce), ``--capability`` and
``--parameters`` (parallel), which win over the same keys in the JSON.
``--agents`` is a comma-separated list of names, ids or selectors (a number
for parallel: that many agents).

Exits 1 with one line on stderr when the request is invalid, nobody can do
the work, the ``--timeout`` passes, or the collaboration produced no outcome
(a failed stage, no result, no valid ballot) — in that last case after
printing what happened.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from agoramesh.cli.agents import add_client_options, client_config
from agoramesh.cli.output import clip, emit, emit_json, json_object
from agoramesh.config import Environment
from agoramesh.errors import NoResponders
from agoramesh.protocols.allocation.dispatch import client_dispatcher
from agoramesh.protocols.collaboration.collaboration import Collaboration
from agoramesh.protocols.collaboration.request import CollaborationRequest

__all__ = ("build_request", "describe_event", "outcome_error", "register")

_WIDTH = 160


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "collaborate", help="run a collaboration: debate, voting, sequential, parallel, "
                            "map-reduce",
        description="Run a collaboration among the agents on the mesh from this client, "
                    "one line per event, then the outcome.")
    parser.add_argument("--mode", required=True,
                        help="debate, voting, sequential, parallel or map-reduce")
    parser.add_argument("--topic", help="the debate topic or the voting question; ${topic} in "
                                        "parameters elsewhere")
    parser.add_argument("--agents", help="comma-separated names, ids or selectors "
                                         "(parallel: or a number)")
    parser.add_argument("--rounds", type=int, help="debate rounds (default 2)")
    parser.add_argument("--option", action="append", dest="options", metavar="OPTION",
                        help="voting: an option (repeat for each)")
    parser.add_argument("--item", action="append", dest="items", metavar="ITEM",
                        help="map-reduce: an item to map (repeat for each)")
    parser.add_argument("--capability", help="parallel: the capability every agent runs")
    parser.add_argument("--parameters", metavar="JSON", help="parallel: the task parameters")
    parser.add_argument("--requirements", metavar="JSON",
                        help="the mode's requirements as a JSON object (see the docs)")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds for the whole collaboration (default 120)")
    parser.add_argument("--task-timeout", type=float, default=30.0,
                        help="seconds for each task in it (default 30)")
    parser.add_argument("--discover-timeout", type=float, default=0.5,
                        help="seconds to learn the agents first (default 0.5)")
    add_client_options(parser)
    parser.set_defaults(handler=_collaborate)


def build_request(args: argparse.Namespace) -> CollaborationRequest:
    """The checked request the flags describe; one line of ConfigError (a flag that is not
    a JSON object) or InvalidCollaboration (a request that cannot run) if they are wrong."""
    requirements = json_object(args.requirements, "--requirements") if args.requirements \
        else {}
    flags = {"options": args.options, "items": args.items, "capability": args.capability,
             "parameters": (json_object(args.parameters, "--parameters")
                            if args.parameters else None)}
    requirements |= {key: value for key, value in flags.items() if value is not None}
    agents: list[str] | int | None = None
    if args.agents:
        text = args.agents.strip()
        agents = int(text) if text.isdigit() else [a.strip() for a in text.split(",")
                                                   if a.strip()]
    return CollaborationRequest.from_dict({"mode": args.mode, "topic": args.topic,
                                           "agents": agents, "rounds": args.rounds,
                                           "requirements": requirements})


def _error(error: Any) -> str:
    error = error if isinstance(error, dict) else {}
    return clip(f"{error.get('type', 'Error')}: {error.get('message', '')}", _WIDTH)


def describe_event(event: dict[str, Any]) -> str | None:
    """One human line for a progress event (None: nothing worth a line)."""
    kind, mode = event.get("event"), event.get("mode")
    who = event.get("agent") or "?"
    if kind == "started":
        if mode == "debate":
            seats = ", ".join(f"{p['agent']} ({p['position']})" for p in event["participants"])
            return f"debate on {clip(event['topic'], 80)!r}, {event['rounds']} round(s): " \
                   f"{seats}"
        if mode == "voting":
            return f"voting: {len(event['voters'])} voter(s) on {clip(event['question'], 80)!r}"
        details = {key: value for key, value in event.items() if key not in ("event", "mode")}
        return f"{str(mode).replace('_', '-')}: {clip(details, _WIDTH)}"
    if kind == "argument":
        return f"round {event['round']}  {who} ({event['position']}, " \
               f"{event['confidence']:.2f}): {clip(event['argument'], _WIDTH)}"
    if kind == "failed":
        return f"round {event['round']}  {who} ({event['position']}) missed its turn: " \
               f"{_error(event.get('error'))}"
    if kind == "vote":
        return f"vote  {who} -> {event['choice']}: {clip(event['reason'], 100)}"
    if kind == "abstain":
        return f"vote  {who} abstains: {_error(event.get('error'))}"
    if kind == "step":
        label = {"map": f"map {event.get('index')}", "reduce": "reduce"}.get(
            event.get("phase") or "", f"stage {event['stage']} ({event['name']})"
            if "stage" in event else "task")
        outcome = event["status"] if event["status"] == "COMPLETED" else \
            f"{event['status']} {_error(event.get('error'))}"
        return f"{label}  {event['capability']} on {who}: {outcome}"
    if kind == "consensus":
        votes = event["votes"]
        return f"consensus: {event['position']} ({votes['for']} for, {votes['against']} " \
               f"against; decided by {event['decided_by']})"
    return None


def _progress(event: dict[str, Any]) -> None:
    line = describe_event(event)
    if line is not None:
        emit(line)


def outcome_error(result: dict[str, Any]) -> str | None:
    """Why a finished collaboration has no outcome, or None when it has one."""
    mode = result.get("mode")
    if mode == "sequential" and not result.get("completed"):
        step = result["steps"][-1]
        return f"stage {step['stage']} ({step['name']}) failed: {_error(step['error'])}"
    if mode == "parallel" and not result.get("results"):
        return "every agent failed"
    if mode == "map_reduce" and (result.get("reduce") or {}).get("status") != "COMPLETED":
        reduced = result.get("reduce")
        return f"reduce failed: {_error(reduced['error'])}" if reduced else "every map failed"
    if mode == "debate" and not result.get("debate_history"):
        return "no participant argued"
    if mode == "voting" and result.get("winner") is None:
        return "no valid ballot"
    return None


def _summary(result: dict[str, Any]) -> None:
    mode = result["mode"]
    if mode == "debate":
        emit(result["consensus"]["summary"])  # the consensus line itself is a progress event
    elif mode == "voting":
        emit("tally: " + ", ".join(f"{option} {n}" for option, n in result["tally"].items()))
        emit(f"winner: {result['winner']}"
             + (f" (tie with {', '.join(result['tied'][1:])}, broken by option order)"
                if result["tied"] else ""))
    elif mode == "parallel":
        emit(f"{len(result['results'])} completed, {len(result['failed'])} failed")
        for record in result["results"]:
            emit(f"  {record['agent']}: {clip(record['output'], _WIDTH)}")
    else:
        emit(f"output: {json.dumps(result['output'], indent=2, ensure_ascii=False)}")


async def _collaborate(args: argparse.Namespace, env: Environment) -> int:
    request = build_request(args)
    config = client_config(args, env, "agoramesh-collaborate")
    async with client_dispatcher(config, discover_timeout=args.discover_timeout,
                                 timeout=args.task_timeout) as dispatcher:
        if not dispatcher.agents():
            raise NoResponders(f"no agent answered on {config.servers[0]} within "
                               f"{args.discover_timeout:g}s")
        collaboration = Collaboration(dispatcher, timeout=args.timeout,
                                      task_timeout=args.task_timeout,
                                      on_event=None if args.json else _progress)
        result = await collaboration.run(request)
    if args.json:
        emit_json(result)
    else:
        _summary(result)
    problem = outcome_error(result)
    if problem is not None:
        print(f"agoramesh: error: {problem}", file=sys.stderr)
        return 1
    return 0
