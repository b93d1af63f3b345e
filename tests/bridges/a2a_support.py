"""An A2A agent written with a2a-sdk alone, served on loopback, for the A2A bridge's tests."""

from __future__ import annotations

import asyncio
from typing import Any

from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentSkill,
    Part,
    Task,
    TaskState,
    TaskStatus,
)
from starlette.applications import Starlette

from agoramesh.bridges.asgi import AsgiSite
from agoramesh.nodes.backends.a2a import output_of, to_python, to_value

__all__ = ("SKILLS", "TOKEN", "ToolAgent", "tool_agent_site")

#: The A2A bridge's bearer token in the tests.
TOKEN = "a2a-test-token-0123456789"

#: The agent's skills: (id, description).
SKILLS = (("echo", "says back what it was given"), ("tool.fail", "always fails"),
          ("slow", "streams a tick every 50 ms, 40 of them"), ("Say hello!", "greets"))


class ToolAgent(AgentExecutor):
    """``echo`` answers ``{"echo": <input>}``; ``tool.fail`` fails with "the tool broke";
    ``slow`` streams ticks for two seconds; ``Say hello!`` greets in a status message.
    ``seen`` holds each message's (skill, input); ``cancelled`` the tasks cancelled."""

    def __init__(self) -> None:
        self.seen: list[tuple[str | None, Any]] = []
        self.cancelled: list[str] = []

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        assert context.message is not None and context.task_id and context.context_id
        metadata = to_python(context.message.metadata)
        skill = metadata.get("skill")
        given = output_of(context.message.parts)
        self.seen.append((skill, given))
        updater = TaskUpdater(event_queue, context.task_id, context.context_id)
        await event_queue.enqueue_event(Task(
            id=context.task_id, context_id=context.context_id,
            status=TaskStatus(state=TaskState.TASK_STATE_SUBMITTED), history=[context.message]))
        if skill == "tool.fail":
            await updater.failed(updater.new_agent_message([Part(text="the tool broke")]))
            return
        if skill == "slow":
            for tick in range(40):
                await updater.add_artifact([Part(text=f"tick {tick}\n")], artifact_id="ticks",
                                           name="ticks", append=tick > 0)
                await asyncio.sleep(0.05)
        if skill == "Say hello!":
            await updater.complete(updater.new_agent_message([Part(text="hello")]))
            return
        await updater.add_artifact([Part(data=to_value({"echo": given}))], name="echo")
        await updater.complete()

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        assert context.task_id and context.context_id
        self.cancelled.append(context.task_id)
        await TaskUpdater(event_queue, context.task_id, context.context_id).cancel()


def tool_agent_site(agent: ToolAgent, *, name: str = "tools", streaming: bool = True,
                    skills: bool = True) -> AsgiSite:
    """``agent`` served by a2a-sdk's own routes (card, JSON-RPC 1.0 and 0.3 at ``/``) on a
    free loopback port; its card names the URL it is reached at (and :data:`SKILLS`,
    unless ``skills`` is false)."""
    card = AgentCard(
        name=name, description="an A2A agent of the tests", version="1.0",
        capabilities=AgentCapabilities(streaming=streaming),
        default_input_modes=["text/plain", "application/json"],
        default_output_modes=["text/plain", "application/json"],
        supported_interfaces=[AgentInterface(url="http://placeholder/",
                                             protocol_binding="JSONRPC",
                                             protocol_version="1.0")],
        skills=[AgentSkill(id=skill, name=skill, description=text, tags=["test"])
                for skill, text in (SKILLS if skills else ())])
    site: AsgiSite

    async def located(served: AgentCard) -> AgentCard:
        copy = AgentCard()
        copy.CopyFrom(served)
        copy.supported_interfaces[0].url = site.url + "/"
        return copy

    handler = DefaultRequestHandler(agent_executor=agent, task_store=InMemoryTaskStore(),
                                    agent_card=card)
    app = Starlette(routes=[*create_agent_card_routes(card, card_modifier=located),
                            *create_jsonrpc_routes(handler, "/", enable_v0_3_compat=True)])
    site = AsgiSite(app, serves="the test A2A agent")
    return site

