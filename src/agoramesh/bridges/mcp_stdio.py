"""MCP over this process's stdin and stdout, the way MCP hosts run a server.

Not the SDK's ``stdio_server``, for two reasons: it reads stdin in a worker
thread no cancellation can stop (a SIGTERM while the host keeps stdin open
would leave the process hanging on that read), and it drops a line that is
not a JSON-RPC message without a word. Here:

- stdout carries JSON-RPC and nothing else: while serving, fd 1 points at
  stderr (a stray print, a library's banner land there) and the messages go
  out on a private duplicate of the original stdout; fd 0 reads from
  ``/dev/null`` and the wire is a private duplicate of stdin. Both are put
  back on exit, blocking as they were.
- a pipe, socket or terminal is read and written by the event loop, so a
  cancelled server stops at once; a regular file (``< requests.jsonl``) is
  read in a thread, which always returns.
- a line that is not JSON is answered with a Parse error (-32700, id null);
  JSON that is not a JSON-RPC message (a batch, a request whose ``params`` are
  not an object) with an Invalid Request (-32600) carrying its id when it has a
  usable one; a line longer than ``max_line`` bytes is dropped whole and
  answered with a Parse error. Nothing of that reaches the server.
- a :class:`Shortcut` (the MCP server's :class:`~agoramesh.bridges.mcp_fast.FastCalls`)
  may take a line before the SDK sees it and answer it on the wire itself; it
  is shown every message the SDK sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp import types
from mcp.shared.message import SessionMessage
from pydantic import ValidationError

__all__ = ("MAX_LINE", "Shortcut", "stdio_streams")

#: The longest line (one message) read from stdin, in bytes.
MAX_LINE = 64 * 1024 * 1024
_CHUNK = 1 << 16


class Shortcut(Protocol):
    """Takes some lines off the SDK: answers them with its own writes."""

    def take(self, line: bytes) -> bool:
        """True if ``line`` is taken (the SDK does not see it)."""

    def outbound(self, message: types.JSONRPCMessage) -> None:
        """Shown each message the SDK sends, before it is written."""

    async def close(self) -> None:
        """Stop what was taken and is still running (the session ends)."""


def _is_stream(fd: int) -> bool:
    mode = os.fstat(fd).st_mode
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)


def _rejection(line: bytes) -> types.JSONRPCError:
    """The error answering ``line``, which is not a JSON-RPC message."""
    try:
        value: Any = json.loads(line)
    except ValueError:
        return _error(None, types.PARSE_ERROR, "Parse error: the line is not JSON")
    ident = value.get("id") if isinstance(value, dict) else None
    if isinstance(ident, bool) or not isinstance(ident, str | int):
        ident = None
    return _error(ident, types.INVALID_REQUEST, "Invalid Request: not a JSON-RPC 2.0 message "
                                                "(one object with jsonrpc, method or result)")


def _error(ident: str | int | None, code: int, message: str) -> types.JSONRPCError:
    return types.JSONRPCError(jsonrpc="2.0", id=ident,
                              error=types.ErrorData(code=code, message=message))


class _Wire:
    """The private duplicates of stdin and stdout, and the event loop's ends on them."""

    def __init__(self) -> None:
        self.saved = (os.dup(0), os.dup(1))
        self.blocking = (os.get_blocking(0), os.get_blocking(1))
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self._in = os.fdopen(os.dup(0), "rb", buffering=0)
        self._out = os.fdopen(os.dup(1), "wb", buffering=0)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        os.dup2(2, 1)

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        if _is_stream(self._in.fileno()):
            reader = self.reader = asyncio.StreamReader(limit=_CHUNK)
            await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), self._in)
        if _is_stream(self._out.fileno()):
            # A StreamReaderProtocol is the public protocol with the flow control drain() needs.
            transport, protocol = await loop.connect_write_pipe(
                lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader()), self._out)
            self.writer = asyncio.StreamWriter(transport, protocol, None, loop)

    async def read(self) -> bytes:
        """Up to a chunk of stdin; b"" at its end."""
        if self.reader is not None:
            return await self.reader.read(_CHUNK)
        return await anyio.to_thread.run_sync(self._in.read, _CHUNK)

    async def write(self, data: bytes) -> None:
        """``data`` to stdout; nothing if the reader has gone (its stdin ends next)."""
        with contextlib.suppress(ConnectionError):
            if self.writer is not None:
                self.writer.write(data)
                await self.writer.drain()
            else:
                await anyio.to_thread.run_sync(self._out.write, data)

    def close(self) -> None:
        """Close our ends and put fds 0 and 1 back as they were."""
        if self.writer is not None:
            self.writer.close()
        with contextlib.suppress(OSError):
            self._in.close()
        with contextlib.suppress(OSError):
            self._out.close()
        for fd, (saved, blocking) in enumerate(zip(self.saved, self.blocking, strict=True)):
            with contextlib.suppress(OSError):
                os.set_blocking(saved, blocking)
                os.dup2(saved, fd)
            os.close(saved)


