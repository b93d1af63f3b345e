"""OpenAI, and any OpenAI-compatible server (vLLM, llama.cpp, …), through the official SDK.

Chat Completions by default; the option ``api: responses`` selects the Responses
API. Both stream: one :class:`Chunk` per text delta, then a :class:`Completion`
with the usage the server reports at the end of the stream.

The SDK's own retries are off (``max_retries=0``): :func:`stream_with_retries`
retries the request until its first chunk, so the requester never sees output
twice. Once output has started, a failure ends the stream with a
:class:`BackendError`.
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import cast

import openai
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionMessageParam
from openai.types.responses import (
    ResponseCompletedEvent,
    ResponseErrorEvent,
    ResponseFailedEvent,
    ResponseIncompleteEvent,
    ResponseInputParam,
    ResponseTextDeltaEvent,
)

from agoramesh.errors import (
    BackendAuthError,
    BackendBadResponse,
    BackendError,
    ConfigError,
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

__all__ = ("DEFAULT_MODEL", "OpenAIBackend")

DEFAULT_MODEL = "gpt-4o-mini"

# What the SDK raises, and what a garbled event raises while it is parsed or read.
_FAILURES = (openai.OpenAIError, ValueError, TypeError, AttributeError, KeyError)


class OpenAIBackend(Backend):
    """Chat Completions or the Responses API, streamed, against ``base_url``."""

    type = "openai"
    default_model = DEFAULT_MODEL

    def __init__(self, config: BackendConfig | None = None) -> None:
        super().__init__(config)
        api = self.config.option("api", "chat")
        if api not in ("chat", "responses"):
            raise ConfigError(f"openai option api must be 'chat' or 'responses', got {api!r}")
        self._use_responses = api == "responses"
        base_url = self.config.base_url
        self._server = "OpenAI" if base_url is None else f"the server at {base_url}"
        # Self-hosted servers usually take no key, but the SDK insists on one.
        api_key = (self.config.api_key or os.environ.get("OPENAI_API_KEY")
                   or ("no-key" if base_url else None))
        try:
            self._client = AsyncOpenAI(api_key=api_key, base_url=base_url,
                                       timeout=self.config.timeout, max_retries=0)
        except openai.OpenAIError as exc:
            raise ConfigError("the openai backend needs an API key: set api_key in the "
                              "agent's config or OPENAI_API_KEY") from exc

    async def aclose(self) -> None:
        await self._client.close()

    def chat(self, messages: Sequence[ChatMessage]) -> AsyncIterator[StreamItem]:
        events = self._responses if self._use_responses else self._chat_completions
        return stream_with_retries(self.config, lambda: events(messages), self._translate)

    async def _chat_completions(self, messages: Sequence[ChatMessage]
                                ) -> AsyncGenerator[StreamItem, None]:
        config = self.config
        # OpenAI's newer models refuse max_tokens; compatible servers may not know its successor.
        official = config.base_url is None
        stream = await self._client.chat.completions.create(
            model=self.model, stream=True, stream_options={"include_usage": True},
            messages=cast("list[ChatCompletionMessageParam]", list(messages)),
            temperature=openai.omit if config.temperature is None else config.temperature,
            max_completion_tokens=config.max_tokens if official else openai.omit,
            max_tokens=openai.omit if official else config.max_tokens)
        text: list[str] = []
        usage, model, started = Usage(), self.model, False
        async with stream:
            async for event in stream:
                started, model = True, event.model or model
                if event.usage is not None:
                    usage = Usage(input_tokens=event.usage.prompt_tokens,
                                  output_tokens=event.usage.completion_tokens)
                for choice in event.choices or ():
                    if choice.delta is not None and choice.delta.content:
                        text.append(choice.delta.content)
                        yield Chunk(choice.delta.content)
        if not started:
            raise BackendBadResponse(f"{self._server} ended the stream before any chunk")
        yield Completion(output="".join(text), usage=self.price(usage), model=model)

    async def _responses(self, messages: Sequence[ChatMessage]
                         ) -> AsyncGenerator[StreamItem, None]:
        config = self.config
        stream = await self._client.responses.create(
            model=self.model, stream=True, max_output_tokens=config.max_tokens,
            input=cast(ResponseInputParam, list(messages)),
            temperature=openai.omit if config.temperature is None else config.temperature)
        text: list[str] = []
        final = None
        async with stream:
            async for event in stream:
                if isinstance(event, ResponseTextDeltaEvent) and event.delta:
                    text.append(event.delta)
                    yield Chunk(event.delta)
                elif isinstance(event, ResponseCompletedEvent | ResponseIncompleteEvent):
                    final = event.response
                elif isinstance(event, ResponseFailedEvent):
                    error = event.response.error
                    raise BackendError(f"{self._server} failed the response: "
                                       f"{_one_line(error.message if error else 'no reason')}")
                elif isinstance(event, ResponseErrorEvent):
                    raise BackendError(f"{self._server} reported an error: "
                                       f"{_one_line(event.message)}")
        if final is None:
            raise BackendBadResponse(f"{self._server} ended the stream without response.completed")
        usage = Usage()
        if final.usage is not None:
            usage = Usage(input_tokens=final.usage.input_tokens,
                          output_tokens=final.usage.output_tokens)
        yield Completion(output="".join(text), usage=self.price(usage),
                         model=str(final.model or self.model))

    def _translate(self, exc: Exception) -> BackendError | None:
        """The BackendError (or retryable Transient) an SDK or parsing failure means."""
        if not isinstance(exc, _FAILURES):
            return None
        server = self._server
        if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
            what = "the API key" if exc.status_code == 401 else "access"
            return BackendAuthError(f"{server} rejected {what} ({exc.status_code}): "
                                    f"{_server_message(exc)}")
        if isinstance(exc, openai.APIStatusError):
            return status_error(server, exc.status_code, _server_message(exc),
                                retry_after=retry_after_seconds(exc.response.headers))
        if isinstance(exc, openai.APITimeoutError):
            return Transient(f"{server} did not answer within {self.config.timeout}s")
        if isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__ or exc
            return Transient(f"cannot reach {server}: {_one_line(str(cause)) or exc.message}")
        if isinstance(exc, openai.APIError) and not isinstance(
                exc, openai.APIResponseValidationError):
            return BackendError(f"{server} reported an error: {_one_line(exc.message)}")
        return BackendBadResponse(f"{server} sent a malformed stream: "
                                  f"{type(exc).__name__}: {_one_line(str(exc))}")


def _one_line(text: str, limit: int = 300) -> str:
    return " ".join(text.split())[:limit]


def _server_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    message = body.get("message") if isinstance(body, dict) else body
    return _one_line(str(message or exc.message))
