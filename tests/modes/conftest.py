"""Fixtures for the decentralized-mode tests: teams of agents closed and checked at teardown.

Helpers (configs, the episode loop, process checks) are in ``decentralized_support``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from decentralized_support import Team, nats_children, wait_gone


@pytest.fixture
def team() -> Iterator[Team]:
    """Agents for one test; all closed (and their servers checked gone) afterwards."""
    group = Team()
    try:
        yield group
    finally:
        group.close()


@pytest.fixture(scope="module")
def module_team() -> Iterator[Team]:
    """Agents shared by the tests of one module; closed and checked after the module."""
    group = Team()
    try:
        yield group
    finally:
        group.close()


@pytest.fixture(scope="module", autouse=True)
def _no_server_left_behind() -> Iterator[None]:
    """After each module: no nats-server child of this process is left running."""
    before = set(nats_children())
    yield
    left = [pid for pid in nats_children() if pid not in before]
    left = wait_gone(left)
    assert not left, f"nats-server children left running after the module: {left}"


