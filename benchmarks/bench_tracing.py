"""Tracing on against tracing off: auctions and direct tasks, in one run (issue 19).

Setup, in each of ``--processes`` worker processes run one after another: a 1-seed
Mesh on loopback; a driver AgentNode (capability ``vote``: it never bids on
``echo``) and two worker AgentNodes offering ``echo`` (OfflineBackend), all on one
event loop, so every span of a task (client and servers alike) is paid in the
measured loop.

* ``off``  no TracerProvider: the API's no-op, nothing added to any message;
* ``on``   the SDK's TracerProvider with no span processor (the exporter off, what
           ``--propagate-traces`` sets up: spans record nothing, since nothing would
           receive it; a root draws its ids, a span under a sampled parent is that
           parent's context passed through, ``spans.ContextSpan`` and ``spans.Same``),
           the traceparent in every request; every task traced
           (``ParentBased(ALWAYS_ON)``), or with ``--sample R`` one in 1/R
           (``ParentBased(TraceIdRatioBased(R))``, what
           ``OTEL_TRACES_SAMPLER=parentbased_traceidratio`` sets up).

``--export otlp``: *on* as ``agoramesh node --otlp-endpoint URL`` sets it up
(``tracing.configure``): the provider also has a BatchSpanProcessor (its defaults,
or the ``OTEL_BSP_*`` variables) with the OTLP/HTTP exporter, sending to a receiver
each worker starts on 127.0.0.1 (``otlp_sink.py``). The receiver is a child
process, not a thread: decoding protobuf in a thread would hold the worker's GIL
against the measured loop and add to its CPU time, and a collector is another
process in a deployment; it still competes for the machine's cores, as a local
collector would. Reported besides the ratios: the spans ended, handed to the
exporter, dropped by the processor's queue and received; the exporter's CPU time
(on the processor's thread); and the workers' CPU time per task, on and off
(``time.process_time``: the loop's and the export thread's; an export triggered
during an *on* block may run into the next *off* block). The processor counts the
spans it is given: one addition on the loop per span.

Both are measured in alternating blocks (off, on, on, off, ...) of ``--rounds`` tasks
each, per path: ``auction`` = ``Dispatcher.submit`` (a contract-net auction among the
two workers), ``direct`` = ``submit_task`` to ``agora.cap.echo``. Each worker's p50
on/off ratio is its own, and the figure is their median: a process's memory layout
(and a burst of load during its run) moves its ratio by 2 to 4 %, which more tasks
in one process do not narrow (as pyperf runs many processes for the same reason);
the pooled samples' ratio is reported beside it. Target (``--export none`` only; with
``otlp`` the figures are information and the exit status 0): that median within
1.05 on both paths.

    .venv/bin/python benchmarks/bench_tracing.py [--processes 8] [--rounds 25] [--blocks 40]
                                                 [--sample 1] [--export none|otlp]
                                                 [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, cast

import uvloop
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased

from agoramesh.agent import AgentNode
from agoramesh.bus.identity import Identity
from agoramesh.bus.mesh import Mesh
from agoramesh.config import BusConfig
from agoramesh.nodes.backends.offline import OfflineBackend
from agoramesh.nodes.catalog import capabilities_for
from agoramesh.nodes.client import submit_task
from agoramesh.nodes.node import NodeConfig
from agoramesh.nodes.task import Task, TaskStatus
from agoramesh.observability import tracing
from agoramesh.testing import wait_until
from common import latency, percentile, spawn_child, stop_all, stop_child, time_rounds

TARGET = 1.05
MODES = ("off", "on")
SINK = str(Path(__file__).with_name("otlp_sink.py"))


class CountedProcessor(BatchSpanProcessor):
    """The SDK's BatchSpanProcessor, counting the spans it is given."""

    ended = 0

    def on_end(self, span: ReadableSpan) -> None:
        self.ended += 1
        super().on_end(span)


class TimedExporter(SpanExporter):
    """The OTLP/HTTP exporter, its calls counted and their CPU time taken (on the
    thread that exports: the processor's)."""

    def __init__(self, exporter: OTLPSpanExporter) -> None:
        self.exporter = exporter
        self.batches = self.spans = self.failed = 0
        self.cpu = 0.0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        started = time.thread_time()
        try:
            result = self.exporter.export(spans)
        finally:
            self.cpu += time.thread_time() - started
        self.batches += 1
        self.spans += len(spans)
        if result is not SpanExportResult.SUCCESS:
            self.failed += len(spans)
        return result

    def shutdown(self) -> None:
        self.exporter.shutdown()  # type: ignore[no-untyped-call]

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.exporter.force_flush(timeout_millis)


