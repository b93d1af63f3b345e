"""Trace context on the bus and the spans of a task (observability/tracing.py, PROTOCOL.md §5).

The traceparent format, its trip through a real Bus (signed in the body, taken out
on admission; a plain-JSON request's header), and the spans one process makes of
an auction and a direct task. The trace across processes is test_tracing_processes.py.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator

import msgpack
import pytest
from nats.aio.client import Client as NatsClient
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from test_spans import trace_with

from agoramesh.bus import Bus, Delivery, IngressPolicy
from agoramesh.bus.envelope import TAG_SIZE
from agoramesh.bus.message import Message
from agoramesh.bus.server import EmbeddedServer
from agoramesh.bus.tracecontext import (
    TRACEPARENT,
    current,
    format_traceparent,
    parse_traceparent,
    valid_traceparent,
)
from agoramesh.config import Environment
from agoramesh.errors import ConfigError
from agoramesh.observability import tracing
from agoramesh.protocols.allocation.dispatch import Dispatcher, Strategy
from agoramesh.protocols.collaboration.collaboration import Collaboration
from agoramesh.protocols.workflow.engine import run_workflow
from agoramesh.protocols.workflow.workflow import Workflow
from agoramesh.testing import wait_until
from agoramesh.testing.plugin import AgentFactory, BusFactory

SUBJECT = "agora.cap.test"
GOOD = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on for the test, every finished span kept in memory."""
    yield from trace_with(TracerProvider())


def hex_id(value: int, width: int) -> str:
    return f"{value:0{width}x}"


# -- the format ------------------------------------------------------------------------------

def test_a_traceparent_is_formatted_and_parsed_back() -> None:
    text = format_traceparent(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, 1)
    assert text == GOOD and len(text) == 55
    assert parse_traceparent(GOOD) == (0x0AF7651916CD43DD8448EB211C80319C,
                                       0xB7AD6B7169203331, 1)


@pytest.mark.parametrize("value", [
    None, 42, b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "",
    GOOD.upper(),  # upper case is not the format
    "01" + GOOD[2:],  # another version: only 00 is read
    GOOD + "-extra", GOOD[:-1], " " + GOOD[1:],
    "00-" + "0" * 32 + "-b7ad6b7169203331-01",  # all-zero trace id
    "00-0af7651916cd43dd8448eb211c80319c-" + "0" * 16 + "-01",  # all-zero span id
    "00-0af7651916cd43dd8448eb211c80319g-b7ad6b7169203331-01",  # not hex
    "00_0af7651916cd43dd8448eb211c80319c_b7ad6b7169203331_01",
])
def test_anything_but_a_version_00_traceparent_is_invalid(value: object) -> None:
    assert not valid_traceparent(value) and parse_traceparent(value) is None


def test_tracing_off_installs_no_source_and_spans_are_shared_non_recording() -> None:
    assert not tracing.enabled() and current() is None
    with tracing.span("agoramesh.test") as first, tracing.span("agoramesh.test") as second:
        assert first is second and not first.is_recording()
    assert tracing.current_span() is first


def test_a_span_is_a_child_of_a_remote_traceparent(spans: InMemorySpanExporter) -> None:
    with tracing.span("agoramesh.test", tracing.SpanKind.SERVER, parent=GOOD) as child:
        context = child.get_span_context()
        assert tracing.current_traceparent() == format_traceparent(
            context.trace_id, context.span_id, context.trace_flags)
    with tracing.span("agoramesh.orphan", parent="not a traceparent"):
        pass
    child_span, orphan = spans.get_finished_spans()
    assert child_span.parent is not None and child_span.parent.is_remote
    assert hex_id(child_span.context.trace_id, 32) == GOOD[3:35]
    assert hex_id(child_span.parent.span_id, 16) == GOOD[36:52]
    assert orphan.parent is None


