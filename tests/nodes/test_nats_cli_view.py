"""What a ``nats`` CLI user sees: error headers, ``$SRV.STATS`` refusals, unreadable task ids.

A raw nats-py client stands in for ``nats req`` / ``nats micro``: it sends
plain JSON, or envelopes it seals itself, and reads the reply's headers.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from agoramesh.agent import AgentNode
from agoramesh.bus import Identity, seal
from agoramesh.bus.bus import ERROR_CODE_HEADER, ERROR_HEADER
from agoramesh.bus.e2e import E2EKeys
from agoramesh.bus.envelope import Envelope, is_boxed, mac, parse
from agoramesh.bus.identity import verify
from agoramesh.bus.server import EmbeddedServer
from agoramesh.config import EnvelopePolicy
from agoramesh.nodes.capability import Capability
from agoramesh.nodes.execution import UNREADABLE_TASK_ID
from agoramesh.nodes.task import TaskResult, TaskStatus
from agoramesh.security.acl import AccessPolicy
from agoramesh.testing.plugin import AgentFactory, BusFactory
from agoramesh.testing.raw import Sealer, ask

pytestmark = pytest.mark.integration

#: The offline backend's echo, with a schema that wants a string ``text`` and nothing else.
ECHO = Capability(name="echo", input_schema={
    "type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"],
    "additionalProperties": False})
SEALED = Capability(name="sealed.only")


@pytest.fixture
async def cli(nats_server: EmbeddedServer) -> AsyncIterator[NatsClient]:
    """A plain NATS client, as the ``nats`` CLI is."""
    client = NatsClient()
    await client.connect(nats_server.client_url, connect_timeout=2, allow_reconnect=False)
    yield client
    await client.close()


#: Envelope bytes made for the reply subject (inbox) they are sent with.


def flipped(make: Sealer) -> Sealer:
    """``make``'s envelope with the last bit of its tag flipped."""
    def damaged(inbox: str) -> bytes:
        wire = make(inbox)
        return wire[:-1] + bytes([wire[-1] ^ 1])
    return damaged


def error_of(msg: Msg) -> tuple[str, str] | None:
    """The reply's ``(Nats-Service-Error-Code, Nats-Service-Error)``, None without them."""
    headers = msg.headers or {}
    if ERROR_CODE_HEADER not in headers and ERROR_HEADER not in headers:
        return None
    return headers[ERROR_CODE_HEADER], headers[ERROR_HEADER]


def opened(msg: Msg, keys: E2EKeys, signer: str) -> Envelope:
    """The reply envelope, its tag checked over the bytes as received, body opened: a
    signature, or (a reply to us alone) the MAC of the key ``signer`` shares with us."""
    envelope = parse(msg.data)
    assert envelope.sender == signer
    if envelope.auth == "mac":
        assert envelope.to == keys.agent_id
        assert hmac.compare_digest(mac(keys.pair_key(signer), envelope.signed), envelope.tag)
    else:
        assert verify(signer, envelope.signed, envelope.signature)
    return keys.open(envelope) if is_boxed(envelope.body) else envelope


async def stats(cli: NatsClient, node: AgentNode, capability: str) -> dict[str, Any]:
    """This agent's ``$SRV.STATS`` entry for one endpoint."""
    answer = json.loads((await ask(cli, f"$SRV.STATS.{node.service.name}.{node.agent_id}",
                                   b"")).data)
    assert answer["type"] == "io.nats.micro.v1.stats_response"
    endpoint: dict[str, Any] = next(e for e in answer["endpoints"]
                                    if e["subject"] == f"agora.cap.{capability}")
    return endpoint


async def test_plain_json_error_replies_carry_the_services_error_headers(
        nats_server: EmbeddedServer, agent_factory: AgentFactory, cli: NatsClient) -> None:
    url = nats_server.client_url
    await agent_factory(url, "open", [ECHO])
    await agent_factory(url, "closed", [SEALED], json_ingress=False)

    schema = await ask(cli, "agora.cap.echo", b'{"text": 5}')
    body = json.loads(schema.data)
    assert body["status"] == "FAILED" and body["error"]["type"] == "InvalidInput"
    assert error_of(schema) == ("400", "InvalidInput: echo: parameters.text: 5 is not of "
                                       "type 'string'")

    unknown = await ask(cli, "agora.cap.echo",
                        b'{"task_id": "t-1", "parameters": {"text": "hi"}, "colour": 1}')
    assert json.loads(unknown.data)["status"] == "FAILED"
    assert error_of(unknown) == ("400", "InvalidTask: unknown task fields: ['colour']")

    extra = await ask(cli, "agora.cap.echo", b'{"text": "hi", "colour": "red"}')
    code, description = error_of(extra) or ("", "")
    assert code == "400" and description.startswith("InvalidInput: echo: parameters: ")
    assert "'colour' was unexpected" in description

    malformed = await ask(cli, "agora.cap.echo", b'{"text": ')
    error = json.loads(malformed.data)["error"]
    assert error["type"] == "MalformedEnvelope"
    assert error_of(malformed) == ("400", f"MalformedEnvelope: {error['message']}")

    denied = await ask(cli, "agora.cap.sealed.only", b'{"text": "hi"}')
    assert json.loads(denied.data)["error"]["type"] == "IngressDenied"
    assert error_of(denied) == ("403", "IngressDenied: plain JSON is not accepted on "
                                       "agora.cap.sealed.only; send a signed envelope")

    fine = await ask(cli, "agora.cap.echo", b'{"text": "hi"}')
    assert json.loads(fine.data)["status"] == "COMPLETED"
    assert error_of(fine) is None


