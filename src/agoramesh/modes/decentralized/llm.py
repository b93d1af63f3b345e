"""The optional model at the wheel: it picks each command, and the planner overrules a bad one.

With ``llm_config.backend`` set, an agent's model is a backend of
:mod:`agoramesh.nodes.backends` (:func:`open_model`). Asked for each command,
it is told the situation and the planner's choice (:func:`prompt`); the
``Action:`` line of its reply, else the reply's last line, is the command
(:func:`extract_action`). A command whose first word is not among the
simulator's actions (:func:`is_allowed`), or a model that fails, leaves the
planner's command standing.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from agoramesh.modes.decentralized.config import LLMSettings
from agoramesh.modes.decentralized.policy import Plan
from agoramesh.nodes.backends.base import BackendConfig, ChatMessage, collect
from agoramesh.nodes.backends.registry import create_backend
from agoramesh.nodes.task import StreamItem

__all__ = ("ChatModel", "ask", "extract_action", "is_allowed", "open_model", "prompt")

_COMMAND = re.compile(r"[A-Za-z]+")  # a command's first word
_ACTION = re.compile(r"^\s*(?:agent_\w+_)?action\s*[:\uff1a]\s*(.+)$", re.IGNORECASE)
_MAX_ACTION = 200
_SYSTEM = ("You control one robot in a grid world, working with a team. "
           "Reply with exactly one action.")


class ChatModel(Protocol):
    """What an agent asks of its model: a reply to messages, streamed; and to close."""

    def chat(self, messages: Sequence[ChatMessage]) -> AsyncIterator[StreamItem]: ...

    async def aclose(self) -> None: ...


def open_model(settings: LLMSettings, *, max_retries: int) -> ChatModel | None:
    """The backend ``settings`` name (None without one: the planner decides alone)."""
    if settings.backend is None:
        return None
    return create_backend(settings.backend, BackendConfig(
        model=settings.model_name, temperature=settings.temperature,
        api_key=settings.api_key(), base_url=settings.base_url, max_retries=max_retries))


def prompt(*, goal: str, sim_id: str, capabilities: Sequence[str], situation: str,
           queue: Sequence[str], completed: Sequence[str], actions: str, plan: Plan) -> str:
    """What the model is told: the team's goal, who and where it is, its tasks, what is
    known complete, the actions it may send, and the planner's suggestion."""
    note = f" ({plan.note})" if plan.note else ""
    return (f"Team task: {goal}\n\n"
            f"You are {sim_id}; capabilities: {', '.join(capabilities)}.\n"
            f"{situation}\n\nYour allocated tasks: {', '.join(queue) or 'none'}.\n"
            f"Known complete: {', '.join(completed) or 'none'}.\n"
            f"Available actions:\n{actions}\n\nA planner suggests: {plan.command}{note}.\n"
            "Answer with one line: Action: <command>")


async def ask(model: ChatModel, question: str) -> str:
    """The model's reply to ``question`` (its text, the stream drained)."""
    messages: list[ChatMessage] = [{"role": "system", "content": _SYSTEM},
                                   {"role": "user", "content": question}]
    completion = await collect(model.chat(messages))
    return str(completion.output)


def extract_action(reply: str) -> str:
    """The reply's ``Action:`` line, else its last line; trailing full stops dropped."""
    lines = reply.strip().splitlines() or [""]
    action = next((m.group(1) for line in lines if (m := _ACTION.match(line))), lines[-1])
    return action.strip().rstrip(".!\u3002")


def is_allowed(action: str, actions: str) -> bool:
    """Whether ``action``'s first word is a command of ``actions`` (one per line, as
    the simulator lists them) and the action is of a sane length."""
    allowed = {m.group(0).upper() for line in actions.splitlines()
               if (m := _COMMAND.match(line.strip()))}
    word = _COMMAND.match(action)
    return word is not None and word.group(0).upper() in allowed and len(action) <= _MAX_ACTION
