"""``POST /api/workflows``: a workflow run for an HTTP client.

The body is ``{workflow, inputs?, strategy?}``: ``workflow`` the workflow as
a JSON object (the YAML file's shape, docs/ARCHITECTURE.md "Workflows"),
``inputs`` its inputs, ``strategy`` how each step finds its agent
(``auction``, the default, or ``direct``…: the dispatcher's strategies). The
workflow is checked before anything runs (400 ``WorkflowInvalid``); the
answer is its result (``{workflow, status, elapsed_ms, inputs, outputs,
steps, error}``), 200 even when a step failed (the request was served). The
run, its DAG and each step's state, is recorded in the API's
:class:`~agoramesh.api.activity.Activity` as it goes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from agoramesh.api.json_http import json_response, read_json
from agoramesh.errors import InvalidRequest
from agoramesh.protocols.allocation.dispatch import Strategy
from agoramesh.protocols.workflow.engine import run_workflow
from agoramesh.protocols.workflow.workflow import Workflow

if TYPE_CHECKING:
    from agoramesh.api.server import HttpApi

__all__ = ("run_workflow_route",)

_FIELDS = frozenset({"workflow", "inputs", "strategy"})


async def run_workflow_route(api: HttpApi, request: web.Request) -> web.Response:
    """Run the posted workflow over ``api``'s dispatcher, within the API's timeout."""
    body = await read_json(request, api.max_body)
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise InvalidRequest(f"unknown field {unknown[0]!r}; fields are workflow, inputs, "
                             f"strategy")
    inputs = body.get("inputs") or {}
    if not isinstance(inputs, dict):
        raise InvalidRequest("inputs must be an object")
    strategy = body.get("strategy", Strategy.AUCTION.value)
    if strategy not in {s.value for s in Strategy}:
        raise InvalidRequest(f"strategy must be one of {', '.join(s.value for s in Strategy)}")
    workflow = Workflow.from_dict(body.get("workflow"))
    workflow.validate(api.dispatcher, inputs)
    run = api.activity.workflow(workflow)
    try:
        async with api.slot(api.timeout):
            result = await run_workflow(workflow, api.dispatcher, inputs=inputs,
                                        on_event=run.workflow_event, strategy=strategy,
                                        timeout=min(api.timeout, workflow.timeout or api.timeout),
                                        check=False)
    except BaseException as exc:
        run.fail(exc)
        raise
    run.finish(api.activity.workflow_outcome(result), ok=result.ok,
               error="" if result.error is None else str(result.error))
    return json_response(result.as_dict())
