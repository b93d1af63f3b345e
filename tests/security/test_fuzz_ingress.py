"""Fuzzing what a live node receives: the envelope decoder behind a Bus subscription, and
the plain-JSON ingress of an AgentNode on ``agora.cap.<capability>`` and ``agora.task.…``.

tests/bus/test_envelope_fuzz.py drives ``parse``/``Guard`` in process; here every
input crosses a real nats-server and the receiving Bus, and the receiver is judged
from outside, as a client sees it:

- each hostile message is counted exactly once, under the reason the reference
  :class:`Guard` (or :func:`decode_json`) gives for the same bytes, in the Bus's
  counters (and, for the node, in the exported Prometheus counter);
- a request with a reply subject is answered as PROTOCOL.md §9/§11 say — an
  ``error`` envelope signed by the receiver when the payload looked like an
  envelope, a strict-JSON ``{"error": …}`` otherwise, silence only for replays
  — and an admitted one gets the handler's answer;
- after every hostile message a valid request still gets its answer.

Hypothesis runs derandomized with no example database and bounded example counts.
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
import pytest
import pytest_asyncio
from hostile_support import (
    Attacker,
    AttackerFactory,
    NodeFactory,
    answered,
    check_error_envelope,
    check_json_error,
    counted,
    exported_rejections,
    fields_of,
    forge,
    resign,
    serving,
    strict_json,
    tag,
)
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from agoramesh.agent import AgentNode
from agoramesh.bus import Bus, Delivery, Identity
from agoramesh.bus.admission import Guard
from agoramesh.bus.envelope import (
    AUTH_MAC,
    AUTH_SIG,
    TAG_SIZE,
    Envelope,
    looks_like_envelope,
    parse,
)
from agoramesh.bus.ingress import decode_json, looks_like_json
from agoramesh.bus.server import EmbeddedServer
from agoramesh.config import EnvelopePolicy
from agoramesh.errors import EnvelopeError, RejectReason
from agoramesh.testing.plugin import BusFactory

pytestmark = pytest.mark.integration

SUBJECT = "agora.cap.fuzz"
#: Small, so oversize is reachable with bounded examples (as in the unit fuzz).
BUS_POLICY = EnvelopePolicy(max_bytes=4096)
NODE_POLICY = EnvelopePolicy(max_bytes=16 * 1024)

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    # The mesh is set up once per test and shared by its examples, on purpose.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large],
)


def note(outcome: str) -> None:
    """Tally outcomes for ``--hypothesis-show-statistics`` (outside a fuzz test: nothing)."""
    with contextlib.suppress(InvalidArgument):
        event(outcome)


# --- the envelope decoder behind a live Bus subscription -----------------------------


@dataclass
class Receiver:
    """A Bus on :data:`SUBJECT` (plain JSON denied) and what it delivered or rejected."""

    bus: Bus
    oracle: Guard  # the reference decision for the same bytes, fed the same sequence
    sender: Identity  # whose envelopes are genuine
    outcomes: list[RejectReason | Envelope] = field(default_factory=list)

    async def handle(self, delivery: Delivery) -> None:
        assert delivery.envelope is not None
        self.outcomes.append(delivery.envelope)
        await delivery.respond("task_response", {"ok": True})

    def judge(self, data: bytes, reply: str) -> RejectReason | None:
        """The reason the reference admission gives for ``data`` sent with reply subject
        ``reply`` (None: admitted)."""
        if not looks_like_envelope(data):
            return RejectReason.INGRESS_DENIED if looks_like_json(data) else \
                RejectReason.MALFORMED
        try:
            self.oracle.admit(data, SUBJECT, reply)
        except EnvelopeError as error:
            return error.reason
        return None


@pytest_asyncio.fixture
async def receiver(nats_server: EmbeddedServer, bus_factory: BusFactory) -> Receiver:
    bus = await bus_factory(nats_server.client_url, policy=BUS_POLICY)
    live = Receiver(bus, Guard(BUS_POLICY, agent_id=bus.agent_id, opener=bus.guard.opener,
                               pair_key=bus.guard.pair_key), Identity.generate())
    bus.guard.on_reject.append(live.outcomes.append)
    await bus.subscribe(SUBJECT, live.handle)  # concurrency 1: one message at a time, in order
    return live


@pytest_asyncio.fixture
async def attacker(nats_server: EmbeddedServer, attacker_factory: AttackerFactory) -> Attacker:
    return await attacker_factory(nats_server.client_url)


async def exchange(live: Receiver, attacker: Attacker, data: bytes, hostile: str | None = None
                   ) -> None:
    """Send ``data`` as a request with reply subject ``hostile`` (default: a fresh inbox),
    then a genuine request; judge both from outside."""
    hostile = hostile or attacker.inbox()
    expected = live.judge(data, hostile)
    note(f"outcome: {expected or 'admitted'}")
    before = sum(live.bus.rejections.values())
    probe = attacker.inbox()
    await attacker.publish(SUBJECT, data, reply=hostile)
    genuine = forge(live.sender, type="task_request", subject=SUBJECT, body={"probe": True},
                    reply=probe)
    await attacker.publish(SUBJECT, genuine, reply=probe)
    # The subscription takes one message at a time, so once the genuine request is
    # answered, the hostile one was fully handled, and its answer (if any) went first.
    answer = parse(await attacker.reply(probe))
    assert answer.type == "task_response" and answer.sender == live.bus.agent_id
    assert answer.to == live.sender.agent_id
    assert len(live.outcomes) == 2, live.outcomes  # one outcome each: counted once
    first, second = live.outcomes
    assert isinstance(second, Envelope) and second.wire == genuine
    live.outcomes.clear()
    if expected is None:  # only ever bytes a sender really signed
        assert isinstance(first, Envelope) and first.wire == data
        reply = parse(await attacker.reply(hostile, timeout=0.1))
        assert reply.type == "task_response" and reply.to == first.sender
        assert sum(live.bus.rejections.values()) == before
        return
    assert first == expected, f"live {first}, reference {expected}"
    assert sum(live.bus.rejections.values()) == before + 1
    if not answered(expected):
        assert attacker.unanswered(hostile), f"{expected} was answered"
    elif looks_like_envelope(data):
        check_error_envelope(await attacker.reply(hostile, timeout=0.1),
                             signer=live.bus.agent_id, inbox=hostile, reason=expected)
    else:
        check_json_error(await attacker.reply(hostile, timeout=0.1), expected)


@settings(FUZZ, max_examples=150)
@given(st.binary(max_size=600)
       | st.builds(lambda head, rest: bytes([head]) + rest,
                   st.sampled_from([0x80, 0x8A, 0x8F, 0xDE, 0xDF, ord("{"), ord(" ")]),
                   st.binary(min_size=0, max_size=600)))
async def test_random_bytes_are_rejected_counted_and_answered(
        receiver: Receiver, attacker: Attacker, data: bytes) -> None:
    await exchange(receiver, attacker, data)


# Byte-level damage to a genuine envelope, sealed fresh for each example.
byte_ops = st.lists(st.tuples(st.sampled_from(["flip", "truncate", "insert", "replace",
                                               "delete"]),
                              st.integers(0, 10_000), st.integers(0, 255),
                              st.binary(min_size=1, max_size=8)), min_size=1, max_size=4)
BODIES = [{"text": "hi"}, {"parameters": {"x": [1, 2.5, None]}, "task_id": "t-1"}, b"\x00\xff",
          "x" * 100, [], None]


def damaged(wire: bytes, ops: list[tuple[str, int, int, bytes]]) -> bytes:
    data = bytearray(wire)
    for op, position, value, chunk in ops:
        at = position % max(len(data), 1)
        if op == "flip" and data:
            data[at] ^= 1 << (value % 8)
        elif op == "truncate":
            del data[at:]
        elif op == "insert":
            data[at:at] = chunk
        elif op == "replace" and data:
            data[at] = value
        elif op == "delete" and data:
            del data[at:at + 1 + value % 8]
    return bytes(data)


@settings(FUZZ, max_examples=150)
@given(st.sampled_from(BODIES), byte_ops, st.sampled_from([AUTH_SIG, AUTH_MAC]))
async def test_damaged_envelopes_are_never_admitted(
        receiver: Receiver, attacker: Attacker, body: Any,
        ops: list[tuple[str, int, int, bytes]], auth: str) -> None:
    # Signed to anyone, or MACed to the receiver, for the inbox it is sent with.
    hostile = attacker.inbox()
    genuine = forge(receiver.sender, type="task_request", subject=SUBJECT, body=body,
                    reply=hostile, auth=auth,
                    to=receiver.bus.agent_id if auth == AUTH_MAC else "*")
    data = damaged(genuine, ops)
    assume(data != genuine)
    await exchange(receiver, attacker, data, hostile)


# Field-level changes: swaps, other types, missing, extra and repeated keys, other
# headers, versions, reply subjects and auth values, hostile bodies; then authenticated
# as the genuine envelope was (signed, or MACed with the receiver) by the sender (the
# checks before the tag decide), by an attacker in the sender's name, or left with the
# old tag.
OTHER_VALUES: st.SearchStrategy[Any] = st.sampled_from([
    None, True, 1.5, -1, 0, 2**53, 2**64 - 1, "", "x" * 70, "agora.cap.other", b"bin", [], {},
    "UAB2CB576PHBBPQ5ODORRZ2LYCMWPZGWGCN2KDK7DXOIMZASKUY3RLKK", "a.b", "Bad Type", "*"])
FIELDS = ("v", "id", "type", "from", "to", "subject", "reply", "ts", "exp", "cid", "auth",
          "body")
DEEP = b"\x91" * 3000 + b"\xc0"  # 3000 nested arrays: beyond the decoder's depth limit


def packed(value: Any) -> bytes:
    data: bytes = msgpack.packb(value, use_bin_type=True)
    return data


def pack_pairs(pairs: list[tuple[Any, Any]], header: bytes | None = None) -> bytes:
    """A msgpack map written pair by pair (repeats allowed), under ``header``."""
    head = header if header is not None else bytes([0x80 | len(pairs)])
    return head + b"".join(packed(key) + packed(value) for key, value in pairs)


STRANGER = "UAB2CB576PHBBPQ5ODORRZ2LYCMWPZGWGCN2KDK7DXOIMZASKUY3RLKK"  # a valid agent id
#: (ts, exp) relative to now: expired, future, lifetime over max_ttl, empty, fine.
WINDOWS = [(-120_000, -60_000), (31_000, 91_000), (0, 600_001), (5, 5), (-1_000, 1_000)]


@st.composite
def field_changes(draw: st.DrawFn) -> Callable[[dict[str, Any], int], bytes]:
    """A function (fields, now) -> signed bytes, the fields changed as drawn."""
    kind = draw(st.sampled_from(["swap", "retype", "drop", "extra", "repeat", "map16", "body",
                                 "time", "version", "readdress", "resubject", "rereply",
                                 "unreply", "reauth", "pad"]))
    first, second = draw(st.sampled_from(FIELDS)), draw(st.sampled_from(FIELDS))
    value = draw(OTHER_VALUES)
    body_kind = draw(st.sampled_from(["ext", "timestamp", "deep", "int_keys", "boxed"]))
    window = draw(st.sampled_from(WINDOWS))
    version = draw(st.sampled_from([1, 3]))  # version 1 is refused like any other

    def change(fields: dict[str, Any], now: int) -> bytes:
        pairs = list(fields.items())
        if kind == "swap":
            fields[first], fields[second] = fields[second], fields[first]
        elif kind == "retype":
            fields[first] = value
        elif kind == "drop":
            del fields[first]
        elif kind == "extra":
            fields["extra"] = value
        elif kind == "repeat":  # twelve entries, one key twice
            return pack_pairs([*pairs[:11], (first, value)])
        elif kind == "map16":
            return pack_pairs(pairs, header=b"\xde\x00\x0c")
        elif kind == "version":
            fields["v"] = version
        elif kind == "time":
            fields["ts"], fields["exp"] = now + window[0], now + window[1]
        elif kind == "readdress":
            fields["to"] = STRANGER
        elif kind == "resubject":
            fields["subject"] = SUBJECT + ".other"
        elif kind == "rereply":  # made for another inbox than the one it is sent with
            fields["reply"] = fields["reply"] + ".other"
        elif kind == "unreply":  # made for no reply, sent with one
            fields["reply"] = ""
        elif kind == "reauth":
            fields["auth"] = AUTH_SIG if fields["auth"] == AUTH_MAC else AUTH_MAC
        elif kind == "pad":
            fields["body"] = b"x" * BUS_POLICY.max_bytes
        else:
            tail = {"ext": b"\xd4\x05\x00", "timestamp": b"\xd6\xff\x00\x00\x00\x01",
                    "deep": DEEP, "int_keys": b"\x81\x01\x02",
                    "boxed": packed({"$box": b"\x00" * 40})}[body_kind]
            return pack_pairs(pairs[:11], header=b"\x8c") + packed("body") + tail
        return packed(fields)

    return change


@settings(FUZZ, max_examples=200)
@given(field_changes(), st.sampled_from(["sender", "sender", "attacker", "stale"]),
       st.sampled_from(BODIES), st.sampled_from(["*", "receiver", "receiver by mac"]))
async def test_changed_fields_are_rejected_for_the_first_failing_check(
        receiver: Receiver, attacker: Attacker, change: Callable[[dict[str, Any], int], bytes],
        signer: str, body: Any, to: str) -> None:
    hostile = attacker.inbox()
    mac_to = receiver.bus.agent_id if to == "receiver by mac" else None
    genuine = forge(receiver.sender, type="task_request", subject=SUBJECT, body=body,
                    to="*" if to == "*" else receiver.bus.agent_id, reply=hostile,
                    auth=AUTH_SIG if mac_to is None else AUTH_MAC)
    fields = fields_of(genuine)
    signed = change(fields, fields["ts"])
    # Authenticated as the genuine one was (signature, or MAC with the receiver), by the
    # sender, or by an attacker in the sender's name; or left with the old tag.
    if signer == "sender":
        data = signed + tag(receiver.sender, signed, to=mac_to)
    elif signer == "attacker":
        data = signed + tag(attacker.identity, signed, to=mac_to)
    else:
        data = signed + genuine[-TAG_SIZE:]
    assume(data != genuine)
    await exchange(receiver, attacker, data, hostile)


async def test_replays_are_counted_but_never_answered_expired_requests_are_answered(
        receiver: Receiver, attacker: Attacker) -> None:
    # Random data almost never reaches these reasons: exercise them on purpose.
    inbox = attacker.inbox()  # what the genuine request names, and each replay is sent with
    genuine = forge(receiver.sender, type="task_request", subject=SUBJECT, body={"n": 1},
                    reply=inbox)
    await exchange(receiver, attacker, genuine, inbox)  # admitted and answered
    for _ in range(3):
        await exchange(receiver, attacker, genuine, inbox)  # replayed: counted, silent
    # With another reply subject a replay is refused before the replay check, and answered.
    await exchange(receiver, attacker, genuine)  # wrong_reply: counted, answered
    stale_inbox = attacker.inbox()
    stale = forge(receiver.sender, type="task_request", subject=SUBJECT, body={"n": 2},
                  ts=fields_of(genuine)["ts"] - 120_000, reply=stale_inbox)
    await exchange(receiver, attacker, stale, stale_inbox)  # expired: counted, answered
    swapped = resign(receiver.sender, {**fields_of(genuine), "body": {"n": 3}})
    await exchange(receiver, attacker, swapped, inbox)  # same id, new body: still a replay
    mac_inbox = attacker.inbox()  # the same for a request MACed to the receiver
    maced = forge(receiver.sender, type="task_request", subject=SUBJECT, body={"n": 4},
                  to=receiver.bus.agent_id, auth=AUTH_MAC, reply=mac_inbox)
    await exchange(receiver, attacker, maced, mac_inbox)  # admitted and answered
    await exchange(receiver, attacker, maced, mac_inbox)  # replayed: counted, silent
    assert receiver.bus.rejections == Counter({RejectReason.REPLAYED: 5,
                                               RejectReason.WRONG_REPLY: 1,
                                               RejectReason.EXPIRED: 1})


# --- plain-JSON ingress of a live AgentNode ------------------------------------------


json_scalars = (st.none() | st.booleans() | st.integers(-(10**30), 10**30)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30))
json_values = st.recursive(json_scalars, lambda children: st.lists(children, max_size=4)
                           | st.dictionaries(st.text(max_size=8), children, max_size=4),
                           max_leaves=15)
TASK_KEYS = ["task_id", "task_type", "parameters", "priority", "deadline", "callback", "stream",
             "expression", "text", "code"]
task_values = (json_values | st.sampled_from(["echo", "math.evaluate", "1+2", "9**9**9", "(" * 300,
                                              -1, 11, 5, 1e308, -1e308, 2**64, "x" * 200]))
json_objects = st.dictionaries(st.sampled_from(TASK_KEYS) | st.text(max_size=10), task_values,
                               max_size=6)


@st.composite
def json_payloads(draw: st.DrawFn, max_bytes: int) -> bytes:
    """Plain payloads a `nats req` user (or an attacker) might send."""
    kind = draw(st.sampled_from(["object", "object", "object", "non_object", "bad_utf8",
                                 "deep", "huge_number", "oversize", "truncated", "junk"]))
    space = draw(st.sampled_from(["", " ", "\n\t\r "])).encode()
    if kind == "object":
        text = json.dumps(draw(json_objects), ensure_ascii=draw(st.booleans()))
        return space + text.encode()
    if kind == "non_object":
        return space + json.dumps(draw(json_values)).encode()
    if kind == "bad_utf8":
        bad = draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xc0\xaf",
                                    b"\xf4\x90\x80\x80", b"\x80"]))
        return b'{"text": "' + draw(st.text(max_size=5)).encode() + bad + b'"}'
    if kind == "deep":
        # Over MAX_JSON_DEPTH levels are refused before parsing; Hypothesis also raises
        # the recursion limit while it runs, so the decoder's own limit is tested beyond
        # any: 8000 levels, still under max_bytes.
        depth = draw(st.sampled_from([2, 40, 8000]))
        return b'{"a": ' + b"[" * depth + b"]" * depth + b"}"
    if kind == "huge_number":
        digits = draw(st.sampled_from([20, 300, 4300, 4301, 6000]))
        number = draw(st.sampled_from([b"9" * digits, b"-" + b"9" * digits, b"1e308",
                                       b"-1e308", b"1e-400", b"0.1e-99999"]))
        # (a huge integer deadline: see test_a_huge_integer_deadline_is_invalid_input)
        key = draw(st.sampled_from([b"n", b"expression", b"priority", b"task_id"]))
        return b'{"' + key + b'": ' + number + b"}"
    if kind == "oversize":
        return b'{"text": "' + b"x" * (max_bytes + draw(st.integers(-20, 200))) + b'"}'
    if kind == "truncated":
        whole = json.dumps(draw(json_objects)).encode()
        return whole[:draw(st.integers(0, max(len(whole) - 1, 0)))]
    return draw(st.binary(max_size=300))


@dataclass
class Target:
    node: AgentNode
    attacker: Attacker
    oracle: Guard  # for payloads that look like envelopes


@pytest_asyncio.fixture
async def target(nats_server: EmbeddedServer, node_factory: NodeFactory,
                 attacker_factory: AttackerFactory) -> Target:
    node = await node_factory(nats_server.client_url, "target", ["echo", "math.evaluate"],
                              policy=NODE_POLICY)
    return Target(node, await attacker_factory(nats_server.client_url),
                  Guard(NODE_POLICY, agent_id=node.agent_id, opener=node.bus.guard.opener,
                        pair_key=node.bus.guard.pair_key))


#: ResultTooLarge: an echo of a request just under max_bytes does not fit in the reply.
TASK_ERRORS = {"InvalidInput", "InvalidTask", "UnknownCapability", "TaskError", "BackendError",
               "BackendBadResponse", "TaskCancelled", "ResultTooLarge"}


async def ingress_exchange(target: Target, subject: str, payload: bytes, *,
                           allowed: bool, auction: bool = False) -> None:
    """One plain request: it is answered, and counted exactly when it was refused."""
    node, attacker = target.node, target.attacker
    before = counted(node)
    inbox = attacker.inbox()
    reason: RejectReason | None = None
    if looks_like_envelope(payload):
        try:
            target.oracle.admit(payload, subject, inbox)
        except EnvelopeError as error:
            reason = error.reason
    elif not looks_like_json(payload):
        reason = RejectReason.MALFORMED
    elif not allowed:
        reason = RejectReason.INGRESS_DENIED
    else:
        try:
            decode_json(payload, max_bytes=NODE_POLICY.max_bytes)
        except EnvelopeError as error:
            reason = error.reason
    note(f"outcome: {reason or 'taken'}")
    if reason is not None and not answered(reason):  # not from plain bytes, in practice
        return
    await attacker.publish(subject, payload, reply=inbox)
    reply = await attacker.reply(inbox, timeout=10)
    after = counted(node)
    if reason is not None:
        assert after - before == Counter({str(reason): 1})
        if looks_like_envelope(payload):
            check_error_envelope(reply, signer=node.agent_id, inbox=inbox, reason=reason)
        else:
            check_json_error(reply, reason)
        return
    assert after == before, f"a request taken at ingress was counted as rejected: {after}"
    answer = strict_json(reply)
    if auction and set(answer) == {"error"}:  # the auction itself may fail, clearly
        assert isinstance(answer["error"]["type"], str) and answer["error"]["message"]
        return
    assert set(answer) == {"task_id", "status", "result", "error", "execution_time_ms",
                           "tokens_used", "cost_usd", "agent_id"}, answer
    assert answer["agent_id"] == node.agent_id
    if answer["status"] == "FAILED":
        assert answer["error"]["type"] in TASK_ERRORS, answer
    else:
        assert answer["status"] == "COMPLETED" and answer["error"] is None


async def still_serves(target: Target) -> None:
    reply = strict_json(await target.attacker.request("agora.cap.math.evaluate",
                                                      b'{"expression": "6*7"}'))
    assert reply["status"] == "COMPLETED" and reply["result"] == {"value": 42}


@settings(FUZZ, max_examples=200)
@given(json_payloads(NODE_POLICY.max_bytes),
       st.sampled_from(["agora.cap.echo", "agora.cap.math.evaluate", "agent"]))
async def test_plain_json_ingress_answers_every_request(
        target: Target, payload: bytes, where: str) -> None:
    node = target.node
    subject = node.bus.subjects.agent(node.agent_id) if where == "agent" else where
    await ingress_exchange(target, subject, payload, allowed=where != "agent")
    await still_serves(target)
    assert not serving([node])
    assert exported_rejections([node]).get("target", Counter()) == counted(node)


@settings(FUZZ, max_examples=40)
@given(json_payloads(NODE_POLICY.max_bytes))
async def test_plain_json_on_the_task_desk_is_answered(target: Target, payload: bytes) -> None:
    # agora.task.<capability>: the node that takes it auctions it (here among itself).
    await ingress_exchange(target, "agora.task.echo", payload, allowed=True, auction=True)
    await still_serves(target)


async def test_plain_and_signed_tasks_complete_after_hostile_payloads(
        target: Target, bus_factory: BusFactory, nats_server: EmbeddedServer) -> None:
    client = await bus_factory(nats_server.client_url)
    attacker = target.attacker
    hostile = {
        b'{"a": ' + b"[" * 10_000 + b"]" * 10_000 + b"}": RejectReason.OVERSIZE,  # 20 kB
        b'{"a": ' + b"[" * 5_000 + b"]" * 5_000 + b"}": RejectReason.MALFORMED,  # too deep
        b'{"n": ' + b"9" * 5000 + b"}": RejectReason.MALFORMED,  # past the int digit limit
        b"\xff" * 50: RejectReason.MALFORMED,
        b"[1, 2]": RejectReason.MALFORMED,
        b"": RejectReason.MALFORMED,
    }
    for payload, reason in hostile.items():
        check_json_error(await attacker.request("agora.cap.echo", payload), reason)
    reply = await client.request("agora.cap.echo", "task_request",
                                 {"parameters": {"text": "still here"}}, timeout=5)
    assert reply.body["status"] == "COMPLETED"
    assert reply.body["result"] == {"echo": {"text": "still here"}}
    await still_serves(target)
    assert counted(target.node) == Counter({"malformed": 5, "oversize": 1})
    assert exported_rejections([target.node])["target"] == counted(target.node)


async def test_non_finite_numbers_never_make_the_reply_invalid_json(target: Target) -> None:
    for payload in (b'{"x": 1e400}', b'{"x": NaN}', b'{"x": -Infinity}'):
        reply = await target.attacker.request("agora.cap.echo", payload)
        answer = strict_json(reply)  # refused as malformed, or echoed as valid JSON
        assert "error" in answer or answer["status"] == "COMPLETED"


async def test_deeply_nested_parameters_get_a_task_response(target: Target) -> None:
    payload = b'{"a": ' + b"[" * 600 + b"]" * 600 + b"}"
    answer = strict_json(await target.attacker.request("agora.cap.echo", payload))
    assert answer.get("status") in ("COMPLETED", "FAILED") or \
        answer["error"]["type"] == "MalformedEnvelope", answer


async def test_a_huge_integer_deadline_is_an_invalid_task(target: Target) -> None:
    payload = b'{"parameters": {}, "deadline": ' + b"9" * 400 + b"}"
    answer = strict_json(await target.attacker.request("agora.cap.echo", payload))
    assert answer.get("status") == "FAILED", answer
    assert answer["error"]["type"] == "InvalidTask"
