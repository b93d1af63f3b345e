"""Durable jobs on a real 3-seed JetStream mesh: submitted, run once, stored once, read back.

Executions are counted by the Worker backend (every start is recorded), so
"ran once" is a count, not an assumption.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from dataclasses import replace
from pathlib import Path

import nats
import pytest
from jobs_support import js_template

from agoramesh.agent import AgentNode
from agoramesh.bus.bus import Bus, Delivery
from agoramesh.bus.envelope import seal
from agoramesh.bus.identity import Identity
from agoramesh.bus.jetstream import JetStream
from agoramesh.bus.mesh import Mesh
from agoramesh.bus.server import EmbeddedServer
from agoramesh.config import BusConfig, JobsConfig, ServerRole
from agoramesh.errors import InvalidTask, JetStreamUnavailable, StoreFull
from agoramesh.nodes.client import submit_task
from agoramesh.nodes.task import Task, TaskResult, TaskStatus
from agoramesh.protocols.jobs.jobs import Jobs
from agoramesh.testing import assert_stopped, wait_until
from agoramesh.testing.plugin import AgentFactory, BusFactory, MeshFactory
from agoramesh.testing.workers import WORK, Worker

pytestmark = pytest.mark.integration


async def worker(agent_factory: AgentFactory, url: str, name: str = "worker",
                 **settings: object) -> tuple[AgentNode, Worker]:
    backend = Worker(name)
    node = await agent_factory(url, name, [WORK], backend=backend, **settings)
    return node, backend


async def test_a_durable_task_runs_once_and_its_result_is_stored(
        js_mesh: Mesh, agent_factory: AgentFactory, bus_factory: BusFactory) -> None:
    node, backend = await worker(agent_factory, js_mesh.seeds[1].client_url)
    client = await bus_factory(js_mesh.leaves[0].client_url)
    jobs = Jobs(client)
    result = await jobs.run("work.do", {"n": 1}, timeout=20)
    assert result.status is TaskStatus.COMPLETED and result.result == {"by": "worker", "n": 1}
    assert backend.started == [result.task_id]
    assert await jobs.result(result.task_id) == result
    # What `nats kv get AGORA_RESULTS <id>` reads, through a seed, with the client library.
    nc = await nats.connect(js_mesh.seeds[0].client_url)
    try:
        entry = await (await nc.jetstream().key_value("AGORA_RESULTS")).get(result.task_id)
    finally:
        await nc.close()
    record = json.loads(entry.value)
    assert record["status"] == "COMPLETED" and record["result"] == {"by": "worker", "n": 1}
    assert record["stored_by"] == node.agent_id  # the winner stored it itself
    await wait_until(lambda: node.metrics.jobs["taken"] == 1, timeout=5)


async def test_a_durable_task_s_callback_gets_its_stored_result(
        js_mesh: Mesh, agent_factory: AgentFactory, bus_factory: BusFactory) -> None:
    node, backend = await worker(agent_factory, js_mesh.seeds[1].client_url)
    client = await bus_factory(js_mesh.leaves[0].client_url)
    arrived: list[Delivery] = []

    async def keep(delivery: Delivery) -> None:
        arrived.append(delivery)

    await client.subscribe("results.jobs", keep)
    jobs = Jobs(client)
    result = await jobs.run("work.do", {"n": 4}, callback="results.jobs", timeout=20)
    assert result.status is TaskStatus.COMPLETED and backend.started == [result.task_id]
    await wait_until(lambda: len(arrived) == 1, timeout=5)
    published = arrived[0].envelope
    assert published is not None and published.sender == node.agent_id
    assert TaskResult.from_dict(published.body) == result == await jobs.result(result.task_id)
    with pytest.raises(InvalidTask, match="callback"):
        await jobs.submit("work.do", {"n": 5}, callback="$JS.API.STREAM.DELETE.x")


async def test_the_task_id_is_the_idempotency_key(js_mesh: Mesh, agent_factory: AgentFactory,
                                                  bus_factory: BusFactory) -> None:
    node, backend = await worker(agent_factory, js_mesh.seeds[1].client_url)
    client = await bus_factory(js_mesh.seeds[0].client_url)
    jobs = Jobs(client)
    first = await jobs.submit("work.do", {"n": 2, "seconds": 0.2}, task_id="same-id")
    second = await jobs.submit("work.do", {"n": 2, "seconds": 0.2}, task_id="same-id")
    assert not first.duplicate and second.duplicate and second.seq == first.seq
    result = await jobs.wait("same-id", timeout=20)
    assert result.status is TaskStatus.COMPLETED
    # Past the stream's de-duplication (no Nats-Msg-Id: the task id is in the body), the
    # stored result stops it: acknowledged without running.
    wire = seal(client.identity, type="task_request", subject="agora.jobs.work.do", to="*",
                body={"task_id": "same-id", "parameters": {"n": 2}})
    await client.nats.publish("agora.jobs.work.do", wire)
    await wait_until(lambda: node.metrics.jobs["deduplicated"] == 1, timeout=10)
    assert backend.started == ["same-id"]


async def test_a_job_waits_for_an_agent_that_can_do_it(
        js_mesh: Mesh, agent_factory: AgentFactory, bus_factory: BusFactory) -> None:
    # A node that drives jobs but cannot do this one: the job waits in the stream.
    await agent_factory(js_mesh.seeds[0].client_url, "driver", ["echo"])
    client = await bus_factory(js_mesh.leaves[0].client_url)
    jobs = Jobs(client)
    receipt = await jobs.submit("work.do", {"n": 3})
    await asyncio.sleep(1.0)
    assert await jobs.result(receipt.task_id) is None
    status = await jobs.status()
    assert [job.task_id for job in status.jobs] == [receipt.task_id]
    _, backend = await worker(agent_factory, js_mesh.seeds[2].client_url, "late")
    result = await jobs.wait(receipt.task_id, timeout=20)
    assert result.result == {"by": "late", "n": 3} and backend.started == [receipt.task_id]


async def test_what_the_nats_cli_sends_and_reads(js_mesh: Mesh, agent_factory: AgentFactory
                                                 ) -> None:
    """`nats pub agora.jobs.work.do '{"n": 7}' -H Nats-Msg-Id:cli-1`, then `nats kv get`."""
    _, backend = await worker(agent_factory, js_mesh.seeds[1].client_url)
    nc = await nats.connect(js_mesh.seeds[0].client_url)
    live: asyncio.Queue[bytes] = asyncio.Queue()

    async def heard(msg: nats.aio.msg.Msg) -> None:
        live.put_nowait(msg.data)

    try:
        await nc.subscribe("agora.result.cli-1", cb=heard)
        await nc.flush()
        await nc.publish("agora.jobs.work.do", b'{"n": 7}', headers={"Nats-Msg-Id": "cli-1"})
        await nc.publish("agora.jobs.work.do", b'{"task_id": "cli-2", "parameters": {"n": 8}}')
        record = json.loads(await asyncio.wait_for(live.get(), 20))
        assert record["task_id"] == "cli-1" and record["result"] == {"by": "worker", "n": 7}
        kv = await nc.jetstream().key_value("AGORA_RESULTS")
        await wait_until(lambda: backend.started.count("cli-2") == 1, timeout=10)

        async def stored(key: str) -> bool:
            try:
                await kv.get(key)
            except nats.js.errors.KeyNotFoundError:
                return False
            return True

        await wait_until(lambda: stored("cli-2"), timeout=10, interval=0.05)
        assert json.loads((await kv.get("cli-1")).value)["status"] == "COMPLETED"
        await asyncio.sleep(0.2)
        assert live.empty()  # published once, as it was stored
    finally:
        await nc.close()
    assert sorted(backend.started) == ["cli-1", "cli-2"]


async def test_bad_jobs_are_refused_with_a_stored_reason(
        js_mesh: Mesh, agent_factory: AgentFactory, bus_factory: BusFactory) -> None:
    node, backend = await worker(agent_factory, js_mesh.seeds[1].client_url)
    client = await bus_factory(js_mesh.seeds[0].client_url)
    jobs = Jobs(client)
    nc = client.nats
    forger = Identity.generate()
    forged = bytearray(seal(forger, type="task_request", subject="agora.jobs.work.do", to="*",
                            body={"parameters": {"n": 9}}))
    forged[-1] ^= 1  # the signature no longer matches
    sent = {
        "garbage": (b"\x00\x01 not a job", "MalformedEnvelope"),
        "forged": (bytes(forged), "BadSignature"),
        "not-an-object": (b'{"parameters": 5}', "InvalidInput"),
        "wrong-schema": (b'{"n": "seven"}', "InvalidInput"),
    }
    for task_id, (payload, _) in sent.items():
        await nc.publish("agora.jobs.work.do", payload, headers={"Nats-Msg-Id": task_id})
    await nc.publish("agora.jobs.work.do", b'{"task_id": "other", "parameters": {}}',
                     headers={"Nats-Msg-Id": "mismatch"})
    await nc.publish("agora.jobs.work.do", b'{"n": 1}', headers={"Nats-Msg-Id": "a.b c"})
    for task_id, (_, error_type) in sent.items():
        result = await jobs.wait(task_id, timeout=20)
        assert result.status is TaskStatus.FAILED, task_id
        assert (result.error or {}).get("type") == error_type, (task_id, result.error)
    mismatch = await jobs.wait("mismatch", timeout=20)
    assert "differ" in (mismatch.error or {}).get("message", "")
    # An id that cannot be a key is refused and counted; the node goes on serving.
    await wait_until(lambda: node.metrics.jobs["failed"] >= 6, timeout=10)
    assert (await jobs.run("work.do", {"n": 10}, timeout=20)).status is TaskStatus.COMPLETED
    assert len(backend.started) == 1
    assert node.bus.rejections["bad_signature"] >= 1 and node.bus.rejections["malformed"] >= 1


async def test_a_job_is_cancelled_before_it_runs(js_mesh: Mesh, agent_factory: AgentFactory,
                                                 bus_factory: BusFactory) -> None:
    await agent_factory(js_mesh.seeds[0].client_url, "driver", ["echo"])
    client = await bus_factory(js_mesh.seeds[0].client_url)
    jobs = Jobs(client)
    receipt = await jobs.submit("work.do", {"n": 4})
    cancelled = await jobs.cancel(receipt.task_id)
    assert cancelled.status is TaskStatus.FAILED
    assert (cancelled.error or {}).get("type") == "TaskCancelled"
    _, backend = await worker(agent_factory, js_mesh.seeds[1].client_url)
    await wait_until(lambda: _drained(jobs), timeout=20, interval=0.1)
    assert backend.started == []
    assert (await jobs.cancel(receipt.task_id)).error == cancelled.error  # stays cancelled


async def test_a_running_job_is_cancelled_on_the_agent(
        js_mesh: Mesh, agent_factory: AgentFactory, bus_factory: BusFactory) -> None:
    _, backend = await worker(agent_factory, js_mesh.seeds[1].client_url)
    client = await bus_factory(js_mesh.seeds[0].client_url)
    jobs = Jobs(client)
    receipt = await jobs.submit("work.do", {"n": 5, "seconds": 30})
    await wait_until(lambda: backend.started == [receipt.task_id], timeout=10)
    await jobs.cancel(receipt.task_id)
    await wait_until(lambda: _drained(jobs), timeout=20, interval=0.1)
    result = await jobs.result(receipt.task_id)
    assert result is not None and (result.error or {}).get("type") == "TaskCancelled"


async def _drained(jobs: Jobs) -> bool:
    status = await jobs.status()
    return status.queued == 0 and status.running == 0


async def test_submit_without_jetstream_is_a_clear_error(mesh_factory: MeshFactory,
                                                         bus_factory: BusFactory) -> None:
    mesh = await mesh_factory(seeds=1)
    client = await bus_factory(mesh.url)
    with pytest.raises(JetStreamUnavailable, match="no JetStream answers"):
        await Jobs(client).submit("work.do", {}, timeout=2)


async def test_durable_task_ids_are_checked(js_mesh: Mesh, bus_factory: BusFactory) -> None:
    client = await bus_factory(js_mesh.url)
    for bad in ("a.b", "with space", "x" * 129, "*", "tab\tid"):
        with pytest.raises(InvalidTask, match="durable task id"):
            await Jobs(client).submit("work.do", {}, task_id=bad)


async def test_a_full_store_refuses_a_job_clearly(mesh_factory: MeshFactory, tmp_path: Path,
                                                  bus_factory: BusFactory) -> None:
    mesh = await mesh_factory(seeds=1, template=js_template(tmp_path / "full"))
    client = await bus_factory(mesh.url)
    jobs = Jobs(client, JobsConfig(max_bytes=1024 * 1024))
    stored = 0
    with pytest.raises(StoreFull, match="maximum bytes"):
        for n in range(20):
            await jobs.submit("work.do", {"blob": "x" * 200_000, "n": n}, timeout=5)
            stored += 1
    assert 3 <= stored < 20
    status = await jobs.status(limit=0)
    assert status.queued == stored  # nothing was dropped to make room


# Every server dies at once: nats-py's clients reconnect with asyncio.wait_for(
# open_connection(...)), which on Python 3.11 can lose a connection that completes as its
# timeout fires (CPython gh-86296, fixed in 3.12); its writer is then collected unclosed.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_queued_jobs_survive_a_whole_mesh_restart(tmp_path: Path, agent_factory: AgentFactory
                                                        ) -> None:
    base = tmp_path / "persistent"
    template = js_template(base)
    mesh = await Mesh.launch(base, seeds=3, template=template)
    pids = [server.pid for server in mesh.servers]
    try:
        async with Bus(Identity.generate(), BusConfig(servers=(mesh.url,))) as bus:
            jobs = Jobs(bus, JobsConfig(replicas=3))
            ids = [(await jobs.submit("work.do", {"n": n})).task_id for n in range(5)]
    finally:
        await mesh.stop()
    mesh = await Mesh.launch(base, seeds=3, template=template)
    pids += [server.pid for server in mesh.servers]
    try:
        _, backend = await worker(agent_factory, mesh.seeds[1].client_url)
        async with Bus(Identity.generate(), BusConfig(servers=(mesh.seeds[2].client_url,))) as bus:
            jobs = Jobs(bus)
            results = [await jobs.wait(task_id, timeout=30) for task_id in ids]
        assert [r.result["n"] for r in results] == list(range(5))  # type: ignore[index]
        assert sorted(backend.started) == sorted(ids)
    finally:
        await mesh.stop()
    assert_stopped(pids)


async def test_an_agent_answers_a_task_it_holds_from_that_run(
        js_mesh: Mesh, agent_factory: AgentFactory, bus_factory: BusFactory) -> None:
    """Asked again for a task id it runs, or has run, an agent does not run it twice."""
    node, backend = await worker(agent_factory, js_mesh.seeds[1].client_url)
    client = await bus_factory(js_mesh.seeds[0].client_url)
    task = Task(capability="work.do", parameters={"n": 6, "seconds": 0.3}, task_id="held-1")
    both = await asyncio.gather(
        submit_task(client, task, timeout=10, agent_id=node.agent_id),
        submit_task(client, task, timeout=10, agent_id=node.agent_id))
    again = await submit_task(client, task, timeout=10, agent_id=node.agent_id)
    assert [r.result for r in (*both, again)] == [{"by": "worker", "n": 6}] * 3
    assert backend.started == ["held-1"]
    assert node.metrics.answered_from_memory == 2
    other = Task(capability="work.do", parameters={"n": 7}, task_id="held-1")
    refused = await submit_task(client, other, timeout=10, agent_id=node.agent_id)
    assert refused.status is TaskStatus.FAILED
    assert "was used here for another task" in (refused.error or {}).get("message", "")


async def test_a_result_stored_while_the_auction_waited_stops_its_award(
        js_mesh: Mesh, agent_factory: AgentFactory, bus_factory: BusFactory) -> None:
    """The "has it a result?" answer read as the job arrived does not stand for an award
    long after (every bidder was busy; the driver was paused): it is asked again, and a
    result stored meanwhile by another run of the job means no second run."""
    node, backend = await worker(agent_factory, js_mesh.seeds[1].client_url,
                                 max_concurrent_tasks=1)
    client = await bus_factory(js_mesh.seeds[0].client_url)
    busy = asyncio.ensure_future(submit_task(client, Task(
        capability="work.do", parameters={"n": 0, "seconds": 2.5}, task_id="busy"),
        timeout=10, agent_id=node.agent_id))
    await wait_until(lambda: backend.started == ["busy"], timeout=5)
    jobs = Jobs(client)
    receipt = await jobs.submit("work.do", {"n": 8})
    await wait_until(lambda: node.metrics.jobs["taken"] == 1, timeout=5)
    await asyncio.sleep(1.2)  # its auction calls again and again: the one bidder is busy
    elsewhere = TaskResult(task_id=receipt.task_id, status=TaskStatus.COMPLETED,
                           result={"by": "elsewhere", "n": 8}, agent_id="another")
    assert await jobs.store.save(elsewhere, stored_by="another driver")
    assert (await busy).status is TaskStatus.COMPLETED
    await wait_until(lambda: node.metrics.jobs["deduplicated"] == 1, timeout=10)
    assert backend.started == ["busy"]
    assert (await jobs.result(receipt.task_id)) == elsewhere


async def test_a_first_seed_whose_picked_cluster_port_was_taken_picks_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first seed of a clustered JetStream routes to itself on a port picked before
    the server binds it; another process taking it meanwhile costs a second pick."""
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    picks: list[int] = []
    original = EmbeddedServer._self_route

    def first_pick_taken(server: EmbeddedServer) -> str | None:
        if not picks:
            server.config = replace(server.config, cluster_port=taken)
        route = original(server)
        picks.append(server.config.cluster_port)
        return route

    monkeypatch.setattr(EmbeddedServer, "_self_route", first_pick_taken)
    config = replace(js_template(tmp_path / "js"), name="seed0", data_dir=tmp_path / "seed0",
                     role=ServerRole.SEED)
    try:
        async with EmbeddedServer(config) as server:
            assert picks[0] == taken and picks[1] != taken
            assert server.cluster_address.endswith(f":{picks[1]}")
            assert "address already in use" in server.log_path.read_text()
    finally:
        squatter.close()


