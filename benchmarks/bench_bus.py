"""Authenticated Bus messaging vs raw nats-py, side by side on the same servers.

Scenarios (each measured for the raw nats-py path and the Bus paths):

* ``rr-1``  request/reply to a subject (to ``*``: a signed request, a MACed reply),
            requester and responder on one server (a 1-seed Mesh);
* ``rr-3``  the same across a 3-seed mesh (requester on seed1, responder on seed3);
* ``dr-1``  directed request/reply (to the responder's agent id: MACed both ways), one
            server; ``dr-3`` across the 3-seed mesh;
* ``sg-3``  scatter-gather to 10 responders spread over the 3-seed mesh, verifying
            only the reply acted on (as an auction does: "verify what you act on",
            docs/ARCHITECTURE.md);
* ``sg-3v`` the same, verifying all 10 replies.

The request/reply scenarios also time ``sa`` (``sign_all``: every envelope signed, as
version 1 did: what non-repudiation costs) and ``floor``: the least any signed round
trip costs, with no Bus — raw nats-py carrying envelopes that are sealed and signed,
parsed and verified once each way (for ``dr-*``: MACed and checked, the same with
a pair key).

Batches of raw and Bus rounds alternate (ABBA) so machine noise hits both alike.
Responders run in this process, or with ``--split`` in a child process
(``--serve``) so requesters and responders each get a core.

    .venv/bin/python benchmarks/bench_bus.py [--quick] [--split] [--rounds N] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvloop
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from agoramesh.bus.bus import Bus, Delivery
from agoramesh.bus.e2e import E2EKeys
from agoramesh.bus.envelope import mac, parse, seal
from agoramesh.bus.identity import Identity, verify
from agoramesh.bus.mesh import Mesh
from agoramesh.config import BusConfig, EnvelopePolicy
from common import (
    latency,
    raw_client,
    run_and_report,
    serve_until_stdin_closes,
    spawn_child,
    stop_child,
    time_rounds,
    until_answers,
)

BODY: dict[str, Any] = {
    "task_id": "t-000123", "task_type": "summarize", "priority": 5,
    "parameters": {"text": "The quick brown fox jumps over the lazy dog. " * 2, "max_words": 40},
}
RAW = json.dumps(BODY, separators=(",", ":")).encode()  # the same body as plain bytes
FANOUT = 10
TIMEOUT = 2.0  # seconds per round; a round that misses it is counted, not timed
BLOCKS = 10  # alternating raw/bus batches per scenario
TARGETS = {"rr-1": 1.7, "rr-3": 1.7, "dr-1": 1.4, "dr-3": 1.4, "sg-3": 2.0, "sg-3v": 2.0}
TITLES = {
    "rr-1": "request (sig) / reply (mac), 1 server",
    "rr-3": "request (sig) / reply (mac), 3-seed mesh",
    "dr-1": "directed request/reply (mac both), 1 server",
    "dr-3": "directed request/reply (mac both), 3-seed mesh",
    "sg-3": f"scatter-gather x{FANOUT}, 3-seed mesh, verify the one acted on",
    "sg-3v": f"scatter-gather x{FANOUT}, 3-seed mesh, verify all {FANOUT}",
}
#: (kind "raw" | "bus" | "sa" | "floor", URL, subject, nkey seed or "") per responder
Spec = list[tuple[str, str, str, str]]
Op = Callable[[], Awaitable[None]]


async def echo(delivery: Delivery) -> None:
    await delivery.respond("bench_result", delivery.body)


class Clients:
    """Every raw and Bus connection one side opens; ``close`` ends them all (bounded)."""

    def __init__(self) -> None:
        self.raws = contextlib.AsyncExitStack()
        self.buses: list[Bus] = []

    async def raw(self, url: str) -> NatsClient:
        return await raw_client(self.raws, url)

    async def bus(self, url: str, *, sign_all: bool = False, seed: str = "") -> Bus:
        # Not encrypted, as the foundation's targets are stated; bench_e2e.py measures what
        # sealing directed bodies (the default) adds on top.
        identity = Identity(seed) if seed else Identity.generate()
        bus = await Bus.connect(identity, BusConfig(
            servers=(url,), name="bench", encrypt=False,
            envelope=EnvelopePolicy(sign_all=sign_all)))
        self.buses.append(bus)
        return bus

    async def respond(self, spec: Spec) -> None:
        """Start the responders ``spec`` describes, each on its own connection."""
        for kind, url, subject, seed in spec:
            if kind == "raw":
                nc = await self.raw(url)

                async def reply(msg: Msg, nc: NatsClient = nc) -> None:
                    await nc.publish(msg.reply, RAW)

                await nc.subscribe(subject, cb=reply)
                await nc.flush(timeout=5)
            elif kind == "floor":
                nc, identity = await self.raw(url), Identity.generate()

                async def signed(msg: Msg, nc: NatsClient = nc, me: Identity = identity) -> None:
                    request = parse(msg.data)
                    if verify(request.sender, request.signed, request.signature):
                        await nc.publish(msg.reply, seal(me, type="bench_result", subject=msg.reply,
                                                         body=request.body, to=request.sender))

                await nc.subscribe(subject, cb=signed)
                await nc.flush(timeout=5)
            elif kind == "mfloor":
                nc, me = await self.raw(url), Identity(seed)
                keys = E2EKeys(me)

                async def maced(msg: Msg, nc: NatsClient = nc, me: Identity = me,
                                keys: E2EKeys = keys) -> None:
                    request = parse(msg.data)
                    if hmac.compare_digest(mac(keys.pair_key(request.sender), request.signed),
                                           request.tag):
                        await nc.publish(msg.reply, seal(
                            me, type="bench_result", subject=msg.reply, body=request.body,
                            to=request.sender, pair_key=keys.pair_key))

                await nc.subscribe(subject, cb=maced)
                await nc.flush(timeout=5)
            else:
                bus = await self.bus(url, sign_all=kind == "sa", seed=seed)
                await bus.subscribe(subject, echo)
                await bus.nats.flush(timeout=5)

    async def close(self) -> None:
        for bus in self.buses:
            await bus.close(timeout=1.0)
        with contextlib.suppress(Exception):
            await self.raws.aclose()


async def serve(spec: Spec) -> None:
    """Child side of --split: run the responders until stdin closes (bounded)."""
    responders = Clients()
    try:
        await responders.respond(spec)
        await serve_until_stdin_closes()
    finally:
        await responders.close()


async def spawn(spec: Spec) -> asyncio.subprocess.Process:
    return await spawn_child(__file__, "--serve", json.dumps(spec))


# -- one round of each path; TimeoutError when the full answer did not arrive ------

def raw_rr(nc: NatsClient, subject: str) -> Op:
    async def op() -> None:
        await nc.request(subject, RAW, timeout=TIMEOUT)
    return op


def bus_rr(bus: Bus, subject: str, to: str = "*") -> Op:
    async def op() -> None:
        await bus.request(subject, "bench_task", BODY, timeout=TIMEOUT, to=to)
    return op


def floor_rr(nc: NatsClient, subject: str) -> Op:
    """The signed minimum: seal, request, parse and verify the reply; nothing else."""
    identity = Identity.generate()

    async def op() -> None:
        wire = seal(identity, type="bench_task", subject=subject, body=BODY)
        reply = parse((await nc.request(subject, wire, timeout=TIMEOUT)).data)
        if not verify(reply.sender, reply.signed, reply.signature):
            raise RuntimeError("the floor responder's reply did not verify")
    return op


def mac_floor_rr(nc: NatsClient, subject: str, to: str) -> Op:
    """The MACed minimum: seal and MAC, request, parse and check the reply's MAC."""
    identity = Identity.generate()
    keys = E2EKeys(identity)

    async def op() -> None:
        wire = seal(identity, type="bench_task", subject=subject, body=BODY, to=to,
                    pair_key=keys.pair_key)
        reply = parse((await nc.request(subject, wire, timeout=TIMEOUT)).data)
        if not hmac.compare_digest(mac(keys.pair_key(reply.sender), reply.signed), reply.tag):
            raise RuntimeError("the floor responder's reply did not verify")
    return op


