"""The agoramesh CLI run as a user runs it, in end-to-end tests: output, exit code, errors."""

from __future__ import annotations

import re
import subprocess

from agoramesh.testing.processes import AGORAMESH

__all__ = ("assert_one_line_error", "cli")


def cli(*args: str, stdin: str | bytes | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``agoramesh *args`` to completion (``timeout`` seconds at most), output captured."""
    if isinstance(stdin, bytes):
        stdin = stdin.decode()
    return subprocess.run([*AGORAMESH, *args], input=stdin, capture_output=True, text=True,
                          timeout=timeout, check=False)


def assert_one_line_error(result: subprocess.CompletedProcess[str], pattern: str) -> None:
    """Exit code 1 and one ``agoramesh: error: …`` line on stderr that matches ``pattern``."""
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("agoramesh: error: "), result.stderr
    assert re.search(pattern, lines[0]), lines[0]