async def _agents(url: str) -> tuple[AgentNode, list[AgentNode]]:
    def make(name: str, capability: str) -> AgentNode:
        return AgentNode(Identity.generate(),
                         NodeConfig(name=name, capabilities=capabilities_for("offline",
                                                                             [capability])),
                         OfflineBackend(), BusConfig(servers=(url,), name=name))

    driver = make("driver", "vote")
    workers = [make(f"worker{n}", "echo") for n in range(2)]
    for node in (driver, *workers):
        await node.start()
    await wait_until(lambda: len(driver.auctioneer.known_bidders("echo")) == len(workers),
                     timeout=10)
    return driver, workers


@contextlib.asynccontextmanager
async def _sink(report: dict[str, Any]) -> AsyncIterator[str]:
    """The OTLP/HTTP receiver's endpoint while inside; what it received in ``report``
    once it is stopped (at most 10 s for its answer)."""
    child = await spawn_child(SINK)
    try:
        assert child.stdout is not None and child.stdin is not None
        async with asyncio.timeout(10):
            port = int(await child.stdout.readline())
        yield f"http://127.0.0.1:{port}/v1/traces"
        child.stdin.close()
        async with asyncio.timeout(10):
            report.update(json.loads(await child.stdout.readline()))
    finally:
        await stop_child(child)


async def run(rounds: int, blocks: int, sample: float, export: str) -> dict[str, Any]:
    """One worker process's measurement: its raw samples and counts (:func:`summary`)."""
    provider = TracerProvider(
        sampler=ParentBased(ALWAYS_ON if sample >= 1 else TraceIdRatioBased(sample)),
        resource=Resource.create({"service.name": "bench-tracing"}))
    received: dict[str, Any] = {}
    async with contextlib.AsyncExitStack() as stack:
        processor = exporter = None
        if export == "otlp":
            endpoint = await stack.enter_async_context(_sink(received))
            exporter = TimedExporter(OTLPSpanExporter(endpoint=endpoint, timeout=5))
            processor = CountedProcessor(exporter)
            provider.add_span_processor(processor)
            stack.callback(provider.shutdown)  # its waits bounded: 30 s, 5 s a request
        # With --export none, no span processor: spans are made and dropped.
        base = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        mesh = await Mesh.launch(base / "mesh", seeds=1)
        stack.push_async_callback(mesh.stop, 2.0)
        driver, workers = await _agents(mesh.seeds[0].client_url)
        stack.push_async_callback(stop_all, [driver, *workers])
        raw = await _measure(driver, provider, rounds, blocks, processor)
    if processor is not None and exporter is not None:
        raw["spans"] = {"ended": processor.ended, "exported": exporter.spans,
                        "export_failed": exporter.failed, "received": received.get("spans", 0),
                        "batches": exporter.batches, "export_cpu_s": exporter.cpu}
        raw["sink"] = received
    return raw


async def _measure(driver: AgentNode, provider: TracerProvider, rounds: int,
                   blocks: int, processor: CountedProcessor | None) -> dict[str, Any]:
    async def auction() -> None:
        result = await driver.dispatcher.submit("echo", {"text": "hi"}, timeout=5)
        assert result.status is TaskStatus.COMPLETED

    async def direct() -> None:
        result = await submit_task(driver.bus, Task(capability="echo",
                                                    parameters={"text": "hi"}), timeout=5)
        assert result.status is TaskStatus.COMPLETED

    paths: dict[str, Callable[[], Awaitable[None]]] = {"auction": auction, "direct": direct}
    raw: dict[str, Any] = {"missed": 0}
    for path, op in paths.items():
        # Per mode: the durations (ns), and the CPU seconds of the process and of the
        # loop's thread over how many tasks.
        measured: dict[str, dict[str, Any]] = {
            mode: {"samples": [], "process": 0.0, "loop": 0.0, "tasks": 0} for mode in MODES}
        await time_rounds(op, [], 20)  # warm-up
        before = processor.ended if processor is not None else 0
        for block in range(blocks):
            mode = "on" if block % 4 in (1, 2) else "off"
            if mode == "on":
                tracing.enable(provider)
            process, loop = time.process_time(), time.thread_time()
            try:
                raw["missed"] += await time_rounds(op, measured[mode]["samples"], rounds)
            finally:
                tracing.disable()
                spent = measured[mode]
                spent["process"] += time.process_time() - process
                spent["loop"] += time.thread_time() - loop
                spent["tasks"] += rounds
        raw[path] = measured
        if processor is not None:
            measured["on"]["spans_ended"] = processor.ended - before
    return raw


def _ratio(off: list[int], on: list[int]) -> float:
    below = percentile(off, 50)
    return round(percentile(on, 50) / below, 3) if below else 0.0