def test_without_the_otel_extra_configure_says_what_to_install(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.resources", None)
    with pytest.raises(ConfigError, match=r"pip install 'agoramesh\[otel\]'"):
        tracing.configure("x", endpoint="http://127.0.0.1:4318/v1/traces")
    assert not tracing.enabled()
    assert tracing.configure("x") is False  # neither endpoint nor capture: nothing to set up


def test_the_trace_capture_variable_is_read() -> None:
    assert Environment.read({"AGORAMESH_TRACE_CAPTURE": "/tmp/x.jsonl"}).trace_capture is not None
    assert Environment.read({}).trace_capture is None


# -- through a real Bus ----------------------------------------------------------------------

class Catch:
    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.arrived = asyncio.Event()

    async def __call__(self, delivery: Delivery) -> None:
        self.deliveries.append(delivery)
        self.arrived.set()
        with tracing.span("agoramesh.handle", parent=delivery.trace_parent):
            await delivery.respond("task_response", {"ok": True})


async def _pair(nats_server: EmbeddedServer, bus_factory: BusFactory) -> tuple[Bus, Bus]:
    return await bus_factory(nats_server.client_url), await bus_factory(nats_server.client_url)


@pytest.mark.integration
async def test_the_senders_span_travels_signed_in_the_body_and_is_taken_out(
        nats_server: EmbeddedServer, bus_factory: BusFactory,
        spans: InMemorySpanExporter) -> None:
    sender, receiver = await _pair(nats_server, bus_factory)
    catch = Catch()
    await receiver.subscribe(SUBJECT, catch)
    raw = await _wire_of(receiver)
    await receiver.flush()
    with tracing.span("agoramesh.test", tracing.SpanKind.CLIENT) as sent:
        reply = await sender.request(SUBJECT, "task_request", {"x": 1}, timeout=2)
    (delivery,) = catch.deliveries
    context = sent.get_span_context()
    assert delivery.trace_parent == format_traceparent(context.trace_id, context.span_id,
                                                       context.trace_flags)
    assert delivery.body == {"x": 1}  # no handler sees the key
    assert delivery.envelope is not None and delivery.envelope.traceparent
    # On the wire: in the signed body (so covered by the tag), not beside it.
    assert msgpack.unpackb(raw[0][:-TAG_SIZE])["body"][TRACEPARENT] == delivery.trace_parent
    # The reply, sent inside the receiver's span (a child of ours), carries none.
    (handled,) = [item for item in spans.get_finished_spans() if item.name == "agoramesh.handle"]
    assert handled.parent is not None and handled.parent.span_id == context.span_id
    assert TRACEPARENT not in msgpack.unpackb(reply.wire[:-TAG_SIZE])["body"]


@pytest.mark.integration
async def test_an_answer_published_untraced_carries_no_traceparent(
        nats_server: EmbeddedServer, bus_factory: BusFactory,
        spans: InMemorySpanExporter) -> None:
    sender, receiver = await _pair(nats_server, bus_factory)
    raw = await _wire_of(receiver)
    await receiver.flush()
    with tracing.span("agoramesh.bid", tracing.SpanKind.CONSUMER):
        await sender.publish(SUBJECT, "bid", {"auction_id": "a"}, traced=False)
        await sender.publish(SUBJECT, "cfp", {"auction_id": "a"})
    await wait_until(lambda: len(raw) == 2, timeout=5)
    bid, cfp = (msgpack.unpackb(item[:-TAG_SIZE])["body"] for item in raw)
    assert bid == {"auction_id": "a"} and valid_traceparent(cfp[TRACEPARENT])


async def _wire_of(bus: Bus) -> list[bytes]:
    """What arrives on SUBJECT, as bytes (a plain subscription beside the admitted one)."""
    raw: list[bytes] = []

    async def keep(msg: Message) -> None:
        raw.append(msg.data)

    await bus.listen(SUBJECT, keep)
    return raw


@pytest.mark.integration
async def test_with_tracing_off_nothing_is_added(
        nats_server: EmbeddedServer, bus_factory: BusFactory) -> None:
    sender, receiver = await _pair(nats_server, bus_factory)
    catch = Catch()
    await receiver.subscribe(SUBJECT, catch)
    raw = await _wire_of(receiver)
    await receiver.flush()
    await sender.request(SUBJECT, "task_request", {"x": 1}, timeout=2)
    assert msgpack.unpackb(raw[0][:-TAG_SIZE])["body"] == {"x": 1}
    assert catch.deliveries[0].trace_parent == ""


@pytest.mark.integration
@pytest.mark.parametrize("bad", ["garbage", GOOD.upper(), 7, None, ["00"]])
async def test_a_bad_traceparent_is_ignored_and_counted_never_an_error(
        nats_server: EmbeddedServer, bus_factory: BusFactory, bad: object) -> None:
    sender, receiver = await _pair(nats_server, bus_factory)
    catch = Catch()
    await receiver.subscribe(SUBJECT, catch)
    await receiver.flush()
    reply = await sender.request(SUBJECT, "task_request", {"x": 1, TRACEPARENT: bad}, timeout=2)
    assert reply.body == {"ok": True}
    (delivery,) = catch.deliveries
    assert delivery.body == {"x": 1} and delivery.trace_parent == ""
    assert receiver.guard.bad_traceparents == 1 and not receiver.rejections


@pytest.mark.integration
async def test_a_plain_json_request_brings_its_traceparent_header(
        nats_server: EmbeddedServer, bus_factory: BusFactory) -> None:
    receiver = await bus_factory(nats_server.client_url)
    catch = Catch()
    await receiver.subscribe(SUBJECT, catch, ingress=IngressPolicy.ALLOW)
    await receiver.flush()
    client = NatsClient()
    await client.connect(nats_server.client_url, connect_timeout=2, allow_reconnect=False)
    try:
        for header in (GOOD, "junk"):
            await client.request(SUBJECT, json.dumps({"x": 1}).encode(), timeout=2,
                                 headers={TRACEPARENT: header})
    finally:
        await client.close()
    good, junk = catch.deliveries
    assert good.is_json and good.trace_parent == GOOD and good.body == {"x": 1}
    assert junk.trace_parent == "" and receiver.guard.bad_traceparents == 1


# -- the spans of one process ------------------------------------------------------------------

def by_name(finished: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [item for item in finished if item.name == name]


def parent_of(item: ReadableSpan) -> int | None:
    return item.parent.span_id if item.parent is not None else None


@pytest.mark.integration
async def test_an_auction_is_one_trace_from_submit_to_result(
        nats_server: EmbeddedServer, agent_factory: AgentFactory,
        spans: InMemorySpanExporter) -> None:
    url = nats_server.client_url
    driver = await agent_factory(url, "driver", ["echo"])
    workers = [await agent_factory(url, name, ["math.evaluate"]) for name in ("w1", "w2")]
    # Their hellos: the driver knows both bidders, so its bid window waits for both bids.
    await wait_until(lambda: {w.agent_id for w in workers}
                     <= set(driver.directory.capable("math.evaluate")), timeout=5)
    dispatcher: Dispatcher = driver.dispatcher
    result = await dispatcher.submit("math.evaluate", {"expression": "6*7"}, timeout=10)
    assert result.result == {"value": 42}
    finished = spans.get_finished_spans()
    (submit,) = by_name(finished, "agoramesh.submit")
    assert {item.context.trace_id for item in finished} == {submit.context.trace_id}
    (cfp,) = by_name(finished, "agoramesh.cfp")
    assert parent_of(cfp) == submit.context.span_id
    bids = by_name(finished, "agoramesh.bid")
    assert len(bids) == len(workers)
    assert all(parent_of(bid) == cfp.context.span_id for bid in bids)
    client_award, winner_award = sorted(by_name(finished, "agoramesh.award"),
                                        key=lambda item: item.kind.value, reverse=True)
    assert client_award.kind is tracing.SpanKind.CLIENT
    assert parent_of(client_award) == submit.context.span_id
    assert parent_of(winner_award) == client_award.context.span_id
    (execute,) = by_name(finished, "agoramesh.execute")
    assert parent_of(execute) == winner_award.context.span_id
    attributes = execute.attributes or {}
    assert attributes["gen_ai.system"] == "offline"
    assert attributes["agoramesh.capability"] == "math.evaluate"
    assert attributes["agoramesh.task_id"] == result.task_id
    assert {"gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens", "agoramesh.cost_usd",
            "gen_ai.request.model"} <= set(attributes)
    assert attributes["agoramesh.status"] == "COMPLETED"
    assert [event.name for event in execute.events] == ["task_response"]  # when it answered
    assert "task_response" in [event.name for event in client_award.events]
    assert not by_name(finished, "agoramesh.result")


@pytest.mark.integration
async def test_a_direct_award_is_submit_award_execute_with_no_cfp(
        nats_server: EmbeddedServer, agent_factory: AgentFactory,
        spans: InMemorySpanExporter) -> None:
    url = nats_server.client_url
    driver = await agent_factory(url, "driver", ["echo"])
    worker = await agent_factory(url, "worker", ["math.evaluate"])
    await wait_until(lambda: worker.agent_id in driver.directory, timeout=5)
    result = await driver.dispatcher.submit("math.evaluate", {"expression": "6*7"}, timeout=10)
    assert result.result == {"value": 42}
    finished = spans.get_finished_spans()
    (submit,) = by_name(finished, "agoramesh.submit")
    assert not by_name(finished, "agoramesh.cfp") and not by_name(finished, "agoramesh.bid")
    client_award, winner_award = sorted(by_name(finished, "agoramesh.award"),
                                        key=lambda item: item.kind.value, reverse=True)
    assert parent_of(client_award) == submit.context.span_id
    assert (client_award.attributes or {})["agoramesh.direct"] is True
    assert parent_of(winner_award) == client_award.context.span_id
    assert (winner_award.attributes or {})["agoramesh.decision"] == "accept"
    (execute,) = by_name(finished, "agoramesh.execute")
    assert parent_of(execute) == winner_award.context.span_id


@pytest.mark.integration
async def test_a_direct_task_is_submit_then_execute(
        nats_server: EmbeddedServer, agent_factory: AgentFactory,
        spans: InMemorySpanExporter) -> None:
    url = nats_server.client_url
    driver = await agent_factory(url, "driver", ["echo"])
    await agent_factory(url, "worker", ["math.evaluate"])
    result = await driver.dispatcher.submit("math.evaluate", {"expression": "1+1"},
                                            strategy=Strategy.DIRECT, timeout=10)
    assert result.result == {"value": 2}
    finished = spans.get_finished_spans()
    (submit,) = by_name(finished, "agoramesh.submit")
    (execute,) = by_name(finished, "agoramesh.execute")
    assert parent_of(execute) == submit.context.span_id
    assert execute.context.trace_id == submit.context.trace_id


WORKFLOW = """\
name: traced
steps:
  - name: first
    agent: capability:math.evaluate
    parameters: {expression: "20+22"}
  - name: second
    agent: capability:echo
    parameters: {text: "${steps.first.output.value}"}
"""


@pytest.mark.integration
async def test_workflow_and_collaboration_steps_are_the_parents_of_their_tasks(
        nats_server: EmbeddedServer, agent_factory: AgentFactory,
        spans: InMemorySpanExporter) -> None:
    url = nats_server.client_url
    driver = await agent_factory(url, "driver", ["echo"])
    await agent_factory(url, "worker", ["math.evaluate"])
    await wait_until(lambda: bool(driver.auctioneer.known_bidders("math.evaluate")), timeout=5)
    result = await run_workflow(Workflow.from_yaml(WORKFLOW), driver.dispatcher)
    assert result.outputs["second"] == {"echo": {"text": 42}}
    finished = spans.get_finished_spans()
    (workflow,) = by_name(finished, "agoramesh.workflow")
    steps = by_name(finished, "agoramesh.workflow.step")
    assert sorted((step.attributes or {})["agoramesh.step"] for step in steps) == [
        "first", "second"]
    assert all(parent_of(step) == workflow.context.span_id for step in steps)
    submits = by_name(finished, "agoramesh.submit")
    assert sorted(map(parent_of, submits)) == sorted(step.context.span_id for step in steps)
    assert {item.context.trace_id for item in finished} == {workflow.context.trace_id}

    spans.clear()
    outcome = await Collaboration(driver.dispatcher, timeout=10).parallel(
        "math.evaluate", {"expression": "6*7"})
    assert [record["output"] for record in outcome["results"]] == [{"value": 42}]
    finished = spans.get_finished_spans()
    (collaboration,) = by_name(finished, "agoramesh.collaboration")
    (step,) = by_name(finished, "agoramesh.collaboration.step")
    (submit,) = by_name(finished, "agoramesh.submit")
    (execute,) = by_name(finished, "agoramesh.execute")
    assert parent_of(step) == collaboration.context.span_id
    assert parent_of(submit) == step.context.span_id
    assert parent_of(execute) == submit.context.span_id
