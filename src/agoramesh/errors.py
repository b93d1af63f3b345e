"""Every error agoramesh raises, under one root.

::

    AgoraError
    ├── ConfigError (ValueError)            bad settings, flags or files
    ├── IdentityError                       nkey seeds and key files
    ├── TrustError                          the trust store, JWTs and credentials
    ├── SubjectError (ValueError)           an invalid capability, agent id, subject or selector
    ├── InvalidRequest (ValueError)         a request its protocol refuses before anything runs
    │   ├── InvalidBallot                   a ballot the voter does not vote on (PROTOCOL.md §17)
    │   ├── InvalidBid                      a bid or counter-offer that does not parse (§16)
    │   ├── InvalidAllocation               tasks, agent profiles, strategy or conflict to allocate
    │   └── InvalidCollaboration            a collaboration request: mode, agents, requirements
    ├── EnvelopeError (ValueError)          a rejected envelope; ``.reason`` says why
    │   ├── MalformedEnvelope               not msgpack, not a map, trailing bytes
    │   ├── SchemaError                     a field missing, extra, or of the wrong type
    │   ├── UnsupportedVersion
    │   ├── OversizeEnvelope
    │   ├── BadSignature
    │   ├── ExpiredEnvelope
    │   ├── FutureEnvelope                  timestamp too far ahead of our clock
    │   ├── ReplayedEnvelope
    │   ├── WrongSubject
    │   ├── WrongReply                      sent with another reply subject than it names
    │   ├── Misaddressed
    │   ├── SignatureRequired               a MACed envelope where only signed ones are taken
    │   ├── IngressDenied                   plain JSON where policy forbids it
    │   └── UndecryptableEnvelope           an encrypted body that does not open for us
    ├── ServerError                         the embedded nats-server
    │   ├── ServerNotFound (FileNotFoundError)
    │   ├── ServerStartError
    │   └── ServerCrashed
    ├── BusError                            talking over NATS
    │   ├── NotConnected (ConnectionError)
    │   ├── BusTimeout (TimeoutError)
    │   ├── NoResponders
    │   └── PermissionDenied                the server refused a subscription (secured mesh)
    ├── TaskError                           a task that could not be done
    │   ├── InvalidInput (ValueError)       parameters the capability refuses: schema, skill checks
    │   ├── InvalidTask (ValueError)        a task request's other fields: id, priority, callback…
    │   ├── UnknownCapability (LookupError) no such capability on this agent
    │   ├── TaskCancelled
    │   ├── Overloaded                      at capacity, try another agent (or later)
    │   ├── ResultTooLarge                  a result that does not fit in one message
    │   └── BackendError                    the model/program behind the agent failed
    │       ├── BackendAuthError            401/403: bad or missing credentials, never retried
    │       ├── BackendRateLimited          429 after the retries ran out
    │       ├── BackendUnavailable          5xx, connection or timeout after the retries
    │       └── BackendBadResponse          an answer that does not parse, or lacks what is read
    ├── NegotiationError                    an auction or allocation that found no taker
    │   ├── NoBidders                       no capable agent bid within the bid window
    │   └── AuctionFailed                   every bidder declined, or the attempts ran out
    ├── WorkflowError                       a workflow that cannot run or did not finish
    │   ├── WorkflowInvalid (ValueError)    cycles, unknown references or selectors: before running
    │   └── StepFailed                      a step failed after its retries
    ├── JobError                            durable jobs (JetStream)
    │   ├── JetStreamUnavailable            no JetStream reachable, or it has no leader yet
    │   ├── StoreFull                       the job stream or the result store is full
    │   └── JobNotFound (LookupError)       no job and no result under that task id
    ├── AccessDenied (PermissionError)      an agent's access policy refuses the request
    ├── InvalidWorldCall (ValueError)       a call the simulated world cannot take (sim/)
    └── RemoteError                         an error raised on another node

Errors cross the bus on purpose (see :func:`error_to_wire`): only types in
:data:`WIRE_ERRORS` are rebuilt on the receiving side, everything else arrives
as :class:`RemoteError` carrying the remote type name and message.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, ClassVar

__all__ = (
    "WIRE_ERRORS",
    "AccessDenied",
    "AgoraError",
    "AuctionFailed",
    "BackendAuthError",
    "BackendBadResponse",
    "BackendError",
    "BackendRateLimited",
    "BackendUnavailable",
    "BadSignature",
    "BusError",
    "BusTimeout",
    "ConfigError",
    "EnvelopeError",
    "ExpiredEnvelope",
    "FutureEnvelope",
    "IdentityError",
    "IngressDenied",
    "InvalidAllocation",
    "InvalidBallot",
    "InvalidBid",
    "InvalidCollaboration",
    "InvalidInput",
    "InvalidRequest",
    "InvalidTask",
    "InvalidWorldCall",
    "JetStreamUnavailable",
    "JobError",
    "JobNotFound",
    "MalformedEnvelope",
    "Misaddressed",
    "NegotiationError",
    "NoBidders",
    "NoResponders",
    "NotConnected",
    "Overloaded",
    "OversizeEnvelope",
    "PermissionDenied",
    "RejectReason",
    "RemoteError",
    "ReplayedEnvelope",
    "ResultTooLarge",
    "SchemaError",
    "ServerCrashed",
    "ServerError",
    "ServerNotFound",
    "ServerStartError",
    "SignatureRequired",
    "StepFailed",
    "StoreFull",
    "SubjectError",
    "TaskCancelled",
    "TaskError",
    "TrustError",
    "UndecryptableEnvelope",
    "UnknownCapability",
    "UnsupportedVersion",
    "WorkflowError",
    "WorkflowInvalid",
    "WrongReply",
    "WrongSubject",
    "error_code",
    "error_from_wire",
    "error_to_wire",
)


class AgoraError(Exception):
    """Root of every agoramesh error."""


class ConfigError(AgoraError, ValueError):
    """Settings, flags or files that cannot be used."""


class IdentityError(AgoraError):
    """An nkey seed or key file that cannot be used."""


class TrustError(AgoraError):
    """The trust store, a JWT or a credentials file is missing, invalid or not ours."""


class SubjectError(AgoraError, ValueError):
    """An invalid capability name or pattern, agent id, NATS subject or agent selector."""


class InvalidRequest(AgoraError, ValueError):
    """A request its protocol refuses before anything runs: an HTTP request to the API
    (body, query, headers), a message type the agent does not take. The subclasses name
    the protocol; the message names the first problem, on one line."""


class InvalidBallot(InvalidRequest):
    """A ballot the voter does not vote on (PROTOCOL.md §17): it breaks a rule of its body,
    arrived after its deadline, or offers nothing the voter can choose; also a ballot the
    initiator cannot put or count (voters that are no agent ids, a quorum out of range)."""


class InvalidBid(InvalidRequest):
    """A bid or counter-offer that does not parse (PROTOCOL.md §16): not a map, a term that
    is not a finite non-negative number, a counter of other terms than deadline and cost."""


class InvalidAllocation(InvalidRequest):
    """What an allocation is asked to settle and cannot: tasks without an id or a capability,
    repeated ids, agent profiles out of range, an unknown strategy, a conflict without claims."""


class InvalidCollaboration(InvalidRequest):
    """A collaboration request (``{mode, topic, agents, rounds, requirements}``) that cannot
    run: a field unknown, missing or out of range, a bad reference, or agents named that
    are not known or do not offer what the mode needs."""


class RejectReason(StrEnum):
    """Why an incoming message was rejected; the label of the rejection counters."""

    MALFORMED = "malformed"
    SCHEMA = "schema"
    UNSUPPORTED_VERSION = "unsupported_version"
    OVERSIZE = "oversize"
    BAD_SIGNATURE = "bad_signature"
    EXPIRED = "expired"
    FUTURE = "future"
    REPLAYED = "replayed"
    WRONG_SUBJECT = "wrong_subject"
    WRONG_REPLY = "wrong_reply"
    MISADDRESSED = "misaddressed"
    SIGNATURE_REQUIRED = "signature_required"
    INGRESS_DENIED = "ingress_denied"
    UNDECRYPTABLE = "undecryptable"


class EnvelopeError(AgoraError, ValueError):
    """An envelope that was rejected; ``reason`` is the counter label."""

    reason: ClassVar[RejectReason] = RejectReason.MALFORMED


class MalformedEnvelope(EnvelopeError):
    reason = RejectReason.MALFORMED


class SchemaError(EnvelopeError):
    reason = RejectReason.SCHEMA


class UnsupportedVersion(EnvelopeError):
    reason = RejectReason.UNSUPPORTED_VERSION


class OversizeEnvelope(EnvelopeError):
    reason = RejectReason.OVERSIZE


class BadSignature(EnvelopeError):
    reason = RejectReason.BAD_SIGNATURE


class ExpiredEnvelope(EnvelopeError):
    reason = RejectReason.EXPIRED


class FutureEnvelope(EnvelopeError):
    reason = RejectReason.FUTURE


class ReplayedEnvelope(EnvelopeError):
    reason = RejectReason.REPLAYED


class WrongSubject(EnvelopeError):
    reason = RejectReason.WRONG_SUBJECT


class WrongReply(EnvelopeError):
    """Published with another reply subject than the one it was made for (PROTOCOL.md §8)."""

    reason = RejectReason.WRONG_REPLY


class Misaddressed(EnvelopeError):
    reason = RejectReason.MISADDRESSED


class SignatureRequired(EnvelopeError):
    """A MACed envelope to an agent that takes signed envelopes only (``sign_all``)."""

    reason = RejectReason.SIGNATURE_REQUIRED


class IngressDenied(EnvelopeError):
    reason = RejectReason.INGRESS_DENIED


class UndecryptableEnvelope(EnvelopeError):
    """A boxed body that does not open, or one on a broadcast (PROTOCOL.md §20)."""

    reason = RejectReason.UNDECRYPTABLE


class ServerError(AgoraError):
    """The embedded nats-server could not be found, started or kept running."""


class ServerNotFound(ServerError, FileNotFoundError):
    """No nats-server binary next to the interpreter or at AGORAMESH_NATS_SERVER."""


class ServerStartError(ServerError):
    """nats-server did not become ready (bad config, port in use, peers unreachable)."""


class ServerCrashed(ServerError):
    """nats-server exited while the node still needed it."""


class BusError(AgoraError):
    """A failure talking over NATS."""


class NotConnected(BusError, ConnectionError):
    """No connection to a NATS server (never made, lost, or closed)."""


class BusTimeout(BusError, TimeoutError):
    """No (complete) answer before the deadline."""


class NoResponders(BusError):
    """Nobody subscribes to the subject a request was sent on."""


class PermissionDenied(BusError, PermissionError):
    """The server refused a publish or subscribe this member's JWT does not allow."""


