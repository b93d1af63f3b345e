"""The console's browser test writes screenshots; the run's summary says where."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_WRITTEN = pytest.StashKey[Path]()


@pytest.fixture
def artifacts(request: pytest.FixtureRequest) -> Path:
    """Where screenshots go: ``$AGORAMESH_ARTIFACTS``, default ``build/artifacts/console/``
    in the repository; named in the terminal summary of a run that wrote there."""
    path = Path(os.environ.get("AGORAMESH_ARTIFACTS")
                or Path(__file__).resolve().parents[2] / "build" / "artifacts" / "console")
    path.mkdir(parents=True, exist_ok=True)
    request.config.stash[_WRITTEN] = path
    return path


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter,
                            config: pytest.Config) -> None:
    path = config.stash.get(_WRITTEN, None)
    if path is not None:
        terminalreporter.write_line(f"console screenshots: {path}")
