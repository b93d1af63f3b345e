"""The OpenAI backend against a real local HTTP server speaking the OpenAI wire format.

The fake server streams Chat Completions and Responses API events the way the
real API does (SSE, usage at the end), for whichever API the request called,
records every request, and can be scripted to answer with errors or a garbled
body first.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio

from agoramesh.errors import (
    BackendAuthError,
    BackendBadResponse,
    BackendError,
    BackendRateLimited,
    BackendUnavailable,
)
from agoramesh.nodes.backends.base import BackendConfig, ChatMessage, Transient, collect
from agoramesh.nodes.backends.openai import OpenAIBackend
from agoramesh.nodes.backends.registry import create_backend
from agoramesh.nodes.task import Chunk, Completion, StreamItem, Task, Usage
from agoramesh.testing.fake_http import FakeHTTPServer, RecordedRequest, Rendered

pytestmark = pytest.mark.backends

DELTAS = ("Hello", ", ", "mesh")
MESSAGES: list[ChatMessage] = [{"role": "system", "content": "Be brief."},
                               {"role": "user", "content": "Say hello."}]


@dataclass(frozen=True)
class Reply:
    """A scripted answer; ``body=None`` means the normal stream for the request's API."""

    status: int = 200
    body: bytes | None = None
    content_type: str = "text/event-stream"
    headers: dict[str, str] = field(default_factory=dict)


STREAM = Reply()


def api_error(status: int, message: str, headers: dict[str, str] | None = None) -> Reply:
    body = json.dumps({"error": {"message": message, "type": "test_error",
                                 "param": None, "code": None}}).encode()
    return Reply(status, body, "application/json", headers or {})


def _sse(data: dict[str, Any], event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data)}\n\n".encode()


