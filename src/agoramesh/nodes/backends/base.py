"""The one interface every backend implements, and what they share.

A backend turns a :class:`Task` (or a chat) into a stream: zero or more
:class:`Chunk` items, then exactly one :class:`Completion` with the output and
its :class:`Usage`. Backends raise only :class:`~agoramesh.errors.BackendError`
subclasses (auth, rate limit, unavailable, bad response), so the node can tell
the requester what went wrong in one typed word.

Transient failures are retried by :func:`retrying` (tenacity): rate limits
honour the server's ``Retry-After``, other transient errors back off
exponentially with jitter; authentication errors are never retried.
:func:`stream_with_retries` retries a stream only until its first item: after
that, the requester has seen output and a retry would duplicate it.
"""

from __future__ import annotations

import abc
import asyncio
import email.utils
import json
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any, ClassVar, Literal, TypedDict, TypeVar

import tenacity

from agoramesh.errors import (
    BackendAuthError,
    BackendBadResponse,
    BackendError,
    BackendRateLimited,
    BackendUnavailable,
)
from agoramesh.nodes.capability import Capability
from agoramesh.nodes.task import Completion, StreamItem, Task, Usage

__all__ = (
    "Backend",
    "BackendConfig",
    "ChatMessage",
    "Transient",
    "collect",
    "retry_after_seconds",
    "retrying",
    "status_error",
    "stream_with_retries",
    "task_prompt",
)

T = TypeVar("T")


class ChatMessage(TypedDict):
    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True, kw_only=True, slots=True)
class BackendConfig:
    """Settings for one backend. Prices are USD per 1000 tokens."""

    model: str | None = None
    api_key: str | None = None
    base_url: str | None = None
    timeout: float = 60.0
    max_retries: int = 3
    max_backoff: float = 30.0
    temperature: float | None = None
    max_tokens: int = 1024
    input_price_per_1k: float = 0.0
    output_price_per_1k: float = 0.0
    system_prompt: str | None = None
    command: tuple[str, ...] = ()  # CLI and command backends: the program and its arguments
    workdir: Path | None = None
    env: tuple[tuple[str, str], ...] = ()
    options: tuple[tuple[str, Any], ...] = field(default=())  # backend-specific extras

    def option(self, name: str, default: Any = None) -> Any:
        return dict(self.options).get(name, default)


class Transient(BackendError):
    """A failure worth retrying; ``retry_after`` is the server's hint in seconds."""

    def __init__(self, message: str, *, retry_after: float | None = None,
                 rate_limited: bool = False) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.rate_limited = rate_limited


def _wait(config: BackendConfig) -> Callable[[tenacity.RetryCallState], float]:
    backoff = tenacity.wait_exponential_jitter(multiplier=0.5, max=config.max_backoff)

    def wait(state: tenacity.RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, Transient) and error.retry_after is not None:
            return min(max(0.0, error.retry_after), config.max_backoff)
        return float(backoff(state))

    return wait


async def _pause(seconds: float) -> None:
    """The sleep between attempts (a module global: tests record the waits chosen)."""
    await asyncio.sleep(seconds)


async def retrying(config: BackendConfig, call: Callable[[], Awaitable[T]]) -> T:
    """``await call()``, retrying :class:`Transient` failures as configured.

    When the retries run out, the last failure is raised as
    :class:`BackendRateLimited` or :class:`BackendUnavailable`.
    """
    retryer = tenacity.AsyncRetrying(
        retry=tenacity.retry_if_exception_type(Transient),
        stop=tenacity.stop_after_attempt(config.max_retries + 1),
        wait=_wait(config),
        sleep=_pause,
        reraise=True,
    )
    async def attempt() -> T:  # tenacity only awaits coroutine functions, not any callable
        return await call()

    try:
        return await retryer(attempt)
    except Transient as exc:
        kind = BackendRateLimited if exc.rate_limited else BackendUnavailable
        raise kind(f"{exc} (gave up after {config.max_retries + 1} attempts)") from exc


async def stream_with_retries(
        config: BackendConfig, open_stream: Callable[[], AsyncGenerator[T, None]],
        translate: Callable[[Exception], BackendError | None]) -> AsyncIterator[T]:
    """Stream ``open_stream()``, opening it again (see :func:`retrying`) until its first item.

    ``translate`` turns what the stream raises into a :class:`BackendError` (a
    :class:`Transient` when a retry may help), or ``None`` to let it through as
    it is. After the first item nothing is retried: a :class:`Transient` ends
    the stream as :class:`BackendRateLimited` or :class:`BackendUnavailable`.
    """
    async def first_item() -> tuple[T, AsyncGenerator[T, None]]:
        stream = open_stream()
        try:
            return await _next(stream, translate), stream
        except StopAsyncIteration:
            raise BackendBadResponse("the backend stream ended without a completion") from None
        except BaseException:
            await stream.aclose()
            raise

    first, rest = await retrying(config, first_item)
    try:
        yield first
        while True:
            try:
                item = await _next(rest, translate)
            except StopAsyncIteration:
                return
            except Transient as exc:
                kind = BackendRateLimited if exc.rate_limited else BackendUnavailable
                raise kind(f"{exc} (the stream had started, so it was not retried)") from exc
            yield item
    finally:  # a consumer that stops early must not leave the connection open
        await rest.aclose()


