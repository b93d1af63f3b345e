"""Auctions across processes: a SIGKILLed winner, ``agoramesh submit``, ``nats req agora.task``."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from nats.aio.client import Client as NatsClient

from agoramesh.bus.envelope import AUTH_SIG, parse
from agoramesh.config import BusConfig
from agoramesh.nodes.task import Task, TaskStatus
from agoramesh.protocols.allocation.dispatch import client_dispatcher
from agoramesh.protocols.auction.policy import AuctionPolicy, Progress
from agoramesh.testing import NodeProcess, UpProcess
from agoramesh.testing.raw import flush
from agoramesh.testing.up import AGORAMESH

pytestmark = pytest.mark.e2e


@pytest.fixture
def workers(tmp_path: Path, nats_server: Any) -> Iterator[dict[str, NodeProcess]]:
    """Two ``agoramesh node`` processes offering code.run.python, by name."""
    started: dict[str, NodeProcess] = {}
    try:
        for name in ("left", "right"):
            started[name] = NodeProcess(
                tmp_path / name, "--name", name, "--connect", nats_server.client_url,
                "--heartbeat", "0.2", "--capability", "code.run.python",
                env={"TMPDIR": str(tmp_path)})
        yield started
    finally:
        for node in started.values():
            node.reap()


@pytest.mark.integration
async def test_sigkill_of_the_winner_mid_task_completes_elsewhere_with_one_result(
        nats_server: Any, workers: dict[str, NodeProcess]) -> None:
    by_id = {node.id: node for node in workers.values()}
    config = BusConfig(servers=(nats_server.client_url,), name="client")
    async with client_dispatcher(config, discover_timeout=0.3) as dispatcher:
        assert {card.name for card in dispatcher.agents()} == {"left", "right"}
        dispatcher.auctioneer.policy = AuctionPolicy(lease_interval=0.25, missed_leases=4,
                                                      bid_window=5)
        events: list[Progress] = []
        killed: list[str] = []

        def watch(event: Progress) -> None:
            events.append(event)
            if event.event == "accepted" and not killed:  # the winner is working: kill it
                killed.append(event.detail["agent"])
                by_id[event.detail["agent"]].process.send_signal(signal.SIGKILL)

        code = "import time; time.sleep(1.0); print('finished')"
        task = Task(capability="code.run.python", parameters={"code": code, "timeout": 5})
        outcome = await dispatcher.auctioneer.run(task, timeout=20, progress=watch)
    assert killed and outcome.winner != killed[0]
    assert outcome.result.status is TaskStatus.COMPLETED
    assert outcome.result.result["stdout"] == "finished\n"
    assert outcome.attempts == 2 and outcome.duplicates == 0
    assert [e.detail["agent"] for e in events if e.event == "lost"] == killed
    assert sum(e.event == "result" for e in events) == 1  # exactly one result reached us
    by_id[killed[0]].stop(signal.SIGKILL, timeout=10)


# --- agoramesh submit and nats req against `agoramesh up` -------------------------------------

def submit(up: UpProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*AGORAMESH, "submit", "--server", up.url, *args],
                          capture_output=True, text=True, timeout=60, check=False)


def test_submit_auctions_and_shows_progress(up_mesh: UpProcess) -> None:
    done = submit(up_mesh, "math.evaluate", '{"expression": "6*7"}')
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"value": 42}
    progress = done.stderr.splitlines()
    # The analyst alone offers math.evaluate: awarded directly, no call for proposals.
    assert progress[0].startswith("… awarded directly to analyst ("), progress
    assert "the one capable agent known (no call for proposals)" in progress[0]
    assert progress[-1].startswith("… result from analyst") and "COMPLETED" in progress[-1]
    # vote is offered by two agents (pro, con): a call for proposals, bids, an award.
    done = submit(up_mesh, "vote", '{"question": "tea or coffee", "options": ["tea", "coffee"]}')
    assert done.returncode == 0, done.stderr
    progress = done.stderr.splitlines()
    assert progress[0].startswith("… call for proposals #1: "), progress
    assert progress[1].startswith("… ") and " bid(s) from " in progress[1]
    assert any(line.startswith("… awarded to ") for line in progress)


def test_submit_direct_and_json(up_mesh: UpProcess) -> None:
    done = submit(up_mesh, "echo", '{"text": "hi"}', "--strategy", "direct", "--json")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["status"] == "COMPLETED" and answer["result"] == {"echo": {"text": "hi"}}
    assert done.stderr == ""


@pytest.mark.parametrize(("args", "pattern"), [
    (("math.evaluate", "{not json"), r"parameters is not valid JSON"),
    (("math.evaluate", "[1, 2]"), r"parameters must be a JSON object, not list"),
    (("no.such.skill", "{}", "--quiet"), r"no agent offers no.such.skill"),
    (("math.evaluate", '{"expression": 3}', "--quiet"),
     r"task failed: InvalidInput: math.evaluate: parameters.expression: 3 is not of type"),
    (("bad..capability", "{}"), r"capability"),
])
def test_submit_errors_are_one_line(up_mesh: UpProcess, args: tuple[str, ...],
                                    pattern: str) -> None:
    done = submit(up_mesh, *args)
    assert done.returncode == 1, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("agoramesh: error: "), done.stderr
    assert re.search(pattern, lines[0]), lines[0]


async def test_submit_with_a_callback_publishes_the_result_there(up_mesh: UpProcess) -> None:
    """``nats sub results.cli`` sees the result of ``submit --callback results.cli``."""
    client = NatsClient()
    await client.connect(up_mesh.url, connect_timeout=2, allow_reconnect=False)
    try:
        heard = await client.subscribe("results.cli")
        await flush(client)
        done = await asyncio.to_thread(submit, up_mesh, "echo", '{"text": "back"}', "--json",
                                       "--callback", "results.cli")
        assert done.returncode == 0, done.stderr
        published = parse((await heard.next_msg(timeout=5)).data)
    finally:
        await client.close()
    assert published.type == "task_response" and published.auth == AUTH_SIG
    assert published.body == json.loads(done.stdout)
    refused = submit(up_mesh, "echo", "{}", "--callback", "results.>")
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1
    assert refused.stderr.startswith("agoramesh: error: callback 'results.>' is not a subject")


async def test_nats_req_on_agora_task_gets_the_negotiated_result(up_mesh: UpProcess) -> None:
    """What ``nats req agora.task.text.debate '{...}'`` does: plain JSON in, JSON out."""
    client = NatsClient()
    await client.connect(up_mesh.url, connect_timeout=2, allow_reconnect=False)
    try:
        payload = json.dumps({"topic": "remote work", "position": "against"}).encode()
        answers = [json.loads((await client.request("agora.task.text.debate", payload,
                                                    timeout=5)).data) for _ in range(4)]
    finally:
        await client.close()
    assert all(a["status"] == "COMPLETED" and a["result"]["stance"] == "against"
               for a in answers)
    assert all(a["agent_id"].startswith("U") and len(a["agent_id"]) == 56 for a in answers)


async def test_http_api_of_a_node_runs_a_debate_for_a_real_http_client(up_mesh: UpProcess) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        async with http.get(f"{up_mesh.http}/api/agents") as response:
            assert response.status == 200
            names = {agent["name"] for agent in (await response.json())["agents"]}
        assert names == {"coder", "runner", "analyst", "pro", "con"}
        request = {"mode": "debate", "topic": "four-day work week", "agents": ["pro", "con"],
                   "rounds": 2, "requirements": {}}
        async with http.post(f"{up_mesh.http}/api/collaborate", json=request) as response:
            assert response.status == 200
            debate = await response.json()
        async with http.post(f"{up_mesh.http}/api/collaborate", data=b"{oops",
                             headers={"Content-Type": "application/json"}) as response:
            assert response.status == 400
            assert (await response.json())["error"]["type"] == "InvalidRequest"
    assert [(turn["round"], turn["agent"], turn["position"]) for turn in debate[
        "debate_history"]] == [(1, "pro", "for"), (1, "con", "against"),
                               (2, "pro", "for"), (2, "con", "against")]
    assert debate["consensus"]["position"] in ("for", "against")
