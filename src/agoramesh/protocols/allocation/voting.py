"""Votes: a deterministic tally, and ballots over the bus (M-3.2 consensus, M-3.4 voting).

Tally (:func:`tally`)
    Each voter casts one vote: ``None`` is an abstention, a choice among the
    options is valid, anything else is invalid and dropped. The *base* is the
    number of valid votes, or ``eligible`` when given (then voters who never
    answered count against the quorum). A choice wins with at least
    ``required = max(1, min(base, floor(quorum * base) + 1))`` votes: more than
    ``quorum`` of the base, or all of it; ``quorum=0.5`` (the default) is a
    strict majority, ``2/3`` more than two thirds, ``0`` a plurality of at
    least one vote, ``1`` unanimity. Equal top counts go to the choice with the
    smallest ``tie_break(choice)`` key, by default the choice itself (lexical
    order). Without a winner the reason starts with ``no quorum``.

Ballots over the bus
    The initiator sends each voter a signed ``ballot`` request on its direct
    subject (``agora.agent.<voter id>``, addressed to it) with body
    ``{ballot_id, question and/or task, options, context, deadline}``; the
    voter answers a ``vote`` envelope ``{ballot_id, choice, reason}``.
    :func:`collect_votes` asks all voters at once and waits at most
    ``timeout``: a voter that fails, refuses or stays silent abstains; a reply
    signed by someone else, for another ballot, or choosing something not on
    the ballot is invalid. :func:`ballot_handler` is the voter's side, run by a
    node for ``direct_handlers["ballot"]`` with a chooser such as
    :func:`default_chooser`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agoramesh.bus.bus import Delivery, Handler
from agoramesh.bus.identity import is_agent_id
from agoramesh.errors import AgoraError, InvalidBallot, InvalidBid
from agoramesh.nodes.backends import offline_skills
from agoramesh.protocols.auction.scoring import SUITABILITY, Bid, rank

if TYPE_CHECKING:
    from agoramesh.bus.bus import Bus
    from agoramesh.protocols.allocation.strategies import AgentProfile

__all__ = ("ALLOCATION", "BALLOT_TYPE", "MAX_OPTIONS", "VOTE_TYPE", "Chooser", "Tally",
           "allocation_ballot", "ballot_handler", "check_ballot", "collect_votes",
           "default_chooser", "tally")

log = logging.getLogger("agoramesh.voting")

BALLOT_TYPE = "ballot"
VOTE_TYPE = "vote"
MAX_OPTIONS = 256
#: ``context.kind`` of a ballot on who should do a task.
ALLOCATION = "allocation"

_SPOILED = object()  # a reply that is no vote: never an option, so the tally counts it invalid

#: Picks ``(choice, reason)`` for a checked ballot; InvalidBallot to abstain.
Chooser = Callable[[dict[str, Any]], tuple[str, str]]


@dataclass(frozen=True, kw_only=True)
class Tally:
    """The outcome of one vote; ``rejected`` says why a voter's vote did not count."""

    winner: str | None
    reason: str
    counts: dict[str, int] = field(default_factory=dict)  # valid votes, most first
    votes: dict[str, str] = field(default_factory=dict)  # voter -> valid choice
    rejected: dict[str, str] = field(default_factory=dict)
    cast: int = 0
    abstentions: int = 0
    invalid: int = 0
    required: int = 1

    @property
    def decided(self) -> bool:
        return self.winner is not None

    def as_dict(self) -> dict[str, Any]:
        return {"winner": self.winner, "reason": self.reason, "counts": dict(self.counts),
                "cast": self.cast, "abstentions": self.abstentions, "invalid": self.invalid,
                "required": self.required}


def tally(votes: Mapping[str, object], *, options: Collection[str] | None = None,
          quorum: float = 0.5, eligible: int | None = None,
          tie_break: Callable[[str], Any] | None = None,
          notes: Mapping[str, str] | None = None) -> Tally:
    """Count ``{voter: choice}`` (rules: module docstring).

    ``options`` None accepts any non-empty string. ``notes`` explain, per
    voter, an abstention or invalid vote (``rejected`` in the result).
    """
    if (isinstance(quorum, bool) or not isinstance(quorum, int | float)
            or not 0 <= quorum <= 1):
        raise InvalidBallot(f"quorum must be a fraction in [0, 1], got {quorum!r:.40}")
    valid: dict[str, str] = {}
    rejected: dict[str, str] = {}
    abstentions = invalid = 0
    for voter, choice in votes.items():
        note = (notes or {}).get(voter)
        if choice is None:
            abstentions += 1
            rejected[voter] = note or "abstained"
        elif isinstance(choice, str) and choice and (options is None or choice in options):
            valid[voter] = choice
        else:
            invalid += 1
            rejected[voter] = note or f"invalid choice {choice!r:.60}"
    if eligible is not None:
        if type(eligible) is not int or eligible < len(votes):
            raise InvalidBallot(f"eligible must be an integer of at least the {len(votes)} "
                                f"voter(s) counted, got {eligible!r:.40}")
        abstentions += eligible - len(votes)
    base = len(valid) if eligible is None else eligible
    # The epsilon keeps 2/3 of 3 from flooring to 1 in binary floating point.
    required = max(1, min(base, math.floor(quorum * base + 1e-9) + 1))
    key = tie_break or (lambda choice: choice)
    counted = Counter(valid.values())
    order = sorted(counted, key=lambda choice: (-counted[choice], key(choice)))
    counts = {choice: counted[choice] for choice in order}
    of = f"of {base} {'valid vote(s)' if eligible is None else 'eligible voter(s)'}"
    winner: str | None = None
    if not order:
        reason = "no quorum: no valid votes"
    elif counted[order[0]] < required:
        reason = f"no quorum: {order[0]} has {counted[order[0]]} {of}, {required} needed"
    else:
        winner = order[0]
        reason = f"{winner} won with {counted[winner]} {of} ({required} needed)"
        tied = [choice for choice in order[1:] if counted[choice] == counted[winner]]
        if tied:
            rule = "the tie-break key" if tie_break else "lexical order"
            reason += f"; tie with {', '.join(tied)} broken by {rule}"
    return Tally(winner=winner, reason=reason, counts=counts, votes=valid, rejected=rejected,
                 cast=len(valid), abstentions=abstentions, invalid=invalid, required=required)


