"""Tallies (quorum, ties, abstentions, invalid votes) and ballots over a real nats-server."""

from __future__ import annotations

import time
from typing import Any

import pytest

from agoramesh.agent import AgentNode
from agoramesh.bus.bus import Delivery
from agoramesh.bus.identity import Identity
from agoramesh.bus.server import EmbeddedServer
from agoramesh.errors import InvalidBallot
from agoramesh.protocols.allocation.strategies import (
    AgentProfile,
    NegotiationStrategy,
    allocate,
    consensus_allocation,
)
from agoramesh.protocols.allocation.voting import (
    ALLOCATION,
    Tally,
    allocation_ballot,
    check_ballot,
    collect_votes,
    default_chooser,
    tally,
)
from agoramesh.testing.plugin import AgentFactory, BusFactory

integration = pytest.mark.integration

FAST = AgentProfile(agent_id="fast", capabilities=("code",), latency_ms=10)
SLOW = AgentProfile(agent_id="slow", capabilities=("code",), latency_ms=3000)
BUSY = AgentProfile(agent_id="busy", capabilities=("code",), capacity=1, in_flight=1)


# -- tally -------------------------------------------------------------------------------


def test_strict_majority_of_valid_votes() -> None:
    result = tally({"v1": "a", "v2": "a", "v3": "b"})
    assert (result.winner, result.required, result.counts) == ("a", 2, {"a": 2, "b": 1})
    assert result.reason == "a won with 2 of 3 valid vote(s) (2 needed)"
    assert result.decided


def test_a_split_vote_has_no_quorum() -> None:
    result = tally({"v1": "a", "v2": "b"})
    assert result.winner is None
    assert result.reason == "no quorum: a has 1 of 2 valid vote(s), 2 needed"
    assert tally({}).reason == "no quorum: no valid votes"


def test_ties_break_lexically_or_by_the_key_given() -> None:
    votes = {"v1": "b", "v2": "a", "v3": "c", "v4": "c", "v5": "a"}
    assert tally(votes, quorum=0).winner == "a"
    assert tally(votes, quorum=0).reason.endswith("tie with c broken by lexical order")
    preferred = tally(votes, quorum=0, tie_break=lambda choice: -ord(choice))
    assert preferred.winner == "c"
    assert preferred.counts == {"c": 2, "a": 2, "b": 1}  # ordered by count, then the key


@pytest.mark.parametrize(("quorum", "ballots", "decided"), [
    (0.5, "aab", True), (0.5, "aabb", False),  # strict majority
    (2 / 3, "aaab", True), (2 / 3, "aab", False),  # more than two thirds
    (1.0, "aaa", True), (1.0, "aaab", False),  # unanimity
    (0.0, "abc", True),  # plurality
])
def test_quorum_fractions(quorum: float, ballots: str, decided: bool) -> None:
    votes = {f"v{n}": choice for n, choice in enumerate(ballots)}
    assert tally(votes, quorum=quorum).decided is decided


def test_abstentions_and_invalid_votes_are_counted_not_tallied() -> None:
    result = tally({"v1": "a", "v2": None, "v3": "zzz", "v4": 7}, options=["a", "b"],
                   notes={"v2": "abstained: BusTimeout"})
    assert (result.winner, result.cast, result.abstentions, result.invalid) == ("a", 1, 1, 2)
    assert result.votes == {"v1": "a"}
    assert result.rejected == {"v2": "abstained: BusTimeout", "v3": "invalid choice 'zzz'",
                               "v4": "invalid choice 7"}


def test_eligible_voters_count_against_the_quorum() -> None:
    result = tally({"v1": "a", "v2": "a"}, eligible=5)
    assert (result.winner, result.required, result.abstentions) == (None, 3, 3)
    assert result.reason == "no quorum: a has 2 of 5 eligible voter(s), 3 needed"
    assert tally({"v1": "a", "v2": "a", "v3": "a"}, eligible=5).winner == "a"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"quorum": 1.5}, "quorum must be a fraction"),
    ({"quorum": True}, "quorum must be a fraction"),
    ({"eligible": 1}, "eligible must be an integer of at least the 2"),
])
def test_bad_tally_settings(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidBallot, match=message):
        tally({"v1": "a", "v2": "b"}, **kwargs)


