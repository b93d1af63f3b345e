"""The web console's two targets (issue 20), measured in one run.

The mesh: one seed (a nats-server here); 95 offline ``echo`` agents in one
hosting process (``python -m agoramesh.testing.hosting``); 5 ``work.do``
workers and an auctioneer agent in this process; and the node under test, a
child ``agoramesh node --connect … --http-port 0`` serving the HTTP API and
the console (102 agents in all). The auctioneer runs ``work.do`` auctions at
``--rate`` per second (5 bids each, every auction reported with its bids in
the auctioneer's telemetry) from start to end.

1. **Stream cost**: the node's CPU (utime + stime from ``/proc/<pid>/stat``)
   over ``--window`` seconds of that load without a console stream, then
   with one stream connected (an SSE reader here that reads and drops every
   frame), then without again. Reported as % of one core each, and the
   difference between "with" and the mean of the two "without" windows.
   Target: ≤ 2 % of a core at 50 auctions/s.
2. **Page interactive**: once the node's console holds ≥ 1,000 past auctions,
   headless Chromium (Debian's ``chromium``, Playwright) loads the console
   ``--loads`` times; each load's time from navigation start until the
   snapshot is rendered (the page's ``data-ready-ms``: agents table,
   topology, 1,000 auctions, tasks, all handlers attached). Target: ≤ 1 s.

    .venv/bin/python benchmarks/bench_console.py [--rate 50] [--window 10] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from agoramesh.agent import AgentNode
from agoramesh.bus.identity import Identity
from agoramesh.bus.server import EmbeddedServer
from agoramesh.config import BusConfig, ServerConfig
from agoramesh.nodes.backends.offline import OfflineBackend
from agoramesh.nodes.catalog import capabilities_for
from agoramesh.nodes.node import NodeConfig
from agoramesh.testing import wait_until
from agoramesh.testing.workers import WORK, Worker
from common import count_warnings, run_and_report

HOSTED, WORKERS = 95, 5
TARGET_CPU_PCT, TARGET_READY_MS = 2.0, 1000.0
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


async def json_line(stream: asyncio.StreamReader, bound: float = 60.0) -> dict[str, Any]:
    async with asyncio.timeout(bound):
        while True:
            line = await stream.readline()
            if not line:
                raise RuntimeError("the child process ended before it was ready")
            with contextlib.suppress(ValueError):
                return dict(json.loads(line))


async def load(auctioneer: AgentNode, rate: float, stop: asyncio.Event,
               done: list[int]) -> None:
    """``rate`` work.do auctions a second until ``stop``; each bounded by 10 s."""
    loop = asyncio.get_running_loop()
    running: set[asyncio.Task[Any]] = set()
    start, sent = loop.time(), 0
    while not stop.is_set():
        due = start + sent / rate
        await asyncio.sleep(max(0.0, due - loop.time()))
        task = asyncio.create_task(auctioneer.dispatcher.submit("work.do", {"n": sent},
                                                                timeout=10.0))
        task.add_done_callback(lambda t: done.append(0 if t.exception() else 1))
        running.add(task)
        task.add_done_callback(running.discard)
        sent += 1
    if running:
        await asyncio.wait(running, timeout=15.0)


async def window(pid: int, seconds: float) -> float:
    """The process's CPU over ``seconds``, as % of one core."""
    before, started = cpu_seconds(pid), time.monotonic()
    await asyncio.sleep(seconds)
    return 100 * (cpu_seconds(pid) - before) / (time.monotonic() - started)


async def stream(http: aiohttp.ClientSession, url: str, frames: list[int]) -> None:
    """One console stream, read and dropped (frames counted) until cancelled."""
    async with http.get(f"{url}/api/console/events") as response:
        response.raise_for_status()
        async for chunk in response.content.iter_any():  # a snapshot is one long line
            frames[0] += chunk.count(b"\ndata: ") + chunk.startswith(b"data: ")
            frames[1] += len(chunk)


async def page_loads(url: str, loads: int) -> list[float]:
    from playwright.async_api import async_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        raise RuntimeError("no chromium on PATH")
    times: list[float] = []
    async with async_playwright() as driver:
        browser = await driver.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            for _ in range(loads):
                page = await browser.new_page(viewport={"width": 1280, "height": 800})
                await page.goto(url)
                await page.wait_for_selector("body[data-ready=true]", timeout=30_000)
                times.append(float(await page.get_attribute("body", "data-ready-ms") or "nan"))
                assert await page.locator("#auction-list > li").count() >= 1000
                await page.close()
        finally:
            await browser.close()
    return times


