"""The fixed ``mesh_*`` tools through the SDK's client: durable jobs and their results,
collaborations, workflows and the agent list, against agents on a real nats-server."""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest
from mcp import types
from mcp_support import Agents, http_client
from nats.aio.client import Client as NatsClient

from agoramesh.bus.envelope import parse
from agoramesh.testing import wait_until
from agoramesh.testing.raw import flush

pytestmark = pytest.mark.integration

WORKFLOW = {"name": "add-then-echo", "inputs": {"expression": "2+3"}, "steps": [
    {"name": "add", "agent": "capability:math.evaluate",
     "parameters": {"expression": "${inputs.expression}"}},
    {"name": "say", "agent": "name:alpha", "capability": "echo",
     "parameters": {"value": "${steps.add.output.value}"}}],
    "outputs": {"said": "${steps.say.output.echo.value}"}}

WORKFLOW_YAML = """
name: one-step
steps:
  - name: only
    agent: capability:math.evaluate
    parameters: {expression: "${inputs.expression}"}
inputs:
  expression: null
"""


def text(result: types.CallToolResult) -> str:
    return "".join(block.text for block in result.content if isinstance(block, types.TextContent))


async def test_durable_jobs_and_their_results(agents: Agents) -> None:
    async with http_client(agents.url) as client:
        done = await client.call_tool("mesh_submit", {
            "capability": "math.evaluate", "parameters": {"expression": "6*7"}, "durable": True})
        assert not done.is_error, text(done)
        assert done.structured_content["result"] == {"value": 42}

        pending = await client.call_tool("mesh_submit", {
            "capability": "echo", "parameters": {"text": "later"}, "task_id": "job-1",
            "wait": False})
        assert json.loads(text(pending)) == {"task_id": "job-1", "status": "PENDING",
                                             "duplicate": False}
        read = await client.call_tool("mesh_result", {"task_id": "job-1", "wait": 10})
        assert not read.is_error, text(read)
        assert read.structured_content["result"] == {"echo": {"text": "later"}}

        missing = await client.call_tool("mesh_result", {"task_id": "never-submitted"})
        assert missing.is_error and text(missing).startswith(
            "JobNotFound: no result for task never-submitted yet")
        mixed = await client.call_tool("mesh_submit", {"capability": "echo", "durable": True,
                                                        "agent": "alpha"})
        assert mixed.is_error and "do not apply to a durable job" in text(mixed)
        bad_id = await client.call_tool("mesh_result", {"task_id": "no spaces"})
        assert bad_id.is_error and text(bad_id).startswith("InvalidRequest: mesh_result: "
                                                           "arguments.task_id: ")


async def test_mesh_submit_names_a_callback(agents: Agents) -> None:
    """The result is also published on the callback, as `nats sub` sees it; a subject no
    callback may name is a tool error."""
    listener = NatsClient()
    await listener.connect(agents.url, allow_reconnect=False)
    try:
        heard = await listener.subscribe("results.mcp.>")
        await flush(listener)
        async with http_client(agents.url) as client:
            for route, extra in (("direct", {"strategy": "direct"}), ("durable",
                                                                     {"durable": True})):
                done = await client.call_tool("mesh_submit", {
                    "capability": "echo", "parameters": {"text": route},
                    "callback": f"results.mcp.{route}", **extra})
                assert not done.is_error, text(done)
                published = parse((await heard.next_msg(timeout=5)).data)
                assert published.subject == f"results.mcp.{route}"
                assert published.body["result"] == {"echo": {"text": route}}
                assert published.body["task_id"] == done.structured_content["task_id"]
            bad = await client.call_tool("mesh_submit", {"capability": "echo",
                                                         "callback": "results.*"})
            assert bad.is_error and text(bad).startswith(
                "InvalidRequest: mesh_submit: arguments.callback: callback 'results.*'")
    finally:
        await listener.close()


