"""Capability access control at the agent (M-4.2): the policy, its loader, and real nodes."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from nats.aio.client import Client as NatsClient

from agoramesh.agent import AgentNode
from agoramesh.bus.bus import Bus
from agoramesh.bus.envelope import seal
from agoramesh.bus.identity import Identity
from agoramesh.bus.server import EmbeddedServer
from agoramesh.errors import (
    AccessDenied,
    AgoraError,
    AuctionFailed,
    ConfigError,
    NoBidders,
    RejectReason,
    error_from_wire,
    error_to_wire,
)
from agoramesh.monitoring.metrics import MeshCollector
from agoramesh.nodes.catalog import capabilities_for
from agoramesh.nodes.client import cancel_task, submit_task
from agoramesh.nodes.node import NodeConfig
from agoramesh.nodes.task import Task, TaskResult, TaskStatus
from agoramesh.security import acl
from agoramesh.security.acl import (
    JSON_PRINCIPAL,
    AccessPolicy,
    Action,
    Default,
    load_policy,
)
from agoramesh.testing import AGORAMESH, NodeProcess, wait_until
from agoramesh.testing.plugin import AgentFactory, BusFactory

ROOT = Path(__file__).resolve().parents[2]
ALICE, BOB, CAROL = (Identity.generate() for _ in range(3))
A, B, C = ALICE.agent_id, BOB.agent_id, CAROL.agent_id


def policy(**raw: Any) -> AccessPolicy:
    return AccessPolicy.from_mapping(raw)


def allowed(p: AccessPolicy, principal: str, resource: str, *actions: Action) -> bool:
    return all(p.allows(principal, resource, action) for action in actions or tuple(Action))


# -- semantics -----------------------------------------------------------------------


def test_the_default_policy_allows_everything() -> None:
    open_policy = AccessPolicy()
    assert open_policy.is_open and AccessPolicy.from_mapping(None).is_open
    assert NodeConfig(name="x", capabilities=capabilities_for("offline", ["echo"])
                      ).access.is_open
    for principal in (A, JSON_PRINCIPAL):
        assert allowed(open_policy, principal, "code.run.python")
    assert not open_policy._cache  # nothing to decide, nothing cached


def test_default_deny_with_nothing_else_denies_everything() -> None:
    closed = policy(default="deny")
    assert not closed.is_open
    assert closed.decide(A, "echo", Action.EXECUTE) == (
        "no ACL entry covers echo and the default is deny")
    assert not allowed(closed, JSON_PRINCIPAL, "echo", Action.EXECUTE)


def test_an_acl_entry_closes_its_resources_to_everyone_else() -> None:
    p = policy(acl={"code.>": {A: ["execute", "cancel"], "*": "bid"}})
    assert allowed(p, A, "code.run.python", Action.EXECUTE, Action.CANCEL, Action.BID)
    assert not allowed(p, A, "code.run.python", Action.SUBMIT)
    assert allowed(p, B, "code.review.python", Action.BID)
    assert p.decide(B, "code.review.python", Action.EXECUTE) == (
        f"the ACL of code.review.python does not give execute to {B}")
    # "*" is every signed agent, never plain JSON; uncovered resources stay open.
    assert not allowed(p, JSON_PRINCIPAL, "code.run.python", Action.BID)
    assert allowed(p, B, "echo") and allowed(p, JSON_PRINCIPAL, "echo")
    assert allowed(p, B, "code")  # ">" needs at least one more token, as in NATS


def test_wildcards_match_as_nats_subjects_do() -> None:
    p = policy(acl={"code.*": {A: "*"}, "text.*.python": {A: "*"}})
    assert not allowed(p, B, "code.review", Action.EXECUTE)
    assert allowed(p, B, "code.review.python", Action.EXECUTE)  # "*" is one token only
    assert not allowed(p, B, "text.lint.python", Action.EXECUTE)
    assert allowed(p, B, "text.lint.rust", Action.EXECUTE)


def test_entries_covering_a_resource_add_up() -> None:
    p = policy(acl={"code.>": {A: ["execute"]}, "code.run.python": {B: ["execute"]}})
    assert allowed(p, A, "code.run.python", Action.EXECUTE)
    assert allowed(p, B, "code.run.python", Action.EXECUTE)
    assert not allowed(p, B, "code.review.python", Action.EXECUTE)


def test_grants_confine_the_principals_they_name() -> None:
    p = policy(grants={A: ["code.review.*:execute", "echo:*"], "*": ["math.evaluate:execute"]})
    assert allowed(p, A, "code.review.python", Action.EXECUTE)
    assert not allowed(p, A, "code.review.python", Action.BID)
    assert allowed(p, A, "echo")
    assert allowed(p, A, "math.evaluate", Action.EXECUTE)  # A holds its own and "*"'s grants
    assert allowed(p, B, "math.evaluate", Action.EXECUTE)
    assert p.decide(B, "echo", Action.EXECUTE) == (
        f"no echo:execute permission is granted to {B}")
    assert allowed(p, JSON_PRINCIPAL, "echo")  # json is not named: the default allows


def test_an_empty_grant_list_bans_and_an_empty_acl_entry_locks() -> None:
    p = policy(acl={"code.run.python": {}}, grants={C: []})
    assert not allowed(p, A, "code.run.python", Action.EXECUTE)
    assert not allowed(p, C, "echo", Action.EXECUTE)
    assert allowed(p, A, "echo")


def test_under_default_deny_a_request_needs_the_acl_and_a_grant() -> None:
    p = policy(default="deny", acl={"echo": {"*": ["*"]}, "code.>": {A: ["*"]}},
               grants={A: ["admin"], B: ["code.>:execute"], "*": ["echo:execute"]})
    assert allowed(p, A, "code.run.python")
    assert allowed(p, A, "echo")  # admin holds every permission
    assert allowed(p, B, "echo", Action.EXECUTE)
    assert not allowed(p, B, "echo", Action.BID)
    # B holds code.>:execute, but the ACL of code.> names only A.
    assert p.decide(B, "code.run.python", Action.EXECUTE) == (
        f"the ACL of code.run.python does not give execute to {B}")
    # admin is a grant, not a way past the ACL; and nothing covered means deny.
    assert not allowed(p, A, "text.summarize", Action.EXECUTE)
    assert p.decide(JSON_PRINCIPAL, "echo", Action.EXECUTE) == (
        "the ACL of echo does not give execute to plain-JSON requests")


def test_the_json_principal_is_named_only_by_json() -> None:
    p = policy(default="deny", acl={"echo": {"json": ["execute"], "*": ["*"]}},
               grants={"json": ["echo:execute"], "*": ["echo:*"]})
    assert allowed(p, JSON_PRINCIPAL, "echo", Action.EXECUTE)
    assert not allowed(p, JSON_PRINCIPAL, "echo", Action.SUBMIT)
    assert p.decide(JSON_PRINCIPAL, "math.evaluate", Action.EXECUTE) == (
        "no ACL entry covers math.evaluate and the default is deny")
    assert allowed(p, A, "echo")


def test_decisions_are_cached_and_the_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    p = policy(acl={"echo": {A: ["execute"]}})
    assert p.decide(B, "echo", Action.EXECUTE) is p.decide(B, "echo", Action.EXECUTE)
    assert (B, "echo", Action.EXECUTE) in p._cache
    monkeypatch.setattr(acl, "_CACHE_SIZE", 10)
    for _ in range(25):
        p.decide(Identity.generate().agent_id, "echo", Action.EXECUTE)
    assert len(p._cache) <= 10


def test_a_policy_round_trips_through_its_mapping() -> None:
    p = policy(default="deny", acl={"code.>": {A: ["*"], "json": ["execute", "submit"]}},
               grants={A: ["admin", "echo:bid"], "*": ["code.>:*"], "json": []})
    assert p.default is Default.DENY
    again = AccessPolicy.from_mapping(json.loads(json.dumps(p.as_dict())))
    assert again == p


def test_access_denied_crosses_the_wire() -> None:
    error = error_from_wire(error_to_wire(AccessDenied("agent x refuses bid on echo")))
    assert type(error) is AccessDenied and str(error) == "agent x refuses bid on echo"
    assert isinstance(error, PermissionError) and isinstance(error, AgoraError)


# -- loading -------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "message"), [
    ([], "an access policy must be a mapping"),
    ({"grant": {}}, "unknown key 'grant'; did you mean grants?"),
    ({"defualt": "deny"}, "did you mean default?"),
    ({"default": "nope"}, "default must be allow or deny, got 'nope'"),
    ({"acl": ["echo"]}, "acl must be a mapping, got list"),
    ({"acl": {"code..x": {}}}, "acl: invalid capability pattern 'code..x'"),
    ({"acl": {"code.>.x": {}}}, "invalid capability pattern"),
    ({"acl": {"echo": ["execute"]}}, "acl.echo must map principals to actions"),
    ({"acl": {"echo": {"bob": ["execute"]}}}, "'bob' is not a principal"),
    ({"acl": {"echo": {"JSON": ["execute"]}}}, "did you mean json?"),
    ({"acl": {"echo": {A[:-1] + ("A" if A[-1] != "A" else "B"): "*"}}}, "is not a principal"),
    ({"acl": {"echo": {"*": ["exectue"]}}}, "acl.echo.*: unknown action 'exectue'; did you "
                                            "mean execute?"),
    ({"acl": {"echo": {"*": {"execute": True}}}}, "acl.echo.* must be a list, got dict"),
    ({"grants": {"*": ["admim"]}}, "grants.*: 'admim' must be resource:action"),
    ({"grants": {"*": ["echo:run"]}}, "grants.*: unknown action 'run'"),
    ({"grants": {"*": ["echo execute"]}}, "must be resource:action"),
    ({"grants": {"*": ["co de:bid"]}}, "grants.*: invalid capability pattern 'co de'"),
    ({"grants": {"*": [3]}}, "3 must be resource:action"),
    ({"grants": {"alice": ["admin"]}}, "grants: 'alice' is not a principal"),
])
def test_a_bad_policy_is_a_one_line_config_error(raw: Any, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        AccessPolicy.from_mapping(raw)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_policies_load_from_yaml_and_json_files(tmp_path: Path) -> None:
    as_yaml = tmp_path / "acl.yaml"
    as_yaml.write_text(f'default: deny\nacl:\n  echo:\n    "*": [execute]\n'
                       f'grants:\n  "*": ["echo:execute"]\n  {A}: [admin]\n')
    as_json = tmp_path / "acl.json"
    as_json.write_text(json.dumps(load_policy(as_yaml).as_dict()))
    for file in (as_yaml, as_json):
        loaded = load_policy(file)
        assert allowed(loaded, B, "echo", Action.EXECUTE)
        assert not allowed(loaded, B, "echo", Action.BID)
    assert load_policy(as_json) == load_policy(as_yaml)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_policy(empty).is_open


@pytest.mark.parametrize(("name", "text", "message"), [
    ("missing.yaml", None, "cannot read access policy"),
    ("bad.yaml", "acl: [unclosed\n", "is not valid YAML at line 2"),
    ("bad.json", '{"acl": ', "is not valid JSON at line 1"),
    ("typo.yaml", "default: deny\ngrnats: {}\n", "typo.yaml: unknown key 'grnats'; did you "
                                                  "mean grants?"),
    ("star.yaml", "acl:\n  echo:\n    *: [bid]\n", "is not valid YAML"),
])
def test_unusable_policy_files_name_the_file(tmp_path: Path, name: str, text: str | None,
                                             message: str) -> None:
    file = tmp_path / name
    if text is not None:
        file.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_policy(file)


def test_the_example_policies_load() -> None:
    example = load_policy(ROOT / "examples" / "acl.yaml")
    operator = "UCD4XW7Z2RHJYFGPO74H2I77XKSAQSTDLDZPTIMCCZG7JOLLME2YI54U"
    assert allowed(example, operator, "code.run.python")
    assert not allowed(example, A, "code.run.python", Action.EXECUTE)
    assert allowed(example, JSON_PRINCIPAL, "echo", Action.EXECUTE)
    assert not allowed(example, JSON_PRINCIPAL, "echo", Action.SUBMIT)
    # The policy in docs/SECURITY.md, under its heading.
    text = (ROOT / "docs" / "SECURITY.md").read_text(encoding="utf-8")
    section = text.split("## Capability access control (at the agent)", 1)[1].split("\n## ")[0]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block is not None
    documented = AccessPolicy.from_mapping(yaml.safe_load(block.group(1)))
    assert allowed(documented, operator, "code.run.python")
    assert allowed(documented, A, "echo") and not allowed(documented, A, "code.run.python")
    assert allowed(documented, JSON_PRINCIPAL, "echo", Action.EXECUTE)


# -- real nodes ----------------------------------------------------------------------


def denials(node: AgentNode) -> dict[tuple[str, str], float]:
    """``agoramesh_access_denied_total`` as the node's Prometheus collector exports it."""
    collector = MeshCollector()
    collector.add_agent(node)
    found: dict[tuple[str, str], float] = {}
    for family in collector.collect():
        for sample in family.samples:
            if sample.name == "agoramesh_access_denied_total":
                assert sample.labels["agent"] == node.config.name
                found[sample.labels["capability"], sample.labels["action"]] = sample.value
    return found


