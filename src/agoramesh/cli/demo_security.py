"""The last step of ``agoramesh demo``: a secured mesh of its own, and what it refuses.

One seed in operator mode, built as ``agoramesh up --secure`` builds its
servers (a :class:`~agoramesh.security.trust.TrustStore` and
``local_mesh(auth=store.server_auth())``), four members admitted with a role
each, and a stranger. Every line the step prints is what a server or a bus
did, measured as it happened: the stranger refused at connect, a client's
request answered by an agent, subscriptions a member's JWT does not allow
refused by the server, an observer that may read every subject capturing a
direct task and its result as ``{"$box": …}`` while the recipient reads the
plaintext, and a revoked member cut off and kept out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agoramesh.agent import AgentNode
from agoramesh.bus.bus import Bus
from agoramesh.bus.connection import refusal
from agoramesh.bus.credentials import connect_options
from agoramesh.bus.envelope import BOX_KEY, is_boxed, looks_like_envelope, parse
from agoramesh.bus.identity import Identity
from agoramesh.bus.message import Message
from agoramesh.bus.server import EmbeddedServer
from agoramesh.cli.demo_steps import retry
from agoramesh.cli.up import local_mesh
from agoramesh.config import BusConfig, Environment
from agoramesh.errors import AgoraError, BusTimeout, PermissionDenied
from agoramesh.nodes.backends.offline import OfflineBackend
from agoramesh.nodes.catalog import capabilities_for
from agoramesh.nodes.client import submit_task
from agoramesh.nodes.node import NodeConfig
from agoramesh.nodes.task import Task, TaskResult
from agoramesh.security.trust import MemberRole, TrustStore

if TYPE_CHECKING:
    from agoramesh.cli.demo import Report

__all__ = ("SECRET", "secured_mesh")

#: What the client sends the worker directly: the observer must not see it.
SECRET = "the vault code is 4711"
WAIT = 2.0  # seconds: the bound of each wait in this step
_AGENT_ID = re.compile(r"\b[Uu][A-Za-z2-7]{55}\b")


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000


def _short(text: str) -> str:
    """``text`` with each agent id cut to 12 characters (the server lowercases subjects)."""
    return _AGENT_ID.sub(lambda found: found.group()[:12] + "…", text)


def _echoed(result: TaskResult) -> Any:
    """The text an echo task sent back."""
    output = result.result if isinstance(result.result, dict) else {}
    echoed = output.get("echo")
    return echoed.get("text") if isinstance(echoed, dict) else None


@contextlib.asynccontextmanager
async def _within(what: str, seconds: float = WAIT) -> AsyncIterator[None]:
    """A bounded wait whose timeout says what did not happen."""
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError as exc:
        if isinstance(exc, AgoraError):
            raise
        raise BusTimeout(f"demo: {what} within {seconds:g} s") from None


async def _refusal(url: str, options: dict[str, Any]) -> str:
    """Connect once, as the ``nats`` CLI does; the server's reason to refuse.

    AgoraError if the server lets the connection in.
    """
    refused = await refusal(url, options, timeout=WAIT)
    if refused is None:
        raise AgoraError(f"demo: the secured seed admitted a connection it should refuse ({url})")
    return refused


async def _ignore(_: Message) -> None:
    """Nobody asks mallory anything: its subscription is held, not read."""


@contextlib.contextmanager
def _quiet_denials() -> Iterator[None]:
    """The step prints each refusal itself: drop the Bus's warning that repeats it."""
    def keep(record: logging.LogRecord) -> bool:
        return "permissions violation" not in record.getMessage().lower()

    bus_log = logging.getLogger("agoramesh.bus")
    bus_log.addFilter(keep)
    try:
        yield
    finally:
        bus_log.removeFilter(keep)


