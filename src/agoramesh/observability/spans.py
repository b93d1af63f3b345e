"""The spans agoramesh records itself for an OpenTelemetry SDK TracerProvider.

The SDK's ``start_as_current_span`` costs 25 to 40 µs a span (its sampler
plumbing, attribute cleaning under a lock, two generator context managers), and
a task makes 2 to 8 of them on the hot path (benchmarks/RESULTS.md, "Tracing on
vs off"). A :class:`RecordingSpan` does the same work with less: ids from the
provider's id generator; the provider's sampler asked only where it decides
something (ParentBased with its default delegates follows the parent, so only a
root asks it, and not even a root when its root sampler is AlwaysOn); the
attributes given at the start taken as they are (the call sites build them),
anything set later kept as given and checked when the span is exported; the
span made current in the OpenTelemetry context (its context variable read and
set directly when the runtime context is the default one), so spans other
libraries start inside it are its children; and on end one SDK
``ReadableSpan`` handed to the provider's span processors, which export it as
they would the SDK's own. While the provider has no span processor (tracing
with the exporter off), nothing would receive what a span records, so a span
records nothing, and under a parent whose context would say what its own
says it is that parent's context, passed through as OpenTelemetry's API does
without an SDK: a remote parent's current inside its ``with`` (a
:class:`ContextSpan`) and its traceparent sent on as it came, or our current
span again (:class:`Same`); only a root draws ids. A process that traces but
records nothing is a transparent hop: what others record on either side is
parent and child. ``is_recording()`` is False (call sites build no
attributes); with the default sampler (ParentBased following the parent,
roots sampled by AlwaysOn) these spans take a short path. A processor added
later is given the spans started after. A span the sampler leaves out is a
ContextSpan too, not sampled (so the next process leaves it out as well),
and under a parent that was not sampled that parent's context. Not done: the
SDK's self-observability metrics and its tracer configurator (neither of
which agoramesh sets); a processor's ``on_start`` is given the remote
parent's context only where a sampler was given it too, else None (the
current context, whose baggage is the same). A span is current in the
context it was started in (``span()`` is entered at once where it is used).
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar, Token
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, cast

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext
from opentelemetry.trace import (
    INVALID_SPAN,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)

from agoramesh.bus.tracecontext import format_traceparent, parse_traceparent, remembered

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import Event
    from opentelemetry.sdk.trace import Tracer as SdkTracer
    from opentelemetry.util.types import AttributeValue

__all__ = ("ContextSpan", "Ours", "Recorder", "RecordingSpan", "Same", "current",
           "current_traceparent")

_log = logging.getLogger(__name__)
_SCALARS: Final = (str, bool, int, float)
_PLAIN: Final = frozenset(_SCALARS)
_SAMPLED: Final = TraceFlags.SAMPLED
_RANDOM: Final = TraceFlags.RANDOM_TRACE_ID
_UNSET: Final = Status(StatusCode.UNSET)
_FLAGS: Final = tuple(TraceFlags(value) for value in range(256))
#: A root's flags on the short path: sampled (by AlwaysOn), its trace id random.
_ROOT_FLAGS: Final = _FLAGS[_RANDOM | _SAMPLED]
_NO_STATE: Final = SpanContext(1, 1, False).trace_state
#: The flags a child keeps of a parent it follows (sampled and random trace id).
_KEPT: Final = _SAMPLED | _RANDOM
#: Ids as the SDK's default generator draws them (a :attr:`Recorder.lean` one's).
_draw: Final = random.getrandbits
_MAX_TRACE_ID: Final = 2**128 - 1
_MAX_SPAN_ID: Final = 2**64 - 1
#: The key of the current span in an OpenTelemetry Context: the one key of a context
#: that holds only a span (``trace.set_span_in_context``, without its copying).
_SPAN_KEY: Final = next(iter(trace.set_span_in_context(INVALID_SPAN, Context())))
_ROOTS_SAMPLED: Final = "ParentBased{root:AlwaysOnSampler,"
#: How ParentBased describes itself with its default delegates, after its root.
_FOLLOWS_PARENT: Final = (",remoteParentSampled:AlwaysOnSampler,"
                          "remoteParentNotSampled:AlwaysOffSampler,"
                          "localParentSampled:AlwaysOnSampler,"
                          "localParentNotSampled:AlwaysOffSampler}")


def _clean(value: object) -> AttributeValue | None:
    """An attribute value as OpenTelemetry takes it (a sequence as a tuple); None if not one."""
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, Sequence) and all(isinstance(item, _SCALARS) for item in value):
        return tuple(value)
    return None


def _context_variable() -> ContextVar[Context] | None:
    """The context variable holding OpenTelemetry's current context, when its runtime
    context is the default one (``OTEL_PYTHON_CONTEXT`` unset); else None."""
    runtime = getattr(otel_context, "_RUNTIME_CONTEXT", None)
    if type(runtime) is not ContextVarsRuntimeContext:
        return None
    variable = getattr(runtime, "_current_context", None)
    return variable if isinstance(variable, ContextVar) else None


_VARIABLE: Final = _context_variable()
#: OpenTelemetry's current context, its attach and detach: the context variable's own
#: methods where it is the default runtime (three Python calls fewer each). A failed
#: detach is logged by the caller, as ``opentelemetry.context.detach`` does itself.
_get_current: Final[Callable[[], Context]] = (
    otel_context.get_current if _VARIABLE is None else _VARIABLE.get)
_attach: Final[Callable[[Context], Token[Context]]] = (
    otel_context.attach if _VARIABLE is None else _VARIABLE.set)
_detach: Final[Callable[[Token[Context]], object]] = (
    otel_context.detach if _VARIABLE is None else _VARIABLE.reset)


def current() -> object:
    """The span current in this context (None outside one): what
    ``trace.get_current_span`` reads, without its checks."""
    return _get_current().get(_SPAN_KEY)


def current_traceparent() -> str | None:
    """The traceparent of the span current in this context; None outside a valid one."""
    span = _get_current().get(_SPAN_KEY)
    if isinstance(span, Ours):
        traceparent = span._traceparent
        if not traceparent:
            context = span._context
            traceparent = format_traceparent(context[0], context[1], context[3])
            span._traceparent = traceparent
        return traceparent
    if not isinstance(span, Span):
        return None
    context = span.get_span_context()
    if not context.is_valid:
        return None
    return format_traceparent(context.trace_id, context.span_id, context.trace_flags)


def _parent_of(span: object) -> SpanContext | None:
    """The context of the current ``span``, not one of ours, if it can be a parent (valid),
    else None."""
    if not isinstance(span, Span):
        return None
    context = span.get_span_context()
    return context if context.is_valid else None


class Recorder:
    """What the spans of one SDK tracer share: where they go and how they are sampled."""

    def __init__(self, tracer: SdkTracer, name: str, version: str) -> None:
        from opentelemetry.sdk.trace import Event, ReadableSpan, SpanLimits
        from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
        from opentelemetry.sdk.trace.sampling import Decision, ParentBased
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        self.event = Event
        self.readable = ReadableSpan
        self.processor = processor = tracer.span_processor
        #: The provider's multi-processor, whose ``_span_processors`` tuple (replaced when
        #: one is added) is read at each span: nothing is built for none. None: a
        #: multi-processor of another kind, always given the spans.
        self.multi: Any = (processor if isinstance(getattr(processor, "_span_processors", None),
                                                   tuple) else None)
        self.resource = tracer.resource
        self.sampler = sampler = tracer.sampler
        self.sample, self.drop = Decision.RECORD_AND_SAMPLE, Decision.DROP
        described = (sampler.get_description()
                     if type(sampler).should_sample is ParentBased.should_sample else "")
        #: ParentBased with its default delegates: a child is sampled exactly when its
        #: parent is. ``roots_sampled``: and its root sampler is AlwaysOn (the default).
        self.follows_parent = described.endswith(_FOLLOWS_PARENT)
        #: The parent's flags a child keeps: sampled and random when it follows the parent,
        #: else random only (its sampler decides the rest).
        self.inherited = (_SAMPLED | _RANDOM) if self.follows_parent else _RANDOM
        self.roots_sampled = self.follows_parent and described.startswith(_ROOTS_SAMPLED)
        self.ids = tracer.id_generator
        #: The SDK's default id generator draws ``random.getrandbits``: drawn here directly
        #: (the generator asked only for the one draw in 2**64 that is 0, not an id).
        self.bits = random.getrandbits if type(self.ids) is RandomIdGenerator else None
        self.random_ids = self.ids.is_trace_id_random()
        #: Spans of a provider without processors may take :meth:`quick`: the
        #: default sampler (nothing to ask) and id generator (random ids drawn here).
        self.lean = (self.follows_parent and self.bits is not None and self.random_ids
                     and self.multi is not None)
        self.info = tracer.instrumentation_info
        self.scope = InstrumentationScope(name, version)
        limits = SpanLimits()
        self.max_attributes = limits.max_span_attributes or 128
        self.max_events = limits.max_events or 128

    def start(self, name: str, kind: SpanKind, traceparent: str,
              attributes: Mapping[str, Any] | None,
              errors: bool) -> contextlib.AbstractContextManager[Span]:
        """A span that is current inside its ``with``: a child of the remote
        ``traceparent`` when it is valid, else of the current span. Non-recording if
        sampled out, or if the provider has no span processor."""
        multi = self.multi
        context = holder = parent = None
        base = _get_current()
        if traceparent and (remote := parse_traceparent(traceparent)) is not None:
            # SpanContext's own tuple, built without its checks: parsed ids are valid.
            parent = tuple.__new__(SpanContext, (remote[0], remote[1], True, _FLAGS[remote[2]],
                                                 _NO_STATE, True))
        elif isinstance(holder := base.get(_SPAN_KEY), Ours):
            parent = holder._context
        elif holder is not None:
            parent = _parent_of(holder)
        bits = self.bits
        trace_state = _NO_STATE
        if parent is None:
            trace_id = (bits(128) if bits is not None else 0) or self.ids.generate_trace_id()
            flags = (_RANDOM if self.random_ids else 0) | (_SAMPLED if self.roots_sampled else 0)
            decided = self.roots_sampled
        else:
            # By index: SpanContext's named fields are properties, a Python call each.
            trace_id, flags, decided = parent[0], parent[3] & self.inherited, self.follows_parent
            if decided:
                trace_state = parent[4]
        recording = bool(flags & _SAMPLED)
        if not decided:
            if parent is not None and parent[2]:  # remote
                context = trace.set_span_in_context(NonRecordingSpan(parent))
            sampled = self.sampler.should_sample(context, trace_id, name, kind, attributes)
            decision, trace_state = sampled.decision, sampled.trace_state or _NO_STATE
            if decision is self.sample:
                flags |= _SAMPLED
            recording = decision is not self.drop
            if recording and sampled.attributes:
                attributes = {**(attributes or {}), **sampled.attributes}
        if parent is not None and (
                (decided and not recording)  # the parent was not sampled
                or (recording and multi is not None and not multi._span_processors
                    and flags == parent[3] and trace_state is parent[4])):
            # Nothing records this span and its context would say what its parent's
            # says: the parent's context serves, sent on as it came (as OpenTelemetry's
            # API does without an SDK).
            if holder is None:  # the remote parent
                return _remote(parent, traceparent, base)
            if not recording or type(holder) is ContextSpan:
                return Same(cast(Span, holder))
            return ContextSpan(parent, base)  # a span that records: not ours to give out
        span_id = (bits(64) if bits is not None else 0) or self.ids.generate_span_id()
        own = tuple.__new__(SpanContext, (trace_id, span_id, False, _FLAGS[flags], trace_state,
                                          0 < trace_id <= _MAX_TRACE_ID
                                          and 0 < span_id <= _MAX_SPAN_ID))
        if not recording or (multi is not None and not multi._span_processors):
            return ContextSpan(own, base)
        span = RecordingSpan(self, name, kind, own, parent, attributes, errors, base)
        self.processor.on_start(span, parent_context=context)  # type: ignore[arg-type]
        return span

    def quick(self, traceparent: str) -> contextlib.AbstractContextManager[Span] | None:
        """:meth:`start`'s short path, for a :attr:`lean` recorder while its provider has
        no span processor (the caller checks both): a sampled remote ``traceparent`` or
        our sampled current span passed through, or a sampled root; None where it takes
        more (another parent, other flags, a sampler to ask). Written for the
        fewest steps: it runs for every span of a process that traces with the exporter
        off."""
        base = _get_current()
        holder = base.get(_SPAN_KEY)
        remote = traceparent and (remembered(traceparent) or parse_traceparent(traceparent))
        if remote:
            if remote[2] != 1 and remote[2] != 3:  # not sampled, or flags a child drops
                return None
            if type(holder) is ContextSpan and holder._traceparent == traceparent:
                return Same(holder)  # that context already: an execution inside its award
            # SpanContext's own tuple, built without its checks: parsed ids are valid.
            return _remote(tuple.__new__(SpanContext, (remote[0], remote[1], True,
                                                       _FLAGS[remote[2]], _NO_STATE, True)),
                           traceparent, base)
        if holder is None:
            if not self.roots_sampled:
                return None
            # SpanContext's own tuple, built without its checks: both ids are non-zero.
            return ContextSpan(tuple.__new__(SpanContext, (
                _draw(128) or self.ids.generate_trace_id(),
                _draw(64) or self.ids.generate_span_id(), False, _ROOT_FLAGS, _NO_STATE,
                True)), base)
        if type(holder) is ContextSpan and holder._context[3] & 1:  # sampled
            return Same(holder)
        return None


def _remote(parent: SpanContext, traceparent: str, base: Context) -> ContextSpan:
    """The remote ``parent`` itself current, its ``traceparent`` sent on as it came."""
    span = ContextSpan(parent, base)
    span._traceparent = traceparent
    return span


class Same(contextlib.AbstractContextManager[Span]):
    """The current span, again: what a span nothing records is inside another that
    records nothing either (its context would say the same)."""

    __slots__ = ("span",)

    def __init__(self, span: Span) -> None:
        self.span = span

    def __enter__(self) -> Span:
        return self.span

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        return None


class Ours:
    """What our spans share: current inside their ``with`` (in the context they were
    started in), and the traceparent of what is sent from there formatted once."""

    __slots__ = ("_base", "_context", "_token", "_traceparent")
    _base: Context
    _context: SpanContext
    _token: Token[Context] | None
    #: This span's W3C traceparent once :func:`current_traceparent` has formatted it, or
    #: the remote parent's it passes through ("" until then).
    _traceparent: str


class ContextSpan(Ours, NonRecordingSpan):
    """A span that records nothing, only its context, sent from inside it: one the
    sampler left out (not sampled, so the processes it reaches leave it out too), or
    one of a provider with no span processor (sampled: nothing would receive it), a
    root's own context or a parent's passed through."""

    def __init__(self, context: SpanContext, base: Context) -> None:
        self._context = context  # NonRecordingSpan.__init__'s one line, without its call
        self._base = base
        self._traceparent = ""

    def __enter__(self) -> ContextSpan:
        self._token = _attach(Context({**self._base, _SPAN_KEY: self}))
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            _detach(self._token)  # type: ignore[arg-type]  # set on entry
        except Exception:  # OpenTelemetry's own detach logs and goes on
            _log.exception("Failed to detach context")


class RecordingSpan(Ours, trace.Span):
    """A recorded span, current inside its ``with`` and ended when it is left.

    What is set on it is kept as given (attributes set later and events in the order
    they came) and made into the SDK's attributes and events only when it is exported.
    """

    __slots__ = ("_attributes", "_end", "_errors", "_events", "_kind", "_later", "_name",
                 "_parent", "_recorder", "_start", "_status")

    def __init__(self, recorder: Recorder, name: str, kind: SpanKind, context: SpanContext,
                 parent: SpanContext | None, attributes: Mapping[str, Any] | None,
                 errors: bool, base: Context) -> None:
        self._base = base
        self._traceparent = ""
        self._recorder = recorder
        self._name = name
        self._kind = kind
        self._context = context
        self._parent = parent
        self._attributes = attributes
        self._later: list[Mapping[Any, Any]] = []
        self._errors = errors
        self._events: list[tuple[str, Mapping[str, Any] | None, int]] = []
        self._status = _UNSET
        self._token = None
        self._end: int | None = None
        self._start = time.time_ns()

    def __enter__(self) -> RecordingSpan:
        self._token = _attach(Context({**self._base, _SPAN_KEY: self}))
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            if exc is not None and self._errors and isinstance(exc, Exception):
                self.record_exception(exc, escaped=True)
                self.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        finally:
            try:
                _detach(self._token)  # type: ignore[arg-type]  # set on entry
            except Exception:  # OpenTelemetry's own detach logs and goes on
                _log.exception("Failed to detach context")
            # end(), written out: this runs for every span.
            if self._end is None:
                self._end = time.time_ns()
                multi = self._recorder.multi
                if multi is None or multi._span_processors:
                    self._export()

    def end(self, end_time: int | None = None) -> None:
        if self._end is not None:
            return
        self._end = end_time if end_time is not None else time.time_ns()
        multi = self._recorder.multi
        if multi is None or multi._span_processors:
            self._export()

    def _export(self) -> None:
        """Hand the ended span to the provider's span processors as an SDK ReadableSpan."""
        recorder = self._recorder
        recorder.processor.on_end(recorder.readable(
            self._name, self._context, self._parent, recorder.resource,
            self._exported_attributes(), self._exported_events(), (), self._kind,
            recorder.info, self._status, self._start, self._end, recorder.scope))

    def _exported_attributes(self) -> dict[str, Any]:
        """The attributes as the SDK keeps them: those of the start, then those set later
        that are attribute values (any other dropped with a warning), up to the limit."""
        kept = dict(self._attributes) if self._attributes else {}
        room = self._recorder.max_attributes
        for later in self._later:
            for key, value in later.items():
                clean = value if type(value) in _PLAIN else _clean(value)
                if clean is None or type(key) is not str or not key:
                    _log.warning("span attribute %r dropped: %r is not an attribute value",
                                 key, value)
                elif key in kept or len(kept) < room:
                    kept[key] = clean
        return kept

    def _exported_events(self) -> list[Event]:
        """The events as the SDK keeps them (attributes that are not values left out)."""
        event = self._recorder.event
        return [event(name, {key: clean for key, value in attributes.items()
                             if (clean := _clean(value)) is not None} if attributes else None,
                      timestamp)
                for name, attributes, timestamp in self._events]

    def get_span_context(self) -> SpanContext:
        return self._context

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        if self._end is None:
            self._later.append(dict(attributes))

    def set_attribute(self, key: str, value: Any) -> None:
        if self._end is None:
            self._later.append({key: value})

    def add_event(self, name: str, attributes: Mapping[str, Any] | None = None,
                  timestamp: int | None = None) -> None:
        if self._end is None and len(self._events) < self._recorder.max_events:
            self._events.append((name, dict(attributes) if attributes else None,
                                 timestamp if timestamp is not None else time.time_ns()))

    def update_name(self, name: str) -> None:
        if self._end is None:
            self._name = name

    def is_recording(self) -> bool:
        return self._end is None

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        if self._end is not None or self._status.status_code is StatusCode.OK:
            return
        if isinstance(status, StatusCode):
            status = Status(status, description)
        if status.status_code is not StatusCode.UNSET:
            self._status = status

    def record_exception(self, exception: BaseException, attributes: Any = None,
                         timestamp: int | None = None, escaped: bool = False) -> None:
        self.add_event("exception", {**_exception_attributes(exception, escaped),
                                     **(attributes or {})}, timestamp)


def _exception_attributes(exception: BaseException, escaped: bool) -> dict[str, str]:
    """The semantic-convention attributes of an exception event, as the SDK writes them."""
    kind = type(exception)
    module = kind.__module__
    return {"exception.type": (f"{module}.{kind.__qualname__}" if module and module != "builtins"
                               else kind.__qualname__),
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped)}
