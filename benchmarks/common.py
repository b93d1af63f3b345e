"""Helpers the benchmark scripts share (imported as a sibling: run them as scripts)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import nats
import nats.errors
import uvloop
from nats.aio.client import Client as NatsClient

from agoramesh.agent import AgentNode
from agoramesh.errors import AgoraError

__all__ = ("Warnings", "WrongAnswer", "alternate", "count_warnings", "latency", "percentile",
           "raw_client", "run_and_report", "serve_until_stdin_closes", "spawn_child",
           "stop_all", "stop_child", "time_rounds", "until_answers")


class WrongAnswer(Exception):
    """A reply that is not the expected result."""


class Warnings(logging.Handler):
    """Counts the runtime's log warnings (shown as a number, not hundreds of lines)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.seen[str(record.msg).split("%")[0].strip()[:60]] += 1


def count_warnings() -> Warnings:
    """Count the runtime's warnings instead of printing them (nothing else is logged)."""
    warnings = Warnings()
    runtime_log = logging.getLogger("agoramesh")
    runtime_log.addHandler(warnings)
    runtime_log.propagate = False
    return warnings


def percentile(values: list[int], q: float) -> float:
    """Nearest-rank percentile of nanosecond samples, in milliseconds (0 for none)."""
    ordered = sorted(values) or [0]
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))] / 1e6


def latency(samples: list[int]) -> dict[str, float]:
    """p50, p90 and p99 of nanosecond samples, in milliseconds."""
    return {f"p{q}": round(percentile(samples, q), 4) for q in (50, 90, 99)}


async def until_answers(op: Callable[[], Awaitable[object]], bound: float = 30.0,
                        also: tuple[type[Exception], ...] = ()) -> None:
    """Retry ``op`` (at most ``bound`` seconds) until it succeeds: interest has spread
    over the routes and whoever answers it is serving. ``also``: more exceptions that
    mean "not yet" rather than a failure."""
    not_yet: tuple[type[Exception], ...] = (TimeoutError, AgoraError, nats.errors.Error, *also)
    async with asyncio.timeout(bound):
        while True:
            try:
                await op()
                return
            except not_yet:
                await asyncio.sleep(0.05)


async def stop_all(nodes: list[AgentNode], grace: float = 1.0) -> None:
    """Stop every node concurrently, bounded; kill whatever a stop could not finish."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(grace + 30):
            await asyncio.gather(*(node.stop(grace) for node in nodes), return_exceptions=True)
    for node in nodes:
        if node.bus.is_connected:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(node.kill(), 5)


async def raw_client(stack: contextlib.AsyncExitStack, url: str) -> NatsClient:
    """A plain nats-py client (the baseline), closed with ``stack``; every wait bounded."""
    nc = await asyncio.wait_for(nats.connect(url, connect_timeout=3, allow_reconnect=False), 5)
    stack.push_async_callback(lambda: asyncio.wait_for(nc.close(), 5))
    return nc


async def time_rounds(op: Callable[[], Awaitable[object]], samples: list[int],
                      rounds: int) -> int:
    """Await ``op`` ``rounds`` times, appending each duration (ns); returns the timeouts."""
    clock = time.perf_counter_ns
    missed = 0
    for _ in range(rounds):
        start = clock()
        try:
            await op()
        except TimeoutError:
            missed += 1
        else:
            samples.append(clock() - start)
    return missed


async def alternate(ops: dict[str, Callable[[], Awaitable[object]]], rounds: int,
                    blocks: int = 10) -> tuple[dict[str, list[int]], dict[str, int], float]:
    """Each op ``rounds`` times, in ``blocks`` alternating blocks (ABBA: first to last, then
    last to first) so machine noise hits every path alike: the durations (ns) by op, the
    misses (timeouts, errors, wrong answers: not timed) and the seconds it all took."""
    sides = list(ops)
    samples: dict[str, list[int]] = {side: [] for side in sides}
    misses = dict.fromkeys(sides, 0)
    started, clock = time.monotonic(), time.perf_counter_ns
    for block in range(blocks):
        for side in sides if block % 2 == 0 else sides[::-1]:
            for _ in range(math.ceil(rounds / blocks)):
                start = clock()
                try:
                    await ops[side]()
                except (TimeoutError, AgoraError, nats.errors.Error, WrongAnswer):
                    misses[side] += 1
                else:
                    samples[side].append(clock() - start)
    return samples, misses, time.monotonic() - started


async def spawn_child(script: str, *args: str, ready_bound: float = 30.0
                      ) -> asyncio.subprocess.Process:
    """``python script args…`` as a child process, once it has printed READY
    (:func:`serve_until_stdin_closes`); stopped (:func:`stop_child`) if it does not."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, script, *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(ready_bound):
            line = await proc.stdout.readline()
        if line.strip() != b"READY":
            raise RuntimeError(f"{args[:2]} child process failed to start: {line!r}")
    except BaseException:
        await stop_child(proc)
        raise
    return proc


async def stop_child(proc: asyncio.subprocess.Process, bound: float = 10.0) -> None:
    """Close the child's stdin (its signal to stop), then kill it after ``bound`` seconds."""
    if proc.stdin is not None:
        proc.stdin.close()
    try:
        async with asyncio.timeout(bound):
            await proc.wait()
    except TimeoutError:
        proc.kill()
        async with asyncio.timeout(5):
            await proc.wait()


async def serve_until_stdin_closes(bound: float = 4 * 3600) -> None:
    """Child side of :func:`spawn_child`: print READY, then wait until stdin closes (the
    parent stopped it or died), at most ``bound`` seconds."""
    print("READY", flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(bound):
            await reader.read()


def run_and_report(run: Coroutine[Any, Any, dict[str, Any]],
                   report: Callable[[dict[str, Any]], None], json_path: Path | None) -> int:
    """Run a benchmark on uvloop, print its report, save its results; exit status 0.

    A FAIL verdict is a finding, not a crash: the verdict lines say it.
    """
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        result = runner.run(run)
    report(result)
    if json_path:
        json_path.write_text(json.dumps(result, indent=2) + "\n")
    return 0
