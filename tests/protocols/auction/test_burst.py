"""Non-durable tasks under load and failover, from a plain client as the `nats` CLI sends them.

* A burst of 10,000 requests on ``agora.task.echo`` (the one agent offering
  ``echo`` takes 8 at a time): every request ends COMPLETED, or ``Overloaded``
  within its deadline; never ``NoBidders`` while the agent exists.
* A seed SIGKILLed under a steady load: every request a client had sent is
  answered, or fails with an error (or its own deadline) within its deadline;
  the agents of the dead seed fail over to the others.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import Counter
from pathlib import Path

import nats
import nats.errors
import pytest

from agoramesh.testing import UpProcess

pytestmark = [pytest.mark.e2e, pytest.mark.chaos, pytest.mark.timeout(300)]

BURST = 10_000
DEADLINE = 120.0  # seconds each request of the burst may wait


def outcome(data: bytes) -> str:
    """COMPLETED, or the error's type (a JSON error, or a FAILED task_response's)."""
    reply = json.loads(data)
    if reply.get("status") == "COMPLETED":
        return "COMPLETED"
    return str((reply.get("error") or {}).get("type"))


@pytest.mark.slow
async def test_a_burst_larger_than_capacity_queues_instead_of_failing(tmp_path: Path) -> None:
    up = UpProcess(tmp_path / "mesh")
    try:
        nc = await nats.connect(up.url, max_reconnect_attempts=3)
        try:
            body = json.dumps({"text": "burst"}).encode()
            started = time.monotonic()

            async def one() -> tuple[str, float]:
                try:
                    msg = await nc.request("agora.task.echo", body, timeout=DEADLINE)
                except nats.errors.TimeoutError:
                    return "timeout", time.monotonic() - started
                return outcome(msg.data), time.monotonic() - started

            results = await asyncio.gather(*(one() for _ in range(BURST)))
        finally:
            await nc.close()
        counts = Counter(kind for kind, _ in results)
        seconds = max(at for _, at in results)
        print(f"\nburst: {BURST} requests on agora.task.echo in {seconds:.1f}s: {dict(counts)}")
        assert counts["NoBidders"] == 0, counts
        assert counts["timeout"] == 0, counts
        assert set(counts) <= {"COMPLETED", "Overloaded"}, counts
        assert counts["COMPLETED"] >= BURST // 2, counts  # most of it drains, not refuses
    finally:
        up.interrupt()
        up.reap()


async def test_a_killed_seed_loses_no_request_a_client_waits_on(tmp_path: Path) -> None:
    up = UpProcess(tmp_path / "mesh")
    try:
        seeds = up.pids[:3]
        # Clients on the two seeds that stay; the agents spread over all three.
        clients = [await nats.connect(url, max_reconnect_attempts=3)
                   for url in up.seed_urls[:2]]
        deadline, stop_at = 10.0, time.monotonic() + 8.0
        late: list[float] = []
        kinds: Counter[str] = Counter()

        async def load(nc: nats.aio.client.Client) -> None:
            body = json.dumps({"text": "steady"}).encode()
            while time.monotonic() < stop_at:
                sent = time.monotonic()
                try:
                    msg = await nc.request("agora.task.echo", body, timeout=deadline)
                    kinds[outcome(msg.data)] += 1
                except nats.errors.TimeoutError:
                    kinds["timeout"] += 1
                except nats.errors.NoRespondersError:
                    kinds["no responders"] += 1
                took = time.monotonic() - sent
                if took > deadline + 1.0:
                    late.append(took)

        async def kill_a_seed() -> None:
            await asyncio.sleep(2.0)
            os.kill(seeds[2], signal.SIGKILL)

        try:
            await asyncio.gather(kill_a_seed(), *(load(nc) for nc in clients for _ in range(8)))
        finally:
            for nc in clients:
                await nc.close()
        print(f"\nseed kill under load: {dict(kinds)}")
        assert late == [], late  # nothing waited past its deadline
        assert kinds["COMPLETED"] > 100, kinds
        assert kinds["NoBidders"] == 0, kinds  # the auction waited out the reconnects
        # Core NATS is at most once: a request crossing the dead server at the instant of
        # the kill is lost, and its client's own deadline says so. 16 were in flight.
        assert sum(kinds.values()) - kinds["COMPLETED"] <= 16, kinds
    finally:
        up.interrupt()
        up.reap()
