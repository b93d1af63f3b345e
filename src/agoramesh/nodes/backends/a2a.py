"""A remote A2A agent as a backend: ``agoramesh node --type a2a --a2a-url URL``.

:meth:`A2ABackend.connect` fetches the agent's card (``<url>/.well-known/agent-card.json``,
or ``url`` itself when it names a ``.json`` file) and turns each of its skills into a
capability: the skill id made a valid capability name (:func:`capability_name`), its
description kept, and its input schema when the card carries one (an agoramesh A2A
bridge's card does, under the :data:`INPUT_SCHEMAS` extension; any other skill takes
any object). A card without skills needs the capabilities named (``--capability``);
its tasks are then sent without naming a skill.

A task becomes one A2A message sent with a2a-sdk's client (``message/send``, or its
streaming form when the card says the agent streams, whose text artifact chunks
become :class:`Chunk` items). The message names the skill in its metadata
(``{"skill": id}``, what the agoramesh bridge reads) and carries the parameters as
one text part when they are a single ``text``/``prompt`` string, else as one data
part (as text rendered by :func:`task_prompt` when the agent takes no JSON). The
task's output is the answer's data (one data part: its value; several: their list)
or its text (``{"text": ...}``). A task the agent ends FAILED, REJECTED or CANCELED,
or leaves waiting for input, is a :class:`BackendError` with the agent's message,
so the mesh task is FAILED with it. A mesh task cancelled while the agent works
is cancelled there too (best effort, bounded). The bearer token for an agent whose
card requires one is ``--api-key`` (or ``$AGORAMESH_A2A_TOKEN``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx
from a2a.client import A2ACardResolver, A2AClientError, Client, ClientConfig, ClientFactory
from a2a.types import (
    AgentCard,
    CancelTaskRequest,
    Message,
    Part,
    Role,
    SendMessageRequest,
    StreamResponse,
    Task,
    TaskState,
)
from a2a.utils.errors import A2AError
from google.protobuf import json_format, struct_pb2

from agoramesh.bus.subjects import MAX_CAPABILITY_LENGTH
from agoramesh.errors import (
    BackendBadResponse,
    BackendError,
    BackendUnavailable,
    ConfigError,
)
from agoramesh.nodes.backends.base import Backend, BackendConfig, ChatMessage, task_prompt
from agoramesh.nodes.capability import ANY_OBJECT, Capability
from agoramesh.nodes.task import Chunk, Completion, StreamItem
from agoramesh.nodes.task import Task as MeshTask

__all__ = ("INPUT_SCHEMAS", "SKILL_KEY", "A2ABackend", "capability_name", "output_of",
           "to_python", "to_value")

#: The card extension under which an agoramesh bridge gives each skill's input schema
#: (``params``: skill id → JSON schema).
INPUT_SCHEMAS = "urn:agoramesh:a2a:input-schemas"
#: The message metadata key naming the skill a message is for.
SKILL_KEY = "skill"

_NOT_NAME = re.compile(r"[^A-Za-z0-9_-]+")
_CANCEL_WAIT = 2.0
_ENDED = {TaskState.TASK_STATE_FAILED: "failed", TaskState.TASK_STATE_REJECTED: "rejected",
          TaskState.TASK_STATE_CANCELED: "cancelled",
          TaskState.TASK_STATE_INPUT_REQUIRED: "asks for input (not supported)",
          TaskState.TASK_STATE_AUTH_REQUIRED: "asks for authorization (not supported)"}
_TEXT_KEYS = ("text", "prompt")


def to_python(value: struct_pb2.Value | struct_pb2.Struct) -> Any:
    """A protobuf JSON value as plain Python, whole numbers as ``int``.

    Protobuf carries every JSON number as a double; a schema asking for an
    integer, or code doing ``range(n)``, wants ``3`` rather than ``3.0``.
    """
    return _whole(json_format.MessageToDict(value))


def _whole(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) <= 2**53:
        return int(value)
    if isinstance(value, dict):
        return {key: _whole(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_whole(item) for item in value]
    return value


def to_value(value: Any) -> struct_pb2.Value:
    """Plain Python as a protobuf JSON value (what a data part holds); what JSON cannot
    hold (bytes, say) as its ``str``."""
    try:
        return json_format.ParseDict(value, struct_pb2.Value())
    except json_format.ParseError:
        return json_format.ParseDict(json.loads(json.dumps(value, default=str)),
                                     struct_pb2.Value())


def output_of(parts: Iterable[Part]) -> Any:
    """What parts say, as a task's output: one data part's value, several data parts'
    values as a list, else the text parts joined as ``{"text": ...}``."""
    data, text = [], []
    for part in parts:
        kind = part.WhichOneof("content")
        if kind == "data":
            data.append(to_python(part.data))
        elif kind == "text":
            text.append(part.text)
    if data:
        return data[0] if len(data) == 1 else data
    return {"text": "\n".join(text)}


def capability_name(skill_id: str, taken: Iterable[str] = ()) -> str:
    """``skill_id`` as a capability name not in ``taken``: dotted tokens of letters,
    digits, ``_`` and ``-`` (other runs of characters become one ``-``)."""
    tokens = [_NOT_NAME.sub("-", token).strip("-") for token in skill_id.split(".")]
    base = ".".join(token for token in tokens if token)[:MAX_CAPABILITY_LENGTH - 4] or "skill"
    name, number, used = base, 1, set(taken)
    while name in used:
        number += 1
        name = f"{base}-{number}"
    return name


def _card_location(url: str) -> tuple[str, str | None]:
    """(base URL, card path or None for the well-known one) of an ``--a2a-url``."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"--a2a-url must be an http(s) URL, got {url!r}")
    if parts.path.endswith(".json"):
        return f"{parts.scheme}://{parts.netloc}", parts.path
    return url.rstrip("/"), None


