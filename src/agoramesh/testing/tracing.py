"""Traces in tests: spans kept in memory here, and those other processes wrote at exit.

A process started with ``AGORAMESH_TRACE_CAPTURE=FILE`` (``agoramesh node``,
``up``) keeps its finished spans in the SDK's in-memory exporter and appends
them to FILE as JSON lines when it ends (:func:`agoramesh.observability.tracing.configure`);
:func:`read_spans` reads them back. :func:`captured` turns tracing on in this
process for the duration of a ``with``, every finished span in memory, as the
same records.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agoramesh.observability import tracing

__all__ = ("Captured", "SpanRecord", "captured", "children", "read_spans")

#: A finished span as :func:`agoramesh.observability.tracing.span_record` writes it.
SpanRecord = dict[str, Any]


class Captured:
    """The spans this process finished while tracing was on."""

    def __init__(self, exporter: InMemorySpanExporter) -> None:
        self.exporter = exporter

    def records(self) -> list[SpanRecord]:
        return [tracing.span_record(item) for item in self.exporter.get_finished_spans()]


@contextlib.contextmanager
def captured(service_name: str = "test") -> Iterator[Captured]:
    """Tracing on in this process while inside, the spans in memory (not the global
    provider's: that can be set once per process)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.enable(provider)
    try:
        yield Captured(exporter)
    finally:
        tracing.disable()
        provider.shutdown()


def read_spans(path: Path) -> list[SpanRecord]:
    """The spans a process appended to ``path`` at exit ([] if it wrote none)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def children(spans: Iterable[SpanRecord], parent: SpanRecord, name: str) -> list[SpanRecord]:
    """The spans named ``name`` whose parent is ``parent`` (same trace)."""
    return [item for item in spans if item["name"] == name
            and item["trace_id"] == parent["trace_id"]
            and item["parent_id"] == parent["span_id"]]