# -- ballots and choosers -----------------------------------------------------------------


@pytest.mark.parametrize(("body", "message"), [
    ("vote!", "a ballot must be an object"),
    ({"options": ["a"], "question": "q"}, "ballot_id of 1-128"),
    ({"ballot_id": "b", "options": [], "question": "q"}, "options must be a list of 1-256"),
    ({"ballot_id": "b", "options": ["a", 1], "question": "q"}, "non-empty strings"),
    ({"ballot_id": "b", "options": ["a", "a"], "question": "q"}, "options must be unique"),
    ({"ballot_id": "b", "options": ["a"]}, "ask a question or name a task"),
    ({"ballot_id": "b", "options": ["a"], "question": 3}, "question must be a string"),
    ({"ballot_id": "b", "options": ["a"], "task": "t"}, "task must be an object"),
    ({"ballot_id": "b", "options": ["a"], "question": "q", "context": []}, "context must be"),
    ({"ballot_id": "b", "options": ["a"], "question": "q", "deadline": "soon"}, "Unix seconds"),
])
def test_bad_ballots(body: Any, message: str) -> None:
    with pytest.raises(InvalidBallot, match=message):
        check_ballot(body)


def test_allocation_ballots_pick_the_most_suitable_bid_with_room() -> None:
    ballot = check_ballot(allocation_ballot({"task_id": "t1", "capability": "code"},
                                            [SLOW.as_bid(), BUSY.as_bid(), FAST.as_bid()]))
    assert ballot["options"] == ["busy", "fast", "slow"]
    assert ballot["context"]["kind"] == ALLOCATION
    choice, reason = default_chooser()(ballot)
    assert choice == "fast"  # busy would score higher on latency but has no room
    assert reason.startswith("best suitability 0.99") and reason.endswith("of 2 bid(s)")
    # A voter that knows itself to be full does not vote for itself.
    full_fast = AgentProfile(agent_id="fast", capabilities=("code",), capacity=1, in_flight=1)
    assert default_chooser(lambda: full_fast)(ballot)[0] == "slow"
    only_busy = check_ballot(allocation_ballot({"task_id": "t"}, [BUSY.as_bid()]))
    with pytest.raises(InvalidBallot, match="no option has a bid with capacity"):
        default_chooser()(only_busy)


def test_an_allocation_ballot_with_a_bid_that_does_not_parse_is_not_voted_on() -> None:
    ballot = check_ballot({"ballot_id": "b", "question": "who?", "options": ["a"],
                           "context": {"kind": ALLOCATION, "bids": {"a": {"load": "high"}}}})
    with pytest.raises(InvalidBallot, match=r"^ballot b: the bid of a: bid field load must be"):
        default_chooser()(ballot)


def test_other_ballots_use_the_offline_vote_skill() -> None:
    ballot = check_ballot({"ballot_id": "b1", "question": "Which language for fast parsing?",
                           "options": ["Rust for fast parsing", "COBOL"]})
    assert default_chooser(lambda: FAST)(ballot)[0] == "Rust for fast parsing"


# -- over the bus ------------------------------------------------------------------------


async def _voters(url: str, agent_factory: AgentFactory, count: int) -> list[AgentNode]:
    """Agents answering ballots with the handler every AgentNode installs."""
    return [await agent_factory(url, f"voter{n}", ["vote"]) for n in range(count)]


async def _forge(delivery: Delivery) -> None:
    await delivery.respond("vote", {"ballot_id": delivery.body["ballot_id"],
                                    "choice": "mallory", "reason": "not on the ballot"})