class TaskError(AgoraError):
    """A task that could not be done."""


class InvalidInput(TaskError, ValueError):
    """Task parameters the capability refuses: they fail its input schema, or the checks
    of the skill that reads them (an expression that does not parse, division by zero)."""


class InvalidTask(TaskError, ValueError):
    """A task request refused for anything but its parameters (PROTOCOL.md §15): unknown
    fields, a task id, priority, deadline or callback out of range, a task id reused for
    another task, a job that is no task request."""


class UnknownCapability(TaskError, LookupError):
    """The agent has no such capability."""


class TaskCancelled(TaskError):
    """The task was cancelled before it finished."""


class Overloaded(TaskError):
    """The agent is at capacity."""


class ResultTooLarge(TaskError):
    """A result that does not fit in one message (the envelope limit, ``max_bytes``)."""


class BackendError(TaskError):
    """The model or program behind an agent failed."""


class BackendAuthError(BackendError):
    """Credentials were refused (HTTP 401/403); retrying cannot help."""


class BackendRateLimited(BackendError):
    """Still rate limited (HTTP 429) after the retries."""


class BackendUnavailable(BackendError):
    """Server errors, connection failures or timeouts after the retries."""


class BackendBadResponse(BackendError):
    """The backend answered something that does not parse, or an output without what its
    reader needs (a collaboration's field, argument or choice)."""


