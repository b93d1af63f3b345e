"""A compose project's network on one machine without Docker: a namespace per service.

Compose gives every service a network stack of its own on which the other
services are reachable by name, so the compose hub configurations all listen
on 4222/6222/7422/8222 and route to ``nats2:6222``. :class:`ServiceNetwork`
gives each service the same: a network namespace (``ip netns``) with one veth
into a bridge that carries a private /24, and ``/etc/netns/<namespace>/hosts``
naming every service, which ``ip netns exec`` bind-mounts over ``/etc/hosts``
for the processes it starts there. The compose files and command lines then
run unchanged, with no port or hostname rewritten. The test process reaches
the services through the bridge, at :meth:`ServiceNetwork.address`.

It needs root and iproute2 (:func:`netns_unavailable` says why not).
:meth:`ServiceNetwork.close` removes all it made, processes first and by PID,
after a start that failed half-way too.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

from agoramesh.bus.server import process_alive

__all__ = ("ServiceNetwork", "netns_unavailable")

_NETNS_ETC = Path("/etc/netns")
_IP_TIMEOUT = 10.0  # seconds for one `ip` command
_STOP_GRACE = 10.0  # seconds processes get to stop on SIGTERM before SIGKILL


def _ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=_IP_TIMEOUT,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


def netns_unavailable() -> str | None:
    """Why network namespaces cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2) to make network namespaces"
    probe = f"am{secrets.token_hex(3)}-probe"
    try:
        _ip("netns", "add", probe)
    except (RuntimeError, subprocess.TimeoutExpired) as error:
        return f"cannot make a network namespace here: {error}"
    with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
        _ip("netns", "del", probe)
    return None


def _free_subnet() -> str:
    """The first three octets of a 10.213.x.0/24 no interface here has an address in."""
    used = set(re.findall(r"inet (10\.213\.\d+)\.", _ip("-4", "-o", "addr")))
    start = secrets.randbelow(200)
    for offset in range(200):
        prefix = f"10.213.{(start + offset) % 200 + 20}"
        if prefix not in used:
            return prefix
    raise RuntimeError("no free /24 left in 10.213.0.0/16")


