"""``agoramesh demo`` as a user runs it: every step shown, a JSON summary, nothing left running."""

from __future__ import annotations

import json
import re
import subprocess
from typing import Any

import pytest

from agoramesh.testing import assert_stopped
from agoramesh.testing.up import AGORAMESH

pytestmark = pytest.mark.e2e

AGENTS = {"coder": "seed1", "runner": "seed2", "analyst": "seed3", "pro": "leaf1",
          "con": "leaf2"}


def demo(*args: str) -> subprocess.CompletedProcess[str]:
    """``agoramesh demo``, bounded: the issue allows it 2 minutes on a fresh clone."""
    result = subprocess.run([*AGORAMESH, "demo", *args], capture_output=True, text=True,
                            timeout=120, check=False)
    print(result.stdout, result.stderr, sep="\n")  # shown by pytest when a test fails
    return result


def assert_every_step_shown(text: str) -> None:
    """The human-readable lines: each step's header and what it showed."""
    headers = re.findall(r"^\[(\d+)\] (.+) …$", text, re.MULTILINE)
    assert [int(number) for number, _ in headers] == list(range(1, 14)), headers
    lines = text.splitlines()
    for name, server in AGENTS.items():  # the discovery table
        assert any(re.fullmatch(rf"\s+{name}\s+offline\s+{server}\s+agora\.agent\.U\S+ .+", line)
                   for line in lines), f"no discovery row for {name}"
    bids = [line for line in lines if re.fullmatch(r"\s+(pro|con)\s+[\d.]+\s+\d+\s+[\d.]+\s+"
                                                   r"[\d.]+\s+[\d.]+(  <- winner)?", line)]
    assert len(bids) == 2 and sum("<- winner" in line for line in bids) == 1, bids
    for expected in (
        r"5/5 agents answered alice's scatter-gather",
        r"awarded to (pro|con) .*: COMPLETED",
        r"run +by runner +COMPLETED",
        r"COMPLETED in \d+ ms: review score \d+, the generated code printed '\[0, 1, 1, 2",
        r"round 2 con +\(against\): \S",
        r"consensus: (for|against) \(votes",
        r"analyst +votes (Python|Rust|Go)",
        r"winner: (Python|Rust|Go) \(",
        r"sprinter \(a separate `agoramesh node` process, pid \d+\) joined",
        r"attempt 1: 2 bid\(s\), ranked sprinter, runner",
        r"SIGKILL to pid \d+ \(sprinter\) 300 ms into its task; it exited with -9",
        r"coder's auctioneer lost sprinter \d+ ms after the kill",
        r"re-auctioned without sprinter",
        r"recovered: runner completed it \(COMPLETED, printed 'slow task done'\)",
        r"killed seed\d \(pid \d+, leaf1's hub\): leaf1 re-attached to seed\d",
        # the secured mesh: each line states what the server or a bus did
        r"seed1 +pid \d+ +nats://\S+ +in operator mode",
        r"stranger \(no credentials\) connects: refused by the server in \d+ ms: "
        r"'Authorization Violation'$",
        r"client \(role client\) -> agora\.cap\.echo: worker .* answered COMPLETED 'hello'",
        r"subscribes to the client's inbox: PermissionDenied; the server: permissions "
        r"violation for subscription to \"_inbox\.u",
        r"not admitted for: PermissionDenied; the server: permissions violation for "
        r"subscription to \"agora\.cap\.echo\"$",
        r"captured the direct task and its result: (task_request \{\"\$box\": <\d+ bytes>\}, )+"
        r"task_response \{\"\$box\": <\d+ bytes>\}$",
        r"the secret in 0 of the \d+ messages audit saw; client, the recipient, opened the "
        r"result: 'the vault code is 4711'$",
        r"mallory revoked, .* closed mallory's connection \('[^']*revoked'\) "
        r"\d+ ms after the revocation; its next connect refused: 'Authorization Violation'$",
        r"^summary$",
        r"agents: 6 \(1 killed; its task completed by runner\); tasks: \d+ completed, 0 failed",
        r"rejected: \{'bad_signature': 1\}",
        r"^done in [\d.]+ s; every process stopped \(pids [\d, ]+\)$",
    ):
        assert re.search(expected, text, re.MULTILINE), f"missing {expected!r} in:\n{text}"


