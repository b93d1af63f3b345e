"""Seeds found on a LAN without an address: mDNS service discovery (DNS-SD).

A seed started with ``--discover mdns`` announces one ``_agoramesh._tcp``
service whose TXT record says which mesh it belongs to and how to reach it
(PROTOCOL.md §24):

    v=1  mesh=<name>  server=<server name>  cluster=<host:port>  leaf=<host:port>
    operator=<fingerprint>

A node looking for a mesh browses for the service on the chosen interfaces and
keeps the seeds whose ``mesh`` is the one it was given and whose ``operator`` is
the fingerprint of the operator it trusts (empty on an open mesh), so a node
joins only the mesh it means to: another mesh's seeds, a secured mesh's seeds
seen from an open node, and records that do not parse are skipped and counted
(:attr:`MdnsDiscovery.skipped`). mDNS only finds addresses; a secured mesh's
servers still check every connection's credentials.

NATS route gossip does the rest: a seed routed to one seed of a mesh learns
every other. A seed that found nobody starts the mesh and keeps listening, so
that two seeds started at the same moment (each alone) route to each other when
they hear of one another (:func:`follow_seeds`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import socket
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from agoramesh.config import parse_hostport
from agoramesh.errors import ConfigError, ServerError

try:  # an optional extra: agoramesh[mdns]
    from zeroconf import DNSQuestionType, InterfaceChoice, IPVersion, Zeroconf
    from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf
except ImportError:  # pragma: no cover - the dev install has it
    AsyncZeroconf = None  # type: ignore[assignment,misc]

if TYPE_CHECKING:
    from agoramesh.bus.server import EmbeddedServer

__all__ = ("SERVICE", "MdnsDiscovery", "SeedAd", "follow_seeds", "operator_fingerprint")

log = logging.getLogger("agoramesh.mdns")

#: The DNS-SD service type seeds announce.
SERVICE = "_agoramesh._tcp.local."
_VERSION = "1"
_INFO_TIMEOUT_MS = 1000  # asking one announcer for its TXT record
_PROBE_TIMEOUT = 5.0  # seconds: claiming a service name (mDNS probing)


def operator_fingerprint(operator_key: str) -> str:
    """What a secured mesh's seeds announce for its operator: the first 16 hex digits of
    the SHA-256 of the operator's public key (``O…``); '' for an open mesh."""
    return hashlib.sha256(operator_key.encode()).hexdigest()[:16] if operator_key else ""


@dataclass(frozen=True, slots=True)
class SeedAd:
    """One seed as it announces itself."""

    name: str  # the service instance's name
    mesh: str
    server: str  # the nats-server's name (what its routes call it)
    cluster: str  # host:port of its route listener
    leaf: str  # host:port of its leafnode listener
    operator: str = ""  # operator_fingerprint(); '' on an open mesh

    def properties(self) -> dict[str, str]:
        return {"v": _VERSION, "mesh": self.mesh, "server": self.server,
                "cluster": self.cluster, "leaf": self.leaf, "operator": self.operator}

    @classmethod
    def parse(cls, name: str, properties: dict[bytes, bytes | None]) -> SeedAd:
        """The ad in a TXT record; ValueError saying what is wrong with it."""
        fields = {key.decode("utf-8", "replace"): (value or b"").decode("utf-8", "replace")
                  for key, value in properties.items()}
        if fields.get("v") != _VERSION:
            raise ValueError(f"version {fields.get('v')!r}")
        for key in ("cluster", "leaf"):
            parse_hostport(fields.get(key, ""))  # ConfigError (a ValueError) if not host:port
        for key in ("mesh", "server"):
            if not fields.get(key):
                raise ValueError(f"no {key} name")
        return cls(name=name.removesuffix("." + SERVICE), mesh=fields["mesh"],
                   server=fields["server"],
                   cluster=fields["cluster"], leaf=fields["leaf"],
                   operator=fields.get("operator", ""))