@integration
async def test_collect_votes_counts_silence_and_forgery(
        nats_server: EmbeddedServer, agent_factory: AgentFactory,
        bus_factory: BusFactory) -> None:
    url = nats_server.client_url
    honest = await _voters(url, agent_factory, 2)
    forger = await agent_factory(url, "forger", ["vote"])
    forger.direct_handlers["ballot"] = _forge
    initiator = await bus_factory(url)
    ghost = Identity.generate().agent_id  # nobody listens: answered at once by the server
    silent = Identity.generate().agent_id  # someone listens and never answers: times out
    await initiator.nats.subscribe(initiator.subjects.agent(silent), cb=_ignore)
    ballot = allocation_ballot({"task_id": "t1", "capability": "code"},
                               [SLOW.as_bid(), FAST.as_bid()])
    voters = [node.agent_id for node in (*honest, forger)] + [ghost, silent, ghost]
    result = await collect_votes(initiator, voters, ballot, timeout=0.5)
    assert isinstance(result, Tally)
    assert (result.winner, result.counts) == ("fast", {"fast": 2})
    assert (result.cast, result.invalid, result.abstentions) == (2, 1, 2)
    assert result.rejected[forger.agent_id] == "invalid choice 'mallory'"
    assert result.rejected[ghost].startswith("abstained: NoResponders")
    assert result.rejected[silent].startswith("abstained: BusTimeout")
    # Counting everyone asked, two honest votes of five are no majority.
    strict = await collect_votes(initiator, voters, ballot, timeout=0.3, eligible=5)
    assert strict.winner is None and strict.reason.startswith("no quorum: fast has 2 of 5")


async def _ignore(msg: object) -> None:
    return None


@integration
async def test_ballot_handler_refuses_bad_and_late_ballots(
        nats_server: EmbeddedServer, agent_factory: AgentFactory,
        bus_factory: BusFactory) -> None:
    url = nats_server.client_url
    (voter,) = await _voters(url, agent_factory, 1)
    initiator = await bus_factory(url)
    subject = initiator.subjects.agent(voter.agent_id)
    with pytest.raises(InvalidBallot, match="options must be a list"):
        await initiator.request(subject, "ballot", {"ballot_id": "b", "question": "q"},
                                to=voter.agent_id, timeout=1.0)
    late = {"ballot_id": "b2", "question": "q", "options": ["x"], "deadline": time.time() - 1}
    with pytest.raises(InvalidBallot, match="closed before it arrived"):
        await initiator.request(subject, "ballot", late, to=voter.agent_id, timeout=1.0)
    reply = await initiator.request(subject, "ballot", {**late, "deadline": None},
                                    to=voter.agent_id, timeout=1.0)
    assert (reply.type, reply.body["ballot_id"], reply.body["choice"]) == ("vote", "b2", "x")
    with pytest.raises(InvalidBallot, match="voters must be agent ids"):
        await collect_votes(initiator, ["not-an-agent"], late, timeout=0.2)


@integration
async def test_consensus_over_the_bus_matches_the_pure_strategy(
        nats_server: EmbeddedServer, agent_factory: AgentFactory,
        bus_factory: BusFactory) -> None:
    url = nats_server.client_url
    voters = await _voters(url, agent_factory, 3)
    initiator = await bus_factory(url)
    profiles = [FAST, SLOW, AgentProfile(agent_id="mathematician", capabilities=("math",))]
    work: list[dict[str, Any]] = [{"task_id": "t1", "capability": "code", "priority": 9},
            {"task_id": "t2", "capability": "code"},
            {"task_id": "t3", "capability": "math"},
            {"task_id": "t4", "capability": "design"}]
    voter_ids = [node.agent_id for node in voters]
    over_bus = await consensus_allocation(initiator, work, profiles, voter_ids, timeout=1.0)
    pure = allocate(work, profiles, NegotiationStrategy.CONSENSUS)
    assert over_bus.assignments == pure.assignments == {"t1": "fast", "t2": "slow",
                                                        "t3": "mathematician"}
    assert over_bus.unassigned == pure.unassigned == ["t4"]
    assert over_bus.tallies["t1"].counts == {"fast": 3}
