"""Local (or remote) models served by Ollama, streamed through the official ``ollama`` client.

``/api/chat`` answers in NDJSON: one line per piece of the message, then a
``done`` line whose ``prompt_eval_count`` and ``eval_count`` are the usage.

The ``ollama`` client drops response headers when it raises, so a response
hook turns a 429 into a rate-limited :class:`Transient` while ``Retry-After``
is still in reach. Retries (:func:`retrying`) happen only before the first chunk.
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, cast

import httpx
import ollama
import pydantic

from agoramesh.errors import (
    BackendAuthError,
    BackendBadResponse,
    BackendError,
    BackendRateLimited,
    BackendUnavailable,
)
from agoramesh.nodes.backends.base import (
    Backend,
    BackendConfig,
    ChatMessage,
    Transient,
    retrying,
)
from agoramesh.nodes.task import Chunk, Completion, StreamItem, Usage

__all__ = ("DEFAULT_HOST", "DEFAULT_MODEL", "OllamaBackend")

DEFAULT_HOST = "http://127.0.0.1:11434"
DEFAULT_MODEL = "llama3.2"


class OllamaBackend(Backend):
    """A model on an Ollama server (``type = "ollama"``); ``base_url`` is the server."""

    type = "ollama"

    def __init__(self, config: BackendConfig | None = None) -> None:
        super().__init__(config)
        self._client: ollama.AsyncClient | None = None

    @property
    def model(self) -> str:
        return self.config.model or DEFAULT_MODEL

    def _ollama(self) -> ollama.AsyncClient:
        if self._client is None:
            # An api_key is for Ollama's hosted service or an authenticating proxy.
            headers = ({"Authorization": f"Bearer {self.config.api_key}"}
                       if self.config.api_key else None)
            self._client = ollama.AsyncClient(
                host=self.config.base_url or DEFAULT_HOST, timeout=self.config.timeout,
                headers=headers, event_hooks={"response": [_raise_rate_limited]})
        return self._client

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()  # type: ignore[no-untyped-call]

    def chat(self, messages: Sequence[ChatMessage]) -> AsyncIterator[StreamItem]:
        # An `async def`, not a lambda: tenacity awaits only what it sees is a coroutine function.
        async def attempt() -> tuple[StreamItem, AsyncGenerator[StreamItem, None]]:
            return await _first_item(self._events(messages))

        return _stream_with_retries(lambda: retrying(self.config, attempt))

    def _options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"num_predict": self.config.max_tokens}
        if self.config.temperature is not None:
            options["temperature"] = self.config.temperature
        return options

    async def _events(self, messages: Sequence[ChatMessage]
                      ) -> AsyncGenerator[StreamItem, None]:
        """One attempt: the NDJSON stream as chunks and a completion."""
        # With stream=True the client returns an async generator that has not sent anything yet.
        stream = cast(AsyncGenerator[ollama.ChatResponse, None], await self._ollama().chat(
            model=self.model, messages=[dict(m) for m in messages], stream=True,
            options=self._options()))
        text: list[str] = []
        try:
            async for part in stream:
                if part.message.content:
                    text.append(part.message.content)
                    yield Chunk(part.message.content)
                if part.done:
                    usage = Usage(input_tokens=part.prompt_eval_count or 0,
                                  output_tokens=part.eval_count or 0)
                    yield Completion(output="".join(text), usage=self.price(usage),
                                     model=part.model or self.model)
                    return
        except ollama.ResponseError as exc:
            raise _translate(exc, self.model) from exc
        except (httpx.TransportError, ConnectionError) as exc:
            raise Transient(f"cannot reach Ollama at {self.config.base_url or DEFAULT_HOST}: "
                            f"{exc}") from exc
        except (json.JSONDecodeError, pydantic.ValidationError) as exc:
            raise BackendBadResponse(f"Ollama sent a line that does not parse: {exc}") from exc
        finally:
            await stream.aclose()
        raise Transient("the Ollama stream ended before its done line")


async def _raise_rate_limited(response: httpx.Response) -> None:
    if response.status_code == 429:
        raise Transient(f"rate limited by Ollama (HTTP 429 from {response.url.host})",
                        rate_limited=True, retry_after=_retry_after(response.headers))


def _translate(exc: ollama.ResponseError, model: str) -> BackendError:
    """The agoramesh error for an Ollama error; :class:`Transient` when a retry may help."""
    status, message = exc.status_code, str(exc.error)
    if status in (401, 403):
        return BackendAuthError(f"Ollama refused the credentials (HTTP {status}): {message}")
    if status == 404:
        return BackendError(f"model {model!r} not found on the Ollama server; "
                            f"run `ollama pull {model}` ({message})")
    if status == 429:
        return Transient(f"rate limited by Ollama: {message}", rate_limited=True)
    if status == -1 or status in (408, 409) or status >= 500:
        # -1: an `error` line inside the stream, such as a model runner that crashed.
        return Transient(f"Ollama unavailable (HTTP {status}): {message}")
    return BackendError(f"Ollama rejected the request (HTTP {status}): {message}")


def _retry_after(headers: httpx.Headers) -> float | None:
    """Seconds from ``Retry-After`` (seconds or an HTTP date)."""
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        try:
            return max(0.0, float(value))
        except ValueError:
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


async def _first_item(stream: AsyncGenerator[StreamItem, None]
                      ) -> tuple[StreamItem, AsyncGenerator[StreamItem, None]]:
    """Open a stream far enough to see its first item (the point of no retry)."""
    try:
        first = await anext(stream)
    except StopAsyncIteration:
        raise BackendBadResponse("the Ollama stream ended without a completion") from None
    except BaseException:
        await stream.aclose()
        raise
    return first, stream


async def _stream_with_retries(
        start: Callable[[], Awaitable[tuple[StreamItem, AsyncGenerator[StreamItem, None]]]],
) -> AsyncIterator[StreamItem]:
    """Yield the retried first item, then the rest, which is never retried."""
    first, rest = await start()
    try:
        yield first
        async for item in rest:
            yield item
    except Transient as exc:  # after output was seen a retry would duplicate it
        kind = BackendRateLimited if exc.rate_limited else BackendUnavailable
        raise kind(f"{exc} (after output had started)") from exc
    finally:
        await rest.aclose()
