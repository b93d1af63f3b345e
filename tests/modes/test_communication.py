"""``CommunicationManager`` over real NATS: delivery, protocols, limits, bad and forged input.

Every manager embeds its own nats-server (routed to its team's others), so
each message below crosses a real route between two servers.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
from decentralized_support import TIMEOUT, Team, make_config

from agoramesh.bus.bus import Bus
from agoramesh.bus.identity import Identity
from agoramesh.config import BusConfig
from agoramesh.errors import AgoraError, InvalidRequest, SubjectError
from agoramesh.modes.decentralized.communication import CommunicationManager, make_message
from agoramesh.modes.decentralized.member import MAX_MESSAGE_BYTES

pytestmark = pytest.mark.integration

T = TypeVar("T")
NAMES = ("alpha", "beta", "gamma")


@pytest.fixture(scope="module")
def trio(module_team: Team) -> dict[str, CommunicationManager]:
    """Three managers of one team, shared by the tests of this module."""
    config = make_config()
    comms = {name: module_team.comm(name, config, capabilities=["vision"]) for name in NAMES}
    for name, comm in comms.items():
        assert comm.set_peers([other for other in NAMES if other != name]) == []
    return comms


@pytest.fixture
def mates(trio: dict[str, CommunicationManager]) -> Iterator[dict[str, CommunicationManager]]:
    """The trio with empty inboxes (what earlier tests left is read away)."""
    for comm in trio.values():
        comm.receive_messages()
    yield trio
    for comm in trio.values():
        comm.receive_messages()


def status(**content: Any) -> dict[str, Any]:
    return {"message_type": "status_update", "content": content}


def with_bus(comm: CommunicationManager, identity: Identity,
             action: Callable[[Bus], Awaitable[T]]) -> T:
    """Run ``action`` with a Bus of ``identity`` connected to ``comm``'s own server."""
    assert comm.member.server is not None

    async def run() -> T:
        bus = Bus(identity, BusConfig(servers=(comm.member.server.client_url,),
                                      name="outsider", request_timeout=TIMEOUT))
        await bus.start()
        try:
            return await action(bus)
        finally:
            await bus.close(timeout=1.0)

    return comm.runtime.call(run(), 15.0)


def direct_subject(comm: CommunicationManager) -> str:
    assert comm.member.bus is not None
    return comm.member.bus.subjects.agent(comm.member.agent_id)


# -- delivery -----------------------------------------------------------------------------

def test_send_message_delivers_the_seed_fields(mates: dict[str, CommunicationManager]) -> None:
    alpha, beta = mates["alpha"], mates["beta"]
    before = (alpha.stats.get("sent", 0), beta.stats.get("received", 0))
    started = dt.datetime.now(dt.UTC)
    assert alpha.send_message("beta", {"message_type": "help_request", "content": {
        "problem_type": "needs_capability", "current_situation": "stuck at (1, 2)",
        "requested_help": "SCAN crate_1"}}) is True
    [got] = beta.receive_messages()
    assert got["sender_id"] == "alpha"
    assert got["receiver_id"] == "beta"
    assert got["message_type"] == "help_request"
    assert got["content"] == {"problem_type": "needs_capability",
                              "current_situation": "stuck at (1, 2)",
                              "requested_help": "SCAN crate_1"}
    stamp = dt.datetime.fromisoformat(got["timestamp"])
    assert stamp.tzinfo is not None
    assert started - dt.timedelta(seconds=1) <= stamp <= dt.datetime.now(dt.UTC)
    assert isinstance(got["message_id"], str) and len(got["message_id"]) >= 16
    assert (alpha.stats["sent"], beta.stats["received"]) == (before[0] + 1, before[1] + 1)
    assert beta.receive_messages() == []  # read once
    assert mates["gamma"].receive_messages() == []  # and only by its target
    assert ("received", got["message_id"]) in [(d, m["message_id"]) for d, m in beta.history]
    assert ("sent", got["message_id"]) in [(d, m["message_id"]) for d, m in alpha.history]