ECHO = {"text": "hi"}


@pytest.mark.integration
async def test_a_denied_agent_gets_access_denied_and_the_node_keeps_serving(
        nats_server: EmbeddedServer, agent_factory: AgentFactory,
        bus_factory: BusFactory) -> None:
    url = nats_server.client_url
    guarded = await agent_factory(url, "guarded", ["echo", "math.evaluate"], access=policy(
        acl={"echo": {A: ["execute"]}}, grants={"json": ["math.evaluate:execute"]}))
    alice, bob = await bus_factory(url, identity=ALICE), await bus_factory(url, identity=BOB)

    with pytest.raises(AccessDenied, match=re.escape(
            f"agent guarded refuses execute on echo: the ACL of echo does not give execute "
            f"to {B}")):
        await submit_task(bob, Task(capability="echo", parameters=ECHO), timeout=5)
    with pytest.raises(AccessDenied):  # the same on its direct subject
        await submit_task(bob, Task(capability="echo", parameters=ECHO), timeout=5,
                          agent_id=guarded.agent_id)

    ok = await submit_task(alice, Task(capability="echo", parameters=ECHO), timeout=5)
    assert ok.status is TaskStatus.COMPLETED and ok.agent_id == guarded.agent_id
    also = await submit_task(bob, Task(capability="math.evaluate",
                                       parameters={"expression": "6*7"}), timeout=5)
    assert also.status is TaskStatus.COMPLETED  # echo's ACL does not cover math.evaluate

    assert denials(guarded) == {("echo", "execute"): 2}
    assert guarded.presence.telemetry()["denied"] == {"execute": 2}
    assert guarded.metrics.tasks["echo", "completed"] == 1
    assert sum(guarded.metrics.tasks.values()) == 2  # denied requests are not tasks
    assert guarded.status.state == "ready"


