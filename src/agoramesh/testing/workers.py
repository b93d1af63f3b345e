"""A backend for tests of task routing: it sleeps as asked, then says who did the work."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from typing import Any

from agoramesh.nodes.backends.base import Backend, ChatMessage
from agoramesh.nodes.capability import Capability
from agoramesh.nodes.task import Completion, StreamItem, Task

__all__ = ("WORK", "Worker")

#: A capability whose work takes ``seconds`` (so something can land mid-task).
WORK = Capability(name="work.do", input_schema={
    "type": "object", "properties": {"seconds": {"type": "number"}, "n": {"type": "integer"}}})


class Worker(Backend):
    """Sleeps for ``seconds``, then reports who did task ``n``; records every start."""

    type = "worker"

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.started: list[str] = []

    async def execute(self, task: Task, context: dict[str, Any] | None = None
                      ) -> AsyncGenerator[StreamItem, None]:
        self.started.append(task.task_id)
        await asyncio.sleep(float(task.parameters.get("seconds", 0)))
        yield Completion(output={"by": self.name, "n": task.parameters.get("n")})

    async def chat(self, messages: Sequence[ChatMessage]) -> AsyncGenerator[StreamItem, None]:
        yield Completion(output=f"{self.name} only works")