class NegotiationError(AgoraError):
    """An auction or allocation that found no agent to do the task."""


class NoBidders(NegotiationError):
    """No capable agent bid within the bid window."""


class AuctionFailed(NegotiationError):
    """Every bidder declined the award, or the re-auction attempts ran out."""


class WorkflowError(AgoraError):
    """A workflow that cannot run or did not finish."""


class WorkflowInvalid(WorkflowError, ValueError):
    """A workflow rejected before anything ran: cycle, unknown reference, unsatisfiable selector."""


class StepFailed(WorkflowError):
    """A workflow step that failed after its retries."""


class JobError(AgoraError):
    """A durable job (JetStream) that could not be submitted, stored or found."""


class JetStreamUnavailable(JobError):
    """No JetStream answers: not enabled where we are connected, or no leader yet."""


class StoreFull(JobError):
    """The job stream or the result store reached its limit; nothing more is accepted."""


class JobNotFound(JobError, LookupError):
    """No job is queued and no result is stored under that task id."""


class AccessDenied(AgoraError, PermissionError):
    """An agent's access policy refuses this requester the action on its capability (M-4.2)."""


class InvalidWorldCall(AgoraError, ValueError):
    """A call the simulated world cannot take: an unknown agent, task or cell, a recorded
    message that was neither sent nor received. Bad commands are results, not errors."""


