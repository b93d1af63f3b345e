"""End-to-end encryption on a real mesh: a wildcard sniffer sees ciphertext, peers plaintext.

A raw nats-py client subscribed to ``>`` on a third server of the mesh stands
for anyone who can read the traffic (a server operator, a leaked account, a
tap on a route). It must never see a directed body in the clear.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from agoramesh.bus import Delivery
from agoramesh.bus.envelope import is_boxed, looks_like_envelope, parse
from agoramesh.bus.mesh import Mesh
from agoramesh.nodes.backends.base import Backend, ChatMessage
from agoramesh.nodes.capability import Capability
from agoramesh.nodes.client import submit_task
from agoramesh.nodes.task import Completion, StreamItem, Task, TaskStatus
from agoramesh.testing import wait_until
from agoramesh.testing.plugin import AgentFactory, BusFactory, MeshFactory
from agoramesh.testing.raw import flush

pytestmark = pytest.mark.integration

SHOUT = Capability(name="text.shout", description="upper-cases text",
                   input_schema={"type": "object", "properties": {"text": {"type": "string"}},
                                 "required": ["text"]})


class Shout(Backend):
    """A result that differs from its input, so the result can be looked for on the wire."""

    type = "shout"

    async def execute(self, task: Task, context: dict[str, Any] | None = None
                      ) -> AsyncGenerator[StreamItem, None]:
        yield Completion(output={"text": str(task.parameters["text"]).upper()})

    async def chat(self, messages: Sequence[ChatMessage]) -> AsyncIterator[StreamItem]:
        yield Completion(output=messages[-1]["content"].upper())


class Sniffer:
    """Every payload on the mesh, as a raw ``>`` subscriber on one server receives it."""

    def __init__(self) -> None:
        self.payloads: list[bytes] = []
        self.client = NatsClient()

    async def start(self, url: str) -> None:
        await self.client.connect(url, connect_timeout=2, allow_reconnect=False)

        async def capture(msg: Msg) -> None:
            self.payloads.append(bytes(msg.data))

        await self.client.subscribe(">", cb=capture)
        await flush(self.client)

    async def hear(self, urls: Sequence[str]) -> None:
        """Return once a message published on each server of ``urls`` reaches us.

        First, to be ready: the ``>`` interest crosses the routes asynchronously, and
        a body sent before it has would pass unseen (a test would find no ciphertext,
        or no plaintext). Later, to have every copy those servers sent before: a route
        delivers in order, but our copies take other routes than the peers' messages.
        """
        for url in urls:
            probe = NatsClient()
            await probe.connect(url, connect_timeout=2, allow_reconnect=False)
            payload = f"probe {uuid.uuid4().hex}".encode()

            async def heard(probe: NatsClient = probe, payload: bytes = payload) -> bool:
                await probe.publish("sniffer.probe", payload)
                await flush(probe)
                return self.saw(payload)

            try:
                await wait_until(heard, timeout=10, interval=0.05)
            finally:
                await probe.close()

    def saw(self, needle: bytes) -> bool:
        return any(needle in payload for payload in self.payloads)

    def directed(self) -> list[tuple[str, Any]]:
        """(type, body) of every envelope on the wire that is addressed to one agent."""
        found = []
        for payload in self.payloads:
            if looks_like_envelope(payload):
                envelope = parse(payload)
                if not envelope.is_broadcast:
                    found.append((envelope.type, envelope.body))
        return found


@pytest.fixture
async def mesh(mesh_factory: MeshFactory) -> Mesh:
    return await mesh_factory(seeds=3)


def others(mesh: Mesh) -> list[str]:
    """The client URLs of the seeds the sniffer is not on (it is on the third)."""
    return [server.client_url for server in mesh.seeds[:2]]


@pytest.fixture
async def sniffer(mesh: Mesh) -> AsyncIterator[Sniffer]:
    spy = Sniffer()
    await spy.start(mesh.seeds[2].client_url)
    try:
        await spy.hear(others(mesh))
        spy.payloads.clear()
        yield spy
    finally:
        await spy.client.close()


def assert_boxed_only(sniffer: Sniffer, *secrets: bytes) -> None:
    for secret in secrets:
        assert not sniffer.saw(secret), f"{secret!r} crossed the mesh in the clear"
    directed = sniffer.directed()
    assert directed, "the sniffer saw no directed envelope at all"
    clear = [kind for kind, body in directed if not is_boxed(body)]
    assert clear == [], f"directed envelopes with plaintext bodies: {clear}"


async def test_task_result_is_ciphertext_on_the_wire(
        mesh: Mesh, sniffer: Sniffer, agent_factory: AgentFactory,
        bus_factory: BusFactory) -> None:
    agent = await agent_factory(mesh.seeds[0].client_url, "shouter", [SHOUT], backend=Shout())
    requester = await bus_factory(mesh.seeds[1].client_url)
    secret = f"open sesame {uuid.uuid4().hex}"
    direct_secret = f"direct {uuid.uuid4().hex}"

    async def shout(text: str, agent_id: str | None = None) -> Any:
        result = await submit_task(requester, Task(capability="text.shout",
                                                   parameters={"text": text}),
                                   agent_id=agent_id, timeout=3)
        assert result.status is TaskStatus.COMPLETED, result
        return result.result

    # Interest crosses the routes asynchronously: retry until the agent answers.
    async def answers() -> bool:
        try:
            await shout("warm up")
        except Exception:
            return False
        return True

    await wait_until(answers, timeout=10)
    sniffer.payloads.clear()

    # On agora.cap.<capability> the request is a broadcast (any capable agent may take
    # it), so its input travels in the clear; the result, addressed to us, does not.
    assert await shout(secret) == {"text": secret.upper()}
    # Addressed to the agent, the request is encrypted too.
    assert await shout(direct_secret, agent.agent_id) == {"text": direct_secret.upper()}
    await sniffer.hear(others(mesh))  # every copy sent before is in
    await wait_until(lambda: sniffer.saw(secret.encode()), timeout=2)  # the broadcast request
    assert_boxed_only(sniffer, secret.upper().encode(), direct_secret.encode(),
                      direct_secret.upper().encode())
    kinds = {kind for kind, _ in sniffer.directed()}
    assert {"task_request", "task_response"} <= kinds
    assert agent.bus.rejections.total() == 0 and requester.rejections.total() == 0


async def test_direct_message_is_ciphertext_on_the_wire(
        mesh: Mesh, sniffer: Sniffer, bus_factory: BusFactory) -> None:
    alice = await bus_factory(mesh.seeds[0].client_url)
    bob = await bus_factory(mesh.seeds[1].client_url)
    got: asyncio.Queue[Delivery] = asyncio.Queue()

    async def inbox(delivery: Delivery) -> None:
        got.put_nowait(delivery)
        await delivery.respond("chat.reply", {"text": delivery.body["text"][::-1]})

    await bob.subscribe(bob.subjects.agent(bob.agent_id), inbox)
    secret = f"meet at the north gate {uuid.uuid4().hex}"

    async def reachable() -> bool:
        try:
            await alice.request(bob.subjects.agent(bob.agent_id), "chat.message",
                                {"text": "ping"}, to=bob.agent_id, timeout=0.5)
        except Exception:
            return False
        return True

    await wait_until(reachable, timeout=10)
    sniffer.payloads.clear()

    await alice.publish(bob.subjects.agent(bob.agent_id), "chat.message", {"text": secret},
                        to=bob.agent_id)
    reply = await alice.request(bob.subjects.agent(bob.agent_id), "chat.message",
                                {"text": secret + "?"}, to=bob.agent_id, timeout=2)
    assert reply.body == {"text": (secret + "?")[::-1]}  # the requester reads plaintext
    deliveries = [await asyncio.wait_for(got.get(), 2) for _ in range(got.qsize())]
    texts = [delivery.body["text"] for delivery in deliveries]
    assert secret in texts and secret + "?" in texts  # and so does the recipient
    assert all(delivery.sender == alice.agent_id for delivery in deliveries)
    await sniffer.hear(others(mesh))  # every copy sent before is in
    await wait_until(lambda: len(sniffer.directed()) >= 3, timeout=2)
    assert_boxed_only(sniffer, secret.encode(), secret[::-1].encode())
    assert alice.rejections.total() == 0 and bob.rejections.total() == 0


async def test_unencrypting_peer_is_still_understood(
        mesh: Mesh, sniffer: Sniffer, bus_factory: BusFactory) -> None:
    """Encryption is the sender's policy: a plaintext directed body is admitted as before."""
    alice = await bus_factory(mesh.seeds[0].client_url, encrypt=False)
    bob = await bus_factory(mesh.seeds[0].client_url)
    got: asyncio.Queue[Any] = asyncio.Queue()

    async def inbox(delivery: Delivery) -> None:
        got.put_nowait(delivery.body)

    await bob.subscribe(bob.subjects.agent(bob.agent_id), inbox)
    await alice.publish(bob.subjects.agent(bob.agent_id), "chat.message", {"text": "plain"},
                        to=bob.agent_id)
    assert await asyncio.wait_for(got.get(), 2) == {"text": "plain"}
    await wait_until(lambda: sniffer.saw(b"plain"), timeout=2)
