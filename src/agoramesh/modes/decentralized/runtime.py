"""The asynchronous mesh under the synchronous step API: one event loop thread per process.

The decentralized mode's API is synchronous (``decide_action()``, ``step()``,
``send_message()`` return values), while the mesh is asyncio. A
:class:`MeshRuntime` owns one event loop running in a daemon thread; the
agents' sync methods hand it coroutines with :meth:`MeshRuntime.call`, each
bounded by a timeout. Peers' messages are answered on that loop while the
caller's thread is busy elsewhere, so an agent bids, acknowledges and votes
even while the user's loop is stepping another agent.

Unless ``mesh.connect`` names an existing NATS deployment, every agent embeds
its own nats-server, as every node of the mesh does (M-1.1): the first is a
seed, later ones join it by route, so agents' messages cross real routes.
:meth:`MeshRuntime.shared` gives the agents of one process one runtime (and
so one team); the last agent to close it stops the loop and the servers.
Everything the runtime started is stopped by :meth:`close`, at interpreter
exit at the latest; nats-server children also die with the process.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import logging
import secrets
import shutil
import tempfile
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from agoramesh.bus.server import EmbeddedServer
from agoramesh.config import ServerConfig, ServerRole
from agoramesh.errors import AgoraError, BusTimeout, ServerError
from agoramesh.modes.decentralized.config import MeshSettings

__all__ = ("MeshRuntime",)

log = logging.getLogger("agoramesh.decentralized")

T = TypeVar("T")

_SHARED: dict[tuple[str | None, str | None, str], MeshRuntime] = {}
_SHARED_LOCK = threading.Lock()


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is optional on some platforms
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class MeshRuntime:
    """A background event loop and the embedded servers of this process's agents."""

    def __init__(self, settings: MeshSettings | None = None) -> None:
        self.settings = settings or MeshSettings()
        #: The subject scope of this runtime's agents (``agora.team.<team>.…``).
        self.team = self.settings.team or f"t{secrets.token_hex(4)}"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._servers: list[EmbeddedServer] = []
        self._numbers = 0
        self._base_dir: Path | None = None
        self._users = 0
        self._closed = False
        self._lock = threading.Lock()

    # -- process-wide sharing ------------------------------------------------------

    @classmethod
    def shared(cls, settings: MeshSettings | None = None) -> MeshRuntime:
        """The runtime of this process for ``settings``, started, with one more user.

        Call :meth:`release` once per ``shared`` call; the last release closes it.
        """
        settings = settings or MeshSettings()
        key = (settings.connect, settings.team, settings.prefix)
        with _SHARED_LOCK:
            runtime = _SHARED.get(key)
            if runtime is None or runtime._closed:
                runtime = _SHARED[key] = cls(settings)
            runtime._users += 1
        runtime.start()
        return runtime

    def release(self) -> None:
        """One user fewer; the last one closes the runtime."""
        with _SHARED_LOCK:
            self._users = max(0, self._users - 1)
            last = self._users == 0
            if last:
                for key, runtime in list(_SHARED.items()):
                    if runtime is self:
                        del _SHARED[key]
        if last:
            self.close()

    # -- the loop ------------------------------------------------------------------

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None or self._closed:
            raise AgoraError("the mesh runtime is not running (start it, or it was closed)")
        return self._loop

    @property
    def running(self) -> bool:
        return self._loop is not None and not self._closed

    def start(self, timeout: float = 10.0) -> MeshRuntime:
        """Start the loop thread (idempotent); returns once the loop runs."""
        with self._lock:
            if self._closed:
                raise AgoraError("this mesh runtime was closed; create a new one")
            if self._loop is not None:
                return self
            ready = threading.Event()
            loop = _new_loop()

            def run() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            self._thread = threading.Thread(target=run, name=f"agoramesh-{self.team}",
                                            daemon=True)
            self._thread.start()
            if not ready.wait(timeout):
                raise AgoraError(f"the mesh runtime's loop did not start within {timeout:g}s")
            self._loop = loop
            atexit.register(self.close)
        return self

    def call(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run ``coro`` on the loop and wait for it, at most ``timeout`` seconds.

        Past the timeout the coroutine is cancelled and BusTimeout raised. Called
        from the loop thread itself it would deadlock, so that is an error.
        """
        loop = self.loop
        if threading.current_thread() is self._thread:
            coro.close()
            raise AgoraError("MeshRuntime.call from the runtime's own loop would deadlock")
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise BusTimeout(f"no answer from the mesh within {timeout:g}s") from None

    # -- embedded servers ----------------------------------------------------------

    async def embed_server(self) -> EmbeddedServer | None:
        """A new embedded seed for one agent, routed to this runtime's cluster.

        None when ``mesh.connect`` names a deployment to join instead.
        """
        if self.settings.connect is not None:
            return None
        if self._base_dir is None:
            self._base_dir = Path(tempfile.mkdtemp(prefix="agoramesh-team-"))
        anchor = next((s for s in self._servers if s.pid is not None
                       and not s.crashed.is_set()), None)
        self._numbers += 1
        name = f"{self.team}-{self._numbers}"
        server = EmbeddedServer(ServerConfig(
            name=name, role=ServerRole.SEED, data_dir=self._base_dir / name,
            cluster_name=f"team-{self.team}",
            bootstrap=(anchor.cluster_address,) if anchor else ()))
        others = [s for s in self._servers if s.pid is not None and not s.crashed.is_set()]
        self._servers.append(server)
        await server.start()
        if others:  # routed to every other agent's server before its agent says hello
            await server.wait_routes(len(others), timeout=10.0)
        return server

    async def release_server(self, server: EmbeddedServer | None) -> None:
        """Stop a server :meth:`embed_server` gave (its agent is closing)."""
        if server is None:
            return
        if server in self._servers:
            self._servers.remove(server)
        with contextlib.suppress(ServerError):
            await server.stop(grace=2.0)

    def url_of(self, server: EmbeddedServer | None) -> str:
        if server is None:
            assert self.settings.connect is not None
            return self.settings.connect
        return server.client_url

    # -- shutdown ------------------------------------------------------------------

    def close(self, timeout: float = 15.0) -> None:
        """Stop every server, then the loop and its thread; idempotent and bounded."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            loop, thread = self._loop, self._thread
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)
        if loop is not None and thread is not None and thread.is_alive():
            future = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
            try:
                future.result(timeout)
            except Exception as exc:  # a timeout or a failed stop: kill what is left
                log.warning("mesh runtime shutdown: %s", exc or type(exc).__name__)
                for server in self._servers:
                    server.kill()
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)
            if not thread.is_alive():
                loop.close()
        if self._base_dir is not None:
            shutil.rmtree(self._base_dir, ignore_errors=True)

    async def _shutdown(self) -> None:
        servers, self._servers = list(self._servers), []
        results = await asyncio.gather(*(s.stop(grace=2.0) for s in servers),
                                       return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                log.warning("server stop: %s", result)
        current = asyncio.current_task()
        others = [t for t in asyncio.all_tasks() if t is not current]
        for task in others:
            task.cancel()
        if others:
            await asyncio.wait(others, timeout=2.0)

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("running" if self._loop else "created")
        return f"MeshRuntime(team={self.team!r}, {state}, servers={len(self._servers)})"
