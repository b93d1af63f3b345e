"""One ``agoramesh up`` (HTTP API, metrics, trajectories) shared by the end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from agoramesh.testing import UpProcess


@pytest.fixture(scope="session")
def up_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpProcess]:
    """3 seeds and the offline demo agents (coder, runner, analyst, pro, con).

    The HTTP API and the metrics endpoint are on; trajectories go to ``<dir>/trajectories``.
    """
    base = tmp_path_factory.mktemp("up")
    up = UpProcess(base / "mesh", "--http-port", "0", "--metrics-port", "0",
                   "--trajectory-dir", str(base / "trajectories"))
    try:
        yield up
        up.stop_cleanly()
    finally:
        up.reap()


@pytest.fixture
def mesh_url(up_mesh: UpProcess) -> str:
    """The shared ``agoramesh up``'s URL: 3 seeds and the demo agents."""
    return up_mesh.url
