"""A bidder's reservations: the running sum it quotes its load from, kept as bids come and go."""

from __future__ import annotations

from typing import Any

import pytest

from agoramesh.protocols.auction import bidder as bidder_module
from agoramesh.protocols.auction.bidder import Bidder


def test_reservations_are_summed_renewed_released_and_expired(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(bidder_module.time, "monotonic", lambda: clock[0])
    bidder = Bidder(node=Any)  # type: ignore[arg-type]  # reservations never touch the node
    bidder._reserve("a", 0.5)
    bidder._reserve("b", 0.25)
    assert bidder.reserved == pytest.approx(0.75)
    bidder._reserve("a", 1 / 3)  # a new round of auction a: its share replaced, not added
    assert bidder.reserved == pytest.approx(0.25 + 1 / 3)
    bidder._release("b")
    bidder._release("b")  # a second reject of the same auction changes nothing
    assert bidder.reserved == pytest.approx(1 / 3)
    clock[0] += bidder_module.RESERVATION_TTL + 0.1  # a's renewal expires too
    bidder._reserve("c", 0.5)
    assert bidder.reserved == pytest.approx(0.5)
    clock[0] += bidder_module.RESERVATION_TTL + 0.1
    assert bidder.reserved == 0.0 and bidder._reserved == {}