@pytest.mark.integration
async def test_plain_json_requests_get_a_json_error(nats_server: EmbeddedServer,
                                                    agent_factory: AgentFactory) -> None:
    guarded = await agent_factory(nats_server.client_url, "guarded", ["echo", "math.evaluate"],
                                  access=policy(grants={"json": ["math.evaluate:*"]}))
    raw = NatsClient()
    await raw.connect(nats_server.client_url, allow_reconnect=False)
    try:
        denied = json.loads((await raw.request("agora.cap.echo", b'{"text": "hi"}',
                                                timeout=5)).data)
        assert denied == {"error": {
            "type": "AccessDenied",
            "message": "agent guarded refuses execute on echo: no echo:execute permission "
                       "is granted to plain-JSON requests"}}
        served = json.loads((await raw.request("agora.cap.math.evaluate",
                                                b'{"expression": "6*7"}', timeout=5)).data)
        assert served["status"] == "COMPLETED" and served["result"]["value"] == 42
        submitted = json.loads((await raw.request("agora.task.echo", b'{"text": "hi"}',
                                                   timeout=5)).data)
        assert submitted["error"]["type"] == "AccessDenied"
        assert "refuses submit on echo" in submitted["error"]["message"]
    finally:
        await raw.close()
    assert denials(guarded) == {("echo", "execute"): 1, ("echo", "submit"): 1}


