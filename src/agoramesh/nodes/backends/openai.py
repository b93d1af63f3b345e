"""OpenAI, and any OpenAI-compatible server (vLLM, llama.cpp, …), through the official SDK.

Chat Completions by default; the option ``api: responses`` selects the Responses
API. Both stream: one :class:`Chunk` per text delta, then a :class:`Completion`
with the usage the server reports at the end of the stream.

The SDK's own retries are off (``max_retries=0``): :func:`retrying` retries the
opening of the stream — the request and its first event — so the requester
never sees output twice. Once the first event has arrived, a failure ends the
stream with a :class:`BackendError`.
"""

from __future__ import annotations

import email.utils
import functools
import math
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import TypeVar, cast

import openai
from openai import AsyncOpenAI, AsyncStream
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam
from openai.types.responses import (
    ResponseCompletedEvent,
    ResponseErrorEvent,
    ResponseFailedEvent,
    ResponseIncompleteEvent,
    ResponseInputParam,
    ResponseStreamEvent,
    ResponseTextDeltaEvent,
)

from agoramesh.errors import (
    BackendAuthError,
    BackendBadResponse,
    BackendError,
    BackendRateLimited,
    BackendUnavailable,
    ConfigError,
)
from agoramesh.nodes.backends.base import (
    Backend,
    BackendConfig,
    ChatMessage,
    Transient,
    retrying,
)
from agoramesh.nodes.task import Chunk, Completion, StreamItem, Usage

__all__ = ("DEFAULT_MODEL", "OpenAIBackend")

DEFAULT_MODEL = "gpt-4o-mini"

E = TypeVar("E")

# What the SDK raises, and what a garbled event raises while it is parsed or read.
_FAILURES = (openai.OpenAIError, ValueError, TypeError, AttributeError, KeyError)


class OpenAIBackend(Backend):
    """Chat Completions or the Responses API, streamed, against ``base_url``."""

    type = "openai"

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

    @property
    def model(self) -> str:
        return self.config.model or DEFAULT_MODEL

    async def aclose(self) -> None:
        await self._client.close()

    async def chat(self, messages: Sequence[ChatMessage]) -> AsyncIterator[StreamItem]:
        items = (self._responses(messages) if self._use_responses
                 else self._chat_completions(messages))
        try:
            while True:
                try:
                    item = await anext(items)
                except StopAsyncIteration:
                    return
                except _FAILURES as exc:
                    # Output may have been streamed already: a retry would repeat it.
                    raise _final(self._translate(exc)) from exc
                yield item
        finally:
            await items.aclose()

    async def _chat_completions(self, messages: Sequence[ChatMessage]
                                ) -> AsyncGenerator[StreamItem, None]:
        config = self.config
        # OpenAI's newer models refuse max_tokens; compatible servers may not know its successor.
        official = config.base_url is None

        def create() -> Awaitable[AsyncStream[ChatCompletionChunk]]:
            return self._client.chat.completions.create(
                model=self.model, stream=True, stream_options={"include_usage": True},
                messages=cast("list[ChatCompletionMessageParam]", list(messages)),
                temperature=openai.omit if config.temperature is None else config.temperature,
                max_completion_tokens=config.max_tokens if official else openai.omit,
                max_tokens=openai.omit if official else config.max_tokens)

        stream, event = await retrying(config, functools.partial(self._open, create))
        text: list[str] = []
        usage, model = Usage(), self.model
        async with stream:
            if event is None:
                raise BackendBadResponse(f"{self._server} ended the stream before any chunk")
            while event is not None:
                model = event.model or model
                if event.usage is not None:
                    usage = Usage(input_tokens=event.usage.prompt_tokens,
                                  output_tokens=event.usage.completion_tokens)
                for choice in event.choices or ():
                    if choice.delta is not None and choice.delta.content:
                        text.append(choice.delta.content)
                        yield Chunk(choice.delta.content)
                event = await anext(stream, None)
        yield Completion(output="".join(text), usage=self.price(usage), model=model)

    async def _responses(self, messages: Sequence[ChatMessage]
                         ) -> AsyncGenerator[StreamItem, None]:
        config = self.config

        def create() -> Awaitable[AsyncStream[ResponseStreamEvent]]:
            return self._client.responses.create(
                model=self.model, stream=True, max_output_tokens=config.max_tokens,
                input=cast(ResponseInputParam, list(messages)),
                temperature=openai.omit if config.temperature is None else config.temperature)

        stream, event = await retrying(config, functools.partial(self._open, create))
        text: list[str] = []
        final = None
        async with stream:
            while event is not None:
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
                event = await anext(stream, None)
        if final is None:
            raise BackendBadResponse(f"{self._server} ended the stream without response.completed")
        usage = Usage()
        if final.usage is not None:
            usage = Usage(input_tokens=final.usage.input_tokens,
                          output_tokens=final.usage.output_tokens)
        yield Completion(output="".join(text), usage=self.price(usage),
                         model=str(final.model or self.model))

    async def _open(self, create: Callable[[], Awaitable[AsyncStream[E]]]
                    ) -> tuple[AsyncStream[E], E | None]:
        """Send the request and wait for its first event: the part that may be retried.

        A coroutine function, so that tenacity awaits what it returns.
        """
        try:
            stream = await create()
        except _FAILURES as exc:
            raise self._translate(exc) from exc
        try:
            return stream, await anext(stream, None)
        except BaseException as exc:
            await stream.close()
            if isinstance(exc, _FAILURES):
                raise self._translate(exc) from exc
            raise

    def _translate(self, exc: BaseException) -> BackendError:
        """The BackendError (or retryable Transient) an SDK or parsing failure means."""
        server = self._server
        if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
            what = "the API key" if exc.status_code == 401 else "access"
            return BackendAuthError(f"{server} rejected {what} ({exc.status_code}): "
                                    f"{_server_message(exc)}")
        if isinstance(exc, openai.RateLimitError):
            return Transient(f"{server} is rate limiting us (429): {_server_message(exc)}",
                             rate_limited=True, retry_after=_retry_after(exc.response.headers))
        if isinstance(exc, openai.APIStatusError):
            message = f"{server} answered {exc.status_code}: {_server_message(exc)}"
            if exc.status_code >= 500 or exc.status_code == 408:
                return Transient(message, retry_after=_retry_after(exc.response.headers))
            return BackendError(message)
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


def _final(error: BackendError) -> BackendError:
    if not isinstance(error, Transient):
        return error
    kind = BackendRateLimited if error.rate_limited else BackendUnavailable
    return kind(f"{error} (the stream had started, so it was not retried)")


def _one_line(text: str, limit: int = 300) -> str:
    return " ".join(text.split())[:limit]


def _server_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    message = body.get("message") if isinstance(body, dict) else body
    return _one_line(str(message or exc.message))


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        try:
            seconds = float(headers.get(name, "")) * scale
        except ValueError:
            continue
        return seconds if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(headers.get("retry-after", ""))
    except (TypeError, ValueError):
        return None
    return when.timestamp() - time.time()