class _Members:
    """Admits fresh identities to ``store`` and connects them to ``url``; all closed on exit."""

    def __init__(self, store: TrustStore, url: str, env: Environment) -> None:
        self.store, self.url, self.env = store, url, env
        self.buses: list[Bus] = []
        self.agents: list[AgentNode] = []

    def _config(self, name: str, identity: Identity, role: MemberRole,
                capabilities: tuple[str, ...]) -> BusConfig:
        token = self.store.admit(identity.agent_id, capabilities=capabilities, role=role,
                                 name=name).jwt
        return BusConfig(servers=(self.url,), name=name, prefix=self.env.prefix,
                         user_jwt=token, connect_timeout=WAIT, envelope=self.env.envelope)

    async def bus(self, name: str, role: MemberRole, capabilities: tuple[str, ...] = ()) -> Bus:
        identity = Identity.generate()
        bus = await Bus.connect(identity, self._config(name, identity, role, capabilities))
        self.buses.append(bus)
        return bus

    async def agent(self, name: str, capability: str) -> AgentNode:
        """An offline agent serving ``capability``, admitted for exactly that."""
        identity = Identity.generate()
        config = NodeConfig(name=name, type="offline",
                            capabilities=capabilities_for("offline", [capability]))
        agent = AgentNode(identity, config, OfflineBackend(),
                          self._config(name, identity, MemberRole.AGENT, (capability,)))
        self.agents.append(agent)
        await agent.start()
        return agent

    async def __aenter__(self) -> _Members:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await asyncio.gather(*(agent.stop(grace=1.0) for agent in self.agents),
                             *(bus.close(timeout=0.5) for bus in self.buses))


async def secured_mesh(report: Report, env: Environment, workdir: Path) -> list[int]:
    """The step, in ``workdir``; returns the pid of its seed, stopped by then."""
    started = time.perf_counter()
    store = TrustStore.init(workdir / "trust", prefix=env.prefix)
    async with local_mesh(env, seeds=1, leaves=0, data_dir=workdir / "mesh",
                          auth=store.server_auth()) as mesh:
        seed = mesh.seeds[0]
        pids = [seed.pid] if seed.pid is not None else []
        report.data["pids"]["secured"] = pids
        report.detail(f"seed  {seed.config.name:6}  pid {seed.pid:<7} {seed.client_url}  in "
                      f"operator mode: admits only members of a new trust store "
                      f"(up in {_ms(started):.0f} ms)")
        asked = time.perf_counter()
        facts: dict[str, Any] = {"stranger": await _refusal(seed.client_url, {})}
        report.data["security"] = facts
        report.detail(f"stranger (no credentials) connects: refused by the server in "
                      f"{_ms(asked):.0f} ms: {facts['stranger']!r}")
        async with _Members(store, seed.client_url, env) as members, \
                _within("the secured mesh's members did not finish", 4 * WAIT):
            worker = await members.agent("worker", "echo")
            client = await members.bus("client", MemberRole.CLIENT)
            await _answered(report, facts, client, worker)
            mallory = await members.bus("mallory", MemberRole.AGENT, ("text.summarize",))
            with _quiet_denials():
                await _denied(report, facts, mallory, client)
            audit = await members.bus("audit", MemberRole.OBSERVER)
            await _sealed(report, facts, audit, client, worker)
            await _revoked(report, facts, store, seed, mallory)
    return pids


async def _answered(report: Report, facts: dict[str, Any], client: Bus,
                    worker: AgentNode) -> None:
    """An admitted client's signed request to an admitted agent's capability."""
    started = time.perf_counter()
    result = await retry(lambda: submit_task(client, Task(capability="echo",
                                                          parameters={"text": "hello"}),
                                             timeout=1.0), attempts=5)
    by = worker.config.name if result.agent_id == worker.agent_id else str(result.agent_id)[:12]
    facts["answered"] = {"by": by, "status": result.status.value, "echo": _echoed(result),
                         "ms": round(_ms(started), 1)}
    report.detail(f"client (role client) -> {client.subjects.cap('echo')}: {by} (agent admitted "
                  f"for echo) answered {result.status.value} {_echoed(result)!r}, signed and "
                  f"verified both ways, in {facts['answered']['ms']:.1f} ms")


