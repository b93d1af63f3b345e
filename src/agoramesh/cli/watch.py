"""``agoramesh watch``: a live terminal view of the mesh.

The watcher is a client, not an agent: it listens to presence, telemetry and
calls for proposals, asks ``agora.discover`` once so the agents already on
the mesh show at once, and fetches the card of any agent it hears without
one (or that a host's heartbeat or telemetry batch names: only the agent's
card says whether that host speaks for it). It also asks JetStream for the
durable-job store's counts (job consumer and result stream info) at most
once a second, each reading bounded by a second; without JetStream the jobs
line is simply not shown. The model is :mod:`agoramesh.monitoring.mesh_view`
and the frame :mod:`agoramesh.monitoring.screen`; this module moves messages
into the one and frames of the other onto the terminal.

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

from agoramesh.bus.bus import Bus, Delivery
from agoramesh.bus.credentials import client_identity
from agoramesh.bus.jetstream import JetStream
from agoramesh.cli.agents import add_client_options, client_config
from agoramesh.cli.output import emit, emit_json
from agoramesh.cli.runtime import on_signals
from agoramesh.config import Environment, JobsConfig
from agoramesh.errors import AgoraError, ConfigError
from agoramesh.monitoring.job_queue import read_job_queue
from agoramesh.monitoring.mesh_view import MeshView
from agoramesh.monitoring.screen import natural_height, render

__all__ = ("MeshWatcher", "register")

log = logging.getLogger("agoramesh.watch")

#: What tells of agents whose card we may lack: their own beats, or their host's batches.
_BEATS = frozenset({"heartbeat", "telemetry", "heartbeat_batch", "telemetry_batch"})

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


class MeshWatcher:
    """Feeds a :class:`MeshView` from a connected bus; ``stop`` leaves nothing running."""

    #: Card fetches in flight at once, and how long before asking a silent agent again.
    FETCH_SLOTS, FETCH_RETRY = 4, 5.0
    #: Card fetches started and not yet done, at most (the others are asked on a later beat).
    FETCH_QUEUE = 64

    def __init__(self, bus: Bus, view: MeshView, *,
                 clock: Callable[[], float] = time.time, jobs_every: float = 1.0) -> None:
        self.bus = bus
        self.view = view
        self.clock = clock
        #: Seconds between two readings of the job store (each bounded by this, at most 1 s).
        self.jobs_every = jobs_every
        self.js = JetStream(bus, JobsConfig(api_timeout=min(1.0, jobs_every)))
        self._jobs: asyncio.Task[None] | None = None
        self._fetches: set[asyncio.Task[None]] = set()
        self._asked: dict[str, float] = {}  # agent id -> when we last asked for its card
        self._slots = asyncio.Semaphore(self.FETCH_SLOTS)

    async def start(self) -> None:
        """Subscribe; returns once the server has our interest (nothing said since is lost)."""
        subjects = self.bus.subjects
        await self.bus.subscribe(subjects.presence_all, self._on_message)
        await self.bus.subscribe(subjects.telemetry_all, self._on_message)
        # Counted, never acted on: no tag check needed ("verify what you act on",
        # docs/ARCHITECTURE.md, "Messages").
        await self.bus.subscribe(subjects.cfp(">"), self._on_message, verify=False)
        if self._jobs is None:
            self._jobs = asyncio.create_task(self._read_jobs())

    async def _read_jobs(self) -> None:
        """The job store's counts into the view, at most once every ``jobs_every``."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            self.view.set_jobs(await read_job_queue(self.js, min(1.0, self.jobs_every)))
            await asyncio.sleep(max(0.0, started + self.jobs_every - loop.time()))

    async def discover(self, timeout: float) -> None:
        """One scatter-gather on ``agora.discover``, answers taken in as they arrive.

        Not ``Bus.gather``, which returns them at the deadline: an answer's
        status would then be taken as newer than the heartbeats that
        followed it, and the screen would wait for the slowest agent.
        """
        bus = self.bus
        inbox = bus.new_inbox()
        answers = await bus.subscribe(inbox, self._on_message)
        try:
            await bus.publish(bus.subjects.discover, "discovery", {}, reply=inbox,
                              ttl_ms=max(1000, int(timeout * 1000)))
            await asyncio.sleep(timeout)
        finally:
            await answers.stop(timeout=0.5)

    async def _on_message(self, delivery: Delivery) -> None:
        now = self.clock()
        self.view.ingest(delivery, now=now)
        if delivery.type in _BEATS:
            self.fetch_missing_cards(now)

    def fetch_missing_cards(self, now: float) -> None:
        for agent_id in self.view.missing_cards(now):
            if len(self._fetches) >= self.FETCH_QUEUE:
                return
            if now - self._asked.get(agent_id, -self.FETCH_RETRY) < self.FETCH_RETRY:
                continue
            if len(self._asked) >= 4096:  # agents come and go: forget old askings
                self._asked.clear()
            self._asked[agent_id] = now
            task = asyncio.create_task(self._fetch_card(agent_id))
            self._fetches.add(task)
            task.add_done_callback(self._fetches.discard)

    async def _fetch_card(self, agent_id: str) -> None:
        async with self._slots:
            try:
                reply = await self.bus.request(self.bus.subjects.agent(agent_id),
                                               "card_request", {}, to=agent_id, timeout=1.0)
            except AgoraError:
                return  # gone, or busy: asked again after FETCH_RETRY
        self.view.ingest(reply, now=self.clock())

    async def stop(self) -> None:
        """Cancel card fetches and the job-store reading still running (subscriptions end
        with the bus)."""
        running = list(self._fetches)
        if self._jobs is not None:
            running.append(self._jobs)
            self._jobs = None
        for task in running:
            task.cancel()
        if running:
            await asyncio.wait(running, timeout=1.0)


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
