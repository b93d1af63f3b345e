"""``agoramesh watch``: a live terminal view of the mesh.

The mesh is heard by a :class:`~agoramesh.monitoring.watcher.MeshWatcher`
(presence, telemetry, calls for proposals, one discovery round, card
fetches, the durable-job store's counts; without JetStream the jobs line is
simply not shown). The model is :mod:`agoramesh.monitoring.mesh_view` and the
frame :mod:`agoramesh.monitoring.screen`; this module draws frames of the one
onto the terminal.

Live mode redraws in place every ``--interval`` (cursor home, each line
erased to its end, the rest of the screen erased: no flicker) with the
cursor hidden, until Ctrl-C or ``--duration``; the cursor comes back however
it ends. ``--once`` and ``--json`` listen for ``--duration`` seconds, print
one frame or one JSON object, and exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import shutil
import sys
import time
from collections.abc import Awaitable, Callable

from agoramesh.bus.bus import Bus
from agoramesh.bus.credentials import client_identity
from agoramesh.cli.agents import add_client_options, client_config
from agoramesh.cli.output import emit, emit_json
from agoramesh.cli.runtime import on_signals
from agoramesh.config import Environment
from agoramesh.errors import ConfigError
from agoramesh.monitoring.mesh_view import MeshView
from agoramesh.monitoring.screen import natural_height, render
from agoramesh.monitoring.watcher import MeshWatcher

__all__ = ("MeshWatcher", "register")

log = logging.getLogger("agoramesh.watch")

HIDE_CURSOR, SHOW_CURSOR = "\x1b[?25l", "\x1b[?25h"
CLEAR, HOME, ERASE_LINE, ERASE_BELOW = "\x1b[2J", "\x1b[H", "\x1b[K", "\x1b[J"


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "watch", help="live view of the mesh: agents, load, auctions, tasks",
        description="A live view of the mesh: the agents with their load, auctions and tasks "
                    "per second, recent tasks and auctions, envelope rejections. Ctrl-C quits.")
    add_client_options(parser)
    parser.add_argument("--interval", type=float, default=1.0,
                        help="seconds between redraws (default 1)")
    parser.add_argument("--once", action="store_true",
                        help="listen for --duration seconds, print one frame, exit")
    parser.add_argument("--duration", type=float,
                        help="seconds to listen with --once or --json (default 2); "
                             "in live mode, quit after this long")
    parser.add_argument("--discover-timeout", type=float, default=1.0,
                        help="seconds to wait for discovery answers at start (default 1)")
    parser.set_defaults(handler=_watch)


async def _watch(args: argparse.Namespace, env: Environment) -> int:
    config = client_config(args, env, "agoramesh-watch")
    once = args.once or args.json
    duration: float | None = args.duration
    if args.interval <= 0 or (duration is not None and duration <= 0):
        raise ConfigError("--interval and --duration must be positive")
    if args.discover_timeout < 0:
        raise ConfigError("--discover-timeout must not be negative")
    view = MeshView(server=config.servers[0])
    async with Bus(client_identity(config), config) as bus:
        watcher = MeshWatcher(bus, view)
        try:
            await watcher.start()
            if once:
                listen = 2.0 if duration is None else duration
                await _with_discovery(watcher, min(args.discover_timeout, listen),
                                      asyncio.sleep(listen))
            else:
                await _live(watcher, args.interval, duration, args.discover_timeout)
        finally:
            await watcher.stop()
    if once:
        now = time.time()
        view.prune(now)
        if args.json:
            emit_json(view.snapshot(now))
        else:
            width = shutil.get_terminal_size((120, 40)).columns
            emit(render(view, width, natural_height(view), now).rstrip("\n"))
    return 0


async def _with_discovery(watcher: MeshWatcher, timeout: float, main: Awaitable[None], *,
                          on_answers: Callable[[], None] | None = None,
                          abandon: bool = False) -> None:
    """Run ``main`` while one discovery round (bounded by ``timeout``) runs beside it.

    When ``main`` ends, the round is waited for and its error is the
    command's; with ``abandon`` it is cancelled instead (a viewer who quits
    does not wait for answers, and a live view goes on without them).
    """
    async def discover() -> None:
        await watcher.discover(timeout)
        if on_answers is not None:
            on_answers()

    discovery = asyncio.create_task(discover())
    try:
        await main
        if not abandon:
            await discovery
    finally:
        if not discovery.done():
            discovery.cancel()
            await asyncio.wait([discovery], timeout=1.0)
        elif not discovery.cancelled() and discovery.exception() is not None:
            log.debug("discovery failed: %s", discovery.exception())


async def _live(watcher: MeshWatcher, interval: float, duration: float | None,
                discover_timeout: float) -> None:
    """Redraw until Ctrl-C (or SIGTERM, or ``duration``); the cursor is always restored."""
    loop = asyncio.get_running_loop()
    stop, wake = asyncio.Event(), asyncio.Event()

    def quit_now() -> None:
        stop.set()
        wake.set()

    deadline = None if duration is None else loop.time() + duration
    out = sys.stdout

    async def redraw() -> None:
        while not stop.is_set():
            now = time.time()
            watcher.view.prune(now)
            size = shutil.get_terminal_size()
            frame = render(watcher.view, size.columns, size.lines, now)
            # The last line ends without a newline: the screen never scrolls.
            out.write(HOME + frame.replace("\n", ERASE_LINE + "\n") + ERASE_LINE + ERASE_BELOW)
            out.flush()
            wait = interval if deadline is None else min(interval, deadline - loop.time())
            if wait <= 0:
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await wake.wait()
            wake.clear()

    with on_signals(quit_now):
        try:
            out.write(HIDE_CURSOR + CLEAR)
            out.flush()
            await _with_discovery(watcher, discover_timeout, redraw(), on_answers=wake.set,
                                  abandon=True)
        finally:
            with contextlib.suppress(OSError, ValueError):
                out.write(SHOW_CURSOR + "\n")
                out.flush()