def test_messages_arrive_oldest_first_with_their_own_ids(
        mates: dict[str, CommunicationManager]) -> None:
    alpha, gamma = mates["alpha"], mates["gamma"]
    ids = [uuid.uuid4().hex for _ in range(5)]
    for number, message_id in enumerate(ids):
        assert alpha.send_message("gamma", {**status(n=number), "message_id": message_id})
    got = gamma.receive_messages()
    assert [m["message_id"] for m in got] == ids
    assert [m["content"]["n"] for m in got] == list(range(5))


def test_a_repeated_message_id_is_acknowledged_but_not_delivered_twice(
        mates: dict[str, CommunicationManager]) -> None:
    alpha, beta = mates["alpha"], mates["beta"]
    duplicates = beta.stats.get("duplicates", 0)
    message = {**status(state="busy"), "message_id": uuid.uuid4().hex}
    assert alpha.send_message("beta", message) is True
    assert alpha.send_message("beta", message) is True  # taken already: acknowledged
    assert len(beta.receive_messages()) == 1
    assert beta.stats["duplicates"] == duplicates + 1


def test_sending_to_itself_or_to_a_stranger_is_false(
        mates: dict[str, CommunicationManager]) -> None:
    alpha = mates["alpha"]
    assert alpha.send_message("alpha", status()) is False
    assert "itself" in alpha.last_error
    unknown = alpha.stats.get("unknown_target", 0)
    assert alpha.send_message("nobody_here", status()) is False
    assert alpha.stats["unknown_target"] == unknown + 1
    assert alpha.send_message("beta", status()) is True
    assert alpha.last_error == ""  # a success clears it


def test_last_error_describes_the_latest_failure(
        mates: dict[str, CommunicationManager]) -> None:
    alpha = mates["alpha"]
    assert alpha.send_message("alpha", status()) is False
    assert "itself" in alpha.last_error
    assert alpha.send_message("nobody_here", status()) is False  # a different failure
    assert "nobody_here" in alpha.last_error, alpha.last_error


@pytest.mark.parametrize("protocol", ["direct", "broadcast", "gossip"])
def test_broadcast_reaches_every_peer_exactly_once(team: Team, protocol: str) -> None:
    config = make_config(communication_config={"protocol": protocol})
    names = [f"peer_{i}" for i in range(6)]
    comms = {name: team.comm(name, config) for name in names}
    for name, comm in comms.items():
        assert comm.set_peers([n for n in names if n != name]) == []
    sender, others = comms["peer_0"], [comms[n] for n in names[1:]]
    sent = sender.stats.get("sent", 0)
    message = {"message_type": "status_update", "content": {"agent_status": "busy"},
               "message_id": uuid.uuid4().hex}
    assert sender.broadcast_message(message) is True
    for comm in others:
        got = comm.receive_messages()
        assert [m["message_id"] for m in got] == [message["message_id"]], comm.sim_id
        assert got[0]["sender_id"] == "peer_0"
        assert got[0]["receiver_id"] == "broadcast"
        assert "gossip" not in got[0] and "via" not in got[0]  # relay fields are stripped
    assert sender.receive_messages() == []
    # How the protocol spread it: one request each, one publish, or two heads passing it on.
    assert sender.stats["sent"] - sent == {"direct": 5, "broadcast": 1, "gossip": 2}[protocol]
    forwarded = sum(comm.stats.get("forwarded", 0) for comm in others)
    assert (forwarded >= 1) if protocol == "gossip" else forwarded == 0
    # The same message again: acknowledged as a duplicate, delivered to nobody.
    duplicates = sum(comm.stats.get("duplicates", 0) for comm in others)
    assert sender.broadcast_message(message) is True
    assert all(comm.receive_messages() == [] for comm in others)
    seen_again = sum(comm.stats.get("duplicates", 0) for comm in others) - duplicates
    assert seen_again == (5 if protocol != "gossip" else 2)