async def test_the_task_desk_answers_carry_them_too(
        nats_server: EmbeddedServer, agent_factory: AgentFactory, cli: NatsClient) -> None:
    await agent_factory(nats_server.client_url, "open", [ECHO])
    failed = await ask(cli, "agora.task.echo", b'{"text": 5}')  # auctioned, then FAILED
    assert json.loads(failed.data)["status"] == "FAILED", failed.data
    assert error_of(failed) == ("400", "InvalidInput: echo: parameters.text: 5 is not of "
                                       "type 'string'")
    nobody = await ask(cli, "agora.task.nobody.here", b'{"text": "hi"}')  # an error reply
    assert json.loads(nobody.data)["error"]["type"] == "NoBidders"
    code, description = error_of(nobody) or ("", "")
    assert code == "503" and description.startswith("NoBidders: ") and "nobody.here" in description
    fine = await ask(cli, "agora.task.echo", b'{"text": "hi"}')
    assert json.loads(fine.data)["status"] == "COMPLETED"
    assert error_of(fine) is None


async def test_envelope_error_replies_carry_the_headers_over_unchanged_bytes(
        nats_server: EmbeddedServer, agent_factory: AgentFactory, cli: NatsClient) -> None:
    me, barred = Identity.generate(), Identity.generate()
    keys = E2EKeys(me)
    agent = await agent_factory(nats_server.client_url, "open", [ECHO],
                                access=AccessPolicy.from_mapping({"grants": {barred.agent_id: []}}))
    direct = agent.bus.subjects.agent(agent.agent_id)

    def request(body: Any, *, signer: Identity = me, subject: str = "agora.cap.echo",
                type: str = "task_request", to: str = "*") -> Sealer:
        return lambda inbox: seal(signer, type=type, subject=subject, body=body, to=to,
                                  reply=inbox)

    failed = await ask(cli, "agora.cap.echo", request({"task_id": "t-1",
                                                        "parameters": {"text": 5}}))
    envelope = opened(failed, keys, agent.agent_id)
    assert envelope.type == "task_response" and envelope.body["status"] == "FAILED"
    assert envelope.body["task_id"] == "t-1"
    assert error_of(failed) == ("400", "InvalidInput: echo: parameters.text: 5 is not of "
                                       "type 'string'")

    handler_error = await ask(cli, direct, request({}, subject=direct, type="gossip",
                                                   to=agent.agent_id))
    envelope = opened(handler_error, keys, agent.agent_id)
    assert envelope.type == "error" and envelope.body["type"] == "InvalidRequest"
    assert error_of(handler_error) == ("400", "InvalidRequest: agent open does not handle "
                                              "'gossip'")

    refused = await ask(cli, "agora.cap.echo", request({"parameters": {"text": "hi"}},
                                                       signer=barred))
    envelope = opened(refused, E2EKeys(barred), agent.agent_id)
    assert envelope.type == "error" and envelope.body["type"] == "AccessDenied"
    assert error_of(refused) == ("403", f"AccessDenied: {envelope.body['message']}")

    forged = await ask(cli, "agora.cap.echo", flipped(request({"parameters": {"text": "hi"}})))
    envelope = opened(forged, keys, agent.agent_id)
    assert envelope.type == "error" and envelope.to == "*"
    assert envelope.body["type"] == "BadSignature"
    assert error_of(forged) == ("401", f"BadSignature: {envelope.body['message']}")

    fine = await ask(cli, "agora.cap.echo", request({"parameters": {"text": "hi"}}))
    assert opened(fine, keys, agent.agent_id).body["status"] == "COMPLETED"
    assert error_of(fine) is None