def check_ballot(body: Any) -> dict[str, Any]:
    """A ballot body checked and normalised; InvalidBallot naming the first problem."""
    if not isinstance(body, Mapping):
        raise InvalidBallot(f"a ballot must be an object, got {type(body).__name__}")
    ballot_id = body.get("ballot_id")
    if not isinstance(ballot_id, str) or not 0 < len(ballot_id) <= 128:
        raise InvalidBallot("a ballot needs a ballot_id of 1-128 characters")
    options = body.get("options")
    if (not isinstance(options, list | tuple) or not 0 < len(options) <= MAX_OPTIONS
            or not all(isinstance(o, str) and 0 < len(o) <= 256 for o in options)):
        raise InvalidBallot(f"ballot {ballot_id}: options must be a list of 1-{MAX_OPTIONS} "
                            f"non-empty strings")
    if len(set(options)) != len(options):
        raise InvalidBallot(f"ballot {ballot_id}: options must be unique")
    question, task = body.get("question"), body.get("task")
    if question is not None and not isinstance(question, str):
        raise InvalidBallot(f"ballot {ballot_id}: question must be a string")
    if task is not None and not isinstance(task, Mapping):
        raise InvalidBallot(f"ballot {ballot_id}: task must be an object")
    if not question and not task:
        raise InvalidBallot(f"ballot {ballot_id}: ask a question or name a task")
    context = {} if body.get("context") is None else body["context"]
    if not isinstance(context, Mapping):
        raise InvalidBallot(f"ballot {ballot_id}: context must be an object")
    deadline = body.get("deadline")
    if deadline is not None and (isinstance(deadline, bool) or not isinstance(
            deadline, int | float) or not math.isfinite(deadline)):
        raise InvalidBallot(f"ballot {ballot_id}: deadline must be Unix seconds")
    return {"ballot_id": ballot_id, "question": question or "",
            "task": dict(task) if task else {}, "options": list(options),
            "context": dict(context), "deadline": deadline}


async def _ask(bus: Bus, voter: str, ballot: dict[str, Any], timeout: float
               ) -> tuple[object, str | None]:
    """``(choice, note)``: None for an abstention, a non-option marker for a bad reply."""
    try:
        # nats enforces the request timeout; this bounds sealing and flushing as well.
        async with asyncio.timeout(timeout + 0.5):
            reply = await bus.request(bus.subjects.agent(voter), BALLOT_TYPE, ballot, to=voter,
                                      timeout=timeout)
    except (AgoraError, TimeoutError, OSError) as exc:
        log.debug("voter %s abstains from %s: %s", voter[:8], ballot["ballot_id"], exc)
        return None, f"abstained: {type(exc).__name__}: {exc}"[:200]
    body = reply.body if isinstance(reply.body, Mapping) else {}
    if reply.sender != voter:
        return _SPOILED, f"vote signed by {reply.sender[:12]}, not by the voter"
    if reply.type != VOTE_TYPE or body.get("ballot_id") != ballot["ballot_id"]:
        return _SPOILED, f"a {reply.type!r} reply that is not a vote on this ballot"
    return body.get("choice"), None


