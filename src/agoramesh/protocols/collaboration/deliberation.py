"""The collaboration modes that decide: debate and voting.

What each does and returns is in the module docstring of
:mod:`~agoramesh.protocols.collaboration.collaboration`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from agoramesh.errors import BackendBadResponse, InvalidCollaboration, error_to_wire
from agoramesh.protocols.collaboration.crew import (
    COMPLETED,
    DEBATE_CAPABILITY,
    VOTE_CAPABILITY,
    Crew,
)
from agoramesh.protocols.collaboration.request import (
    _MAX_QUESTION,
    _SIDES,
    CollaborationMode,
    _Debate,
    _Voting,
)

__all__ = ("debate", "voting")

_HISTORY_SENT = 50  # arguments a debater is shown: bounds the envelope, keeps the thread


def _confidence(value: object) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1:
        return float(value)
    return 0.0


def _debate_question(topic: str, history: Sequence[Mapping[str, Any]]) -> str:
    """The ballot question: the topic, then as many of the latest arguments as fit."""
    head = (f"Debate: {topic}\nAfter {len(history)} argument(s), which position is better "
            f"supported: for or against?")
    lines: list[str] = []
    room = _MAX_QUESTION - len(head)
    for entry in reversed(history):
        line = f"\n[round {entry['round']}] {entry['agent']} ({entry['position']}): " \
               f"{entry['argument']}"
        if len(line) > room:
            break
        lines.append(line)
        room -= len(line)
    return head + "".join(reversed(lines))


def _consensus(topic: str, rounds: int, history: Sequence[Mapping[str, Any]],
               ballots: list[dict[str, Any]], abstained: list[dict[str, Any]]
               ) -> dict[str, Any]:
    votes = {side: sum(1 for ballot in ballots if ballot["choice"] == side) for side in _SIDES}
    support = {side: round(sum(entry["confidence"] for entry in history
                               if entry["position"] == side), 4) for side in _SIDES}
    if votes["for"] != votes["against"]:
        position, decided_by = max(_SIDES, key=lambda side: votes[side]), "majority"
    elif support["for"] != support["against"]:
        position, decided_by = max(_SIDES, key=lambda side: support[side]), "confidence"
    else:
        position, decided_by = "for", "order"
    summary = (f"{position} carries the debate on {topic!r}: {votes['for']} vote(s) for, "
               f"{votes['against']} against, decided by {decided_by} after {rounds} round(s).")
    best = max((entry for entry in history if entry["position"] == position),
               key=lambda entry: entry["confidence"], default=None)
    if best is not None:
        summary += (f" Strongest argument ({best['agent']}, round {best['round']}): "
                    f"{best['argument']}")
    return {"position": position, "votes": votes, "support": support, "decided_by": decided_by,
            "ballots": ballots, "abstained": abstained, "summary": summary}


async def debate(crew: Crew, plan: _Debate) -> dict[str, Any]:
    """Rounds of arguments for and against, then a vote for the consensus."""
    topic, rounds, sides = plan.topic, plan.rounds, plan.positions
    cards = crew.participants(plan.agents, DEBATE_CAPABILITY, minimum=2)
    # Only the mesh knows who takes part: the request could not check this.
    unknown = set(sides) - {card.name for card in cards} - {card.id for card in cards}
    if unknown:
        raise InvalidCollaboration(f"'positions' names no participant: {sorted(unknown)[0]!r}")
    seats = [(card, sides.get(card.name) or sides.get(card.id) or _SIDES[index % 2])
             for index, card in enumerate(cards)]
    participants = [{"agent": card.name, "agent_id": card.id, "position": position}
                    for card, position in seats]
    crew.emit("started", topic=topic, rounds=rounds, participants=participants)
    history: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    for round_ in range(1, rounds + 1):
        for card, position in seats:
            shown = [{key: entry[key] for key in ("round", "agent", "position", "argument")}
                     for entry in history[-_HISTORY_SENT:]]
            record = await crew.submit(DEBATE_CAPABILITY, {
                "topic": topic, "position": position, "round": round_,
                "history": shown}, card)
            turn = {"round": round_, "agent": card.name, "agent_id": card.id,
                    "position": position}
            output = record["output"]
            if record["status"] == COMPLETED and isinstance(output, dict) \
                    and isinstance(output.get("argument"), str):
                history.append({**turn, "argument": output["argument"],
                                "confidence": _confidence(output.get("confidence"))})
                crew.emit("argument", **history[-1])
            else:
                failed.append({**turn, "error": record["error"] or error_to_wire(
                    BackendBadResponse("the answer has no argument"))})
                crew.emit("failed", **failed[-1])
    if plan.voters is not None:
        electorate = crew.participants(plan.voters, VOTE_CAPABILITY)
    else:
        electorate = ([card for card in cards if card.offers(VOTE_CAPABILITY)]
                      or crew.dispatcher.select(VOTE_CAPABILITY))
    ballots, abstained = await crew.ballots(_debate_question(topic, history), _SIDES,
                                             electorate)
    consensus = _consensus(topic, rounds, history, ballots, abstained)
    crew.emit("consensus", position=consensus["position"], votes=consensus["votes"],
               decided_by=consensus["decided_by"], summary=consensus["summary"])
    crew.emit("finished")
    return {"mode": CollaborationMode.DEBATE.value, "topic": topic, "rounds": rounds,
            "participants": participants, "debate_history": history, "failed": failed,
            "consensus": consensus}

async def voting(crew: Crew, plan: _Voting) -> dict[str, Any]:
    """Every voter picks one option; the most votes win (ties: the earliest option)."""
    question, choices = plan.question, plan.options
    voters = crew.participants(plan.agents, VOTE_CAPABILITY)
    crew.emit("started", question=question, options=list(choices),
               voters=[card.name for card in voters])
    ballots, abstained = await crew.ballots(question, choices, voters)
    tally = {option: sum(1 for ballot in ballots if ballot["choice"] == option)
             for option in choices}
    top = max(tally.values())
    tied = [option for option in choices if tally[option] == top] if ballots else []
    winner = tied[0] if tied else None
    crew.emit("finished", winner=winner, tally=tally)
    return {"mode": CollaborationMode.VOTING.value, "question": question,
            "options": list(choices), "votes": ballots, "abstained": abstained,
            "tally": tally, "winner": winner, "tied": tied if len(tied) > 1 else []}