def raw_sg(nc: NatsClient, subject: str) -> Op:
    """What Bus.gather does, without envelopes: fresh inbox, publish, wait for FANOUT."""
    async def op() -> None:
        inbox, got, enough = nc.new_inbox(), [], asyncio.Event()

        async def collect(msg: Msg) -> None:
            got.append(msg.data)
            if len(got) >= FANOUT:
                enough.set()

        sub = await nc.subscribe(inbox, cb=collect)
        try:
            await nc.publish(subject, RAW, reply=inbox)
            async with asyncio.timeout(TIMEOUT):
                await enough.wait()
        finally:
            await sub.unsubscribe()
    return op


def bus_sg(bus: Bus, subject: str, *, verify_all: bool) -> Op:
    """Signed scatter-gather. ``verify_all=False`` is how an auction uses it: every
    reply is parsed and checked, and only the one acted on (the first) is verified."""
    async def op() -> None:
        replies = await bus.gather(subject, "bench_task", BODY, timeout=TIMEOUT, expected=FANOUT,
                                   verify=verify_all)
        if len(replies) < FANOUT:
            raise TimeoutError(f"{len(replies)} of {FANOUT} replies")
        if not verify_all:
            bus.guard.confirm(replies[0])
    return op


@dataclass
class Scenario:
    name: str
    rounds: int
    ops: dict[str, Op]
    samples: dict[str, list[int]] = field(default_factory=dict)
    misses: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.samples = {side: [] for side in self.ops}
        self.misses = {side: 0 for side in self.ops}


