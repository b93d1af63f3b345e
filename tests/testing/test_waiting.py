"""wait_until: plain and async conditions, always bounded."""

from __future__ import annotations

import pytest

from agoramesh.testing import wait_until


async def test_a_plain_condition_is_polled_until_true() -> None:
    calls: list[int] = []
    await wait_until(lambda: calls.append(1) or len(calls) == 3)
    assert len(calls) == 3


async def test_an_async_condition_is_awaited() -> None:
    calls: list[int] = []

    async def third_time() -> bool:
        calls.append(1)
        return len(calls) == 3

    await wait_until(third_time, interval=0)
    assert len(calls) == 3


async def test_a_condition_never_met_times_out() -> None:
    async def never() -> bool:
        return False

    with pytest.raises(TimeoutError):
        await wait_until(never, timeout=0.05)