class ServiceNetwork:
    """``with ServiceNetwork(["nats1", "coder"], logs) as net: net.spawn("nats1", argv)``.

    Each service gets the namespace ``<token>-<service>`` and the address
    ``10.213.x.<2+index>``; its hosts file names every service. Processes'
    output goes to ``logs/<name>.log``.
    """

    def __init__(self, services: Iterable[str], logs: Path) -> None:
        self.services = tuple(services)
        if len(self.services) > 250:
            raise ValueError("one /24 holds at most 250 services")
        self.logs = logs
        self.token = f"am{secrets.token_hex(3)}"  # short: interface names have 15 bytes
        self.subnet = ""
        self.processes: list[subprocess.Popen[bytes]] = []
        self._made_etc = False
        self._namespaces: list[str] = []
        self._links: list[str] = []  # the bridge, then the host ends of the veths

    def namespace(self, service: str) -> str:
        """The name of the service's network namespace (``ip netns exec NAME``)."""
        return f"{self.token}-{service}"

    def address(self, service: str) -> str:
        """The service's address, reachable from the test process through the bridge."""
        return f"{self.subnet}.{self.services.index(service) + 2}"

    def start(self) -> None:
        """Make the bridge, a namespace with its veth and hosts file per service."""
        self.logs.mkdir(parents=True, exist_ok=True)
        self.subnet = _free_subnet()
        self._made_etc = not _NETNS_ETC.exists()
        bridge = f"{self.token}br"
        _ip("link", "add", bridge, "type", "bridge")
        self._links.append(bridge)
        _ip("addr", "add", f"{self.subnet}.1/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        hosts = "127.0.0.1 localhost\n::1 localhost\n" + "".join(
            f"{self.address(service)} {service}\n" for service in self.services)
        for index, service in enumerate(self.services):
            namespace = self.namespace(service)
            _ip("netns", "add", namespace)
            self._namespaces.append(namespace)
            (_NETNS_ETC / namespace).mkdir(parents=True, exist_ok=True)
            (_NETNS_ETC / namespace / "hosts").write_text(hosts)
            veth = f"{self.token}v{index}"
            _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0",
                "netns", namespace)
            self._links.append(veth)
            _ip("link", "set", veth, "master", bridge)
            _ip("link", "set", veth, "up")
            _ip("-n", namespace, "link", "set", "lo", "up")
            _ip("-n", namespace, "addr", "add", f"{self.address(service)}/24", "dev", "eth0")
            _ip("-n", namespace, "link", "set", "eth0", "up")

    def _argv(self, service: str, argv: Sequence[str]) -> list[str]:
        if service not in self.services:
            raise KeyError(f"{service} is not a service of this network")
        return ["ip", "netns", "exec", self.namespace(service), *argv]

    def spawn(self, service: str, argv: Sequence[str], *, env: Mapping[str, str],
              log: str | None = None) -> subprocess.Popen[bytes]:
        """Start ``argv`` in the service's namespace with exactly ``env``; output to its log.

        ``ip netns exec`` execs ``argv`` in place, so the process's PID is the one
        :meth:`close` stops.
        """
        with (self.logs / f"{log or service}.log").open("ab") as out:
            process = subprocess.Popen(self._argv(service, argv), env=dict(env),
                                       stdin=subprocess.DEVNULL, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append(process)
        return process

    def run(self, service: str, argv: Sequence[str], *, env: Mapping[str, str],
            timeout: float) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` to its end in the service's namespace (killed after ``timeout``)."""
        return subprocess.run(self._argv(service, argv), env=dict(env), capture_output=True,
                              text=True, timeout=timeout, check=False)

    def log(self, name: str, tail: int = 2000) -> str:
        """The end of a process's log."""
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-tail:] if path.exists() else ""

    def pids(self) -> set[int]:
        """Every process running in one of the namespaces."""
        found: set[int] = set()
        for namespace in self._namespaces:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                found |= {int(pid) for pid in _ip("netns", "pids", namespace).split()}
        return found

    def leftovers(self) -> list[str]:
        """What of this network still exists (namespaces, hosts files, links): [] once closed."""
        found = [name for name in _ip("netns", "list").split() if name.startswith(self.token)]
        found += [str(path) for path in _NETNS_ETC.glob(f"{self.token}-*")]
        found += [name.split("@")[0] for name in re.findall(r"^\d+: (\S+):", _ip("link"), re.M)
                  if name.startswith(self.token)]
        return found

    def close(self) -> None:
        """Stop every process (SIGTERM, then SIGKILL), then remove namespaces, links, files."""
        errors: list[str] = []
        started = [process for process in self.processes if process.poll() is None]
        for process in started:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + _STOP_GRACE
        for process in started:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(5)
        # What those processes started (embedded nats-servers) and outlived them.
        leftovers = self.pids()
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while any(process_alive(pid) for pid in leftovers) and time.monotonic() < deadline:
            time.sleep(0.05)
        # A veth goes with either end at once; with its namespace only once the kernel
        # has torn that down, later.
        for link in reversed(self._links):
            try:
                _ip("link", "del", link)
            except (RuntimeError, subprocess.TimeoutExpired) as error:
                errors.append(str(error))
        self._links.clear()
        for namespace in self._namespaces:
            try:
                _ip("netns", "del", namespace)
            except (RuntimeError, subprocess.TimeoutExpired) as error:
                errors.append(str(error))
            shutil.rmtree(_NETNS_ETC / namespace, ignore_errors=True)
        self._namespaces.clear()
        if self._made_etc:
            with contextlib.suppress(OSError):
                _NETNS_ETC.rmdir()  # only if empty: another run may be using it
        if errors:
            raise RuntimeError("; ".join(errors))

    def __enter__(self) -> ServiceNetwork:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()