class MdnsDiscovery:
    """One process's mDNS: announce its seeds, find those of ``mesh``.

    ``interfaces``: the IPv4 addresses to announce and listen on (default: all);
    tests use ``("127.0.0.1",)``. Use as an async context manager.
    """

    def __init__(self, *, mesh: str, operator: str = "",
                 interfaces: Sequence[str] = ()) -> None:
        if not mesh:
            raise ConfigError("--mesh must name the mesh (a non-empty string)")
        for address in interfaces:
            try:
                ipaddress.IPv4Address(address)
            except ValueError:
                raise ConfigError(f"--mdns-interface takes an IPv4 address, got "
                                  f"{address!r}") from None
        self.mesh = mesh
        self.operator = operator
        self.interfaces = tuple(interfaces)
        #: Seeds of this mesh heard of, by name (ours included).
        self.seeds: dict[str, SeedAd] = {}
        #: Seeds' announcements skipped, each counted once: other_mesh, other_operator,
        #: malformed.
        self.skipped: Counter[str] = Counter()
        self._skipped_names: set[tuple[str, str]] = set()
        self._heard = asyncio.Event()
        self._listeners: list[Callable[[SeedAd], None]] = []
        self._zc: AsyncZeroconf | None = None
        self._asker: AsyncZeroconf | None = None
        self._browsers: list[AsyncServiceBrowser] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._announced: list[Any] = []

    def describe(self) -> str:
        """What is looked for, for error messages."""
        where = ", ".join(self.interfaces) or "every interface"
        who = f"operator {self.operator}" if self.operator else "an open mesh"
        return f"a seed of mesh {self.mesh!r} ({who}) announcing {SERVICE} on {where}"

    async def start(self) -> None:
        if AsyncZeroconf is None:
            raise ConfigError("--discover mdns needs the zeroconf package: "
                              "pip install 'agoramesh[mdns]'")
        interfaces: Any = list(self.interfaces) if self.interfaces else InterfaceChoice.All
        self._zc = AsyncZeroconf(interfaces=interfaces, ip_version=IPVersion.V4Only)
        # Two listeners. The responder's own (port 5353) hears announcements and asks
        # for multicast answers (QM): processes of one host share port 5353, and a
        # unicast answer to it reaches only one of them. A multicast answer, though,
        # waits while its record was multicast in the last second (RFC 6762 §6), which
        # other browsers and announcements make likely; so a second instance asks from
        # a port of its own (a "legacy unicast" query, §6.7), answered at once, to it.
        self._asker = AsyncZeroconf(interfaces=interfaces, ip_version=IPVersion.V4Only,
                                    unicast=True)
        self._browsers = [
            AsyncServiceBrowser(self._zc.zeroconf, [SERVICE], handlers=[self._on_change],
                                question_type=DNSQuestionType.QM),
            AsyncServiceBrowser(self._asker.zeroconf, [SERVICE], handlers=[self._on_change])]

    async def close(self) -> None:
        """Withdraw what we announced (a goodbye packet), stop browsing. Idempotent."""
        zc, self._zc = self._zc, None
        asker, self._asker = self._asker, None
        if zc is None:
            return
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2.0)
        for browser in self._browsers:
            with contextlib.suppress(Exception):
                await browser.async_cancel()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2.0):
                for info in self._announced:
                    await zc.async_unregister_service(info)
        for instance in (zc, asker):
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await instance.async_close()  # type: ignore[union-attr]

    async def __aenter__(self) -> MdnsDiscovery:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def on_seed(self, callback: Callable[[SeedAd], None]) -> None:
        """Call ``callback`` with each seed of this mesh heard of from now on."""
        self._listeners.append(callback)

    async def announce(self, server: EmbeddedServer) -> SeedAd:
        """Announce ``server`` (a running seed) as a seed of this mesh; returns once the
        name is probed (under a second) and the announcements have begun, so a node
        started after this hears of the seed."""
        zc = self._require()
        host, cluster_port = parse_hostport(server.cluster_address)
        ad = SeedAd(name=f"{server.config.name}-{server.pid}-{socket.gethostname()}"[:63],
                    mesh=self.mesh, server=server.config.name,
                    cluster=server.cluster_address, leaf=server.leaf_address,
                    operator=self.operator)
        addresses = [socket.inet_aton(address) for address in
                     (self.interfaces or self._addresses_of(host))]
        info = AsyncServiceInfo(
            SERVICE, f"{ad.name}.{SERVICE}", addresses=addresses, port=cluster_port,
            properties=ad.properties(), server=f"{ad.name}.local.")
        self._announced.append(info)
        self.seeds[ad.name] = ad
        try:
            async with asyncio.timeout(_PROBE_TIMEOUT):
                broadcasts = await zc.async_register_service(info, allow_name_change=True)
        except Exception as exc:  # mDNS is a convenience: the mesh runs without it
            log.warning("mDNS: could not announce %s: %s", info.name, exc)
        else:
            self._own(broadcasts)
        return ad

    async def find(self, timeout: float, *, settle: float = 0.15,
                   required: bool = True) -> list[SeedAd]:
        """The seeds of this mesh heard of within ``timeout``: once the first is heard, others
        get ``settle`` seconds more. None found: ServerError saying what was looked for if
        ``required``, else an empty list."""
        deadline = time.monotonic() + timeout
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._heard.wait()
            await asyncio.sleep(max(0.0, min(settle, deadline - time.monotonic())))
        found = list(self.seeds.values())
        if not found and required:
            raise ServerError(f"nothing heard within {timeout:g} s from {self.describe()}"
                              + (f" (skipped: {dict(self.skipped)})" if self.skipped else ""))
        return found

    # -- browsing -------------------------------------------------------------------------

    def _on_change(self, zeroconf: Zeroconf, service_type: str, name: str,
                   state_change: Any) -> None:
        if state_change.name in ("Added", "Updated"):
            self._own(self._resolve(zeroconf, name))

    async def _resolve(self, zeroconf: Zeroconf, name: str) -> None:
        """Read ``name``'s record through the instance that heard of it (multicast answers
        for the responder's, unicast ones for the asker's)."""
        info = AsyncServiceInfo(SERVICE, name)
        unicast = self._asker is not None and zeroconf is self._asker.zeroconf
        if not await info.async_request(zeroconf, _INFO_TIMEOUT_MS,
                                        question_type=None if unicast else DNSQuestionType.QM):
            return
        try:
            ad = SeedAd.parse(name, info.properties)
        except ValueError as exc:
            if self._skip(name, "malformed"):
                log.debug("mDNS: skipped %s: %s", name, exc)
            return
        if ad.mesh != self.mesh:
            self._skip(name, "other_mesh")
        elif ad.operator != self.operator:
            if self._skip(name, "other_operator"):
                log.info("mDNS: skipped seed %s of mesh %r: another operator (%s)", ad.name,
                         ad.mesh, ad.operator or "open mesh")
        elif ad.name not in self.seeds:
            self.seeds[ad.name] = ad
            self._heard.set()
            for listener in list(self._listeners):
                listener(ad)

    def _skip(self, name: str, reason: str) -> bool:
        """Count ``name`` as skipped for ``reason`` the first time it is (both instances hear
        an announcement, each of them more than once); True that first time."""
        if (name, reason) in self._skipped_names:
            return False
        self._skipped_names.add((name, reason))
        self.skipped[reason] += 1
        return True

    def _own(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _require(self) -> AsyncZeroconf:
        if self._zc is None:
            raise ServerError("mDNS discovery is not started")
        return self._zc

    @staticmethod
    def _addresses_of(host: str) -> list[str]:
        """A listener's own address, or this host's addresses for a wildcard listener."""
        if host not in ("0.0.0.0", ""):
            return [host]
        with contextlib.suppress(OSError):
            found = {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None,
                                                               socket.AF_INET)}
            if found:
                return sorted(str(address) for address in found)
        return ["127.0.0.1"]


async def follow_seeds(server: EmbeddedServer, discovery: MdnsDiscovery) -> None:
    """Route ``server`` (a seed) to every seed of its mesh it hears of later and is not
    routed to yet, by reloading its config; runs until cancelled.

    Route gossip links a seed to the whole mesh once it has one route; this is for
    seeds that started alone at the same time, each finding nobody.
    """
    heard: asyncio.Queue[SeedAd] = asyncio.Queue()
    discovery.on_seed(heard.put_nowait)
    for ad in list(discovery.seeds.values()):
        heard.put_nowait(ad)
    while True:
        ad = await heard.get()
        if ad.server == server.config.name or ad.cluster in server.config.bootstrap:
            continue
        with contextlib.suppress(OSError, TimeoutError, ServerError):
            await asyncio.sleep(1.0)  # gossip usually links it first: look again then
            if server.monitor is None or ad.server in await server.monitor.route_peers():
                continue
            config = replace(server.config, bootstrap=(*server.config.bootstrap, ad.cluster))
            await server.reload(config)
            log.info("mDNS: %s routed to seed %s (%s)", server.config.name, ad.name, ad.cluster)