@pytest.mark.integration
async def test_a_denied_requester_gets_no_bid_and_another_agent_wins(
        nats_server: EmbeddedServer, agent_factory: AgentFactory) -> None:
    url = nats_server.client_url
    boss = await agent_factory(url, "boss", ["text.summarize"], identity=ALICE)
    friend = await agent_factory(url, "friend", ["text.summarize"], identity=CAROL,
                                 directory=boss.directory)
    guarded = await agent_factory(url, "guarded", ["echo"], access=policy(
        acl={"echo": {C: ["*"]}}))
    other = await agent_factory(url, "other", ["echo"])
    await wait_until(lambda: {guarded.agent_id, other.agent_id} <= set(
        boss.directory.capable("echo")), timeout=5)

    for _ in range(3):
        result = await boss.dispatcher.submit("echo", ECHO, timeout=5)
        assert result.status is TaskStatus.COMPLETED and result.agent_id == other.agent_id
    assert guarded.metrics.bids["echo", "refuse"] == 3
    assert guarded.metrics.bids["echo", "bid"] == 0
    with pytest.raises(NoBidders):  # the guarded agent alone: it refuses, nobody bids
        await boss.dispatcher.submit("echo", ECHO, timeout=5, exclude=[other.agent_id])
    # Known alone, it was awarded directly first: declined for the bid it may not make
    # (denied before anything is run), then the cfp that followed refused.
    assert denials(guarded) == {("echo", "bid"): 5}
    assert guarded.metrics.awards["echo", "decline"] == 1

    # An allowed requester's auction: the guarded agent bids, wins and runs it.
    won = await friend.dispatcher.submit("echo", ECHO, timeout=5, exclude=[other.agent_id])
    assert won.status is TaskStatus.COMPLETED and won.agent_id == guarded.agent_id
    assert guarded.metrics.awards["echo", "accept"] == 1
    assert denials(guarded) == {("echo", "bid"): 5}


