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
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import IO, Any

from agoramesh.bus.server import parent_death_signal
from agoramesh.errors import BackendError, InvalidInput

if sys.platform != "win32":
    import resource

__all__ = ("CLEANUP_TIMEOUT", "MAX_CODE_BYTES", "MAX_TIMEOUT", "OUTPUT_LIMIT", "run_python")

log = logging.getLogger("agoramesh.backends")

# --- code.run.python ---------------------------------------------------------------------

MAX_TIMEOUT = 10.0
MAX_CODE_BYTES = 100_000  # a command-line argument may not exceed 128 KiB on Linux
OUTPUT_LIMIT = 64 * 1024
_FILE_LIMIT = 1024 * 1024
CLEANUP_TIMEOUT = 10.0  # seconds a cancelled run may take to stop its child and clean up
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


def _write_stdin(root: str, stdin: str) -> None:
    with open(os.path.join(root, "stdin"), "wb") as file:
        file.write(stdin.encode("utf-8", "replace"))


@contextlib.contextmanager
def _open_streams(root: str) -> Iterator[tuple[IO[bytes], IO[bytes], IO[bytes]]]:
    """The child's stdin, stdout and stderr, closed on leaving (the child keeps its copies).

    Opened in the event loop's thread, not in a worker thread whose result (the
    open files) a cancellation could abandon; while they are open the only await
    is the child's start, which asyncio undoes itself if it is cancelled.
    """
    with open(os.path.join(root, "stdin"), "rb") as stdin, \
            open(os.path.join(root, "stdout"), "wb") as stdout, \
            open(os.path.join(root, "stderr"), "wb") as stderr:
        yield stdin, stdout, stderr


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

    Cancelling the call stops the run rather than abandoning it: the run goes
    on in its own task, shielded, until it has killed and reaped the child (or
    not started it), closed its files and removed its directory (within
    :data:`CLEANUP_TIMEOUT` seconds), then the cancellation propagates.
    """
    if len(code.encode("utf-8", "surrogatepass")) > MAX_CODE_BYTES or "\x00" in code:
        raise InvalidInput(f"code must be at most {MAX_CODE_BYTES} bytes, without NUL characters")
    stop = asyncio.Event()
    run = asyncio.ensure_future(_run(code, stdin, timeout, stop))
    run.set_name("agoramesh-sandbox")
    try:
        return await asyncio.shield(run)
    except asyncio.CancelledError:
        stop.set()
        await _wait_out(run, CLEANUP_TIMEOUT)
        raise


async def _wait_out(run: asyncio.Task[Any], bound: float) -> None:
    """Wait up to ``bound`` seconds for ``run`` to end, through further cancellations."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound
    while not run.done() and (remaining := deadline - loop.time()) > 0:
        with contextlib.suppress(asyncio.CancelledError):  # re-raised by the caller
            await asyncio.wait((run,), timeout=remaining)
    if not run.done():  # stuck (an unkillable child, a slow disk): give up on it
        log.warning("a cancelled code.run.python run did not stop within %.0f s", bound)
        run.cancel()
    run.add_done_callback(_retrieve)


def _retrieve(run: asyncio.Task[Any]) -> None:
    """Consume the result of a run nobody awaits any more, logging a failure."""
    if not run.cancelled() and (error := run.exception()) is not None:
        log.debug("a cancelled code.run.python run failed: %r", error)


async def _run(code: str, stdin: str, timeout: float, stop: asyncio.Event) -> dict[str, Any]:
    """The run itself: ``stop`` set ends it early (the child killed, or never started)."""
    limits = _sandbox_limits(timeout)
    die_with_node = parent_death_signal(signal.SIGKILL)  # SIGKILL of the node: no orphan

    def prepare() -> None:  # pragma: no cover - runs in the child
        if die_with_node is not None:
            die_with_node()
        for which, pair in limits:
            resource.setrlimit(which, pair)

    root = tempfile.mkdtemp(prefix="agoramesh-run-")
    timed_out = False
    started = time.monotonic()
    try:
        workdir = os.path.join(root, "work")
        os.mkdir(workdir)
        await asyncio.to_thread(_write_stdin, root, stdin)
        if stop.is_set():
            raise asyncio.CancelledError  # cancelled before the child started
        with _open_streams(root) as streams:
            try:
                process = await asyncio.create_subprocess_exec(
                    sys.executable, "-I", "-S", "-c", code, cwd=workdir,
                    env={"PATH": _SANDBOX_PATH}, start_new_session=True,
                    preexec_fn=prepare if limits or die_with_node else None,
                    stdin=streams[0], stdout=streams[1], stderr=streams[2])
            except (OSError, ValueError, subprocess.SubprocessError) as exc:
                raise BackendError(f"could not start the sandbox: {exc}") from exc
        try:
            timed_out = not await _ended(process, timeout, stop) and not stop.is_set()
        finally:
            _kill_group(process.pid)
            with contextlib.suppress(TimeoutError):  # unreaped: the child watcher reaps it
                async with asyncio.timeout(CLEANUP_TIMEOUT):
                    await process.wait()
    finally:
        stdout, stderr = await asyncio.to_thread(_finish, root)
    return {"stdout": stdout, "stderr": stderr, "exit_code": process.returncode,
            "timed_out": timed_out, "duration_ms": round((time.monotonic() - started) * 1000, 1)}


async def _ended(process: asyncio.subprocess.Process, timeout: float,
                 stop: asyncio.Event) -> bool:
    """Wait until ``process`` exits (True), ``timeout`` passes or ``stop`` is set (False)."""
    waits = (asyncio.ensure_future(process.wait()), asyncio.ensure_future(stop.wait()))
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
    return process.returncode is not None
