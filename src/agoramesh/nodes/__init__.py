"""Agent nodes: tasks, capabilities, backends, presence and the node runtime."""

from agoramesh.nodes.task import Chunk, Completion, Task, TaskResult, TaskStatus, Usage

__all__ = ("Chunk", "Completion", "Task", "TaskResult", "TaskStatus", "Usage")