@pytest.mark.integration
async def test_an_award_the_policy_denies_is_declined_with_the_reason(
        nats_server: EmbeddedServer, agent_factory: AgentFactory) -> None:
    url = nats_server.client_url
    boss = await agent_factory(url, "boss", ["text.summarize"], identity=ALICE)
    guarded = await agent_factory(url, "guarded", ["echo"], access=policy(
        acl={"echo": {A: ["bid"]}}))  # may ask for a bid, may not have the task run
    await wait_until(lambda: guarded.agent_id in boss.directory.capable("echo"), timeout=5)
    seen: list[Any] = []
    with pytest.raises(AuctionFailed, match="all 1 bidders declined"):
        await boss.dispatcher.submit("echo", ECHO, timeout=5, progress=seen.append)
    declined = [event for event in seen if event.event == "declined"]
    assert declined and "refuses execute on echo" in json.dumps(declined[0].detail)
    # Declined twice: the direct award (it is the one agent known), then the cfp's award.
    assert [event.detail.get("direct") for event in seen if event.event == "award"] == [
        True, None]
    assert guarded.metrics.awards["echo", "decline"] == 2
    assert denials(guarded) == {("echo", "execute"): 2}


@pytest.mark.integration
async def test_a_forged_cfp_in_an_allowed_agents_name_gets_no_bid(
        nats_server: EmbeddedServer, agent_factory: AgentFactory,
        bus_factory: BusFactory) -> None:
    url = nats_server.client_url
    guarded = await agent_factory(url, "guarded", ["echo"], access=policy(
        acl={"echo": {A: ["*"]}}))
    mallory: Bus = await bus_factory(url, identity=BOB)
    body = {"auction_id": "forged", "task": {"task_type": "echo", "parameters": ECHO},
            "terms": {}, "exclude": [], "bidders": 1}
    # Mallory claims Alice's id on a cfp she signs herself: the signature cannot match.
    # (It names the inbox it is sent with, so only its signature is wrong.)
    inbox = mallory.nats.new_inbox()
    wire = bytearray(seal(ALICE, type="cfp", subject="agora.cfp.echo", body=body, reply=inbox))
    forged = seal(BOB, type="cfp", subject="agora.cfp.echo", body=body, reply=inbox)
    wire[-64:] = forged[-64:]
    answers: asyncio.Queue[bytes] = asyncio.Queue()

    async def collect(msg: Any) -> None:
        answers.put_nowait(msg.data)

    await mallory.nats.subscribe(inbox, cb=collect)
    await mallory.nats.publish("agora.cfp.echo", bytes(wire), reply=inbox)
    await wait_until(lambda: guarded.bus.rejections[RejectReason.BAD_SIGNATURE] == 1,
                     timeout=5)
    assert answers.empty() and guarded.metrics.bids.total() == 0


