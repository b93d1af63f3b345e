"""AnthropicBackend against a local server speaking the Messages API's SSE wire format."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anthropic
import pytest

from agoramesh.errors import (
    BackendAuthError,
    BackendBadResponse,
    BackendError,
    BackendRateLimited,
    BackendUnavailable,
)
from agoramesh.nodes.backends.anthropic import AnthropicBackend
from agoramesh.nodes.backends.base import BackendConfig, ChatMessage, collect
from agoramesh.nodes.backends.registry import create_backend
from agoramesh.nodes.task import Chunk, Completion, StreamItem, Task
from agoramesh.testing.fake_http import FakeHTTPServer, Rendered

pytestmark = pytest.mark.backends

API_KEY = "sk-ant-test-key"


def sse(event: str, data: dict[str, Any] | str) -> bytes:
    body = data if isinstance(data, str) else json.dumps(data)
    return f"event: {event}\ndata: {body}\n\n".encode()


def message_start(input_tokens: int = 12) -> bytes:
    return sse("message_start", {"type": "message_start", "message": {
        "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-test",
        "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": 1}}})


def text_delta(text: str) -> bytes:
    return sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                       "delta": {"type": "text_delta", "text": text}})


def error_event(kind: str, message: str) -> bytes:
    return sse("error", {"type": "error", "error": {"type": kind, "message": message}})


def reply(*pieces: str, input_tokens: int = 12, output_tokens: int = 7) -> list[bytes]:
    return [
        message_start(input_tokens),
        sse("content_block_start", {"type": "content_block_start", "index": 0,
                                    "content_block": {"type": "text", "text": ""}}),
        sse("ping", {"type": "ping"}),
        *(text_delta(piece) for piece in pieces),
        sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
        sse("message_delta", {"type": "message_delta",
                              "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                              "usage": {"output_tokens": output_tokens}}),
        sse("message_stop", {"type": "message_stop"}),
    ]


@dataclass
class Response:
    status: int = 200
    events: list[bytes] = field(default_factory=list)
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)


def api_error(status: int, kind: str, message: str, **headers: str) -> Response:
    return Response(status, body={"type": "error", "error": {"type": kind, "message": message}},
                    headers=headers)


def render(response: Response) -> Rendered:
    if response.body is not None:
        payload, kind = json.dumps(response.body).encode(), "application/json"
    else:
        payload, kind = b"".join(response.events), "text/event-stream"
    headers = {name.replace("_", "-"): value for name, value in response.headers.items()}
    return Rendered(response.status, kind, payload, headers)


FakeAnthropic = FakeHTTPServer[Response]


@pytest.fixture
def fake() -> Iterator[FakeAnthropic]:
    with FakeHTTPServer(render) as server:
        yield server


Make = Callable[..., AnthropicBackend]


@pytest.fixture
async def make(fake: FakeAnthropic) -> AsyncIterator[Make]:
    backends: list[AnthropicBackend] = []

    def build(**settings: Any) -> AnthropicBackend:
        settings = {"model": "claude-test", "api_key": API_KEY, "base_url": fake.url,
                    "max_backoff": 0.05, "timeout": 5.0, **settings}
        backend = AnthropicBackend(BackendConfig(**settings))
        backends.append(backend)
        return backend

    yield build
    for backend in backends:
        await backend.aclose()


async def items(stream: AsyncIterator[StreamItem]) -> list[StreamItem]:
    return [item async for item in stream]


HELLO: list[ChatMessage] = [{"role": "system", "content": "Be brief."},
                            {"role": "user", "content": "Say hello"}]


async def test_chat_streams_chunks_then_a_priced_completion(fake: FakeAnthropic,
                                                            make: Make) -> None:
    fake.script = [Response(events=reply("Hel", "lo", " there"))]
    backend = make(input_price_per_1k=3.0, output_price_per_1k=15.0, max_tokens=256)
    result = await items(backend.chat(HELLO))
    assert result[:-1] == [Chunk("Hel"), Chunk("lo"), Chunk(" there")]
    completion = result[-1]
    assert isinstance(completion, Completion)
    assert completion.output == "Hello there"
    assert completion.model == "claude-test"
    assert (completion.usage.input_tokens, completion.usage.output_tokens) == (12, 7)
    assert completion.usage.cost_usd == pytest.approx((12 * 3.0 + 7 * 15.0) / 1000)

    [request] = fake.requests
    assert request.path == "/v1/messages"
    assert request.body["model"] == "claude-test"
    assert request.body["stream"] is True
    assert request.body["max_tokens"] == 256
    assert request.body["system"] == "Be brief."
    assert request.body["messages"] == [{"role": "user", "content": "Say hello"}]
    # This SDK sends an api_key as a bearer token; older ones used x-api-key.
    assert API_KEY in (request.headers.get("x-api-key"),
                       request.headers.get("authorization", "").removeprefix("Bearer "))
    assert request.headers["anthropic-version"]
    assert request.headers["x-stainless-retry-count"] == "0"  # the SDK does not retry itself


async def test_execute_wraps_the_text(fake: FakeAnthropic, make: Make) -> None:
    fake.script = [Response(events=reply("a summary"))]
    backend = make(system_prompt="You summarize.", temperature=0.2)
    task = Task(capability="summarize", parameters={"text": "A long text."})
    completion = await collect(backend.execute(task))
    assert completion.output == {"text": "a summary"}
    [request] = fake.requests
    assert request.body["system"] == "You summarize."
    assert request.body["messages"] == [{"role": "user", "content": "A long text."}]
    assert request.body["temperature"] == 0.2


async def test_rate_limit_waits_as_long_as_retry_after_says(
        fake: FakeAnthropic, make: Make, retry_waits: list[float]) -> None:
    fake.script = [api_error(429, "rate_limit_error", "slow down", retry_after="0.1"),
                   Response(events=reply("ok"))]
    backend = make(max_backoff=5.0)
    completion = await collect(backend.chat(HELLO))
    assert completion.output == "ok"
    assert len(fake.requests) == 2
    assert retry_waits == [0.1]  # the header's 0.1 s, not the 0.5 s+ exponential backoff


async def test_rate_limit_gives_up_as_rate_limited(fake: FakeAnthropic, make: Make) -> None:
    fake.script = [api_error(429, "rate_limit_error", "slow down", retry_after="0")]
    with pytest.raises(BackendRateLimited, match="slow down"):
        await collect(make(max_retries=1).chat(HELLO))
    assert len(fake.requests) == 2


@pytest.mark.parametrize("status", [401, 403])
async def test_refused_credentials_are_not_retried(fake: FakeAnthropic, make: Make,
                                                   status: int) -> None:
    kind = "authentication_error" if status == 401 else "permission_error"
    fake.script = [api_error(status, kind, "invalid x-api-key")]
    with pytest.raises(BackendAuthError, match="invalid x-api-key") as caught:
        await collect(make().chat(HELLO))
    assert "\n" not in str(caught.value)
    assert len(fake.requests) == 1


@pytest.mark.parametrize(("status", "kind"), [(529, "overloaded_error"), (500, "api_error"),
                                              (503, "api_error")])
async def test_server_errors_are_retried_then_unavailable(fake: FakeAnthropic, make: Make,
                                                          status: int, kind: str) -> None:
    fake.script = [api_error(status, kind, "try later")]
    with pytest.raises(BackendUnavailable, match="gave up after 3 attempts"):
        await collect(make(max_retries=2).chat(HELLO))
    assert len(fake.requests) == 3


async def test_other_client_errors_carry_the_server_message(fake: FakeAnthropic,
                                                            make: Make) -> None:
    fake.script = [api_error(400, "invalid_request_error", "max_tokens: too large")]
    with pytest.raises(BackendError, match="max_tokens: too large") as caught:
        await collect(make().chat(HELLO))
    assert type(caught.value) is BackendError
    assert len(fake.requests) == 1


async def test_an_error_event_before_output_is_retried(fake: FakeAnthropic,
                                                       make: Make) -> None:
    fake.script = [Response(events=[message_start(), error_event("overloaded_error", "busy")]),
                   Response(events=reply("second try"))]
    completion = await collect(make().chat(HELLO))
    assert completion.output == "second try"
    assert len(fake.requests) == 2


async def test_an_error_event_after_output_is_not_retried(fake: FakeAnthropic,
                                                          make: Make) -> None:
    fake.script = [Response(events=[message_start(), text_delta("partial"),
                                    error_event("overloaded_error", "busy")])]
    seen: list[StreamItem] = []
    with pytest.raises(BackendUnavailable, match="busy"):
        async for item in make().chat(HELLO):
            seen.append(item)
    assert seen == [Chunk("partial")]
    assert len(fake.requests) == 1


async def test_an_unparseable_event_is_a_bad_response(fake: FakeAnthropic, make: Make) -> None:
    fake.script = [Response(events=[message_start(), sse("content_block_delta", "{not json")])]
    with pytest.raises(BackendBadResponse):
        await collect(make().chat(HELLO))


async def test_unreachable_server_is_unavailable(make: Make) -> None:
    with ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as closed:
        url = f"http://127.0.0.1:{closed.server_address[1]}"
    with pytest.raises(BackendUnavailable, match="cannot reach Anthropic"):
        await collect(make(base_url=url, max_retries=1).chat(HELLO))


async def test_a_missing_api_key_is_an_auth_error(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path, make: Make) -> None:
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ANTHROPIC_CONFIG_DIR", str(tmp_path))
    with pytest.raises(BackendAuthError, match="ANTHROPIC_API_KEY"):
        await collect(make(api_key=None).chat(HELLO))


@pytest.mark.parametrize("kind", ["anthropic", "claude"])
async def test_the_registry_creates_it(kind: str) -> None:
    backend = create_backend(kind, BackendConfig(model="claude-test"))
    assert isinstance(backend, AnthropicBackend)
    assert backend.type == "anthropic"
    assert backend.model == "claude-test"
    await backend.aclose()


async def test_leaving_a_stream_early_releases_it(fake: FakeAnthropic, make: Make,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    closed: list[anthropic.AsyncStream[Any]] = []
    close = anthropic.AsyncStream.close

    async def spy(stream: anthropic.AsyncStream[Any]) -> None:
        closed.append(stream)
        await close(stream)

    monkeypatch.setattr(anthropic.AsyncStream, "close", spy)
    fake.script = [Response(events=reply("one", "two", "three"))]
    stream = make().chat(HELLO)
    assert await anext(stream) == Chunk("one")
    assert closed == []  # the SDK's stream is still being read
    await stream.aclose()  # type: ignore[attr-defined]
    assert len(closed) == 1  # and releases its HTTP response
    assert len(fake.requests) == 1
