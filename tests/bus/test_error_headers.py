"""What a ``nats`` CLI user sees of an error: the services protocol's headers and codes.

``error_code`` (errors.py) maps an error type name to an HTTP-like code;
``error_headers`` (bus/bus.py) builds ``Nats-Service-Error`` and
``Nats-Service-Error-Code``; ``reply_error`` tells which replies are errors.
A FAILED ``task_response`` whose request's task id was unreadable says so with
a null ``task_id``, which reads back as ``""``.
"""

from __future__ import annotations

from typing import Any

import pytest

from agoramesh import errors
from agoramesh.api.json_http import status_for
from agoramesh.bus.bus import (
    ERROR_CODE_HEADER,
    ERROR_HEADER,
    MAX_ERROR_DESCRIPTION,
    Reply,
    error_headers,
    headers_size,
    reply_error,
)
from agoramesh.errors import (
    WIRE_ERRORS,
    AgoraError,
    EnvelopeError,
    NegotiationError,
    PermissionDenied,
    RemoteError,
    ResultTooLarge,
    TaskCancelled,
    UnknownCapability,
    error_code,
)
from agoramesh.nodes.execution import readable_task_id
from agoramesh.nodes.task import TaskResult, TaskStatus

CODES = {
    400: ["InvalidInput", "InvalidTask", "InvalidRequest", "InvalidBallot", "InvalidBid",
          "InvalidAllocation", "InvalidCollaboration", "InvalidWorldCall", "SchemaError",
          "MalformedEnvelope", "SubjectError", "ConfigError", "WorkflowInvalid",
          "UnsupportedVersion", "ExpiredEnvelope", "FutureEnvelope", "ReplayedEnvelope",
          "WrongSubject", "Misaddressed", "UndecryptableEnvelope"],
    401: ["BadSignature"],
    403: ["AccessDenied", "IngressDenied"],
    404: ["UnknownCapability", "JobNotFound"],
    409: ["TaskCancelled"],
    413: ["OversizeEnvelope", "ResultTooLarge"],
    502: ["BackendError", "BackendAuthError", "BackendRateLimited", "BackendUnavailable",
          "BackendBadResponse"],
    503: ["Overloaded", "NoBidders", "NoResponders", "AuctionFailed", "JetStreamUnavailable",
          "StoreFull", "NotConnected"],
    504: ["BusTimeout"],
    500: ["TaskError", "StepFailed", "WorkflowError", "RemoteError", "KeyError", "", "nonsense"],
}


@pytest.mark.parametrize(("name", "code"), [(name, code) for code, names in CODES.items()
                                            for name in names])
def test_error_code_by_type_name(name: str, code: int) -> None:
    assert error_code(name) == code


def test_every_envelope_error_is_a_client_error() -> None:
    pending: list[type[EnvelopeError]] = [EnvelopeError]
    while pending:
        kind = pending.pop()
        pending += kind.__subclasses__()
        assert 400 <= error_code(kind.__name__) < 500, kind.__name__


def test_every_wire_error_has_a_code_and_error_code_is_exported() -> None:
    assert "error_code" in errors.__all__
    functions = [name for name in errors.__all__ if name[0].islower()]
    assert functions == sorted(functions) and "error_code" in functions
    assert all(error_code(name) in {400, 401, 403, 404, 409, 413, 500, 502, 503, 504}
               for name in WIRE_ERRORS)


def test_the_http_api_answers_with_the_code_an_error_has_on_the_bus() -> None:
    # But for what reaches the API from the mesh rather than from its client, a 502: a
    # refused envelope, the server refusing the API's own connection, and every error of
    # code 500 on the bus (a 500 from the API is a bug in it).
    kinds = [kind for name in errors.__all__ if isinstance(kind := getattr(errors, name), type)
             and issubclass(kind, AgoraError)]
    assert len(kinds) > 50
    for kind in kinds:
        error = RemoteError(kind.__name__, "x") if kind is RemoteError else kind("x")
        code = error_code(kind.__name__)
        from_the_mesh = issubclass(kind, EnvelopeError | PermissionDenied) or code == 500
        assert status_for(error) == (502 if from_the_mesh else code), kind.__name__
    # The four that the API answered with a 502 while their code on the bus was another.
    assert [status_for(kind("x")) for kind in (
        UnknownCapability, TaskCancelled, ResultTooLarge, NegotiationError)] == [404, 409, 413, 503]
    assert status_for(RemoteError("NotConnected", "x")) == 503  # by the type it names
    assert status_for(RemoteError("Mystery", "x")) == 502
    assert [status_for(TimeoutError()), status_for(KeyError("x"))] == [504, 500]