class A2ABackend(Backend):
    """One remote A2A agent (``type = "a2a"``); ``config.base_url`` is its URL,
    ``config.api_key`` its bearer token, ``config.timeout`` bounds each request."""

    type = "a2a"

    def __init__(self, config: BackendConfig | None = None) -> None:
        super().__init__(config)
        self._http: httpx.AsyncClient | None = None
        self._client: Client | None = None
        self.card: AgentCard | None = None
        #: capability name → the skill id it sends ("" when the card has no skills).
        self.skills: dict[str, str] = {}

    async def offered(self, names: Sequence[str] = ()) -> tuple[Capability, ...]:
        """Fetch the card and return the capabilities it offers (``names``: only
        these; a card without skills offers exactly ``names``). ConfigError when the
        card cannot be had or offers nothing usable."""
        if not self.config.base_url:
            raise ConfigError("--type a2a needs --a2a-url: the A2A agent's URL")
        base, path = _card_location(self.config.base_url)
        await self.aclose()  # a second call starts afresh
        headers = {"Authorization": f"Bearer {self.config.api_key}"} if self.config.api_key else {}
        http = httpx.AsyncClient(timeout=self.config.timeout, headers=headers)
        try:
            card = await A2ACardResolver(http, base).get_agent_card(relative_card_path=path)
            self._client = ClientFactory(ClientConfig(httpx_client=http, streaming=True)
                                         ).create(card)
        except (A2AError, ValueError) as exc:
            await http.aclose()
            raise ConfigError(f"no usable A2A agent card at {self.config.base_url}: "
                              f"{' '.join(str(exc).split())[:300]}") from None
        self._http, self.card = http, card
        capabilities = self._capabilities(card, names)
        self.skills = {cap.name: skill for cap, skill in capabilities}
        return tuple(cap for cap, _ in capabilities)

    @staticmethod
    def _capabilities(card: AgentCard, names: Sequence[str]) -> list[tuple[Capability, str]]:
        if not card.skills:
            if not names:
                raise ConfigError(f"the A2A agent {card.name!r} declares no skills: name the "
                                  f"capabilities to offer with --capability")
            return [(Capability(name=name, description=card.description), "") for name in names]
        schemas: dict[str, Any] = {}
        for extension in card.capabilities.extensions:
            if extension.uri == INPUT_SCHEMAS:
                schemas = to_python(extension.params)
        offered: list[tuple[Capability, str]] = []
        for skill in card.skills:
            name = capability_name(skill.id, (cap.name for cap, _ in offered))
            capability = Capability(name=name, description=skill.description or skill.name,
                                    input_schema=schemas.get(skill.id) or dict(ANY_OBJECT))
            try:
                capability.check()
            except ConfigError:  # the remote's schema is not ours to fix: take any object
                capability = Capability(name=name, description=capability.description)
            offered.append((capability, skill.id))
        if names:
            unknown = sorted(set(names) - {cap.name for cap, _ in offered})
            if unknown:
                raise ConfigError(f"the A2A agent {card.name!r} offers "
                                  f"{', '.join(cap.name for cap, _ in offered)}; "
                                  f"not {', '.join(unknown)}")
            offered = [(cap, skill) for cap, skill in offered if cap.name in names]
        return offered

    async def execute(self, task: MeshTask, context: dict[str, Any] | None = None
                      ) -> AsyncGenerator[StreamItem, None]:
        skill = self.skills.get(task.capability)
        if skill is None:
            raise BackendError(f"this A2A agent has no skill for {task.capability}")
        async with contextlib.aclosing(self._send(self._message(task, skill))) as stream:
            async for item in stream:
                yield item

    async def chat(self, messages: Sequence[ChatMessage]) -> AsyncIterator[StreamItem]:
        text = "\n\n".join(message["content"] for message in messages)
        only = next(iter(self.skills.values())) if len(self.skills) == 1 else ""
        message = self._new_message([Part(text=text)], only)
        async with contextlib.aclosing(self._send(message)) as stream:
            async for item in stream:
                if isinstance(item, Completion):
                    output = item.output
                    said = output.get("text") if isinstance(output, dict) else None
                    yield Completion(output=said if isinstance(said, str) else str(output))
                else:
                    yield item

    def _message(self, task: MeshTask, skill: str) -> Message:
        params = task.parameters
        if len(params) == 1 and isinstance(params.get(next(iter(params))), str) and (
                next(iter(params)) in _TEXT_KEYS):
            part = Part(text=str(next(iter(params.values()))))
        elif self._takes_json(skill):
            part = Part(data=to_value(params))
        else:
            part = Part(text=task_prompt(task))
        return self._new_message([part], skill)

    def _takes_json(self, skill: str) -> bool:
        card = self.card
        if card is None:
            return True
        modes = next((list(s.input_modes) for s in card.skills if s.id == skill and s.input_modes),
                     list(card.default_input_modes))
        return not modes or any("json" in mode or mode == "data" for mode in modes)

    @staticmethod
    def _new_message(parts: list[Part], skill: str) -> Message:
        return Message(role=Role.ROLE_USER, message_id=uuid.uuid4().hex, parts=parts,
                       metadata={SKILL_KEY: skill} if skill else None)

    async def _send(self, message: Message) -> AsyncGenerator[StreamItem, None]:
        client = self._client
        if client is None:
            raise BackendUnavailable("the A2A agent's card was not fetched: offered() first")
        run = _Run()
        events = client.send_message(SendMessageRequest(message=message))
        try:
            try:
                async for event in events:
                    for text in run.take(event):
                        yield Chunk(text)
            finally:  # a cancelled task must not leave the agent's stream (a connection) open
                close = getattr(events, "aclose", None)
                if close is not None:
                    await close()
        except A2AError as exc:
            raise _backend_error(exc) from None
        except BaseException:
            if run.task_id and not run.ended:
                await asyncio.shield(self._cancel(client, run.task_id))
            raise
        yield Completion(output=run.output(), model=self.card.name if self.card else None)

    async def _cancel(self, client: Client, task_id: str) -> None:
        with contextlib.suppress(A2AError, TimeoutError):
            async with asyncio.timeout(_CANCEL_WAIT):
                await client.cancel_task(CancelTaskRequest(id=task_id))

    async def aclose(self) -> None:
        client, http = self._client, self._http
        self._client = self._http = None
        if client is not None:
            await client.close()
        if http is not None:
            await http.aclose()