def summary(workers: list[dict[str, Any]], rounds: int, blocks: int, sample: float,
            export: str) -> dict[str, Any]:
    """Path by path: each worker's p50 on/off and their median (the target's figure: a
    process that met a burst of load is one of several), and the samples pooled."""
    report: dict[str, Any] = {
        "sample": sample, "export": export, "processes": len(workers),
        "rounds_per_block": rounds, "blocks_per_process": blocks,
        "missed": sum(worker["missed"] for worker in workers)}
    for path in ("auction", "direct"):
        pooled = {mode: [value for worker in workers for value in worker[path][mode]["samples"]]
                  for mode in MODES}
        each = [_ratio(worker[path]["off"]["samples"], worker[path]["on"]["samples"])
                for worker in workers]
        ratio = round(statistics.median(each), 4)
        cpu = {mode: {kind: round(sum(worker[path][mode][kind] for worker in workers)
                                  / max(1, sum(worker[path][mode]["tasks"]
                                               for worker in workers)) * 1e6, 1)
                      for kind in ("process", "loop")}
               for mode in MODES}
        report[path] = {"off": latency(pooled["off"]), "on": latency(pooled["on"]),
                        "p50_ratio": ratio, "p50_ratio_per_process": each,
                        "p50_ratio_pooled": _ratio(pooled["off"], pooled["on"]),
                        "cpu_us_per_task": cpu}
        if export == "none":
            report[path]["within_target"] = ratio <= TARGET
        else:
            tasks_on = sum(worker[path]["on"]["tasks"] for worker in workers)
            ended = sum(worker[path]["on"]["spans_ended"] for worker in workers)
            report[path].update(tasks_on=tasks_on, spans_ended=ended,
                                spans_per_task_on=round(ended / max(1, tasks_on), 3))
    if export != "none":
        spans = {key: sum(worker["spans"][key] for worker in workers)
                 for key in workers[0]["spans"]}
        report["spans"] = {
            **{key: value for key, value in spans.items() if key != "export_cpu_s"},
            "dropped_in_queue": spans["ended"] - spans["exported"],
            "export_cpu_us_per_span": round(spans["export_cpu_s"]
                                            / max(spans["exported"], 1) * 1e6, 2),
            "export_cpu_s": round(spans["export_cpu_s"], 3),
            "sink": [worker["sink"] for worker in workers]}
    return report


def _worker(args: argparse.Namespace) -> dict[str, Any]:
    """One worker process, started and read back with its waits bounded."""
    command = [sys.executable, __file__, "--worker", "--rounds", str(args.rounds),
               "--blocks", str(args.blocks), "--sample", str(args.sample),
               "--export", args.export]
    # A generous bound: a worker takes about 5 s with the defaults.
    done = subprocess.run(command, capture_output=True, text=True, check=False,
                          timeout=120 + args.blocks * args.rounds * 0.05)
    if done.returncode != 0:
        raise RuntimeError(f"a worker process failed (exit {done.returncode}): "
                           f"{done.stderr.strip().splitlines()[-1:]}")
    return cast(dict[str, Any], json.loads(done.stdout))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=25, help="tasks per block (default 25)")
    parser.add_argument("--blocks", type=int, default=40,
                        help="alternating blocks per path in each process, a multiple of 4 "
                             "(default 40: short blocks follow a shared machine's load "
                             "closely)")
    parser.add_argument("--processes", type=int, default=8,
                        help="worker processes, one after another, their samples pooled "
                             "(default 8: a process's layout moves its ratio by 2 to 4 %%)")
    parser.add_argument("--sample", type=float, default=1.0,
                        help="the share of tasks traced while on (default 1: every one)")
    parser.add_argument("--export", choices=("none", "otlp"), default="none",
                        help="none: no span processor (default); otlp: batched to a local "
                             "OTLP/HTTP receiver, the figures information only")
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not 0 <= args.sample <= 1:
        parser.error("--sample is a share of tasks, from 0 to 1")
    if args.blocks < 4 or args.blocks % 4 or args.rounds < 1 or args.processes < 1:
        parser.error("--blocks is a positive multiple of 4; --rounds and --processes at "
                     "least 1")
    if args.worker:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            print(json.dumps(runner.run(run(args.rounds, args.blocks, args.sample,
                                            args.export))))
        return 0
    workers = [_worker(args) for _ in range(args.processes)]
    report = summary(workers, args.rounds, args.blocks, args.sample, args.export)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    if args.export != "none":
        return 0
    return 0 if all(report[path]["within_target"] for path in ("auction", "direct")) else 1


if __name__ == "__main__":
    sys.exit(main())
