"""The five collaboration modes end to end on offline agents over a real nats-server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from agoramesh.agent import AgentNode
from agoramesh.bus.server import EmbeddedServer
from agoramesh.errors import (
    BackendUnavailable,
    BusTimeout,
    InvalidCollaboration,
    NoBidders,
    NoResponders,
)
from agoramesh.nodes.backends.offline import OfflineBackend
from agoramesh.nodes.task import StreamItem, Task
from agoramesh.protocols.allocation.dispatch import Dispatcher
from agoramesh.protocols.collaboration.collaboration import Collaboration
from agoramesh.protocols.collaboration.request import CollaborationMode, CollaborationRequest
from agoramesh.testing import wait_until

pytestmark = pytest.mark.integration

DEBATERS = ["text.debate", "vote"]
ANALYST = ["text.summarize", "echo", "math.evaluate"]
TEXTS = [
    "Solar panels turn sunlight into power. Panels on roofs cut bills. Storage keeps power "
    "for the night.",
    "Wind turbines turn wind into power. Offshore wind is strong and steady. Turbines need "
    "care at sea.",
    "Batteries store power from panels and turbines. Cheaper batteries make storage common.",
]


class _Broken(OfflineBackend):
    """Fails every debate turn and ballot; the other skills work."""

    async def execute(self, task: Task, context: dict[str, Any] | None = None
                      ) -> AsyncIterator[StreamItem]:
        if task.capability in ("text.debate", "vote"):
            raise BackendUnavailable("the model is down")
        async for item in super().execute(task, context):
            yield item


@dataclass
class Mesh:
    url: str
    driver: AgentNode
    dispatcher: Dispatcher
    make: Callable[..., Awaitable[AgentNode]]

    async def add(self, name: str, capabilities: list[str], **settings: Any) -> AgentNode:
        node = await self.make(self.url, name, capabilities, **settings)
        await wait_until(lambda: node.agent_id in self.driver.directory, timeout=5)
        return node


@pytest.fixture
def mesh(nats_server: EmbeddedServer, agent_factory: Any, driver: AgentNode) -> Mesh:
    """``analyst`` drives; ``pro`` and ``con`` debate and vote (conftest.py)."""
    return Mesh(nats_server.client_url, driver, driver.dispatcher, agent_factory)


async def test_debate_rounds_then_consensus(mesh: Mesh) -> None:
    events: list[dict[str, Any]] = []
    collaboration = Collaboration(mesh.dispatcher, timeout=10, on_event=events.append)
    result = await collaboration.debate("remote work", ["pro", "con"], rounds=3)

    history = result["debate_history"]
    assert len(history) == 3 * 2 and result["failed"] == []
    assert [(e["round"], e["agent"], e["position"]) for e in history[:2]] == [
        (1, "pro", "for"), (1, "con", "against")]
    assert all(isinstance(e["argument"], str) and 0 <= e["confidence"] <= 1 for e in history)
    assert "remote work" in history[0]["argument"].lower()
    consensus = result["consensus"]
    assert consensus["position"] in ("for", "against")
    assert sum(consensus["votes"].values()) == 2 and consensus["abstained"] == []
    assert consensus["decided_by"] in ("majority", "confidence", "order")
    assert consensus["summary"].startswith(consensus["position"])
    kinds = [event["event"] for event in events]
    assert kinds[0] == "started" and kinds[-1] == "finished"
    assert kinds.count("argument") == 6 and kinds.count("vote") == 2
    assert all(event["mode"] == "debate" for event in events)
    # Deterministic agents: the same debate gives the same arguments and consensus.
    again = await collaboration.debate("remote work", ["pro", "con"], rounds=3)
    assert [e["argument"] for e in again["debate_history"]] == [e["argument"] for e in history]
    assert again["consensus"]["position"] == consensus["position"]


async def test_debate_defaults_positions_and_a_broken_debater(mesh: Mesh) -> None:
    await mesh.add("mute", DEBATERS, backend=_Broken())
    result = await Collaboration(mesh.dispatcher, timeout=10).run(
        {"mode": "debate", "topic": "four-day weeks", "rounds": 2,
         "requirements": {"positions": {"con": "against", "pro": "for", "mute": "for"}}})
    # Everyone offering text.debate takes part, in name order: con, mute, pro.
    assert [p["agent"] for p in result["participants"]] == ["con", "mute", "pro"]
    assert len(result["debate_history"]) == 2 * 2
    assert {entry["agent"] for entry in result["debate_history"]} == {"con", "pro"}
    assert [(f["round"], f["agent"]) for f in result["failed"]] == [(1, "mute"), (2, "mute")]
    assert result["failed"][0]["error"]["type"] == "BackendUnavailable"
    consensus = result["consensus"]
    assert [a["agent"] for a in consensus["abstained"]] == ["mute"]
    assert sum(consensus["votes"].values()) == 2


async def test_voting_tally_and_winner(mesh: Mesh) -> None:
    events: list[dict[str, Any]] = []
    result = await Collaboration(mesh.dispatcher, on_event=events.append).run(
        {"mode": "voting", "topic": "Which language for the parser: rust or python?",
         "agents": ["pro", "con"], "requirements": {"options": ["rust parser", "python parser",
                                                                "cobol"]}})
    assert len(result["votes"]) == 2 and result["abstained"] == []
    assert sum(result["tally"].values()) == 2
    assert list(result["tally"]) == ["rust parser", "python parser", "cobol"]
    assert result["tally"]["cobol"] == 0
    assert result["winner"] == max(result["tally"], key=lambda option: result["tally"][option])
    assert [e["event"] for e in events].count("vote") == 2


async def test_voting_counts_a_failed_ballot_as_abstention(mesh: Mesh) -> None:
    mute = await mesh.add("mute", DEBATERS, backend=_Broken())
    result = await Collaboration(mesh.dispatcher).voting("tea or coffee", ["tea", "coffee"])
    assert {ballot["agent"] for ballot in result["votes"]} == {"pro", "con"}
    assert result["abstained"] == [{"agent": "mute", "agent_id": mute.agent_id, "error": {
        "type": "BackendUnavailable", "message": "the model is down"}}]
    assert result["winner"] in ("tea", "coffee")


async def test_parallel_same_task_to_several_agents(mesh: Mesh) -> None:
    await mesh.add("analyst2", ANALYST)
    collaboration = Collaboration(mesh.dispatcher)
    result = await collaboration.parallel("math.evaluate", {"expression": "6 * 7"})
    assert sorted(r["agent"] for r in result["results"]) == ["analyst", "analyst2"]
    assert all(r["output"] == {"value": 42} for r in result["results"])
    assert result["failed"] == []

    counted = await collaboration.run({"mode": "parallel", "agents": 1, "topic": "hi",
                                       "requirements": {"capability": "echo",
                                                        "parameters": {"text": "${topic}!"}}})
    assert len(counted["results"]) == 1
    assert counted["results"][0]["output"] == {"echo": {"text": "hi!"}}

    broken = await mesh.add("mute", ["text.debate"], backend=_Broken())
    mixed = await collaboration.parallel("text.debate", {"topic": "x"}, ["pro", broken.agent_id])
    assert [r["agent"] for r in mixed["results"]] == ["pro"]
    assert [(f["agent"], f["status"]) for f in mixed["failed"]] == [("mute", "FAILED")]


async def test_map_reduce_summary_of_summaries(mesh: Mesh) -> None:
    events: list[dict[str, Any]] = []
    result = await Collaboration(mesh.dispatcher, concurrency=2, on_event=events.append).run(
        {"mode": "map-reduce", "requirements": {
            "items": [*TEXTS, {"text": "Grids move power. Smart grids balance supply.",
                               "max_sentences": 1}],
            "map_parameters": {"max_sentences": 2}, "reduce_parameters": {"max_sentences": 2}}})
    assert result["mode"] == "map_reduce"
    assert [entry["index"] for entry in result["map"]] == [0, 1, 2, 3]
    assert len(result["map"][3]["output"]["sentences"]) == 1  # the item's own max_sentences
    assert result["failed"] == []
    assert result["reduce"]["status"] == "COMPLETED"
    assert len(result["output"]["sentences"]) == 2
    assert result["output"]["summary"]
    phases = [event.get("phase") for event in events if event["event"] == "step"]
    assert phases.count("map") == 4 and phases[-1] == "reduce"


async def test_map_reduce_records_bad_items(mesh: Mesh) -> None:
    result = await Collaboration(mesh.dispatcher).map_reduce(
        ["1 + 1", "2 * 3", "1 / 0"], map_capability="math.evaluate", item_field="expression",
        collect="value", reduce_capability="echo", reduce_field="values")
    assert [entry["output"] for entry in result["map"]] == [{"value": 2}, {"value": 6}]
    assert [(f["index"], f["error"]["type"]) for f in result["failed"]] == [(2, "InvalidInput")]
    assert result["output"] == {"echo": {"values": [2, 6]}}


async def test_sequential_feeds_each_output_to_the_next(mesh: Mesh) -> None:
    result = await Collaboration(mesh.dispatcher).run({
        "mode": "sequential", "topic": " ".join(TEXTS),
        "requirements": {"stages": [
            {"name": "short", "capability": "text.summarize",
             "parameters": {"text": "${topic}", "max_sentences": 2}},
            {"capability": "text.summarize", "agent": "analyst",
             "parameters": {"text": "${previous.output.summary}", "max_sentences": 1}},
            {"capability": "echo", "parameters": {"first": "${steps.short.output.sentences.0}",
                                                  "note": "final: ${previous.output.summary}"}},
        ]}})
    assert result["completed"] is True
    steps = result["steps"]
    assert [(s["stage"], s["name"], s["agent"]) for s in steps] == [
        (1, "short", "analyst"), (2, "2", "analyst"), (3, "3", "analyst")]
    assert len(steps[0]["output"]["sentences"]) == 2
    assert steps[1]["output"]["sentences"][0] in steps[0]["output"]["sentences"]
    echoed = result["output"]["echo"]
    assert echoed["first"] == steps[0]["output"]["sentences"][0]
    assert echoed["note"] == "final: " + steps[1]["output"]["summary"]


async def test_sequential_stops_at_a_failed_stage(mesh: Mesh) -> None:
    result = await Collaboration(mesh.dispatcher).sequential([
        {"capability": "math.evaluate", "parameters": {"expression": "1 / 0"}},
        {"capability": "echo", "parameters": {"v": "${previous.output.value}"}}])
    assert result["completed"] is False and result["output"] is None
    assert len(result["steps"]) == 1 and result["steps"][0]["error"]["type"] == "InvalidInput"


async def test_references_keep_types_embed_compact_json_and_escape(mesh: Mesh) -> None:
    result = await Collaboration(mesh.dispatcher).sequential([
        {"name": "calc", "capability": "math.evaluate", "parameters": {"expression": "${topic}"}},
        {"name": "data", "capability": "echo",
         "parameters": {"list": [1, "é"], "object": {"ok": True, "none": None}}},
        {"capability": "echo", "parameters": {
            "value": "${steps.calc.output.value}", "list": "${previous.output.echo.list}",
            "object": "${ previous.output.echo.object }",
            "embedded": "${steps.calc.output.value}: ${previous.output.echo.list} "
                        "${previous.output.echo.object}",
            "escaped": "$${topic} is ${topic}", "only_escaped": "$${steps.calc.output}"}},
    ], topic="6 * 7")
    assert result["completed"] is True
    assert result["output"]["echo"] == {
        "value": 42, "list": [1, "é"], "object": {"ok": True, "none": None},
        "embedded": '42: [1,"é"] {"ok":true,"none":null}',
        "escaped": "${topic} is 6 * 7", "only_escaped": "${steps.calc.output}"}


async def test_a_field_missing_from_an_output_fails_that_stage(mesh: Mesh) -> None:
    result = await Collaboration(mesh.dispatcher).sequential([
        {"capability": "math.evaluate", "parameters": {"expression": "1 + 1"}},
        {"capability": "echo", "parameters": {"v": "got ${previous.output.valeu}"}},
        {"capability": "echo", "parameters": {}}])
    assert result["completed"] is False and len(result["steps"]) == 2
    assert result["steps"][1]["status"] == "FAILED"
    assert result["steps"][1]["error"] == {
        "type": "BackendBadResponse",
        "message": "${previous.output.valeu}: no field 'valeu' in output (fields: value)"}


_USAGE = "use ${topic}, ${previous.output[.FIELD…]} or ${steps.NAME.output[.FIELD…]}"


def _parallel(parameters: dict[str, Any], topic: str | None = None) -> dict[str, Any]:
    return {"mode": "parallel", "topic": topic,
            "requirements": {"capability": "echo", "parameters": parameters}}


def _stages(*parameters: dict[str, Any]) -> dict[str, Any]:
    return {"mode": "sequential", "topic": "t", "requirements": {"stages": [
        {"name": f"s{number}", "capability": "echo", "parameters": given}
        for number, given in enumerate(parameters, 1)]}}


@pytest.mark.parametrize(("request_body", "message"), [
    (_parallel({"text": "about ${topic"}, "x"),
     "parameters: unterminated or nested reference in 'about ${topic'"),
    (_parallel({"text": "${topic.${x}}"}, "x"),
     "parameters: unterminated or nested reference in '${topic.${x}}'"),
    (_parallel({"text": "${topics}"}, "x"), f"parameters: bad reference ${{topics}}: {_USAGE}"),
    (_parallel({"text": ["${topic.0}"]}, "x"),
     f"parameters: bad reference ${{topic.0}}: {_USAGE}"),
    (_parallel({"text": "${topic}"}), "parameters: ${topic} names nothing: there is no topic"),
    ({"mode": "map-reduce", "requirements": {"items": ["a"], "reduce_parameters": {
        "x": "${previous.output}"}}},
     "reduce_parameters: ${previous.output} names nothing: there is no earlier stage"),
    (_stages({"x": "${steps.s2.output}"}, {}),
     "stages[1].parameters: ${steps.s2.output} names nothing: there is no earlier stage 's2'"),
    (_stages({}, {"x": "${steps.s1.outptu}"}),
     f"stages[2].parameters: bad reference ${{steps.s1.outptu}}: {_USAGE}"),
    (_stages({}, {"x": "${previous.output"}),
     "stages[2].parameters: unterminated or nested reference in '${previous.output'"),
])
def test_reference_errors_are_exact_single_lines(request_body: dict[str, Any],
                                                 message: str) -> None:
    with pytest.raises(InvalidCollaboration) as caught:
        CollaborationRequest.from_dict(request_body)
    assert str(caught.value) == message


def test_escaped_references_need_no_topic() -> None:
    request = CollaborationRequest.from_dict(_parallel({"text": "$${topic} costs $${price}"}))
    assert request.requirements == {"capability": "echo",
                                    "parameters": {"text": "$${topic} costs $${price}"}}


@pytest.mark.parametrize(("request_body", "message"), [
    ([], "must be an object"),
    ({"topic": "x"}, "'mode' is required"),
    ({"mode": "brainstorm", "topic": "x"}, "unknown mode 'brainstorm'"),
    ({"mode": "debate"}, "'topic' is required"),
    ({"mode": "debate", "topic": "x", "rounds": 0}, "'rounds' must be an integer"),
    ({"mode": "debate", "topic": "x", "rounds": True}, "'rounds' must be an integer"),
    ({"mode": "debate", "topic": "x", "agents": "pro,con"}, "'agents' must be a list"),
    ({"mode": "debate", "topic": "x", "color": "red"}, "unknown request field"),
    ({"mode": "voting", "topic": "x", "requirements": {"options": ["a"]}}, "'options'"),
    ({"mode": "voting", "topic": "x", "rounds": 2, "requirements": {"options": ["a", "b"]}},
     "debate only"),
    ({"mode": "parallel", "requirements": {}}, "requirements.capability"),
    ({"mode": "parallel", "requirements": {"capability": "bad cap"}}, "invalid capability"),
    ({"mode": "map-reduce", "requirements": {"items": []}}, "'items'"),
    ({"mode": "map-reduce", "requirements": {"items": ["a"], "speed": 1}}, "unknown map_reduce"),
    ({"mode": "sequential", "requirements": {"stages": [
        {"capability": "echo", "parameters": {"x": "${previous.output}"}}]}}, "names nothing"),
    ({"mode": "sequential", "requirements": {"stages": [{"capability": "echo", "x": 1}]}},
     "unknown stages"),
    ({"mode": "sequential", "agents": ["pro"], "requirements": {"stages": []}}, "per stage"),
    ({"mode": "parallel", "requirements": {"capability": "echo", "parameters": []}},
     "'parameters' must be an object"),
])
def test_requests_are_checked_strictly(request_body: object, message: str) -> None:
    with pytest.raises(InvalidCollaboration, match=message) as caught:
        CollaborationRequest.from_dict(request_body)
    assert "\n" not in str(caught.value)


def test_modes_accept_both_spellings() -> None:
    assert CollaborationMode.parse("map-reduce") is CollaborationMode.MAP_REDUCE
    assert CollaborationMode.parse("MAP_REDUCE") is CollaborationMode.MAP_REDUCE
    request = CollaborationRequest.from_dict({"mode": "voting", "topic": "q", "requirements": {
        "options": ["a", "b"]}})
    assert request.arguments() == {"question": "q", "options": ["a", "b"], "agents": None}


def test_a_request_made_directly_is_checked_once_and_planned() -> None:
    with pytest.raises(InvalidCollaboration, match=r"^'rounds' must be an integer from 1 to 20$"):
        CollaborationRequest(mode=CollaborationMode.DEBATE, topic="x", rounds=0)
    with pytest.raises(InvalidCollaboration, match=r"^'topic' is required for voting$"):
        CollaborationRequest(mode=CollaborationMode.VOTING, requirements={"options": ["a", "b"]})
    request = CollaborationRequest(mode=CollaborationMode.MAP_REDUCE, agents=(" pro ",),
                                   requirements={"items": ["a"], "collect": None})
    assert request.agents == ("pro",) and request.plan.agents == ("pro",)
    assert request == CollaborationRequest.from_dict({"mode": "map-reduce", "agents": ["pro"],
                                                      "requirements": {"items": ["a"],
                                                                       "collect": None}})


async def test_mode_methods_are_checked_by_the_request(mesh: Mesh) -> None:
    collaboration = Collaboration(mesh.dispatcher)
    with pytest.raises(InvalidCollaboration, match=r"^'rounds' must be an integer from 1 to 20$"):
        await collaboration.debate("x", ["pro", "con"], rounds=21)
    with pytest.raises(InvalidCollaboration, match=r"^'options' must be a list of 2-100 distinct"):
        await collaboration.voting("q", ["a", "a"])
    with pytest.raises(InvalidCollaboration, match=r"^'capability': invalid capability"):
        await collaboration.parallel("bad cap", {})
    with pytest.raises(InvalidCollaboration, match=r"^'items' must be a list of 1-1000 items$"):
        await collaboration.map_reduce([])
    with pytest.raises(InvalidCollaboration, match=r"^stages\[1\]\.parameters: bad reference"):
        await collaboration.sequential([{"capability": "echo", "parameters": {"v": "${x}"}}])
    # What only the mesh knows is still checked by the mode.
    with pytest.raises(InvalidCollaboration, match=r"^'positions' names no participant: 'ghost'$"):
        await collaboration.debate("x", ["pro", "con"], positions={"ghost": "for"})


async def test_unknown_agents_and_missing_capabilities(mesh: Mesh) -> None:
    collaboration = Collaboration(mesh.dispatcher)
    with pytest.raises(InvalidCollaboration, match="no known agent matches 'ghost'"):
        await collaboration.debate("x", ["pro", "ghost"])
    with pytest.raises(InvalidCollaboration, match=r"'analyst' does not offer text\.debate"):
        await collaboration.debate("x", ["pro", "analyst"])
    with pytest.raises(InvalidCollaboration, match="at least 2"):
        await collaboration.debate("x", ["pro"])
    with pytest.raises(NoResponders, match=r"code\.run\.python"):
        await collaboration.parallel("code.run.python", {"code": "print(1)"})
    with pytest.raises((NoResponders, NoBidders)):  # unnamed work: auction or direct
        await collaboration.sequential([{"capability": "code.run.python",
                                         "parameters": {"code": "print(1)"}}])


async def test_slow_agents_are_bounded(mesh: Mesh, sloth_backend: OfflineBackend) -> None:
    await mesh.add("sloth", DEBATERS, backend=sloth_backend, stop_grace=0.1)
    # Each task waits at most task_timeout: the slow debater misses its turn and its vote.
    patient = Collaboration(mesh.dispatcher, timeout=5, task_timeout=0.2)
    result = await patient.debate("x", ["pro", "sloth"], rounds=1)
    assert [entry["agent"] for entry in result["debate_history"]] == ["pro"]
    assert [(f["agent"], f["error"]["type"]) for f in result["failed"]] == [
        ("sloth", "BusTimeout")]
    assert [a["agent"] for a in result["consensus"]["abstained"]] == ["sloth"]
    # The whole collaboration waits at most timeout.
    hasty = Collaboration(mesh.dispatcher, timeout=0.2)
    with pytest.raises(BusTimeout, match=r"debate collaboration did not finish within 0\.2s"):
        await hasty.debate("x", ["pro", "sloth"])


async def test_a_failing_event_handler_does_not_stop_the_work(mesh: Mesh) -> None:
    def explode(event: dict[str, Any]) -> None:
        raise RuntimeError("display broke")

    result = await Collaboration(mesh.dispatcher, on_event=explode).voting(
        "a or b", ["a", "b"], ["pro"])
    assert len(result["votes"]) == 1