class _Run:
    """What one send has seen: its task, text chunks streamed, artifacts, the end."""

    def __init__(self) -> None:
        self.task_id = ""
        self.state = TaskState.TASK_STATE_UNSPECIFIED
        self.status: list[Part] = []
        self.artifacts: dict[str, list[Part]] = {}
        self.reply: list[Part] | None = None
        self.ended = False

    def take(self, event: StreamResponse) -> list[str]:
        """Record ``event``; the text it streams (artifact chunks) to pass on."""
        kind = event.WhichOneof("payload")
        if kind == "message":
            self.reply, self.ended = list(event.message.parts), True
        elif kind == "task":
            self._task(event.task)
        elif kind == "status_update":
            self.task_id = event.status_update.task_id or self.task_id
            self._status(event.status_update.status.state, event.status_update.status.message)
        elif kind == "artifact_update":
            update = event.artifact_update
            self.task_id = update.task_id or self.task_id
            parts = self.artifacts.setdefault(update.artifact.artifact_id, [])
            if not update.append:
                parts.clear()
            parts.extend(update.artifact.parts)
            return [part.text for part in update.artifact.parts if part.WhichOneof("content")
                    == "text" and part.text]
        return []

    def _task(self, task: Task) -> None:
        self.task_id = task.id
        for artifact in task.artifacts:
            self.artifacts[artifact.artifact_id] = list(artifact.parts)
        self._status(task.status.state, task.status.message)

    def _status(self, state: TaskState, message: Message) -> None:
        self.state = state
        self.status = list(message.parts)
        self.ended = state in _ENDED or state == TaskState.TASK_STATE_COMPLETED

    def output(self) -> Any:
        """The answer's output; BackendError unless the agent completed the task."""
        if self.reply is not None:
            return output_of(self.reply)
        if self.state in _ENDED:
            said = " ".join(part.text for part in self.status if part.text)
            why = f": {said}" if said else ""
            raise BackendError(f"the A2A agent {_ENDED[self.state]} the task{why}")
        if self.state != TaskState.TASK_STATE_COMPLETED:
            raise BackendBadResponse(f"the A2A agent's answer ended in state "
                                     f"{TaskState.Name(self.state)}, not a completed task")
        produced = [part for parts in self.artifacts.values() for part in parts]
        return output_of(produced or self.status)  # some agents answer in the final status


def _backend_error(exc: A2AError) -> BackendError:
    text = " ".join(str(exc).split())[:500] or type(exc).__name__
    if isinstance(exc, A2AClientError):  # HTTP, network, timeout: the agent's side is unknown
        return BackendUnavailable(f"the A2A agent did not answer: {text}")
    return BackendError(f"the A2A agent refused the task ({type(exc).__name__}): {text}")
