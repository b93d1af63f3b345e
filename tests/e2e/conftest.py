"""One ``agoramesh up --http-port 0`` shared by the end-to-end tests that only use it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from agoramesh.testing import UpProcess, assert_stopped


@pytest.fixture(scope="session")
def up_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpProcess]:
    """3 seeds and the offline demo agents (coder, runner, analyst, pro, con), HTTP API on."""
    up = UpProcess(tmp_path_factory.mktemp("up") / "mesh", "--http-port", "0")
    try:
        yield up
        up.interrupt()
        assert up.process.returncode == 0, up.stderr
        assert_stopped(up.pids)
    finally:
        up.reap()
