"""Encrypted + signed Bus request/reply vs signed-only, with raw nats-py for context.

Paths, measured in the same run on the same servers:

* ``raw``     nats-py request/reply of the body as JSON bytes (the floor);
* ``signed``  ``Bus.request`` addressed to the responder (``to`` = its agent id),
              both Buses with ``BusConfig(encrypt=False)``: sign + verify per leg;
* ``sealed``  the same with ``encrypt=True`` (the default): each leg's body is
              boxed for its recipient before signing and opened after verifying.

Scenarios: ``rr-1`` requester and responder on one server (a 1-seed Mesh);
``rr-3`` across a 3-seed mesh (requester on seed1, responder on seed3). The
three paths run in 10 blocks whose order rotates and reverses from block to
block (raw/signed/sealed, sealed/signed/raw, signed/sealed/raw, ...) so
machine noise hits them alike. Requesters and responders share one event loop,
so every CPU cost of both sides is on the measured path. Also printed: the
cost of one seal and one open of the body (``timeit``), and of the first
message to a new peer (the X25519 setup the per-peer box cache saves).

    .venv/bin/python benchmarks/bench_e2e.py [--quick] [--rounds N] [--json FILE]
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
import time
import timeit
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from agoramesh.bus.bus import Bus
from agoramesh.bus.e2e import E2EKeys
from agoramesh.bus.envelope import seal
from agoramesh.bus.identity import Identity
from agoramesh.bus.mesh import Mesh
from agoramesh.config import BusConfig
from bench_bus import BODY, RAW, TIMEOUT, Clients, echo, raw_rr, warm_up
from common import latency, run_and_report, time_rounds

BLOCKS = 10
TARGET = 1.3  # p50 sealed / signed
PATHS = ("raw", "signed", "sealed")
TITLES = {"rr-1": "request/reply, 1 server",
          "rr-3": "request/reply, 3-seed mesh (seed1 -> seed3)"}
Op = Callable[[], Awaitable[None]]


async def bus_pair(clients: Clients, requester_url: str, responder_url: str, subject: str, *,
                   encrypt: bool) -> Op:
    """A responder Bus on ``subject`` and a requester Bus; the op is one addressed request."""
    def config(url: str) -> BusConfig:
        return BusConfig(servers=(url,), name="bench-e2e", encrypt=encrypt)

    responder = await Bus.connect(Identity.generate(), config(responder_url))
    requester = await Bus.connect(Identity.generate(), config(requester_url))
    clients.buses += [responder, requester]
    await responder.subscribe(subject, echo)
    await responder.nats.flush(timeout=5)
    to = responder.agent_id

    async def op() -> None:
        await requester.request(subject, "bench_task", BODY, to=to, timeout=TIMEOUT)
    return op


def order(block: int) -> tuple[str, ...]:
    """Rotate the paths by block, reversed every other block."""
    shift = (block // 2) % len(PATHS)
    rotated = PATHS[shift:] + PATHS[:shift]
    return rotated if block % 2 == 0 else tuple(reversed(rotated))


async def measure(ops: dict[str, dict[str, Op]], rounds: int
                  ) -> tuple[dict[str, dict[str, list[int]]], dict[str, dict[str, int]]]:
    samples: dict[str, dict[str, list[int]]] = {name: {path: [] for path in PATHS}
                                                for name in ops}
    misses = {name: dict.fromkeys(PATHS, 0) for name in ops}
    for block in range(BLOCKS):
        for name, paths in ops.items():
            for path in order(block):
                misses[name][path] += await time_rounds(paths[path], samples[name][path],
                                                        math.ceil(rounds / BLOCKS))
    return samples, misses


def crypto_costs() -> dict[str, float]:
    """µs per seal/open of the bench body, and for a message to a peer never seen."""
    alice, bob = Identity.generate(), Identity.generate()
    sender, receiver = E2EKeys(alice), E2EKeys(bob)
    boxed = sender.seal_body(bob.agent_id, BODY)
    n = 20_000
    seal_us = timeit.timeit(lambda: sender.seal_body(bob.agent_id, BODY), number=n) / n * 1e6
    open_us = timeit.timeit(lambda: receiver.open_body(alice.agent_id, boxed), number=n) / n * 1e6
    strangers = [Identity.generate().agent_id for _ in range(2000)]
    cold = E2EKeys(alice, cache_size=len(strangers))
    started = time.perf_counter()
    for peer in strangers:
        cold.seal_body(peer, BODY)
    first_us = (time.perf_counter() - started) / len(strangers) * 1e6
    sign_us = timeit.timeit(lambda: seal(alice, type="bench_task", subject="bench.x", body=BODY,
                                         to=bob.agent_id), number=n) / n * 1e6
    plain = seal(alice, type="bench_task", subject="bench.x", body=BODY, to=bob.agent_id)
    sealed = seal(alice, type="bench_task", subject="bench.x", body=BODY, to=bob.agent_id,
                  box=sender.seal_body)
    return {"seal_body_us": round(seal_us, 2), "open_body_us": round(open_us, 2),
            "first_message_to_new_peer_us": round(first_us, 1),
            "sign_envelope_us": round(sign_us, 2),
            "envelope_bytes_signed": len(plain), "envelope_bytes_sealed": len(sealed)}


def summarize(name: str, samples: dict[str, list[int]], misses: dict[str, int]
              ) -> dict[str, Any]:
    row: dict[str, Any] = {"title": TITLES[name], "target": TARGET}
    for path in PATHS:
        row[path] = {"n": len(samples[path]), "misses": misses[path], **latency(samples[path])}
    p50 = {path: row[path]["p50"] for path in PATHS}
    row["ratio_p50"] = round(p50["sealed"] / p50["signed"], 3)
    row["ratio_p99"] = round(row["sealed"]["p99"] / row["signed"]["p99"], 3)
    row["signed_over_raw_p50"] = round(p50["signed"] / p50["raw"], 3)
    row["sealed_over_raw_p50"] = round(p50["sealed"] / p50["raw"], 3)
    row["pass"] = row["ratio_p50"] <= TARGET and not any(misses.values())
    return row


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rounds = args.rounds or (300 if args.quick else 3000)
    base = Path(tempfile.mkdtemp(prefix="agoramesh-bench-e2e-"))
    meshes: list[Mesh] = []
    clients = Clients()
    try:
        meshes.append(await Mesh.launch(base / "one", seeds=1))
        meshes.append(await Mesh.launch(base / "three", seeds=3))
        one = meshes[0].seeds[0].client_url
        s1, _, s3 = (seed.client_url for seed in meshes[1].seeds)
        await clients.respond([("raw", one, "bench.raw.rr1"), ("raw", s3, "bench.raw.rr3")])
        ops: dict[str, dict[str, Op]] = {
            "rr-1": {"raw": raw_rr(await clients.raw(one), "bench.raw.rr1"),
                     "signed": await bus_pair(clients, one, one, "bench.signed.rr1",
                                              encrypt=False),
                     "sealed": await bus_pair(clients, one, one, "bench.sealed.rr1",
                                              encrypt=True)},
            "rr-3": {"raw": raw_rr(await clients.raw(s1), "bench.raw.rr3"),
                     "signed": await bus_pair(clients, s1, s3, "bench.signed.rr3",
                                              encrypt=False),
                     "sealed": await bus_pair(clients, s1, s3, "bench.sealed.rr3",
                                              encrypt=True)},
        }
        for paths in ops.values():
            for op in paths.values():
                await warm_up(op, max(20, rounds // 10))
        started = time.monotonic()
        samples, misses = await measure(ops, rounds)
        seconds = round(time.monotonic() - started, 1)
        return {"loop": "uvloop", "rounds": rounds, "blocks": BLOCKS,
                "payload_bytes": len(RAW), "seconds": seconds,
                "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "crypto": crypto_costs(),
                "results": {name: summarize(name, samples[name], misses[name])
                            for name in ops}}
    finally:
        await clients.close()
        for mesh in reversed(meshes):
            await mesh.stop(grace=2.0)
        shutil.rmtree(base, ignore_errors=True)


def report(result: dict[str, Any]) -> None:
    crypto = result["crypto"]
    print(f"\n{result['loop']}; payload {result['payload_bytes']} B "
          f"(envelope {crypto['envelope_bytes_signed']} B signed, "
          f"{crypto['envelope_bytes_sealed']} B sealed); {result['rounds']} rounds per path, "
          f"{result['blocks']} rotating blocks; {result['seconds']} s measured\n")
    print(f"{'scenario':<46} {'path':<6} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'miss':>5}")
    for row in result["results"].values():
        for path in PATHS:
            r = row[path]
            print(f"{row['title']:<46} {path:<6} {r['p50']:8.3f} {r['p90']:8.3f} "
                  f"{r['p99']:8.3f} {r['misses']:5d}")
    print(f"\nper message: seal body {crypto['seal_body_us']} µs, open body "
          f"{crypto['open_body_us']} µs (sign an envelope: {crypto['sign_envelope_us']} µs); "
          f"first message to a new peer {crypto['first_message_to_new_peer_us']} µs "
          f"(X25519 setup, then cached)\n")
    for name, row in result["results"].items():
        verdict = "PASS" if row["pass"] else "FAIL"
        print(f"{verdict}  {name}: p50 sealed/signed = {row['ratio_p50']:.2f} "
              f"(target <= {row['target']:.1f}), p99 {row['ratio_p99']:.2f}; "
              f"vs raw: signed {row['signed_over_raw_p50']:.2f}, "
              f"sealed {row['sealed_over_raw_p50']:.2f} — {row['title']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="300 rounds per path")
    parser.add_argument("--rounds", type=int, help="request/reply rounds per path (3000)")
    parser.add_argument("--json", type=Path, help="write the results to this file")
    args = parser.parse_args()
    return run_and_report(run(args), report, args.json)


if __name__ == "__main__":
    sys.exit(main())