def test_error_headers_name_the_type_and_message_and_code() -> None:
    headers = error_headers("InvalidInput", "echo: parameters.text: 5 is not of type 'string'")
    assert headers == {
        "Nats-Service-Error": "InvalidInput: echo: parameters.text: 5 is not of type 'string'",
        "Nats-Service-Error-Code": "400"}
    assert ERROR_HEADER == "Nats-Service-Error"
    assert ERROR_CODE_HEADER == "Nats-Service-Error-Code"
    assert error_headers("NoBidders", "")[ERROR_HEADER] == "NoBidders"
    assert error_headers("", "what")[ERROR_HEADER] == "RemoteError: what"
    assert error_headers("Mystery", "x")[ERROR_CODE_HEADER] == "500"


def test_error_headers_are_one_bounded_line() -> None:
    description = error_headers("BackendError", "line one\r\nline two\n\tthree\x00\x7f" +
                                "é" * 5000)[ERROR_HEADER]
    assert description.startswith("BackendError: line one line two three é")
    assert not any(ord(char) < 0x20 or ord(char) == 0x7f for char in description)
    assert len(description) == MAX_ERROR_DESCRIPTION == 1000
    assert error_headers("TaskError", "trailing\r\n")[ERROR_HEADER] == "TaskError: trailing"


@pytest.mark.parametrize(("type", "body", "expected"), [
    ("error", {"type": "BadSignature", "message": "no"}, ("BadSignature", "no")),
    ("task_response", {"status": "FAILED", "error": {"type": "InvalidInput", "message": "m"}},
     ("InvalidInput", "m")),
    ("task_response", {"status": "FAILED", "error": None}, ("TaskError", "the task failed")),
    ("task_response", {"status": "COMPLETED", "result": {"error": "not one"}}, None),
    ("task_chunk", {"status": "FAILED"}, None),
    ("card", {"type": "x", "message": "y"}, None),
    ("error", "not a map", None),
])
def test_which_replies_are_error_replies(type: str, body: Any,
                                         expected: tuple[str, str] | None) -> None:
    assert reply_error(type, body) == expected


def test_headers_size_is_what_nats_adds() -> None:
    headers = {"A": "b", "Nats-Service-Error-Code": "400"}
    block = b"NATS/1.0\r\n" + b"".join(f"{k}: {v}\r\n".encode() for k, v in headers.items())
    assert headers_size(headers) == len(block + b"\r\n")
    assert headers_size(None) == headers_size({}) == 0
    assert Reply(b"12345", headers).size == 5 + len(block) + 2
    assert headers_size({"E": "é"}) == len("NATS/1.0\r\nE: é\r\n\r\n".encode())


def test_a_null_task_id_reads_as_empty_and_writes_as_null() -> None:
    failed = TaskResult.from_dict({"task_id": None, "status": "FAILED",
                                   "error": {"type": "InvalidInput", "message": "m"}})
    assert failed.task_id == "" and failed.status is TaskStatus.FAILED
    assert failed.as_dict()["task_id"] is None
    missing = TaskResult.from_dict({"status": "FAILED"})
    assert missing.task_id == ""
    kept = TaskResult.from_dict({"task_id": "t-1", "status": "COMPLETED"})
    assert kept.as_dict()["task_id"] == "t-1"


@pytest.mark.parametrize(("body", "expected"), [
    ({"task_id": "t-1"}, "t-1"), ({"task_id": "x" * 128}, "x" * 128),
    ({"task_id": "x" * 129}, None), ({"task_id": ""}, None), ({"task_id": 7}, None),
    ({"task_id": None}, None), ({}, None), (5, None), ([{"task_id": "t"}], None)])
def test_readable_task_id(body: Any, expected: str | None) -> None:
    assert readable_task_id(body) == expected
