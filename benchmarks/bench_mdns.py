"""Joining by mDNS against joining by address: how long until a new node is a mesh member.

A first node (``agoramesh node --discover mdns``) runs the mesh on loopback. Then,
``--rounds`` times each, a second node is started as a user starts it:

- ``mdns``: ``--discover mdns`` (no address; it finds the first by mDNS);
- ``address``: ``--bootstrap <the first node's cluster address>`` (the baseline).

*Member* is the time from the process's spawn until a client of the first node's
server receives the new agent's ``hello``: its server is routed into the mesh and
its agent announced, as everyone else sees it. *Ready* is until its ready line
(with ``--discover mdns`` that also waits for its own mDNS announcement to be
probed, about a second, so that nodes started after it find it). Both include the
interpreter's start and the server's; the difference between the modes is what
finding the seeds costs. Then the node is stopped (SIGTERM) and the next round
starts.

    .venv/bin/python benchmarks/bench_mdns.py [--rounds 5] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import nats

from agoramesh.bus.envelope import parse
from agoramesh.bus.subjects import Subjects
from agoramesh.testing import NodeProcess

TARGET_S = 2.0  # a node with --discover mdns is a mesh member within 2 s of start
LAN = ("--discover", "mdns", "--mdns-interface", "127.0.0.1")


class Hellos:
    """A plain NATS client of the first node's server, in a thread of its own, noting when
    each agent's first ``hello`` arrives (by agent name)."""

    def __init__(self, url: str) -> None:
        self.seen: dict[str, float] = {}
        self._url = url
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._run(),), daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the observer did not connect")

    async def _run(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        nc = await nats.connect(self._url)

        async def on(msg: Any) -> None:
            envelope = parse(msg.data)
            if envelope.type == "hello":
                self.seen.setdefault(envelope.body["card"]["name"], time.perf_counter())

        await nc.subscribe(Subjects("agora").presence_all, cb=on)
        await nc.flush()
        self._ready.set()
        await self._stop.wait()
        await nc.close()

    def close(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def _join(base: Path, hellos: Hellos, name: str, *args: str) -> tuple[float, float, dict[str, Any]]:
    started = time.perf_counter()
    node = NodeProcess(base / name, "--name", name, *args)
    ready_s = time.perf_counter() - started
    try:
        deadline = time.monotonic() + 10
        while name not in hellos.seen and time.monotonic() < deadline:
            time.sleep(0.01)
        if name not in hellos.seen:
            raise RuntimeError(f"{name}'s hello never reached the first node")
        info = dict(node.ready)
        if node.stop() != 0:
            raise RuntimeError(f"{name} did not stop cleanly: {node.stderr}")
    finally:
        node.reap()
    return hellos.seen[name] - started, ready_s, info


def run(rounds: int) -> dict[str, Any]:
    mesh = f"bench-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="agoramesh-bench-mdns-") as tmp:
        base = Path(tmp)
        first = NodeProcess(base / "first", "--name", "first", *LAN, "--mesh", mesh)
        hellos: Hellos | None = None
        member: dict[str, list[float]] = {"mdns": [], "address": []}
        ready: dict[str, list[float]] = {"mdns": [], "address": []}
        try:
            hellos = Hellos(first.ready["client"])
            for round_ in range(rounds):
                took, ready_s, info = _join(base, hellos, f"m{round_}", *LAN, "--mesh", mesh)
                if info.get("discovered") != ["first"]:
                    raise RuntimeError(f"round {round_}: discovered {info.get('discovered')}")
                member["mdns"].append(took)
                ready["mdns"].append(ready_s)
                took, ready_s, _ = _join(base, hellos, f"a{round_}",
                                         "--bootstrap", first.ready["cluster"])
                member["address"].append(took)
                ready["address"].append(ready_s)
            first.stop()
        finally:
            if hellos is not None:
                hellos.close()
            first.reap()
    summary = {mode: {"member_p50_s": round(statistics.median(member[mode]), 3),
                      "member_max_s": round(max(member[mode]), 3),
                      "ready_p50_s": round(statistics.median(ready[mode]), 3),
                      "member_all_s": [round(value, 3) for value in member[mode]]}
               for mode in member}
    worst = summary["mdns"]["member_max_s"]
    return {"rounds": rounds, "modes": summary,
            "ratio_p50": round(summary["mdns"]["member_p50_s"]
                               / summary["address"]["member_p50_s"], 2),
            "verdict": {"value": worst, "target": TARGET_S, "pass": worst <= TARGET_S}}


def report(result: dict[str, Any]) -> None:
    print(f"\njoining a 1-node mesh on loopback, from spawn, {result['rounds']} rounds\n")
    print(f"{'mode':<8} {'member p50':>10} {'max':>8} {'ready p50':>10}  member, each round")
    for mode, r in result["modes"].items():
        print(f"{mode:<8} {r['member_p50_s']:>8.3f} s {r['member_max_s']:>6.3f} s "
              f"{r['ready_p50_s']:>8.3f} s  {' '.join(f'{v:.2f}' for v in r['member_all_s'])}")
    print(f"\nmdns / address (member p50): {result['ratio_p50']:.2f} x")
    verdict = result["verdict"]
    print(f"{'PASS' if verdict['pass'] else 'FAIL'}  mdns: member within {verdict['value']:.3f} s "
          f"of start, worst round (target <= {verdict['target']:g} s)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = run(args.rounds)
    report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
