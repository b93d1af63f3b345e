"""``agoramesh workflow run|check FILE``: run a workflow from this client, or only check it.

``run`` reads FILE and checks it offline (structure, references, inputs) —
a bad file fails before any connection — then connects to ``--server``,
learns the agents by one discovery round (``--discover-timeout``), checks
the selectors against them, and runs the workflow from here: this client
drives it, there is no central controller (M-3.5). While it runs it prints
one line per event on stdout (started, awarded, retrying, skipped,
COMPLETED/FAILED, with the agent and the time), then the outputs.

``--json`` prints JSON Lines on stdout instead: one object per event (see
``WorkflowEvent.as_dict``: ``{"event": "started", "step": …}``) while it
runs, and last ``{"event": "result", "workflow", "status", "outputs",
"steps", …}``; the last line is the whole answer.

``--set NAME=VALUE`` gives an input: VALUE is read as JSON when it is JSON
(``80``, ``true``, ``[1, 2]``, ``"quoted"``), else taken as a plain string.

``check`` validates FILE (and the ``--set`` inputs) without connecting.

Any failure — unreadable file, invalid YAML or workflow, no agent for a
selector, a step that failed after its retries, the ``--timeout`` — exits 1
with one line on stderr; a run that started prints its events (and in JSON
mode its result) first.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from agoramesh.cli.agents import add_client_options, client_config
from agoramesh.cli.output import clip, emit, emit_json
from agoramesh.config import Environment
from agoramesh.errors import ConfigError, WorkflowError
from agoramesh.protocols.allocation.dispatch import Strategy, client_dispatcher
from agoramesh.protocols.workflow.engine import (
    EventKind,
    WorkflowEvent,
    WorkflowResult,
    run_workflow,
)
from agoramesh.protocols.workflow.workflow import Workflow

__all__ = ("parse_inputs", "register")


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "workflow", help="run or check a workflow (a DAG of steps) from a YAML file",
        description="Run a workflow from this client, or check a workflow file.")
    actions = parser.add_subparsers(dest="workflow_action", metavar="ACTION", required=True)

    run = actions.add_parser("run", help="run a workflow file, showing progress",
                             description="Check FILE, find the agents, and run the workflow "
                                         "from here, one line per event.")
    run.add_argument("file", type=Path, metavar="FILE", help="workflow YAML file")
    _add_set_option(run)
    add_client_options(run)
    run.add_argument("--timeout", type=float, help="seconds for the whole run (default: the "
                                                   "workflow's timeout, else the steps' own)")
    run.add_argument("--discover-timeout", type=float, default=0.5,
                     help="seconds to wait for agents to answer discovery (default 0.5)")
    run.add_argument("--strategy", choices=[s.value for s in Strategy],
                     default=Strategy.AUCTION.value,
                     help="how capability: steps pick an agent (default auction)")
    run.set_defaults(handler=_run)

    check = actions.add_parser("check", help="validate a workflow file without running it",
                               description="Validate FILE offline: fields, selectors, "
                                           "references, cycles, conditions and inputs.")
    check.add_argument("file", type=Path, metavar="FILE", help="workflow YAML file")
    _add_set_option(check)
    check.add_argument("--json", action="store_true", help="machine-readable output")
    check.set_defaults(handler=_check)


def _add_set_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="an input value (JSON if it parses as JSON, else a string); "
                             "repeatable")


def parse_inputs(assignments: list[str]) -> dict[str, Any]:
    """``["spec=fibonacci", "min_score=80"]`` → ``{"spec": "fibonacci", "min_score": 80}``."""
    inputs: dict[str, Any] = {}
    for assignment in assignments:
        name, sep, text = assignment.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"--set needs NAME=VALUE, got {assignment!r}")
        try:
            value: Any = json.loads(text)
        except ValueError:
            value = text
        inputs[name.strip()] = value
    return inputs


async def _check(args: argparse.Namespace, env: Environment) -> int:
    workflow = Workflow.from_file(args.file)
    inputs = workflow.validate(inputs=parse_inputs(args.set))
    stages = workflow.stages()
    if args.json:
        emit_json({"valid": True, "file": str(args.file), "workflow": workflow.name,
                   "stages": stages, "inputs": inputs, "steps": workflow.as_dict()["steps"]})
        return 0
    emit(f"{args.file}: workflow {workflow.name} is valid: "
         f"{_count(len(workflow.steps), 'step')} in {_count(len(stages), 'stage')}")
    for number, names in enumerate(stages, 1):
        described = [name + (f" (when {step.condition.text})" if step.condition else "")
                     for name in names for step in [workflow.step(name)]]
        emit(f"  stage {number}: {', '.join(described)}")
    if inputs:
        emit("inputs: " + ", ".join(f"{name}={clip(value, 60)}" for name, value in inputs.items()))
    return 0


async def _run(args: argparse.Namespace, env: Environment) -> int:
    workflow = Workflow.from_file(args.file)
    inputs = parse_inputs(args.set)
    workflow.validate(inputs=inputs)  # a bad file fails here, before any connection
    if args.timeout is not None and args.timeout <= 0:
        raise ConfigError("--timeout must be positive")
    config = client_config(args, env, "agoramesh-workflow")
    url = config.servers[0]
    async with client_dispatcher(config, discover_timeout=args.discover_timeout) as dispatcher:
        known = len(dispatcher.agents())
        if not known:
            raise WorkflowError(f"no agent answered discovery on {url} within "
                                f"{args.discover_timeout:g}s (is the mesh up? a longer "
                                f"--discover-timeout may help)")
        workflow.validate(dispatcher, inputs)  # before the first line: errors stay one line
        printer = _Printer(workflow, as_json=args.json)
        if not args.json:
            emit(f"workflow {workflow.name}: {_count(len(workflow.steps), 'step')}, "
                 f"{_count(known, 'agent')} known on {url}")
        result = await run_workflow(workflow, dispatcher, inputs=inputs, on_event=printer.event,
                                    strategy=args.strategy, timeout=args.timeout, check=False)
    printer.result(result)
    if result.error is not None:
        raise result.error
    return 0


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


_AUCTION_WORDS = {"award": "awarded", "reauction": "re-auction"}


class _Printer:
    """Turns workflow events into lines: aligned text for people, JSON Lines for machines."""

    def __init__(self, workflow: Workflow, *, as_json: bool) -> None:
        self.as_json = as_json
        self.width = max(len(step.name) for step in workflow.steps)

    def event(self, event: WorkflowEvent) -> None:
        if self.as_json:
            emit_json(event.as_dict())
            return
        agent = event.agent_name or (event.agent_id[:12] + "…" if event.agent_id else "")
        if event.kind is EventKind.STARTED:
            what, rest = "started", event.selector
        elif event.kind is EventKind.PROGRESS:
            what, rest = _AUCTION_WORDS.get(event.detail or "", event.detail or "auction"), agent
        elif event.kind is EventKind.RETRYING:
            what, rest = "retrying", f"attempt {event.attempt}: {clip(event.detail, 100)}"
        elif event.kind is EventKind.SKIPPED:
            what, rest = "SKIPPED", event.detail or ""
        else:
            status = event.status.value if event.status else "FINISHED"
            took = f" in {event.elapsed_ms:.0f} ms" if event.elapsed_ms is not None else ""
            by = f"by {agent}" if agent else ""
            what = status
            rest = f"{by}{took}" + (f": {clip(event.detail, 120)}" if event.detail else "")
        emit(f"{event.at:7.2f}s  {event.step:<{self.width}}  {what:<9}  {rest}".rstrip())

    def result(self, result: WorkflowResult) -> None:
        if self.as_json:
            emit_json({"event": "result", **result.as_dict()})
            return
        emit(f"workflow {result.workflow} {result.status.value} in "
             f"{result.elapsed_ms / 1000:.2f}s")
        if not result.outputs:
            return
        emit("outputs:")
        for name, value in result.outputs.items():
            if isinstance(value, str) and "\n" in value.strip():
                emit(f"  {name}: |")
                for line in value.rstrip("\n").splitlines():
                    emit(f"    {line}".rstrip())
            else:
                text = (value.rstrip("\n") if isinstance(value, str)
                        else json.dumps(value, ensure_ascii=False))
                emit(f"  {name}: {text}")