async def _denied(report: Report, facts: dict[str, Any], mallory: Bus, client: Bus) -> None:
    """Subscriptions mallory's JWT does not allow: the server refuses each."""
    async def ignore(_: object) -> None:
        return None

    facts["denied"] = []
    for subject, what in ((f"_INBOX.{client.agent_id}.>", "the client's inbox"),
                          (mallory.subjects.cap("echo"), "echo, a capability it was not "
                                                         "admitted for")):
        try:
            await mallory.subscribe(subject, ignore)
        except PermissionDenied:
            said = mallory.permission_denials[-1] if mallory.permission_denials else "?"
            facts["denied"].append({"subject": subject, "server": said})
            report.detail(f"mallory (agent for text.summarize) subscribes to {what}: "
                          f"PermissionDenied; the server: {_short(said.removeprefix('nats: '))}")
        else:
            raise AgoraError(f"demo: the secured seed let mallory subscribe to {subject}")


async def _sealed(report: Report, facts: dict[str, Any], audit: Bus, client: Bus,
                  worker: AgentNode) -> None:
    """A direct task and its result, as an observer that may read every subject sees them."""
    inbox = f"_INBOX.{client.agent_id}."
    direct = worker.bus.subjects.agent(worker.agent_id)
    captured: list[tuple[str, bytes]] = []
    replied = asyncio.Event()

    async def capture(msg: Message) -> None:
        captured.append((msg.subject, bytes(msg.data)))
        if msg.subject.startswith(inbox) and looks_like_envelope(msg.data):
            replied.set()  # the request, published before the reply, was captured first

    await audit.listen(">", capture)
    await audit.flush(timeout=WAIT)  # the server has the SUB (Bus.flush says why twice)
    result = await retry(lambda: submit_task(client, Task(capability="echo",
                                                          parameters={"text": SECRET}),
                                             agent_id=worker.agent_id, timeout=1.0),
                         attempts=5)
    async with _within("the observer did not capture the result"):
        await replied.wait()
    exchange = [parse(data) for subject, data in captured if looks_like_envelope(data)
                and (subject == direct or subject.startswith(inbox))]
    boxed = [envelope for envelope in exchange if is_boxed(envelope.body)]
    leaked = sum(SECRET.encode() in data for _, data in captured)
    facts["observer"] = {"captured": len(captured), "exchange": len(exchange),
                         "boxed": len(boxed), "leaked": leaked,
                         "bodies": sorted({str(key) for envelope in exchange
                                           if isinstance(envelope.body, dict)
                                           for key in envelope.body}),
                         "recipient_read": _echoed(result)}
    shown = ", ".join(f"{envelope.type} {{\"{BOX_KEY}\": <{len(envelope.body[BOX_KEY])} bytes>}}"
                      if is_boxed(envelope.body) else f"{envelope.type} in clear"
                      for envelope in exchange)
    report.detail(f"audit (observer, may read every subject) captured the direct task and its "
                  f"result: {shown}")
    report.detail(f"the secret in {leaked} of the {len(captured)} messages audit saw; client, "
                  f"the recipient, opened the result: {_echoed(result)!r}")


async def _revoked(report: Report, facts: dict[str, Any], store: TrustStore,
                   seed: EmbeddedServer, mallory: Bus) -> None:
    """Revoke a member and reload the seed, as ``up --secure`` does when the store changes.

    Mallory holds a subscription its JWT allows (its own capability): it ends when
    the server closes the connection, and the client's last error says why.
    """
    await mallory.listen(mallory.subjects.cap("text.summarize"), _ignore)
    started = time.perf_counter()
    store.revoke(mallory.agent_id)
    await seed.reload(replace(seed.config, auth=store.server_auth()), timeout=WAIT)
    reloaded = _ms(started)
    async with _within("the server did not close the revoked member's connection"):
        closed = await mallory.connection.closed() or "?"
    cut = _ms(started)
    refused = await _refusal(seed.client_url, connect_options(mallory.config, mallory.identity))
    facts["revoked"] = {"reload_ms": round(reloaded, 1), "cut_ms": round(cut, 1),
                        "closed": closed, "reconnect": refused}
    report.detail(f"mallory revoked, the seed reloaded (as `up --secure` does) in "
                  f"{reloaded:.0f} ms: the server closed mallory's connection ({closed!r}) "
                  f"{cut:.0f} ms after the revocation; its next connect refused: {refused!r}")