def shown_pids(text: str) -> set[int]:
    return {int(pid) for pid in re.findall(r"\bpid (\d+)", text)}


def test_demo_json_summary_and_progress() -> None:
    result = demo("--json")
    assert result.returncode == 0, result.stderr
    assert_every_step_shown(result.stderr)  # with --json the progress lines go to stderr
    summary: dict[str, Any] = json.loads(result.stdout)  # and stdout is the JSON alone

    assert summary["gathered"] == 10
    assert summary["rejections"] == {"bad_signature": 1}
    assert summary["failover_ms"] > 0
    assert summary["discovery"]["answered"] == 5
    assert {row["name"]: row["server"] for row in summary["discovery"]["agents"]} == AGENTS

    auction = summary["auction"]
    assert auction["bids"] >= 2 and auction["status"] == "COMPLETED"
    winners = [bidder for bidder in auction["bidders"] if bidder["winner"]]
    assert [bidder["name"] for bidder in winners] == [auction["winner"]]
    assert winners[0]["score"] == max(bidder["score"] for bidder in auction["bidders"])
    assert all(bidder["latency_ms"] > 0 and bidder["cost_usd"] > 0
               for bidder in auction["bidders"])

    assert summary["workflow"] == {"status": "COMPLETED", "steps": {
        "generate": "COMPLETED", "review": "COMPLETED", "run": "COMPLETED"}}
    assert summary["debate"]["turns"] == 4
    assert summary["debate"]["consensus"] in ("for", "against")
    vote = summary["vote"]
    assert vote["voters"] == 3 and sum(vote["tally"].values()) == 3
    assert vote["winner"] in vote["options"]

    recovery = summary["recovery"]
    assert recovery["killed"] == recovery["first_winner"] == "sprinter"
    assert recovery["completed_by"] == "runner" != recovery["killed"]
    assert recovery["status"] == "COMPLETED" and recovery["attempts"] == 2
    assert recovery["stdout"] == "slow task done"
    assert recovery["noticed_by"] in ("leases", "directory (silent)")
    assert 0 < recovery["noticed_ms"] < recovery["recovered_ms"]

    totals = summary["totals"]
    assert totals["agents"] == 6 and totals["killed"] == 1 and totals["tasks_failed"] == 0
    # Steps whose capability one agent offers award it directly (no bids): the auction
    # step's bids are the ones sure to be counted.
    assert totals["auctions"] >= 5 and totals["bids"] >= auction["bids"]
    assert totals["rejections"] == {"bad_signature": 1}
    assert set(summary["steps_ms"]) == {"mesh", "request", "gather", "forgery", "agents",
                                        "discovery", "auction", "workflow", "debate", "vote",
                                        "recovery", "failover", "security"}

    security = summary["security"]
    assert "authorization" in security["stranger"].lower()
    answered = security["answered"]
    assert (answered["by"], answered["status"], answered["echo"]) == ("worker", "COMPLETED",
                                                                      "hello")
    denied = security["denied"]
    assert [entry["subject"].split(".")[0] for entry in denied] == ["_INBOX", "agora"]
    assert all("permissions violation for subscription" in entry["server"] for entry in denied)
    observer = security["observer"]
    # the task and its result, all sealed (a retried task would add its request)
    assert observer["exchange"] == observer["boxed"] >= 2 and observer["bodies"] == ["$box"]
    assert observer["leaked"] == 0 and observer["recipient_read"] == "the vault code is 4711"
    assert "revoked" in security["revoked"]["closed"]
    assert "authorization" in security["revoked"]["reconnect"].lower()

    pids = summary["pids"]
    servers, agent_process, secured = pids["servers"], pids["agent_process"], pids["secured"]
    assert len(servers) == 5 and agent_process == recovery["killed_pid"] and len(secured) == 1
    assert shown_pids(result.stderr) == {*servers, agent_process, *secured}
    assert_stopped([*servers, agent_process, *secured])


def test_demo_prints_progress_on_stdout() -> None:
    result = demo()
    assert result.returncode == 0, result.stderr
    assert_every_step_shown(result.stdout)
    assert not result.stdout.lstrip().startswith("{")
    pids = shown_pids(result.stdout)
    assert len(pids) == 7  # 5 servers, the killed agent's process and the secured seed
    assert_stopped(pids)