class RemoteError(AgoraError):
    """An error raised on another node whose type is not rebuilt locally."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message


#: Error types that may be rebuilt from the wire, by name.
WIRE_ERRORS: dict[str, type[AgoraError]] = {cls.__name__: cls for cls in (
    ConfigError, SubjectError, InvalidRequest, InvalidBallot,
    MalformedEnvelope, SchemaError, UnsupportedVersion, OversizeEnvelope, BadSignature,
    ExpiredEnvelope, FutureEnvelope, ReplayedEnvelope, WrongSubject, WrongReply, Misaddressed,
    SignatureRequired, IngressDenied, UndecryptableEnvelope,
    BusTimeout, NoResponders,
    TaskError, InvalidInput, InvalidTask, UnknownCapability, TaskCancelled, Overloaded,
    ResultTooLarge, BackendError, BackendAuthError, BackendRateLimited, BackendUnavailable,
    BackendBadResponse,
    NegotiationError, NoBidders, AuctionFailed,
    WorkflowError, WorkflowInvalid, StepFailed,
    JobError, JetStreamUnavailable, StoreFull, JobNotFound,
    AccessDenied,
)}


def error_to_wire(exc: BaseException) -> dict[str, Any]:
    """The ``{"type", "message"}`` map an error travels as."""
    if isinstance(exc, RemoteError):
        return {"type": exc.type_name, "message": exc.message}
    return {"type": type(exc).__name__, "message": str(exc)}


def error_from_wire(data: object) -> AgoraError:
    """Rebuild an error sent by :func:`error_to_wire`; unknown types become RemoteError."""
    if not isinstance(data, dict):
        return RemoteError("RemoteError", f"unreadable error: {data!r:.200}")
    type_name = str(data.get("type", "RemoteError"))[:100]
    message = str(data.get("message", ""))[:2000]
    cls = WIRE_ERRORS.get(type_name)
    if cls is None:
        return RemoteError(type_name, message)
    return cls(message)


#: The status code of an error type on a reply (the NATS services protocol's
#: ``Nats-Service-Error-Code`` header, PROTOCOL.md §9), HTTP-like, by type name.
_ERROR_CODES: dict[str, int] = {
    # 400: the request as sent cannot be taken (envelope errors but the ones below too:
    # expired, future, replayed, wrong subject, misaddressed, undecryptable).
    **dict.fromkeys((
        "ConfigError", "SubjectError", "EnvelopeError", "MalformedEnvelope", "SchemaError",
        "UnsupportedVersion", "ExpiredEnvelope", "FutureEnvelope", "ReplayedEnvelope",
        "WrongSubject", "WrongReply", "Misaddressed", "UndecryptableEnvelope", "InvalidInput",
        "InvalidTask", "InvalidRequest", "InvalidBallot", "InvalidBid", "InvalidAllocation",
        "InvalidCollaboration", "InvalidWorldCall", "WorkflowInvalid"), 400),
    **dict.fromkeys(("BadSignature", "SignatureRequired"), 401),  # not authenticated (as asked)
    **dict.fromkeys(("AccessDenied", "IngressDenied", "PermissionDenied"), 403),
    **dict.fromkeys(("UnknownCapability", "JobNotFound"), 404),
    "TaskCancelled": 409,
    **dict.fromkeys(("OversizeEnvelope", "ResultTooLarge"), 413),
    **dict.fromkeys(("BackendError", "BackendAuthError", "BackendRateLimited",
                     "BackendUnavailable", "BackendBadResponse"), 502),
    **dict.fromkeys(("Overloaded", "NegotiationError", "NoBidders", "AuctionFailed",
                     "NoResponders", "NotConnected", "JetStreamUnavailable", "StoreFull"), 503),
    "BusTimeout": 504,  # a wait on the mesh ran out, as the HTTP API answers it
}


def error_code(type_name: str) -> int:
    """The HTTP-like status code of an error type, by name (500 for any other name).

    By name, because a FAILED task result carries ``{"type", "message"}``, not
    an exception: 400 a bad request (``InvalidInput``, ``InvalidTask``,
    ``InvalidRequest`` and its subtypes, every envelope error not named below),
    401 ``BadSignature``, 403 refused (``AccessDenied``, ``IngressDenied``), 404
    nothing of that name (``UnknownCapability``, ``JobNotFound``), 409
    ``TaskCancelled``, 413 too large (``OversizeEnvelope``, ``ResultTooLarge``),
    502 the backend failed (``Backend*``), 503 nobody can take it now
    (``Overloaded``, ``NoBidders``, ``AuctionFailed``, ``NoResponders``,
    ``NotConnected``, ``JetStreamUnavailable``, ``StoreFull``), 504 ``BusTimeout``.
    The HTTP API answers with these codes too (``api.json_http.status_for``).
    """
    return _ERROR_CODES.get(type_name, 500)
