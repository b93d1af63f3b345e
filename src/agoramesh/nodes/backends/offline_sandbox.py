"""Running Python snippets in a bounded subprocess (the ``code.run.python`` skill).

The code runs in a subprocess with a fresh working directory, an environment
holding only PATH, resource limits and a wall-clock timeout that kills its
whole process group. That bounds what runaway code costs (time, memory, file
size, processes); it is not a security boundary against hostile code, which
can still read what the node's user can read: run nodes that accept untrusted
code in a container.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import IO, Any

from agoramesh.errors import BackendError, InvalidInput

if sys.platform != "win32":
    import resource

__all__ = ("MAX_CODE_BYTES", "MAX_TIMEOUT", "OUTPUT_LIMIT", "run_python")

# --- code.run.python ---------------------------------------------------------------------

MAX_TIMEOUT = 10.0
MAX_CODE_BYTES = 100_000  # a command-line argument may not exceed 128 KiB on Linux
OUTPUT_LIMIT = 64 * 1024
_FILE_LIMIT = 1024 * 1024
_SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"


def _sandbox_limits(timeout: float) -> list[tuple[int, tuple[int, int]]]:
    """The rlimits for one run, computed here so the forked child only calls setrlimit."""
    if not sys.platform.startswith("linux"):
        return []
    cpu = math.ceil(timeout) + 1
    wanted = [
        (resource.RLIMIT_AS, 256 * 1024 * 1024, 256 * 1024 * 1024),
        (resource.RLIMIT_CPU, cpu, cpu + 1),  # SIGXCPU at the soft limit, SIGKILL at the hard
        (resource.RLIMIT_FSIZE, _FILE_LIMIT, _FILE_LIMIT),  # stdout and stderr included
        (resource.RLIMIT_NOFILE, 64, 64),
        (resource.RLIMIT_NPROC, 0, 0),  # no fork or threads (root is exempt: see killpg)
        (resource.RLIMIT_CORE, 0, 0),
    ]
    limits = []
    for which, soft, hard in wanted:
        ceiling = resource.getrlimit(which)[1]
        if ceiling != resource.RLIM_INFINITY:
            soft, hard = min(soft, ceiling), min(hard, ceiling)
        limits.append((which, (soft, hard)))
    return limits


def _open_streams(root: str, stdin: str) -> tuple[IO[bytes], IO[bytes], IO[bytes]]:
    with open(os.path.join(root, "stdin"), "wb") as file:
        file.write(stdin.encode("utf-8", "replace"))
    return (open(os.path.join(root, "stdin"), "rb"),  # run_python closes all three
            open(os.path.join(root, "stdout"), "wb"), open(os.path.join(root, "stderr"), "wb"))


def _output(path: str) -> str:
    try:
        with open(path, "rb") as file:
            data = file.read(OUTPUT_LIMIT + 1)
    except FileNotFoundError:  # the run failed before it started
        return ""
    text = data[:OUTPUT_LIMIT].decode("utf-8", "replace")
    return text + "\n[output truncated]" if len(data) > OUTPUT_LIMIT else text


def _finish(root: str) -> tuple[str, str]:
    try:
        return _output(os.path.join(root, "stdout")), _output(os.path.join(root, "stderr"))
    finally:
        # Code may leave read-only directories behind; make them writable first.
        for parent, dirs, _ in os.walk(root):
            for name in dirs:
                with contextlib.suppress(OSError):
                    os.chmod(os.path.join(parent, name), 0o700)
        shutil.rmtree(root, ignore_errors=True)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


async def run_python(code: str, *, stdin: str = "", timeout: float = 2.0) -> dict[str, Any]:
    """Run ``code`` with ``python -I -S`` in a throwaway directory, bounded in time and size.

    Standard streams are files beside the working directory, not pipes, so the
    parent never buffers a flood and a lingering descendant holding a pipe
    cannot stall the run. The child leads its own process group: when it exits
    or times out the whole group is killed, so nothing it started outlives it.
    """
    if len(code.encode("utf-8", "surrogatepass")) > MAX_CODE_BYTES or "\x00" in code:
        raise InvalidInput(f"code must be at most {MAX_CODE_BYTES} bytes, without NUL characters")
    limits = _sandbox_limits(timeout)

    def apply_limits() -> None:
        for which, pair in limits:
            resource.setrlimit(which, pair)

    root = tempfile.mkdtemp(prefix="agoramesh-run-")
    timed_out = False
    started = time.monotonic()
    try:
        workdir = os.path.join(root, "work")
        os.mkdir(workdir)
        streams = await asyncio.to_thread(_open_streams, root, stdin)
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-I", "-S", "-c", code, cwd=workdir,
                env={"PATH": _SANDBOX_PATH}, start_new_session=True,
                preexec_fn=apply_limits if limits else None,
                stdin=streams[0], stdout=streams[1], stderr=streams[2])
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            raise BackendError(f"could not start the sandbox: {exc}") from exc
        finally:
            for stream in streams:
                stream.close()
        try:
            async with asyncio.timeout(timeout):
                await process.wait()
        except TimeoutError:
            timed_out = True
        finally:
            _kill_group(process.pid)
            await process.wait()
    finally:
        stdout, stderr = await asyncio.to_thread(_finish, root)
    return {"stdout": stdout, "stderr": stderr, "exit_code": process.returncode,
            "timed_out": timed_out, "duration_ms": round((time.monotonic() - started) * 1000, 1)}