async def warm_up(op: Op, rounds: int) -> None:
    """Wait (bounded) until interest has spread over the routes, then run ``rounds``."""
    await until_answers(op, bound=60.0)
    for _ in range(rounds):
        await op()


async def measure(scenarios: list[Scenario]) -> None:
    """BLOCKS rounds of batches, raw then bus, bus then raw, ... for every scenario."""
    for block in range(BLOCKS):
        for sc in scenarios:
            sides = list(sc.ops)
            for side in sides if block % 2 == 0 else reversed(sides):
                sc.misses[side] += await time_rounds(sc.ops[side], sc.samples[side],
                                                     math.ceil(sc.rounds / BLOCKS))



def summarize(sc: Scenario) -> dict[str, Any]:
    row: dict[str, Any] = {"title": TITLES[sc.name], "target": TARGETS[sc.name]}
    for side, data in sc.samples.items():
        row[side] = {"n": len(data), "misses": sc.misses[side],
                     **latency(data)}
    row["ratio_p50"] = round(row["bus"]["p50"] / row["raw"]["p50"], 3)
    if "sa" in row:
        row["sa_ratio_p50"] = round(row["sa"]["p50"] / row["raw"]["p50"], 3)
    if "floor" in row:
        row["floor_ratio_p50"] = round(row["floor"]["p50"] / row["raw"]["p50"], 3)
    row["pass"] = row["ratio_p50"] <= TARGETS[sc.name] and not any(sc.misses.values())
    return row


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rr = args.rounds or (300 if args.quick else 3000)
    sg = args.sg_rounds or (max(1, rr // 3) if args.rounds else 100 if args.quick else 1000)
    base = Path(tempfile.mkdtemp(prefix="agoramesh-bench-"))
    meshes: list[Mesh] = []
    requesters, responders, child = Clients(), Clients(), None
    try:
        meshes.append(await Mesh.launch(base / "one", seeds=1))
        meshes.append(await Mesh.launch(base / "three", seeds=3))
        one = meshes[0].seeds[0].client_url
        s1, s2, s3 = (seed.client_url for seed in meshes[1].seeds)
        # The directed scenarios' responders have known ids: the requester addresses them.
        ids = {(kind, name): Identity.generate() for kind in ("bus", "sa", "mfloor")
               for name in ("rr1", "rr3")}
        spec: Spec = [(kind, url, f"bench.{kind}.{rr_name}",
                       ids[kind, rr_name].seed.decode() if (kind, rr_name) in ids else "")
                      for url, rr_name in ((one, "rr1"), (s3, "rr3"))
                      for kind in ("raw", "floor", "mfloor", "bus", "sa")]
        spec += [(kind, (s1, s2, s3)[i % 3], f"bench.{kind}.sg3", "")
                 for i in range(FANOUT) for kind in ("raw", "bus")]
        if args.split:
            child = await spawn(spec)
        else:
            await responders.respond(spec)
        nc1, nc3 = await requesters.raw(one), await requesters.raw(s1)
        bus1, bus3 = await requesters.bus(one), await requesters.bus(s1)
        sa1 = await requesters.bus(one, sign_all=True)
        sa3 = await requesters.bus(s1, sign_all=True)
        scenarios = [
            Scenario("rr-1", rr, {"raw": raw_rr(nc1, "bench.raw.rr1"),
                                  "floor": floor_rr(nc1, "bench.floor.rr1"),
                                  "bus": bus_rr(bus1, "bench.bus.rr1"),
                                  "sa": bus_rr(sa1, "bench.sa.rr1")}),
            Scenario("rr-3", rr, {"raw": raw_rr(nc3, "bench.raw.rr3"),
                                  "floor": floor_rr(nc3, "bench.floor.rr3"),
                                  "bus": bus_rr(bus3, "bench.bus.rr3"),
                                  "sa": bus_rr(sa3, "bench.sa.rr3")}),
            Scenario("dr-1", rr, {"raw": raw_rr(nc1, "bench.raw.rr1"),
                                  "floor": mac_floor_rr(nc1, "bench.mfloor.rr1",
                                                        ids["mfloor", "rr1"].agent_id),
                                  "bus": bus_rr(bus1, "bench.bus.rr1",
                                                to=ids["bus", "rr1"].agent_id),
                                  "sa": bus_rr(sa1, "bench.sa.rr1",
                                               to=ids["sa", "rr1"].agent_id)}),
            Scenario("dr-3", rr, {"raw": raw_rr(nc3, "bench.raw.rr3"),
                                  "floor": mac_floor_rr(nc3, "bench.mfloor.rr3",
                                                        ids["mfloor", "rr3"].agent_id),
                                  "bus": bus_rr(bus3, "bench.bus.rr3",
                                                to=ids["bus", "rr3"].agent_id),
                                  "sa": bus_rr(sa3, "bench.sa.rr3",
                                               to=ids["sa", "rr3"].agent_id)}),
            Scenario("sg-3", sg, {"raw": raw_sg(nc3, "bench.raw.sg3"),
                                  "bus": bus_sg(bus3, "bench.bus.sg3", verify_all=False)}),
            Scenario("sg-3v", sg, {"raw": raw_sg(nc3, "bench.raw.sg3"),
                                   "bus": bus_sg(bus3, "bench.bus.sg3", verify_all=True)}),
        ]
        for sc in scenarios:
            for op in sc.ops.values():
                await warm_up(op, max(20, sc.rounds // 10))
        started = time.monotonic()
        await measure(scenarios)
        return {"mode": "split" if args.split else "single", "loop": "uvloop",
                "rounds": {"rr": rr, "sg": sg}, "blocks": BLOCKS, "fanout": FANOUT,
                "payload_bytes": len(RAW), "seconds": round(time.monotonic() - started, 1),
                "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "results": {sc.name: summarize(sc) for sc in scenarios}}
    finally:
        await requesters.close()
        await responders.close()
        if child is not None:
            await stop_child(child)
        for mesh in reversed(meshes):
            await mesh.stop(grace=2.0)
        shutil.rmtree(base, ignore_errors=True)


def report(result: dict[str, Any]) -> None:
    mode = ("split: responders in a child process" if result["mode"] == "split"
            else "single: requesters and responders in one process")
    print(f"\nmode {mode}; {result['loop']}; payload {result['payload_bytes']} B; "
          f"rounds rr={result['rounds']['rr']} sg={result['rounds']['sg']} per path, "
          f"{result['blocks']} alternating blocks; {result['seconds']} s measured\n")
    print(f"{'scenario':<46} {'path':<5} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'miss':>5}")
    for row in result["results"].values():
        for side in ("raw", "floor", "bus", "sa"):
            if side not in row:
                continue
            r = row[side]
            print(f"{row['title']:<46} {side:<5} {r['p50']:8.3f} {r['p90']:8.3f} "
                  f"{r['p99']:8.3f} {r['misses']:5d}")
    print()
    for name, row in result["results"].items():
        verdict = "PASS" if row["pass"] else "FAIL"
        print(f"{verdict}  {name}: p50 bus/raw = {row['ratio_p50']:.2f} "
              f"(target <= {row['target']:.1f}) — {row['title']}")
    for name, row in result["results"].items():
        if "sa_ratio_p50" in row:
            print(f"info  {name}: p50 sign-all/raw = {row['sa_ratio_p50']:.2f}, every "
                  f"envelope signed (--sign-all: what non-repudiation costs)")
        if "floor_ratio_p50" in row:
            what = ("MACed minimum (MAC and check each way" if name.startswith("dr")
                    else "signed minimum (sign and verify each way")
            print(f"info  {name}: p50 floor/raw = {row['floor_ratio_p50']:.2f}, the {what}, "
                  f"no Bus)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few hundred rounds")
    parser.add_argument("--split", action="store_true", help="responders in a child process")
    parser.add_argument("--rounds", type=int, help="request/reply rounds per path (3000)")
    parser.add_argument("--sg-rounds", type=int,
                        help="scatter-gather rounds per path (1000, or rounds/3 with --rounds)")
    parser.add_argument("--json", type=Path, help="write the results to this file")
    parser.add_argument("--serve", metavar="SPEC", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        uvloop.run(serve([tuple(item) for item in json.loads(args.serve)]))
        return 0
    return run_and_report(run(args), report, args.json)


if __name__ == "__main__":
    sys.exit(main())