def test_broadcast_without_teammates_is_false(team: Team) -> None:
    loner = team.comm("loner", make_config())
    assert loner.peers == []
    assert loner.broadcast_message(status()) is False
    assert "no teammates" in loner.last_error


# -- limits -------------------------------------------------------------------------------

def test_a_full_inbox_refuses_the_next_message(team: Team) -> None:
    config = make_config(communication_config={"max_message_queue": 3})
    sender, receiver = team.comm("sender", config), team.comm("receiver", config)
    assert sender.set_peers(["receiver"]) == [] and receiver.set_peers(["sender"]) == []
    results = [sender.send_message("receiver", status(n=n)) for n in range(4)]
    assert results == [True, True, True, False]
    assert receiver.stats["dropped"] == 1
    assert receiver.pending == 3
    assert "receiver" in sender.last_error
    assert [m["content"]["n"] for m in receiver.receive_messages()] == [0, 1, 2]
    assert sender.send_message("receiver", status(n=4)) is True  # room again
    assert [m["content"]["n"] for m in receiver.receive_messages()] == [4]


def test_an_unresponsive_peer_costs_timeout_per_attempt_and_is_retried(team: Team) -> None:
    timeout, retries = 0.5, 2
    config = make_config(communication_config={"timeout": timeout, "retry_attempts": retries},
                         mesh={"heartbeat_interval": 2.0})  # stays on the roster meanwhile
    sender, frozen = team.comm("sender", config), team.comm("frozen", config)
    assert sender.set_peers(["frozen"]) == [] and frozen.set_peers(["sender"]) == []
    assert frozen.member.server is not None and frozen.member.server.pid is not None
    pid = frozen.member.server.pid
    before = dict(sender.stats)
    os.kill(pid, signal.SIGSTOP)  # its server takes the request and never delivers it
    try:
        started = time.monotonic()
        assert sender.send_message("frozen", status()) is False
        elapsed = time.monotonic() - started
    finally:
        os.kill(pid, signal.SIGCONT)
    assert timeout * (retries + 1) <= elapsed < timeout * (retries + 1) + 1.5
    assert sender.stats.get("retries", 0) - before.get("retries", 0) == retries
    assert sender.stats["sent"] - before.get("sent", 0) == retries + 1
    assert sender.stats["failed_sends"] - before.get("failed_sends", 0) == 1
    assert sender.last_error


def test_a_closed_peer_is_false_within_the_bound(team: Team) -> None:
    timeout, retries = 0.5, 2
    config = make_config(communication_config={"timeout": timeout, "retry_attempts": retries})
    sender, gone = team.comm("sender", config), team.comm("gone", config)
    assert sender.set_peers(["gone"]) == [] and gone.set_peers(["sender"]) == []
    gone.close()
    started = time.monotonic()
    assert sender.send_message("gone", status()) is False
    assert time.monotonic() - started < timeout * (retries + 1) + 1.0
    with pytest.raises(AgoraError, match="closed"):
        gone.send_message("sender", status())


# -- bad input ----------------------------------------------------------------------------

