"""agoramesh's own recording spans for an SDK TracerProvider (observability/spans.py).

What the SDK's spans would do, checked through the SDK's own exporter: parents,
kinds, attributes, the resource and scope, exceptions and status, sampling (the
provider's sampler and the OTEL_TRACES_SAMPLER variables), and spans of other
libraries nested inside ours and ours inside theirs. Another provider's tracer
makes its spans itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    StatusCode,
    TraceFlags,
)
from opentelemetry.util.types import Attributes

from agoramesh import __version__
from agoramesh.observability import tracing
from agoramesh.observability.spans import ContextSpan, RecordingSpan

SAMPLED = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
UNSAMPLED = SAMPLED[:-2] + "00"


def trace_with(provider: TracerProvider) -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.enable(provider)
    try:
        yield exporter
    finally:
        tracing.disable()
        provider.shutdown()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on with the SDK's default sampler, every finished span kept."""
    yield from trace_with(TracerProvider(resource=Resource.create({"service.name": "here"})))


def named(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    (found,) = [item for item in exporter.get_finished_spans() if item.name == name]
    return found


def test_a_span_is_exported_as_the_sdks_would_be(spans: InMemorySpanExporter) -> None:
    with tracing.span("outer", SpanKind.CLIENT, attributes={"agoramesh.task_id": "t1"}) as outer:
        assert isinstance(outer, RecordingSpan) and outer.is_recording()
        with tracing.span("inner", SpanKind.PRODUCER) as inner:
            inner.set_attributes({"agoramesh.status": "COMPLETED", "agoramesh.bids": 2})
            inner.add_event("task_response", {"agoramesh.size": 10})
    assert not outer.is_recording()
    first, second = named(spans, "outer"), named(spans, "inner")
    assert second.parent == first.context and second.context.trace_id == first.context.trace_id
    assert first.parent is None and first.kind is SpanKind.CLIENT
    assert second.kind is SpanKind.PRODUCER
    assert dict(first.attributes or {}) == {"agoramesh.task_id": "t1"}
    assert dict(second.attributes or {}) == {"agoramesh.status": "COMPLETED",
                                             "agoramesh.bids": 2}
    (event,) = second.events
    assert event.name == "task_response" and dict(event.attributes or {}) == {
        "agoramesh.size": 10}
    assert first.resource.attributes["service.name"] == "here"
    scope = first.instrumentation_scope
    assert scope is not None and (scope.name, scope.version) == (tracing.SCOPE, __version__)
    times = [first.start_time, second.start_time, second.end_time, first.end_time]
    assert None not in times and times == sorted(times)  # type: ignore[type-var]
    assert first.status.status_code is StatusCode.UNSET
    # Sampled, and the trace id random (W3C level 2), as the SDK marks a root.
    assert first.context.trace_flags == second.context.trace_flags == 0x03


def test_the_traceparent_sent_is_the_current_spans(spans: InMemorySpanExporter) -> None:
    assert tracing.current_traceparent() is None
    with tracing.span("here", parent=SAMPLED) as here:
        context = here.get_span_context()
        sent = tracing.current_traceparent()
    assert sent == f"00-{context.trace_id:032x}-{context.span_id:016x}-01"
    assert sent is not None and sent[3:35] == SAMPLED[3:35]
    parent = named(spans, "here").parent
    assert parent is not None and parent.is_remote and f"{parent.span_id:016x}" == SAMPLED[36:52]


def test_an_exception_is_recorded_with_its_status_unless_errors_is_false(
        spans: InMemorySpanExporter) -> None:
    with pytest.raises(ValueError, match="boom"), tracing.span("failed"):
        raise ValueError("boom")
    with pytest.raises(ValueError), tracing.span("quiet", errors=False):
        raise ValueError("boom")
    with pytest.raises(asyncio.CancelledError), tracing.span("cancelled"):
        raise asyncio.CancelledError
    failed = named(spans, "failed")
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.status.description == "ValueError: boom"
    (event,) = failed.events
    attributes = dict(event.attributes or {})
    assert event.name == "exception" and attributes["exception.type"] == "ValueError"
    assert attributes["exception.message"] == "boom" and attributes["exception.escaped"] == "True"
    assert "raise ValueError" in str(attributes["exception.stacktrace"])
    for quiet in (named(spans, "quiet"), named(spans, "cancelled")):
        assert quiet.status.status_code is StatusCode.UNSET and not quiet.events


def test_attributes_set_later_are_checked_and_an_ended_span_is_left_alone(
        spans: InMemorySpanExporter) -> None:
    with tracing.span("checked") as checked:
        checked.set_attribute("agoramesh.models", ["a", "b"])
        checked.set_attributes({"agoramesh.bad": object(),  # type: ignore[dict-item]
                                "agoramesh.ok": 1.5})
        checked.set_status(StatusCode.OK)
        checked.set_status(StatusCode.ERROR, "too late: OK stands")
    checked.set_attribute("agoramesh.after", 1)
    checked.add_event("after")
    finished = named(spans, "checked")
    assert dict(finished.attributes or {}) == {"agoramesh.models": ("a", "b"),
                                               "agoramesh.ok": 1.5}
    assert finished.status.status_code is StatusCode.OK and not finished.events


def test_spans_of_other_libraries_nest_with_ours(spans: InMemorySpanExporter) -> None:
    other = spans_provider_tracer(spans)
    with tracing.span("ours") as ours:
        assert trace.get_current_span() is ours
        with other.start_as_current_span("theirs") as theirs:
            context = theirs.get_span_context()
            assert tracing.current_traceparent() == (
                f"00-{context.trace_id:032x}-{context.span_id:016x}-03")
            with tracing.span("ours again"):
                pass
    mine, foreign, again = named(spans, "ours"), named(spans, "theirs"), named(spans,
                                                                                "ours again")
    assert foreign.parent == mine.context and again.parent == foreign.context


def spans_provider_tracer(exporter: InMemorySpanExporter) -> trace.Tracer:
    """An SDK tracer of another library, on a provider sharing ``exporter``."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("another.library")


def test_a_parentbased_ratio_sampler_follows_the_parent_and_samples_roots() -> None:
    for exporter in trace_with(TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.0)))):
        with tracing.span("root") as root:
            assert not root.is_recording()
            # Sent on unsampled (and random), so the next process does not record either.
            assert (tracing.current_traceparent() or "").endswith("-02")
            with tracing.span("child") as child:
                # Nothing new to say downstream: the root's context is what is sent on.
                assert not child.is_recording() and child is root
        with tracing.span("joined", parent=SAMPLED) as joined:
            assert joined.is_recording()
        with tracing.span("skipped", parent=UNSAMPLED) as skipped:
            assert not skipped.is_recording()
            assert tracing.current_traceparent() == UNSAMPLED
        assert tracing.current_traceparent() is None
        assert [item.name for item in exporter.get_finished_spans()] == ["joined"]


def test_the_otel_traces_sampler_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0")
    for exporter in trace_with(TracerProvider()):
        with tracing.span("root") as root:
            assert not root.is_recording()
        assert not exporter.get_finished_spans()


class Counting(Sampler):
    """Samples everything, and says so in an attribute: asked for every span."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def should_sample(self, parent_context: Context | None, trace_id: int, name: str,
                      kind: SpanKind | None = None, attributes: Attributes = None,
                      links: Sequence[Link] | None = None, trace_state: Any = None
                      ) -> SamplingResult:
        self.asked.append(name)
        return SamplingResult(Decision.RECORD_AND_SAMPLE, {"sampled.by": "counting"})

    def get_description(self) -> str:
        return "Counting"


