"""TLS vs plaintext links: the same requests on a TLS mesh and a plain mesh, interleaved.

Two meshes of the same shape run side by side, one with TLS on client, route and
leaf links (certificates from ``agoramesh certs``, mutual TLS between servers),
one without. Scenarios, each on both meshes:

* ``rr-leaf``  signed request/reply leaf1 -> seed1 -> leaf2 (both leaves on seed1):
               the path an agent's request takes between two nodes that joined as leaves;
* ``rr-3``     signed request/reply seed1 -> seed3, the topology of bench_bus.py;
* ``raw-leaf`` raw nats-py request/reply on the leaf path (no envelope: TLS's share
               of the smallest round trip; informational);
* ``connect``  Bus.connect to a leaf's client port (TCP + TLS handshake + CONNECT/PONG;
               what every CLI command pays once; informational).

Batches of plain and TLS rounds alternate (ABBA) so machine noise hits both alike.

    .venv/bin/python benchmarks/bench_tls.py [--quick] [--rounds N] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import shutil
import ssl
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from agoramesh.bus.bus import Bus
from agoramesh.bus.credentials import client_ssl_context
from agoramesh.bus.identity import Identity
from agoramesh.bus.mesh import Mesh
from agoramesh.config import BusConfig, ServerConfig, TlsConfig
from agoramesh.security.certs import issue_certificates
from bench_bus import BLOCKS, RAW, TIMEOUT, bus_rr, echo, raw_rr, warm_up
from common import latency, run_and_report, time_rounds

SIDES = ("plain", "tls")
TITLES = {
    "rr-leaf": "signed request/reply, leaf1 -> seed1 -> leaf2",
    "rr-3": "signed request/reply, seed1 -> seed3",
    "raw-leaf": "raw nats-py request/reply, leaf1 -> seed1 -> leaf2",
    "connect": "Bus.connect to a leaf (handshake)",
}
Op = Callable[[], Awaitable[None]]


class Side:
    """One mesh (plain or TLS) and every connection opened to it; ``close`` ends them all."""

    def __init__(self, name: str, mesh: Mesh, tls: TlsConfig | None) -> None:
        self.name, self.mesh, self.tls = name, mesh, tls
        self.buses: list[Bus] = []
        self.raws = contextlib.AsyncExitStack()

    @property
    def leaf1(self) -> str:
        return self.mesh.leaves[0].client_url

    @property
    def leaf2(self) -> str:
        return self.mesh.leaves[1].client_url

    def config(self, url: str) -> BusConfig:
        # Signed only, as the rows say: bench_e2e.py measures what sealing adds.
        return BusConfig(servers=(url,), name="bench", tls=self.tls, encrypt=False)

    async def bus(self, url: str) -> Bus:
        bus = await Bus.connect(Identity.generate(), self.config(url))
        self.buses.append(bus)
        return bus

    async def raw(self, url: str) -> NatsClient:
        tls: ssl.SSLContext | None = client_ssl_context(self.tls) if self.tls else None
        options: dict[str, Any] = {"tls": tls} if tls else {}
        nc = await asyncio.wait_for(nats.connect(url, connect_timeout=3, allow_reconnect=False,
                                                 **options), 5)
        self.raws.push_async_callback(lambda: asyncio.wait_for(nc.close(), 5))
        return nc

    async def responders(self) -> None:
        """A signed responder on leaf2 and on seed3, a raw one on leaf2."""
        for url, subject in ((self.leaf2, "bench.tls.leaf"),
                             (self.mesh.seeds[2].client_url, "bench.tls.rr3")):
            bus = await self.bus(url)
            await bus.subscribe(subject, echo)
            await bus.nats.flush(timeout=5)
        nc = await self.raw(self.leaf2)

        async def reply(msg: Msg) -> None:
            await nc.publish(msg.reply, RAW)

        await nc.subscribe("bench.tls.raw", cb=reply)
        await nc.flush(timeout=5)

    def connect_op(self) -> Op:
        async def op() -> None:
            # Closed with the side, after the measurement: only the connect is timed.
            self.buses.append(await Bus.connect(Identity.generate(), self.config(self.leaf1)))
        return op

    async def close(self) -> None:
        for bus in self.buses:
            await bus.close(timeout=1.0)
        with contextlib.suppress(Exception):
            await self.raws.aclose()
        await self.mesh.stop(grace=2.0)


@dataclass
class Scenario:
    name: str
    rounds: int
    ops: dict[str, Op]
    samples: dict[str, list[int]] = field(default_factory=lambda: {s: [] for s in SIDES})
    misses: dict[str, int] = field(default_factory=lambda: {s: 0 for s in SIDES})


async def launch(base: Path, tls: TlsConfig | None) -> Mesh:
    """3 seeds; two leaves, both on seed1, so leaf -> leaf crosses exactly one seed."""
    template = ServerConfig(name="template", data_dir=base, tls=tls)
    mesh = await Mesh.launch(base, seeds=3, template=template)
    try:
        for _ in range(2):
            await mesh.add_leaf(mesh.seeds[0])
    except BaseException:
        await mesh.stop(grace=1.0)
        raise
    return mesh


async def measure(scenarios: list[Scenario]) -> None:
    """BLOCKS rounds of batches, plain then TLS, TLS then plain, ... for every scenario."""
    for block in range(BLOCKS):
        for sc in scenarios:
            for side in SIDES if block % 2 == 0 else tuple(reversed(SIDES)):
                sc.misses[side] += await time_rounds(sc.ops[side], sc.samples[side],
                                                     math.ceil(sc.rounds / BLOCKS))


def summarize(sc: Scenario) -> dict[str, Any]:
    row: dict[str, Any] = {"title": TITLES[sc.name]}
    for side in SIDES:
        row[side] = {"n": len(sc.samples[side]), "misses": sc.misses[side],
                     **latency(sc.samples[side])}
    for q in ("p50", "p99"):
        row[f"ratio_{q}"] = round(row["tls"][q] / row["plain"][q], 3)
    return row


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rr = args.rounds or (300 if args.quick else 3000)
    connects = max(20, rr // 15)
    base = Path(tempfile.mkdtemp(prefix="agoramesh-bench-tls-"))
    sides: dict[str, Side] = {}
    try:
        certs = issue_certificates(base / "certs")
        client_tls = TlsConfig(ca_file=certs.ca_file)
        sides["plain"] = Side("plain", await launch(base / "plain", None), None)
        sides["tls"] = Side("tls", await launch(base / "tls", certs.tls), client_tls)
        ops: dict[str, dict[str, Op]] = {name: {} for name in TITLES}
        for name, side in sides.items():
            await side.responders()
            leaf_bus, seed_bus = await side.bus(side.leaf1), await side.bus(
                side.mesh.seeds[0].client_url)
            ops["rr-leaf"][name] = bus_rr(leaf_bus, "bench.tls.leaf")
            ops["rr-3"][name] = bus_rr(seed_bus, "bench.tls.rr3")
            ops["raw-leaf"][name] = raw_rr(await side.raw(side.leaf1), "bench.tls.raw")
            ops["connect"][name] = side.connect_op()
        scenarios = [Scenario(name, connects if name == "connect" else rr, ops[name])
                     for name in TITLES]
        for sc in scenarios:
            for op in sc.ops.values():
                await warm_up(op, max(5, sc.rounds // 10))
        started = time.monotonic()
        await measure(scenarios)
        return {"loop": "uvloop", "rounds": {"rr": rr, "connect": connects},
                "blocks": BLOCKS, "payload_bytes": len(RAW), "timeout_s": TIMEOUT,
                "key": "ECDSA P-256 (agoramesh certs)",
                "seconds": round(time.monotonic() - started, 1),
                "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "results": {sc.name: summarize(sc) for sc in scenarios}}
    finally:
        for side in sides.values():
            await side.close()
        shutil.rmtree(base, ignore_errors=True)


def report(result: dict[str, Any]) -> None:
    print(f"\n{result['loop']}; payload {result['payload_bytes']} B; rounds "
          f"rr={result['rounds']['rr']} connect={result['rounds']['connect']} per side, "
          f"{result['blocks']} alternating blocks; {result['seconds']} s measured\n")
    print(f"{'scenario':<52} {'side':<5} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'miss':>5}")
    for row in result["results"].values():
        for side in SIDES:
            r = row[side]
            print(f"{row['title']:<52} {side:<5} {r['p50']:8.3f} {r['p90']:8.3f} "
                  f"{r['p99']:8.3f} {r['misses']:5d}")
    print()
    for name, row in result["results"].items():
        print(f"{name:<9} tls/plain p50 {row['ratio_p50']:.2f}  p99 {row['ratio_p99']:.2f}"
              f"  — {row['title']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few hundred rounds")
    parser.add_argument("--rounds", type=int, help="request/reply rounds per side (3000)")
    parser.add_argument("--json", type=Path, help="write the results to this file")
    args = parser.parse_args()
    return run_and_report(run(args), report, args.json)


if __name__ == "__main__":
    sys.exit(main())
