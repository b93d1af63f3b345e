"""One trace across three processes (issue 19, must-demonstrate 2).

A client (this process), an auctioneer node and a winner node (``agoramesh node``
processes, each keeping its spans in the SDK's in-memory exporter and writing them
out at exit, AGORAMESH_TRACE_CAPTURE): the client's submit, the auctioneer's
auction, cfp and award, the winner's bid, award, execution and result, joined by
trace id in the right parent/child order. A plain-JSON request with a
``traceparent`` header (what ``nats req -H traceparent:…`` sends) joins its caller's trace.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NatsClient

from agoramesh.bus import Bus, Identity
from agoramesh.config import BusConfig
from agoramesh.nodes.client import submit_task
from agoramesh.nodes.task import Task, TaskResult, TaskStatus
from agoramesh.testing import NodeProcess
from agoramesh.testing.tracing import SpanRecord, captured, children, read_spans

pytestmark = pytest.mark.e2e

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


def start_nodes(tmp_path: Path, *auctioneer_tracing: str, **auctioneer_env: str
                ) -> Iterator[dict[str, NodeProcess]]:
    """The auctioneer (a seed offering only ``echo``: it auctions, never bids; tracing as
    given) and the winner (a leaf of its server, offering math.evaluate, capturing its spans)."""
    started: dict[str, NodeProcess] = {}
    common = ("--heartbeat", "0.2", "--no-jetstream")
    try:
        # It always calls for proposals: with one agent known it would award it directly
        # (no cfp, no bid: tests/observability/test_tracing.py has that trace).
        started["auctioneer"] = NodeProcess(
            tmp_path / "auctioneer", "--name", "auctioneer", "--capability", "echo", *common,
            "--no-direct-award", *auctioneer_tracing, env=auctioneer_env)
        started["winner"] = NodeProcess(
            tmp_path / "winner", "--name", "winner", "--capability", "math.evaluate", *common,
            "--leaf", started["auctioneer"].ready["leaf"],
            env={"AGORAMESH_TRACE_CAPTURE": str(tmp_path / "winner.jsonl")})
        yield started
    finally:
        for node in started.values():
            node.reap()


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[dict[str, NodeProcess]]:
    """Both nodes capturing their spans."""
    yield from start_nodes(tmp_path, AGORAMESH_TRACE_CAPTURE=str(tmp_path / "auctioneer.jsonl"))


@pytest.fixture
def transparent(tmp_path: Path) -> Iterator[dict[str, NodeProcess]]:
    """The auctioneer with ``--propagate-traces``: it records nothing."""
    yield from start_nodes(tmp_path, "--propagate-traces")


def one(spans: list[SpanRecord]) -> SpanRecord:
    assert len(spans) == 1, spans
    return spans[0]


async def two_tasks(nodes: dict[str, NodeProcess]) -> tuple[TaskResult, list[SpanRecord]]:
    """A traced client's auction of 6*7 and a plain-JSON caller's of 2+3 (its traceparent
    CALLER_SPAN's), both answered; then the nodes stopped (they write their spans as they
    end). The client's result and spans."""
    # The client talks to the auctioneer's server, which gives a queue group's message to a
    # member of its own before one behind a leafnode link: the auctioneer takes the task.
    url = nodes["auctioneer"].ready["client"]
    with captured("client") as client_spans:
        bus = await Bus.connect(Identity.generate(), BusConfig(servers=(url,), name="client"))
        try:
            result = await submit_task(bus, Task(capability="math.evaluate",
                                                 parameters={"expression": "6*7"}),
                                       timeout=20, auction=True)
        finally:
            await bus.close()
    assert result.status is TaskStatus.COMPLETED and result.result == {"value": 42}
    assert result.agent_id == nodes["winner"].id
    raw = NatsClient()
    await raw.connect(url, connect_timeout=2, allow_reconnect=False)
    try:
        reply = await raw.request(
            "agora.task.math.evaluate", json.dumps({"expression": "2+3"}).encode(), timeout=20,
            headers={"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"})
    finally:
        await raw.close()
    assert json.loads(reply.data)["result"] == {"value": 5}
    for node in nodes.values():
        assert node.stop() == 0
    return result, client_spans.records()


