"""AgentStatus.from_dict reads what peers send: junk never raises and never reaches scoring."""

from __future__ import annotations

from typing import Any

import pytest

from agoramesh.nodes.card import AgentStatus

HONEST = AgentStatus(capacity=4, in_flight=1, avg_latency_ms=250.5, success_rate=0.75,
                     tasks_completed=3, tasks_failed=1, tokens_used=2**50, total_cost_usd=0.25,
                     state="busy")


def test_an_honest_status_round_trips() -> None:
    assert AgentStatus.from_dict(HONEST.as_dict()) == HONEST


@pytest.mark.parametrize("body", [None, [], ["capacity", 3], "ready", 7, True])
def test_a_body_that_is_not_an_object_is_the_default(body: Any) -> None:
    assert AgentStatus.from_dict(body) == AgentStatus()


def test_junk_fields_keep_their_defaults() -> None:
    junk = {"capacity": "x", "in_flight": [1], "avg_latency_ms": float("nan"),
            "success_rate": float("inf"), "tasks_completed": {"n": 1}, "tasks_failed": True,
            "tokens_used": "10**400", "cost_usd": "-inf", "state": {"ready": True}}
    status = AgentStatus.from_dict(junk)
    assert status == AgentStatus()
    assert status.load == 0.0


def test_out_of_range_numbers_are_clamped() -> None:
    status = AgentStatus.from_dict({"capacity": -5, "in_flight": -1, "avg_latency_ms": -3.0,
                                    "success_rate": 7, "tasks_completed": -2,
                                    "tokens_used": 10**400, "cost_usd": -0.5})
    assert status == AgentStatus(capacity=0, in_flight=0, avg_latency_ms=0.0, success_rate=1.0,
                                 tasks_completed=0, tokens_used=2**53, total_cost_usd=0.0)
    assert status.load == 1.0  # no capacity: full, never a division by zero
    huge = AgentStatus.from_dict({"capacity": 1, "in_flight": 10**400})
    assert huge.load == 2.0**53  # a float, not an OverflowError
    assert AgentStatus.from_dict({"success_rate": -0.5}).success_rate == 0.0


def test_numbers_in_strings_and_floats_for_counts_are_read() -> None:
    status = AgentStatus.from_dict({"capacity": "8", "in_flight": 2.0, "cost_usd": "0.5",
                                    "state": 3})
    assert (status.capacity, status.in_flight, status.total_cost_usd) == (8, 2, 0.5)
    assert status.state == "3"
    assert len(AgentStatus.from_dict({"state": "x" * 10_000}).state) == 32


def test_the_total_cost_is_cost_usd_on_the_wire() -> None:
    body = AgentStatus(total_cost_usd=1.5).as_dict()
    assert body["cost_usd"] == 1.5 and "total_cost_usd" not in body
    assert AgentStatus.from_dict({"total_cost_usd": 2.0}).total_cost_usd == 0.0
