"""Fixtures shared by the backend tests."""

from __future__ import annotations

import pytest

from agoramesh.nodes.backends import base


@pytest.fixture
def retry_waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The waits the retry loop chose, in order; it does not actually sleep."""
    waits: list[float] = []

    async def record(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr(base, "_pause", record)
    return waits