async def _next(stream: AsyncGenerator[T, None],
                translate: Callable[[Exception], BackendError | None]) -> T:
    try:
        return await anext(stream)
    except (BackendError, StopAsyncIteration):
        raise
    except Exception as exc:
        if (error := translate(exc)) is None:
            raise
        raise error from exc


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """How long the server asks us to wait, or ``None`` when it does not say.

    ``retry-after-ms`` (sent by OpenAI and Anthropic) wins over ``Retry-After``,
    which is seconds or an HTTP date. ``headers`` should match names without
    regard to case, as ``httpx.Headers`` does. Values that do not parse are ignored.
    """
    if (millis := _finite(headers.get("retry-after-ms"))) is not None:
        return max(0.0, millis / 1000)
    value = headers.get("retry-after") or ""
    if (seconds := _finite(value)) is None:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:  # "-0000": a date in UTC from a sender that names no zone
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - time.time()
    return max(0.0, seconds)


def status_error(provider: str, status: int, message: str, *,
                 retry_after: float | None = None) -> BackendError:
    """What an HTTP error status from ``provider`` means to the node.

    401 and 403 are :class:`BackendAuthError` (never retried); 429 is a
    rate-limited :class:`Transient`; 408, 409 and 5xx are a :class:`Transient`
    (``retry_after``: the server's hint, see :func:`retry_after_seconds`);
    anything else is the request's fault, a plain :class:`BackendError`.
    """
    if status in (401, 403):
        return BackendAuthError(f"{provider} refused the credentials (HTTP {status}): {message}")
    if status == 429:
        return Transient(f"rate limited by {provider} (HTTP 429): {message}", rate_limited=True,
                         retry_after=retry_after)
    if status in (408, 409) or status >= 500:
        return Transient(f"{provider} unavailable (HTTP {status}): {message}",
                         retry_after=retry_after)
    return BackendError(f"{provider} rejected the request (HTTP {status}): {message}")


def _finite(text: str | None) -> float | None:
    try:
        number = float(text or "")
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def task_prompt(task: Task) -> str:
    """The prompt an LLM backend sends for a task.

    ``parameters.prompt`` (or ``text`` / ``code``) is used as it is; anything
    else is rendered as JSON under the capability name.
    """
    params = task.parameters
    for key in ("prompt", "text", "code", "question"):
        if isinstance(params.get(key), str) and len(params) == 1:
            return str(params[key])
    if isinstance(params.get("prompt"), str):
        rest = {k: v for k, v in params.items() if k != "prompt"}
        return f"{params['prompt']}\n\nInputs:\n{json.dumps(rest, indent=2, default=str)}"
    return (f"Task: {task.capability}\nInputs:\n"
            f"{json.dumps(params, indent=2, default=str)}")


async def collect(stream: AsyncIterator[StreamItem]) -> Completion:
    """Drain a stream and return its Completion (chunks are dropped)."""
    completion: Completion | None = None
    async for item in stream:
        if isinstance(item, Completion):
            completion = item
    if completion is None:
        raise BackendBadResponse("the backend stream ended without a completion")
    return completion


class Backend(abc.ABC):
    """One provider or program behind an agent.

    Subclasses set ``type`` (and ``default_model``, used when the config names
    no model) and implement :meth:`chat`; :meth:`execute` turns a task into a
    chat by default. Backends own their clients: ``aclose`` releases them.
    """

    type: ClassVar[str]
    #: The model used when the config names none; "" for backends without one.
    default_model: ClassVar[str] = ""

    def __init__(self, config: BackendConfig | None = None) -> None:
        self.config = config or BackendConfig()

    @property
    def model(self) -> str:
        """The configured model, else ``default_model`` ("": none known)."""
        return self.config.model or self.default_model

    async def offered(self, names: Sequence[str] = ()) -> tuple[Capability, ...] | None:
        """The capabilities this backend finds it has once it reaches what it fronts (an MCP
        server's tools, an A2A agent's skills), those of ``names`` only if given; None when
        the catalogue of its type decides (:func:`~agoramesh.nodes.catalog.capabilities_for`).
        A ConfigError when what it fronts cannot be reached."""
        return None

    def price(self, usage: Usage) -> Usage:
        return usage.priced(input_per_1k=self.config.input_price_per_1k,
                            output_per_1k=self.config.output_price_per_1k)

    def messages_for(self, task: Task) -> list[ChatMessage]:
        messages: list[ChatMessage] = []
        if self.config.system_prompt:
            messages.append({"role": "system", "content": self.config.system_prompt})
        messages.append({"role": "user", "content": task_prompt(task)})
        return messages

    async def execute(self, task: Task, context: dict[str, Any] | None = None
                      ) -> AsyncGenerator[StreamItem, None]:
        """Stream the task's output: chunks, then one Completion.

        The default asks :meth:`chat` and wraps the text as ``{"text": …}``.
        """
        stream = self.chat(self.messages_for(task))
        try:
            async for item in stream:
                if isinstance(item, Completion):
                    output = item.output if isinstance(item.output, dict) else {"text": item.output}
                    yield Completion(output=output, usage=item.usage, model=item.model)
                else:
                    yield item
        finally:  # a consumer that stops early must not leave the inner stream (or process) open
            close = getattr(stream, "aclose", None)
            if close is not None:
                await close()

    @abc.abstractmethod
    def chat(self, messages: Sequence[ChatMessage]) -> AsyncIterator[StreamItem]:
        """Stream a reply to ``messages``: chunks, then one Completion (output: the text)."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release clients and subprocesses."""
