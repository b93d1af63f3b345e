"""The README's Python tour runs as written (only its data directory is redirected)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_python_tour_runs(tmp_path: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) == 2
    code = blocks[0].replace('Path("/tmp/agora-tour")', f'Path("{tmp_path}")')
    assert str(tmp_path) in code
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True {'result': {'text': 'hi'}}"
    assert not list(tmp_path.glob("*/*.pid")), "the tour must stop its servers"


def test_readme_decentralized_example_runs() -> None:
    """M-7's usage loop in the README succeeds over a real mesh and leaves no server."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    code = blocks[1] + (
        "\nimport agoramesh.bus.server as s\n"
        "print(all(not s.process_alive(a.comm.member.server.pid) for a in agents))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, check=False, cwd=README.parent)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True"]