def test_any_other_sampler_is_asked_for_every_span_and_its_attributes_kept() -> None:
    sampler = Counting()
    for exporter in trace_with(TracerProvider(sampler=sampler)):
        with tracing.span("root", attributes={"agoramesh.x": 1}), tracing.span("child"):
            pass
        with tracing.span("remote", parent=UNSAMPLED) as remote:
            assert remote.is_recording()  # this sampler does not follow the parent
        assert sampler.asked == ["root", "child", "remote"]
        assert dict(named(exporter, "root").attributes or {}) == {"agoramesh.x": 1,
                                                                  "sampled.by": "counting"}


def test_without_a_span_processor_any_sampler_passes_a_parent_through() -> None:
    """Where the sampler is asked (not ParentBased), a span under a parent still takes the
    parent's context when its own would say the same; where it would not, its own ids."""
    sampler = Counting()
    provider = TracerProvider(sampler=sampler)
    tracing.enable(provider)
    try:
        with tracing.span("root") as root, tracing.span("child") as child:
            assert isinstance(root, ContextSpan) and child is root
        with tracing.span("remote", parent=SAMPLED) as remote:
            assert remote.get_span_context().is_remote
            assert tracing.current_traceparent() == SAMPLED
        with tracing.span("sampled in", parent=UNSAMPLED) as sampled_in:
            context = sampled_in.get_span_context()  # this sampler samples it: its own
            assert context.trace_flags.sampled and not context.is_remote
            assert f"{context.span_id:016x}" != UNSAMPLED[36:52]
        assert sampler.asked == ["root", "child", "remote", "sampled in"]
    finally:
        tracing.disable()
        provider.shutdown()


