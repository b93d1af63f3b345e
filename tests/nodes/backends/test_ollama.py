"""OllamaBackend against a local server speaking /api/chat's NDJSON wire format."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from agoramesh.errors import (
    BackendAuthError,
    BackendBadResponse,
    BackendError,
    BackendRateLimited,
    BackendUnavailable,
)
from agoramesh.nodes.backends.base import BackendConfig, ChatMessage, collect
from agoramesh.nodes.backends.ollama import OllamaBackend
from agoramesh.nodes.backends.registry import create_backend
from agoramesh.nodes.task import Chunk, Completion, StreamItem, Task
from agoramesh.testing.fake_http import FakeHTTPServer, Rendered

pytestmark = pytest.mark.backends

MODEL = "llama-test"


def line(content: str, *, done: bool = False, **extra: Any) -> bytes:
    part = {"model": MODEL, "created_at": "2025-01-01T00:00:00.000000Z",
            "message": {"role": "assistant", "content": content}, "done": done, **extra}
    return json.dumps(part).encode() + b"\n"


def reply(*pieces: str, prompt_tokens: int = 20, output_tokens: int = 5) -> list[bytes]:
    return [*(line(piece) for piece in pieces),
            line("", done=True, done_reason="stop", total_duration=1000,
                 prompt_eval_count=prompt_tokens, eval_count=output_tokens)]


@dataclass
class Response:
    status: int = 200
    lines: list[bytes] = field(default_factory=list)
    error: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


def render(response: Response) -> Rendered:
    if response.error is not None:
        return Rendered(response.status, "application/json; charset=utf-8",
                        json.dumps({"error": response.error}).encode(), response.headers)
    return Rendered(response.status, "application/x-ndjson", b"".join(response.lines),
                    response.headers)


FakeOllama = FakeHTTPServer[Response]


@pytest.fixture
def fake() -> Iterator[FakeOllama]:
    with FakeHTTPServer(render) as server:
        yield server


Make = Callable[..., OllamaBackend]


@pytest.fixture
async def make(fake: FakeOllama) -> AsyncIterator[Make]:
    backends: list[OllamaBackend] = []

    def build(**settings: Any) -> OllamaBackend:
        settings = {"model": MODEL, "base_url": fake.url, "max_backoff": 0.05,
                    "timeout": 5.0, **settings}
        backend = OllamaBackend(BackendConfig(**settings))
        backends.append(backend)
        return backend

    yield build
    for backend in backends:
        await backend.aclose()


HELLO: list[ChatMessage] = [{"role": "system", "content": "Be brief."},
                            {"role": "user", "content": "Say hello"}]


async def test_chat_streams_chunks_then_a_priced_completion(fake: FakeOllama,
                                                            make: Make) -> None:
    fake.script = [Response(lines=reply("Hel", "lo", "!"))]
    backend = make(temperature=0.3, max_tokens=64, input_price_per_1k=1.0,
                   output_price_per_1k=2.0)
    result = [item async for item in backend.chat(HELLO)]
    assert result[:-1] == [Chunk("Hel"), Chunk("lo"), Chunk("!")]
    completion = result[-1]
    assert isinstance(completion, Completion)
    assert completion.output == "Hello!"
    assert completion.model == MODEL
    assert (completion.usage.input_tokens, completion.usage.output_tokens) == (20, 5)
    assert completion.usage.cost_usd == pytest.approx((20 * 1.0 + 5 * 2.0) / 1000)

    [request] = fake.requests
    assert request.path == "/api/chat"
    assert request.body["model"] == MODEL
    assert request.body["stream"] is True
    assert request.body["messages"] == HELLO  # Ollama takes system messages in the list
    assert request.body["options"] == {"temperature": 0.3, "num_predict": 64}
    assert "authorization" not in request.headers


async def test_execute_wraps_the_text(fake: FakeOllama, make: Make) -> None:
    fake.script = [Response(lines=reply("four"))]
    backend = make(system_prompt="Answer in words.", api_key="secret")
    completion = await collect(backend.execute(Task(capability="math",
                                                    parameters={"question": "2+2?"})))
    assert completion.output == {"text": "four"}
    [request] = fake.requests
    assert request.body["messages"] == [{"role": "system", "content": "Answer in words."},
                                        {"role": "user", "content": "2+2?"}]
    assert request.headers["authorization"] == "Bearer secret"


async def test_rate_limit_waits_as_long_as_retry_after_says(
        fake: FakeOllama, make: Make, retry_waits: list[float]) -> None:
    fake.script = [Response(429, error="too many requests", headers={"Retry-After": "0.1"}),
                   Response(lines=reply("ok"))]
    completion = await collect(make(max_backoff=5.0).chat(HELLO))
    assert completion.output == "ok"
    assert len(fake.requests) == 2
    assert retry_waits == [0.1]  # the header's 0.1 s, not the 0.5 s+ exponential backoff


async def test_rate_limit_gives_up_as_rate_limited(fake: FakeOllama, make: Make) -> None:
    fake.script = [Response(429, error="too many requests")]
    with pytest.raises(BackendRateLimited):
        await collect(make(max_retries=1).chat(HELLO))
    assert len(fake.requests) == 2


@pytest.mark.parametrize("status", [401, 403])
async def test_refused_credentials_are_not_retried(fake: FakeOllama, make: Make,
                                                   status: int) -> None:
    fake.script = [Response(status, error="unauthorized")]
    with pytest.raises(BackendAuthError, match="unauthorized"):
        await collect(make().chat(HELLO))
    assert len(fake.requests) == 1


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_server_errors_are_retried_then_unavailable(fake: FakeOllama, make: Make,
                                                          status: int) -> None:
    fake.script = [Response(status, error="model runner crashed")]
    with pytest.raises(BackendUnavailable, match="gave up after 3 attempts"):
        await collect(make(max_retries=2).chat(HELLO))
    assert len(fake.requests) == 3


async def test_a_missing_model_says_how_to_get_it(fake: FakeOllama, make: Make) -> None:
    fake.script = [Response(404, error=f'model "{MODEL}" not found, try pulling it first')]
    with pytest.raises(BackendError, match=f"ollama pull {MODEL}") as caught:
        await collect(make().chat(HELLO))
    assert type(caught.value) is BackendError
    assert f"model '{MODEL}' not found on the Ollama server" in str(caught.value)
    assert len(fake.requests) == 1


async def test_an_error_line_before_output_is_retried(fake: FakeOllama, make: Make) -> None:
    fake.script = [Response(lines=[b'{"error":"llama runner process has terminated"}\n']),
                   Response(lines=reply("second try"))]
    completion = await collect(make().chat(HELLO))
    assert completion.output == "second try"
    assert len(fake.requests) == 2


async def test_an_error_line_after_output_is_not_retried(fake: FakeOllama, make: Make) -> None:
    fake.script = [Response(lines=[line("partial"), b'{"error":"out of memory"}\n'])]
    seen: list[StreamItem] = []
    with pytest.raises(BackendUnavailable, match="out of memory"):
        async for item in make().chat(HELLO):
            seen.append(item)
    assert seen == [Chunk("partial")]
    assert len(fake.requests) == 1


async def test_an_unparseable_line_is_a_bad_response(fake: FakeOllama, make: Make) -> None:
    fake.script = [Response(lines=[line("fine"), b"{not json\n"])]
    with pytest.raises(BackendBadResponse):
        await collect(make().chat(HELLO))


async def test_a_stream_without_a_done_line_is_unavailable(fake: FakeOllama,
                                                           make: Make) -> None:
    fake.script = [Response(lines=[line("cut")])]
    with pytest.raises(BackendUnavailable, match="done line"):
        await collect(make().chat(HELLO))


async def test_unreachable_server_is_unavailable(make: Make) -> None:
    with ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as closed:
        url = f"http://127.0.0.1:{closed.server_address[1]}"
    with pytest.raises(BackendUnavailable, match="cannot reach Ollama"):
        await collect(make(base_url=url, max_retries=1).chat(HELLO))


async def test_the_registry_creates_it() -> None:
    backend = create_backend("ollama", BackendConfig())
    assert isinstance(backend, OllamaBackend)
    assert backend.type == "ollama"
    assert backend.model  # a default model
    await backend.aclose()


@pytest.fixture
def closed_responses(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The status of every httpx response closed while still open (the client uses httpx)."""
    closed: list[int] = []
    close = httpx.Response.aclose

    async def spy(response: httpx.Response) -> None:
        if not response.is_closed:
            closed.append(response.status_code)
        await close(response)

    monkeypatch.setattr(httpx.Response, "aclose", spy)
    return closed


async def test_leaving_a_stream_early_releases_it(fake: FakeOllama, make: Make,
                                                  closed_responses: list[int]) -> None:
    fake.script = [Response(lines=reply("one", "two", "three"))]
    stream = make().chat(HELLO)
    assert await anext(stream) == Chunk("one")
    assert closed_responses == []  # the HTTP response is still being read
    await stream.aclose()  # type: ignore[attr-defined]
    assert closed_responses == [200]
    assert len(fake.requests) == 1
