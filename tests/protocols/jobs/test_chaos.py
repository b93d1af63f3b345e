"""Durable jobs under faults, on a mesh of real processes (agoramesh.testing.chaos).

Each run is 300 jobs (``AGORAMESH_CHAOS_SCALE`` multiplies it: ``make chaos``
runs 10x), 3 command workers that log every execution, 2 driver nodes that
run the auctions, 3 seeds. What is counted: results lost, results delivered
twice, and executions per task id; the figures go to the test's output.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from agoramesh.testing.chaos import ChaosReport, ChaosSettings, Fault, run_chaos

pytestmark = [pytest.mark.e2e, pytest.mark.chaos, pytest.mark.timeout(300)]

SCALE = max(1, int(os.environ.get("AGORAMESH_CHAOS_SCALE", "1") or 1))


def settings() -> ChaosSettings:
    return ChaosSettings(tasks=300 * SCALE, rate=40.0 * min(SCALE, 4))


def spread(faults: list[Fault]) -> list[Fault]:
    """The faults of a 300-task run, repeated every 7 s over a longer (``make chaos``) run."""
    length = settings().tasks / settings().rate
    cycles = max(1, int(length // 7.0))
    return [replace(fault, at=fault.at + cycle * 7.0) for cycle in range(cycles)
            for fault in faults if cycle == 0 or fault.target != "seed"]


def show(report: ChaosReport) -> None:
    print(f"\nchaos: {report.summary()}")  # the figures, in the test output
    if report.lost or report.second_results or report.unexplained:
        for task_id in [*report.lost, *report.second_results, *report.unexplained][:10]:
            print(f"--- {task_id}: {report.story(task_id)}")
        for name, tail in report.stderr.items():
            print(f"--- {name} stderr (tail)\n{tail}")


def per_thousand(report: ChaosReport, kills: int) -> float:
    """Re-executions per 1,000 tasks per worker kill."""
    extra = sum(report.reexecuted.values())
    return 1000 * extra / len(report.submitted) / max(1, kills)


@pytest.mark.slow
async def test_kills_lose_nothing_and_deliver_each_result_once(tmp_path: Path) -> None:
    """Workers, drivers (auctioneers) and a seed SIGKILLed mid-run; killed ones restart."""
    faults = spread([
        Fault(at=1.5, action="kill", target="worker", index=0),
        Fault(at=2.5, action="kill", target="driver", index=0),
        Fault(at=3.5, action="kill", target="seed", index=2),
        Fault(at=4.5, action="kill", target="worker", index=1),
        Fault(at=5.5, action="kill", target="driver", index=1),
    ])
    report = await run_chaos(tmp_path, settings(), faults)
    show(report)
    worker_kills = sum(1 for fault in faults if fault.target == "worker")
    print(f"chaos: re-executions per 1,000 tasks per worker kill: "
          f"{per_thousand(report, worker_kills):.1f}")
    assert report.lost == [], report.summary()
    assert report.second_results == {}, report.summary()
    assert report.failed == {}, report.failed
    assert all(report.executions[task_id] >= 1 for task_id in report.submitted)
    # A task runs twice only where the worker running it was killed mid-task.
    assert report.unexplained == {}, report.summary()


@pytest.mark.slow
async def test_freezes_lose_nothing_and_rerun_nothing_for_a_late_result(
        tmp_path: Path) -> None:
    """SIGSTOP/SIGCONT of drivers past ack_wait (their jobs go to the other driver) and of
    workers within their lease: the frozen ones' buffered answers are read, a paused
    driver leaves its job to the node it went to, a late result is taken. No task is lost
    or delivered twice; a task runs twice only where a worker froze before it accepted
    (its award timed out: that is the award's timeout at work, not a result thrown away)."""
    faults = spread([
        Fault(at=1.0, action="freeze", target="driver", index=0, duration=5.0),
        Fault(at=2.0, action="freeze", target="worker", index=0, duration=2.0),
        Fault(at=4.0, action="freeze", target="driver", index=1, duration=2.0),
        Fault(at=5.0, action="freeze", target="worker", index=1, duration=2.0),
    ])
    report = await run_chaos(tmp_path, settings(), faults)
    show(report)
    assert report.lost == [], report.summary()
    assert report.second_results == {}, report.summary()
    assert report.failed == {}, report.failed
    assert report.unexplained == {}, report.summary()


async def test_a_winner_frozen_past_its_lease_is_replaced_and_its_late_result_kept(
        tmp_path: Path) -> None:
    """A worker frozen for longer than its lease (3 x 1 s) loses its tasks to others: they
    run again (counted, explained by the freeze), but each result is stored and delivered
    once, and a late COMPLETED result is taken instead of thrown away."""
    faults = [Fault(at=2.0, action="freeze", target="worker", index=0, duration=5.0)]
    report = await run_chaos(tmp_path, ChaosSettings(tasks=120, rate=40.0,
                                                     seconds=(0.5, 1.5)), faults)
    show(report)
    assert report.lost == [], report.summary()
    assert report.second_results == {}, report.summary()
    assert report.failed == {}, report.failed
    assert report.unexplained == {}, report.summary()


async def test_a_lone_worker_awarded_directly_survives_its_kill_and_a_long_freeze(
        tmp_path: Path) -> None:
    """One worker: every auction the drivers run starts with a direct award (the one agent
    they know, PROTOCOL.md §16), so this is that path under faults. Killed and started
    again, then frozen past its lease: direct awards go unanswered, the cfps that follow
    meet silence, jobs wait for it (back to the stream) and a re-delivered job it still
    holds is answered from its run. Nothing lost, nothing delivered twice; a task runs
    twice only where the kill or the freeze explains it."""
    faults = [Fault(at=1.5, action="kill", target="worker", index=0, duration=0.5),
              Fault(at=3.5, action="freeze", target="worker", index=0, duration=4.0)]
    report = await run_chaos(tmp_path, ChaosSettings(tasks=150 * SCALE, rate=40.0, workers=1,
                                                     worker_slots=8), faults)
    show(report)
    assert report.lost == [], report.summary()
    assert report.second_results == {}, report.summary()
    assert report.failed == {}, report.failed
    assert report.unexplained == {}, report.summary()
    assert sum(report.executions.values()) >= len(report.submitted)