async def collect_votes(bus: Bus, voters: Sequence[str], ballot: Mapping[str, Any], *,
                        timeout: float, quorum: float = 0.5, eligible: int | None = None,
                        tie_break: Callable[[str], Any] | None = None) -> Tally:
    """Put ``ballot`` to every voter at once and tally the answers within ``timeout``.

    A missing ``ballot_id`` is generated and a missing ``deadline`` set to
    now + ``timeout``. Voters are agent ids (repeats are asked once).
    """
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise InvalidBallot(f"timeout must be a positive number of seconds, got {timeout!r:.40}")
    body = check_ballot({"ballot_id": uuid.uuid4().hex, **ballot,
                         "deadline": ballot.get("deadline") or time.time() + timeout})
    unique = list(dict.fromkeys(voters))
    bad = [voter for voter in unique if not is_agent_id(voter)]
    if bad:
        raise InvalidBallot(f"voters must be agent ids; not one: {bad[0]!r:.60}")
    answers = await asyncio.gather(*(_ask(bus, voter, body, timeout) for voter in unique))
    choices = {voter: choice for voter, (choice, _) in zip(unique, answers, strict=True)}
    notes = {voter: note for voter, (_, note) in zip(unique, answers, strict=True) if note}
    result = tally(choices, options=body["options"], quorum=quorum, eligible=eligible,
                   tie_break=tie_break, notes=notes)
    log.debug("ballot %s: %s", body["ballot_id"], result.reason)
    return result


def ballot_handler(chooser: Chooser) -> Handler:
    """A direct handler answering ``ballot`` requests with the ``vote`` ``chooser`` picks.

    A bad ballot, one past its deadline, or a chooser that raises InvalidBallot
    or picks no option gets an InvalidBallot error reply (the voter abstains).
    """

    async def on_ballot(delivery: Delivery) -> None:
        try:
            if delivery.is_json:
                raise InvalidBallot("a ballot must be a signed envelope")
            ballot = check_ballot(delivery.body)
            if ballot["deadline"] is not None and ballot["deadline"] < time.time():
                raise InvalidBallot(f"ballot {ballot['ballot_id']} closed before it arrived")
            choice, reason = chooser(ballot)
            if choice not in ballot["options"]:
                raise InvalidBallot(f"ballot {ballot['ballot_id']}: {choice!r:.60} is not an "
                                    f"option")
        except InvalidBallot as exc:
            await delivery.respond_error(exc)
            return
        await delivery.respond(VOTE_TYPE, {"ballot_id": ballot["ballot_id"], "choice": choice,
                                           "reason": str(reason)[:500]})

    return on_ballot


def allocation_ballot(task: Mapping[str, Any], bids: Sequence[Bid], *,
                      ballot_id: str | None = None) -> dict[str, Any]:
    """A ballot on which bidder should do ``task``: options are the bidders' agent ids.

    Its context is ``{"kind": "allocation", "bids": {agent id: bid as dict}}``,
    the form :func:`default_chooser` reads.
    """
    what = f"task {task.get('task_id', '?')} ({task.get('capability', '?')})"
    return {"ballot_id": ballot_id or uuid.uuid4().hex,
            "question": f"Which agent should do {what}?", "task": dict(task),
            "options": sorted(bid.agent_id for bid in bids),
            "context": {"kind": ALLOCATION, "bids": {bid.agent_id: bid.as_dict() for bid in bids}}}


def _allocation_choice(ballot: dict[str, Any], me: AgentProfile | None) -> tuple[str, str]:
    bids = ballot["context"].get("bids")
    if not isinstance(bids, Mapping):
        raise InvalidBallot(f"ballot {ballot['ballot_id']}: an allocation needs context.bids")
    candidates: list[Bid] = []
    for option in ballot["options"]:
        if option not in bids:
            continue
        try:
            bid = Bid.from_dict(bids[option], agent_id=option)
        except InvalidBid as exc:
            raise InvalidBallot(f"ballot {ballot['ballot_id']}: the bid of {option}: "
                                f"{exc}") from None
        # What I know of my own capacity beats what the initiator last heard.
        full = (me.capacity - me.in_flight <= 0 if me is not None and option == me.agent_id
                else bid.capacity - bid.in_flight <= 0)
        if not full:
            candidates.append(bid)
    if not candidates:
        raise InvalidBallot(f"ballot {ballot['ballot_id']}: no option has a bid with capacity")
    score, best = rank(candidates, SUITABILITY)[0]
    return best.agent_id, f"best suitability {score:.4f} of {len(candidates)} bid(s)"


def default_chooser(profile_provider: Callable[[], AgentProfile] | None = None) -> Chooser:
    """How an agent votes when told nothing else.

    An allocation ballot (``context.kind == "allocation"``; options are agent
    ids, ``context.bids`` their bids as dicts) gets the option whose bid ranks
    best by :data:`~agoramesh.protocols.auction.scoring.SUITABILITY` among
    those with free capacity, the voter's own capacity taken from
    ``profile_provider``. Any other ballot gets the offline ``vote`` skill's
    pick for the question (or the task's description) as this voter.
    """

    def choose(ballot: dict[str, Any]) -> tuple[str, str]:
        me = profile_provider() if profile_provider is not None else None
        if ballot["context"].get("kind") == ALLOCATION:
            return _allocation_choice(ballot, me)
        task = ballot["task"]
        question = ballot["question"] or str(task.get("description") or task)
        picked = offline_skills.vote(question, ballot["options"],
                                     me.agent_id if me is not None else "")
        return str(picked["choice"]), str(picked["reason"])

    return choose