def test_another_providers_tracer_makes_its_spans_itself() -> None:
    tracing.enable(trace.NoOpTracerProvider())
    try:
        with tracing.span("nothing", parent=SAMPLED) as nothing:
            assert not isinstance(nothing, RecordingSpan) and not nothing.is_recording()
    finally:
        tracing.disable()


def test_without_a_span_processor_a_span_is_its_parents_context() -> None:
    """The exporter off: nothing would receive what a span records, so none is made. A
    root draws its ids; under a parent a span is that parent's context, sent on as it came
    (as OpenTelemetry's API does without an SDK), so the spans other processes record on
    either side are parent and child; sampling is followed."""
    provider = TracerProvider()
    tracing.enable(provider)
    try:
        with tracing.span("root") as root:
            assert isinstance(root, ContextSpan) and not root.is_recording()
            outer = root.get_span_context()
            assert outer.is_valid and not outer.is_remote and outer.trace_flags == 0x03
            sent = tracing.current_traceparent()
            assert sent == f"00-{outer.trace_id:032x}-{outer.span_id:016x}-03"
            with tracing.span("child") as child:
                assert child is root and tracing.current_traceparent() == sent
        with tracing.span("remote", parent=SAMPLED) as remote:
            context = remote.get_span_context()
            assert isinstance(remote, ContextSpan) and not remote.is_recording()
            assert context.is_remote and context.trace_flags == 0x01
            assert tracing.current_traceparent() == SAMPLED  # sent on as it came
            with tracing.span("again", parent=SAMPLED) as again, tracing.span("inner") as inner:
                assert again is remote and inner is remote
            assert tracing.current_traceparent() == SAMPLED
        assert tracing.current_traceparent() is None
        with tracing.span("skipped", parent=UNSAMPLED) as skipped:
            assert not skipped.get_span_context().trace_flags.sampled
            assert tracing.current_traceparent() == UNSAMPLED  # sent on as it came
        theirs = SpanContext(0x1234, 0x5678, False, TraceFlags(TraceFlags.SAMPLED))
        with trace.use_span(NonRecordingSpan(theirs)), tracing.span("inside") as inside:
            assert isinstance(inside, ContextSpan)  # another library's parent, not given out
            assert inside.get_span_context() == theirs
        exporter = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        with tracing.span("recorded") as later:
            assert isinstance(later, RecordingSpan) and later.is_recording()
        assert [item.name for item in exporter.get_finished_spans()] == ["recorded"]
    finally:
        tracing.disable()
        provider.shutdown()
