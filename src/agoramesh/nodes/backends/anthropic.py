"""The Anthropic Messages API, streamed, through the official ``anthropic`` SDK.

System messages become the ``system`` parameter; every text delta is a
:class:`Chunk`; the usage reported by ``message_start`` and ``message_delta``
becomes the :class:`Completion`'s priced :class:`Usage`.

The SDK's own retries are off (``max_retries=0``): :func:`stream_with_retries`
retries 429, 529, 5xx, connection failures and timeouts, but only until the
first chunk has been yielded.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any

import anthropic
import pydantic

from agoramesh.errors import (
    BackendAuthError,
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

__all__ = ("DEFAULT_MODEL", "AnthropicBackend")

DEFAULT_MODEL = "claude-sonnet-4-6"

# A stream `error` event arrives on a 200 response: its error type stands in for the status.
_ERROR_TYPE_STATUS = {
    "invalid_request_error": 400, "authentication_error": 401, "billing_error": 402,
    "permission_error": 403, "not_found_error": 404, "timeout_error": 408,
    "conflict_error": 409, "rate_limit_error": 429, "api_error": 500, "overloaded_error": 529,
}


class AnthropicBackend(Backend):
    """Claude models over the Messages API (``type = "anthropic"``, alias ``claude``)."""

    type = "anthropic"
    default_model = DEFAULT_MODEL

    def __init__(self, config: BackendConfig | None = None) -> None:
        super().__init__(config)
        self._client: anthropic.AsyncAnthropic | None = None

    def _anthropic(self) -> anthropic.AsyncAnthropic:
        # Made on first use: the SDK may read credential files, which a backend that
        # is only configured (never called) should not do.
        if self._client is None:
            self._client = anthropic.AsyncAnthropic(
                api_key=self.config.api_key, base_url=self.config.base_url,
                timeout=self.config.timeout, max_retries=0)
        client = self._client
        if client.api_key is None and client.auth_token is None and client.credentials is None:
            raise BackendAuthError("no Anthropic API key: set api_key or ANTHROPIC_API_KEY")
        return client

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    def chat(self, messages: Sequence[ChatMessage]) -> AsyncIterator[StreamItem]:
        return stream_with_retries(self.config, lambda: self._events(messages), _translate)

    def _request(self, messages: Sequence[ChatMessage]) -> dict[str, Any]:
        system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
        request: dict[str, Any] = {
            "model": self.model, "max_tokens": self.config.max_tokens,
            "messages": [{"role": m["role"], "content": m["content"]}
                         for m in messages if m["role"] != "system"],
        }
        if system:
            request["system"] = system
        if self.config.temperature is not None:
            # Not a keyword of this SDK's `create`; the API still takes it in the body.
            request["extra_body"] = {"temperature": self.config.temperature}
        return request

    async def _events(self, messages: Sequence[ChatMessage]
                      ) -> AsyncGenerator[StreamItem, None]:
        """One attempt: the SDK's event stream as chunks and a completion."""
        stream = await self._anthropic().messages.create(**self._request(messages), stream=True)
        text: list[str] = []
        model = self.model
        input_tokens = output_tokens = 0
        started = stopped = False
        try:
            async for event in stream:
                if event.type == "message_start":
                    started, model = True, event.message.model or model
                    input_tokens = _input_tokens(event.message.usage)
                    output_tokens = event.message.usage.output_tokens or 0
                elif event.type == "content_block_delta" and event.delta.type == "text_delta":
                    text.append(event.delta.text)
                    yield Chunk(event.delta.text)
                elif event.type == "message_delta":
                    output_tokens = event.usage.output_tokens or output_tokens
                    if event.usage.input_tokens is not None:
                        input_tokens = _input_tokens(event.usage)
                elif event.type == "message_stop":
                    stopped = True
        except (json.JSONDecodeError, pydantic.ValidationError, AttributeError,
                TypeError) as exc:
            raise BackendBadResponse(f"Anthropic sent an event that does not parse: {exc}"
                                     ) from exc
        finally:
            await stream.close()
        if not (started and stopped):
            raise Transient("the Anthropic stream ended before message_stop")
        usage = self.price(Usage(input_tokens=input_tokens, output_tokens=output_tokens))
        yield Completion(output="".join(text), usage=usage, model=model)


def _input_tokens(usage: Any) -> int:
    # Cached prompt tokens are input too, reported apart from `input_tokens`.
    return sum(getattr(usage, name, None) or 0 for name in (
        "input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"))


def _translate(exc: Exception) -> BackendError | None:
    """The agoramesh error for an SDK error; :class:`Transient` when a retry may help."""
    if not isinstance(exc, anthropic.AnthropicError):
        return None
    if isinstance(exc, anthropic.APITimeoutError):
        return Transient("Anthropic request timed out")
    if isinstance(exc, anthropic.APIConnectionError):
        return Transient(f"cannot reach Anthropic: {exc.__cause__ or exc}")
    if isinstance(exc, anthropic.APIResponseValidationError):
        return BackendBadResponse(f"Anthropic sent a response that does not parse: {exc}")
    if isinstance(exc, anthropic.APIStatusError):
        status = exc.status_code
        if status < 400:  # an `error` event inside a 200 stream
            status = _ERROR_TYPE_STATUS.get(exc.type or "", 500)
        return status_error("Anthropic", status, exc.api_message or exc.message,
                            retry_after=retry_after_seconds(exc.response.headers))
    if isinstance(exc, anthropic.CredentialsError):
        return BackendAuthError(f"no usable Anthropic credentials (set api_key or "
                                f"ANTHROPIC_API_KEY): {exc}")
    return BackendError(f"Anthropic client error: {exc}")
