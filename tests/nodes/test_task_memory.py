"""TaskMemory: final results remembered by task id, bounded in number, age and bytes."""

from __future__ import annotations

import time

import pytest

from agoramesh.nodes.task import Task, TaskResult, TaskStatus
from agoramesh.nodes.task_memory import TaskMemory


def done(task: Task, text: str = "ok") -> TaskResult:
    return TaskResult(task_id=task.task_id, status=TaskStatus.COMPLETED, result={"text": text})


def tasks(count: int) -> list[Task]:
    return [Task(capability="echo", parameters={"n": n}) for n in range(count)]


async def test_what_was_answered_is_remembered_at_its_size() -> None:
    memory = TaskMemory(max_bytes=100)
    first, second, third = tasks(3)
    for task in (first, second, third):
        memory.begin(task)
        memory.finish(task, done(task, "x" * 1000))
        memory.weigh(task.task_id, done(task), 40)  # answered smaller (say, a failure)
    assert memory.held_bytes == 80  # the oldest went: 120 bytes would be over 100
    assert memory.recall(first) is None
    for task in (second, third):
        known = memory.recall(task)
        assert known is not None and known.done == done(task)  # what was answered
    assert memory.holds(third) == "done" and memory.holds(first) == ""


async def test_a_result_heavier_than_the_budget_is_not_kept() -> None:
    memory = TaskMemory(max_bytes=100)
    (task,) = tasks(1)
    memory.finish(task, done(task))
    memory.weigh(task.task_id, done(task), 101)
    assert memory.recall(task) is None and memory.held_bytes == 0 and len(memory) == 0


async def test_weighing_what_is_not_remembered_changes_nothing() -> None:
    memory = TaskMemory(max_bytes=100)
    first, second = tasks(2)
    memory.weigh(first.task_id, done(first), 50)  # never finished here
    memory.finish(second, done(second))
    memory.weigh(second.task_id, TaskResult(task_id=second.task_id,
                                            status=TaskStatus.RUNNING), 60)  # not final
    assert memory.held_bytes == 0 and memory.recall(first) is None
    known = memory.recall(second)
    assert known is not None and known.done == done(second)


async def test_a_result_finished_again_is_weighed_once() -> None:
    memory = TaskMemory(max_bytes=100)
    (task,) = tasks(1)
    for _ in range(3):
        memory.finish(task, done(task))
        memory.weigh(task.task_id, done(task), 30)
    assert memory.held_bytes == 30 and len(memory) == 1


async def test_the_count_and_the_age_still_bound_it(monkeypatch: pytest.MonkeyPatch) -> None:
    memory = TaskMemory(size=2, ttl=10.0)
    first, second, third = tasks(3)
    for task in (first, second, third):
        memory.finish(task, done(task))
        memory.weigh(task.task_id, done(task), 10)
    assert memory.recall(first) is None and memory.held_bytes == 20
    later = time.monotonic() + 11
    monkeypatch.setattr(time, "monotonic", lambda: later)
    assert memory.recall(second) is None and memory.recall(third) is None
    assert memory.held_bytes == 0