async def test_one_trace_across_client_auctioneer_and_winner(
        tmp_path: Path, nodes: dict[str, NodeProcess]) -> None:
    result, client = await two_tasks(nodes)
    auctioneer = read_spans(tmp_path / "auctioneer.jsonl")
    winner = read_spans(tmp_path / "winner.jsonl")
    assert {item["service"] for item in auctioneer} == {"auctioneer"}
    assert {item["service"] for item in winner} == {"winner"}
    everything = [*client, *auctioneer, *winner]

    submit = one([item for item in client if item["name"] == "agoramesh.submit"])
    assert submit["kind"] == "CLIENT"
    trace = [item for item in everything if item["trace_id"] == submit["trace_id"]]
    auction = one(children(auctioneer, submit, "agoramesh.auction"))
    cfp = one(children(auctioneer, auction, "agoramesh.cfp"))
    bids = [item for item in trace if item["name"] == "agoramesh.bid"]
    assert bids and bids == children(winner, cfp, "agoramesh.bid")  # every bid, the cfp's
    assert all(bid["attributes"]["agoramesh.decision"] == "bid" for bid in bids)
    award = one(children(auctioneer, auction, "agoramesh.award"))
    assert award["kind"] == "CLIENT" and "task_response" in award["events"]
    awarded = one(children(winner, award, "agoramesh.award"))
    assert awarded["kind"] == "SERVER" and awarded["attributes"]["agoramesh.decision"] == "accept"
    execute = one(children(winner, awarded, "agoramesh.execute"))
    assert execute["attributes"]["agoramesh.task_id"] == result.task_id
    assert execute["attributes"]["gen_ai.system"] == "offline"
    assert "task_response" in execute["events"]
    # Parents start before their children, across the processes' clocks (one machine).
    assert submit["start"] <= auction["start"] <= cfp["start"] <= bids[0]["start"]
    assert cfp["end"] <= award["start"] <= awarded["start"] <= execute["start"]

    joined = one([item for item in auctioneer if item["name"] == "agoramesh.auction"
                  and item["trace_id"] == CALLER_TRACE])
    assert joined["parent_id"] == CALLER_SPAN
    assert one([item for item in winner if item["name"] == "agoramesh.execute"
                and item["trace_id"] == CALLER_TRACE])


async def test_a_node_that_only_propagates_is_a_transparent_hop(
        tmp_path: Path, transparent: dict[str, NodeProcess]) -> None:
    """The auctioneer traces with ``--propagate-traces`` (no exporter): it records nothing
    and sends on the context it was given, so the winner's spans are children of the
    client's submit, in one trace, and a plain-JSON caller's span is the winner's parent."""
    result, client = await two_tasks(transparent)
    winner = read_spans(tmp_path / "winner.jsonl")
    submit = one([item for item in client if item["name"] == "agoramesh.submit"])
    bids = children(winner, submit, "agoramesh.bid")
    assert bids and all(bid["attributes"]["agoramesh.decision"] == "bid" for bid in bids)
    awarded = one(children(winner, submit, "agoramesh.award"))
    execute = one(children(winner, awarded, "agoramesh.execute"))
    assert execute["attributes"]["agoramesh.task_id"] == result.task_id
    ours = [item for item in winner if item["trace_id"] == submit["trace_id"]]
    assert sorted(item["name"] for item in ours) == sorted(
        ["agoramesh.award", "agoramesh.execute", *["agoramesh.bid"] * len(bids)])

    caller = {"trace_id": CALLER_TRACE, "span_id": CALLER_SPAN}
    assert children(winner, caller, "agoramesh.bid")
    awarded = one(children(winner, caller, "agoramesh.award"))
    assert one(children(winner, awarded, "agoramesh.execute"))
