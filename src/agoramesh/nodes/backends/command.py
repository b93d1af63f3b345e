"""Any program as a backend: the task as JSON on stdin, the output as JSON on stdout.

The program reads one JSON object from stdin, ``Task.as_dict()`` (plus
``context`` when there is one) for a task or ``{"messages": [...]}`` for a
chat, and prints its answer as one JSON document on stdout: the output itself,
or ``{"output": ..., "usage": {"input_tokens", "output_tokens", "cost_usd"}}``
when the document has exactly those two keys (no cost, or 0, is priced from the
config). Lines of the form ``{"chunk": "text"}`` printed before the answer are
streamed as :class:`Chunk` items. A non-zero exit is a :class:`BackendError`
that quotes the end of stderr.

:class:`ChildProcess` is the process hygiene this module shares with the
coding-agent CLIs (:mod:`agoramesh.nodes.backends.cli`): no shell, one
deadline (``config.timeout``) for the whole run, stderr captured for error
messages, and the process group killed on every way out: done, failed, timed
out, cancelled, or a consumer that stopped iterating early. A node that dies
with no way out (SIGKILL, a crash) takes its child along: on Linux the child
gets a parent-death SIGKILL, so the kernel kills it with the node, whether it
is mid-run, still waiting for the rest of its input (it never runs on a
truncated request) or not yet started (then it exits before running the
program). Only the child is covered: processes the program itself started
outlive the node unless the program stops them. The input is written whole,
within the deadline, before the child counts as started.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from agoramesh.bus.server import parent_death_signal
from agoramesh.errors import BackendBadResponse, BackendError, BackendUnavailable
from agoramesh.nodes.backends.base import Backend, BackendConfig, ChatMessage
from agoramesh.nodes.task import Chunk, Completion, StreamItem, Task, Usage

__all__ = ("ChildProcess", "CommandBackend")

log = logging.getLogger("agoramesh.backends")

_LINE_LIMIT = 16 * 1024 * 1024  # one stream-json line can carry a whole file an agent read
_MAX_OUTPUT = 64 * 1024 * 1024
_STDERR_KEPT = 8192  # bytes of stderr remembered for error messages
_REAP_TIMEOUT = 5.0  # after SIGKILL; only a stuck kernel or an escaped grandchild waits this long
_CHUNK_LINE = re.compile(r'\s*\{\s*"chunk"\s*:')


class ChildProcess:
    """A program run without a shell, bounded by ``config.timeout``, killed on exit.

    ::

        async with ChildProcess(argv, config) as child:
            async for line in child:   # stdout, one stripped line at a time, blanks skipped
                ...
            await child.finish()       # BackendError unless it exited with 0

    The child leads a new session, so leaving the block kills its whole process
    group: tools and shells an agent started go with it. ``stdin`` is written
    whole (within the deadline) and closed before the block is entered; a
    child that exits without reading it all is judged by its exit status.

    If the node itself dies (SIGKILL, a crash), no block is left: instead the
    child is spawned with a parent-death SIGKILL (Linux only), so the kernel
    kills it with its parent (for Linux, the thread running the event loop),
    or it exits before exec if the parent is already gone. That signal is not
    inherited: grandchildren the program started itself survive the node
    unless the program stops them.
    """

    def __init__(self, argv: Sequence[str], config: BackendConfig, *, name: str | None = None,
                 stdin: bytes | None = None, hint: str = "check the backend's command") -> None:
        if not argv or not argv[0]:
            raise BackendError("no program to run: the backend's command is empty")
        self.argv = tuple(argv)
        self.name = name or Path(argv[0]).name
        self._config = config
        self._stdin = stdin
        self._hint = hint
        self._proc: asyncio.subprocess.Process | None = None
        self._stderr = bytearray()
        self._stderr_reader: asyncio.Task[None] | None = None
        self._deadline = 0.0

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    async def __aenter__(self) -> ChildProcess:
        workdir = self._config.workdir
        pipe, devnull = asyncio.subprocess.PIPE, asyncio.subprocess.DEVNULL
        self._deadline = asyncio.get_running_loop().time() + self._config.timeout
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *self.argv, cwd=workdir, env={**os.environ, **dict(self._config.env)},
                stdin=devnull if self._stdin is None else pipe, stdout=pipe, stderr=pipe,
                limit=_LINE_LIMIT, start_new_session=True,
                preexec_fn=parent_death_signal(signal.SIGKILL))
        except FileNotFoundError as exc:
            if workdir is not None and exc.filename != self.argv[0]:  # Popen's name for a bad cwd
                raise BackendError(f"{self.name}: workdir {workdir} does not exist") from None
            where = "" if os.sep in self.argv[0] else " on PATH"
            raise BackendError(f"{self.argv[0]} not found{where}; {self._hint}") from None
        except PermissionError:
            raise BackendError(f"{self.argv[0]} is not executable; {self._hint}") from None
        except OSError as exc:
            raise BackendError(f"could not start {self.name}: {exc}") from exc
        self._stderr_reader = asyncio.create_task(self._read_stderr())
        if self._stdin is not None:
            try:
                await self._write_stdin(self._stdin)
            except BaseException:  # timed out or cancelled: no block will close it
                await self.close()
                raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __aiter__(self) -> ChildProcess:
        return self

    async def __anext__(self) -> str:
        stdout = self._process.stdout
        assert stdout is not None
        while True:
            try:
                async with asyncio.timeout_at(self._deadline):
                    raw = await stdout.readline()
            except TimeoutError:
                raise self._timed_out() from None
            except ValueError:  # the line outgrew the reader's limit
                raise BackendBadResponse(
                    f"{self.name} printed a line longer than {_LINE_LIMIT} bytes") from None
            if not raw:
                raise StopAsyncIteration
            line = raw.decode("utf-8", errors="replace").strip()
            if line:
                return line

    async def finish(self) -> None:
        """Wait for the exit within the deadline; BackendError unless the code is 0."""
        proc = self._process
        try:
            async with asyncio.timeout_at(self._deadline):
                code = await proc.wait()
                if self._stderr_reader is not None:
                    await self._stderr_reader  # the whole of stderr, for the message
        except TimeoutError:
            raise self._timed_out() from None
        if code != 0:
            what = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
            raise BackendError(self._with_stderr(f"{self.name} {what}"))

    def stderr_tail(self, *, lines: int = 10, chars: int = 1000) -> str:
        """The last non-blank lines the program wrote to stderr."""
        text = self._stderr.decode("utf-8", errors="replace")
        kept = [line.rstrip() for line in text.splitlines() if line.strip()][-lines:]
        return "\n".join(kept)[-chars:]

    async def close(self) -> None:
        """Kill the process group and reap the child, within a bound."""
        proc, reader = self._proc, self._stderr_reader
        if proc is None:
            return
        self._kill()
        try:
            async with asyncio.timeout(_REAP_TIMEOUT):
                await proc.wait()
                # Drained to EOF so asyncio sees both pipes close and closes its transport.
                if proc.stdout is not None:
                    while await proc.stdout.read(65536):
                        pass
                if reader is not None:
                    await reader
        except TimeoutError:
            log.warning("%s (pid %d) was not reaped within %.0fs of SIGKILL",
                        self.name, proc.pid, _REAP_TIMEOUT)
        finally:
            if reader is not None:
                reader.cancel()

    @property
    def _process(self) -> asyncio.subprocess.Process:
        if self._proc is None:
            raise RuntimeError("the process is not running: use `async with ChildProcess(...)`")
        return self._proc

    def _kill(self) -> None:
        proc = self._process
        # The whole group, even after a clean exit: stray grandchildren die too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if hasattr(os, "killpg"):
                os.killpg(proc.pid, signal.SIGKILL)
            elif proc.returncode is None:
                proc.kill()

    def _timed_out(self) -> BackendUnavailable:
        self._kill()
        return BackendUnavailable(self._with_stderr(
            f"{self.name} timed out after {self._config.timeout:g}s"))

    def _with_stderr(self, message: str) -> str:
        tail = self.stderr_tail()
        return f"{message}: {tail}" if tail else message

    async def _write_stdin(self, data: bytes) -> None:
        """All of ``data`` into the pipe, then EOF; bounded by the deadline."""
        stdin = self._process.stdin
        assert stdin is not None
        try:
            async with asyncio.timeout_at(self._deadline):
                try:
                    stdin.write(data)
                    await stdin.drain()
                    stdin.close()
                    await stdin.wait_closed()  # what the transport still buffered is written
                except (BrokenPipeError, ConnectionResetError):
                    pass  # it stopped reading (or exited): its exit status says why
        except TimeoutError:
            raise self._timed_out() from None
        finally:
            stdin.close()

    async def _read_stderr(self) -> None:
        stderr = self._process.stderr
        assert stderr is not None
        while data := await stderr.read(65536):
            self._stderr += data
            del self._stderr[:-_STDERR_KEPT]


class CommandBackend(Backend):
    """Any executable speaking JSON on stdin and stdout (``type = "command"``)."""

    type = "command"

    async def execute(self, task: Task, context: dict[str, Any] | None = None
                      ) -> AsyncGenerator[StreamItem, None]:
        request = task.as_dict()
        if context:
            request["context"] = context
        async with contextlib.aclosing(self._run(request)) as stream:
            async for item in stream:
                yield item

    async def chat(self, messages: Sequence[ChatMessage]) -> AsyncIterator[StreamItem]:
        async with contextlib.aclosing(self._run({"messages": list(messages)})) as stream:
            async for item in stream:
                if isinstance(item, Completion):
                    yield Completion(output=_reply_text(item.output), usage=item.usage,
                                     model=item.model)
                else:
                    yield item

    async def _run(self, request: dict[str, Any]) -> AsyncGenerator[StreamItem, None]:
        if not self.config.command:
            raise BackendError("the command backend needs a program to run: set its command")
        try:
            data = json.dumps(request, default=str).encode()
        except ValueError as exc:
            raise BackendError(f"the request cannot be sent as JSON: {exc}") from exc
        body: list[str] = []
        size = 0
        async with ChildProcess(self.config.command, self.config, stdin=data) as child:
            async for line in child:
                text = _chunk_text(line)
                if text is not None:
                    yield Chunk(text)
                    continue
                body.append(line)
                size += len(line)
                if size > _MAX_OUTPUT:
                    raise BackendBadResponse(f"{child.name} printed more than {_MAX_OUTPUT} bytes")
            await child.finish()
        output, usage = _parse_answer("\n".join(body), child.name)
        if usage is None or usage.cost_usd == 0:
            usage = self.price(usage or Usage())
        yield Completion(output=output, usage=usage, model=self.config.model)


def _chunk_text(line: str) -> str | None:
    if not _CHUNK_LINE.match(line):
        return None
    try:
        value = json.loads(line)
    except ValueError:
        return None
    if isinstance(value, dict) and value.keys() == {"chunk"} and isinstance(value["chunk"], str):
        return value["chunk"]
    return None


def _parse_answer(text: str, name: str) -> tuple[Any, Usage | None]:
    if not text:
        raise BackendBadResponse(f"{name} printed no JSON answer on stdout")
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise BackendBadResponse(f"{name} printed invalid JSON ({exc}): {text[:200]!r}") from None
    if isinstance(value, dict) and value.keys() == {"output", "usage"}:
        return value["output"], _parse_usage(value["usage"], name)
    return value, None


def _parse_usage(data: Any, name: str) -> Usage:
    if not isinstance(data, dict):
        raise BackendBadResponse(f"{name} reported usage that is not an object: {data!r:.100}")
    counts = [data.get(key, 0) for key in ("input_tokens", "output_tokens")]
    cost = data.get("cost_usd", 0.0)
    if (any(type(count) is not int or count < 0 for count in counts)
            or not isinstance(cost, int | float) or isinstance(cost, bool) or cost < 0):
        raise BackendBadResponse(f"{name} reported invalid usage: {data!r:.200}")
    return Usage(input_tokens=counts[0], output_tokens=counts[1], cost_usd=float(cost))


def _reply_text(output: Any) -> str:
    if isinstance(output, str):
        return output
    if isinstance(output, dict):
        for key in ("text", "content"):
            if isinstance(output.get(key), str):
                return str(output[key])
    return json.dumps(output)