@pytest.mark.parametrize(("message", "says"), [
    ("a string", "must be a dict"),
    (["message_type", "status_update"], "must be a dict"),
    ({"message_type": "gossip_about_bob", "content": {}}, "message_type must be one of"),
    ({"content": {}}, "message_type must be one of"),
    ({"message_type": "status_update", "content": "busy"}, "content must be a dict"),
    ({"message_type": "status_update", "content": ["busy"]}, "content must be a dict"),
    ({"message_type": "help_request", "sender_id": "beta", "content": {}},
     "sender_id must be this agent"),
    ({"message_type": "status_update", "content": {"when": object()}}, "JSON data"),
    ({"message_type": "status_update", "content": {"load": float("nan")}}, "JSON data"),
    ({"message_type": "status_update", "content": {"blob": "x" * (MAX_MESSAGE_BYTES + 1)}},
     f"the limit is {MAX_MESSAGE_BYTES}"),
])
def test_bad_messages_are_one_line_invalid_requests(
        mates: dict[str, CommunicationManager], message: Any, says: str) -> None:
    alpha = mates["alpha"]
    sent = alpha.stats.get("sent", 0)
    for call in (lambda: alpha.send_message("beta", message),
                 lambda: alpha.broadcast_message(message)):
        with pytest.raises(InvalidRequest) as caught:
            call()
        assert says in str(caught.value)
        assert "\n" not in str(caught.value)
    assert alpha.stats.get("sent", 0) == sent  # nothing went out
    assert mates["beta"].receive_messages() == []


@pytest.mark.parametrize("bad_id", ["", "has space", "dot.ted", "x" * 65, "broadcast", 7, None])
def test_invalid_sim_ids_are_refused_before_joining(bad_id: Any) -> None:
    with pytest.raises(SubjectError, match="sim ids are") as caught:
        CommunicationManager(bad_id)
    assert "\n" not in str(caught.value)


def test_invalid_target_and_peer_ids_are_subject_errors(
        mates: dict[str, CommunicationManager]) -> None:
    alpha = mates["alpha"]
    with pytest.raises(SubjectError, match="sim ids are"):
        alpha.send_message("agent 2", status())
    with pytest.raises(SubjectError, match="sim ids are"):
        alpha.send_message("broadcast", status())
    with pytest.raises(SubjectError, match="sim ids are"):
        alpha.set_peers(["beta", "*"])


# -- forged and malformed traffic ----------------------------------------------------------

def test_a_forged_sender_id_from_an_outsider_is_rejected(
        mates: dict[str, CommunicationManager]) -> None:
    alpha = mates["alpha"]
    rejected = alpha.stats.get("rejected", 0)
    received = alpha.stats.get("received", 0)
    forged = make_message("beta", "alpha", "help_request", {
        "problem_type": "needs_capability", "requested_help": "give me your tasks"})

    async def send(bus: Bus) -> None:
        await bus.request(direct_subject(alpha), "help_request", forged,
                          to=alpha.member.agent_id, timeout=TIMEOUT)

    with pytest.raises(InvalidRequest, match="not signed by a teammate"):
        with_bus(alpha, Identity.generate(), send)
    assert alpha.stats["rejected"] == rejected + 1
    assert alpha.stats.get("received", 0) == received
    assert alpha.receive_messages() == []


def test_a_teammate_cannot_speak_for_another_teammate(
        mates: dict[str, CommunicationManager]) -> None:
    alpha, beta = mates["alpha"], mates["beta"]
    rejected = alpha.stats.get("rejected", 0)
    forged = make_message("gamma", "alpha", "help_request", {"problem_type": "stuck"})

    async def send(bus: Bus) -> None:
        await bus.request(direct_subject(alpha), "help_request", forged,
                          to=alpha.member.agent_id, timeout=TIMEOUT)

    # Signed with beta's own key, claiming to be gamma.
    with pytest.raises(InvalidRequest, match="not signed by a teammate"):
        with_bus(alpha, beta.member.identity, send)
    assert alpha.stats["rejected"] == rejected + 1
    assert alpha.receive_messages() == []


def test_an_unknown_envelope_type_is_rejected_with_an_error_reply(
        mates: dict[str, CommunicationManager]) -> None:
    alpha = mates["alpha"]
    rejected = alpha.stats.get("rejected", 0)

    async def send(bus: Bus) -> None:
        await bus.request(direct_subject(alpha), "shutdown", {"now": True},
                          to=alpha.member.agent_id, timeout=TIMEOUT)

    with pytest.raises(InvalidRequest, match="does not handle 'shutdown'"):
        with_bus(alpha, mates["beta"].member.identity, send)
    assert alpha.stats["rejected"] == rejected + 1
    assert alpha.receive_messages() == []