async def test_collaborations_and_workflows(agents: Agents) -> None:
    notes: list[str] = []

    async def progress(done: float, total: float | None, message: str | None) -> None:
        notes.append(message or "")

    async with http_client(agents.url) as client:
        parallel = await client.call_tool("mesh_collaborate", {
            "mode": "parallel", "agents": None,
            "requirements": {"capability": "echo", "parameters": {"text": "all"}}},
            progress_callback=progress)
        assert not parallel.is_error, text(parallel)
        assert [step["agent"] for step in parallel.structured_content["results"]] == ["alpha"]
        assert notes and notes[0].startswith("started: ")

        run = await client.call_tool("mesh_workflow", {"workflow": WORKFLOW})
        assert not run.is_error, text(run)
        assert json.loads(text(run)) == {"said": 5}
        assert run.structured_content["status"] == "COMPLETED"
        assert run.structured_content["steps"]["say"]["agent_name"] == "alpha"

        notes.clear()
        yaml_run = await client.call_tool("mesh_workflow", {
            "workflow": WORKFLOW_YAML, "inputs": {"expression": "10-1"}},
            progress_callback=progress)
        assert json.loads(text(yaml_run)) == {"only": {"value": 9}}
        assert any(note.startswith("only: started") for note in notes)

        broken = await client.call_tool("mesh_workflow", {"workflow": {
            "name": "broken", "steps": [{"name": "a", "agent": "capability:echo",
                                         "parameters": {"x": "${steps.nowhere.output}"}}]}})
        assert broken.is_error and text(broken).startswith("WorkflowInvalid: ")
        failing = await client.call_tool("mesh_workflow", {"workflow": {
            "name": "failing", "steps": [{"name": "a", "agent": "capability:math.evaluate",
                                          "parameters": {"expression": "1/0"}}]}})
        assert failing.is_error and text(failing).startswith("StepFailed: ")
        assert failing.structured_content["status"] == "FAILED"
        vote = await client.call_tool("mesh_collaborate", {"mode": "voting"})
        assert vote.is_error and text(vote).startswith("InvalidCollaboration: ")


async def test_agent_list(agents: Agents) -> None:
    async with http_client(agents.url) as client:
        listed = await client.call_tool("mesh_agents", {})
        agents_listed = listed.structured_content["agents"]
        assert [agent["name"] for agent in agents_listed] == ["alpha", "plodder"]
        assert agents_listed[0]["capabilities"][0] == {
            "name": "echo", "description": "Return the parameters as given."}
        assert agents_listed[0]["status"]["state"] == "ready"
        assert json.loads(text(listed)) == listed.structured_content
        for query, expected in (({"type": "plodder"}, ["plodder"]), ({"name": "alpha"}, ["alpha"]),
                                ({"capability": "math.>", "type": "plodder"}, [])):
            result = await client.call_tool("mesh_agents", query)
            assert [agent["name"] for agent in result.structured_content["agents"]] == expected
        wrong = await client.call_tool("mesh_agents", {"capability": "a b"})
        assert wrong.is_error and text(wrong).startswith("SubjectError: ")
        extra = await client.call_tool("mesh_agents", {"limit": 1})
        assert extra.is_error and "Additional properties are not allowed" in text(extra)


@pytest.mark.parametrize("route", [{"strategy": "direct"}, {"agent": "plodder"},
                                   {"durable": True}])
async def test_a_cancelled_call_cancels_the_task_on_its_route(agents: Agents,
                                                              route: dict[str, Any]) -> None:
    async with http_client(agents.url) as client:
        with anyio.move_on_after(1.5):
            await client.call_tool("mesh_submit", {
                "capability": "slow.steps", "parameters": {"steps": 600, "pause": 0.1}, **route})
        backend = agents.backend
        await wait_until(lambda: len(backend.cancelled) == 1, timeout=15)
        assert backend.cancelled == backend.started
        if route.get("durable"):
            [task_id] = backend.started
            result = await client.call_tool("mesh_result", {"task_id": task_id})
            assert result.is_error and text(result).startswith("TaskCancelled: job ")