async def test_srv_stats_count_refused_requests_as_requests_and_errors(
        nats_server: EmbeddedServer, agent_factory: AgentFactory, cli: NatsClient) -> None:
    url = nats_server.client_url
    me = Identity.generate()
    guarded = await agent_factory(url, "guarded", [ECHO],
                                  access=AccessPolicy.from_mapping({"grants": {"json": []}}),
                                  bus={"envelope": EnvelopePolicy(max_bytes=64 * 1024)})
    closed = await agent_factory(url, "closed", [SEALED], json_ingress=False)
    before = await stats(cli, guarded, "echo")
    assert (before["num_requests"], before["num_errors"], before["last_error"]) == (0, 0, "")

    def signed(body: Any) -> Sealer:
        return lambda inbox: seal(me, type="task_request", subject="agora.cap.echo", body=body,
                                  reply=inbox)

    good = signed({"parameters": {"text": "hi"}})
    refusals: dict[str, bytes | Sealer] = {
        "MalformedEnvelope": b'{"text": ',
        "OversizeEnvelope": b'{"text": "' + b"x" * 70_000 + b'"}',
        "BadSignature": flipped(good),
    }
    for kind, payload in refusals.items():
        answer = await ask(cli, "agora.cap.echo", payload)
        code, description = error_of(answer) or ("", "")
        assert code == ("401" if kind == "BadSignature" else "413" if kind.startswith("Over")
                        else "400")
        assert description.startswith(f"{kind}: "), description
        counted = await stats(cli, guarded, "echo")
        assert counted["last_error"] == description[:500]
    await cli.publish("agora.cap.echo", b"junk without a reply subject")
    assert error_of(await ask(cli, "agora.cap.echo", good)) is None  # served: no error
    assert error_of(await ask(cli, "agora.cap.echo", signed({"parameters": {"text": 1}})))
    denied = await ask(cli, "agora.cap.echo", b'{"text": "hi"}')  # the node's refusal
    assert json.loads(denied.data)["error"]["type"] == "AccessDenied"

    after = await stats(cli, guarded, "echo")
    assert after["num_requests"] == 7 and after["num_errors"] == 6, after
    assert after["last_error"].startswith("AccessDenied: agent guarded refuses execute on echo")
    assert sum(guarded.bus.rejections.values()) == 4  # the bus's share of the refusals

    assert error_of(await ask(cli, "agora.cap.sealed.only", b'{"text": "hi"}'))
    sealed = await stats(cli, closed, "sealed.only")
    assert (sealed["num_requests"], sealed["num_errors"]) == (1, 1)
    assert sealed["last_error"].startswith("IngressDenied: plain JSON is not accepted")


async def test_an_unreadable_task_id_is_answered_null(
        nats_server: EmbeddedServer, agent_factory: AgentFactory, bus_factory: BusFactory,
        cli: NatsClient) -> None:
    url = nats_server.client_url
    agent = await agent_factory(url, "open", [ECHO])
    cases: list[tuple[bytes, str | None, str, str]] = [
        (b'{"parameters": 5}', None, "InvalidInput", "parameters must be an object"),
        (b'{"task_id": 7, "parameters": {"text": "x"}}', None, "InvalidTask",
         "task_id must be a string of 1-128 characters"),
        (b'{"task_id": "", "parameters": {"text": "x"}}', None, "InvalidTask",
         "task_id must be a string of 1-128 characters"),
        (b'{"task_id": "t-9", "parameters": 5}', "t-9", "InvalidInput",
         "parameters must be an object"),
    ]
    for payload, task_id, kind, message in cases:
        answer = await ask(cli, "agora.cap.echo", payload)
        body = json.loads(answer.data)
        assert body["status"] == "FAILED" and body["task_id"] == task_id, body
        expected = message if task_id else message + UNREADABLE_TASK_ID
        assert body["error"] == {"type": kind, "message": expected}
        assert error_of(answer) == ("400", f"{kind}: {expected}")

    client = await bus_factory(url)
    for body in (5, [1, 2], "text", {"task_id": None, "parameters": []}):
        reply = await client.request("agora.cap.echo", "task_request", body, timeout=5)
        assert reply.type == "task_response" and reply.body["task_id"] is None, reply.body
        assert reply.body["error"]["message"].endswith(UNREADABLE_TASK_ID)
        result = TaskResult.from_dict(reply.body)  # as submit_task reads it
        assert result.status is TaskStatus.FAILED and result.task_id == ""
    direct = await client.request(agent.bus.subjects.agent(agent.agent_id), "task_request",
                                  5, to=agent.agent_id, timeout=5)
    assert direct.body["task_id"] is None and direct.body["status"] == "FAILED"
    assert direct.body["error"]["type"] == "UnknownCapability"
    assert direct.body["error"]["message"].endswith(UNREADABLE_TASK_ID)
    kept = await client.request("agora.cap.echo", "task_request",
                                {"task_id": "t-2", "parameters": 5}, timeout=5)
    assert kept.body["task_id"] == "t-2"
    assert kept.body["error"]["message"] == "parameters must be an object"