def test_an_outsider_cannot_take_over_a_live_teammates_name(team: Team) -> None:
    """A roster message naming a live teammate must not replace it (then forge as it)."""
    config = make_config()
    alpha, beta = team.comm("alpha", config), team.comm("beta", config)
    assert alpha.set_peers(["beta"]) == [] and beta.set_peers(["alpha"]) == []
    outsider = Identity.generate()
    claim = {"sim_id": "beta", "capabilities": ["vision"], "team": alpha.member.team}

    async def claim_and_forge(bus: Bus) -> Any:
        await bus.publish(bus.subjects.team(alpha.member.team, "roster"), "roster", claim)
        await bus.nats.flush()
        forged = make_message("beta", "alpha", "help_request", {"problem_type": "stuck"})
        try:
            return await bus.request(direct_subject(alpha), "help_request", forged,
                                     to=alpha.member.agent_id, timeout=TIMEOUT)
        except InvalidRequest as exc:
            return exc

    outcome = with_bus(alpha, outsider, claim_and_forge)
    delivered = alpha.receive_messages()
    roster_beta = alpha.member.roster["beta"].agent_id
    # The real beta must still be able to talk to alpha afterwards.
    still_heard = beta.send_message("alpha", status(state="still me"))
    alpha.receive_messages()
    assert roster_beta == beta.member.agent_id, "the outsider replaced beta on alpha's roster"
    assert alpha.stats.get("roster_conflicts", 0) >= 1  # the claim was noticed and counted
    assert isinstance(outcome, InvalidRequest), "a forged help_request as beta was accepted"
    assert delivered == []
    assert still_heard is True


def test_malformed_bytes_do_not_break_an_agent(mates: dict[str, CommunicationManager]) -> None:
    alpha, beta = mates["alpha"], mates["beta"]
    assert alpha.member.bus is not None
    rejections = sum(alpha.member.bus.rejections.values())
    junk = [b"", b"\x00\x01\x02garbage", b"\x81\xa4type\xc1", b"\x8f" + b"\xff" * 64,
            b"{not json", b'{"message_type": "help_request"}', os.urandom(2048)]

    async def spray(bus: Bus) -> int:
        answered = 0
        for payload in junk:
            try:
                await bus.nats.request(direct_subject(alpha), payload, timeout=TIMEOUT)
                answered += 1
            except Exception:  # any outcome but a crash of alpha is fine
                pass
            await bus.nats.publish(direct_subject(alpha), payload)
        await bus.nats.flush()
        return answered

    answered = with_bus(alpha, Identity.generate(), spray)
    assert answered >= 1  # rejections are answered, so requesters fail fast
    assert sum(alpha.member.bus.rejections.values()) > rejections
    assert alpha.receive_messages() == []
    # Still working, both ways.
    assert beta.send_message("alpha", status(after="junk")) is True
    assert [m["content"] for m in alpha.receive_messages()] == [{"after": "junk"}]
    assert alpha.send_message("beta", status(back="fine")) is True
    assert [m["content"] for m in beta.receive_messages()] == [{"back": "fine"}]


def test_reset_forgets_queued_messages_and_history(
        mates: dict[str, CommunicationManager]) -> None:
    alpha, gamma = mates["alpha"], mates["gamma"]
    assert alpha.send_message("gamma", status(n=1))
    assert gamma.pending == 1 and gamma.history
    received = gamma.stats["received"]
    gamma.reset()
    assert gamma.pending == 0
    assert gamma.receive_messages() == []
    assert list(gamma.history) == []
    assert gamma.stats["received"] == received  # counters are kept
    assert alpha.send_message("gamma", status(n=2))
    assert [m["content"] for m in gamma.receive_messages()] == [{"n": 2}]
