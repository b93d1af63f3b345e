"""``POST /api/collaborate``: a collaboration run for an HTTP client.

The request is :class:`~agoramesh.protocols.collaboration.request.CollaborationRequest`
(``{mode, topic, agents, rounds, requirements}``, checked once); the answer is
the mode's result from :class:`~agoramesh.protocols.collaboration.collaboration.Collaboration`,
e.g. ``{debate_history, consensus, …}``. The run is recorded in the API's
:class:`~agoramesh.api.activity.Activity` as it goes (a debate's transcript, turn by turn).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from agoramesh.api.json_http import json_response, read_json
from agoramesh.protocols.collaboration.collaboration import Collaboration
from agoramesh.protocols.collaboration.request import CollaborationRequest

if TYPE_CHECKING:
    from agoramesh.api.server import HttpApi

__all__ = ("collaborate",)


async def collaborate(api: HttpApi, request: web.Request) -> web.Response:
    """Run the requested collaboration over ``api``'s dispatcher, within its timeouts."""
    collaboration_request = CollaborationRequest.from_dict(
        await read_json(request, api.max_body))
    run = api.activity.collaboration(collaboration_request.mode.value,
                                     collaboration_request.topic or "")
    collaboration = Collaboration(api.dispatcher, timeout=api.timeout,
                                  task_timeout=api.task_timeout, on_event=run.collaboration_event)
    try:
        async with api.slot(api.timeout):
            result = await collaboration.run(collaboration_request)
    except BaseException as exc:
        run.fail(exc)
        raise
    run.finish({key: result[key] for key in ("consensus", "winner", "summary")
                if key in result})
    return json_response(result)
