"""The pieces every HTTP backend shares: Retry-After parsing and retries until the first item."""

from __future__ import annotations

import email.utils
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass

import httpx
import pytest

from agoramesh.errors import (
    BackendBadResponse,
    BackendError,
    BackendRateLimited,
    BackendUnavailable,
)
from agoramesh.nodes.backends.base import (
    BackendConfig,
    Transient,
    retry_after_seconds,
    stream_with_retries,
)

pytestmark = pytest.mark.backends


@pytest.mark.parametrize(("headers", "expected"), [
    ({}, None),
    ({"Retry-After": "5"}, 5.0),
    ({"Retry-After": " 0.25 "}, 0.25),
    ({"retry-after-ms": "1500"}, 1.5),
    ({"Retry-After-Ms": "100", "Retry-After": "7"}, 0.1),  # the finer header wins
    ({"retry-after-ms": "soon", "Retry-After": "2"}, 2.0),  # a garbled one is passed over
    ({"retry-after-ms": "nan", "Retry-After": "3"}, 3.0),
    ({"Retry-After": "-4"}, 0.0),
    ({"retry-after-ms": "-4"}, 0.0),
    ({"Retry-After": ""}, None),
    ({"Retry-After": "soon"}, None),
    ({"Retry-After": "inf"}, None),
    ({"Retry-After": "nan"}, None),
    ({"retry-after-ms": "inf"}, None),
    ({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),  # a date in the past: now
    ({"Retry-After": "Wed, 21 Oct 99999 07:28:00 GMT"}, None),
])
def test_retry_after_seconds(headers: dict[str, str], expected: float | None) -> None:
    assert retry_after_seconds(httpx.Headers(headers)) == expected


@pytest.mark.parametrize("usegmt", [True, False])  # "GMT", or "-0000": UTC without a zone
def test_retry_after_an_http_date_is_the_time_until_it(usegmt: bool) -> None:
    when = email.utils.formatdate(time.time() + 30, usegmt=usegmt)
    seconds = retry_after_seconds(httpx.Headers({"Retry-After": when}))
    assert seconds is not None
    assert 27 <= seconds <= 31


def _not_mine(exc: Exception) -> BackendError | None:
    return None


@dataclass
class Streams:
    """Opens fake streams: the first ``failures`` fail before any item, later ones
    fail after ``fail_after`` items when that is set."""

    items: tuple[int, ...] = (1, 2, 3)
    failures: int = 0
    fail_after: int | None = None
    error: Callable[[], Exception] = lambda: Transient("busy", retry_after=0)
    opened: int = 0
    finished: int = 0  # streams whose cleanup ran

    def __call__(self) -> AsyncGenerator[int, None]:
        return self._stream()

    async def _stream(self) -> AsyncGenerator[int, None]:
        self.opened += 1
        try:
            if self.opened <= self.failures:
                raise self.error()
            for index, item in enumerate(self.items):
                if index == self.fail_after:
                    raise self.error()
                yield item
        finally:
            self.finished += 1


CONFIG = BackendConfig(max_retries=3, max_backoff=0.01)


async def _drain(streams: Streams, translate: Callable[[Exception], BackendError | None]
                 = _not_mine, config: BackendConfig = CONFIG) -> list[int]:
    return [item async for item in stream_with_retries(config, streams, translate)]


async def test_a_stream_that_fails_before_its_first_item_is_opened_again() -> None:
    streams = Streams(failures=3)
    assert await _drain(streams) == [1, 2, 3]
    assert (streams.opened, streams.finished) == (4, 4)


async def test_failures_are_translated_before_they_are_judged() -> None:
    def translate(exc: Exception) -> BackendError | None:
        return Transient(f"cannot reach it: {exc}") if isinstance(exc, OSError) else None

    streams = Streams(failures=2, error=lambda: ConnectionResetError("reset"))
    assert await _drain(streams, translate) == [1, 2, 3]
    assert streams.opened == 3

    streams = Streams(failures=9, error=lambda: ConnectionResetError("reset"))
    with pytest.raises(BackendUnavailable, match=r"cannot reach it: reset .*4 attempts"):
        await _drain(streams, translate)
    assert streams.opened == 4


async def test_retries_run_out_as_unavailable_or_rate_limited() -> None:
    streams = Streams(failures=9)
    with pytest.raises(BackendUnavailable, match=r"busy \(gave up after 4 attempts\)"):
        await _drain(streams)
    assert (streams.opened, streams.finished) == (4, 4)

    streams = Streams(failures=9, error=lambda: Transient("slow down", rate_limited=True))
    with pytest.raises(BackendRateLimited, match="slow down"):
        await _drain(streams, config=BackendConfig(max_retries=1, max_backoff=0.01))
    assert streams.opened == 2


@pytest.mark.parametrize(("rate_limited", "kind"), [(False, BackendUnavailable),
                                                    (True, BackendRateLimited)])
async def test_a_failure_after_the_first_item_is_not_retried(
        rate_limited: bool, kind: type[BackendError]) -> None:
    streams = Streams(fail_after=1, error=lambda: Transient("broke", rate_limited=rate_limited))
    seen: list[int] = []
    with pytest.raises(kind, match=r"broke \(the stream had started, so it was not retried\)"):
        async for item in stream_with_retries(CONFIG, streams, _not_mine):
            seen.append(item)
    assert seen == [1]
    assert (streams.opened, streams.finished) == (1, 1)


async def test_a_translated_failure_after_the_first_item_is_not_retried() -> None:
    def translate(exc: Exception) -> BackendError | None:
        return Transient("lost the connection") if isinstance(exc, OSError) else None

    streams = Streams(fail_after=2, error=lambda: ConnectionResetError("reset"))
    seen: list[int] = []
    with pytest.raises(BackendUnavailable, match="lost the connection") as caught:
        async for item in stream_with_retries(CONFIG, streams, translate):
            seen.append(item)
    assert not isinstance(caught.value, Transient)
    assert seen == [1, 2]
    assert streams.opened == 1


@pytest.mark.parametrize("error", [lambda: BackendError("no such model"),
                                   lambda: BackendBadResponse("garbled")])
async def test_errors_that_are_not_transient_are_raised_at_once(
        error: Callable[[], Exception]) -> None:
    streams = Streams(failures=1, error=error)
    with pytest.raises(BackendError) as caught:
        await _drain(streams)
    assert type(caught.value) is type(error())
    assert streams.opened == 1


async def test_what_translate_does_not_know_passes_through_untouched() -> None:
    streams = Streams(failures=1, error=lambda: RuntimeError("a bug"))
    with pytest.raises(RuntimeError, match="a bug"):
        await _drain(streams)
    assert (streams.opened, streams.finished) == (1, 1)


async def test_a_stream_that_ends_before_any_item_is_a_bad_response() -> None:
    streams = Streams(items=())
    with pytest.raises(BackendBadResponse, match="ended without a completion"):
        await _drain(streams)
    assert streams.opened == 1


async def test_leaving_early_closes_the_stream() -> None:
    streams = Streams()
    stream = stream_with_retries(CONFIG, streams, _not_mine)
    assert await anext(stream) == 1
    await stream.aclose()  # type: ignore[attr-defined]
    assert (streams.opened, streams.finished) == (1, 1)