def _chat_stream(model: str) -> Iterator[bytes]:
    def chunk(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> bytes:
        return _sse({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
                     "model": model, "system_fingerprint": None, "choices": choices,
                     "usage": usage})

    yield chunk([{"index": 0, "delta": {"role": "assistant", "content": ""},
                  "logprobs": None, "finish_reason": None}])
    for text in DELTAS:
        yield chunk([{"index": 0, "delta": {"content": text}, "logprobs": None,
                      "finish_reason": None}])
    yield chunk([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}])
    yield chunk([], usage={"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15})
    yield b"data: [DONE]\n\n"


def _responses_stream(model: str) -> Iterator[bytes]:
    text = "".join(DELTAS)
    message = {"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
               "content": [{"type": "output_text", "text": text, "annotations": []}]}
    response: dict[str, Any] = {
        "id": "resp_1", "object": "response", "created_at": 1, "status": "in_progress",
        "model": model, "output": [], "parallel_tool_calls": True, "tool_choice": "auto",
        "tools": [], "temperature": 1.0, "top_p": 1.0, "error": None,
        "incomplete_details": None, "instructions": None, "metadata": {}, "usage": None}
    seq = iter(range(100))

    def event(kind: str, **data: Any) -> bytes:
        return _sse({"type": kind, "sequence_number": next(seq), **data}, event=kind)

    yield event("response.created", response=response)
    yield event("response.in_progress", response=response)
    yield event("response.output_item.added", output_index=0,
                item={**message, "status": "in_progress", "content": []})
    for delta in DELTAS:
        yield event("response.output_text.delta", item_id="msg_1", output_index=0,
                    content_index=0, delta=delta, logprobs=[])
    yield event("response.output_text.done", item_id="msg_1", output_index=0,
                content_index=0, text=text, logprobs=[])
    yield event("response.output_item.done", output_index=0, item=message)
    usage = {"input_tokens": 12, "input_tokens_details": {"cached_tokens": 0},
             "output_tokens": 3, "output_tokens_details": {"reasoning_tokens": 0},
             "total_tokens": 15}
    yield event("response.completed",
                response={**response, "status": "completed", "output": [message],
                          "usage": usage})


def respond(reply: Reply, request: RecordedRequest) -> Rendered:
    """``reply`` as scripted, or the stream of the API the request called, in its model."""
    body = reply.body
    if body is None:
        responses = request.path.rstrip("/").endswith("/responses")
        stream = _responses_stream if responses else _chat_stream
        body = b"".join(stream(str(request.body.get("model"))))
    return Rendered(reply.status, reply.content_type, body, reply.headers)


FakeOpenAI = FakeHTTPServer[Reply]


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeHTTPServer(respond=respond) as server:
        server.script = [STREAM]
        yield server


def base_url(fake: FakeOpenAI) -> str:
    return f"{fake.url}/v1"


MakeBackend = Callable[..., Awaitable[OpenAIBackend]]


@pytest_asyncio.fixture
async def make_backend(fake: FakeOpenAI) -> AsyncIterator[MakeBackend]:
    """``await make_backend(**config)`` → a backend on the fake server, closed afterwards."""
    backends: list[OpenAIBackend] = []

    async def make(**settings: Any) -> OpenAIBackend:
        settings = {"model": "gpt-test", "api_key": "sk-test", "base_url": base_url(fake),
                    "max_backoff": 0.05, **settings}
        backend = OpenAIBackend(BackendConfig(**settings))
        backends.append(backend)
        return backend

    try:
        yield make
    finally:
        for backend in backends:
            await backend.aclose()


async def _drain(stream: AsyncIterator[StreamItem]) -> list[StreamItem]:
    return [item async for item in stream]


async def test_chat_streams_chunks_then_a_priced_completion(
        fake: FakeOpenAI, make_backend: MakeBackend) -> None:
    backend = await make_backend(temperature=0.2, input_price_per_1k=1.0,
                                 output_price_per_1k=2.0)
    items = await _drain(backend.chat(MESSAGES))
    assert items[:-1] == [Chunk(text) for text in DELTAS]
    assert items[-1] == Completion(
        output="Hello, mesh", model="gpt-test",
        usage=Usage(input_tokens=12, output_tokens=3, cost_usd=0.018))

    [request] = fake.requests
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer sk-test"
    assert request.body["model"] == "gpt-test"
    assert request.body["messages"] == MESSAGES
    assert request.body["temperature"] == 0.2
    assert request.body["stream"] is True
    assert request.body["stream_options"] == {"include_usage": True}
    assert request.body["max_tokens"] == 1024  # a compatible server: the classic name


async def test_execute_returns_the_text_as_output(
        fake: FakeOpenAI, make_backend: MakeBackend) -> None:
    backend = await make_backend(system_prompt="You are terse.")
    completion = await collect(backend.execute(Task(capability="greet",
                                                    parameters={"prompt": "Say hello."})))
    assert completion.output == {"text": "Hello, mesh"}
    assert completion.usage.total_tokens == 15
    assert fake.requests[0].body["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Say hello."}]
    assert "temperature" not in fake.requests[0].body


async def test_responses_api_streams_and_reports_usage(
        fake: FakeOpenAI, make_backend: MakeBackend) -> None:
    backend = await make_backend(options=(("api", "responses"),), temperature=0.5,
                                 max_tokens=64, input_price_per_1k=1.0,
                                 output_price_per_1k=2.0)
    items = await _drain(backend.chat(MESSAGES))
    assert items[:-1] == [Chunk(text) for text in DELTAS]
    assert items[-1] == Completion(
        output="Hello, mesh", model="gpt-test",
        usage=Usage(input_tokens=12, output_tokens=3, cost_usd=0.018))
    completion = await collect(backend.execute(Task(capability="greet",
                                                    parameters={"text": "hi"})))
    assert completion.output == {"text": "Hello, mesh"}

    request = fake.requests[0]
    assert request.path == "/v1/responses"
    assert request.headers["authorization"] == "Bearer sk-test"
    assert request.body["model"] == "gpt-test"
    assert request.body["input"] == MESSAGES
    assert request.body["stream"] is True
    assert request.body["temperature"] == 0.5
    assert request.body["max_output_tokens"] == 64


@pytest.mark.parametrize("headers", [{"Retry-After": "0.1"}, {"retry-after-ms": "100"}])
async def test_rate_limits_are_retried_after_the_servers_delay(
        fake: FakeOpenAI, make_backend: MakeBackend, headers: dict[str, str],
        retry_waits: list[float]) -> None:
    limited = api_error(429, "Rate limit reached", headers)
    fake.script = [limited, limited, STREAM]
    backend = await make_backend(max_retries=3, max_backoff=2.0)
    completion = await collect(backend.chat(MESSAGES))
    assert completion.output == "Hello, mesh"
    assert len(fake.requests) == 3
    # The server's 0.1 s each time, not the exponential backoff (0.5 s, then 1 s and more).
    assert retry_waits == [0.1, 0.1]


async def test_rate_limits_that_persist_give_up(
        fake: FakeOpenAI, make_backend: MakeBackend) -> None:
    fake.script = [api_error(429, "Rate limit reached", {"Retry-After": "0"})]
    backend = await make_backend(max_retries=1)
    with pytest.raises(BackendRateLimited, match=r"429.*Rate limit reached.*2 attempts"):
        await collect(backend.chat(MESSAGES))
    assert len(fake.requests) == 2


async def test_a_rejected_key_is_not_retried(
        fake: FakeOpenAI, make_backend: MakeBackend) -> None:
    fake.script = [api_error(401, "Incorrect API key provided: sk-test.")]
    backend = await make_backend(max_retries=3)
    with pytest.raises(BackendAuthError) as caught:
        await collect(backend.chat(MESSAGES))
    assert not isinstance(caught.value, Transient)
    assert str(caught.value) == (f"the server at {base_url(fake)} rejected the API key (401): "
                                 "Incorrect API key provided: sk-test.")
    assert len(fake.requests) == 1


async def test_server_errors_are_retried_then_unavailable(
        fake: FakeOpenAI, make_backend: MakeBackend) -> None:
    fake.script = [api_error(500, "The server had an error")]
    backend = await make_backend(max_retries=2)
    with pytest.raises(BackendUnavailable,
                       match=r"\(HTTP 500\): The server had an error .*3 attempts"):
        await collect(backend.chat(MESSAGES))
    assert len(fake.requests) == 3


async def test_other_client_errors_carry_the_servers_message(
        fake: FakeOpenAI, make_backend: MakeBackend) -> None:
    fake.script = [api_error(404, "The model `gpt-nope` does not exist")]
    backend = await make_backend(model="gpt-nope")
    with pytest.raises(BackendError,
                       match=r"\(HTTP 404\): The model `gpt-nope` does not exist") as caught:
        await collect(backend.chat(MESSAGES))
    assert type(caught.value) is BackendError
    assert len(fake.requests) == 1


async def test_an_unreachable_server_is_unavailable() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    backend = OpenAIBackend(BackendConfig(model="m", base_url=f"http://127.0.0.1:{port}/v1",
                                          max_retries=1, max_backoff=0.01))
    try:
        with pytest.raises(BackendUnavailable, match=r"cannot reach .*2 attempts"):
            await collect(backend.chat(MESSAGES))
    finally:
        await backend.aclose()


@pytest.mark.parametrize("api", ["chat", "responses"])
async def test_a_garbled_stream_is_a_bad_response(
        fake: FakeOpenAI, make_backend: MakeBackend, api: str) -> None:
    fake.script = [Reply(body=b"data: {this is not json\n\n"), STREAM]
    backend = await make_backend(options=(("api", api),))
    with pytest.raises(BackendBadResponse, match="malformed stream: JSONDecodeError"):
        await collect(backend.chat(MESSAGES))
    assert len(fake.requests) == 1


@pytest.mark.parametrize("api", ["chat", "responses"])
async def test_a_stream_without_content_is_a_bad_response(
        fake: FakeOpenAI, make_backend: MakeBackend, api: str) -> None:
    fake.script = [Reply(body=b"data: [DONE]\n\n"), STREAM]
    backend = await make_backend(options=(("api", api),))
    with pytest.raises(BackendBadResponse, match="ended the stream"):
        await collect(backend.chat(MESSAGES))


async def test_a_stream_that_breaks_after_output_is_not_retried(
        fake: FakeOpenAI, make_backend: MakeBackend) -> None:
    first = next(chunk for chunk in _chat_stream("gpt-test") if b'"Hello"' in chunk)
    fake.script = [Reply(body=first + b"data: {garbage\n\n"), STREAM]
    backend = await make_backend(max_retries=3)
    seen: list[StreamItem] = []
    with pytest.raises(BackendBadResponse):
        async for item in backend.chat(MESSAGES):
            seen.append(item)
    assert seen == [Chunk("Hello")]
    assert len(fake.requests) == 1


async def test_the_registry_creates_it(fake: FakeOpenAI) -> None:
    backend = create_backend("openai", BackendConfig(model="gpt-test", api_key="sk-test",
                                                     base_url=base_url(fake)))
    try:
        assert isinstance(backend, OpenAIBackend)
        assert backend.type == "openai"
        completion = await collect(backend.chat(MESSAGES))
        assert completion.output == "Hello, mesh"
    finally:
        await backend.aclose()