async def test_a_job_read_after_a_pause_about_as_long_as_ack_wait_is_left_to_jetstream(
        mesh_factory: MeshFactory, agent_factory: AgentFactory, bus_factory: BusFactory,
        tmp_path: Path) -> None:
    """A job that waited in a paused node's socket (here: the event loop held, as SIGSTOP
    would) may have been delivered to another node meanwhile: read after the pause, it is
    left to JetStream (no ack), which delivers it again once ack_wait has passed. It runs
    once, and its result is stored."""
    mesh = await mesh_factory(seeds=1, template=js_template(tmp_path / "js"))
    client = await bus_factory(mesh.url)
    await JetStream(client, JobsConfig(ack_wait=1.0, replicas=1)).ensure()
    node, backend = await worker(agent_factory, mesh.url)
    jobs = Jobs(client)
    warm = await jobs.run("work.do", {"n": 1}, timeout=10)  # the node is taking jobs
    assert warm.status is TaskStatus.COMPLETED
    receipt = await jobs.submit("work.do", {"n": 2})
    time.sleep(1.5)  # noqa: ASYNC251 - this whole process stops, the node's worker too
    result = await jobs.wait(receipt.task_id, timeout=20)
    assert result.result == {"by": "worker", "n": 2}
    assert node.metrics.jobs["abandoned"] >= 1
    assert backend.started.count(receipt.task_id) == 1
