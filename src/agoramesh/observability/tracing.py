"""OpenTelemetry traces: one trace for a task across the processes it crosses.

Tracing is off until :func:`enable` is given a TracerProvider (the CLI's
``--otlp-endpoint``: :func:`configure`). While it is off, :func:`span` hands
out a shared non-recording span without asking OpenTelemetry anything, and the
Bus adds no trace context to what it sends: an agent that does not trace pays
for nothing. While it is on, the span current when the Bus seals a map body is
its ``traceparent`` (:mod:`agoramesh.bus.tracecontext`, PROTOCOL.md §5), and a
handler starts its span as a child of the sender's with
``span(..., parent=delivery.trace_parent)``. With the SDK's TracerProvider (what
:func:`configure` sets up) the spans are :mod:`agoramesh.observability.spans`'
own, three to five times cheaper than the SDK's; any other provider's tracer
makes them as it would.

Only ``opentelemetry-api`` is a dependency; the SDK and the OTLP exporter are
the ``otel`` extra, imported by :func:`configure` alone. ``AGORAMESH_TRACE_CAPTURE``
(tests) keeps a process's finished spans in the SDK's in-memory exporter and
writes them as JSON lines to that file when the process ends (:func:`shutdown`).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, cast

from opentelemetry import trace
from opentelemetry.trace import (
    INVALID_SPAN,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    TraceFlags,
    Tracer,
    TracerProvider,
)

from agoramesh._version import __version__
from agoramesh.bus import tracecontext
from agoramesh.bus.tracecontext import parse_traceparent
from agoramesh.errors import ConfigError
from agoramesh.observability import spans
from agoramesh.observability.spans import Ours, Recorder

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

__all__ = ("SCOPE", "Span", "SpanKind", "configure", "context_of", "current_span",
           "current_traceparent", "disable", "enable", "enabled", "shutdown", "span",
           "span_record")

#: The instrumentation scope of every agoramesh span.
SCOPE: Final = "agoramesh"

_tracer: Tracer | None = None
_recorder: Recorder | None = None
_provider: TracerProvider | None = None
_capture: tuple[Path, InMemorySpanExporter] | None = None
_OFF: Final = contextlib.nullcontext(INVALID_SPAN)


def enabled() -> bool:
    return _tracer is not None


def enable(provider: TracerProvider) -> None:
    """Trace from now on with ``provider``'s tracer; the Bus propagates the context."""
    global _tracer, _provider, _recorder
    _provider = provider
    _tracer = provider.get_tracer(SCOPE, __version__)
    sdk = sys.modules.get("opentelemetry.sdk.trace")
    _recorder = (Recorder(_tracer, SCOPE, __version__)
                 if sdk is not None and isinstance(_tracer, sdk.Tracer) else None)
    tracecontext.install(current_traceparent)


def disable() -> None:
    """Stop tracing (the provider is left as it is: :func:`shutdown` ends it)."""
    global _tracer, _recorder
    _tracer = _recorder = None
    tracecontext.install(None)


def current_span() -> Span:
    """The span current in this context; a non-recording one while tracing is off."""
    if _tracer is None:
        return INVALID_SPAN
    current = spans.current()
    if isinstance(current, Ours):  # a plain class: cheaper to ask than the Span ABC
        return cast(Span, current)
    if isinstance(current, Span):
        return current
    return INVALID_SPAN


#: The traceparent of the span current in this context; None outside a valid one (what the
#: Bus adds to what it sends while tracing is on).
current_traceparent: Final = spans.current_traceparent


def context_of(traceparent: str) -> Any:
    """An OpenTelemetry context whose current span is the remote ``traceparent`` (None for
    "" or an invalid one: the current context then stands)."""
    parsed = parse_traceparent(traceparent) if traceparent else None
    if parsed is None:
        return None
    trace_id, span_id, flags = parsed
    remote = SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags))
    return trace.set_span_in_context(NonRecordingSpan(remote))


def span(name: str, kind: SpanKind = SpanKind.INTERNAL, *, parent: str = "",
         attributes: Mapping[str, Any] | None = None,
         errors: bool = True) -> contextlib.AbstractContextManager[Span]:
    """A span named ``name``, current inside the ``with``: a child of the remote
    ``parent`` traceparent when one is given and valid, else of the current span.

    While tracing is off: a shared non-recording span, nothing computed. An
    exception leaving the block is recorded on the span and sets its status,
    unless ``errors`` is False (a block that ends by being cancelled).
    """
    recorder = _recorder
    if recorder is not None:
        if recorder.lean and not recorder.multi._span_processors:
            quick = recorder.quick(parent)
            if quick is not None:
                return quick
        return recorder.start(name, kind, parent, attributes, errors)
    tracer = _tracer
    if tracer is None:
        return _OFF
    return tracer.start_as_current_span(name, context=context_of(parent), kind=kind,
                                        attributes=dict(attributes) if attributes else None,
                                        record_exception=errors,
                                        set_status_on_exception=errors)


def configure(service_name: str, *, endpoint: str | None = None,
              capture: Path | None = None, propagate: bool = False) -> bool:
    """Set up the SDK's TracerProvider for this process and :func:`enable` it: spans
    batched to the OTLP/HTTP collector at ``endpoint``, and/or kept in memory and
    written to ``capture`` at exit; ``propagate`` alone: no span processor, so spans
    record nothing and the context passes through (:mod:`.spans`). None of them:
    nothing (False). ConfigError without the ``otel`` extra."""
    global _capture
    if endpoint is None and capture is None and not propagate:
        return False
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
            InMemorySpanExporter,
        )
    except ImportError:
        raise ConfigError("tracing needs the OpenTelemetry SDK: pip install "
                          "'agoramesh[otel]'") from None
    provider = SdkTracerProvider(resource=Resource.create({"service.name": service_name}))
    if endpoint is not None:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise ConfigError("--otlp-endpoint needs the OTLP exporter: pip install "
                              "'agoramesh[otel]'") from None
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    if capture is not None:
        exporter = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        _capture = (capture, exporter)
    trace.set_tracer_provider(provider)
    enable(provider)
    atexit.register(shutdown)
    return True


def shutdown() -> None:
    """Flush and end the provider :func:`configure` set up (its batches sent), and write the
    captured spans. Idempotent."""
    global _capture, _provider
    provider, _provider = _provider, None
    disable()
    end = getattr(provider, "shutdown", None)
    if end is not None:
        end()
    capture, _capture = _capture, None
    if capture is not None:
        path, exporter = capture
        with path.open("a", encoding="utf-8") as out:
            for finished in exporter.get_finished_spans():
                out.write(json.dumps(span_record(finished), default=str) + "\n")


def span_record(finished: ReadableSpan) -> dict[str, Any]:
    """A finished span as one JSON-able map (ids in hex, as traceparents write them)."""
    context, parent = finished.context, finished.parent
    return {
        "name": finished.name,
        "kind": finished.kind.name,
        "trace_id": f"{context.trace_id:032x}" if context else "",
        "span_id": f"{context.span_id:016x}" if context else "",
        "parent_id": f"{parent.span_id:016x}" if parent else "",
        "service": finished.resource.attributes.get("service.name", ""),
        "start": finished.start_time, "end": finished.end_time,
        "status": finished.status.status_code.name,
        "attributes": dict(finished.attributes or {}),
        "events": [event.name for event in finished.events],
    }

