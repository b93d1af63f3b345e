"""The contract net (docs/PROTOCOL.md §16): auctions, both sides.

- :mod:`~agoramesh.protocols.auction.auctioneer`: the initiator's side, which
  :mod:`~agoramesh.protocols.auction.round` (one task's auction) and
  :mod:`~agoramesh.protocols.auction.award` (the award phase) serve;
  :mod:`~agoramesh.protocols.auction.policy` holds what its callers build and read.
- :mod:`~agoramesh.protocols.auction.bidder`: the agent's side, bids and awards.
- :mod:`~agoramesh.protocols.auction.task_desk`: ``agora.task.<capability>``, an
  auction run for a client that does not run its own.
- :mod:`~agoramesh.protocols.auction.scoring`: bids and how they are ranked.
"""

__all__ = ()