async def _lines(wire: _Wire, max_line: int, line: Callable[[bytes], Awaitable[None]],
                 too_long: Callable[[], Awaitable[None]]) -> None:
    """Each line of stdin to ``line`` (blank ones skipped), until its end."""
    buffer = bytearray()
    dropping = False
    while chunk := await wire.read():
        buffer += chunk
        while (end := buffer.find(b"\n")) >= 0:
            text = bytes(buffer[:end]).strip()
            del buffer[:end + 1]
            if dropping:
                dropping = False
            elif text:
                await line(text)
        if len(buffer) > max_line:
            buffer.clear()
            if not dropping:
                dropping = True
                await too_long()
    if buffer.strip() and not dropping:
        await line(bytes(buffer).strip())


@contextlib.asynccontextmanager
async def stdio_streams(max_line: int = MAX_LINE, shortcut: Callable[
        [Callable[[bytes], Awaitable[None]]], Shortcut] | None = None) -> AsyncIterator[
        tuple[MemoryObjectReceiveStream[SessionMessage | Exception],
              MemoryObjectSendStream[SessionMessage]]]:
    """The read and write streams a :class:`mcp.server.lowlevel.Server` runs on, over stdio.

    The read stream ends at the end of stdin. ``shortcut(write)``: the :class:`Shortcut`
    of this session, given the function that writes one line.
    """
    wire = _Wire()
    inbound_send, inbound = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    outbound, outbound_receive = anyio.create_memory_object_stream[SessionMessage](0)
    writing = anyio.Lock()

    async def write_line(data: bytes) -> None:
        async with writing:
            await wire.write(data)

    async def send(message: types.JSONRPCMessage) -> None:
        await write_line(message.model_dump_json(by_alias=True, exclude_unset=True).encode()
                         + b"\n")

    taker = None if shortcut is None else shortcut(write_line)

    async def line(text: bytes) -> None:
        if taker is not None and taker.take(text):
            return
        try:
            message = types.jsonrpc_message_adapter.validate_json(text, by_name=False)
        except ValidationError:
            await send(_rejection(text))
            return
        await inbound_send.send(SessionMessage(message))

    async def too_long() -> None:
        await send(_error(None, types.PARSE_ERROR,
                          f"Parse error: a message longer than {max_line} bytes was dropped"))

    async def read() -> None:
        async with inbound_send:
            await _lines(wire, max_line, line, too_long)

    async def write() -> None:
        async with outbound_receive:
            async for item in outbound_receive:
                if taker is not None:
                    taker.outbound(item.message)
                await send(item.message)

    try:
        await wire.open()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(read)
            tasks.start_soon(write)
            try:
                yield inbound, outbound
            finally:
                if taker is not None:
                    await taker.close()
                tasks.cancel_scope.cancel()
    finally:
        wire.close()
