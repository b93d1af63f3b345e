"""Membership and permissions enforced by the NATS servers themselves (M-4.1).

A secured mesh of 3 seeds + 2 leaves, every server in operator mode with the
trust store's JWTs preloaded: only admitted identities connect, and each may
publish and subscribe only where its JWT allows.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import nats
import nats.errors
import pytest
import pytest_asyncio
from nats.aio.msg import Msg

from agoramesh.agent import AgentNode
from agoramesh.bus.bus import Bus
from agoramesh.bus.credentials import client_identity, parse_creds
from agoramesh.bus.envelope import is_boxed, parse
from agoramesh.bus.identity import Identity
from agoramesh.bus.mesh import Mesh
from agoramesh.config import BusConfig, ServerConfig
from agoramesh.errors import NoResponders, NotConnected, PermissionDenied, TrustError
from agoramesh.nodes.backends.offline import OfflineBackend
from agoramesh.nodes.card import AgentStatus
from agoramesh.nodes.catalog import capabilities_for
from agoramesh.nodes.client import stream_task
from agoramesh.nodes.directory import Directory
from agoramesh.nodes.host import AgentHost
from agoramesh.nodes.node import NodeConfig
from agoramesh.nodes.task import Chunk, Task, TaskResult
from agoramesh.protocols.allocation.dispatch import client_dispatcher
from agoramesh.protocols.auction.liveness import gone
from agoramesh.security import jwt
from agoramesh.security.trust import MemberRole, TrustStore, follow_trust, permissions_for
from agoramesh.testing.plugin import AgentFactory
from agoramesh.testing.processes import assert_stopped
from agoramesh.testing.raw import flush
from agoramesh.testing.waiting import wait_until

pytestmark = pytest.mark.integration

AgentMaker = Callable[..., Awaitable[AgentNode]]


@pytest.fixture
def store(tmp_path: Path) -> TrustStore:
    return TrustStore.init(tmp_path / "trust")


@pytest_asyncio.fixture
async def secure_mesh(tmp_path: Path, store: TrustStore) -> AsyncIterator[Mesh]:
    base = tmp_path / "mesh"
    template = ServerConfig(name="template", data_dir=base, auth=store.server_auth())
    mesh = await Mesh.launch(base, seeds=3, leaves=2, template=template)
    try:
        yield mesh
    finally:
        pids = [server.pid for server in mesh.servers]
        await mesh.stop(grace=2.0)
        assert_stopped(pids)


@pytest.fixture
def admitted(store: TrustStore, agent_factory: AgentFactory) -> AgentMaker:
    """``await admitted(url, name, capabilities)``: an AgentNode admitted with its JWT."""
    async def make(url: str, name: str, capabilities: list[str]) -> AgentNode:
        identity = Identity.generate()
        token = store.admit(identity.agent_id, capabilities=capabilities, name=name).jwt
        return await agent_factory(url, name, capabilities, identity=identity,
                                   bus={"user_jwt": token, "connect_timeout": 2.0})

    return make


async def bus_as(store: TrustStore, url: str, *, capabilities: tuple[str, ...] = ("echo",),
                 role: MemberRole = MemberRole.AGENT, identity: Identity | None = None) -> Bus:
    identity = identity or Identity.generate()
    token = store.admit(identity.agent_id, capabilities=capabilities, role=role).jwt
    return await Bus.connect(identity, BusConfig(servers=(url,), user_jwt=token,
                                                 connect_timeout=2.0))


# -- who may connect ---------------------------------------------------------------


async def test_a_client_without_credentials_cannot_connect(secure_mesh: Mesh) -> None:
    for server in secure_mesh.servers:
        with pytest.raises(NotConnected, match="Authorization Violation"):
            await Bus.connect(Identity.generate(), BusConfig(servers=(server.client_url,),
                                                             connect_timeout=1.0))
        raw = nats.NATS()
        try:
            with pytest.raises(nats.errors.Error, match="Authorization Violation"):
                await raw.connect(server.client_url, allow_reconnect=False, connect_timeout=1)
        finally:
            await raw.close()


async def test_refused_credentials_fail_at_once_not_after_the_connect_timeout(
        secure_mesh: Mesh) -> None:
    async with asyncio.timeout(10):  # the connect timeout below is 60 s: no retry loop
        with pytest.raises(NotConnected, match=r"refused this identity's credentials "
                                               r"\(Authorization Violation\)"):
            await Bus.connect(Identity.generate(), BusConfig(servers=(secure_mesh.url,),
                                                             connect_timeout=60.0))


async def test_a_jwt_from_another_trust_store_is_refused(secure_mesh: Mesh, tmp_path: Path
                                                         ) -> None:
    foreign = TrustStore.init(tmp_path / "foreign")
    identity = Identity.generate()
    token = foreign.admit(identity.agent_id, capabilities=["echo"]).jwt
    with pytest.raises(NotConnected, match="Authorization Violation"):
        await Bus.connect(identity, BusConfig(servers=(secure_mesh.url,), user_jwt=token,
                                              connect_timeout=1.0))


async def test_a_node_presenting_another_agents_id_cannot_connect(
        secure_mesh: Mesh, store: TrustStore) -> None:
    victim = Identity.generate()
    stolen = store.admit(victim.agent_id, capabilities=["echo"]).jwt  # JWTs are public
    impostor = Identity.generate()
    with pytest.raises(NotConnected, match="Authorization Violation"):
        # The server's nonce is signed with the impostor's key, not the victim's.
        await Bus.connect(impostor, BusConfig(servers=(secure_mesh.url,), user_jwt=stolen,
                                              connect_timeout=1.0))


async def test_an_expired_membership_is_refused(secure_mesh: Mesh, store: TrustStore) -> None:
    identity = Identity.generate()
    account_seed = (store.directory / "account.nk").read_bytes().strip()
    expired = jwt.encode(account_seed, identity.agent_id, "user",
                         permissions_for(identity.agent_id, MemberRole.AGENT, ["echo"]).claims(),
                         issued_at=1_700_000_000, expires=1_700_000_100)
    with pytest.raises(NotConnected, match="Authorization Violation"):
        await Bus.connect(identity, BusConfig(servers=(secure_mesh.url,), user_jwt=expired,
                                              connect_timeout=1.0))


# -- what members may do -----------------------------------------------------------


async def test_an_admitted_agent_cannot_touch_another_agents_inbox(
        secure_mesh: Mesh, store: TrustStore, admitted: AgentMaker) -> None:
    leaf1, leaf2 = secure_mesh.leaves
    victim = await admitted(leaf1.client_url, "victim", ["echo"])
    attacker = await bus_as(store, leaf2.client_url)
    try:
        inbox = f"_INBOX.{victim.agent_id}"
        for subject in (f"{inbox}.>", f"{inbox}.x.y", victim.bus.subjects.agent(victim.agent_id),
                        "agora.cap.text.summarize", "agora.>", ">"):
            with pytest.raises(PermissionDenied, match="refused the subscription"):
                await attacker.subscribe(subject, _ignore)
        # Publishes are fire-and-forget: the server answers each with a permissions error.
        before = len(attacker.permission_denials)
        for subject in (f"{inbox}.abc", f"agora.presence.{victim.agent_id}",
                        f"agora.status.{victim.agent_id}"):
            await attacker.publish_raw(subject, b"{}")
        await attacker.nats.flush(timeout=2)
        await wait_until(lambda: len(attacker.permission_denials) >= before + 3, timeout=2.0)
        refused = attacker.permission_denials[before:]
        assert any(f"publish to \"{inbox.lower()}.abc\"" in text for text in refused)
        assert any("presence" in text for text in refused)
        # What it may do still works: ask the victim for work and get the answer back.
        async with asyncio.timeout(5):
            while True:  # the victim's interest crosses leaf → seed → leaf in a moment
                try:
                    reply = await attacker.request(
                        attacker.subjects.cap("echo"), "task_request",
                        {"task_type": "echo", "parameters": {"text": "hi"}}, timeout=3.0)
                    break
                except NoResponders:
                    await asyncio.sleep(0.05)
        assert reply.body["status"] == "COMPLETED"
        assert reply.sender == victim.agent_id
    finally:
        await attacker.close()


async def test_an_agent_serves_only_what_it_was_admitted_for(
        secure_mesh: Mesh, store: TrustStore) -> None:
    identity = Identity.generate()
    token = store.admit(identity.agent_id, capabilities=["echo"]).jwt
    node = AgentNode(identity, NodeConfig(name="greedy", type="offline",
                                          capabilities=capabilities_for("offline", ["echo",
                                                                                    "math.evaluate"])),
                     OfflineBackend(), BusConfig(servers=(secure_mesh.url,), user_jwt=token))
    before = asyncio.all_tasks()
    with pytest.raises(PermissionDenied, match=r"agora\.cap\.math\.evaluate"):
        await node.start()
    # A half-started node leaves nothing behind: no connection, no background task.
    assert not node.bus.is_connected and not node.is_running
    await asyncio.sleep(0)  # the closed client's own tasks see their cancellation
    assert not {task for task in asyncio.all_tasks() - before if not task.done()}
    await node.stop(grace=0.5)


async def test_a_secured_mesh_runs_requests_auctions_and_streams_across_leaves(
        secure_mesh: Mesh, store: TrustStore, admitted: AgentMaker) -> None:
    leaf1, leaf2 = secure_mesh.leaves
    seeds = secure_mesh.seeds
    workers = [await admitted(server.client_url, f"w{index}", ["echo", "text.summarize"])
               for index, server in enumerate([leaf2, *seeds])]
    requester = await admitted(leaf1.client_url, "requester", ["math.evaluate"])
    await wait_until(lambda: len(requester.directory.capable("echo")) == len(workers),
                     timeout=5.0)
    # Direct request/reply leaf → leaf, and one straight to a named agent's inbox.
    direct = await requester.dispatcher.submit("echo", {"text": "hello"}, strategy="direct",
                                               timeout=3.0)
    assert direct.status.value == "COMPLETED"
    named = await requester.dispatcher.submit("echo", {"text": "you"},
                                              agent_id=workers[0].agent_id, timeout=3.0)
    assert named.agent_id == workers[0].agent_id
    # Auctions: calls for proposals, bids into the requester's inbox, award, result.
    results = await asyncio.gather(*(
        requester.dispatcher.submit("text.summarize", {"text": f"auction {n}. " * 5},
                                    timeout=5.0) for n in range(10)))
    assert [r.status.value for r in results] == ["COMPLETED"] * 10
    # A streamed task: several replies (chunks, then the result) on one reply subject.
    items = [item async for item in stream_task(requester.bus, Task(
        capability="text.summarize", parameters={"text": "One. Two. Three. Four."}),
        timeout=5.0)]
    assert len(items) >= 3 and isinstance(items[-1], TaskResult)
    assert all(isinstance(item, Chunk) for item in items[:-1])
    assert items[-1].status.value == "COMPLETED"
    # A client identity (the CLI's) discovers and submits too.
    creds = store.credentials("cli")
    async with client_dispatcher(BusConfig(servers=(seeds[0].client_url,), credentials=creds),
                                 timeout=5.0) as dispatcher:
        assert len(dispatcher.select("capability:echo")) == len(workers)
        result = await dispatcher.submit("echo", {"text": "from the cli"})
        assert result.status.value == "COMPLETED"


async def test_plain_json_from_an_authenticated_nats_client(
        secure_mesh: Mesh, store: TrustStore, admitted: AgentMaker, tmp_path: Path) -> None:
    await admitted(secure_mesh.leaves[1].client_url, "worker", ["echo"])
    creds = store.credentials("natscli")
    agent_id = jwt.decode(parse_creds(creds.read_text())[0])["sub"]
    # What `nats --creds F --inbox-prefix _INBOX.<id> req agora.cap.echo '{…}'` does.
    nc = await nats.connect(secure_mesh.url, user_credentials=str(creds),
                            inbox_prefix=f"_INBOX.{agent_id}", allow_reconnect=False)
    try:
        async with asyncio.timeout(5):
            while True:  # the worker's interest crosses leaf → seed in a moment
                try:
                    msg = await nc.request("agora.cap.echo", b'{"text": "plain"}', timeout=3)
                    break
                except nats.errors.NoRespondersError:
                    await asyncio.sleep(0.05)
        assert json.loads(msg.data)["status"] == "COMPLETED"
    finally:
        await nc.close()


async def test_a_wildcard_sniffer_with_credentials_sees_only_ciphertext(
        secure_mesh: Mesh, store: TrustStore, admitted: AgentMaker) -> None:
    """An observer may read every subject of the mesh; a directed result stays sealed."""
    secret = "the launch code is 0000 and nobody may read it"
    worker = await admitted(secure_mesh.leaves[1].client_url, "worker", ["echo"])
    requester = await admitted(secure_mesh.leaves[0].client_url, "requester", ["math.evaluate"])
    creds = store.credentials("audit", role=MemberRole.OBSERVER)
    observer_id = jwt.decode(parse_creds(creds.read_text())[0])["sub"]
    sniffed: list[tuple[str, bytes]] = []
    sniffer = nats.NATS()
    await sniffer.connect(secure_mesh.seeds[1].client_url, user_credentials=str(creds),
                          inbox_prefix=f"_INBOX.{observer_id}", allow_reconnect=False)
    try:
        async def capture(msg: Msg) -> None:
            sniffed.append((msg.subject, bytes(msg.data)))

        await sniffer.subscribe(">", cb=capture)
        await flush(sniffer)

        probes = {node.bus.subjects.help(f"probe.{node.config.name}"): node
                  for node in (requester, worker)}

        async def heard_from_both_leaves() -> bool:
            # The SUB crosses seed → seed → leaf asynchronously: the sniffer is ready once it
            # hears both agents on a subject only it listens to, or it may miss the request
            # or its reply.
            for subject, node in probes.items():
                await node.bus.publish_raw(subject, b"probe")
            return set(probes) <= {subject for subject, _ in sniffed}

        await wait_until(heard_from_both_leaves, timeout=10.0, interval=0.05)
        await wait_until(lambda: worker.agent_id in requester.directory, timeout=5.0)
        result = await requester.dispatcher.submit("echo", {"text": secret},
                                                   agent_id=worker.agent_id, timeout=3.0)
        assert secret in json.dumps(result.result)  # the recipient reads it
        request_subject = worker.bus.subjects.agent(worker.agent_id)

        def saw_the_request_and_its_answer() -> bool:
            # The sniffer's copies take other links than the requester's: the requester can
            # have its answer first (and a card reply on its inbox is no task's answer).
            return any(subject == request_subject for subject, _ in sniffed) and any(
                subject.startswith(f"_INBOX.{requester.agent_id}")
                and parse(data).type == "task_response" for subject, data in sniffed)

        await wait_until(saw_the_request_and_its_answer, timeout=5.0)
    finally:
        await sniffer.close()
    # Cards (a card reply, a discovery answer) are public, as every hello says them.
    replies = [reply for reply in (parse(data) for subject, data in sniffed
                                   if subject.startswith(f"_INBOX.{requester.agent_id}"))
               if reply.type not in ("card", "discovery")]
    assert any(reply.type == "task_response" for reply in replies)
    assert all(is_boxed(reply.body) for reply in replies)
    requests = [parse(data) for subject, data in sniffed if subject == request_subject]
    assert requests and all(is_boxed(request.body) for request in requests)
    assert not any(secret.encode() in data for _, data in sniffed)
    # The observer may read, but not speak.
    config = BusConfig(servers=(secure_mesh.url,), credentials=creds, connect_timeout=2.0)
    reader = await Bus.connect(client_identity(config), config)
    try:
        await reader.publish_raw("agora.cap.echo", b'{"text": "hi"}')
        await reader.nats.flush(timeout=2)
        await wait_until(lambda: bool(reader.permission_denials), timeout=2.0)
        assert "agora.cap.echo" in reader.permission_denials[-1]
    finally:
        await reader.close()


async def test_revocation_disconnects_a_member_and_keeps_it_out(
        secure_mesh: Mesh, store: TrustStore, admitted: AgentMaker) -> None:
    keeper = await admitted(secure_mesh.seeds[0].client_url, "keeper", ["echo"])
    identity = Identity.generate()
    revoked = await bus_as(store, secure_mesh.leaves[0].client_url, identity=identity)
    follower = asyncio.ensure_future(follow_trust(store, lambda: secure_mesh.servers,
                                                  interval=0.05))
    try:
        store.revoke(identity.agent_id)
        await wait_until(lambda: not revoked.is_connected, timeout=5.0)
        with pytest.raises(NotConnected, match="Authorization Violation"):
            await Bus.connect(identity, BusConfig(servers=(secure_mesh.url,),
                                                  user_jwt=revoked.config.user_jwt,
                                                  connect_timeout=1.0))
        # Everyone else carries on, and the key can be admitted again after the revocation.
        assert keeper.bus.is_connected
        again = await bus_as(store, secure_mesh.url, identity=identity)
        await again.close()
    finally:
        follower.cancel()
        await asyncio.wait([follower])
        await revoked.close(timeout=0.5)


async def test_the_leaf_link_needs_the_link_credential(
        tmp_path: Path, store: TrustStore, secure_mesh: Mesh) -> None:
    hub = secure_mesh.seeds[0]
    auth = replace(store.server_auth(), leaf_credentials=None)
    loose = ServerConfig(name="rogue", data_dir=tmp_path / "rogue", auth=auth,
                         role=hub.config.role.__class__("leaf"), hubs=(hub.leaf_address,),
                         ready_timeout=1.5)
    from agoramesh.bus.server import EmbeddedServer
    from agoramesh.errors import ServerStartError
    rogue = EmbeddedServer(loose)
    with pytest.raises(ServerStartError, match="leafnode link"):
        await rogue.start()
    assert_stopped([rogue.pid])


# -- the trust store ---------------------------------------------------------------


def test_permissions_follow_capabilities_and_role() -> None:
    agent = Identity.generate().agent_id
    perms = permissions_for(agent, MemberRole.AGENT, ["code.review.python"])
    assert f"_INBOX.{agent}.>" in perms.subscribe
    assert "agora.cap.code.review.python" in perms.subscribe
    assert f"agora.agent.{agent}" in perms.subscribe
    assert not any(s.startswith("_INBOX.") and agent not in s for s in perms.subscribe)
    assert f"agora.presence.{agent}" in perms.publish and "agora.presence.>" not in perms.publish
    assert "$SRV.PING.>" in perms.publish and "$SRV.>" not in perms.publish
    assert perms.responses > 0
    observer = permissions_for(agent, MemberRole.OBSERVER)
    assert observer.subscribe == (">",) and observer.deny_publish == (">",)
    with pytest.raises(TrustError, match="invalid capability"):
        permissions_for(agent, MemberRole.AGENT, ["bad capability"])
    with pytest.raises(TrustError, match="not an agent id"):
        permissions_for("UNOTANID", MemberRole.AGENT, ["echo"])


def test_the_store_signs_a_verifiable_chain(store: TrustStore, tmp_path: Path) -> None:
    operator = jwt.decode(store.operator_jwt)
    account = jwt.decode(store.account_jwt, issuer=operator["sub"])
    agent = Identity.generate()
    member = store.admit(agent.agent_id, capabilities=["echo"], name="a", ttl=60)
    user = jwt.decode(member.jwt, issuer=account["sub"])
    assert user["sub"] == agent.agent_id and user["exp"] == member.expires
    assert [m.agent_id for m in store.members()] == [agent.agent_id]
    tampered = member.jwt.rsplit(".", 1)[0] + ".AAAA"
    with pytest.raises(TrustError, match="does not verify"):
        jwt.decode(tampered)
    with pytest.raises(TrustError, match="three base64url parts"):
        jwt.decode("not a jwt")
    with pytest.raises(TrustError, match="already exists"):
        TrustStore.init(store.directory)
    with pytest.raises(TrustError, match="no trust store"):
        TrustStore.open(tmp_path / "nowhere")
    store.revoke(agent.agent_id)
    assert store.members() == [] and agent.agent_id in store.revocations()
    assert (store.directory / "account.nk").stat().st_mode & 0o077 == 0


async def _ignore(_: object) -> None:
    return None


async def test_a_host_admitted_with_no_capability_beats_for_agents_with_their_own_jwts(
        secure_mesh: Mesh, store: TrustStore, admitted: AgentMaker) -> None:
    """A host is a member like an agent with no capability: its batches pass the servers'
    permissions; its agents keep their own connections (a connection is one identity)."""
    observer = await admitted(secure_mesh.leaves[0].client_url, "observer", ["vote"])
    url = secure_mesh.leaves[1].client_url
    identity = Identity.generate()
    host = AgentHost(BusConfig(servers=(url,), user_jwt=store.admit(
        identity.agent_id, name="host").jwt, connect_timeout=2.0), identity=identity,
        heartbeat_interval=0.2)
    await host.start()
    agents: list[AgentNode] = []
    try:
        for index in range(3):
            member = Identity.generate()
            token = store.admit(member.agent_id, capabilities=["echo"], name=f"h{index}").jwt
            node = AgentNode(member, NodeConfig(
                name=f"h{index}", capabilities=capabilities_for("offline", ["echo"]),
                heartbeat_interval=0.2), OfflineBackend(),
                BusConfig(servers=(url,), user_jwt=token, connect_timeout=2.0), host=host)
            await node.start()
            agents.append(node)
        assert all(node.bus.connection is not host.bus.connection for node in agents)
        await wait_until(lambda: all(n.agent_id in observer.directory for n in agents),
                         timeout=5.0)
        await asyncio.sleep(1.2)  # six beats: the host's batches alone keep them
        assert all(n.agent_id in observer.directory for n in agents)
        entry = observer.directory.get(agents[0].agent_id)
        assert entry is not None and entry.host == host.agent_id
        assert not host.bus.permission_denials
        # (The first agent drives durable jobs: its JetStream probe is refused, as on any
        # secured mesh, which runs no JetStream; nothing else is.)
        assert all("$js." in denial for node in agents for denial in node.bus.permission_denials)
    finally:
        await host.stop(grace=1.0)
    await wait_until(lambda: not any(n.agent_id in observer.directory for n in agents),
                     timeout=3.0)


async def test_an_admitted_agent_may_ask_whether_a_silent_one_is_gone(
        secure_mesh: Mesh, admitted: AgentMaker) -> None:
    """What an auction does before waiting for a silent agent (protocols/auction/liveness.py)
    is allowed by the agent role: a ping answered, then "no responders" once it stopped."""
    leaf1, leaf2 = secure_mesh.leaves
    asker = await admitted(leaf1.client_url, "asker", ["echo"])
    silent = await admitted(leaf2.client_url, "silent", ["echo"])
    await wait_until(lambda: silent.agent_id in asker.directory, timeout=10)
    entry = asker.directory.get(silent.agent_id)
    assert entry is not None
    denied = len(asker.bus.permission_denials)
    assert await gone(asker.bus, asker.directory, [silent.agent_id], timeout=2) == set()
    await silent.stop()
    # Its bye drops it from the asker's directory (whenever that arrives): one that still
    # names it, as a lapsed entry would.
    named = Directory()
    named.seen(entry.card, AgentStatus(), 1.0)

    async def is_gone() -> bool:  # once its interest has left leaf2, the seeds and leaf1
        return await gone(asker.bus, named, [silent.agent_id], timeout=1) == {silent.agent_id}

    await wait_until(is_gone, timeout=5, interval=0.05)
    assert asker.bus.permission_denials[denied:] == []
