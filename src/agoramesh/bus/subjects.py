"""Subject builders and validators (docs/PROTOCOL.md §10, "Subjects").

Every subject agoramesh uses is built here, under a configurable prefix
(``agora`` by default). Capability names are dotted (``code.review.python``)
so NATS wildcards select families of capabilities (``code.review.*``,
``code.>``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from agoramesh.bus.identity import is_agent_id
from agoramesh.config import DEFAULT_PREFIX
from agoramesh.errors import SubjectError

__all__ = (
    "MAX_CAPABILITY_LENGTH",
    "MAX_SUBJECT_LENGTH",
    "Subjects",
    "tokens_match",
    "validate_capability",
    "validate_capability_pattern",
    "validate_subject",
)

MAX_SUBJECT_LENGTH = 512
MAX_CAPABILITY_LENGTH = 128
_TOKEN = r"[A-Za-z0-9_-]+"
_CAPABILITY = re.compile(rf"{_TOKEN}(?:\.{_TOKEN}){{0,15}}")
_PATTERN_TOKEN = re.compile(rf"{_TOKEN}|\*")
# Tokens of printable ASCII minus space and '.'; '*' and '>' are wildcards, not publishable.
_SUBJECT = re.compile(r"[!-)+-\-/-=?-~]+(?:\.[!-)+-\-/-=?-~]+)*")


def validate_subject(subject: object) -> str:
    """A concrete (publishable) NATS subject, or SubjectError."""
    if not isinstance(subject, str):
        raise SubjectError(f"subject must be a string, got {type(subject).__name__}")
    if len(subject) > MAX_SUBJECT_LENGTH or not _SUBJECT.fullmatch(subject):
        raise SubjectError(f"invalid subject {subject[:80]!r}: dot-separated, non-empty "
                           f"tokens of printable ASCII, no spaces or wildcards")
    return subject


def validate_capability(name: object) -> str:
    """A capability name: dot-separated tokens of letters, digits, '_' and '-'."""
    if not isinstance(name, str):
        raise SubjectError(f"capability must be a string, got {type(name).__name__}")
    if len(name) > MAX_CAPABILITY_LENGTH or not _CAPABILITY.fullmatch(name):
        raise SubjectError(
            f"invalid capability {name[:80]!r}: use dot-separated tokens of letters, "
            f"digits, '_' and '-' (e.g. code.review.python), at most 16 levels"
        )
    return name


def validate_capability_pattern(pattern: object) -> str:
    """A capability or a wildcard pattern over capabilities (``code.*``, ``code.>``)."""
    if not isinstance(pattern, str) or not pattern or len(pattern) > MAX_CAPABILITY_LENGTH:
        raise SubjectError(f"invalid capability pattern {pattern!r}")
    tokens = pattern.split(".")
    if len(tokens) > 16:
        raise SubjectError(f"invalid capability pattern {pattern[:80]!r}: at most 16 levels")
    for index, token in enumerate(tokens):
        if token == ">" and index == len(tokens) - 1:
            continue
        if not _PATTERN_TOKEN.fullmatch(token):
            raise SubjectError(
                f"invalid capability pattern {pattern[:80]!r}: tokens are names, '*', "
                f"or a final '>'"
            )
    return pattern


_TASK_TOKEN = re.compile(r"[A-Za-z0-9_=-]{1,128}|>")


def _task_token(task_id: str) -> str:
    if not isinstance(task_id, str) or not _TASK_TOKEN.fullmatch(task_id):
        raise SubjectError(f"invalid durable task id {str(task_id)[:60]!r}: 1-128 letters, "
                           f"digits, '_', '=' or '-'")
    return task_id


def _agent(agent_id: str) -> str:
    if not is_agent_id(agent_id):
        raise SubjectError(f"invalid agent id {agent_id[:60]!r}: expected a 56-character "
                           f"nkey user public key starting with 'U'")
    return agent_id


@dataclass(frozen=True, slots=True)
class Subjects:
    """The subject space of one mesh, under ``prefix``."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        validate_capability(self.prefix)

    def cap(self, capability: str) -> str:
        """Direct task to one capable agent (queue group)."""
        return f"{self.prefix}.cap.{validate_capability_pattern(capability)}"

    def task(self, capability: str) -> str:
        """A task any node auctions on the client's behalf (queue group)."""
        return f"{self.prefix}.task.{validate_capability_pattern(capability)}"

    def cfp(self, capability: str) -> str:
        """Call for proposals: every capable agent hears it."""
        return f"{self.prefix}.cfp.{validate_capability_pattern(capability)}"

    def agent(self, agent_id: str) -> str:
        """An agent's direct inbox."""
        return f"{self.prefix}.agent.{_agent(agent_id)}"

    def presence(self, agent_id: str) -> str:
        return f"{self.prefix}.presence.{_agent(agent_id)}"

    @property
    def presence_all(self) -> str:
        return f"{self.prefix}.presence.>"

    @property
    def discover(self) -> str:
        return f"{self.prefix}.discover"

    def status(self, agent_id: str) -> str:
        return f"{self.prefix}.status.{_agent(agent_id)}"

    def help(self, capability: str) -> str:
        return f"{self.prefix}.help.{validate_capability_pattern(capability)}"

    def team(self, team: str, kind: str = ">") -> str:
        """A decentralized-mode team's broadcasts (``kind``: a message type, or ``>``)."""
        return f"{self.prefix}.team.{validate_capability(team)}.{kind}"

    def telemetry(self, agent_id: str) -> str:
        """An agent's counters and recent events, once a heartbeat (``agoramesh watch``)."""
        return f"{self.prefix}.telemetry.{_agent(agent_id)}"

    @property
    def telemetry_all(self) -> str:
        return f"{self.prefix}.telemetry.>"

    def jobs(self, capability: str) -> str:
        """A durable job (stored by JetStream, taken by any node; PROTOCOL.md §21)."""
        return f"{self.prefix}.jobs.{validate_capability_pattern(capability)}"

    def result(self, task_id: str) -> str:
        """Where a durable job's result is published as it is stored (``>``: all of them)."""
        return f"{self.prefix}.result.{_task_token(task_id)}"

    def cancel(self, task_id: str) -> str:
        """Asks the node driving a durable job to cancel it (``>``: all of them)."""
        return f"{self.prefix}.cancel.{_task_token(task_id)}"

    def capability_of(self, subject: str) -> str | None:
        """The capability in a ``cap``/``task``/``cfp``/``help``/``jobs`` subject, else None."""
        head = self.prefix + "."
        if not subject.startswith(head):
            return None
        kind, _, capability = subject[len(head):].partition(".")
        if kind not in ("cap", "task", "cfp", "help", "jobs") or not capability:
            return None
        return capability


def tokens_match(wanted: Sequence[str], have: Sequence[str]) -> bool:
    """Subject-style matching (``*`` one token, ``>`` the rest) of a pattern and a name,
    both already split into tokens (hot paths: capabilities, access rules)."""
    for index, token in enumerate(wanted):
        if token == ">":
            return len(have) > index
        if index >= len(have) or (token != "*" and token != have[index]):
            return False
    return len(wanted) == len(have)
