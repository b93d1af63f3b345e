"""Local (or remote) models served by Ollama, streamed through the official ``ollama`` client.

``/api/chat`` answers in NDJSON: one line per piece of the message, then a
``done`` line whose ``prompt_eval_count`` and ``eval_count`` are the usage.

The ``ollama`` client drops response headers when it raises, so a response
hook turns a 429 into a rate-limited :class:`Transient` while ``Retry-After``
is still in reach. Retries (:func:`stream_with_retries`) happen only before the
first chunk.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any, cast

import httpx
import ollama
import pydantic

from agoramesh.errors import (
    BackendBadResponse,
    BackendError,
)
from agoramesh.nodes.backends.base import (
    Backend,
    BackendConfig,
    ChatMessage,
    Transient,
    retry_after_seconds,
    status_error,
    stream_with_retries,
)
from agoramesh.nodes.task import Chunk, Completion, StreamItem, Usage

__all__ = ("DEFAULT_HOST", "DEFAULT_MODEL", "OllamaBackend")

DEFAULT_HOST = "http://127.0.0.1:11434"
DEFAULT_MODEL = "llama3.2"


class OllamaBackend(Backend):
    """A model on an Ollama server (``type = "ollama"``); ``base_url`` is the server."""

    type = "ollama"
    default_model = DEFAULT_MODEL

    def __init__(self, config: BackendConfig | None = None) -> None:
        super().__init__(config)
        self._client: ollama.AsyncClient | None = None

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
        return stream_with_retries(self.config, lambda: self._events(messages), self._translate)

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
        except (json.JSONDecodeError, pydantic.ValidationError) as exc:
            raise BackendBadResponse(f"Ollama sent a line that does not parse: {exc}") from exc
        finally:
            await stream.aclose()
        raise Transient("the Ollama stream ended before its done line")

    def _translate(self, exc: Exception) -> BackendError | None:
        """The agoramesh error for a client error; :class:`Transient` when a retry may help."""
        if isinstance(exc, httpx.TransportError | ConnectionError):
            return Transient(f"cannot reach Ollama at {self.config.base_url or DEFAULT_HOST}: "
                             f"{exc}")
        if not isinstance(exc, ollama.ResponseError):
            return None
        status, message, model = exc.status_code, str(exc.error), self.model
        if status == 404:
            return BackendError(f"model {model!r} not found on the Ollama server; "
                                f"run `ollama pull {model}` ({message})")
        if status == -1:  # an `error` line inside the stream, such as a model runner that crashed
            return Transient(f"Ollama unavailable: {message}")
        # A 429 with its Retry-After was raised by _raise_rate_limited before the client saw it.
        return status_error("Ollama", status, message)


async def _raise_rate_limited(response: httpx.Response) -> None:
    if response.status_code == 429:
        raise Transient(f"rate limited by Ollama (HTTP 429 from {response.url.host})",
                        rate_limited=True, retry_after=retry_after_seconds(response.headers))