async def run(args: argparse.Namespace) -> dict[str, Any]:
    count_warnings()
    result: dict[str, Any] = {"rate": args.rate, "window_s": args.window,
                              "agents": HOSTED + WORKERS + 2}
    with tempfile.TemporaryDirectory(prefix="bench-console-") as base:
        async with contextlib.AsyncExitStack() as stack:
            server = EmbeddedServer(ServerConfig(name="seed1", data_dir=Path(base) / "seed1"))
            await server.start()
            stack.push_async_callback(server.stop)
            url = server.client_url
            host = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "agoramesh.testing.hosting", "--server", url,
                "--agents", str(HOSTED), stdout=asyncio.subprocess.PIPE)
            stack.push_async_callback(_stop, host)
            node = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "agoramesh", "node", "--json", "--connect", url,
                "--http-port", "0", "--name", "console", "--capability", "echo",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
                env={**os.environ, "AGORAMESH_HOME": str(Path(base) / "home")})
            stack.push_async_callback(_stop, node)
            assert node.stdout is not None and host.stdout is not None
            ready = await json_line(node.stdout)
            http_url = str(ready["http"])
            while (await json_line(host.stdout, 120.0)).get("event") != "started":
                pass
            agents = []
            for index in range(WORKERS):
                agents.append(AgentNode(Identity.generate(), NodeConfig(
                    name=f"worker{index}", type="worker", capabilities=(WORK,),
                    max_concurrent_tasks=64), Worker(f"worker{index}"),
                    BusConfig(servers=(url,), name=f"worker{index}")))
            echo = capabilities_for("offline", ["echo"])
            auctioneer = AgentNode(Identity.generate(), NodeConfig(
                name="auctioneer", type="offline", capabilities=echo),
                OfflineBackend(), BusConfig(servers=(url,), name="auctioneer"))
            agents.append(auctioneer)
            for agent in agents:
                await agent.start()
                stack.push_async_callback(agent.stop, 1.0)
            await wait_until(lambda: len(auctioneer.directory.capable("work.do")) >= WORKERS,
                             timeout=30)

            stop, done = asyncio.Event(), []
            loader = asyncio.create_task(load(auctioneer, args.rate, stop, done))
            pid = node.pid
            frames = [0, 0]
            async with aiohttp.ClientSession() as http:
                await asyncio.sleep(3.0)  # the load settles
                without = await window(pid, args.window)
                reader = asyncio.create_task(stream(http, http_url, frames))
                await asyncio.sleep(1.0)  # the snapshot is sent
                if reader.done():
                    reader.result()  # the stream failed: say why
                sent_before = frames[:]
                with_stream = await window(pid, args.window)
                sent = [frames[0] - sent_before[0], frames[1] - sent_before[1]]
                reader.cancel()
                await asyncio.wait([reader], timeout=5)
                await asyncio.sleep(1.0)
                without_again = await window(pid, args.window)
                async with asyncio.timeout(120):
                    while True:
                        async with http.get(f"{http_url}/api/console/state") as response:
                            kept = len((await response.json())["auctions"])
                        if kept >= 1000:
                            break
                        await asyncio.sleep(1.0)
            result["cpu_pct"] = {"without": round(without, 2), "with": round(with_stream, 2),
                                 "without_again": round(without_again, 2),
                                 "difference": round(with_stream
                                                     - (without + without_again) / 2, 2)}
            result["stream"] = {"frames": sent[0], "bytes": sent[1]}
            times = await page_loads(http_url, args.loads)
            result["ready_ms"] = {"each": times, "median": statistics.median(times),
                                  "max": max(times), "auctions_kept": kept}
            stop.set()
            await loader
            result["auctions"] = {"completed": sum(done), "failed": len(done) - sum(done)}
    return result


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
    try:
        async with asyncio.timeout(15):
            await proc.wait()
    except TimeoutError:
        proc.kill()
        await proc.wait()


def report(result: dict[str, Any]) -> None:
    cpu, ready = result["cpu_pct"], result["ready_ms"]
    print(f"load: {result['rate']:g} auctions/s over {result['agents']} agents; "
          f"{result['auctions']['completed']} auctions completed, "
          f"{result['auctions']['failed']} failed")
    print(f"node CPU, % of a core over {result['window_s']:g} s: without stream "
          f"{cpu['without']}, with {cpu['with']}, without again {cpu['without_again']}; "
          f"difference {cpu['difference']} (stream: {result['stream']['frames']} frames, "
          f"{result['stream']['bytes']} bytes)")
    print(f"page interactive with {ready['auctions_kept']} past auctions: "
          f"median {ready['median']:.0f} ms, max {ready['max']:.0f} ms "
          f"(each: {', '.join(f'{t:.0f}' for t in ready['each'])})")
    print(f"target stream cost <= {TARGET_CPU_PCT:g}% of a core: "
          f"{'PASS' if cpu['difference'] <= TARGET_CPU_PCT else 'FAIL'}")
    print(f"target interactive <= {TARGET_READY_MS:g} ms: "
          f"{'PASS' if ready['max'] <= TARGET_READY_MS else 'FAIL'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=50.0, help="auctions a second (50)")
    parser.add_argument("--window", type=float, default=10.0,
                        help="seconds of each CPU window (10)")
    parser.add_argument("--loads", type=int, default=5, help="page loads timed (5)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    return run_and_report(run(args), report, args.json)


if __name__ == "__main__":
    sys.exit(main())