@pytest.mark.integration
async def test_submit_and_cancel_are_checked(nats_server: EmbeddedServer,
                                             agent_factory: AgentFactory,
                                             bus_factory: BusFactory) -> None:
    url = nats_server.client_url
    node = await agent_factory(url, "runner", ["code.run.python", "echo"], access=policy(
        acl={"code.run.python": {"*": ["execute"], A: ["cancel"]},
             "echo": {A: ["submit"], "*": ["bid", "execute"]}}))
    alice, bob = await bus_factory(url, identity=ALICE), await bus_factory(url, identity=BOB)

    with pytest.raises(AccessDenied, match="refuses submit on echo"):
        await bob.request("agora.task.echo", "task_request", ECHO, timeout=5)
    reply = await alice.request("agora.task.echo", "task_request", ECHO, timeout=5)
    assert reply.body["status"] == "COMPLETED"  # the node auctions as itself: it may bid

    async def started(owner: Bus, seconds: float) -> tuple[Task, asyncio.Future[TaskResult]]:
        task = Task(capability="code.run.python",
                    parameters={"code": f"import time; time.sleep({seconds})", "timeout": 10})
        running = asyncio.ensure_future(submit_task(owner, task, timeout=10))
        await wait_until(lambda: task.task_id in node.running_tasks, timeout=5)
        return task, running

    task, running = await started(bob, 1.0)
    with pytest.raises(AccessDenied, match=r"refuses cancel on code\.run\.python"):
        await cancel_task(bob, node.agent_id, task.task_id)
    assert (await running).status is TaskStatus.COMPLETED  # not cancelled

    task, running = await started(alice, 10.0)
    assert await cancel_task(alice, node.agent_id, task.task_id)
    result = await running
    assert result.status is TaskStatus.FAILED
    assert result.error and result.error["type"] == "TaskCancelled"
    assert denials(node) == {("echo", "submit"): 1, ("code.run.python", "cancel"): 1}


# -- the CLI -------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.parametrize("command", ["node", "up"])
def test_a_bad_policy_file_is_a_one_line_error(tmp_path: Path, command: str) -> None:
    bad = tmp_path / "acl.yaml"
    bad.write_text("default: deny\nacl:\n  echo:\n    \"*\": [exectue]\n")
    args = ["--name", "x"] if command == "node" else ["--no-agents"]
    done = subprocess.run([*AGORAMESH, command, *args, "--acl", str(bad)],
                          env={**os.environ, "AGORAMESH_HOME": str(tmp_path / "home")},
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"agoramesh: error: {bad}: acl.echo.*: unknown action 'exectue'; did you mean "
        f"execute? (actions: execute, bid, submit, cancel, or * for all)"]
    assert not (tmp_path / "home" / "nodes").exists()  # nothing was started


@pytest.mark.e2e
async def test_agoramesh_node_enforces_its_acl_file(tmp_path: Path) -> None:
    file = tmp_path / "acl.yaml"
    file.write_text('acl:\n  echo:\n    "*": ["*"]\n')  # signed agents only: no plain JSON
    node = NodeProcess(tmp_path / "home", "--name", "guard", "--capability", "echo",
                       "--capability", "math.evaluate", "--acl", str(file))
    try:
        raw = NatsClient()
        await raw.connect(node.ready["client"], allow_reconnect=False)
        try:
            denied = json.loads((await raw.request("agora.cap.echo", b'{"text": "hi"}',
                                                    timeout=5)).data)
            assert denied["error"]["type"] == "AccessDenied"
            served = json.loads((await raw.request("agora.cap.math.evaluate",
                                                    b'{"expression": "1+1"}', timeout=5)).data)
            assert served["status"] == "COMPLETED"
        finally:
            await raw.close()
        assert node.stop() == 0, node.stderr
    finally:
        node.reap()
